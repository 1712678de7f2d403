"""The demo experiment: data parts, warm start, runs, reproducibility, gate, verdict, report files, CLI."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fair_trl.cli import main
from fair_trl.demo.benchmark import planted_flags, with_oracle_weights
from fair_trl.demo.command import DemoOptions
from fair_trl.demo.experiment import DEMO_BENCHMARK, METHODS, NOISE_METHODS, ExperimentSettings, run_warm_start
from fair_trl.demo.instrument import TRIAL_FIELDS, read_trials
from fair_trl.demo.plantings import PLANTINGS_FILE, plantings_markdown
from fair_trl.demo.plots import PLOTS, pareto_front
from fair_trl.demo.reference import reference_check
from fair_trl.demo.report import analyse, effect_word, markdown, meets_aim, rebuild, summary_markdown
from fair_trl.demo.run import publish
from fair_trl.demo.stats import paired_difference, seed_summary
from fair_trl.groups import normalise_attribute

# Small enough for the suite, large enough that the warm start learns the answer format (60 steps).
# Its planted cells hold a few held-out rows each, so the visibility check is off (--min_cell_rows 0).
TINY = ["--seeds", "2", "--steps", "4", "--eval_every", "2", "--sft_steps", "60", "--pretrain_rows", "200",
        "--rl_rows", "200", "--eval_rows", "240", "--min_cell_rows", "0"]  # fmt: skip
TIMING_KEYS = {"timing", "warm_starts", "seconds", "cpu_seconds", "wall_seconds", "when"}


def without_timings(value):
    """results.json with every timing removed: what must not depend on the machine's load or worker count."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS and k != "workers"}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def demo(tmp_path, name, *args, cache="cache"):
    out = tmp_path / name
    argv = ["demo", *TINY, *args, "--output_dir", str(out), "--cache_dir", str(tmp_path / cache)]
    assert main([*argv, "--trial_log", str(tmp_path / "trials.jsonl")]) == 0
    return out, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    out, results = demo(tmp, "two", "--methods", "grpo", "fair_grpo", "oracle_oversampling", "--workers", "2")
    return tmp, out, results


def test_demo_writes_report_plots_and_results(two_workers, capsys):
    _, out, results = two_workers
    assert set(results["methods"]) == {"grpo", "fair_grpo", "oracle_oversampling"}
    for entry in results["methods"].values():
        for metric in ("f1", "delta_f1", "acc", "eod", "pp", "exact"):
            assert len(entry[metric]["values"]) == 2 and 0 <= entry[metric]["mean"] <= 1
        assert len(entry["distinct_answers"]) == 2 and all(n >= 1 for n in entry["distinct_answers"])
    assert "vs_grpo" in results["methods"]["fair_grpo"] and "vs_grpo" not in results["methods"]["grpo"]
    assert results["gate"]["valid"] in (True, False)
    # Tiny settings are not the reference study's: the check says so instead of comparing.
    assert results["reference_check"]["checked"] is False
    assert results["reference_check"]["text"].startswith("No reference check")

    report = (out / "report.md").read_text()
    # The gate comes first, before anything about the methods.
    assert report.split("\n", 1)[0] == results["gate"]["text"]
    assert report.startswith(("instrument valid", "instrument invalid"))
    sections = ["## Instrument", "## Benchmark", "## Warm start", "## Verdict", "## Table 2", "## Differences to GRPO",
                "## Per-group F1", "## Distinct answers"]  # fmt: skip
    positions = [report.index(s) for s in sections]
    assert positions == sorted(positions)
    for name in PLOTS:
        with Image.open(out / name) as image:
            assert image.size[0] > 300

    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert [(r["method"], r["seed"]) for r in runs][:3] == [("grpo", 0), ("fair_grpo", 0), ("oracle_oversampling", 0)]
    assert [c["step"] for c in runs[0]["checkpoints"]] == [0, 2, 4]
    # Step 0 is the seed's warm start, shared by every method of the seed.
    for seed in (0, 1):
        firsts = [r["checkpoints"][0] for r in runs if r["seed"] == seed]
        assert all(first == firsts[0] for first in firsts)
    assert not runs[0]["group_weights"]  # GRPO has no FairGRPO weights

    (out / "results.json").unlink()
    rebuilt = rebuild(out, out.parent / "trials.jsonl")
    assert without_timings(rebuilt) == without_timings(results)


def test_warm_start_answers_in_the_format_the_reward_reads(two_workers):
    _, out, _ = two_workers
    context = json.loads((out / "runs.json").read_text())["context"]
    assert context["step0"]["boxed"] > 0.95  # 60 SFT steps teach \boxed{}; the RL reward reads nothing else
    assert [w["cached"] for w in context["warm_starts"]] == [False, False]


def test_workers_one_and_two_give_identical_results(two_workers):
    tmp, _, results = two_workers
    # A fresh cache, so the warm starts are trained again, in one worker this time.
    _, single = demo(tmp, "one", "--methods", "grpo", "fair_grpo", "oracle_oversampling", "--workers", "1",
                     cache="cache-single")  # fmt: skip
    assert without_timings(single) == without_timings(results)
    assert results["context"]["timing"]["workers"] == 2 and single["context"]["timing"]["workers"] == 1


def test_trial_runs_grpo_and_the_control_only_and_logs_every_call(two_workers, capsys):
    tmp, _, results = two_workers
    # The same benchmark spelt out: warm starts and runs are the full run's, read from the cache.
    _, trial = demo(tmp, "trial", "--trial", "-b", "cue_strength=0.08")
    assert set(trial["methods"]) == {"grpo", "oracle_oversampling"}
    assert trial["context"]["warm_starts"][0]["cached"] is True
    assert trial["context"]["timing"]["runs_cached"] == 4 and trial["context"]["timing"]["runs_trained"] == 0
    for method in ("grpo", "oracle_oversampling"):
        assert trial["methods"][method]["delta_f1"] == results["methods"][method]["delta_f1"]
    logged = read_trials(tmp / "trials.jsonl")
    assert len(logged) == 1 and set(logged[0]["settings"]) == set(TRIAL_FIELDS)
    assert logged[0]["settings"]["benchmark"] == [*DEMO_BENCHMARK, "cue_strength=0.08"]  # -b adds to the demo's
    assert logged[0]["valid"] == trial["gate"]["valid"]
    assert logged[0]["control_rule"].startswith("most common unplanted cell of its domain")
    assert logged[0]["grpo_f1_vs_warm_start"]["mean"] == pytest.approx(
        trial["methods"]["grpo"]["vs_warm_start"]["f1"]["mean"]
    )
    assert logged[0]["control_vs_grpo_delta_f1"]["mean"] == pytest.approx(
        trial["methods"]["oracle_oversampling"]["vs_grpo"]["delta_f1"]["mean"]
    )
    # The report lists the trial log, and names the override.
    report = (tmp / "trial" / "report.md").read_text()
    assert "`cue_strength=0.08`" in report and "trials.jsonl" in report and "| 1 |" in report
    # The two-part gate and the control's rule, as this run had them; and the planted cells' held-out rows.
    assert "The gate, two parts" in report and "| most common unplanted cell of its domain, at most 5x |" in report
    assert "Held-out rows per planted cell" in report and "ham10000/age=a1 " in report
    for extra in (["--methods", "grpo", "fair_grpo"], ["--baselines"], ["--variants"]):
        with pytest.raises(SystemExit):
            main(["demo", "--trial", *extra, "--output_dir", str(tmp / "refused")])
        assert "--trial runs exactly ['grpo', 'oracle_oversampling']" in capsys.readouterr().err
    assert len(read_trials(tmp / "trials.jsonl")) == 1


