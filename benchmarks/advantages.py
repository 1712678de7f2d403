"""Time FairGRPOAdvantage on the paper's batch (512 prompts x 10 rollouts) and on a DAPO-sized one.

7 domains with a CheXpert-heavy mix, 8 intersectional (sex x age) groups, 10% of prompts with no
demographics, 0/1 rewards whose success rate depends on domain and group (`make_batches`). Only the
estimator call is timed (wall clock, ``time.perf_counter``; CPU time alongside, which other jobs on a
shared machine inflate less). Prints, against the targets:

* 512 x 10 for 10,000 steps: the median ms per step over steps 1-10 and over steps 9,991-10,000, both
  at most 2 ms, so the cost is flat as the run goes on (and the median over every step);
* 4096 x 16 for 300 steps: the median ms per step over the run, at most 10 ms;
* the estimator's state size (JSON) along the way.

    python benchmarks/advantages.py [--steps 10000] [--prompts 512] [--rollouts 10]
                                    [--large-steps 300] [--large-prompts 4096] [--large-rollouts 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from fair_trl.advantages import FairGRPOAdvantage

DOMAINS = {  # share of prompts, roughly the paper's training mixture
    "chexpert": 0.60,
    "vindr_mammo": 0.10,
    "isic2020": 0.10,
    "ham10000": 0.08,
    "pad_ufes20": 0.05,
    "hemorrhage": 0.04,
    "covid_blues": 0.03,
}
GROUPS = [f"sex={s}|age=a{a}" for s in "FM" for a in range(1, 5)]
GROUP_SHARE = np.array([0.04, 0.18, 0.22, 0.06, 0.04, 0.18, 0.22, 0.06])
TARGET_MS = 2.0  # 512 x 10, at the start and after 10,000 steps
LARGE_TARGET_MS = 10.0  # 4096 x 16


def make_batches(steps: int, prompts: int, rollouts: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    names = list(DOMAINS)
    domain_skill = dict(zip(names, rng.uniform(0.2, 0.8, len(names)), strict=True))
    group_shift = dict(zip(GROUPS, rng.normal(0, 0.1, len(GROUPS)), strict=True))
    for _ in range(steps):
        domains = rng.choice(names, size=prompts, p=list(DOMAINS.values()))
        groups = [None if rng.random() < 0.10 else GROUPS[i] for i in rng.choice(8, size=prompts, p=GROUP_SHARE)]
        p = np.clip([domain_skill[d] + group_shift.get(g, -0.15) for d, g in zip(domains, groups, strict=True)], 0, 1)
        rewards = (rng.random((prompts, rollouts)) < p[:, None]).astype(np.float32)
        yield (
            torch.from_numpy(rewards.reshape(-1)),
            [d for d in domains for _ in range(rollouts)],
            [g for g in groups for _ in range(rollouts)],
        )


def time_run(steps: int, prompts: int, rollouts: int, state_at: tuple[int, ...] = ()):
    """Per-step wall and CPU seconds of one estimator over `steps` fresh batches; state sizes at `state_at`."""
    estimator = FairGRPOAdvantage()
    wall, cpu, state_kib = [], [], {}
    for step, (rewards, domains, groups) in enumerate(make_batches(steps, prompts, rollouts), start=1):
        start, start_cpu = time.perf_counter(), time.process_time()
        estimator(rewards, rollouts, domains, groups)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        if step in state_at:
            state_kib[step] = len(json.dumps(estimator.state_dict())) / 1024
    return np.array(wall) * 1e3, np.array(cpu) * 1e3, state_kib, estimator.last_info["num_clusters"]


def window(values: np.ndarray, first: int, last: int) -> float:
    return float(statistics.median(values[first - 1 : last]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--rollouts", type=int, default=10)
    parser.add_argument("--large-steps", type=int, default=300)
    parser.add_argument("--large-prompts", type=int, default=4096)
    parser.add_argument("--large-rollouts", type=int, default=16)
    args = parser.parse_args(argv)
    if args.steps < 20:
        parser.error("--steps must be at least 20 (two windows of 10)")

    n = args.steps
    marks = tuple(m for m in (10, 300, 1000, n) if m <= n)
    wall, cpu, state_kib, clusters = time_run(n, args.prompts, args.rollouts, marks)
    early, late = window(wall, 1, 10), window(wall, n - 9, n)
    print(f"FairGRPOAdvantage, {args.prompts} prompts x {args.rollouts} rollouts, {n} steps (ms per step, median)")
    print(f"  steps 1-10:            {early:6.3f}   (CPU {window(cpu, 1, 10):.3f})")
    if n > 300:
        print(f"  steps 291-300:         {window(wall, 291, 300):6.3f}   (CPU {window(cpu, 291, 300):.3f})")
    print(f"  steps {n - 9}-{n}:  {late:6.3f}   (CPU {window(cpu, n - 9, n):.3f})")
    print(f"  all {n} steps:      {float(np.median(wall)):6.3f}   (CPU {float(np.median(cpu)):.3f})")
    print("  state (JSON KiB): " + ", ".join(f"step {s} {kib:.0f}" for s, kib in state_kib.items()))
    print(f"  latent clusters at the last step: {clusters}")
    flat = early <= TARGET_MS and late <= TARGET_MS
    print(f"  target: <= {TARGET_MS:g} ms at steps 1-10 and {n - 9}-{n}: {'met' if flat else 'MISSED'}")

    big_wall, big_cpu, _, _ = time_run(args.large_steps, args.large_prompts, args.large_rollouts)
    big = float(np.median(big_wall))
    print(
        f"FairGRPOAdvantage, {args.large_prompts} prompts x {args.large_rollouts} rollouts, {args.large_steps} steps: "
        f"median {big:.3f} ms per step (CPU {float(np.median(big_cpu)):.3f}); first 10 {window(big_wall, 1, 10):.3f}"
    )
    large_ok = big <= LARGE_TARGET_MS
    print(f"  target: <= {LARGE_TARGET_MS:g} ms: {'met' if large_ok else 'MISSED'}")
    return 0 if flat and large_ok else 1


if __name__ == "__main__":
    sys.exit(main())
