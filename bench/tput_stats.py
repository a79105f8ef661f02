#!/usr/bin/env python3
"""The throughput goal's verdict, with its uncertainty, for one run or many.

A round of bench/cni-throughput.sh runs moat and ptp ipMasq back to back, so
their ratio in that round is the sample (a slow stretch of the VM weighs on
both). On the 2-core VM rounds swing by 10-20 % while the goal sits a few
percent from 1, so a ratio of medians printed as "met" or "MISSED" says little:
the verdict here comes from a bootstrap 95 % interval of the paired median.
It is "met" only when the whole interval is at or above the goal, "missed"
when it is wholly below, and "undecided" otherwise.

    python3 bench/tput_stats.py RUN.json [RUN.json ...]   # pool saved runs

Runs pool only if they measured the same thing (seconds per round, streams,
pods): mixing designs would give one number for two questions.
"""

import json
import math
import random
import statistics
import sys

GOAL = 0.97
RESAMPLES = 4000
# Below this a bootstrap interval is mostly the few samples themselves.
MIN_ROUNDS = 20


def paired(gbps):
    """moat / ptp ipMasq, round by round."""
    return [m / r for m, r in zip(gbps["moat"], gbps["ref"])]


def median_interval(samples, seed=1):
    """Percentile bootstrap 95 % interval of the median. Seeded: the same
    samples print the same interval on every machine."""
    rng = random.Random(seed)
    n = len(samples)
    meds = sorted(statistics.median(rng.choices(samples, k=n)) for _ in range(RESAMPLES))
    return meds[int(RESAMPLES * 0.025)], meds[int(RESAMPLES * 0.975) - 1]


def geo_mean_interval(samples):
    """Geometric mean of the ratios and its normal 95 % interval (on logs)."""
    logs = [math.log(x) for x in samples]
    mean = statistics.mean(logs)
    se = statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else 0.0
    return math.exp(mean), math.exp(mean - 1.96 * se), math.exp(mean + 1.96 * se)


def verdict(low, high, rounds, goal=GOAL):
    if rounds < MIN_ROUNDS:
        return f"no verdict from {rounds} rounds (at least {MIN_ROUNDS})"
    if low >= goal:
        return "met"
    if high < goal:
        return "MISSED"
    return "undecided (the interval spans the goal)"


def summary(ratios, goal=GOAL):
    """Lines describing paired ratios against the goal."""
    med = statistics.median(ratios)
    low, high = median_interval(ratios)
    gm, gm_low, gm_high = geo_mean_interval(ratios)
    held = sum(x >= goal for x in ratios)
    return [
        f"paired by round, moat / ptp ipMasq: median {med:.3f}, 95 % interval "
        f"{low:.3f}-{high:.3f} (bootstrap); geometric mean {gm:.3f} ({gm_low:.3f}-{gm_high:.3f})",
        f"  rounds: {len(ratios)}, range {min(ratios):.3f}-{max(ratios):.3f}, "
        f">= {goal} in {held}",
        f"goal >= {goal}: {verdict(low, high, len(ratios), goal)}",
    ]


def design(run):
    # runs saved before the count was recorded all had the default 1000
    return (run["seconds"], run["streams"], run.get("pods", 1000))


def pool(paths):
    ratios, first = [], None
    for path in paths:
        with open(path) as f:
            run = json.load(f)
        if first is None:
            first = design(run)
        elif design(run) != first:
            sys.exit(f"{path}: measured {design(run)} (seconds, streams, pods), "
                     f"the first run {first}: not pooled")
        r = paired(run["gbps"])
        print(f"{path}: {len(r)} rounds, ratio of medians {run['ratio']:.3f}, "
              f"paired median {statistics.median(r):.3f}")
        ratios += r
    print()
    print("\n".join(summary(ratios)))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    pool(sys.argv[1:])