def test_noise_check_and_fewer_variant_seeds_run_end_to_end_and_rebuild(two_workers):
    tmp, _, _ = two_workers
    out, noise = demo(tmp, "noise", "--noise_check")
    assert set(noise["methods"]) == {"grpo", *NOISE_METHODS} and noise["gate"]["valid"] is None
    assert noise["context"]["timing"]["runs_cached"] == 2  # GRPO's runs are the earlier run's
    assert set(noise["noise_check"]) == set(NOISE_METHODS) and noise["verdict"]["words"] == {}
    report = (out / "report.md").read_text()
    assert "## Noise check" in report and report.rstrip().splitlines()[-1].startswith("No reference check")
    (out / "results.json").unlink()
    assert without_timings(rebuild(out, tmp / "trials.jsonl")) == without_timings(noise)
    # A variant on fewer seeds than GRPO: only its own seeds are trained, and paired with GRPO's first.
    out, fewer = demo(tmp, "fewer", "--methods", "grpo", "fair_grpo_cap", "--secondary_seeds", "1")
    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert [(r["method"], r["seed"]) for r in runs] == [("grpo", 0), ("fair_grpo_cap", 0), ("grpo", 1)]
    assert fewer["methods"]["fair_grpo_cap"]["vs_grpo"]["seeds"] == 1
    assert fewer["methods"]["fair_grpo_cap"]["seeds"] == [0] and fewer["methods"]["grpo"]["seeds"] == [0, 1]


def test_publish_copies_the_report_into_the_reference_folder(two_workers, tmp_path):
    _, out, results = two_workers
    target = publish(out, tmp_path / "reference")
    assert json.loads((target / "results.json").read_text()) == results
    published = {"report.md", "results.json", "summary.md", *PLOTS}
    assert {p.name for p in target.iterdir()} == {*published, PLANTINGS_FILE}
    # Another planting goes beside it, and the reference folder's table then lists both.
    planting = publish(out, target / "planting-again")
    assert {p.name for p in planting.iterdir()} == published
    table = (target / PLANTINGS_FILE).read_text()
    assert "(the reference study)" in table and "(`planting-again/`)" in table
    with pytest.raises(FileNotFoundError, match="missing"):
        publish(tmp_path / "nothing", tmp_path / "elsewhere")


def test_default_output_is_untracked():
    # `make demo` must leave the committed reference report (and so `make test`) alone.
    gitignore = Path(__file__).resolve().parents[1] / ".gitignore"
    assert DemoOptions().output_dir.startswith("outputs/") and DemoOptions().cache_dir.startswith("outputs/")
    assert "outputs/" in gitignore.read_text().split()


@pytest.fixture(scope="module")
def data():
    return ExperimentSettings().data()


def test_demo_data_parts(data):
    config = data.config
    parts = {name: getattr(data, name) for name in ("pretrain", "rl", "eval")}
    patients = {name: set(part["patient_id"]) for name, part in parts.items()}
    assert not patients["pretrain"] & patients["rl"] and not patients["eval"] & (patients["pretrain"] | patients["rl"])
    share = {name: np.mean(planted_flags(part, config)) for name, part in parts.items()}
    # The pre-training part under-represents the planted groups (it keeps half of them, and RL's share
    # counts hidden demographics as not planted); RL sees the natural mix.
    assert ExperimentSettings().pretrain_disadvantaged_keep == 0.5
    assert share["pretrain"] < 0.75 * share["rl"] and share["rl"] > 0.15
    assert all(age is not None for age in data.pretrain["age"])
    assert any(age is None for age in data.rl["age"])
    # The held-out part is large enough to see every planted age group.
    ages = [a for a in data.eval["age"] if a is not None]
    assert sum(a <= 25 for a in ages) >= 150 and sum(a > 75 for a in ages) >= 150


def hand_made(cells):
    """Rows of the given {(domain, age, sex): count}; age None means hidden demographics."""
    from datasets import Dataset

    rows = [(d, a, s) for (d, a, s), n in cells.items() for _ in range(n)]
    return Dataset.from_dict({k: [r[i] for r in rows] for i, k in enumerate(("dataset", "age", "sex"))})


def draw_shares(weights, rows, key):
    """{key(row): its share of the draws} under `weights`."""
    total = sum(weights)
    out = {}
    for w, r in zip(weights, rows.to_list(), strict=True):
        out[key(r)] = out.get(key(r), 0.0) + w / total
    return out


def test_oracle_draws_each_planted_cell_as_often_as_its_domains_most_common_unplanted_cell():
    from fair_trl.data.synthetic import SyntheticConfig
    from fair_trl.demo.benchmark import oracle_weights

    # Ages 20, 40, 60, 80 are the bins a1..a4. HAM10000: 100 rows with released demographics, 10 hidden;
    # ISIC-2020 is not planted here.
    rows = hand_made({("ham10000", 20, "F"): 10, ("ham10000", 40, "F"): 40, ("ham10000", 60, "M"): 30,
                      ("ham10000", 80, "M"): 20, ("ham10000", None, None): 10, ("isic2020", 40, "F"): 50})  # fmt: skip
    config = SyntheticConfig(disadvantaged=("ham10000:age=a1", "ham10000:age=a4"))
    weights = oracle_weights(rows, config)
    share = draw_shares(weights, rows, lambda r: (r["dataset"], r["age"]))
    # Domains keep their natural share (110 and 50 of 160 rows), hidden rows their natural draws.
    assert share[("isic2020", 40)] == pytest.approx(50 / 160)
    assert share[("ham10000", None)] == pytest.approx(10 / 160)
    # a1 (10 rows) and a4 (20 rows) are each drawn as often as a2, the largest unplanted cell (40 rows);
    # a2 and a3 keep their sizes: masses 40, 40, 30, 40 over HAM10000's 100 known rows.
    known = 100 / 160
    assert share[("ham10000", 20)] == pytest.approx(known * 40 / 150)
    assert share[("ham10000", 80)] == pytest.approx(share[("ham10000", 40)])
    assert share[("ham10000", 60)] == pytest.approx(known * 30 / 150)


