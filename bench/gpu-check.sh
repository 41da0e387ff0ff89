#!/bin/sh
# The GPU check of issue 7, in one script for a machine lent for minutes:
# builds lathe with CUDA in a fresh build directory, runs the GPU tests
# (tests/check_cuda: every CUDA slot against the CPU backend, and 20 training
# steps following the CPU loss curve; tests/check_nccl), then
#   0. `lathe train` end to end on the GPU: a 20-step fp32 run whose losses
#      must follow the CPU run's within 1e-4, with checkpoints, --resume and
#      the final model; LoRA with its adapter and `lathe generate --adapter
#      --device cuda`; a few GRPO and DPO steps (rollouts on the device);
#   1. GPT-2 124M, bf16, B=16, T=1024: tokens/s and MFU against the H200's
#      dense bf16 peak of 790 TFLOP/s;
#   2. a Llama-architecture model of about 1.1B parameters (TinyLlama's
#      shape, random weights), LoRA rank 16, bf16: tokens/s and peak device
#      memory.
# Everything goes to OUT_DIR: gpu-check.log (all output), summary.txt (the
# figures), the test logs and each run's metrics.jsonl. Within 8 minutes on
# one H200: every stage has its own time limit, cut to what is left of the
# 470 s budget (a stage with too little left is skipped, and says so).
#
#   bench/gpu-check.sh OUT_DIR
#
# Environment: CUDA_DIR (default /usr/local/cuda), BUILD_DIR (default a
# fresh mktemp -d), JOBS (default nproc), BUDGET_S (default 470). The build
# needs the project's dependencies (scripts/install-deps.sh); ./configure
# comes from autoreconf, or from the tree if it was generated already.
set -u
[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
top=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1" || exit 1
out=$(cd "$1" && pwd)
log="$out/gpu-check.log"
summary="$out/summary.txt"
: > "$summary"
exec > "$log" 2>&1 </dev/null
cuda=${CUDA_DIR:-/usr/local/cuda}
jobs=${JOBS:-$(nproc 2>/dev/null || echo 4)}
build=${BUILD_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/lathe-gpu-build.XXXXXX")}
started=$(date +%s)
budget=${BUDGET_S:-470}

say() { echo "$*"; echo "$*" >> "$summary"; }
stage() { echo; echo "=== $* ($(( $(date +%s) - started )) s)"; }
fail() { say "FAILED: $*"; say "log: $log"; cat "$summary" >&2; exit 1; }
# lim N: N seconds, or what is left of the budget if that is less
lim() { l=$(( budget - ($(date +%s) - started) )); [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }
# enough N WHAT: false (and says so) when less than N seconds are left
enough() { [ "$(lim "$1")" -ge "$1" ] && return 0; say "$2: SKIPPED, only $(lim "$1") s of the ${budget} s budget left"; return 1; }

stage "machine"
uname -a
nvidia-smi -L 2>&1 || echo "(no nvidia-smi)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
"$cuda/bin/nvcc" --version 2>&1 | tail -2
say "gpu-check of $(cd "$top" && git rev-parse --short HEAD 2>/dev/null || echo 'an unversioned tree') on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"

stage "configure and build with CUDA in $build"
if [ ! -x "$top/configure" ]; then
  (cd "$top" && timeout 120 autoreconf -fi) || fail "autoreconf (install autoconf, automake, libtool, or carry configure)"
fi
cd "$build" || fail "cd $build"
timeout 120 "$top/configure" -q --with-cuda="$cuda" || fail "configure --with-cuda=$cuda (see $build/config.log)"
grep -q "^HAVE_CUDA_TRUE=''" config.log ||
  fail "configure did not enable CUDA"
timeout "$(lim 200)" make -j"$jobs" >/dev/null || { make 2>&1 | tail -40; fail "make"; }
[ -f plugins/.libs/lathe-cuda.so ] || fail "no plugins/.libs/lathe-cuda.so after make"
say "build: ok ($(( $(date +%s) - started )) s)"

stage "GPU tests"
# only the GPU suites (and nothing else of check_PROGRAMS) are built here
gpu_tests="tests/check_cuda tests/check_nccl"
timeout "$(lim 120)" make -j"$jobs" check TESTS="$gpu_tests" check_PROGRAMS="$gpu_tests" check_LTLIBRARIES= \
  >/dev/null 2>&1
rc=$?
for t in $gpu_tests; do
  n=$(basename "$t")
  cp "$t.log" "$out/$n.log" 2>/dev/null
  cat "$t.log" 2>/dev/null
  case $(sed -n 's/^:test-result: //p' "$t.trs" 2>/dev/null) in
    PASS) say "$t: PASS" ;;
    SKIP) say "$t: SKIP (see $n.log: no device, or one GPU where it needs two)" ;;
    *) say "$t: FAIL (make check rc $rc; see $n.log)" ;;
  esac
