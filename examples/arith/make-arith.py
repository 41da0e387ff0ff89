#!/usr/bin/env python3
"""Write the arithmetic task of the RL examples (our own, seeded):

  sft.txt        training text for supervised warm-up: one problem per line,
                 "Q: a+b=\\n<think>...</think><answer>s</answer>\\n"
  prompts.jsonl  GRPO prompts {"prompt": "Q: a+b=\\n", "answer": "s"}
                 (the last 16 lines are held out for evaluation)
  prefs.jsonl    DPO pairs {"prompt", "chosen", "rejected"}: the right
                 answer against a wrong one or a malformed one
  tokenizer.json a byte-level tokenizer whose ids are the bytes themselves
                 (so the `text` data plugin and the tokenizer agree)

Usage: python3 examples/arith/make-arith.py examples/arith
"""
import json
import random
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "."
rng = random.Random(7)


def problem():
    # one-digit sums: a tiny model learns them on 2 cores in a minute
    return rng.randint(1, 9), rng.randint(1, 9)


def think(a, b):
    return f"{a}+{b}={a + b}"


def completion(a, b, s=None):
    s = a + b if s is None else s
    return f"<think>{think(a, b)}</think><answer>{s}</answer>\n"


with open(f"{out}/sft.txt", "w") as f:
    for _ in range(6000):
        a, b = problem()
        # a third of the warm-up answers are off by one: a slip that RL
        # with a rule reward can train away
        s = a + b + (rng.choice([-1, 1]) if rng.random() < 0.33 else 0)
        f.write(f"Q: {a}+{b}=\n" + completion(a, b, s))

with open(f"{out}/prompts.jsonl", "w") as f:
    # every sum once, shuffled; the last 16 are the held-out evaluation
    pairs = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    rng.shuffle(pairs)
    for a, b in pairs:
        f.write(json.dumps({"prompt": f"Q: {a}+{b}=\n", "answer": str(a + b)}) + "\n")

with open(f"{out}/prefs.jsonl", "w") as f:
    for i in range(400):
        a, b = problem()
        if i % 2:
            bad = completion(a, b, a + b + rng.choice([-2, -1, 1, 2]))
        else:
            bad = f"{a + b}\n"  # no reasoning, no tags
        f.write(json.dumps({"prompt": f"Q: {a}+{b}=\n", "chosen": completion(a, b), "rejected": bad}) + "\n")

# GPT-2's byte-to-unicode table (formats.md §4.2): printable bytes map to
# themselves, the others to U+0100 + n in ascending order.
keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
table, n = {}, 0
for byte in range(256):
    if byte in keep:
        table[byte] = chr(byte)
    else:
        table[byte] = chr(0x100 + n)
        n += 1
vocab = {table[byte]: byte for byte in range(256)}
tok = {
    "version": "1.0",
    "truncation": None,
    "padding": None,
    "added_tokens": [],
    "normalizer": None,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    "post_processor": None,
    "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
              "vocab": vocab, "merges": []},
}
with open(f"{out}/tokenizer.json", "w") as f:
    json.dump(tok, f, ensure_ascii=False, indent=1)