def test_oracle_caps_a_tiny_cell_and_leaves_a_large_one_and_reads_intersections():
    from fair_trl.data.synthetic import SyntheticConfig
    from fair_trl.demo.benchmark import ORACLE_MAX_FACTOR, oracle_weights

    rows = hand_made({("ham10000", 20, "F"): 1, ("ham10000", 40, "F"): 59, ("ham10000", 40, "M"): 40,
                      ("isic2020", 80, "F"): 6, ("isic2020", 80, "M"): 14, ("isic2020", 40, "F"): 40,
                      ("isic2020", 40, "M"): 40})  # fmt: skip
    # HAM10000: age a1 is 1% (capped at 5x its size) and sex F is 60%, more than the largest unplanted cell
    # (left at its size); so the cells are (sex, age) pairs there. ISIC-2020: only women over 75 are planted.
    config = SyntheticConfig(disadvantaged=("ham10000:age=a1", "ham10000:sex=F", "isic2020:sex=F|age=a4"))
    weights = oracle_weights(rows, config)
    ham = draw_shares(weights[:100], rows.select(range(100)), lambda r: (r["age"], r["sex"]))
    # Masses: (20, F) 5 (capped), (40, F) 59 (planted through sex=F, already larger), (40, M) 40.
    assert ham[(20, "F")] == pytest.approx(ORACLE_MAX_FACTOR * 1 / 104)
    assert ham[(40, "F")] / ham[(40, "M")] == pytest.approx(59 / 40)
    isic = draw_shares(weights[100:], rows.select(range(100, 200)), lambda r: (r["age"], r["sex"]))
    # F over 75 (6 rows) is capped at 30, below the largest unplanted cell (40): masses 30, 14, 40, 40.
    assert isic[(80, "F")] == pytest.approx(30 / 124)
    assert isic[(80, "M")] / isic[(40, "M")] == pytest.approx(14 / 40)  # unplanted cells keep their sizes
    assert sum(weights[:100]) == pytest.approx(100) and sum(weights[100:]) == pytest.approx(100)
    # A domain whose every released cell is planted keeps its natural draws.
    everyone = SyntheticConfig(disadvantaged=("isic2020:sex=F", "isic2020:sex=M"))
    assert oracle_weights(rows, everyone)[100:] == [1.0] * 100


def test_oracle_weights_on_the_demos_data(data):
    train = with_oracle_weights(data.rl, data.config)
    planted = np.array(planted_flags(train, data.config))
    weights = np.array(train["oracle_weight"])
    assert 0 < planted.mean() < 0.5
    assert weights[planted].sum() / weights.sum() > 2 * planted.mean()
    assert weights[planted].min() > 1 > weights[~planted & (weights != 1)].max()
    # In every domain, a1 and a4 are each drawn as often as its largest unplanted age cell, or 5x their size.
    rows = train.select_columns(["dataset", "age"]).to_list()
    for domain in sorted({r["dataset"] for r in rows}):
        cells: dict[str, list[float]] = {}
        for r, w in zip(rows, weights, strict=True):
            if r["dataset"] == domain and r["age"] is not None:
                cells.setdefault(normalise_attribute("age", r["age"]), []).append(w)
        largest = max(sum(v) for a, v in cells.items() if a not in ("a1", "a4"))
        largest_size = max(len(v) for a, v in cells.items() if a not in ("a1", "a4"))
        for planted_age in ("a1", "a4"):
            drawn, size = sum(cells[planted_age]), len(cells[planted_age])
            if 5 * size >= largest_size:
                assert drawn == pytest.approx(largest)
            else:
                assert drawn == pytest.approx(5 * size / largest_size * largest)


def test_visibility_check_names_the_cells_too_small_to_see():
    from fair_trl.data.synthetic import SyntheticConfig
    from fair_trl.demo.benchmark import MIN_VISIBLE_ROWS, check_visible, planted_cells

    assert MIN_VISIBLE_ROWS == 43  # 1.96 * 0.5 / sqrt(n) <= 0.15
    rows = hand_made({("ham10000", 20, "F"): 30, ("ham10000", 20, None): 12, ("ham10000", 80, "F"): 43,
                      ("ham10000", None, None): 50, ("isic2020", 80, "F"): 20, ("isic2020", 80, "M"): 200})  # fmt: skip
    config = SyntheticConfig(disadvantaged=("ham10000:age=a1", "ham10000:age=a4", "isic2020:sex=F|age=a4"))
    assert planted_cells(rows, config) == {"ham10000/age=a1": 42, "ham10000/age=a4": 43, "isic2020/sex=F|age=a4": 20}
    with pytest.raises(ValueError) as refused:
        check_visible(rows, config)
    assert "isic2020/sex=F|age=a4 20 rows, ham10000/age=a1 42 rows" in str(refused.value)
    assert "ham10000/age=a4" not in str(refused.value) and "--eval_rows" in str(refused.value)
    assert check_visible(rows, config, min_rows=20)["ham10000/age=a1"] == 42
    with pytest.raises(ValueError, match="nothing is planted"):
        check_visible(rows, SyntheticConfig(disadvantaged=("chexpert:age=a1",), domains=("ham10000", "isic2020")))


def test_demo_refuses_a_planting_it_cannot_see_before_training(tmp_path, capsys):
    small = ["--pretrain_rows", "200", "--rl_rows", "200", "--eval_rows", "1000", "--output_dir", str(tmp_path)]
    with pytest.raises(SystemExit):
        main(["demo", *small, "-b", "disadvantaged=[covid_blues:age=a1]"])
    error = capsys.readouterr().err
    assert "planting not visible" in error and "covid_blues/age=a1" in error
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_warm_start_is_cached_by_everything_it_depends_on(tmp_path):
    settings = ExperimentSettings(sft_steps=2, pretrain_rows=60, rl_rows=30, eval_rows=40)
    first = run_warm_start(0, settings, tmp_path)
    again = run_warm_start(0, settings, tmp_path)
    assert not first["cached"] and again["cached"] and again["path"] == first["path"]
    assert again["evaluation"] == first["evaluation"]
    for changed in ({"sft_steps": 3}, {"benchmark": ["cue_strength=0.1"]}, {"pretrain_disadvantaged_keep": 0.3}):
        other = ExperimentSettings(**{**settings.to_dict(), **changed})
        assert other.warm_start_key() != settings.warm_start_key(), changed
    longer = ExperimentSettings(**{**settings.to_dict(), "steps": 7})
    assert longer.warm_start_key() == settings.warm_start_key()
    # A finished RL run is kept per method and seed, keyed by the RL settings too.
    assert longer.run_path(tmp_path, "grpo", 0) != settings.run_path(tmp_path, "grpo", 0)
    assert settings.run_path(tmp_path, "grpo", 0) != settings.run_path(tmp_path, "oracle_oversampling", 0)
    assert settings.run_path(tmp_path, "grpo", 0).parent.parent == tmp_path / settings.warm_start_key()


def test_methods_come_from_the_registry():
    from fair_trl.advantages import REGISTRY

    assert {m.estimator for m in METHODS.values()} <= set(REGISTRY)
    assert ExperimentSettings().methods == ["grpo", "fair_grpo", "fair_grpo_nd", "oracle_oversampling"]
    assert ExperimentSettings().seeds >= 5


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


