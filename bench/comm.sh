#!/bin/sh
# Bytes communicated per step and time per step of each parallel strategy,
# on examples/pretrain-tiny.ini's GPT (4 layers, 128 wide) with a global
# batch of 16 x 128 tokens.
#
# Bytes: the mpi plugin's own counts ([comm] stats = true), in the ZeRO
# paper's accounting: an all-reduce of n bytes moves 2n, a reduce-scatter or
# all-gather of a whole buffer of n bytes moves n (per rank; a ring sends
# (N-1)/N of it). Compared with the paper's 2Ψ (ddp, stages 1 and 2) and 3Ψ
# (stage 3), Ψ = the trainable parameters in bytes (f32 here). The one-time
# broadcast of rank 0's weights at start is left out; the loss and
# gradient-norm all-reduces (a few bytes a step) are in.
#
# Stage 3 gathers each layer (model segment) before its forward and again
# before its backward and reduce-scatters its gradients right after: 3Ψ_seg,
# plus 2Ψ_persistent for the parameters in no segment (embeddings, final
# norm), which move as in stage 2. The end-of-run checkpoint gathers every
# segment once more (Ψ_seg, from the log's per-segment line): it is taken
# out of the per-step figure (the final model save is off). "zero 3 whole"
# is gather = model (whole-model gathering: 2Ψ, stage 2's memory).
#
# Time: median ms/step over steps 3..STEPS from metrics.jsonl: one process
# alone (2 OpenMP threads, then 1), and 2 processes with 1 thread each.
#   bench/comm.sh [BUILD_DIR] [STEPS]     (default: build/, 20)
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top/build}
steps=${2:-20}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export LATHE_PLAIN=1 OMP_WAIT_POLICY=PASSIVE LATHE_PLUGIN_PATH="$build/plugins/.libs"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
ini="$top/examples/pretrain-tiny.ini"
common="train.steps=$steps train.batch_size=16 train.log_every=1 train.eval_every=0 train.checkpoint_every=0"
common="$common train.save_final=false"

ms_per_step() {
  python3 - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
ms = [16 * 128 / r["tokens_per_s"] * 1000 for r in rows[2:]]
print(f"{statistics.median(ms):.1f}")
PY
}

OMP_NUM_THREADS=2 "$build/lathe" train "$ini" run.output_dir="$out/one2" $common > "$out/one2.log" 2>&1
OMP_NUM_THREADS=1 "$build/lathe" train "$ini" run.output_dir="$out/one1" $common > "$out/one1.log" 2>&1
P=$(sed -nE 's/^model gpt2: [0-9]+ parameters, ([0-9]+) trainable.*/\1/p' "$out/one1.log")
psi=$((4 * P))
echo "model: $P trainable parameters, Ψ = $psi bytes (f32); $steps steps, global batch 16 x 128 tokens"
echo "1 process, 2 threads: $(ms_per_step "$out/one2/metrics.jsonl") ms/step"
echo "1 process, 1 thread : $(ms_per_step "$out/one1/metrics.jsonl") ms/step"
printf '%-22s %12s %8s %6s %8s\n' strategy bytes/step "x Psi" paper ms/step
for s in "ddp" "zero 1" "zero 2" "zero 3" "zero 3 whole"; do
  set -- $s
  args="parallel.plugin=$1"
  [ $# -gt 1 ] && args="$args parallel.stage=$2"
  [ $# -gt 2 ] && args="$args parallel.gather=model"
  name=$(echo "$s" | tr ' ' '-')
  OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 "$build/lathe" train "$ini" run.output_dir="$out/$name" $common \
    $args comm.stats=true > "$out/$name.log" 2>&1 || { cat "$out/$name.log"; exit 1; }
  line=$(grep "^comm-stats rank 0/" "$out/$name.log")
  bytes=$(echo "$line" | python3 -c '
import re, sys
l = sys.stdin.read()
print(sum(int(re.search(k + r" \d+ calls (\d+) bytes", l).group(1)) for k in ("all_reduce", "reduce_scatter", "all_gather", "all_to_all")))')
  # the end-of-run checkpoint's gather of every segment (per-segment stage 3)
  persistent=$(sed -nE 's/.*largest segment [0-9]+ \+ persistent ([0-9]+) bytes.*/\1/p' "$out/$name.log")
  [ -n "$persistent" ] && bytes=$((bytes - (psi - persistent)))
  per=$((bytes / steps))
  paper=2
  [ "$s" = "zero 3" ] && paper=3
  printf '%-22s %12d %8s %3sPsi %8s\n' "$s (2 proc)" $per "$(python3 -c "print(f'{$per / $psi:.3f}')")" $paper \
    "$(ms_per_step "$out/$name/metrics.jsonl")"
done
