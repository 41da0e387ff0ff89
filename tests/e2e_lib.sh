# tests/e2e_lib.sh — shared by the end-to-end scripts (sourced).
set -u
: "${LATHE_BIN:?run through make check}"
: "${top_srcdir:?}"
: "${top_builddir:?}"
LATHE="$LATHE_BIN"
export LATHE_PLAIN=1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lathe-e2e.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# expect_fail NAME PATTERN CMD...: CMD must fail and print PATTERN (grep -E) on stderr
expect_fail() {
  name=$1; pat=$2; shift 2
  if "$@" >"$WORK/stdout" 2>"$WORK/err"; then fail "$name: succeeded but should have failed"; fi
  grep -Eq -- "$pat" "$WORK/err" || { cat "$WORK/err" >&2; fail "$name: message does not match /$pat/"; }
  echo "ok: $name: $(head -c 300 "$WORK/err")"
}
# jq-free JSON field: metric FILE STEP KEY -> value (python-free too)
metric() {
  grep "\"step\": *$2[,}]" "$1" | grep "\"$3\"" | head -1 | sed -E "s/.*\"$3\": *([-0-9.eE+]+|null).*/\\1/"
}
# tiny_llama_lora INI [KEY = VALUE lines for [peft]...]: in the current
# directory, a tiny Llama converted from the GGUF fixture (tinyllama/, with
# its tokenizer), 8 lines of chat data (chat.jsonl) and INI: LoRA rank 4 on
# every linear layer, 4 steps of batch 2, evaluated every 2 steps
tiny_llama_lora() {
  ini=$1; shift
  "$LATHE" convert gguf "$top_srcdir/tests/fixtures/gguf/tiny.gguf" tinyllama > convert.log 2>&1 || { cat convert.log; fail "convert"; }
  i=0
  while [ $i -lt 8 ]; do
    echo '{"messages": [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "hello hello world"}]}'
    i=$((i + 1))
  done > chat.jsonl
  {
    printf '[run]\nseed = 3\n[model]\nplugin = llama\npretrained = tinyllama\n'
    printf '[data]\nplugin = jsonl-chat\npath = chat.jsonl\ntemplate = chatml\nmax_length = 200\neval_fraction = 0.25\n'
    printf '[peft]\nplugin = lora\nrank = 4\nalpha = 8\ntarget_modules = all-linear\n'
    for kv in "$@"; do echo "$kv"; done
    printf '[optim]\nplugin = adamw\n'
    printf '[train]\nsteps = 4\nbatch_size = 2\neval_every = 2\neval_batches = 1\nlog_every = 1\n'
  } > "$ini"
}