def fake_checkpoint(step, delta_f1, f1, pp=None, planted=0.5, other=0.9):
    """A checkpoint with the given ΔF1, F1 and PP (default: PP = ΔF1) for both attributes; group a1 and the
    planted cells answer exactly at `planted`, the rest at `other`."""
    attribute = {
        "acc": 0.8, "f1": f1, "EOD": 0.1, "PP": delta_f1 if pp is None else pp, "FPR_diff": 0.0, "delta_acc": 0.0,
        "delta_f1": delta_f1,
        "sigma_acc": 0.0, "sigma_f1": 0.0, "acc_es": 0.8, "f1_es": f1,
        "group_f1": {"a1": f1 - delta_f1, "a2": f1}, "per_group_f1": {"ham10000": {"a1": f1 - delta_f1, "a2": f1}},
        "group_exact": {"a1": planted, "a2": other},
    }  # fmt: skip
    return {"step": step, "age": attribute, "sex": attribute, "exact": 0.8, "distinct_answers": 12,
            "planted_exact": {"planted": planted, "other": other}}  # fmt: skip


def fake_run(method, seed, delta_f1, f1, start_f1=0.40, pp=None, planted=0.5, other=0.9):
    """A run from a warm start of F1 `start_f1` (ΔF1 0.15, exact 0.5 planted and 0.9 other) to a final
    checkpoint with the given ΔF1, F1, PP and exact-match accuracies."""
    checkpoints = [fake_checkpoint(0, 0.15, start_f1), fake_checkpoint(10, delta_f1, f1, pp, planted, other)]
    return {"method": method, "seed": seed, "checkpoints": checkpoints, "train_reward": {}, "group_weights": []}


def test_verdict_names_a_method_that_reaches_the_aim_and_a_working_control():
    settings = ExperimentSettings(methods=("grpo", "fair_grpo", "oracle_oversampling"), seeds=4, n_bootstrap=100)
    runs = []
    for seed, e in enumerate([0.0, 0.01, -0.01, 0.005]):
        runs.append(fake_run("grpo", seed, 0.20 + e, 0.50))
        runs.append(fake_run("fair_grpo", seed, 0.12 + e * 0.5, 0.495))  # -40% ΔF1, -0.005 F1
        runs.append(fake_run("oracle_oversampling", seed, 0.15 + e * 0.2, 0.45))
    results = analyse(runs, settings)
    assert results["gate"]["valid"] is True and results["gate"]["text"].startswith("instrument valid")
    assert results["verdict"]["methods_reaching_aim"] == ["fair_grpo"]
    assert results["verdict"]["words"] == {"fair_grpo": {"delta_f1": "reduces", "pp": "reduces"}}
    text = results["verdict"]["text"]
    assert "FairGRPO (4 seeds): ΔF1 -40%" in text and "PP -40%" in text and "reaches the aim" in text
    assert "oversampling" not in text  # the control checks the instrument; it is not judged
    assert results["methods"]["fair_grpo"]["vs_grpo"]["delta_f1_relative"]["mean"] == pytest.approx(-0.4, abs=0.01)
    diff = results["per_group_difference"]["fair_grpo"]["ham10000/age=a1"]
    assert diff["mean"] == pytest.approx((0.495 - 0.12) - (0.5 - 0.2), abs=0.01)


def test_verdict_refuses_a_reduction_bought_with_f1_or_within_noise_and_says_when_it_widens():
    # Through `analyse`: the words per endpoint, the F1 condition and the invalid instrument's caveat.
    settings = ExperimentSettings(
        methods=("grpo", "fair_grpo", "fair_grpo_floor", "fair_grpo_nd", "oracle_oversampling"), seeds=3
    )
    runs = []
    for seed, e in enumerate([0.0, 0.1, -0.1]):
        runs.append(fake_run("grpo", seed, 0.20 + e, 0.50))
        runs.append(fake_run("fair_grpo", seed, 0.10 + e, 0.45))  # -50% ΔF1 and PP every seed, but 0.05 lower F1
        runs.append(fake_run("fair_grpo_floor", seed, 0.10 - e, 0.50))  # -50% on average, interval spans 0
        runs.append(fake_run("fair_grpo_nd", seed, 0.30 + e, 0.50, pp=0.20 + e))  # ΔF1 +0.1 every seed, PP as GRPO
        runs.append(fake_run("oracle_oversampling", seed, 0.20 + 2 * e, 0.50))  # no cut: the gate fails
    results = analyse(runs, settings)
    assert results["verdict"]["methods_reaching_aim"] == []
    assert results["gate"]["valid"] is False and results["gate"]["text"].startswith("instrument invalid")
    text = results["verdict"]["text"]
    assert "not valid at these settings" in text and "Aim not reached by any method" in text
    assert "F1 drops by more than 0.01" in text
    assert "FairGRPO-ND (3 seeds): ΔF1 +50%" in text
    # A -50% mean whose interval spans 0 and reaches past ±25% is inconclusive, never a null result.
    assert results["verdict"]["words"] == {
        "fair_grpo": {"delta_f1": "reduces", "pp": "reduces"},
        "fair_grpo_floor": {"delta_f1": "inconclusive", "pp": "inconclusive"},
        "fair_grpo_nd": {"delta_f1": "increases", "pp": "no effect"},
    }
    assert "null result" not in text and "paper" not in text


def test_secondary_endpoints_pair_the_planted_gain_and_the_majoritys_cost_with_grpo():
    settings = ExperimentSettings(methods=("grpo", "fair_grpo"), seeds=3, n_bootstrap=0)
    runs = []
    for seed, e in enumerate([0.0, 0.01, -0.01]):
        runs.append(fake_run("grpo", seed, 0.2, 0.5, planted=0.60 + e, other=0.92))
        # Planted cells gain 0.1 more than under GRPO; the other rows lose 0.02 against GRPO.
        runs.append(fake_run("fair_grpo", seed, 0.2, 0.5, planted=0.70 + e, other=0.90))
    results = analyse(runs, settings)
    grpo, fair = results["methods"]["grpo"], results["methods"]["fair_grpo"]
    assert grpo["vs_warm_start"]["planted_exact"]["mean"] == pytest.approx(0.10)
    assert fair["vs_warm_start"]["planted_exact"]["mean"] == pytest.approx(0.20)
    vs = fair["vs_grpo"]
    assert vs["planted_exact"]["mean"] == pytest.approx(0.10) and vs["planted_exact"]["ci"][0] > 0
    assert vs["other_exact"]["mean"] == pytest.approx(-0.02)
    # The worst group is a1 (the planted one) in both: its gap to GRPO is the planted gain's.
    assert vs["worst_group_exact"]["mean"] == pytest.approx(0.10)
    row = [line for line in summary_markdown(results).splitlines() if line.startswith("| FairGRPO |")][-1]
    assert "+0.200 [" in row and "-0.020 [" in row
    assert "## Secondary endpoints" in markdown(results)


