#!/bin/sh
# Several processes under mpirun (oversubscribed: CI has 2 cores). With the
# same global batch, the loss curves of one process without [parallel], ddp
# and zero stages 1-3 on 2 and 3 processes agree within 1e-5 per step; the
# log reports each rank's 1/N of optimizer state (and of parameters for
# stage 3); a zero run stopped on 2 processes and resumed on 3 (and the
# reverse) continues the same curve; bad settings are refused by name.
# Stage 3 gathers per model segment (layer): 2 x layers all-gathers per
# micro-batch (zero_gathers in the metrics), a peak of parameter bytes below
# the whole model's, the same curve with activation checkpointing and grad
# accumulation; gather = model keeps the whole-model variant.
# Skipped (77) where mpirun or the mpi plugin is absent, and in the
# sanitizer build (Open MPI's memory hooks and ASan do not mix).
. "$top_srcdir/tests/e2e_lib.sh"
command -v mpirun >/dev/null 2>&1 || { echo "SKIP: no mpirun"; exit 77; }
[ -f "$LATHE_PLUGIN_PATH/lathe-mpi.so" ] || { echo "SKIP: the mpi plugin was not built (no MPI at configure)"; exit 77; }
[ -n "${LATHE_SANITIZED:-}" ] && { echo "SKIP: not under sanitizers"; exit 77; }
# CI runs as root; Open MPI refuses that unless told
if [ "$(id -u)" = 0 ]; then
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  export OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM
fi
# one thread per rank: ranks share the 2 cores
OMP_NUM_THREADS=1
export OMP_NUM_THREADS
mpi() { np=$1; shift; mpirun --oversubscribe -np "$np" "$@"; }

# the communicator's collectives on 3 ranks (uneven all-to-all, bf16 sums)
mpi 3 "$top_builddir/tests/check_comm" > "$WORK/comm.log" 2>&1 || { cat "$WORK/comm.log"; fail "check_comm on 3 ranks"; }
echo "ok: check_comm on 3 ranks: $(grep -c '100%' "$WORK/comm.log") of 3 ranks passed every test"
# and on 4, where split's parity groups have 2 ranks each and a sub of a sub is not trivial
mpi 4 "$top_builddir/tests/check_comm" > "$WORK/comm4.log" 2>&1 || { cat "$WORK/comm4.log"; fail "check_comm on 4 ranks"; }
echo "ok: check_comm on 4 ranks (sub-groups): $(grep -c '100%' "$WORK/comm4.log") of 4 ranks passed every test"

cat > "$WORK/run.ini" <<EOF
[run]
seed = 7
[model]
plugin = gpt2
layers = 2
heads = 2
embd = 32
vocab_size = 256
context = 32
dropout = 0.0
[data]
plugin = text
path = $top_srcdir/examples/data/tiny-corpus.txt
seq_len = 32
eval_fraction = 0.05
[optim]
plugin = adamw
lr = 3e-3
weight_decay = 0.1
[schedule]
plugin = constant
[train]
steps = 20
batch_size = 6
max_grad_norm = 1.0
log_every = 1
checkpoint_every = 0
EOF
ini="$WORK/run.ini"

# run NAME NP ARGS...: train into $WORK/NAME, log in $WORK/NAME.log
run() {
  name=$1; np=$2; shift 2
  if [ "$np" = 0 ]; then
    "$LATHE" train "$ini" run.output_dir="$WORK/$name" "$@" > "$WORK/$name.log" 2>&1
  else
    mpi "$np" "$LATHE" train "$ini" run.output_dir="$WORK/$name" "$@" > "$WORK/$name.log" 2>&1
  fi || { cat "$WORK/$name.log"; fail "$name"; }
}
# same_curve NAME FROM TO: losses of steps FROM..TO within 1e-5 of the single
# run ($REF, default single)
same_curve() {
  s=$2
  while [ "$s" -le "$3" ]; do
    a=$(metric "$WORK/${REF:-single}/metrics.jsonl" "$s" loss)
    b=$(metric "$WORK/$1/metrics.jsonl" "$s" loss)
    [ -n "$a" ] && [ -n "$b" ] || fail "$1: no loss at step $s"
    awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-5) }' ||
      fail "$1: step $s loss $b, one process $a"
    s=$((s + 1))
  done
  echo "ok: $1: steps $2-$3 agree with one process within 1e-5 (step $3: $b)"
}
# field LOG RANK WHAT: the bytes of WHAT (parameters|gradients|optimizer state) in RANK's memory line
field() {
  grep "^rank $2/" "$1" | sed -E "s/.* $3 ([0-9]+) bytes.*/\\1/"
}

run single 0
P=$(sed -nE 's/^model gpt2: ([0-9]+) parameters.*/\1/p' "$WORK/single.log")
[ -n "$P" ] || fail "no parameter count in the log"
# one process through [parallel] and the mpi plugin, without mpirun
run zero2-np1 0 parallel.plugin=zero parallel.stage=2
same_curve zero2-np1 1 20

