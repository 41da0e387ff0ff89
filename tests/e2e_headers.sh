#!/bin/sh
# Every public header compiles on its own, as C99 and as C++.
. "$top_srcdir/tests/e2e_lib.sh"
n=0
for h in "$top_srcdir"/sdk/include/lathe/*.h; do
  name=$(basename "$h")
  printf '#include <lathe/%s>\nint lathe_header_probe;\n' "$name" > "$WORK/t.c"
  cc -std=c99 -pedantic -Wall -Wextra -Werror -I"$top_srcdir/sdk/include" -c "$WORK/t.c" -o "$WORK/t.o" ||
    fail "$name does not compile alone as C99"
  cp "$WORK/t.c" "$WORK/t.cc"
  c++ -std=c++11 -Wall -Wextra -Werror -I"$top_srcdir/sdk/include" -c "$WORK/t.cc" -o "$WORK/t.o" ||
    fail "$name does not compile alone as C++"
  n=$((n + 1))
done
echo "ok: $n headers compile alone as C99 and C++"