def test_plantings_table_gives_each_published_plantings_gate_and_fairgrpos_words(tmp_path):
    def publish_fake(folder, benchmark, control_cut):
        settings = ExperimentSettings(
            methods=("grpo", "fair_grpo", "oracle_oversampling"), seeds=3, benchmark=[*DEMO_BENCHMARK, *benchmark]
        )
        runs = []
        for seed, e in enumerate([0.0, 0.01, -0.01]):
            runs.append(fake_run("grpo", seed, 0.20 + e, 0.50))
            runs.append(fake_run("fair_grpo", seed, 0.10 + e, 0.50))  # -50% ΔF1 and PP every seed
            runs.append(fake_run("oracle_oversampling", seed, 0.20 - control_cut + 3 * e, 0.50))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(analyse(runs, settings)))

    publish_fake(tmp_path, [], control_cut=0.05)
    publish_fake(tmp_path / "planting-a4", ["disadvantaged=[age=a4|sex=F]"], control_cut=0.0)
    (tmp_path / "planting-unfinished").mkdir()  # no results.json: not a published planting
    rows = [line for line in plantings_markdown(tmp_path).splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 2
    default, a4 = rows
    assert default.startswith(f"| default, `{DEMO_BENCHMARK[0]}`") and "| valid |" in default
    assert a4.startswith("| `disadvantaged=[age=a4\\|sex=F]`") and "| invalid |" in a4
    assert a4.count(" | ") == default.count(" | ")  # the escaped `|` stays inside its cell
    assert "ΔF1 -50% [-50%, -50%] reduces; PP -50% [-50%, -50%] reduces (3 seeds)" in default
    assert default.endswith("| not run | not run |")  # the guided methods did not run
    assert "| valid | fewer seeds |" in default  # 3 seeds: no gate at the quick demo's 5


def test_plantings_table_gives_the_gate_at_the_quick_demos_seeds_and_refuses_other_settings(tmp_path):
    def results_for(cuts, learning_rate=None, benchmark=()):
        settings = ExperimentSettings(
            methods=("grpo", "oracle_oversampling"), seeds=len(cuts), n_bootstrap=0,
            benchmark=[*DEMO_BENCHMARK, *benchmark], learning_rate=learning_rate or ExperimentSettings().learning_rate,
        )  # fmt: skip
        runs = []
        for seed, cut in enumerate(cuts):
            runs.append(fake_run("grpo", seed, 0.20, 0.50))
            runs.append(fake_run("oracle_oversampling", seed, 0.20 - cut, 0.50))
        return analyse(runs, settings)

    def write(folder, results):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(results))

    # Over 7 seeds the control cuts ΔF1 clearly; its first 5 seeds alone do not (one of them goes the other way).
    write(tmp_path, results_for([0.05, 0.06, -0.04, 0.05, 0.06, 0.05, 0.06]))
    row = [line for line in plantings_markdown(tmp_path).splitlines() if line.startswith("| default")][0]
    assert "| valid | invalid (-0.036 [" in row
    # A planting left from other settings is refused, naming it and the difference, and publish copies nothing.
    write(tmp_path / "planting-old", results_for([0.05] * 5, learning_rate=0.123, benchmark=["disadvantaged=[age=a4]"]))
    with pytest.raises(ValueError, match=r"planting-old ran at other settings.*learning_rate 0.123 there"):
        plantings_markdown(tmp_path)
    (tmp_path / "planting-old" / "results.json").unlink()
    source = tmp_path / "fresh"
    write(source, results_for([0.05] * 5, learning_rate=0.123))
    for name in ("report.md", "summary.md", *PLOTS):
        (source / name).write_text("x")
    with pytest.raises(ValueError, match="learning_rate 0.123 there"):
        publish(source, tmp_path / "planting-new")
    assert not (tmp_path / "planting-new").exists()


def test_gate_is_invalid_when_grpo_loses_f1_against_the_warm_start():
    settings = ExperimentSettings(methods=("grpo", "oracle_oversampling"), seeds=3, n_bootstrap=100)
    runs = []
    for seed, e in enumerate([0.0, 0.01, -0.01]):
        # The control cuts ΔF1 on every seed, but RL costs GRPO 0.1 F1 against the warm start it began from.
        runs.append(fake_run("grpo", seed, 0.20 + e, 0.50 + e, start_f1=0.60))
        runs.append(fake_run("oracle_oversampling", seed, 0.10 + e, 0.50, start_f1=0.60))
    results = analyse(runs, settings)
    change = results["methods"]["grpo"]["vs_warm_start"]["f1"]
    assert change["mean"] == pytest.approx(-0.1) and change["ci"][1] < 0
    assert results["gate"]["valid"] is False and results["gate"]["grpo_f1_change"] == change
    text = results["gate"]["text"]
    assert text.startswith("instrument invalid") and "GRPO's F1 changes by -0.100" in text and "loss on average" in text
    assert "does not exclude 0" not in text  # the control's part passed; only the second part failed
    # The same runs with GRPO gaining F1 instead: valid.
    for run in runs:
        run["checkpoints"][0] = fake_checkpoint(0, 0.15, 0.45)
    again = analyse(runs, settings)
    assert again["gate"]["valid"] is True and again["methods"]["grpo"]["vs_warm_start"]["f1"]["mean"] > 0
    text = again["gate"]["text"]
    assert text.startswith("instrument valid") and "GRPO's F1 changes by +0.050" in text


def test_gate_without_a_control_is_not_checked():
    runs = [fake_run("grpo", s, 0.2, 0.5) for s in range(2)] + [fake_run("fair_grpo", s, 0.1, 0.5) for s in range(2)]
    results = analyse(runs, ExperimentSettings(methods=("grpo", "fair_grpo"), seeds=2))
    assert results["gate"]["valid"] is None and results["gate"]["text"].startswith("instrument not checked")


def interval(low, high, mean=None):
    return {"mean": (low + high) / 2 if mean is None else mean, "ci": [low, high]}


@pytest.mark.parametrize(
    ("ci", "relative", "word"),
    [
        ((-0.05, -0.001), (-0.5, -0.01), "reduces"),
        ((-0.01, -0.001), (-0.1, -0.01), "reduces"),  # a small cut is still a cut
        ((0.001, 0.05), (0.01, 0.5), "increases"),
        ((-0.05, 0.0), (-0.2, 0.0), "no effect"),  # touching 0 does not exclude it
        ((-0.02, 0.02), (-0.2, 0.2), "no effect"),
        ((-0.02, 0.02), (-0.25, 0.2), "inconclusive"),  # an effect as large as the aim is not ruled out
        ((-0.02, 0.02), (-0.2, 0.25), "inconclusive"),
        ((-0.06, 0.02), (-0.6, 0.2), "inconclusive"),
        ((math.nan, math.nan), (math.nan, math.nan), "inconclusive"),  # one seed: no interval
    ],
)
def test_each_endpoints_word_follows_its_intervals(ci, relative, word):
    assert effect_word(interval(*ci), interval(*relative), 0.25) == word