for np in 2 3; do
  run ddp-np$np $np parallel.plugin=ddp parallel.bucket_size=16K
  same_curve ddp-np$np 1 20
  [ "$(grep -c '^rank [0-9]*/'"$np"' \[parallel\] ddp' "$WORK/ddp-np$np.log")" = "$np" ] ||
    fail "ddp-np$np: not every rank reported its memory"
  for st in 1 2 3; do
    name=zero$st-np$np
    run $name $np parallel.plugin=zero parallel.stage=$st parallel.bucket_size=16K
    same_curve $name 1 20
    if [ $st = 3 ]; then
      # "... tensors in all) ... : shard ~S + largest segment L + persistent Q bytes (whole model W)"
      grep -q "zero stage 3 gathers PER SEGMENT: 2 model segments" "$WORK/$name.log" || fail "$name: not per segment"
      L=$(sed -nE 's/.*largest segment ([0-9]+) \+ persistent [0-9]+ bytes.*/\1/p' "$WORK/$name.log")
      Q=$(sed -nE 's/.*largest segment [0-9]+ \+ persistent ([0-9]+) bytes.*/\1/p' "$WORK/$name.log")
      T=$(sed -nE 's/.* trainable elements in ([0-9]+) tensors.*/\1/p' "$WORK/$name.log")
      [ -n "$L" ] && [ -n "$Q" ] && [ -n "$T" ] || fail "$name: no per-segment memory line"
    fi
    r=0; sum_opt=0; sum_seg=0
    while [ $r -lt $np ]; do
      own=$(( (r + 1) * P / np - r * P / np ))
      opt=$(field "$WORK/$name.log" $r "optimizer state")
      par=$(field "$WORK/$name.log" $r "parameters")
      if [ $st = 3 ]; then
        # per-parameter layout: rank r owns 1/N of every tensor (one
        # element more or less each), and its peak parameters are its shard
        # of the segment parameters + one whole segment + the persistent ones
        lo=$((8 * (P / np - T))); hi=$((8 * ((P + np - 1) / np + T)))
        [ "$opt" -ge $lo ] && [ "$opt" -le $hi ] ||
          fail "$name rank $r: optimizer state $opt bytes, expected 1/$np of $((8 * P)) within 8 x $T"
        [ "$par" -le $((4 * P)) ] || fail "$name rank $r: peak parameters $par bytes, more than the whole $((4 * P))"
        sum_opt=$((sum_opt + opt)); sum_seg=$((sum_seg + par - L - Q))
      else
        # AdamW keeps two f32 moments per element: 8 bytes for each owned one
        [ "$opt" = $((8 * own)) ] || fail "$name rank $r: optimizer state $opt bytes, expected 8 x $own (1/$np of $((8 * P)))"
        [ "$par" = $((4 * P)) ] || fail "$name rank $r: parameters $par bytes, expected all $((4 * P))"
      fi
      r=$((r + 1))
    done
    if [ $st = 3 ]; then
      [ $sum_opt = $((8 * P)) ] || fail "$name: the ranks' optimizer shards add up to $sum_opt bytes, not $((8 * P))"
      [ $sum_seg = $((4 * P - Q)) ] ||
        fail "$name: the ranks' shards of segment parameters add up to $sum_seg bytes, not $((4 * P - Q))"
      g=$(metric "$WORK/$name/metrics.jsonl" 5 zero_gathers)
      [ "$g" = 4.0 ] || [ "$g" = 4 ] || fail "$name: $g segment gathers in step 5, expected 2 x 2 layers"
      echo "ok: $name: per segment: 4 gathers a step; peak parameters $par of $((4 * P)) bytes (rank $((np - 1)))"
    fi
    echo "ok: $name: each rank holds 1/$np of the optimizer state ($((8 * P)) bytes in one process)"
  done
done

# whole-model stage 3 (gather = model): parameters 1/N between steps
name=zero3w-np2
run $name 2 parallel.plugin=zero parallel.stage=3 parallel.gather=model parallel.bucket_size=16K
same_curve $name 1 20
grep -q "WHOLE-MODEL gathering" "$WORK/$name.log" || fail "gather = model does not say it gathers the whole model"
for r in 0 1; do
  own=$(( (r + 1) * P / 2 - r * P / 2 ))
  [ "$(field "$WORK/$name.log" $r parameters)" = $((4 * own)) ] || fail "$name rank $r: parameters not 4 x $own"
done
echo "ok: $name: whole-model stage 3 agrees and holds 1/2 of the parameters between steps"

# stage 3 with activation checkpointing (the backward re-runs each block
# between its gather and release) and 2 micro-batches a step
name=zero3ac-np3
run $name 3 parallel.plugin=zero parallel.stage=3 parallel.bucket_size=16K train.activation_checkpointing=true \
  train.batch_size=3 train.grad_accum=2
same_curve $name 1 20
g=$(metric "$WORK/$name/metrics.jsonl" 5 zero_gathers)
[ "$g" = 8.0 ] || [ "$g" = 8 ] || fail "$name: $g segment gathers in step 5, expected 2 x 2 layers x 2 micro-batches"
echo "ok: $name: activation checkpointing + grad accumulation: 8 gathers a step, same curve"

