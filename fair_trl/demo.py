"""The embedded default job: GRPO vs FairGRPO on the synthetic benchmark, written up in reports/demo/.

Offline and CPU-only. `main` trains the tiny VLM from scratch with every method of the experiment
(`fair_trl.experiment`) for a fixed budget and several seeds, evaluates each checkpoint with the
fairness suite, and writes `report.md`, `results.json`, `runs.json` and the PNG plots
(`fair_trl.demo_report`). The helpers below are the demo's reward: a tiny random model has not learnt
the \\boxed{} format, so any label it mentions counts, with partial credit (`accuracy_reward` in
`fair_trl.rewards` is the strict version used with real models).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from datasets import Dataset

from fair_trl.labels import canonical_labels
from fair_trl.metrics import to_label_set
from fair_trl.rewards import completion_text, matcher_for

DEFAULT_OUTPUT_DIR = Path("reports/demo")


def demo_dataset(num_rows: int = 512, seed: int = 0, split: str = "train") -> Dataset:
    """Rows of the synthetic benchmark (prompt, image, solution, dataset, patient_id, age, sex)."""
    from fair_trl.data import build_dataset

    return build_dataset("synthetic", None, num_rows=num_rows, seed=seed)[split]


def mentioned_labels(text: str, labels: tuple[str, ...], longest: int = 3) -> frozenset[str]:
    """Labels named anywhere in `text`, by any run of up to `longest` consecutive words."""
    matcher = matcher_for(labels)
    words = text.split()
    found = set()
    for n in range(1, longest + 1):
        for i in range(len(words) - n + 1):
            found |= matcher.match(" ".join(words[i : i + n]))
    return frozenset(found)


def jaccard_reward(completion, solution, dataset: str) -> float:
    """Overlap (Jaccard) of the labels a completion mentions with the reference labels."""
    mentioned = mentioned_labels(completion_text(completion), canonical_labels(dataset) or ())
    truth = to_label_set(solution)
    union = mentioned | truth
    return len(mentioned & truth) / len(union) if union else 0.0


def main(settings=None, output_dir: str | Path = DEFAULT_OUTPUT_DIR, progress: bool = True) -> dict:
    """Run the experiment and write the report; returns results.json's content."""
    from fair_trl.demo_report import write_report
    from fair_trl.experiment import ExperimentSettings, run_experiment

    settings = settings or ExperimentSettings()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs = run_experiment(settings, progress=progress)
    seconds = time.perf_counter() - started
    (output_dir / "runs.json").write_text(
        json.dumps({"settings": settings.to_dict(), "train_seconds": seconds, "runs": runs})
    )
    results = write_report(runs, settings, output_dir, train_seconds=seconds)
    print(f"\nwrote {output_dir}/report.md, results.json, runs.json and plots ({seconds / 60:.1f} min of training)")
    print(results["verdict"]["text"])
    return results
