#!/usr/bin/env python3
"""Ratio flowpipe / PyTorch per figure, from the JSON lines of run-bench and
bench/torch_reference.py. Each file may hold several rounds of the same figures (make
bench-compare takes turns, flowpipe then PyTorch, figure by figure and round by round); the
k-th line of a figure in one file is paired with the k-th line of it in the other. Prints one
JSON line per figure: {"figure", "flowpipe_ms", "pytorch_ms" (medians over the rounds),
"ratio" (the median of the rounds' ratios), "ratios" (each round's), "threads"}; ratio > 1
means flowpipe is slower. A pair whose configs differ (other sizes, another parameter count:
the two sides ran different networks) is an error, exit 1."""
import json
import statistics
import sys


def load(path):
    """figure -> its lines, in file order."""
    out = {}
    with open(path) as f:
        for v in map(json.loads, filter(str.strip, f)):
            out.setdefault(v["figure"], []).append(v)
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: compare.py FLOWPIPE.jsonl PYTORCH.jsonl")
    ours, theirs = load(sys.argv[1]), load(sys.argv[2])
    for fig, runs in ours.items():
        pairs = list(zip(runs, theirs.get(fig, [])))
        for a, b in pairs:
            if a["config"] != b["config"]:
                diff = sorted(k for k in set(a["config"]) | set(b["config"]) if a["config"].get(k) != b["config"].get(k))
                sys.exit(f"compare.py: {fig}: the two sides ran different configs ({', '.join(diff)} differ): "
                         f"flowpipe {json.dumps(a['config'])}, pytorch {json.dumps(b['config'])}")
        pairs = [(a, b) for a, b in pairs if b["median_ms"] > 0]
        if not pairs:
            continue
        ratios = [a["median_ms"] / b["median_ms"] for a, b in pairs]
        last = pairs[-1][0]
        print(json.dumps({
            "figure": fig,
            "flowpipe_ms": statistics.median(a["median_ms"] for a, _ in pairs),
            "pytorch_ms": statistics.median(b["median_ms"] for _, b in pairs),
            "ratio": round(statistics.median(ratios), 3),
            "ratios": [round(r, 3) for r in ratios],
            "threads": {"flowpipe": last["threads"], "pytorch": pairs[-1][1]["threads"]},
            "config": last["config"],
            **{k: last[k] for k in ("gflops", "peak_gflops_estimate", "fraction_of_peak") if k in last},
        }))


if __name__ == "__main__":
    main()