# deeper model: one gathered layer at a time stays below the whole model
run single4 0 model.layers=4
P4=$(sed -nE 's/^model gpt2: ([0-9]+) parameters.*/\1/p' "$WORK/single4.log")
name=zero3L4-np2
run $name 2 parallel.plugin=zero parallel.stage=3 model.layers=4
REF=single4 same_curve $name 1 20
g=$(metric "$WORK/$name/metrics.jsonl" 5 zero_gathers)
[ "$g" = 8.0 ] || [ "$g" = 8 ] || fail "$name: $g segment gathers in step 5, expected 2 x 4 layers"
for r in 0 1; do
  par=$(field "$WORK/$name.log" $r parameters)
  [ "$par" -lt $((4 * P4)) ] || fail "$name rank $r: peak parameters $par bytes, not below the whole model's $((4 * P4))"
done
peak=$(metric "$WORK/$name/metrics.jsonl" 5 zero_param_bytes_peak)
awk -v p="$peak" -v w=$((4 * P4)) 'BEGIN { exit !(p > 0 && p < w) }' ||
  fail "$name: measured peak parameter bytes $peak, not below the whole model's $((4 * P4))"
echo "ok: $name: 8 gathers a step; peak parameters $par bytes (measured $peak) of $((4 * P4))"

# stopped at step 10 on 2 processes, resumed on 3 (and stage 3 the other way)
run zres-a 2 parallel.plugin=zero parallel.stage=2 train.steps=10
[ -f "$WORK/zres-a/checkpoints/step-00000010/zero-manifest.json" ] || fail "no ZeRO manifest in the checkpoint"
[ -d "$WORK/zres-a/checkpoints/step-00000010/zero-rank-1" ] || fail "no shard of rank 1 in the checkpoint"
run zres-a 3 parallel.plugin=zero parallel.stage=2 --resume
grep -q "resharded onto 3" "$WORK/zres-a.log" || { cat "$WORK/zres-a.log"; fail "2 -> 3: no resharding"; }
same_curve zres-a 11 20
run zres-b 3 parallel.plugin=zero parallel.stage=3 train.steps=10
run zres-b 2 parallel.plugin=zero parallel.stage=3 --resume
grep -q "resharded onto 2" "$WORK/zres-b.log" || { cat "$WORK/zres-b.log"; fail "3 -> 2: no resharding"; }
same_curve zres-b 11 20
# same number of processes, flat stage 2 -> per-parameter stage 3: resharded
run zres-d 2 parallel.plugin=zero parallel.stage=2 train.steps=10
run zres-d 2 parallel.plugin=zero parallel.stage=3 --resume
grep -q "resharded onto 2 (per-parameter layout)" "$WORK/zres-d.log" || { cat "$WORK/zres-d.log"; fail "stage 2 -> 3: no resharding"; }
same_curve zres-d 11 20
# same number of processes: each rank reads its own shard back
run zres-c 2 parallel.plugin=zero parallel.stage=1 train.steps=10
run zres-c 2 parallel.plugin=zero parallel.stage=1 --resume
same_curve zres-c 11 20

# cpu_offload on the CPU: the optimizer is in host memory already, so the
# curve is the same and the log says where its state is; the checkpoint of
# an offloaded run is an ordinary one (resumed without offload). The device
# side of offload is in e2e_fakedev.sh.
name=zero2off-np3
run $name 3 parallel.plugin=zero parallel.stage=2 parallel.cpu_offload=true parallel.bucket_size=16K
same_curve $name 1 20
grep -q "cpu_offload: optimizer state and step are in host memory" "$WORK/$name.log" ||
  fail "$name: the log does not say where the optimizer state is"
run zres-e 2 parallel.plugin=zero parallel.stage=3 parallel.cpu_offload=true train.steps=10
run zres-e 2 parallel.plugin=zero parallel.stage=3 --resume
same_curve zres-e 11 20

# settings that cannot be honoured are errors naming the key
expect_fail "stage 4" "stage" "$LATHE" train "$ini" run.output_dir="$WORK/bad1" parallel.plugin=zero parallel.stage=4
expect_fail "no stage" "stage" "$LATHE" train "$ini" run.output_dir="$WORK/bad2" parallel.plugin=zero
expect_fail "gather on stage 2" "gather" "$LATHE" train "$ini" run.output_dir="$WORK/bad4" parallel.plugin=zero \
  parallel.stage=2 parallel.gather=model
expect_fail "bucket of 2 bytes" "bucket_size" "$LATHE" train "$ini" run.output_dir="$WORK/bad3" parallel.plugin=ddp \
  parallel.bucket_size=2
run ddpck 0 parallel.plugin=ddp train.steps=2
expect_fail "zero resuming a ddp checkpoint" "manifest" "$LATHE" train "$ini" run.output_dir="$WORK/ddpck" \
  parallel.plugin=zero parallel.stage=1 --resume
echo "e2e_mpi: all passed"
