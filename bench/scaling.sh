#!/bin/sh
# Time per training step for 1 and 2 processes on the benchmark model
# (bench/gpt2-124m.ini: GPT-2 124M, fp32, AdamW), with the same global batch
# (B x T tokens) in every run:
#   1 process  x 2 OpenMP threads   no [parallel] (the reference)
#   1 process  x 1 thread           no [parallel] (what one core does alone)
#   2 processes x 1 thread each     mpirun -np 2: ddp, zero 1, zero 2, zero 3
# so 1x2 against 2x1 is the same two cores used by threads or by ranks.
#
# For each run: the median ms/step over steps 3..STEPS (the first two warm
# the allocator and caches), from tokens_per_s in metrics.jsonl, which counts
# the global batch; the bytes communicated per step by rank 0, from the mpi
# plugin's own counts ([comm] stats = true; the ZeRO paper's accounting,
# see plugins/mpi/mpi.c: all-reduce of n bytes = 2n, a whole reduce-scatter
# or all-gather of n = n), over all_reduce + reduce_scatter + all_gather +
# all_to_all, so the one-time broadcast of rank 0's weights is left out, and
# against the paper's 2Ψ (ddp, stages 1-2) and 3Ψ (stage 3), Ψ = the
# trainable parameters in f32 bytes; the peak RSS of every rank (GNU time's
# %M, one file per rank); and the optimizer-state bytes each rank reports.
# No checkpoint is written and no model is saved, so nothing but the steps
# is counted.
#
# Run it on a quiet machine: every run shares the same cores, and any other
# load lands in the times. A warning is printed when the load average says
# the CPUs are busy.
#   bench/scaling.sh [BUILD_DIR] [STEPS] [INI]
#     defaults: build/, 12, bench/gpt2-124m.ini
#   BATCH=4 SEQ=64 (the global batch; BATCH must divide by 2), NP=2,
#   RUNS="single2 single1 ddp zero1 zero2 zero3" choose other settings.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top/build}
steps=${2:-12}
ini=${3:-$top/bench/gpt2-124m.ini}
batch=${BATCH:-4}
seq=${SEQ:-64}
np=${NP:-2}
runs=${RUNS:-single2 single1 ddp zero1 zero2 zero3}
[ -x "$build/lathe" ] || { echo "bench/scaling.sh: no $build/lathe; build first (make)" >&2; exit 1; }
[ "$steps" -ge 3 ] || { echo "bench/scaling.sh: STEPS must be at least 3 (the first two are not timed)" >&2; exit 1; }
[ $((batch % np)) = 0 ] || { echo "bench/scaling.sh: BATCH=$batch does not divide among $np processes" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export LATHE_PLAIN=1 OMP_WAIT_POLICY=PASSIVE LATHE_PLUGIN_PATH="$build/plugins/.libs"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
common="train.steps=$steps train.batch_size=$batch data.seq_len=$seq train.log_every=1 train.eval_every=0
 train.checkpoint_every=0 train.save_final=false"
timer=
[ -x /usr/bin/time ] && timer=/usr/bin/time

load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)
if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
  echo "warning: load average $load before the first run: other processes share the CPUs, so the times below are not clean"
fi

# launch NAME NPROC THREADS ARGS...: one run; rank r's peak RSS (KiB) in $out/NAME.rss.r
launch() {
  name=$1 procs=$2 thr=$3
  shift 3
  if [ "$procs" = 1 ]; then
    set -- "$build/lathe" train "$ini" run.output_dir="$out/$name" train.threads=$thr $common "$@"
    if [ -n "$timer" ]; then set -- $timer -f %M -o "$out/$name.rss.0" "$@"; fi
    OMP_NUM_THREADS=$thr "$@" > "$out/$name.log" 2>&1 || { cat "$out/$name.log"; exit 1; }
  else
    set -- "$build/lathe" train "$ini" run.output_dir="$out/$name" train.threads=$thr $common comm.stats=true "$@"
    if [ -n "$timer" ]; then
      # each rank writes its own file, named by the rank Open MPI gives it
      set -- sh -c 'exec '"$timer"' -f %M -o "$0.${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-0}}" "$@"' "$out/$name.rss" "$@"
    fi
    OMP_NUM_THREADS=$thr mpirun --oversubscribe -np "$procs" "$@" > "$out/$name.log" 2>&1 ||
      { cat "$out/$name.log"; exit 1; }
  fi
}

