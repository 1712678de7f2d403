"""`fair-trl demo`: warm starts, RL runs, report. Offline and CPU-only.

`main` trains every method of the experiment (`fair_trl.demo.experiment`) for a fixed budget and several
seeds, evaluates each checkpoint with the fairness suite, and writes ``report.md``, ``results.json``,
``summary.md``, ``runs.json`` and the PNG plots (`fair_trl.demo.report`) to an untracked folder
(``outputs/demo`` by default). The reference report the README quotes lives in ``reports/demo/`` and is
refreshed with `publish`. With ``trial=True`` only GRPO and the positive control run, and the result is
appended to the instrument trial log (`fair_trl.demo.instrument`). The report, and what `main` prints
last, says whether the run reproduces the reference study (`fair_trl.demo.reference`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from fair_trl.demo.reference import REFERENCE_DIR, REFERENCE_RESULTS

DEFAULT_OUTPUT_DIR = Path("outputs/demo")
DEFAULT_CACHE_DIR = Path("outputs/demo-cache")
# What `publish` copies into the reference folder; runs.json (raw curves, large) stays behind.
PUBLISHED = ("report.md", "results.json", "summary.md")


def require_demo_extra() -> None:
    """Fail before training, not after it, when the `[demo]` extra (scipy, matplotlib) is missing."""
    import importlib.util

    missing = [name for name in ("scipy", "matplotlib") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(f"fair-trl demo needs {missing}: pip install 'fair-trl[demo]'")


def context(settings, warm: list[dict[str, Any]], timing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Facts the report states besides the runs: what was planted, the data parts, the warm starts."""
    from fair_trl.data.synthetic import planted_ground_truth
    from fair_trl.demo.evaluation import ATTRIBUTES, attribute_group

    data = settings.data()
    eval_rows = data.eval.select_columns(["age", "sex", "solution", "dataset"]).to_list()
    group_rows: Counter = Counter()
    for row in eval_rows:
        for attribute in ATTRIBUTES:
            group = attribute_group(attribute, row)
            if group is not None:
                group_rows[f"{attribute}={group}"] += 1
    evaluations = [w["evaluation"] for w in warm]

    def mean_of(path) -> Any:
        first = path(evaluations[0])
        if isinstance(first, dict):
            return {k: mean_of(lambda e, k=k: path(e).get(k, np.nan)) for k in first}
        return float(np.mean([path(e) for e in evaluations]))

    step0 = {
        "exact": mean_of(lambda e: e["exact"]),
        "boxed": mean_of(lambda e: e["boxed"]),
        "planted_exact": mean_of(lambda e: e["planted_exact"]),
        "group_exact": {a: mean_of(lambda e, a=a: e[a]["group_exact"]) for a in ATTRIBUTES},
        "group_f1": {a: mean_of(lambda e, a=a: e[a]["group_f1"]) for a in ATTRIBUTES},
    }
    return {
        "planted": planted_ground_truth(data.config),
        "data": {
            "parts": data.summary(),
            "eval_group_rows": dict(sorted(group_rows.items())),
            "distinct_references": len({(r["dataset"], r["solution"]) for r in eval_rows}),
        },
        "step0": step0,
        "warm_starts": [{k: w[k] for k in ("seed", "seconds", "cpu_seconds", "cached")} for w in warm],
        "timing": timing or {},
    }


def main(
    settings=None,
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    trial_log: str | Path | None = None,
    trial: bool = False,
    progress: bool = True,
    reference: str | Path | None = REFERENCE_RESULTS,
) -> dict:
    """Run the experiment and write the report; returns results.json's content.

    `reference`: the reference study's results.json the run is checked against (`fair_trl.demo.reference`).
    """
    from fair_trl.demo.experiment import ExperimentSettings, run_experiment
    from fair_trl.demo.instrument import TRIAL_LOG, TRIAL_METHODS, append_trial, trial_record
    from fair_trl.demo.report import write_report

    require_demo_extra()
    settings = settings or ExperimentSettings()
    trial_log = TRIAL_LOG if trial_log is None else trial_log
    if trial and list(settings.methods) != list(TRIAL_METHODS):
        raise ValueError(f"a trial runs exactly {list(TRIAL_METHODS)}, got methods={settings.methods}")
    visible = settings.check_visible()  # before any training: a planting the held-out part cannot see
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    warm, runs = run_experiment(settings, cache_dir, progress=progress)
    seconds = time.perf_counter() - started
    # Only what this call computed: cached warm starts and runs cost it nothing.
    cpu_seconds = sum(r["cpu_seconds"] for r in runs if not r.get("cached")) + sum(
        w["cpu_seconds"] for w in warm if not w["cached"]
    )
    timing = {
        "wall_seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "workers": settings.workers,
        "cpus": os.cpu_count(),
        "warm_started": sum(not w["cached"] for w in warm),
        "warm_cached": sum(w["cached"] for w in warm),
        "runs_trained": sum(not r.get("cached") for r in runs),
        "runs_cached": sum(bool(r.get("cached")) for r in runs),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
    }
    facts = context(settings, warm, timing)
    facts["data"]["planted_cell_rows"] = visible
    (output_dir / "runs.json").write_text(json.dumps({"settings": settings.to_dict(), "context": facts, "runs": runs}))
    if trial:
        # The trial's own result goes into the log before the report reads it, so the report lists it too.
        from fair_trl.demo.report import analyse

        benchmark = dataclasses.asdict(settings.config())
        append_trial(trial_record(analyse(runs, settings, facts), seconds, cpu_seconds, benchmark), trial_log)
    results = write_report(runs, settings, output_dir, facts, trial_log, reference)
    print(f"\nwrote {output_dir}/report.md, results.json, summary.md, runs.json and plots ({seconds / 60:.1f} min)")
    print(results["gate"]["text"])
    if not trial:
        print(results["verdict"]["text"])
    print(results["reference_check"]["text"])
    return results


def publish(output_dir: str | Path = DEFAULT_OUTPUT_DIR, reference_dir: str | Path = REFERENCE_DIR) -> Path:
    """Copy a finished demo's report, results and plots into the reference folder the README quotes.

    A folder named ``planting-NAME`` is one more planting beside the reference study in its parent; either
    way the reference folder's ``plantings.md`` is rewritten to list them all.
    """
    from fair_trl.demo.plantings import check_same_settings, plantings_root, published_results, write_plantings
    from fair_trl.demo.plots import PLOTS

    source, target = Path(output_dir), Path(reference_dir)
    missing = [name for name in (*PUBLISHED, *PLOTS) if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{source} is not a finished demo report: missing {missing}")
    root = plantings_root(target)
    after = {**published_results(root), target: json.loads((source / "results.json").read_text())}
    check_same_settings(after, root)  # before anything is copied: a refused publish changes nothing
    target.mkdir(parents=True, exist_ok=True)
    for name in (*PUBLISHED, *PLOTS):
        shutil.copyfile(source / name, target / name)
    write_plantings(plantings_root(target))
    return target
