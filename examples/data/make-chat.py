#!/usr/bin/env python3
"""Write examples/data/chat.jsonl and chat-eval.jsonl: short arithmetic word
problems answered as <think>WORKING</think><answer>NUMBER</answer>.

The data of the SFT demo (examples/sft-full.ini) and, later, the prompts of
the GRPO demo, whose reward checks the <answer>. Our own content, drawn
from a fixed seed, so the files are reproducible:

    python3 examples/data/make-chat.py
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ["Mia", "Leo", "Ava", "Noah", "Zoe", "Omar", "Lena", "Ravi", "Sara", "Tom", "Ines", "Kai", "Yuki", "Ben"]
THINGS = ["apples", "pencils", "marbles", "stickers", "cookies", "books", "shells", "coins", "cards", "eggs"]
SYSTEMS = [
    "You are a careful math tutor. Think inside <think></think>, then give the final number inside <answer></answer>.",
    "Solve the problem step by step. Put your reasoning in <think></think> and only the number in <answer></answer>.",
    "You are a helpful assistant who is good at arithmetic.",
]


def reply(steps, answer):
    return "<think>\n" + "\n".join(steps) + "\n</think>\n<answer>" + str(answer) + "</answer>"


def problem(rnd):
    name, thing = rnd.choice(NAMES), rnd.choice(THINGS)
    kind = rnd.choice(["add", "sub", "mul", "div", "two"])
    if kind == "add":
        a, b = rnd.randint(2, 60), rnd.randint(2, 40)
        q = rnd.choice([f"{name} has {a} {thing} and finds {b} more. How many {thing} does {name} have now?",
                        f"There are {a} {thing} in a bag. {name} puts in {b} more. How many {thing} are in the bag?"])
        return q, [f"{a} + {b} = {a + b}"], a + b
    if kind == "sub":
        a = rnd.randint(10, 90)
        b = rnd.randint(1, a - 1)
        q = rnd.choice([f"{name} had {a} {thing} and gave away {b}. How many {thing} are left?",
                        f"A shop had {a} {thing}. It sold {b}. How many {thing} does it have left?"])
        return q, [f"{a} - {b} = {a - b}"], a - b
    if kind == "mul":
        a, b = rnd.randint(2, 12), rnd.randint(2, 12)
        q = f"{name} has {a} boxes with {b} {thing} in each box. How many {thing} is that in total?"
        return q, [f"{a} * {b} = {a * b}"], a * b
    if kind == "div":
        b, c = rnd.randint(2, 9), rnd.randint(2, 12)
        a = b * c
        q = f"{name} shares {a} {thing} equally among {b} friends. How many {thing} does each friend get?"
        return q, [f"{a} / {b} = {c}"], c
    a, b, c = rnd.randint(2, 9), rnd.randint(2, 9), rnd.randint(1, 10)
    q = (f"{name} buys {a} packs of {thing} with {b} in each pack, then gives {c} to a friend. "
         f"How many {thing} does {name} have?")
    return q, [f"{a} * {b} = {a * b}", f"{a * b} - {c} = {a * b - c}"], a * b - c


def conversation(rnd):
    msgs = []
    if rnd.random() < 0.3:
        msgs.append({"role": "system", "content": rnd.choice(SYSTEMS)})
    q, steps, ans = problem(rnd)
    msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": reply(steps, ans)}]
    if rnd.random() < 0.1:
        k = rnd.randint(2, 20)
        msgs += [{"role": "user", "content": f"Then {k} more arrive. How many now?"},
                 {"role": "assistant", "content": reply([f"{ans} + {k} = {ans + k}"], ans + k)}]
    return msgs


def write(path, convs):
    with open(path, "w", encoding="utf-8") as f:
        for c in convs:
            f.write(json.dumps({"messages": c}, ensure_ascii=False) + "\n")


def main():
    rnd = random.Random(20240611)
    seen, convs = set(), []
    while len(convs) < 560:
        c = conversation(rnd)
        key = json.dumps(c)
        if key not in seen:
            seen.add(key)
            convs.append(c)
    write(os.path.join(HERE, "chat.jsonl"), convs[:500])
    write(os.path.join(HERE, "chat-eval.jsonl"), convs[500:])


if __name__ == "__main__":
    main()
