#!/usr/bin/env python3
"""Ratio flowpipe / PyTorch per figure, from the JSON lines of run-bench and
bench/torch_reference.py: one JSON line each, {"figure", "flowpipe_ms", "pytorch_ms",
"ratio", "threads"}; ratio > 1 means flowpipe is slower."""
import json
import sys


def load(path):
    with open(path) as f:
        return {v["figure"]: v for v in map(json.loads, filter(str.strip, f))}


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: compare.py FLOWPIPE.jsonl PYTORCH.jsonl")
    ours, theirs = load(sys.argv[1]), load(sys.argv[2])
    for fig, a in ours.items():
        b = theirs.get(fig)
        if b is None:
            continue
        print(json.dumps({
            "figure": fig,
            "flowpipe_ms": a["median_ms"],
            "pytorch_ms": b["median_ms"],
            "ratio": round(a["median_ms"] / b["median_ms"], 3) if b["median_ms"] > 0 else None,
            "threads": {"flowpipe": a["threads"], "pytorch": b["threads"]},
            "config": a["config"],
            **{k: a[k] for k in ("gflops", "peak_gflops_estimate", "fraction_of_peak") if k in a},
        }))


if __name__ == "__main__":
    main()
