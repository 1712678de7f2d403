"""Time FairGRPOAdvantage on the paper's batch: 512 prompts x 10 rollouts, for 300 steps.

7 domains with a CheXpert-heavy mix, 8 intersectional (sex x age) groups, 10% of prompts with no
demographics, 0/1 rewards whose success rate depends on domain and group. Prints the median time
of steps 1-10 and 291-300 and the estimator's state size, against the targets (<= 20 ms at
steps 291-300 and no more than 1.5x steps 1-10 on a 2-core machine).

    python benchmarks/advantages.py [--steps 300] [--prompts 512] [--rollouts 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--rollouts", type=int, default=10)
    args = parser.parse_args()

    batches = list(make_batches(args.steps, args.prompts, args.rollouts))
    estimator = FairGRPOAdvantage()
    times_ms, state_bytes = [], []
    for rewards, domains, groups in batches:
        start = time.perf_counter()
        estimator(rewards, args.rollouts, domains, groups)
        times_ms.append((time.perf_counter() - start) * 1e3)
        state_bytes.append(len(json.dumps(estimator.state_dict())))

    early = statistics.median(times_ms[:10])
    late = statistics.median(times_ms[-10:])
    print(f"FairGRPOAdvantage, {args.prompts} prompts x {args.rollouts} rollouts, {args.steps} steps")
    print(f"  median ms, steps 1-10:      {early:7.2f}")
    print(f"  median ms, steps {args.steps - 9}-{args.steps}:  {late:7.2f}   (ratio {late / early:.2f})")
    kib = [b / 1024 for b in state_bytes]
    print(
        f"  state (JSON KiB): step 10 {kib[9]:.0f}, step {args.steps // 2} {kib[args.steps // 2 - 1]:.0f}, "
        f"step {args.steps} {kib[-1]:.0f}"
    )
    print(f"  latent clusters at last step: {estimator.last_info['num_clusters']}")
    ok = late <= 20.0 and late <= 1.5 * early
    print(f"  targets (<= 20 ms, <= 1.5x steps 1-10): {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
