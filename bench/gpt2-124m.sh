#!/bin/sh
# GPT-2 124M training step on the CPU: lathe against PyTorch, in one run.
# Prints lathe's median ms/step (steps after the first 2, from metrics.jsonl)
# and peak RSS, then the same for PyTorch (Debian's python3-torch) running
# ../shared/bench/torch_gpt2_step.py with OMP_WAIT_POLICY=PASSIVE.
#   bench/gpt2-124m.sh [BUILD_DIR]     (default: build/)
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top/build}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE LATHE_PLAIN=1
export LATHE_PLUGIN_PATH="$build/plugins/.libs"

/usr/bin/time -v "$build/lathe" train "$top/bench/gpt2-124m.ini" run.output_dir="$out/run" \
  > "$out/lathe.log" 2> "$out/lathe.time" || { cat "$out/lathe.log" "$out/lathe.time"; exit 1; }
python3 - "$out/run/metrics.jsonl" "$out/lathe.time" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
ms = [256 / r["tokens_per_s"] * 1000 for r in rows[2:]]
rss = [l for l in open(sys.argv[2]) if "Maximum resident" in l][0].split()[-1]
print(f"lathe  : median {statistics.median(ms):.1f} ms/step over {len(ms)} steps "
      f"(min {min(ms):.1f}, max {max(ms):.1f}); peak RSS {int(rss)/1024/1024:.2f} GiB; "
      f"loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}")
PY

shared="$top/../shared/bench/torch_gpt2_step.py"
py=/usr/bin/python3
if $py -c "import torch" 2>/dev/null && [ -f "$shared" ]; then
  /usr/bin/time -v $py "$shared" --threads 2 --steps 10 > "$out/torch.log" 2> "$out/torch.time" ||
    { cat "$out/torch.log" "$out/torch.time"; exit 1; }
  med=$(sed -n 's/^median \([0-9.]*\) ms\/step.*/\1/p' "$out/torch.log")
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$out/torch.time")
  echo "PyTorch: median $med ms/step; peak RSS $(awk -v r="$rss" 'BEGIN{printf "%.2f", r/1024/1024}') GiB (OMP_WAIT_POLICY=PASSIVE)"
else
  echo "PyTorch: not installed (apt-get install python3-torch) — no comparison"
fi
