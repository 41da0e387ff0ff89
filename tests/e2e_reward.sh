#!/bin/sh
# `lathe reward`: score a completions file with two rewards of a run's INI
# (the other sections are ignored) and check each output line's values,
# the summary, and the errors for a malformed line or a bad reward key.
. "$top_srcdir/tests/e2e_lib.sh"
mkdir -p "$WORK/cfg"
ini="$WORK/cfg/run.ini"
cat > "$WORK/cfg/tags.json" <<'JSON'
{"comment": "the defaults, but a valid format alone earns 2", "format_score": 2}
JSON
cat > "$ini" <<'INI'
[run]
output_dir = out
[model]
plugin = gpt2
not_a_gpt2_key = ignored by lathe reward
[reward.acc]
plugin = think-answer
reward_template = tags.json
compare = numeric
weight = 2
[reward.len]
plugin = length
max_length = 40
cache = 10
weight = 0.5
INI
# completion lengths: 43 (len -1), 34 (-0.4), 18 (0), 43 (-1)
cat > "$WORK/in.jsonl" <<'JSONL'
{"completion": "<think>6 times 7</think><answer>42</answer>", "answer": "42", "id": 1}
{"completion": "<think>a</think><answer>7</answer>", "answer": 8, "id": 2}

{"completion": "<answer>1</answer>", "answer": "1", "id": 3, "extra": {"k": [1, 2]}}
{"completion": "<think>sum</think><answer>1,234</answer>  \n", "answer": "1234", "id": 4}
JSONL
# expect LINE_ID REWARD ACC LEN: the output line with "id": LINE_ID carries these
expect() {
  line=$(grep "\"id\": $1," "$2") || fail "no output line for id $1"
  echo "$line" | grep -q "\"reward\": $3, \"rewards\": {\"acc\": $4, \"len\": $5}}\$" ||
    fail "id $1: expected reward $3 (acc $4, len $5): $line"
}
"$LATHE" reward --config "$ini" --input "$WORK/in.jsonl" > "$WORK/out.jsonl" 2> "$WORK/summary" ||
  { cat "$WORK/summary"; fail "lathe reward failed"; }
[ "$(wc -l < "$WORK/out.jsonl")" -eq 4 ] || { cat "$WORK/out.jsonl"; fail "expected 4 output lines"; }
expect 1 "$WORK/out.jsonl" 19.5 10 -1
expect 2 "$WORK/out.jsonl" 3.8 2 -0.4
expect 3 "$WORK/out.jsonl" 0 0 0
expect 4 "$WORK/out.jsonl" 19.5 10 -1
grep -q '"id": 3, "extra": {"k": \[1, 2\]}, "reward"' "$WORK/out.jsonl" || fail "the input fields are not kept as given"
echo "ok: each line carries the weighted sum and each reward"
grep -q "4 lines scored" "$WORK/summary" || { cat "$WORK/summary"; fail "summary: no line count"; }
# acc: 10 2 0 10 -> mean 5.5, std (n-1) 5.25991; sum 19.5 3.8 0 19.5 -> mean 10.7
grep -Eq "acc +2 +5.5 +5.25991" "$WORK/summary" || { cat "$WORK/summary"; fail "summary: acc mean/std"; }
grep -Eq "len +0.5 +-0.6 " "$WORK/summary" || { cat "$WORK/summary"; fail "summary: len mean"; }
grep -Eq "weighted sum\) +- +10.7 " "$WORK/summary" || { cat "$WORK/summary"; fail "summary: sum mean"; }
echo "ok: the summary gives the count and each reward's mean and std"

# --output via a temp file and rename; an override; stdin; a rescored output
"$LATHE" reward --config "$ini" --input "$WORK/in.jsonl" --output "$WORK/o2.jsonl" reward.acc.weight=1 2>/dev/null ||
  fail "lathe reward --output failed"
expect 1 "$WORK/o2.jsonl" 9.5 10 -1
[ -z "$(ls "$WORK" | grep 'o2.jsonl.tmp')" ] || fail "a temp file was left behind"
"$LATHE" reward --config "$ini" --input - < "$WORK/o2.jsonl" > "$WORK/o3.jsonl" 2>/dev/null || fail "reading stdin"
expect 2 "$WORK/o3.jsonl" 3.8 2 -0.4
! grep -q '"reward": .*"reward": ' "$WORK/o3.jsonl" || fail "a rescored line has two rewards"
echo "ok: --output, overrides, stdin and rescoring"

printf '%s\n' '{"completion": "<think>a</think><answer>1</answer>", "answer": "1"}' '{"completion": "x", "answer": }' \
  > "$WORK/bad.jsonl"
expect_fail "malformed line" "bad.jsonl:2: not JSON" "$LATHE" reward --config "$ini" --input "$WORK/bad.jsonl" \
  --output "$WORK/o4.jsonl"
[ ! -e "$WORK/o4.jsonl" ] && [ -z "$(ls "$WORK" | grep 'o4.jsonl')" ] || fail "a failed run left an output"
printf '%s\n' '{"answer": "1"}' > "$WORK/bad.jsonl"
expect_fail "no completion" 'bad.jsonl:1: no "completion"' "$LATHE" reward --config "$ini" --input "$WORK/bad.jsonl"
printf '\n%s\n' '["completion"]' > "$WORK/bad.jsonl"
expect_fail "not an object" "bad.jsonl:2: expected an object" "$LATHE" reward --config "$ini" --input "$WORK/bad.jsonl"
printf '%s\n' '{"completion": "x", "answer": [1]}' > "$WORK/bad.jsonl"
expect_fail "answer type" 'bad.jsonl:1: "answer" must be' "$LATHE" reward --config "$ini" --input "$WORK/bad.jsonl"
expect_fail "unknown key in a reward section" "unknown key 'cahce' in \[reward.len\]" \
  "$LATHE" reward --config "$ini" --input "$WORK/in.jsonl" reward.len.cahce=3
sed 's/^cache = 10/cahce = 10/' "$ini" > "$WORK/cfg/typo.ini"
expect_fail "typo in a reward section" "typo.ini:1[0-9]: unknown key 'cahce' in \[reward.len\]; did you mean 'cache'" \
  "$LATHE" reward --config "$WORK/cfg/typo.ini" --input "$WORK/in.jsonl"
printf '[model]\nplugin = gpt2\n' > "$WORK/cfg/none.ini"
expect_fail "no rewards" "no \[reward.NAME\] sections" "$LATHE" reward --config "$WORK/cfg/none.ini" --input "$WORK/in.jsonl"
echo '{"format_score": "2"}' > "$WORK/cfg/tags.json"
expect_fail "template type" "tags.json: field 'format_score' must be a number" \
  "$LATHE" reward --config "$ini" --input "$WORK/in.jsonl"
echo '{}' > "$WORK/cfg/tags.json"
expect_fail "missing input" "cannot open --input" "$LATHE" reward --config "$ini" --input "$WORK/nope.jsonl"
expect_fail "usage" "no --input" "$LATHE" reward --config "$ini"
echo "e2e_reward: all passed"
