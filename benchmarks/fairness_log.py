"""Time the training fairness log at paper scale: answer extraction and per-group scoring.

The trainer extracts each completion's final answer when it scores the rollouts, and every
`fairness_logging_steps` (5) steps scores the rollouts since the last log with the metrics suite, per
demographic attribute. At the paper's batch (512 prompts x 10 rollouts) that is 5,120 extractions a
step and 25,600 rollouts a log. This prints the median over ``--repeats`` of

* extraction: `fair_trl.rewards.extract_answer` on 5,120 completions (target <= 20 ms), and
* scoring: `fair_trl.rollout_fairness.fairness_results` on 25,600 rollouts, sex and age (target <= 50 ms).

Completions are reasoning in <think></think> (40-160 words, ~250-1,000 characters) then an answer:
``\\boxed{NV}`` (most), ``\\boxed{\\text{...}}``, ``<answer>...</answer>``, nested braces, a bare word,
or nothing. Rollouts follow the benchmark mixture of `benchmarks/advantages.py` (7 domains, CheXpert
multi-label), with answers right, wrong, in synonyms, naming no label, or missing, and sex / age groups
with some unknown.

    python benchmarks/fairness_log.py [--repeats 15] [--completions 5120] [--rollouts 25600]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from advantages import DOMAINS  # noqa: E402  (benchmarks/ is not a package)

from fair_trl.labels import DATASET_LABELS, SYNONYMS  # noqa: E402
from fair_trl.rewards import extract_answer  # noqa: E402
from fair_trl.rollout_fairness import Rollout, fairness_results  # noqa: E402

EXTRACTION_TARGET_MS = 20.0
SCORING_TARGET_MS = 50.0
WORDS = (
    "the image shows a region of increased density with margins that are not well defined and the "
    "findings are compared against the usual appearance for this patient group before deciding"
).split()


def make_answers(rng: np.random.Generator, n: int) -> list[tuple[str, str, str | None]]:
    """(dataset, reference, answer text or None) per rollout."""
    names = list(DOMAINS)
    domains = rng.choice(names, size=n, p=list(DOMAINS.values()))
    out = []
    for domain in domains.tolist():
        labels = DATASET_LABELS[domain]
        size = int(rng.integers(1, 4)) if domain == "chexpert" else 1
        truth = list(rng.choice(labels, size=size, replace=False))
        reference = ", ".join(truth)
        draw = rng.random()
        if draw < 0.55:
            answer = reference
        elif draw < 0.70:  # the same labels in another spelling
            answer = ", ".join(str(rng.choice(SYNONYMS.get(label, (label.lower(),)))) for label in truth)
        elif draw < 0.88:
            answer = str(rng.choice(labels))
        elif draw < 0.95:
            answer = "unclear"
        else:
            answer = None
        out.append((domain, reference, answer))
    return out


def make_completions(rng: np.random.Generator, answers: list[str | None]) -> list[str]:
    texts = []
    for answer in answers:
        thought = " ".join(rng.choice(WORDS, size=int(rng.integers(40, 160))))
        shown = answer or "none"
        draw = rng.random()
        if answer is None or draw < 0.04:
            tail = "I cannot tell from this image."
        elif draw < 0.70:
            tail = f"The answer is \\boxed{{{shown}}}."
        elif draw < 0.80:
            tail = f"So \\boxed{{\\text{{{shown}}}}}"
        elif draw < 0.92:
            tail = f"<answer>{shown}</answer>"
        elif draw < 0.96:
            tail = f"Between \\boxed{{a {{b}} c}} and more, finally \\boxed{{{shown}}}"
        else:
            tail = shown
        texts.append(f"<think>{thought}</think> {tail}")
    return texts


def median_ms(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--completions", type=int, default=5120, help="one step at 512 prompts x 10")
    parser.add_argument("--rollouts", type=int, default=25_600, help="five steps: one fairness log")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    step = make_answers(rng, args.completions)
    texts = make_completions(rng, [answer for _, _, answer in step])
    extracted = [extract_answer(text) for text in texts]
    extraction, _ = median_ms(lambda: [extract_answer(text) for text in texts], args.repeats)

    rollouts = []
    for domain, reference, answer in make_answers(rng, args.rollouts):
        sex = None if rng.random() < 0.1 else str(rng.choice(["F", "M"]))
        age = None if rng.random() < 0.15 else f"a{rng.integers(1, 5)}"
        rollouts.append(Rollout(answer, reference, domain, {"sex": sex, "age": age}))
    results = fairness_results(rollouts, ["sex", "age"])
    scoring, _ = median_ms(lambda: fairness_results(rollouts, ["sex", "age"]), args.repeats)

    mean_chars = statistics.mean(len(t) for t in texts)
    print(f"Fairness log at paper scale (median of {args.repeats}):")
    print(
        f"  answer extraction, {args.completions} completions (mean {mean_chars:.0f} chars, "
        f"{sum(a is not None for a in extracted)} with an answer): {extraction:7.2f} ms"
        f"   (target <= {EXTRACTION_TARGET_MS:.0f} ms: {'met' if extraction <= EXTRACTION_TARGET_MS else 'MISSED'})"
    )
    print(
        f"  per-group scoring, {args.rollouts} rollouts x {len(results)} attributes "
        f"(F1 sex {results['sex']['f1']:.3f}, age {results['age']['f1']:.3f}): {scoring:7.2f} ms"
        f"   (target <= {SCORING_TARGET_MS:.0f} ms: {'met' if scoring <= SCORING_TARGET_MS else 'MISSED'})"
    )
    return 0 if extraction <= EXTRACTION_TARGET_MS and scoring <= SCORING_TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
