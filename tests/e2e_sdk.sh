#!/bin/sh
# The SDK as a third party sees it: install lathe into a temporary root,
# build sdk/examples/confidence-penalty out of tree with `pkg-config lathe`,
# and train a few steps with it through the installed `lathe`; build
# sdk/examples/length-reward the same way and score completions with it.
. "$top_srcdir/tests/e2e_lib.sh"
root="$WORK/root"
make -C "$top_builddir" install DESTDIR="$root" > "$WORK/install.log" 2>&1 || { tail -30 "$WORK/install.log"; fail "make install"; }
prefix=$(sed -n 's/^prefix=//p' "$top_builddir/sdk/lathe.pc")
libdir=$(sed -n 's/^libdir=//p' "$top_builddir/sdk/lathe.pc" | sed "s#\${exec_prefix}#$prefix#")
export PKG_CONFIG_PATH="$root$libdir/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$root"
pkg-config --exists lathe || fail "pkg-config does not find the installed lathe.pc"
plugindir="$root$(pkg-config --variable=plugindir lathe | sed "s#^$root##")"
[ -f "$plugindir/lathe-gpt2.so" ] || fail "plugins not installed in $plugindir"
for h in lathe.h plugin.h ops.h; do [ -f "$root$prefix/include/lathe/$h" ] || fail "header $h not installed"; done
cp -r "$top_srcdir/sdk/examples/confidence-penalty" "$WORK/ex"
make -C "$WORK/ex" > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; fail "building the example plugin"; }
cat > "$WORK/run.ini" <<INI
[run]
output_dir = $WORK/out
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
[loss]
plugin = confidence-penalty
beta = 0.2
[train]
steps = 3
batch_size = 2
INI
env -u LATHE_PLUGIN_PATH LD_LIBRARY_PATH="$root$libdir" "$root$prefix/bin/lathe" train "$WORK/run.ini" \
  --plugin-path "$WORK/ex:$plugindir" > "$WORK/train.log" 2>&1 || { cat "$WORK/train.log"; fail "training with the example plugin"; }
grep -q '"step": *3' "$WORK/out/metrics.jsonl" || fail "no step 3 in metrics"
env -u LATHE_PLUGIN_PATH LD_LIBRARY_PATH="$root$libdir" "$root$prefix/bin/lathe" plugins --plugin-path "$WORK/ex:$plugindir" |
  grep -q "confidence-penalty" || fail "lathe plugins does not list the example"

# A reward plugin from outside the tree: the length-reward example, scored
# through the installed `lathe reward` beside the shipped think-answer.
cp -r "$top_srcdir/sdk/examples/length-reward" "$WORK/lr"
make -C "$WORK/lr" > "$WORK/build-lr.log" 2>&1 || { cat "$WORK/build-lr.log"; fail "building the example reward plugin"; }
cat > "$WORK/reward.ini" <<INI
[reward.format]
plugin = think-answer
[reward.len]
plugin = length-reward
target = 32
weight = 0.5
INI
# 34 characters: 1 - 2/32 = 0.9375; 18: 1 - 14/32 = 0.5625
printf '%s\n' '{"completion": "<think>a</think><answer>7</answer>", "answer": "7"}' \
  '{"completion": "<answer>7</answer>", "answer": "7"}' > "$WORK/completions.jsonl"
env -u LATHE_PLUGIN_PATH LD_LIBRARY_PATH="$root$libdir" "$root$prefix/bin/lathe" reward --config "$WORK/reward.ini" \
  --input "$WORK/completions.jsonl" --plugin-path "$WORK/lr:$plugindir" > "$WORK/scored.jsonl" 2> "$WORK/reward.log" ||
  { cat "$WORK/reward.log"; fail "lathe reward with the example reward plugin"; }
grep -q '"reward": 10.46875, "rewards": {"format": 10, "len": 0.9375}}$' "$WORK/scored.jsonl" &&
  grep -q '"reward": 0.28125, "rewards": {"format": 0, "len": 0.5625}}$' "$WORK/scored.jsonl" ||
  { cat "$WORK/scored.jsonl"; fail "the example reward's values"; }
echo "e2e_sdk: all passed"
