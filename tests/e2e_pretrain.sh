#!/bin/sh
# The README's main job, shortened: examples/pretrain-tiny.ini trains, the
# loss falls, and metrics.jsonl, TensorBoard files and a checkpoint appear.
. "$top_srcdir/tests/e2e_lib.sh"
steps=60
[ -n "${LATHE_SANITIZED:-}" ] && steps=30
out="$WORK/run"
"$LATHE" train "$top_srcdir/examples/pretrain-tiny.ini" run.output_dir="$out" train.steps=$steps \
  train.eval_every=30 train.log_every=1 train.checkpoint_every=0 > "$WORK/log" 2>&1 ||
  { cat "$WORK/log"; fail "training failed"; }
m="$out/metrics.jsonl"
[ -s "$m" ] || fail "no metrics.jsonl"
first=$(metric "$m" 1 loss)
last=$(metric "$m" $steps loss)
ev=$(metric "$m" $steps eval_loss)
echo "loss step 1: $first, step $steps: $last, eval: $ev"
for k in loss lr grad_norm tokens_per_s; do
  [ -n "$(metric "$m" 1 $k)" ] || fail "metrics.jsonl step 1 lacks $k"
done
[ -n "$ev" ] || fail "no eval_loss at step $steps"
awk -v a="$first" -v b="$last" 'BEGIN { exit !(a > 5.0 && b < a - 1.5) }' ||
  fail "loss did not fall enough ($first -> $last)"
ls "$out"/tb/events.out.tfevents.* >/dev/null 2>&1 || fail "no TensorBoard event file"
ls -d "$out"/checkpoints/step-000000$steps >/dev/null 2>&1 || { ls -R "$out"; fail "no final checkpoint"; }
grep -q "^step $steps/$steps" "$WORK/log" || fail "no progress line"
if command -v python3 >/dev/null 2>&1; then
  python3 "$top_srcdir/tests/tb_check.py" "$out/tb" train/loss train/lr train/grad_norm train/tokens_per_s eval/loss
  rc=$?
  case $rc in
    0) echo "ok: TensorBoard reads the event file" ;;
    77) echo "skip: the tensorboard package is not installed; event file not read by TensorBoard" ;;
    *) fail "TensorBoard could not read the event file" ;;
  esac
fi

# Gradient accumulation: 2 micro-batches of 4 make the same step as one of 8.
small="model.layers=1 model.embd=32 model.heads=2 data.seq_len=32 train.eval_every=0 train.log_every=1 train.steps=5"
"$LATHE" train "$top_srcdir/examples/pretrain-tiny.ini" run.output_dir="$WORK/g1" $small train.batch_size=8 > "$WORK/g1.log" 2>&1 ||
  { cat "$WORK/g1.log"; fail "accumulation reference run"; }
"$LATHE" train "$top_srcdir/examples/pretrain-tiny.ini" run.output_dir="$WORK/g2" $small train.batch_size=4 train.grad_accum=2 > "$WORK/g2.log" 2>&1 ||
  { cat "$WORK/g2.log"; fail "accumulation run"; }
for s in 1 5; do
  a=$(metric "$WORK/g1/metrics.jsonl" $s loss); b=$(metric "$WORK/g2/metrics.jsonl" $s loss)
  awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 1e-4) }' ||
    fail "step $s: batch 8 loss $a, 2 x 4 accumulated $b"
done
echo "ok: grad_accum=2 x batch 4 follows batch 8 (step 5: $a vs $b)"

# Early stopping: an impossible min_delta stops at the second evaluation.
"$LATHE" train "$top_srcdir/examples/pretrain-tiny.ini" run.output_dir="$WORK/es" $small train.steps=50 \
  train.eval_every=5 train.eval_batches=1 train.early_stopping_patience=1 train.early_stopping_min_delta=100 > "$WORK/es.log" 2>&1 ||
  { cat "$WORK/es.log"; fail "early stopping run"; }
grep -q "early stop at step 10" "$WORK/es.log" || { cat "$WORK/es.log"; fail "no early stop at step 10"; }
ls -d "$WORK"/es/checkpoints/step-00000010 >/dev/null 2>&1 || fail "early stop saved no checkpoint"
echo "ok: early stopping"
echo "e2e_pretrain: all passed"
