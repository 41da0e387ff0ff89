#!/bin/sh
# Every host read or write of tensor data goes through the backend: the runs
# of a `[run] device = cuda` user, on the pretend device of
# tests/plugins/fakedev.c (the CPU's arithmetic behind pointers that crash
# when host code touches them). Pretraining with checkpoints, --resume, the
# final model, LoRA on GPT-2 and Llama with the adapter saved and used by
# `lathe generate --adapter`, GRPO with a frozen reference, DPO, and DDP
# and ZeRO (with cpu_offload: the optimizer in host memory) where mpirun is
# present. The pretend device does the CPU's arithmetic, so
# every loss equals the CPU run's and every file written is the same.
. "$top_srcdir/tests/e2e_lib.sh"
[ -f "$LATHE_TEST_PLUGINS/lathe-fakedev.so" ] || { echo "SKIP: tests/lathe-fakedev.so not built"; exit 77; }
if [ -n "${LATHE_SANITIZED:-}" ]; then
  echo "skip: tagged pointers are not what the sanitizers expect"
  exit 77
fi
# the fake backend alone (the other test plugins there are broken on purpose)
mkdir -p "$WORK/fakedev"
ln -s "$LATHE_TEST_PLUGINS/lathe-fakedev.so" "$WORK/fakedev/" || fail "ln"
LATHE_PLUGIN_PATH="$LATHE_PLUGIN_PATH:$WORK/fakedev"
export LATHE_PLUGIN_PATH
FD="run.device=cuda run.backend=fakedev"
ex="$top_srcdir/examples"
mkdir -p "$WORK/examples" "$WORK/runs"
cp -r "$ex/arith" "$WORK/examples/"
cp "$ex/arith-sft.ini" "$ex/grpo-arith.ini" "$ex/dpo-arith.ini" "$WORK/examples/"
cd "$WORK" || fail "cd"

# losses NAME: the loss and eval_loss values of runs/NAME, one per line
losses() { grep -o '"\(eval_\)\{0,1\}loss": *[-0-9.eE+]*' "runs/$1/metrics.jsonl"; }
# same A B WHAT: runs A and B logged the same losses
same() {
  [ -s "runs/$1/metrics.jsonl" ] || fail "$3: runs/$1 logged nothing"
  losses "$1" > "$1.losses"; losses "$2" > "$2.losses"
  cmp -s "$1.losses" "$2.losses" || { diff "$1.losses" "$2.losses" | head; fail "$3: losses differ"; }
  echo "ok: $3: $(wc -l < "$1.losses") losses equal the CPU run's (last $(tail -1 "$1.losses"))"
}
# train LOG ARGS...: lathe train, failing with the log's tail
train() { log=$1; shift; "$LATHE" train "$@" > "$log" 2>&1 || { tail -15 "$log"; fail "lathe train $* (see $log)"; }; }

expect_fail "backend without device = cuda" "device = cuda" "$LATHE" train examples/arith-sft.ini run.backend=fakedev

# 1. pretraining: checkpoints, the final model, and --resume from step 12
sft="train.steps=20 train.eval_every=10 train.eval_batches=2 train.log_every=1 train.checkpoint_every=10"
train cpu-sft.log examples/arith-sft.ini $sft run.output_dir=runs/sft-cpu
train fd-sft.log examples/arith-sft.ini $sft run.output_dir=runs/arith-sft $FD
same arith-sft sft-cpu "pretraining"
cmp -s runs/arith-sft/final/model.safetensors runs/sft-cpu/final/model.safetensors || fail "the final models differ"
cmp -s runs/arith-sft/checkpoints/step-00000020/state.safetensors runs/sft-cpu/checkpoints/step-00000020/state.safetensors ||
  fail "the checkpoints differ"
train fd-res1.log examples/arith-sft.ini $sft train.steps=12 run.output_dir=runs/sft-res $FD
train fd-res2.log examples/arith-sft.ini $sft --resume run.output_dir=runs/sft-res $FD
grep -q "resumed from .*step-00000012" fd-res2.log || { cat fd-res2.log; fail "did not resume from step 12"; }
for s in 13 16 20; do
  [ "$(metric runs/sft-res/metrics.jsonl $s loss)" = "$(metric runs/arith-sft/metrics.jsonl $s loss)" ] ||
    fail "resumed: step $s loss differs"
done
echo "ok: the final model and checkpoint equal the CPU run's byte for byte; --resume continues the curve"
cp examples/arith/tokenizer.json runs/arith-sft/final/

# 2. LoRA on GPT-2: the adapter, then generation with it on the device
cat > examples/lora.ini <<'EOF'
[run]
seed = 7
[model]
plugin = gpt2
pretrained = ../runs/arith-sft/final
[data]
plugin = text
path = arith/sft.txt
seq_len = 64
eval_fraction = 0.05
[peft]
plugin = lora
rank = 4
alpha = 8
target_modules = c_attn, c_fc
base_dtype = bfloat16
[optim]
plugin = adamw
lr = 3e-3
weight_decay = 0.0
[train]
steps = 6
batch_size = 8
eval_every = 3
eval_batches = 2
log_every = 1
checkpoint_every = 3
EOF
train cpu-lora.log examples/lora.ini run.output_dir=runs/lora-cpu
train fd-lora.log examples/lora.ini run.output_dir=runs/lora-fd $FD
same lora-fd lora-cpu "LoRA on GPT-2"
cmp -s runs/lora-fd/adapter/adapter_model.safetensors runs/lora-cpu/adapter/adapter_model.safetensors ||
  fail "the LoRA adapters differ"