def aim_entry(rel_delta=-0.25, rel_pp=-0.25, high_delta=-0.001, high_pp=-0.001, f1=-0.01):
    """A method's differences to GRPO, at the aim's boundary unless told otherwise."""
    return {
        "vs_grpo": {
            "delta_f1": interval(-0.1, high_delta, -0.05), "pp": interval(-0.1, high_pp, -0.05),
            "delta_f1_relative": interval(-0.5, 0.0, rel_delta), "pp_relative": interval(-0.5, 0.0, rel_pp),
            "f1": interval(-0.05, 0.03, f1),
        }
    }  # fmt: skip


@pytest.mark.parametrize(
    ("changed", "meets"),
    [
        ({}, True),  # exactly 25% lower on both, F1 exactly 0.01 lower
        ({"rel_delta": -0.249}, False),
        ({"rel_pp": -0.249}, False),
        ({"high_delta": 0.0}, False),  # the interval must exclude 0
        ({"high_pp": 0.01}, False),
        ({"f1": -0.0101}, False),
    ],
)
def test_the_aim_needs_both_cuts_with_intervals_below_zero_and_at_most_a_small_f1_drop(changed, meets):
    assert meets_aim(aim_entry(**changed)) is meets


def test_noise_check_measures_what_pairing_removes_and_stays_out_of_the_verdict():
    settings = ExperimentSettings(methods=("grpo", *NOISE_METHODS), seeds=4, n_bootstrap=100)
    warm = [0.0, 0.1, -0.1, 0.05]  # what each seed's warm start adds to every method's ΔF1
    chance = [0.01, -0.01, 0.0, 0.004]
    runs = []
    for seed, (w, c) in enumerate(zip(warm, chance, strict=True)):
        runs.append(fake_run("grpo", seed, 0.2 + w, 0.5 + w))
        runs.append(fake_run("grpo_resampled", seed, 0.2 + w + c, 0.5 + w))
        runs.append(fake_run("grpo_reordered", seed, 0.25 + w, 0.5 + w))  # 0.05 above GRPO on every seed
    results = analyse(runs, settings)
    same = results["noise_check"]["grpo_resampled"]["delta_f1"]
    assert same["paired_sd"] == pytest.approx(np.std(chance, ddof=1))
    unpaired = [(warm[(i + 1) % 4] + chance[(i + 1) % 4]) - warm[i] for i in range(4)]
    assert same["unpaired_sd"] == pytest.approx(np.std(unpaired, ddof=1))
    assert same["ratio"] == pytest.approx(same["paired_sd"] / same["unpaired_sd"]) and same["ratio"] < 0.2
    assert same["paired"]["mean"] == pytest.approx(np.mean(chance)) and same["contains_zero"] is True
    shifted = results["noise_check"]["grpo_reordered"]
    assert (
        shifted["delta_f1"]["paired"]["mean"] == pytest.approx(0.05) and shifted["delta_f1"]["contains_zero"] is False
    )
    assert shifted["f1"]["paired_sd"] == pytest.approx(0, abs=1e-12) and shifted["f1"]["contains_zero"] is True
    assert set(shifted) == {"label", "seeds", "delta_f1", "pp", "f1"} and shifted["seeds"] == 4
    # GRPO against itself is not a method to judge, and there is no control to gate on.
    assert results["verdict"]["words"] == {} and "nothing to judge" in results["verdict"]["text"]
    assert results["gate"]["valid"] is None
    report = markdown(results)
    assert "## Noise check" in report and "Pairing helps where the paired sd is below the unpaired one" in report
    assert "| GRPO, other sampling seed | ΔF1 | 4 |" in report


def test_a_method_with_fewer_seeds_is_paired_with_grpos_first_seeds():
    settings = ExperimentSettings(methods=("grpo", "fair_grpo", "fair_grpo_floor"), seeds=4, secondary_seeds=2)
    assert [settings.seeds_for(m) for m in settings.methods] == [4, 4, 2]
    runs = [fake_run("grpo", s, d, 0.5) for s, d in enumerate([0.2, 0.3, 0.9, 0.9])]
    runs += [fake_run("fair_grpo", s, 0.2, 0.5) for s in range(4)]
    runs += [fake_run("fair_grpo_floor", s, d, 0.5) for s, d in enumerate([0.1, 0.2])]
    results = analyse(runs, settings)
    vs = results["methods"]["fair_grpo_floor"]["vs_grpo"]
    assert vs["seeds"] == 2 and vs["delta_f1"]["values"] == pytest.approx([-0.1, -0.1])
    assert vs["delta_f1_relative"]["mean"] == pytest.approx(-0.1 / 0.25)  # GRPO's mean on the shared seeds
    assert len(results["per_group_difference"]["fair_grpo_floor"]["ham10000/age=a1"]["values"]) == 2
    assert results["methods"]["fair_grpo"]["vs_grpo"]["seeds"] == 4
    assert "4 seeds (2 for variants and baselines, paired with GRPO's first 2)" in markdown(results)
    with pytest.raises(ValueError, match=r"secondary_seeds must be in \[1, seeds=4\], got 5"):
        ExperimentSettings(seeds=4, secondary_seeds=5)


# Small data for command-line tests that stop before training.
SMALL = ["--pretrain_rows", "200", "--rl_rows", "200", "--eval_rows", "240", "--min_cell_rows", "0"]


@pytest.fixture
def chosen(monkeypatch):
    """The settings `fair-trl demo` would run, instead of running them."""
    calls = []
    monkeypatch.setattr("fair_trl.demo.command.run_demo", lambda settings, *_, **__: calls.append(settings))
    return calls


def test_noise_check_runs_grpo_against_itself_and_refuses_other_choices_of_methods(chosen, capsys):
    assert main(["demo", "--noise_check", *SMALL]) == 0
    assert chosen[-1].methods == ["grpo", "grpo_resampled", "grpo_reordered"]
    for extra in (["--methods", "grpo", "fair_grpo"], ["--baselines"], ["--variants"], ["--full"]):
        with pytest.raises(SystemExit):
            main(["demo", "--noise_check", *extra, *SMALL])
        error = capsys.readouterr().err
        assert "--noise_check runs exactly ['grpo', 'grpo_resampled', 'grpo_reordered']" in error
        assert f"drop {extra[0]}" in error
    with pytest.raises(SystemExit):
        main(["demo", "--noise_check", "--trial", *SMALL])
    assert "--trial runs exactly ['grpo', 'oracle_oversampling']; drop --noise_check" in capsys.readouterr().err
    assert len(chosen) == 1


def test_full_is_the_reference_study_at_the_quick_demos_steps(chosen):
    quick = ExperimentSettings()
    assert main(["demo", "--full", *SMALL]) == 0
    full = chosen[-1]
    assert (full.steps, full.eval_every) == (quick.steps, quick.eval_every)  # the validated instrument setting
    assert set(full.methods) == {name for name, m in METHODS.items() if m.role != "noise"}
    for method in full.methods:
        wanted = 20 if METHODS[method].role in ("main", "control") else 10
        assert full.seeds_for(method) >= wanted, method
    assert main(["demo", "--full", "--seeds", "8", *SMALL]) == 0
    assert chosen[-1].seeds == 8 and chosen[-1].secondary_seeds == 8


