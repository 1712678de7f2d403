"""Long-run memory of FairGRPOAdvantage: state size and process memory stay flat after warm-up.

Runs the estimator for 10,000 steps on the paper's batch (512 prompts x 10 rollouts; the batches of
`benchmarks/advantages.py`: 7 domains, 8 sex x age groups, 10% of prompts unlabeled, 0/1 rewards)
and prints, at steps 100, 1000, 2500, 5000, 7500 and 10000:

* state: the bytes of ``json.dumps(estimator.state_dict())`` (what a checkpoint writes);
* maxrss: the process's peak resident set size so far (``resource.getrusage(RUSAGE_SELF).ru_maxrss``);
* rss: the current resident set size (Linux ``/proc/self/statm``; "-" elsewhere);
* ms/step: the estimator's mean time per call since the previous row (batch generation excluded);
* traced: with ``--tracemalloc``, Python/numpy heap in use now and its peak since the previous row.

Each domain's pool of unlabeled reward vectors fills within about 700 steps (covid_blues, the
smallest domain, adds ~1.5 unlabeled prompts a step to a pool of 1024), so `--warmup` (1000) is the
step after which nothing may grow. The bound, checked at the end: from the warm-up row to the last,
the state grows by at most 2% (running sums only add digits) and peak RSS by at most
max(5% of its warm-up value, 16 MiB).

    python benchmarks/long_run_memory.py [--steps 10000] [--prompts 512] [--rollouts 10] [--tracemalloc]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from advantages import make_batches  # noqa: E402  (benchmarks/ is not a package)

from fair_trl.advantages import FairGRPOAdvantage  # noqa: E402

MIB = 1024 * 1024
STATE_GROWTH_BOUND = 0.02
RSS_GROWTH_BOUND = 0.05
RSS_GROWTH_SLACK = 16 * MIB


def maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


def current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def report_steps(steps: int, warmup: int) -> list[int]:
    marks = [100, 1000, 2500, 5000, 7500, 10000, warmup, steps]
    return sorted({m for m in marks if 1 <= m <= steps})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--rollouts", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1000, help="step after which state and memory must be flat")
    parser.add_argument("--pool-size", type=int, default=1024, help="cluster_pool_size of the estimator")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tracemalloc", action="store_true", help="also trace the Python/numpy heap (slower)")
    args = parser.parse_args(argv)
    if args.steps < 1 or not 1 <= args.warmup <= args.steps:
        parser.error("need steps >= 1 and 1 <= warmup <= steps")

    marks = set(report_steps(args.steps, args.warmup))
    if args.tracemalloc:
        tracemalloc.start()
    estimator = FairGRPOAdvantage(cluster_pool_size=args.pool_size)
    rows: dict[int, dict[str, float | None]] = {}
    print(
        f"FairGRPOAdvantage, {args.prompts} prompts x {args.rollouts} rollouts, {args.steps} steps "
        f"(cluster_pool_size {args.pool_size}, warm-up {args.warmup})"
    )
    header = f"{'step':>6} {'state KiB':>10} {'maxrss MiB':>11} {'rss MiB':>8} {'ms/step':>8}"
    if args.tracemalloc:
        header += f" {'traced MiB':>11} {'traced peak':>12}"
    print(header, flush=True)
    start = time.perf_counter()
    last_step, estimator_seconds = 0, 0.0
    batches = make_batches(args.steps, args.prompts, args.rollouts, seed=args.seed)  # lazily, one at a time
    for step, (rewards, domains, groups) in enumerate(batches, start=1):
        tick = time.perf_counter()
        estimator(rewards, args.rollouts, domains, groups)
        estimator_seconds += time.perf_counter() - tick
        if step not in marks:
            continue
        rss = current_rss_bytes()
        row: dict[str, float | None] = {
            "state": len(json.dumps(estimator.state_dict())),
            "maxrss": maxrss_bytes(),
            "rss": rss,
            "ms": estimator_seconds * 1e3 / (step - last_step),
        }
        line = (
            f"{step:>6} {row['state'] / 1024:>10.1f} {row['maxrss'] / MIB:>11.1f} "
            f"{'-' if rss is None else f'{rss / MIB:.1f}':>8} {row['ms']:>8.2f}"
        )
        if args.tracemalloc:
            current, peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            row["traced"], row["traced_peak"] = current, peak
            line += f" {current / MIB:>11.1f} {peak / MIB:>12.1f}"
        print(line, flush=True)
        rows[step] = row
        last_step, estimator_seconds = step, 0.0

    total = time.perf_counter() - start
    warm, last = rows[args.warmup], rows[args.steps]
    state_growth = last["state"] / warm["state"] - 1
    rss_growth = last["maxrss"] - warm["maxrss"]
    rss_allowed = max(RSS_GROWTH_BOUND * warm["maxrss"], RSS_GROWTH_SLACK)
    print(f"wall time {total:.0f} s; latent clusters at the last step: {estimator.last_info['num_clusters']}")
    print(
        f"state: {warm['state'] / 1024:.1f} KiB at step {args.warmup} -> {last['state'] / 1024:.1f} KiB at step "
        f"{args.steps} ({state_growth:+.2%}; bound +{STATE_GROWTH_BOUND:.0%})"
    )
    print(
        f"peak RSS: {warm['maxrss'] / MIB:.1f} MiB at step {args.warmup} -> {last['maxrss'] / MIB:.1f} MiB at step "
        f"{args.steps} ({rss_growth / MIB:+.1f} MiB; bound +{rss_allowed / MIB:.1f} MiB)"
    )
    flat = state_growth <= STATE_GROWTH_BOUND and rss_growth <= rss_allowed
    print(f"verdict: {'FLAT' if flat else 'GROWING'} after warm-up")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