ms_per_step() {
  python3 - "$1" "$((batch * seq))" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
ms = [int(sys.argv[2]) / r["tokens_per_s"] * 1000 for r in rows[2:] if r["tokens_per_s"] > 0]
print(f"{statistics.median(ms):.1f}" if ms else "-")
PY
}

# rss NAME NPROC: every rank's peak RSS in MiB, "a/b"
rss() {
  r=0 all=
  while [ "$r" -lt "$2" ]; do
    f="$out/$1.rss.$r"
    v=-
    [ -s "$f" ] && v=$(awk 'END { printf "%.0f", $1 / 1024 }' "$f")
    all="$all${all:+/}$v"
    r=$((r + 1))
  done
  echo "$all"
}

# optim NAME: every rank's optimizer-state bytes in MiB from its [parallel] line
optim() {
  v=$(sed -nE 's/^rank [0-9]+\/[0-9]+ \[parallel\].* optimizer state ([0-9]+) bytes.*/\1/p' "$out/$1.log" |
    awk '{ printf "%s%.1f", (NR > 1 ? "/" : ""), $1 / 1048576 }')
  echo "${v:--}"
}

# bytes NAME: rank 0's bytes per step over the collectives of the steps
bytes() {
  grep "^comm-stats rank 0/" "$out/$1.log" | python3 -c '
import re, sys
l = sys.stdin.read()
print(sum(int(re.search(k + r" \d+ calls (\d+) bytes", l).group(1))
          for k in ("all_reduce", "reduce_scatter", "all_gather", "all_to_all")) // int(sys.argv[1]))' "$steps"
}

psi=
header() {
  P=$(sed -nE 's/^model [a-z0-9_-]+: [0-9]+ parameters, ([0-9]+) trainable.*/\1/p' "$out/$1.log" | head -1)
  psi=$((4 * P))
  echo "model: $(basename "$ini"): $P trainable parameters, Psi = $psi bytes (f32); global batch $batch x $seq tokens;"
  echo "       $steps steps, median over steps 3..$steps; mpirun -np $np for the parallel runs; load average at start $load"
  printf '%-10s %6s %9s %8s %13s %7s %6s %15s %15s\n' run "proc x" ms/step "vs 1x2" bytes/step "x Psi" paper \
    "peak RSS MiB" "optim MiB"
}

base=
for r in $runs; do
  case $r in
  single2) launch "$r" 1 2 ;;
  single1) launch "$r" 1 1 ;;
  ddp) launch "$r" "$np" 1 parallel.plugin=ddp ;;
  zero[123]) launch "$r" "$np" 1 parallel.plugin=zero parallel.stage="${r#zero}" ;;
  *) echo "bench/scaling.sh: unknown run $r (single2 single1 ddp zero1 zero2 zero3)" >&2; exit 1 ;;
  esac
  [ -n "$psi" ] || header "$r"
  ms=$(ms_per_step "$out/$r/metrics.jsonl")
  [ -n "$base" ] || base=$ms
  rel=$(awk -v a="$base" -v b="$ms" 'BEGIN { if (b + 0 > 0) printf "%.2fx", a / b; else print "-" }')
  case $r in
  single2) shape="1 x 2" procs=1 ;;
  single1) shape="1 x 1" procs=1 ;;
  *) shape="$np x 1" procs=$np ;;
  esac
  if [ "$procs" = 1 ]; then
    b=- x=- paper=-
  else
    b=$(bytes "$r")
    x=$(awk -v b="$b" -v p="$psi" 'BEGIN { printf "%.3f", b / p }')
    paper=2Psi
    [ "$r" = zero3 ] && paper=3Psi
  fi
  printf '%-10s %6s %9s %8s %13s %7s %6s %15s %15s\n' "$r" "$shape" "$ms" "$rel" "$b" "$x" "$paper" \
    "$(rss "$r" "$procs")" "$(optim "$r")"
done
echo "ms/step: wall time of a step on rank 0 (tokens_per_s over the global batch); 'vs 1x2': the 1 x 2 time over this"
echo "one's. peak RSS: GNU time's maximum resident set of each rank. optim: optimizer state each rank holds (AdamW,"
echo "2 f32 moments per owned element), from its [parallel] line; '-' where the run has no strategy."
