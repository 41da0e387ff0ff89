#!/usr/bin/env python3
"""Check a TensorBoard log directory with the real tensorboard package.

usage: tb_check.py DIR TAG [TAG...]

Loads DIR with tensorboard's own EventAccumulator (an independent reader of
lathe's event files: framing, CRCs, protobuf) and prints each tag's
step=value pairs. Exit status: 0 if every TAG has at least one scalar, 1 if
any is missing or the directory cannot be read, 77 (automake's "skip") if
the tensorboard package is not importable. tensorboard is a test oracle
only, never a dependency of lathe.
"""
import os
import sys


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    logdir, tags = argv[1], argv[2:]
    try:
        from tensorboard.backend.event_processing import event_accumulator
    except Exception as e:  # ImportError, or a broken install (protobuf skew)
        print(f"SKIP: the tensorboard package is not importable ({e})")
        return 77
    if not os.path.isdir(logdir):
        print(f"{logdir}: not a directory", file=sys.stderr)
        return 1

    # size_guidance 0 keeps every scalar (the default samples 10,000).
    acc = event_accumulator.EventAccumulator(
        logdir, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    have = acc.Tags().get("scalars", [])
    ok = True
    for tag in tags:
        if tag not in have:
            print(f"{tag}: MISSING (scalars present: {', '.join(sorted(have)) or 'none'})")
            ok = False
            continue
        events = acc.Scalars(tag)
        pairs = " ".join(f"{e.step}={e.value:.9g}" for e in events)
        print(f"{tag}: {len(events)} values: {pairs}")
        if not events:
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
