"""The embedded default job: GRPO vs FairGRPO on the synthetic benchmark, written up in reports/demo/.

Offline and CPU-only. `main` trains the tiny VLM with every method of the experiment
(`fair_trl.demo.experiment`) for a fixed budget and several seeds, evaluates each checkpoint with the
fairness suite, and writes `report.md`, `results.json`, `runs.json` and the PNG plots
(`fair_trl.demo.report`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

DEFAULT_OUTPUT_DIR = Path("reports/demo")


def main(settings=None, output_dir: str | Path = DEFAULT_OUTPUT_DIR, progress: bool = True) -> dict:
    """Run the experiment and write the report; returns results.json's content."""
    from fair_trl.demo.experiment import ExperimentSettings, run_experiment
    from fair_trl.demo.report import write_report

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
