#!/bin/sh
# Resuming continues the same loss curve: an uninterrupted run and a run
# stopped (at a step boundary, and by SIGINT) then resumed log identical
# losses. A fresh run refuses to overwrite an earlier run's checkpoints.
. "$top_srcdir/tests/e2e_lib.sh"
ini="$top_srcdir/examples/pretrain-tiny.ini"
common="model.layers=2 model.embd=64 data.seq_len=64 train.batch_size=8 train.eval_every=10 train.eval_batches=2 train.log_every=1 model.dropout=0.1"
"$LATHE" train "$ini" run.output_dir="$WORK/a" train.steps=30 train.checkpoint_every=10 $common > "$WORK/a.log" 2>&1 ||
  { cat "$WORK/a.log"; fail "run a"; }
"$LATHE" train "$ini" run.output_dir="$WORK/b" train.steps=30 train.checkpoint_every=10 $common train.steps=17 > "$WORK/b1.log" 2>&1 ||
  { cat "$WORK/b1.log"; fail "run b, first part"; }
expect_fail "fresh run over checkpoints" "resume" "$LATHE" train "$ini" run.output_dir="$WORK/b" train.steps=30 $common
"$LATHE" train "$ini" --resume run.output_dir="$WORK/b" train.steps=30 train.checkpoint_every=10 $common > "$WORK/b2.log" 2>&1 ||
  { cat "$WORK/b2.log"; fail "run b, resumed"; }
grep -q "resumed from .*step-00000017" "$WORK/b2.log" || { cat "$WORK/b2.log"; fail "did not resume from step 17"; }
for s in 18 20 25 30; do
  la=$(metric "$WORK/a/metrics.jsonl" $s loss)
  lb=$(metric "$WORK/b/metrics.jsonl" $s loss)
  [ -n "$la" ] && [ "$la" = "$lb" ] || fail "step $s: uninterrupted loss $la, resumed $lb"
done
ea=$(metric "$WORK/a/metrics.jsonl" 30 eval_loss)
eb=$(metric "$WORK/b/metrics.jsonl" 30 eval_loss)
[ "$ea" = "$eb" ] || fail "eval loss at 30: $ea vs $eb"
n=$(grep -c '"step": *18[,}]' "$WORK/b/metrics.jsonl")
[ "$n" -eq 1 ] || fail "metrics.jsonl holds step 18 $n times"
echo "ok: resumed losses equal the uninterrupted run bit for bit (step 30: $la)"

# SIGINT: the run saves a checkpoint and exits 130; --resume finishes it.
"$LATHE" train "$ini" run.output_dir="$WORK/c" train.steps=30 $common > "$WORK/c1.log" 2>&1 &
pid=$!
i=0
while [ $i -lt 600 ] && ! grep -q '"step": *3[,}]' "$WORK/c/metrics.jsonl" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
kill -INT $pid
wait $pid
rc=$?
[ $rc -eq 130 ] || { cat "$WORK/c1.log"; fail "SIGINT: exit status $rc, expected 130"; }
ls -d "$WORK"/c/checkpoints/step-* >/dev/null 2>&1 || fail "SIGINT left no checkpoint"
ls -d "$WORK"/c/checkpoints/*.tmp >/dev/null 2>&1 && fail "SIGINT left a temporary checkpoint"
"$LATHE" train "$ini" --resume run.output_dir="$WORK/c" train.steps=30 $common > "$WORK/c2.log" 2>&1 ||
  { cat "$WORK/c2.log"; fail "resume after SIGINT"; }
lc=$(metric "$WORK/c/metrics.jsonl" 30 loss)
[ "$lc" = "$(metric "$WORK/a/metrics.jsonl" 30 loss)" ] || fail "after SIGINT and resume, step 30 loss $lc differs"
echo "ok: SIGINT saved a checkpoint and the resumed run matches"

# LoRA: checkpoints hold the adapter and its optimizer state, not the frozen
# base (the model makes it again), and resuming still continues the curve.
lora="model.layers=1 model.embd=32 model.heads=2 data.seq_len=16 train.batch_size=2 train.eval_every=0 train.log_every=1 train.checkpoint_every=5"
cat > "$WORK/lora.ini" <<INI
[peft]
plugin = lora
rank = 4
alpha = 8
target_modules = c_attn
base_dtype = bfloat16
INI
# a constant schedule: the cosine one would change with train.steps
sed '/^\[schedule\]/,/^$/d' "$ini" > "$WORK/base.ini"
cat "$WORK/base.ini" "$WORK/lora.ini" > "$WORK/lora-run.ini"
cp -r "$top_srcdir/examples/data" "$WORK/data"
"$LATHE" train "$WORK/lora-run.ini" run.output_dir="$WORK/la" train.steps=10 $lora > "$WORK/la.log" 2>&1 ||
  { cat "$WORK/la.log"; fail "LoRA run"; }
"$LATHE" train "$WORK/lora-run.ini" run.output_dir="$WORK/lb" train.steps=5 $lora > "$WORK/lb1.log" 2>&1 ||
  { cat "$WORK/lb1.log"; fail "LoRA run, first part"; }
"$LATHE" train "$WORK/lora-run.ini" --resume run.output_dir="$WORK/lb" train.steps=10 $lora > "$WORK/lb2.log" 2>&1 ||
  { cat "$WORK/lb2.log"; fail "LoRA run, resumed"; }
for s in 6 10; do
  [ "$(metric "$WORK/la/metrics.jsonl" $s loss)" = "$(metric "$WORK/lb/metrics.jsonl" $s loss)" ] ||
    fail "LoRA step $s: resumed loss differs"
done
size=$(wc -c < "$WORK/la/checkpoints/step-00000010/state.safetensors")
[ "$size" -lt 100000 ] || fail "a LoRA checkpoint holds $size bytes: the frozen base went into it"
[ -f "$WORK/la/adapter/adapter_model.safetensors" ] || fail "no adapter written"
echo "ok: LoRA resume continues the curve; the checkpoint holds only trainable state ($size bytes)"
echo "e2e_resume: all passed"
