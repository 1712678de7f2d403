"""The demo experiment: runs, statistics, verdict, report files, CLI."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from fair_trl.cli import main
from fair_trl.demo.experiment import ExperimentSettings, demo_splits, run_one, with_oracle_weights
from fair_trl.demo.plots import pareto_front
from fair_trl.demo.report import analyse, rebuild
from fair_trl.demo.reward import jaccard_reward
from fair_trl.demo.stats import paired_difference, seed_summary

PLOTS = ("curves.png", "pareto.png", "group_f1_difference.png", "group_curves.png", "scale_factors.png")


def test_demo_writes_report_plots_and_results(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--methods", "grpo", "fair_grpo", "oracle_oversampling", "--seeds", "2", "--steps", "4"]
    assert main([*args, "--eval-every", "2", "--workers", "2", "--output-dir", str(out)]) == 0
    assert "Positive control" in capsys.readouterr().out

    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"grpo", "fair_grpo", "oracle_oversampling"}
    for entry in results["methods"].values():
        for metric in ("f1", "delta_f1", "acc", "eod", "pp"):
            assert set(entry[metric]) >= {"mean", "std"}
            assert len(entry[metric]["values"]) == 2 and 0 <= entry[metric]["mean"] <= 1
    assert results["settings"]["steps"] == 4 and results["settings"]["seeds"] == 2
    assert "vs_grpo" in results["methods"]["fair_grpo"] and "vs_grpo" not in results["methods"]["grpo"]

    report = (out / "report.md").read_text()
    for heading in ("## Verdict", "## Table 2", "## Differences to GRPO", "## Per-group F1"):
        assert heading in report
    for name in PLOTS:
        with Image.open(out / name) as image:
            assert image.size[0] > 300

    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert [(r["method"], r["seed"]) for r in runs][:3] == [("grpo", 0), ("fair_grpo", 0), ("oracle_oversampling", 0)]
    assert [c["step"] for c in runs[0]["checkpoints"]] == [0, 2, 4]
    fair = next(r for r in runs if r["method"] == "fair_grpo")
    assert len(fair["scale_factors"]) == 4 and not runs[0]["scale_factors"]  # GRPO has no scale factors

    (out / "results.json").unlink()
    rebuilt = rebuild(out)
    assert rebuilt["methods"]["fair_grpo"]["delta_f1"] == results["methods"]["fair_grpo"]["delta_f1"]


def test_a_run_is_reproducible_and_trains():
    settings = ExperimentSettings(methods=("grpo", "fair_grpo"), seeds=1, steps=3, eval_every=3, workers=1)
    first = run_one("fair_grpo", 0, settings)
    again = run_one("fair_grpo", 0, settings)
    assert first["checkpoints"] == again["checkpoints"]
    assert first["train_reward"] == again["train_reward"]
    assert {c["step"] for c in first["checkpoints"]} == {0, 3}
    groups = set(first["train_reward"])
    assert {"sex=F", "sex=M"} <= groups and any(g.startswith("age=a") for g in groups)


def test_oracle_weights_give_planted_rows_half_the_draws():
    from fair_trl.data.synthetic import is_disadvantaged

    train = with_oracle_weights(demo_splits(ExperimentSettings(num_rows=300))["train"])
    rows = train.select_columns(["dataset", "age", "sex", "oracle_weight"]).to_list()
    planted = np.array([r["age"] is not None and is_disadvantaged(r["dataset"], r["age"], r["sex"]) for r in rows])
    weights = np.array([r["oracle_weight"] for r in rows])
    assert 0 < planted.mean() < 0.5
    assert weights[planted].sum() == pytest.approx(weights[~planted].sum())


def test_jaccard_reward_gives_partial_credit():
    assert jaccard_reward("Edema Fracture", "Edema", "chexpert") == pytest.approx(0.5)
    assert jaccard_reward("edema", "Edema, Fracture", "chexpert") == pytest.approx(0.5)
    assert jaccard_reward("nothing here", "Edema", "chexpert") == 0.0


def test_paired_difference_is_a_t_interval():
    diff = paired_difference([0.3, 0.5, 0.4], [0.1, 0.2, 0.2])  # differences 0.2, 0.3, 0.2
    half = 4.302652729911275 * np.std([0.2, 0.3, 0.2], ddof=1) / math.sqrt(3)  # t(0.975, 2)
    assert diff["mean"] == pytest.approx(0.7 / 3)
    assert diff["ci"] == pytest.approx([0.7 / 3 - half, 0.7 / 3 + half])


def test_seed_summary_bootstrap_interval_lies_within_the_values():
    summary = seed_summary([0.1, 0.4, 0.2, 0.3], n_bootstrap=500)
    assert summary["mean"] == pytest.approx(0.25) and summary["std"] == pytest.approx(np.std([1, 4, 2, 3], ddof=1) / 10)
    assert 0.1 <= summary["ci"][0] < 0.25 < summary["ci"][1] <= 0.4


def test_pareto_front_keeps_only_undominated_points():
    points = [(0.10, 0.50), (0.20, 0.60), (0.15, 0.40), (0.30, 0.55), (0.05, 0.30)]
    assert pareto_front(points) == [4, 0, 1]


def fake_run(method, seed, delta_f1, f1):
    """A run whose final checkpoint has the given ΔF1 and F1 for both attributes."""
    attribute = {
        "acc": 0.8, "f1": f1, "EOD": 0.1, "PP": 0.1, "FPR_diff": 0.0, "delta_acc": 0.0, "delta_f1": delta_f1,
        "sigma_acc": 0.0, "sigma_f1": 0.0, "acc_es": 0.8, "f1_es": f1,
        "group_f1": {"a1": f1 - delta_f1, "a2": f1}, "per_group_f1": {"ham10000": {"a1": f1 - delta_f1, "a2": f1}},
    }  # fmt: skip
    checkpoint = {"step": 10, "age": attribute, "sex": attribute}
    return {"method": method, "seed": seed, "checkpoints": [checkpoint], "train_reward": {}, "scale_factors": []}


def test_verdict_names_a_method_that_reaches_the_aim_and_a_working_control():
    settings = ExperimentSettings(methods=("grpo", "fair_grpo", "oracle_oversampling"), seeds=4, n_bootstrap=100)
    noise = [0.0, 0.01, -0.01, 0.005]
    runs = []
    for seed, e in enumerate(noise):
        runs.append(fake_run("grpo", seed, 0.20 + e, 0.50))
        runs.append(fake_run("fair_grpo", seed, 0.12 + e * 0.5, 0.495))  # -40% ΔF1, -0.005 F1
        runs.append(fake_run("oracle_oversampling", seed, 0.15 + e, 0.45))
    results = analyse(runs, settings)
    assert results["verdict"]["methods_reaching_aim"] == ["fair_grpo"]
    assert results["verdict"]["positive_control_detects"] is True
    assert results["methods"]["fair_grpo"]["vs_grpo"]["delta_f1_relative"]["mean"] == pytest.approx(-0.4, abs=0.01)
    diff = results["per_group_difference"]["fair_grpo"]["ham10000/age=a1"]
    assert diff["mean"] == pytest.approx((0.495 - 0.12) - (0.5 - 0.2), abs=0.01)


def test_verdict_refuses_a_reduction_bought_with_f1_or_within_noise():
    settings = ExperimentSettings(methods=("grpo", "fair_grpo", "fair_grpo_floor"), seeds=3, n_bootstrap=100)
    runs = []
    for seed, e in enumerate([0.0, 0.1, -0.1]):
        runs.append(fake_run("grpo", seed, 0.20 + e, 0.50))
        runs.append(fake_run("fair_grpo", seed, 0.10, 0.45))  # -50% ΔF1 but 0.05 lower F1
        runs.append(fake_run("fair_grpo_floor", seed, 0.10 - e, 0.50))  # -50% on average, interval spans 0
    results = analyse(runs, settings)
    assert results["verdict"]["methods_reaching_aim"] == []
    assert results["verdict"]["positive_control_detects"] is None
    assert "Aim not reached" in results["verdict"]["text"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "ppo"], "unknown method(s) ['ppo']"),
        (["--methods", "fair_grpo"], "must include 'grpo'"),
        (["--seeds", "0"], "seeds must be >= 1"),
    ],
)
def test_demo_refuses_bad_settings(args, message, capsys):
    with pytest.raises(SystemExit):
        main(["demo", *args])
    assert message in capsys.readouterr().err
