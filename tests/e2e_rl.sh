#!/bin/sh
# The RL demonstration, end to end on 2 cores: a tiny GPT learns the
# <think>/<answer> format (examples/arith-sft.ini), then GRPO with the rule
# reward raises the mean reward and the share of correct sampled answers
# while greedy held-out accuracy stays high (examples/grpo-arith.ini; the 16
# held-out prompts start near 1.0, so they move by a prompt or two with the
# kernels' rounding and are only checked for collapse), and DPO lowers its
# loss and raises
# the chosen-over-rejected margin (examples/dpo-arith.ini). Fixed seeds.
. "$top_srcdir/tests/e2e_lib.sh"
if [ -n "${LATHE_SANITIZED:-}" ]; then
  echo "skip: the RL demonstration takes minutes under the sanitizers; the plugins' code runs there in check_* suites"
  exit 77
fi
ex="$top_srcdir/examples"
# the example INIs name ../runs/arith-sft/final relative to examples/: give
# them their own tree of the same shape
mkdir -p "$WORK/examples" "$WORK/runs"
cp -r "$ex/arith" "$WORK/examples/"
cp "$ex/arith-sft.ini" "$ex/grpo-arith.ini" "$ex/dpo-arith.ini" "$WORK/examples/"
cd "$WORK" || fail "cd"
"$LATHE" train examples/arith-sft.ini > sft.log 2>&1 || { tail -20 sft.log; fail "SFT warm-up"; }
[ -f runs/arith-sft/final/config.json ] || fail "the SFT run wrote no model"

"$LATHE" train examples/grpo-arith.ini > grpo.log 2>&1 || { tail -20 grpo.log; fail "GRPO"; }
m=runs/grpo-arith/metrics.jsonl
a0=$(grep '"step": *0,' "$m" | sed -E 's/.*"grpo_eval_accuracy": *([-0-9.eE+]+).*/\1/')
a1=$(grep '"step": *40,.*grpo_eval_accuracy' "$m" | sed -E 's/.*"grpo_eval_accuracy": *([-0-9.eE+]+).*/\1/')
# first10 KEY: the means of KEY over the first and the last 10 steps
first10() { awk -F"\"$1\":" 'NF > 1 { split($2, v, ","); n++; x[n] = v[1] }
  END { for (i = 1; i <= 10; i++) { e += x[i]; l += x[n - 10 + i] } printf "%.4f %.4f", e / 10, l / 10 }' "$m"; }
r=$(first10 grpo_reward_mean)
sa=$(first10 grpo_accuracy)
echo "GRPO mean reward, first and last 10 steps: $r; sampled accuracy: $sa; held-out greedy accuracy: $a0 at step 0, $a1 at step 40"
echo "$r" | awk '{ exit !($2 > $1) }' || fail "mean reward did not rise ($r)"
echo "$sa" | awk '{ exit !($2 > $1) }' || fail "sampled accuracy did not rise ($sa)"
awk -v a="$a0" -v b="$a1" 'BEGIN { exit !(a >= 0.75 && b >= 0.75) }' || fail "held-out accuracy collapsed ($a0 -> $a1)"
for k in grpo_reward_std grpo_accuracy grpo_completion_length grpo_clip_fraction grpo_entropy \
         grpo_reward_format_mean grpo_rollout_tokens_per_s grpo_generation_seconds; do
  grep -q "\"$k\"" "$m" || fail "metrics.jsonl lacks $k"
done

"$LATHE" train examples/dpo-arith.ini > dpo.log 2>&1 || { tail -20 dpo.log; fail "DPO"; }
m=runs/dpo-arith/metrics.jsonl
d=$(awk '/"dpo_reward_margin"/ && /"loss":/ { n++; l[n] = $0 } END {
  split(l[1], a, "\"loss\": *"); split(a[2], b, ","); l1 = b[1]
  split(l[n], a, "\"loss\": *"); split(a[2], b, ","); l2 = b[1]
  split(l[1], a, "\"dpo_reward_margin\": *"); split(a[2], b, "[,}]"); m1 = b[1]
  split(l[n], a, "\"dpo_reward_margin\": *"); split(a[2], b, "[,}]"); m2 = b[1]
  printf "%s %s %s %s", l1, l2, m1, m2 }' "$m")
echo "DPO loss first/last, margin first/last: $d"
echo "$d" | awk '{ exit !($2 < $1 - 0.1 && $4 > $3 + 0.3) }' || fail "DPO did not lower the loss and raise the margin ($d)"
# DPO on 2 processes (ddp): every process takes whole pairs, so the loss
# curve is the single process's
if command -v mpirun >/dev/null 2>&1 && [ -f "$LATHE_PLUGIN_PATH/lathe-mpi.so" ] && [ -z "${LATHE_SANITIZED:-}" ]; then
  if [ "$(id -u)" = 0 ]; then
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    export OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM
  fi
  short="train.steps=4 train.eval_every=0 train.eval_at_start=false train.log_every=1 train.save_final=false train.checkpoint_every=0"
  OMP_NUM_THREADS=1 "$LATHE" train examples/dpo-arith.ini run.output_dir=runs/dpo-1 $short > dpo1.log 2>&1 ||
    { tail -20 dpo1.log; fail "DPO, 1 process"; }
  printf '[parallel]\nplugin = ddp\n' | cat examples/dpo-arith.ini - > examples/dpo-ddp.ini
  OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 "$LATHE" train examples/dpo-ddp.ini run.output_dir=runs/dpo-2 $short \
    > dpo2.log 2>&1 || { tail -20 dpo2.log; fail "DPO, 2 processes"; }
  for s in 1 2 3 4; do
    a=$(metric runs/dpo-1/metrics.jsonl $s loss); b=$(metric runs/dpo-2/metrics.jsonl $s loss)
    awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d < 1e-5) }' ||
      fail "DPO step $s: 1 process $a, 2 processes $b"
  done
  echo "ok: DPO on 2 processes follows the single process within 1e-5 (step 4: $a vs $b)"
fi
echo "e2e_rl: all passed"