gen="--model runs/arith-sft/final --prompt 12+7= --template raw --max-new-tokens 16"
"$LATHE" generate $gen --adapter runs/lora-cpu/adapter > gen-cpu.txt 2> gen-cpu.err || { cat gen-cpu.err; fail "generate (CPU)"; }
"$LATHE" generate $gen --adapter runs/lora-fd/adapter --device cuda --backend fakedev > gen-fd.txt 2> gen-fd.err ||
  { cat gen-fd.err; fail "generate --adapter on the device"; }
cmp -s gen-cpu.txt gen-fd.txt || fail "generation on the device differs: '$(cat gen-fd.txt)' vs '$(cat gen-cpu.txt)'"
echo "ok: the adapter equals the CPU run's; generate --adapter on the device gives the same text"

# 3. LoRA on Llama (a tiny model converted from a GGUF fixture, with its
# tokenizer), chat data, the adapter, and generation
tiny_llama_lora llama.ini
lcfg="optim.lr=1e-2 train.checkpoint_every=2"
train cpu-llama.log llama.ini run.output_dir=runs/llama-cpu $lcfg
train fd-llama.log llama.ini run.output_dir=runs/llama-fd $lcfg $FD
same llama-fd llama-cpu "LoRA on Llama"
cmp -s runs/llama-fd/adapter/adapter_model.safetensors runs/llama-cpu/adapter/adapter_model.safetensors ||
  fail "the Llama adapters differ"
gen="--model tinyllama --prompt hello --max-new-tokens 8"
"$LATHE" generate $gen --adapter runs/llama-cpu/adapter > lgen-cpu.txt 2> lgen-cpu.err || { cat lgen-cpu.err; fail "generate llama (CPU)"; }
"$LATHE" generate $gen --adapter runs/llama-fd/adapter --device cuda --backend fakedev > lgen-fd.txt 2> lgen-fd.err ||
  { cat lgen-fd.err; fail "generate llama --adapter on the device"; }
cmp -s lgen-cpu.txt lgen-fd.txt || fail "llama generation on the device differs"
echo "ok: Llama LoRA and generation on the device equal the CPU's"

# 4. GRPO (rollouts, a frozen reference copy with beta > 0) and DPO
grpo="train.steps=3 train.batch_size=8 data.num_generations=4 data.max_completion_length=24 train.eval_every=3 loss.beta=0.04"
train cpu-grpo.log examples/grpo-arith.ini $grpo run.output_dir=runs/grpo-cpu
train fd-grpo.log examples/grpo-arith.ini $grpo run.output_dir=runs/grpo-fd $FD
same grpo-fd grpo-cpu "GRPO"
for k in grpo_entropy grpo_clip_fraction grpo_kl grpo_reward_mean; do
  [ "$(metric runs/grpo-fd/metrics.jsonl 3 $k)" = "$(metric runs/grpo-cpu/metrics.jsonl 3 $k)" ] || fail "GRPO: $k differs"
done
dpo="train.steps=3 train.batch_size=8 train.eval_every=0 data.eval_fraction=0.0"
train cpu-dpo.log examples/dpo-arith.ini $dpo run.output_dir=runs/dpo-cpu
train fd-dpo.log examples/dpo-arith.ini $dpo run.output_dir=runs/dpo-fd $FD
same dpo-fd dpo-cpu "DPO"
[ "$(metric runs/dpo-fd/metrics.jsonl 3 dpo_reward_margin)" = "$(metric runs/dpo-cpu/metrics.jsonl 3 dpo_reward_margin)" ] ||
  fail "DPO: the reward margin differs"

# 5. DDP: each rank's rows of the batch are cut on the device
if command -v mpirun >/dev/null 2>&1 && [ -f "${LATHE_PLUGIN_PATH%%:*}/lathe-mpi.so" ]; then
  if [ "$(id -u)" = 0 ]; then
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    export OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM
  fi
  cat > ddp.ini <<EOF
