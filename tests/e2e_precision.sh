#!/bin/sh
# [run] precision on the demo (examples/pretrain-tiny.ini, shortened):
# bf16 and fp16 follow the fp32 loss curve, fp16 logs its loss scale, and a
# scale far too large makes overflowing steps that are skipped while the
# scale halves. Final-loss tolerance: 0.15 (measured |bf16 - fp32| 0.017
# and |fp16 - fp32| 0.001 at step 60 of this setup).
. "$top_srcdir/tests/e2e_lib.sh"
steps=60
short="model.layers=2 train.steps=$steps train.eval_every=0 train.log_every=1 train.checkpoint_every=0 train.save_final=false"
for p in fp32 bf16 fp16; do
  "$LATHE" train "$top_srcdir/examples/pretrain-tiny.ini" run.output_dir="$WORK/$p" run.precision=$p $short \
    > "$WORK/$p.log" 2>&1 || { cat "$WORK/$p.log"; fail "precision = $p: training failed"; }
done
f32=$(metric "$WORK/fp32/metrics.jsonl" $steps loss)
for p in bf16 fp16; do
  l=$(metric "$WORK/$p/metrics.jsonl" $steps loss)
  first=$(metric "$WORK/$p/metrics.jsonl" 1 loss)
  awk -v a="$first" -v b="$l" 'BEGIN { exit !(b < a - 1.5) }' || fail "$p: the loss did not fall ($first -> $l)"
  awk -v a="$f32" -v b="$l" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 0.15) }' ||
    fail "$p: final loss $l is not within 0.15 of fp32's $f32"
  echo "ok: $p final loss $l (fp32 $f32)"
done
[ -z "$(metric "$WORK/fp32/metrics.jsonl" 1 loss_scale)" ] || fail "fp32 logs a loss scale"
s1=$(metric "$WORK/fp16/metrics.jsonl" 1 loss_scale)
[ "$s1" = "65536" ] || [ "$s1" = "65536.0" ] || fail "fp16: step 1 loss_scale is '$s1', want 65536"
[ -n "$(metric "$WORK/fp16/metrics.jsonl" $steps skipped_steps)" ] || fail "fp16: no skipped_steps in metrics.jsonl"
echo "ok: fp16 logs loss_scale $s1 and skipped_steps"

# A scale of 2^36 overflows f16: steps are skipped and the scale halves
# each time until the gradients fit, then training goes on.
tiny="model.layers=1 model.embd=32 model.heads=2 data.seq_len=32 train.eval_every=0 train.log_every=1 train.checkpoint_every=0 train.save_final=false"
"$LATHE" train "$top_srcdir/examples/pretrain-tiny.ini" run.output_dir="$WORK/big" run.precision=fp16 \
  run.loss_scale_init=68719476736 $tiny train.steps=30 > "$WORK/big.log" 2>&1 ||
  { cat "$WORK/big.log"; fail "fp16 with a huge loss scale failed"; }
m="$WORK/big/metrics.jsonl"
a=$(metric "$m" 1 loss_scale); b=$(metric "$m" 2 loss_scale); sk=$(metric "$m" 30 skipped_steps)
awk -v a="$a" -v b="$b" 'BEGIN { exit !(a == 68719476736 && b == a / 2) }' || fail "the scale did not halve: $a -> $b"
awk -v s="$sk" 'BEGIN { exit !(s >= 1 && s < 30) }' || fail "skipped_steps at step 30 is '$sk'"
[ "$(metric "$m" 1 skipped_steps)" = "1" ] || [ "$(metric "$m" 1 skipped_steps)" = "1.0" ] || fail "step 1 was not skipped"
grep -q "gradients overflowed at loss scale 6.87195e+10; update skipped, scale now 3.43597e+10" "$WORK/big.log" ||
  { cat "$WORK/big.log"; fail "no skip note in the log"; }
echo "ok: scale $a -> $b, $sk steps skipped, then training went on"

expect_fail "loss scaling without fp16" "loss_scale" \
  "$LATHE" train "$top_srcdir/examples/pretrain-tiny.ini" run.output_dir="$WORK/bad" run.precision=bf16 run.loss_scale=dynamic
echo "e2e_precision: all passed"