done

export LATHE_PLUGIN_PATH="$build/plugins/.libs" LATHE_PLAIN=1 LATHE_CUDA_STATS=1 OMP_NUM_THREADS=4
corpus="$top/examples/data/tiny-corpus.txt"

# median tokens/s of the steps after the first 3, from a metrics.jsonl
median_tps() {
  python3 - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
tps = [r["tokens_per_s"] for r in rows[3:]] or [r["tokens_per_s"] for r in rows]
print(f"{statistics.median(tps):.0f} {len(rows)} {rows[0]['loss']:.4f} {rows[-1]['loss']:.4f}" if tps else "0 0 nan nan")
PY
}

# peak of nvidia-smi's memory.used while a command runs (MiB), beside the
# allocator's own high-water mark (LATHE_CUDA_STATS=1 prints it at exit)
smi_watch_start() {
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$1" 2>/dev/null &
    smi_pid=$!
  else
    smi_pid=
  fi
}
smi_watch_stop() {
  [ -n "$smi_pid" ] && kill "$smi_pid" 2>/dev/null && wait "$smi_pid" 2>/dev/null
  sort -n "$1" 2>/dev/null | tail -1
}

stage "end to end on the GPU: train, checkpoint, resume, save, LoRA, generate, GRPO, DPO"
# the runs of tests/e2e_fakedev.sh (which proves on a CPU machine that no
# host code touches device memory), here on the real device
e2e="$out/e2e"
mkdir -p "$e2e/examples" "$e2e/runs"
cp -r "$top/examples/arith" "$e2e/examples/"
cp "$top/examples/arith-sft.ini" "$top/examples/grpo-arith.ini" "$top/examples/dpo-arith.ini" "$e2e/examples/"
# e2e_train NAME TIMEOUT ARGS...: lathe train in $e2e, log NAME.log; 0 if it ran to the end
e2e_train() {
  n=$1; t=$2; shift 2
  (cd "$e2e" && timeout "$(lim "$t")" "$build/lathe" train "$@" > "$n.log" 2>&1)
  r=$?
  [ $r -eq 0 ] || { tail -5 "$e2e/$n.log"; say "  $n: exit $r (see e2e/$n.log)"; }
  return $r
}
# follows A B TOL: runs A and B logged the same steps, losses within TOL
follows() {
  python3 - "$e2e/runs/$1/metrics.jsonl" "$e2e/runs/$2/metrics.jsonl" "$3" <<'PY'
import json, sys
def losses(p):
    return {r["step"]: r["loss"] for r in map(json.loads, open(p)) if "loss" in r}
a, b, tol = losses(sys.argv[1]), losses(sys.argv[2]), float(sys.argv[3])
steps = sorted(set(a) & set(b))
worst = max((abs(a[s] - b[s]), s) for s in steps) if steps else (float("inf"), 0)
print(f"{len(steps)} steps, max |diff| {worst[0]:.2e} at step {worst[1]}")
sys.exit(0 if steps and len(steps) == len(a) and worst[0] <= tol else 1)
PY
}
if enough 40 "end-to-end GPU runs"; then
  sft="train.steps=20 train.eval_every=10 train.eval_batches=2 train.log_every=1 train.checkpoint_every=10"
  ok=1 r=
  e2e_train sft-cpu 30 examples/arith-sft.ini $sft run.output_dir=runs/sft-cpu || ok=0
  e2e_train sft-gpu 30 examples/arith-sft.ini $sft run.output_dir=runs/arith-sft run.device=cuda || ok=0
  if [ $ok = 1 ] && r=$(follows arith-sft sft-cpu 1e-4); then
    say "20-step fp32 run on the GPU (lathe train, checkpoints, final model): PASS, follows the CPU within 1e-4 ($r)"
  else
    say "20-step fp32 run on the GPU: FAIL (${r:-a run failed}; see e2e/sft-*.log)"
  fi
  r=
  # bf16 on the demo converges like fp32 (on the CPU, the bf16 emulation of
  # this very run stays within 5e-4 of fp32 at every step)
  if e2e_train bf16-gpu 30 examples/arith-sft.ini $sft run.output_dir=runs/sft-bf16 run.device=cuda run.precision=bf16 &&
     r=$(follows sft-bf16 sft-cpu 0.05); then
    say "20-step bf16 run on the GPU: PASS, within 0.05 of the fp32 CPU curve ($r)"
  else
    say "20-step bf16 run on the GPU: FAIL (${r:-the run failed}; see e2e/bf16-gpu.log)"
  fi
  r=
  if e2e_train ac-gpu 30 examples/arith-sft.ini $sft run.output_dir=runs/sft-ac run.device=cuda \
       train.activation_checkpointing=true && r=$(follows sft-ac arith-sft 1e-5); then
    say "activation checkpointing on the GPU: PASS, the same curve ($r)"
  else
    say "activation checkpointing on the GPU: FAIL (${r:-the run failed}; see e2e/ac-gpu.log)"
  fi
  r=
  if e2e_train res1-gpu 30 examples/arith-sft.ini $sft train.steps=12 run.output_dir=runs/sft-res run.device=cuda &&
     e2e_train res2-gpu 30 examples/arith-sft.ini $sft --resume run.output_dir=runs/sft-res run.device=cuda &&
     r=$(follows sft-res arith-sft 1e-4); then
    say "--resume on the GPU from step 12: PASS, continues the uninterrupted curve ($r)"
  else
    say "--resume on the GPU: FAIL (${r:-a run failed}; see e2e/res*-gpu.log)"
  fi
  cp "$e2e/examples/arith/tokenizer.json" "$e2e/runs/arith-sft/final/" 2>/dev/null
  cat > "$e2e/examples/lora.ini" <<'EOF'