[parallel]
plugin = ddp
EOF
  cat examples/arith-sft.ini ddp.ini > examples/ddp.ini
  d="train.steps=3 train.eval_every=0 train.log_every=1"
  OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 "$LATHE" train examples/ddp.ini $d run.output_dir=runs/ddp-cpu > cpu-ddp.log 2>&1 ||
    { tail cpu-ddp.log; fail "DDP (CPU)"; }
  OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 "$LATHE" train examples/ddp.ini $d run.output_dir=runs/ddp-fd $FD > fd-ddp.log 2>&1 ||
    { tail fd-ddp.log; fail "DDP on the device"; }
  same ddp-fd ddp-cpu "DDP on 2 ranks"
  # ZeRO-3: per-layer gathers, reduce-scatters and shard copies all in
  # device memory (the mpi plugin stages them through the host)
  printf '[parallel]\nplugin = zero\nstage = 3\n' | cat examples/arith-sft.ini - > examples/zero3.ini
  OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 "$LATHE" train examples/zero3.ini $d run.output_dir=runs/z3-cpu > cpu-z3.log 2>&1 ||
    { tail cpu-z3.log; fail "ZeRO-3 (CPU)"; }
  OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 "$LATHE" train examples/zero3.ini $d run.output_dir=runs/z3-fd $FD > fd-z3.log 2>&1 ||
    { tail fd-z3.log; fail "ZeRO-3 on the device"; }
  same z3-fd z3-cpu "ZeRO-3 on 2 ranks"
  # ZeRO cpu_offload: the optimizer's views, moments and step in host
  # memory, the shard gradients copied off the device and the updated shard
  # back (a host kernel on a device pointer, or the reverse, crashes here).
  # Stages 1 and 3 (flat and per-parameter layouts): 3 steps, a checkpoint,
  # --resume to 6 on 2 ranks, all equal to the CPU run without offload; the
  # same checkpoint resumed on 1 process (its shards resharded) within 1e-5.
  c="train.eval_every=0 train.log_every=1 train.checkpoint_every=3"
  OFF="parallel.cpu_offload=true"
  for st in 1 3; do
    printf '[parallel]\nplugin = zero\nstage = %s\n' $st | cat examples/arith-sft.ini - > examples/zero$st.ini
    OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 "$LATHE" train examples/zero$st.ini $c train.steps=6 \
      run.output_dir=runs/z$st-cpu6 > cpu-z$st-6.log 2>&1 || { tail cpu-z$st-6.log; fail "ZeRO-$st (CPU, 6 steps)"; }
    OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 "$LATHE" train examples/zero$st.ini $c train.steps=3 $OFF \
      run.output_dir=runs/z${st}o-fd $FD > fd-z${st}o.log 2>&1 || { tail fd-z${st}o.log; fail "ZeRO-$st offload on the device"; }
    grep -q "^rank 1/2 \[parallel\] zero: .* optimizer state [0-9]* bytes in host memory" fd-z${st}o.log ||
      { grep '^rank' fd-z${st}o.log; fail "ZeRO-$st offload: the memory line does not say host memory"; }
    cp -r runs/z${st}o-fd runs/z${st}o-np1
    OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 "$LATHE" train examples/zero$st.ini $c train.steps=6 $OFF --resume \
      run.output_dir=runs/z${st}o-fd $FD > fd-z${st}o-res.log 2>&1 ||
      { tail fd-z${st}o-res.log; fail "ZeRO-$st offload --resume on the device"; }
    grep -q "resumed from .*step-00000003" fd-z${st}o-res.log || { cat fd-z${st}o-res.log; fail "did not resume from step 3"; }
    same z${st}o-fd z$st-cpu6 "ZeRO-$st cpu_offload on 2 ranks, resumed at step 3"
    "$LATHE" train examples/zero$st.ini $c train.steps=6 $OFF --resume run.output_dir=runs/z${st}o-np1 $FD \
      > fd-z${st}o-np1.log 2>&1 || { tail fd-z${st}o-np1.log; fail "ZeRO-$st offload resumed on 1 process"; }
    grep -q "optimizer state of 2 ranks resharded onto 1" fd-z${st}o-np1.log || fail "ZeRO-$st offload: not resharded"
    for s in 4 5 6; do
      a=$(metric runs/z$st-cpu6/metrics.jsonl $s loss); b=$(metric runs/z${st}o-np1/metrics.jsonl $s loss)
      awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d <= 1e-5) }' ||
        fail "ZeRO-$st offload resumed on 1 process: step $s loss $b, the 2-rank run's $a"
    done
    echo "ok: ZeRO-$st cpu_offload: the 2-rank checkpoint resumed on 1 process continues the curve (step 6: $b)"
  done
  # fp16 with clipping: the loss scaler's unscale and the clip run on the
  # host copies; offload changes no number of the same device run
  f="train.steps=4 train.eval_every=0 train.log_every=1 train.max_grad_norm=1.0 run.precision=fp16"
  OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 "$LATHE" train examples/zero1.ini $f run.output_dir=runs/z16-fd $FD \
    > fd-z16.log 2>&1 || { tail fd-z16.log; fail "ZeRO fp16 on the device"; }
  OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 "$LATHE" train examples/zero1.ini $f $OFF run.output_dir=runs/z16o-fd $FD \
    > fd-z16o.log 2>&1 || { tail fd-z16o.log; fail "ZeRO fp16 offload on the device"; }
  same z16o-fd z16-fd "ZeRO-1 fp16 + clipping, offload vs not on the device"
else
  echo "(no mpirun or mpi plugin: DDP not run)"
fi
echo "e2e_fakedev: all passed"
