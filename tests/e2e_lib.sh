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