[run]
seed = 7
device = cuda
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
[train]
steps = 6
batch_size = 8
eval_every = 3
eval_batches = 2
log_every = 1
checkpoint_every = 3
EOF
  if e2e_train lora-gpu 30 examples/lora.ini run.output_dir=runs/lora-gpu &&
     (cd "$e2e" && timeout "$(lim 30)" "$build/lathe" generate --model runs/arith-sft/final --adapter runs/lora-gpu/adapter \
        --device cuda --prompt "12+7=" --template raw --max-new-tokens 16 > gen-gpu.txt 2> gen-gpu.log); then
    say "LoRA on the GPU, adapter saved, generate --adapter --device cuda: PASS ($(tail -1 "$e2e/gen-gpu.log"))"
  else
    say "LoRA / generate --adapter on the GPU: FAIL (see e2e/lora-gpu.log, e2e/gen-gpu.log)"
  fi
  if e2e_train grpo-gpu 40 examples/grpo-arith.ini train.steps=3 train.batch_size=8 data.num_generations=4 \
       data.max_completion_length=24 train.eval_every=3 loss.beta=0.04 run.output_dir=runs/grpo-gpu run.device=cuda; then
    say "GRPO, 3 steps on the GPU (rollouts, frozen reference): PASS"
  else
    say "GRPO on the GPU: FAIL (see e2e/grpo-gpu.log)"
  fi
  dpo="train.steps=3 train.batch_size=8 train.eval_every=0 data.eval_fraction=0.0"
  r=
  if e2e_train dpo-cpu 40 examples/dpo-arith.ini $dpo run.output_dir=runs/dpo-cpu &&
     e2e_train dpo-gpu 40 examples/dpo-arith.ini $dpo run.output_dir=runs/dpo-gpu run.device=cuda &&
     r=$(follows dpo-gpu dpo-cpu 1e-4); then
    say "DPO, 3 steps on the GPU: PASS, follows the CPU within 1e-4 ($r)"
  else
    say "DPO on the GPU: FAIL (${r:-a run failed}; see e2e/dpo-*.log)"
  fi
