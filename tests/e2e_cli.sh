#!/bin/sh
# The command line and configuration errors, on real INI files.
. "$top_srcdir/tests/e2e_lib.sh"
ini="$WORK/run.ini"
cat > "$ini" <<INI
[run]
output_dir = $WORK/out
seed = 7

[model]
plugin = gpt2
layers = 1
heads = 2
embd = 16
vocab_size = 256
context = 32

[data]
plugin = text
path = $top_srcdir/examples/data/tiny-corpus.txt
seq_len = 16

[train]
steps = 2
batch_size = 2
INI
"$LATHE" version | grep -q "lathe" || fail "version"
"$LATHE" plugins > "$WORK/plugins" || { cat "$WORK/plugins"; fail "lathe plugins found refused files"; }
for c in "model gpt2" "data text" "optimizer adamw" "optimizer sgd" "scheduler cosine" "loss cross-entropy" "loss mse"; do
  set -- $c
  grep -E "$1 +$2|$1.*[[:space:]]$2[[:space:]]" "$WORK/plugins" >/dev/null || { cat "$WORK/plugins"; fail "lathe plugins does not list $1 $2"; }
done
echo "ok: lathe plugins lists the shipped components"

"$LATHE" config "$ini" > "$WORK/resolved" || fail "lathe config failed: $(cat "$WORK/resolved")"
for k in "lr = " "beta2 = " "warmup_steps = " "grad_accum = " "label_smoothing = "; do
  grep -q "^$k" "$WORK/resolved" || { cat "$WORK/resolved"; fail "lathe config does not show the default '$k'"; }
done
echo "ok: lathe config fills in defaults"
"$LATHE" config "$ini" optim.lr=0.5 | grep -q "^lr = 0.5" || fail "override optim.lr=0.5 not shown"
"$LATHE" config optim.lr=0.25 "$ini" --plugin-path "$LATHE_PLUGIN_PATH" | grep -q "^lr = 0.25" ||
  fail "options and overrides before the file"
echo "ok: overrides win and may stand anywhere"

sed 's/^heads = 2/hedas = 2/' "$ini" > "$WORK/typo.ini"
expect_fail "unknown key" "typo.ini:8: .*'hedas'.*did you mean 'heads'" "$LATHE" config "$WORK/typo.ini"
sed 's/^seed = 7/seed = seven/' "$ini" > "$WORK/bad.ini"
expect_fail "bad integer" "bad.ini:3: .*\[run\] seed" "$LATHE" config "$WORK/bad.ini"
sed 's/^\[train\]/[trian]/' "$ini" > "$WORK/sec.ini"
expect_fail "unknown section" "sec.ini:.*(trian|steps)" "$LATHE" config "$WORK/sec.ini"
sed '/^steps = 2/d' "$ini" > "$WORK/nosteps.ini"
expect_fail "missing required key" "\[train\] steps.*(required|missing)" "$LATHE" config "$WORK/nosteps.ini"
sed 's/^plugin = gpt2/plugin = gtp2/' "$ini" > "$WORK/noplug.ini"
expect_fail "unknown plugin" "gtp2.*gpt2" "$LATHE" config "$WORK/noplug.ini"
expect_fail "bad override" "override|train\.steps|section" "$LATHE" config "$ini" "=3"
expect_fail "override range" "<command line>.*steps" "$LATHE" config "$ini" train.steps=0
expect_fail "loss scaling without fp16" "loss_scale.*fp16" "$LATHE" config "$ini" run.precision=bf16 run.loss_scale=1024
expect_fail "missing file" "nope.ini" "$LATHE" config "$WORK/nope.ini"
expect_fail "resume without checkpoint" "no checkpoint" "$LATHE" train "$ini" --resume
expect_fail "unknown option" "unknown option" "$LATHE" train "$ini" --resum
echo "e2e_cli: all passed"
