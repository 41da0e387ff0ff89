#!/bin/sh
# LoRA against full fine-tuning of the default model (SmolLM2-135M-Instruct)
# on the same batch: median step time (after the first step) and peak RSS,
# from one run of each. Needs models/smollm2-135m (scripts/fetch-smollm2.sh).
#   bench/lora-vs-full.sh [BUILD_DIR] [STEPS]
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top/build}
steps=${2:-4}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE LATHE_PLAIN=1
export LATHE_PLUGIN_PATH="$build/plugins/.libs"
common="train.steps=$steps train.batch_size=8 train.grad_accum=1 train.eval_every=0 train.eval_at_start=false"
for kind in full lora; do
  /usr/bin/time -v "$build/lathe" train "$top/examples/sft-$kind.ini" run.output_dir="$out/$kind" $common \
    > "$out/$kind.log" 2> "$out/$kind.time" || { cat "$out/$kind.log" "$out/$kind.time"; exit 1; }
  python3 - "$kind" "$out/$kind/metrics.jsonl" "$out/$kind.time" "$out/$kind.log" <<'PY'
import json, statistics, sys
kind, metrics, timef, log = sys.argv[1:]
rows = [json.loads(l) for l in open(metrics) if '"tokens_per_s"' in l]
tps = [r["tokens_per_s"] for r in rows[1:]]
rss = int([l for l in open(timef) if "Maximum resident" in l][0].split()[-1])
trainable = [l for l in open(log) if "trainable" in l][0].strip()
print(f"{kind:5s}: median {statistics.median(tps):.0f} tokens/s over {len(tps)} steps; peak RSS {rss/1024/1024:.2f} GiB; {trainable}")
PY
done
