#!/bin/sh
# Tokenizer throughput: lathe against the reference `tokenizers` library
# (Python, one thread) on the same text with the same tokenizer.json, and
# whether the two agree token for token on it.
#   bench/tokenizer.sh [BUILD_DIR] [TOKENIZER.json]
# BUILD_DIR defaults to build/; the tokenizer to the Qwen2-configured fixture
# (tests/fixtures/tokenizers/qwen2.json; pass a real tokenizer.json when you
# have one). The text (~3 MB) is examples/data/tiny-corpus.txt plus seeded
# made-up English, Chinese, Japanese, code and digits, written by the script.
# Needs: python3 with `tokenizers` (pip install tokenizers), a C compiler.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top/build}
tok=${2:-$top/tests/fixtures/tokenizers/qwen2.json}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

python3 - "$top/examples/data/tiny-corpus.txt" "$out/text.txt" <<'PY'
import random, sys
corpus = open(sys.argv[1], encoding="utf-8").read()
rng = random.Random(7)
syl = ["ka", "to", "ri", "men", "sel", "an", "qu", "ex", "tion", "ing", "pro", "str", "ble", "ver", "ight", "the", "and"]
cjk = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现"
kana = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんアイウエオカキクケコ"
parts = [corpus]
size = len(corpus.encode())
while size < 3_000_000:
    k = rng.randrange(6)
    if k < 2:
        s = " ".join("".join(rng.choice(syl) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(5, 20))) + ". "
    elif k == 2:
        s = "".join(rng.choice(cjk) for _ in range(rng.randint(10, 60))) + "。\n"
    elif k == 3:
        s = "".join(rng.choice(kana) for _ in range(rng.randint(5, 30))) + "。"
    elif k == 4:
        s = " ".join(str(rng.randint(0, 10 ** rng.randint(1, 12))) for _ in range(rng.randint(1, 8))) + "\n"
    else:
        s = "    " + rng.choice(["x", "buf", "len"]) + " = f(" + str(rng.randint(0, 999)) + ");\n"
    parts.append(s)
    size += len(s.encode())
open(sys.argv[2], "w", encoding="utf-8").write("".join(parts))
PY

cc -O2 -I"$top/sdk/include" "$top/bench/tokenizer_bench.c" -o "$out/tokenizer_bench" \
  -L"$build/core/.libs" -llathe -Wl,-rpath,"$build/core/.libs"
echo "text: $(wc -c < "$out/text.txt") bytes; tokenizer: $tok"
"$out/tokenizer_bench" "$tok" "$out/text.txt" "$out/lathe.ids" 5

TOKENIZERS_PARALLELISM=false RAYON_NUM_THREADS=1 python3 - "$tok" "$out/text.txt" "$out/lathe.ids" <<'PY'
import sys, time
import tokenizers
from tokenizers import Tokenizer
tk = Tokenizer.from_file(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8").read()
nbytes = len(text.encode())
times = []
for r in range(3):
    t0 = time.perf_counter()
    ids = tk.encode(text, add_special_tokens=False).ids
    times.append(time.perf_counter() - t0)
print(f"tokenizers : {nbytes / min(times) / 1e6:.2f} MB/s (best of 3, version {tokenizers.__version__}, one thread); "
      f"{len(ids)} tokens")
lines = text.splitlines(keepends=True)
times = []
for r in range(2):
    t0 = time.perf_counter()
    for l in lines:
        tk.encode(l, add_special_tokens=False)
    times.append(time.perf_counter() - t0)
print(f"tokenizers : {nbytes / min(times) / 1e6:.2f} MB/s line by line (best of 2)")
ours = [int(l) for l in open(sys.argv[3])]
if ours == ids:
    print(f"agreement  : identical ids ({len(ids)} tokens)")
else:
    i = next((k for k in range(min(len(ours), len(ids))) if ours[k] != ids[k]), min(len(ours), len(ids)))
    print(f"agreement  : DIFFERENT at token {i} (lathe {len(ours)} tokens, reference {len(ids)})")
    sys.exit(1)
PY