fi

stage "benchmark 1: GPT-2 124M, bf16, B=16, T=1024"
mkdir -p "$out/gpt2"
cat > "$out/gpt2/gpt2-124m-gpu.ini" <<EOF
[run]
output_dir = $out/gpt2/run
device = cuda
precision = bf16
[model]
plugin = gpt2
layers = 12
heads = 12
embd = 768
vocab_size = 50304
context = 1024
dropout = 0.0
[data]
plugin = text
path = $corpus
seq_len = 1024
eval_fraction = 0.0
[optim]
plugin = adamw
lr = 6e-4
[train]
steps = 20
batch_size = 16
max_grad_norm = 1.0
save_final = false
[log]
tensorboard = false
EOF
if enough 40 "GPT-2 124M bf16 benchmark"; then
  smi_watch_start "$out/gpt2/smi.txt"
  timeout "$(lim 120)" "$build/lathe" train "$out/gpt2/gpt2-124m-gpu.ini" > "$out/gpt2/train.log" 2>&1
  rc=$?
  peak_smi=$(smi_watch_stop "$out/gpt2/smi.txt")
  tail -5 "$out/gpt2/train.log"
  if [ -f "$out/gpt2/run/metrics.jsonl" ]; then
    cp "$out/gpt2/run/metrics.jsonl" "$out/gpt2/metrics.jsonl"
    set -- $(median_tps "$out/gpt2/run/metrics.jsonl")
    # N: the parameter count the run printed (124475904 with the padded
    # vocabulary of 50304, embeddings included, as llm.c counts them).
    # Model FLOPs per token (PaLM, appendix B; llm.c's estimate_mfu): 6 N
    # for the matrix products forward and backward, plus 12 L C T for
    # attention's QK^T and AV (L 12 layers, C 768, T 1024).
    np=$(sed -n 's/.*model gpt2: \([0-9]*\) parameters.*/\1/p' "$out/gpt2/train.log" | head -1)
    np=${np:-124475904}
    mfu=$(awk -v t="$1" -v n="$np" 'BEGIN { f = 6 * n + 12 * 12 * 768 * 1024; printf "%.1f", 100 * t * f / 790e12 }')
    say "GPT-2 124M bf16, B=16, T=1024: $1 tokens/s (median of steps 4..$2), MFU $mfu % of 790 TFLOP/s (N = $np); loss $3 -> $4"
    say "  peak device memory: $(grep -h 'lathe-cuda: peak' "$out/gpt2/train.log" | sed 's/lathe-cuda: //'); nvidia-smi peak ${peak_smi:-?} MiB"
    [ $rc -eq 0 ] || say "  the run exited $rc (see gpt2/train.log)"
  else
    say "GPT-2 124M: no metrics (exit $rc); see gpt2/train.log"
  fi
fi

stage "benchmark 2: Llama ~1.1B (TinyLlama shape), LoRA rank 16, bf16"
mkdir -p "$out/llama"
model="${TMPDIR:-/tmp}/lathe-llama-1b.$$"
mkdir -p "$model"
# Random weights in the Hugging Face layout, made with the standard library
# only: each tensor repeats one block of N(0, 0.02) bf16 values (norms 1.0).
enough 30 "the random Llama model" &&
timeout "$(lim 60)" python3 - "$model" <<'PY' || say "  could not write the random model (python3)"
import json, os, random, struct, sys
d = sys.argv[1]
cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=2048, intermediate_size=5632,
           num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
           max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
           torch_dtype="bfloat16", hidden_act="silu", bos_token_id=1, eos_token_id=2)