def study(settings, **differences):
    """A results.json of the given settings, with {method: (ΔF1 difference, PP difference)} to GRPO."""
    methods = {"grpo": {"label": "GRPO", "role": "main"}}
    for method, (delta_f1, pp) in differences.items():
        methods[method] = {"label": METHODS[method].label, "role": METHODS[method].role,
                           "vs_grpo": {"delta_f1": delta_f1, "pp": pp}}  # fmt: skip
    return {"settings": settings.to_dict(), "methods": methods}


def write_study(path, results):
    path.write_text(json.dumps(results))
    return path


def test_reference_check_says_whether_each_interval_contains_the_studys_estimate(tmp_path):
    reference = study(
        ExperimentSettings(seeds=20, secondary_seeds=10, workers=2),
        fair_grpo=(interval(-0.05, -0.01, -0.03), interval(-0.04, 0.0, -0.02)),
        fair_grpo_nd=(interval(-0.01, 0.03, 0.01), interval(-0.02, 0.02, 0.0)),
        rloo=(interval(-0.01, 0.01), interval(-0.01, 0.01)),  # not in the quick run: no line
    )
    settings = reference["settings"]
    del settings["min_cell_rows"]  # a study from before a setting existed ran at its default
    path = write_study(tmp_path / "results.json", reference)
    quick = study(
        ExperimentSettings(methods=["grpo", "fair_grpo", "fair_grpo_nd", "oracle_oversampling"], workers=1,
                           n_bootstrap=100),
        fair_grpo=(interval(-0.06, 0.0), interval(-0.05, 0.01)),  # both contain the study's
        fair_grpo_nd=(interval(0.02, 0.08), interval(-0.01, 0.01)),  # ΔF1 excludes the study's +0.01
        oracle_oversampling=(interval(-0.1, 0.0), interval(-0.1, 0.0)),  # not in the study: no line
    )  # fmt: skip
    check = reference_check(quick, path)
    assert check["checked"] is True and set(check["methods"]) == {"fair_grpo", "fair_grpo_nd"}
    assert check["methods"]["fair_grpo"]["delta_f1"]["consistent"] is True
    assert check["methods"]["fair_grpo_nd"]["delta_f1"]["consistent"] is False
    assert check["methods"]["fair_grpo_nd"]["pp"]["consistent"] is True
    head, first, second = check["text"].splitlines()
    assert str(path) in head
    assert first.startswith("- FairGRPO: ΔF1 study -0.030 in this run's [-0.060, +0.000]")
    assert first.endswith(
        "consistent with the reference study: this machine reproduces the study's effect within its noise."
    )
    assert second.startswith("- FairGRPO-ND: ΔF1 study +0.010 outside this run's [+0.020, +0.080]")
    assert "not consistent with the reference study: either this machine's numerics differ" in second
    assert (
        "wrong about its ΔF1 difference (+0.010 there, [+0.020, +0.080] here)" in second
        and "PP difference" not in second
    )


def test_reference_check_is_not_made_when_settings_differ_or_no_study_exists(tmp_path):
    path = write_study(tmp_path / "results.json", study(ExperimentSettings(), fair_grpo=(interval(-0.1, 0.1),) * 2))
    quick = study(ExperimentSettings(steps=50, seeds=2), fair_grpo=(interval(-0.1, 0.1),) * 2)
    check = reference_check(quick, path)
    assert check["checked"] is False and check["methods"] == {}
    assert check["text"] == (
        f"No reference check: this run's settings differ from the reference study's ({path}) in "
        "steps (50 here, 100 there)."
    )
    missing = reference_check(quick, tmp_path / "absent.json")
    assert missing["checked"] is False and missing["text"].startswith("No reference check: no reference study at")
    # The report ends with the check's line.
    runs = [fake_run(m, s, 0.2, 0.5) for s in range(2) for m in ("grpo", "fair_grpo")]
    results = analyse(runs, ExperimentSettings(methods=("grpo", "fair_grpo"), seeds=2))
    results["reference_check"] = reference_check(results, tmp_path / "absent.json")
    assert markdown(results).rstrip().splitlines()[-1] == results["reference_check"]["text"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "ppo"], "unknown method(s) ['ppo']"),
        (["--methods", "fair_grpo"], "must include 'grpo'"),
        (["--seeds", "0"], "seeds must be >= 1"),
        (["-b", "colour=red"], "unknown benchmark parameter 'colour'"),
        (["-b", "shift_prob=2"], "shift_prob=2"),
        (["-b", "profile"], "is not KEY=VALUE"),
        (["--pretrain_disadvantaged_keep", "1.5"], "pretrain_disadvantaged_keep must be in [0, 1]"),
    ],
)
def test_demo_refuses_bad_settings(args, message, capsys):
    with pytest.raises(SystemExit):
        main(["demo", *args])
    assert message in capsys.readouterr().err


def test_benchmark_overrides_reach_the_data():
    settings = ExperimentSettings(benchmark=["profile=noisy_shift", "disadvantaged=[age=a4]"])
    assert settings.config().profile == "noisy_shift" and settings.config().disadvantaged == ("age=a4",)
    assert settings.config().num_rows == settings.pretrain_rows + settings.rl_rows + settings.eval_rows


def test_no_demo_module_imports_one_that_imports_it_back():
    import ast

    package = Path(__file__).resolve().parents[1] / "fair_trl" / "demo"
    graph = {}
    for path in package.glob("*.py"):
        # Imports inside functions count too: a lazy import still ties the modules together.
        graph[path.stem] = {
            node.module.rsplit(".", 1)[1]
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fair_trl.demo.")
        }

    def reachable(start):
        seen, todo = set(), list(graph[start])
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo += graph.get(name, ())
        return seen

    assert {"benchmark", "warmstart", "evaluation", "experiment", "report", "plots", "run"} <= set(graph)
    assert [name for name in graph if name in reachable(name)] == []


def test_a_users_benchmark_override_follows_the_demos_and_wins():
    from transformers import HfArgumentParser

    parser = HfArgumentParser(ExperimentSettings)
    (settings,) = parser.parse_args_into_dataclasses(["-b", "disadvantaged=[age=a4]"])
    assert settings.benchmark == [*DEMO_BENCHMARK, "disadvantaged=[age=a4]"]
    config = settings.config()
    assert config.disadvantaged == ("age=a4",) and config.min_domain_fraction == 0.1
    (again,) = parser.parse_args_into_dataclasses([])
    assert again.benchmark == list(DEMO_BENCHMARK)  # the default list is not extended in place


