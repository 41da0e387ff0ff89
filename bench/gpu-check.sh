#!/bin/sh
# The GPU check of issue 7, in one script for a machine lent for minutes:
# builds lathe with CUDA in a fresh build directory, runs the GPU tests
# (tests/check_cuda: every CUDA slot against the CPU backend, and 20 training
# steps following the CPU loss curve), then the benchmarks:
#   1. GPT-2 124M, B=16, T=1024: tokens/s and MFU against the H200's dense
#      bf16 peak of 790 TFLOP/s;
#   2. a Llama-architecture model of about 1.1B parameters (TinyLlama's
#      shape, random weights), LoRA rank 16: tokens/s and peak device memory.
# Everything goes to OUT_DIR: gpu-check.log (all output), summary.txt (the
# figures), the test log and each run's metrics.jsonl. Within 8 minutes on
# one H200 (each stage has its own time limit).
#
#   bench/gpu-check.sh OUT_DIR
#
# Environment: CUDA_DIR (default /usr/local/cuda), BUILD_DIR (default a
# fresh mktemp -d), JOBS (default nproc). The build needs the project's
# dependencies (scripts/install-deps.sh); ./configure comes from autoreconf,
# or from the tree if it was generated already (git ignores it).
#
# bf16/fp16 compute (precision = bf16) is not implemented yet: the
# benchmarks then run in fp32 with TF32 GEMMs (allow_tf32 = true) and say so.
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

say() { echo "$*"; echo "$*" >> "$summary"; }
stage() { echo; echo "=== $* ($(( $(date +%s) - started )) s)"; }
fail() { say "FAILED: $*"; say "log: $log"; cat "$summary" >&2; exit 1; }

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
timeout 240 make -j"$jobs" >/dev/null || { make 2>&1 | tail -40; fail "make"; }
[ -f plugins/.libs/lathe-cuda.so ] || fail "no plugins/.libs/lathe-cuda.so after make"
say "build: ok ($(( $(date +%s) - started )) s)"

stage "GPU tests"
timeout 150 make -j"$jobs" check TESTS=tests/check_cuda >/dev/null 2>&1
rc=$?
cp tests/check_cuda.log "$out/check_cuda.log" 2>/dev/null
cat tests/check_cuda.log 2>/dev/null
case $(sed -n 's/^:test-result: //p' tests/check_cuda.trs 2>/dev/null) in
  PASS) say "tests/check_cuda: PASS (every slot vs the CPU backend; 20 steps within 1e-4 of the CPU losses)" ;;
  SKIP) say "tests/check_cuda: SKIP (no device seen: see check_cuda.log)" ;;
  *) say "tests/check_cuda: FAIL (make check rc $rc; see check_cuda.log)" ;;
esac

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

stage "benchmark 1: GPT-2 124M, B=16, T=1024"
say "GPT-2 124M: precision = bf16 is not implemented yet (mixed precision is a separate piece of issue 7);"
say "  running fp32 with TF32 GEMMs (allow_tf32 = true) instead; MFU is still against the 790 TFLOP/s bf16 peak"
mkdir -p "$out/gpt2"
cat > "$out/gpt2/gpt2-124m-gpu.ini" <<EOF
[run]
output_dir = $out/gpt2/run
device = cuda
precision = fp32
allow_tf32 = true
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
steps = 15
batch_size = 16
max_grad_norm = 1.0
[log]
tensorboard = false
EOF
smi_watch_start "$out/gpt2/smi.txt"
timeout 150 "$build/lathe" train "$out/gpt2/gpt2-124m-gpu.ini" > "$out/gpt2/train.log" 2>&1
rc=$?
peak_smi=$(smi_watch_stop "$out/gpt2/smi.txt")
tail -5 "$out/gpt2/train.log"
if [ -f "$out/gpt2/run/metrics.jsonl" ]; then
  cp "$out/gpt2/run/metrics.jsonl" "$out/gpt2/metrics.jsonl"
  set -- $(median_tps "$out/gpt2/run/metrics.jsonl")
  # FLOPs per token (llm.c / PaLM appendix B): 6 N + 12 L C T, N the
  # parameters (124.48M with the padded 50304 vocabulary), L 12, C 768, T 1024
  mfu=$(awk -v t="$1" 'BEGIN { f = 6 * 124475904 + 12 * 12 * 768 * 1024; printf "%.1f", 100 * t * f / 790e12 }')
  say "GPT-2 124M fp32/TF32: $1 tokens/s (median of steps 4..$2), MFU $mfu % of 790 TFLOP/s; loss $3 -> $4"
  say "  peak device memory: $(grep -h 'lathe-cuda: peak' "$out/gpt2/train.log" | sed 's/lathe-cuda: //'); nvidia-smi peak ${peak_smi:-?} MiB"
  [ $rc -eq 0 ] || say "  the run exited $rc after its steps (see gpt2/train.log: e.g. the final checkpoint reads tensors on the host)"
else
  say "GPT-2 124M: no metrics (exit $rc); see gpt2/train.log"
fi

stage "benchmark 2: Llama ~1.1B (TinyLlama shape), LoRA rank 16"
say "Llama 1.1B LoRA: precision = bf16 is not implemented yet; running fp32 with TF32 GEMMs instead"
mkdir -p "$out/llama"
model="${TMPDIR:-/tmp}/lathe-llama-1b.$$"
mkdir -p "$model"
# Random weights in the Hugging Face layout, made with the standard library
# only: each tensor repeats one block of N(0, 0.02) bf16 values (norms 1.0).
timeout 90 python3 - "$model" <<'PY' || say "  could not write the random model (python3)"
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
precision = fp32
allow_tf32 = true
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
[optim]
plugin = adamw
lr = 2e-4
[train]
steps = 10
batch_size = 8
max_grad_norm = 1.0
[log]
tensorboard = false
EOF
smi_watch_start "$out/llama/smi.txt"
timeout 180 "$build/lathe" train "$out/llama/llama-1b-lora-gpu.ini" > "$out/llama/train.log" 2>&1
rc=$?
peak_smi=$(smi_watch_stop "$out/llama/smi.txt")
tail -5 "$out/llama/train.log"
if [ -f "$out/llama/run/metrics.jsonl" ]; then
  cp "$out/llama/run/metrics.jsonl" "$out/llama/metrics.jsonl"
  set -- $(median_tps "$out/llama/run/metrics.jsonl")
  say "Llama 1.1B LoRA r16 fp32/TF32, B=8, T=1024: $1 tokens/s (median of steps 4..$2); loss $3 -> $4"
  say "  peak device memory: $(grep -h 'lathe-cuda: peak' "$out/llama/train.log" | sed 's/lathe-cuda: //'); nvidia-smi peak ${peak_smi:-?} MiB"
  [ $rc -eq 0 ] || say "  the run exited $rc after its steps (see llama/train.log)"
else
  say "Llama 1.1B LoRA: no metrics (exit $rc); see llama/train.log"
fi
rm -rf "$model"

stage "done"
say "total $(( $(date +%s) - started )) s"
cat "$summary" >&2
exit 0