json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=1)
C, I, L, V, Hkv, D = 2048, 5632, 22, 32000, 4, 64
shapes = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,), "lm_head.weight": (V, C)}
for l in range(L):
    p = f"model.layers.{l}."
    shapes.update({p + "self_attn.q_proj.weight": (C, C), p + "self_attn.k_proj.weight": (Hkv * D, C),
                   p + "self_attn.v_proj.weight": (Hkv * D, C), p + "self_attn.o_proj.weight": (C, C),
                   p + "mlp.gate_proj.weight": (I, C), p + "mlp.up_proj.weight": (I, C),
                   p + "mlp.down_proj.weight": (C, I), p + "input_layernorm.weight": (C,),
                   p + "post_attention_layernorm.weight": (C,)})
rng = random.Random(7)
def bf16(x): return struct.unpack("<I", struct.pack("<f", x))[0] >> 16
block = struct.pack("<4096H", *[bf16(rng.gauss(0.0, 0.02)) for _ in range(4096)])
one = struct.pack("<H", bf16(1.0))
header, off = {}, 0
for name, shp in shapes.items():
    n = 1
    for s in shp: n *= s
    header[name] = {"dtype": "BF16", "shape": list(shp), "data_offsets": [off, off + 2 * n]}
    off += 2 * n
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(os.path.join(d, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h))); f.write(h)
    for name, shp in shapes.items():
        n = 1
        for s in shp: n *= s
        if len(shp) == 1:
            f.write(one * n)
        else:
            full, rest = divmod(2 * n, len(block))
            f.write(block * full + block[:rest])
print(f"wrote {off / 2**30:.2f} GiB of bf16 weights to {d}")
PY
cat > "$out/llama/llama-1b-lora-gpu.ini" <<EOF
[run]
output_dir = $out/llama/run
device = cuda
precision = bf16
[model]
plugin = llama
pretrained = $model
[data]
plugin = text
path = $corpus
seq_len = 1024
eval_fraction = 0.0
[peft]
plugin = lora
rank = 16
alpha = 32
target_modules = q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj
base_dtype = bfloat16
[optim]
plugin = adamw
lr = 2e-4
[train]
steps = 10
batch_size = 8
max_grad_norm = 1.0
save_final = false
[log]
tensorboard = false
EOF
if [ -f "$model/model.safetensors" ] && enough 40 "Llama 1.1B LoRA benchmark"; then
  smi_watch_start "$out/llama/smi.txt"
  timeout "$(lim 150)" "$build/lathe" train "$out/llama/llama-1b-lora-gpu.ini" > "$out/llama/train.log" 2>&1
  rc=$?
  peak_smi=$(smi_watch_stop "$out/llama/smi.txt")
  tail -5 "$out/llama/train.log"
  if [ -f "$out/llama/run/metrics.jsonl" ]; then
    cp "$out/llama/run/metrics.jsonl" "$out/llama/metrics.jsonl"
    set -- $(median_tps "$out/llama/run/metrics.jsonl")
    say "Llama 1.1B LoRA r16 bf16 (frozen base stored bf16), B=8, T=1024: $1 tokens/s (median of steps 4..$2); loss $3 -> $4"
    say "  peak device memory: $(grep -h 'lathe-cuda: peak' "$out/llama/train.log" | sed 's/lathe-cuda: //'); nvidia-smi peak ${peak_smi:-?} MiB"
    [ $rc -eq 0 ] || say "  the run exited $rc (see llama/train.log)"
  else
    say "Llama 1.1B LoRA: no metrics (exit $rc); see llama/train.log"
  fi
fi
rm -rf "$model"

stage "done"
say "total $(( $(date +%s) - started )) s"
cat "$summary" >&2
exit 0
