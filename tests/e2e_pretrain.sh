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
echo "e2e_pretrain: all passed"