class _LengthModel:
    """Answers every prompt with its own length in tokens (digits), so an answer tells which row it belongs to."""

    training = False

    def __init__(self, tokenizer):
        self.digits = {d: tokenizer.convert_tokens_to_ids(d) for d in "0123456789"}

    def eval(self):
        pass

    def train(self, mode=True):
        pass

    def generate(self, input_ids, attention_mask, max_new_tokens, **_):
        import torch

        answers = [[self.digits[d] for d in str(int(n))] for n in attention_mask.sum(dim=1)]
        width = max(map(len, answers))
        new = torch.tensor([a + [self.digits["0"]] * (width - len(a)) for a in answers])
        return torch.cat([input_ids, new], dim=1)


def test_evaluation_batches_by_prompt_length_and_answers_in_row_order():
    from fair_trl.demo.evaluation import Evaluator
    from fair_trl.models import build_tiny_vlm

    rows = list(ExperimentSettings(pretrain_rows=40, rl_rows=40, eval_rows=60).data().eval)
    _, processor = build_tiny_vlm()
    evaluator = Evaluator(processor, rows, [None] * len(rows), max_new_tokens=4, batch_size=7)
    lengths = [int(batch["attention_mask"].sum(dim=1).max()) for batch in evaluator.batches]
    assert lengths == sorted(lengths) and len(set(lengths)) > 1  # several prompt texts, batched by length
    padding = sum(int((batch["attention_mask"] == 0).sum()) for batch in evaluator.batches)
    assert padding < sum(lengths) * 7 / 4  # little left padding: rows of one length batch together
    expected = []
    for row in rows:
        text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        single = processor(text=[text], images=[[row["image"]]], return_tensors="pt")
        expected.append(str(single["input_ids"].shape[1]))
    answers = [a.replace(" ", "").rstrip("0") for a in evaluator.answers(_LengthModel(processor.tokenizer))]
    assert answers == [e.rstrip("0") for e in expected]


def test_warm_start_data_is_the_chat_template_rendered_once():
    from trl.data_utils import apply_chat_template, prepare_multimodal_messages

    from fair_trl.demo.warmstart import add_completions, templated
    from fair_trl.models import build_tiny_vlm

    pretrain = ExperimentSettings(pretrain_rows=40, rl_rows=40, eval_rows=60).data().pretrain
    _, processor = build_tiny_vlm()
    rendered = templated(pretrain, processor)
    # What TRL's collator renders from the messages at every step, row by row.
    for row, ours in zip(add_completions(pretrain), rendered, strict=True):
        example = {
            "prompt": prepare_multimodal_messages(row["prompt"], images=[row["image"]]),
            "completion": prepare_multimodal_messages(row["completion"]),
        }
        assert apply_chat_template(example, processor) == {k: ours[k] for k in ("prompt", "completion")}
        assert ours["completion"].startswith("\\boxed{" + row["solution"] + "}")
    assert rendered["image"][0].tobytes() == pretrain["image"][0].tobytes()


def test_demo_help_lists_every_setting(capsys):
    with pytest.raises(SystemExit) as done:
        main(["demo", "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert "--min_cell_rows" in shown and "95% interval" in shown and "--eval_rows" in shown


def test_gate_power_is_how_often_a_quick_run_would_see_the_controls_cut(tmp_path):
    from fair_trl.demo.instrument import gate_power

    def with_differences(values):
        control = {"vs_grpo": {"delta_f1": {"values": list(values)}}, "seeds": list(range(len(values)))}
        return {"methods": {"grpo": {}, "oracle_oversampling": control}}

    rng = np.random.default_rng(0)
    observed = rng.normal(-0.05, 0.05, 20)
    power = gate_power(with_differences(observed))
    mean, sd = observed.mean(), observed.std(ddof=1)
    # Simulated 5-seed runs drawn from that mean and sd: the share whose t interval lies below 0.
    runs = rng.normal(mean, sd, (20000, 5))
    highs = runs.mean(axis=1) + 2.7764451 * runs.std(axis=1, ddof=1) / math.sqrt(5)
    assert power["chance"] == pytest.approx(float((highs < 0).mean()), abs=0.02)
    assert 0.2 < power["chance"] < 0.8  # an effect the size of its noise: a quick gate is a coin flip
    needed = power["seeds_for_target"]
    assert gate_power(with_differences(observed), seeds=needed)["chance"] >= 0.8
    assert gate_power(with_differences(observed), seeds=needed - 1)["chance"] < 0.8
    # A cut twice as large relative to its noise is seen far more often; none at all, almost never.
    assert gate_power(with_differences(observed - 0.05))["chance"] > 0.9
    assert gate_power(with_differences(observed - mean))["chance"] < 0.05
    assert gate_power(with_differences(observed[:2])) is None  # two seeds give no sd to speak of
    # The reference check tells a quick run how often the study expects its gate to see the cut.
    reference = study(ExperimentSettings(seeds=20), fair_grpo=(interval(-0.05, -0.01), interval(-0.05, -0.01)))
    reference["methods"]["oracle_oversampling"] = {
        **with_differences(observed)["methods"]["oracle_oversampling"], "vs_grpo": {
            "delta_f1": {"values": list(observed), **interval(-0.07, -0.03)}, "pp": interval(-0.1, 0.0)}
    }  # fmt: skip
    path = write_study(tmp_path / "results.json", reference)
    quick = study(ExperimentSettings(), fair_grpo=(interval(-0.06, 0.0), interval(-0.06, 0.0)))
    last = reference_check(quick, path)["text"].splitlines()[-1]
    assert last.startswith(f"- The gate: the reference study's control gives a 5-seed run a {power['chance']:.0%}")
    assert f"{needed} seeds would see it 80% of the time" in last


def test_reference_check_does_not_compare_controls_that_drew_by_different_rules(tmp_path):
    control = (interval(-0.07, -0.03), interval(-0.1, 0.0))
    fair = (interval(-0.05, -0.01),) * 2
    reference = study(ExperimentSettings(seeds=20), fair_grpo=fair, oracle_oversampling=control)
    reference["control_rule"] = "an earlier rule"
    path = write_study(tmp_path / "results.json", reference)
    quick = study(ExperimentSettings(), fair_grpo=(interval(-0.06, 0.0),) * 2, oracle_oversampling=control)
    quick["control_rule"] = "today's rule"
    check = reference_check(quick, path)
    lines = check["text"].splitlines()
    assert lines[-1] == (
        "- GRPO + oracle oversampling: not checked: the study's control drew by another rule ('an earlier rule')."
    )
    assert check["methods"]["oracle_oversampling"] == {} and check["methods"]["fair_grpo"]["delta_f1"]["consistent"]
    assert not any(line.startswith("- The gate:") for line in lines)  # the study's power is its own control's
    # Nor may a planting beside the study have run another control.
    from fair_trl.demo.plantings import check_same_settings

    same = {"settings": ExperimentSettings().to_dict(), "control_rule": "an earlier rule"}
    check_same_settings({tmp_path: same, tmp_path / "planting-x": dict(same)}, tmp_path)
    other = {**same, "control_rule": "a later rule"}
    with pytest.raises(ValueError, match="planting-x ran at other settings.*the control's rule 'a later rule' there"):
        check_same_settings({tmp_path: same, tmp_path / "planting-x": other}, tmp_path)
