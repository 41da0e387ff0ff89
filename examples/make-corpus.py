#!/usr/bin/env python3
"""Write examples/data/tiny-corpus.txt: a small English corpus for the
pretrain-tiny demo, generated from a seeded grammar (no third-party text).

Short stories about a few characters, with agreement, recurring names and
simple arithmetic, so a byte-level model has structure to learn at every
scale (spelling, words, phrases, numbers). Usage:
    python3 examples/make-corpus.py > examples/data/tiny-corpus.txt
"""
import random

rng = random.Random(20261129)
names = ["Ada", "Bruno", "Clara", "Dev", "Elif", "Farid", "Gwen", "Hugo", "Iris", "Jonas"]
animals = ["cat", "dog", "fox", "owl", "horse", "goat", "crow", "rabbit"]
places = ["the garden", "the market", "the river", "the old mill", "the library", "the hill", "the harbour"]
things = ["apples", "books", "stones", "letters", "shells", "coins", "pears", "keys"]
feelings = ["happy", "tired", "curious", "quiet", "proud", "worried", "glad"]
verbs_past = ["walked to", "ran to", "looked around", "came back from", "waited at", "sang near"]
weather = ["The sun was warm.", "It began to rain.", "The wind was cold.", "Snow fell softly.", "The sky was clear."]


def story():
    a, b = rng.sample(names, 2)
    pet = rng.choice(animals)
    place = rng.choice(places)
    thing = rng.choice(things)
    x, y = rng.randint(2, 9), rng.randint(2, 9)
    lines = [
        f"{a} had a {pet} and lived near {place}.",
        rng.choice(weather),
        f"One morning {a} {rng.choice(verbs_past)} {place} with the {pet}.",
        f"There {a} met {b}, who was {rng.choice(feelings)}.",
        f"{b} had {x} {thing} and {a} had {y} {thing}.",
        f"Together they had {x + y} {thing}.",
        f"\"Shall we share them?\" asked {b}.",
        f"\"Yes,\" said {a}, and the {pet} agreed.",
        f"In the evening {a} and {b} went home, {rng.choice(feelings)} and {rng.choice(feelings)}.",
    ]
    if rng.random() < 0.5:
        lines.insert(5, f"{a} gave {b} one of the {thing}, so {b} had {x + 1} and {a} had {y - 1}.")
    return " ".join(lines)


out = []
size = 0
while size < 240_000:
    s = story()
    out.append(s)
    size += len(s) + 2
print("\n\n".join(out))
