#!/bin/sh
# Activation checkpointing: peak RSS and median step time of a GPT-2
# (12 layers, 384 wide, T = 512, B = 8) trained from scratch with and
# without [train] activation_checkpointing, from one run of each.
#   bench/recompute.sh [BUILD_DIR] [STEPS]
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top/build}
steps=${2:-4}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE LATHE_PLAIN=1
export LATHE_PLUGIN_PATH="$build/plugins/.libs"
common="train.steps=$steps train.batch_size=8 train.eval_every=0 train.checkpoint_every=0 train.save_final=false
  train.log_every=1 model.layers=12 model.embd=384 model.heads=6 model.context=512 data.seq_len=512"
for ac in false true; do
  "$build/lathe" train "$top/examples/pretrain-tiny.ini" run.output_dir="$out/$ac" $common \
    train.activation_checkpointing=$ac > "$out/$ac.log" 2>&1 || { cat "$out/$ac.log"; exit 1; }
  ms=$(grep -o '"tokens_per_s": *[0-9.e+]*' "$out/$ac/metrics.jsonl" | sed 1d | sed 's/.*: *//' |
       sort -g | awk '{ a[NR] = $1 } END { m = a[int((NR + 1) / 2)]; printf "%.0f", 8 * 512 / m * 1000 }')
  rss=$(sed -n 's/.*peak RSS \([0-9.]*\) MiB.*/\1/p' "$out/$ac.log" | tail -1)
  echo "activation_checkpointing = $ac: median $ms ms/step (after the first), peak RSS $rss MiB"
done
