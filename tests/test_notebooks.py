"""The notebooks in notebooks/ run top to bottom with small budgets, in this environment's Python,
and show what their text says they show."""

import json
import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import install as install_kernelspec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PROBE_MARK = "PROBE:"
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory):
    # A kernelspec of our own, pointing at sys.executable: a "python3" spec elsewhere on
    # JUPYTER_PATH or in the user's home would otherwise win and run another interpreter.
    prefix = tmp_path_factory.mktemp("kernel")
    install_kernelspec(prefix=str(prefix), kernel_name="python3")
    return [str(prefix / "share" / "jupyter" / "kernels")]


def execute(name, kernel_dirs, tmp_path, monkeypatch, probe):
    """Run notebook `name` with an extra last cell `probe` that prints one JSON line; return (nb, probe's dict).

    The kernel works in `tmp_path / "cwd"`, and its temporary files go under `tmp_path / "tmp"`.
    """
    cwd, scratch = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    stored = [cell for cell in nb.cells if cell.cell_type == "code" and cell.get("outputs")]
    assert not stored, f"{name} is stored with outputs: clear them before saving"
    source = f"import json as _json, sys as _sys\nprint({PROBE_MARK!r}, _json.dumps({probe}))"
    nb.cells.append(nbformat.v4.new_code_cell(source))
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs))
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(cwd)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.output_type == "error"]
    assert not errors, errors
    printed = "".join(out.get("text", "") for out in nb.cells[-1].outputs if out.output_type == "stream")
    facts = json.loads(printed.split(PROBE_MARK, 1)[1])
    # The kernel ran in this virtual environment, not in some other Python on the machine.
    assert Path(facts["prefix"]).resolve() == Path(sys.prefix).resolve()
    return nb, facts


def outputs(nb, mime):
    return [out["data"][mime] for cell in nb.cells for out in cell.get("outputs", []) if mime in out.get("data", {})]


def test_quickstart_trains_grpo_and_fair_grpo_and_plots_per_group_curves(kernel_dirs, tmp_path, monkeypatch):
    steps = 4
    monkeypatch.setenv("FAIR_TRL_NOTEBOOK_STEPS", str(steps))
    monkeypatch.setenv("FAIR_TRL_NOTEBOOK_ROWS", "300")
    probe = """{
        "prefix": _sys.prefix,
        "steps": {e: sorted(int(s) for s in r["step"].unique()) for e, (_, r) in runs.items()},
        "completions": {e: len(r) for e, (_, r) in runs.items()},
        "reward_range": {e: [float(r["reward"].min()), float(r["reward"].max())] for e, (_, r) in runs.items()},
        "planted": {e: sorted(r["planted"].unique()) for e, (_, r) in runs.items()},
        "global_step": {e: t.state.global_step for e, (t, _) in runs.items()},
        "estimators": {e: t.args.advantage_estimator for e, (t, _) in runs.items()},
        "grpo_has_fair_estimator": runs["grpo"][0].fair_estimator is not None,
        "weights": fair_trainer.fair_estimator.last_info["weight"],
        "logged_weight_columns": list(history.columns),
    }"""
    nb, facts = execute("01_quickstart.ipynb", kernel_dirs, tmp_path, monkeypatch, probe)

    assert facts["estimators"] == {"grpo": "grpo", "fair_grpo": "fair_grpo"}
    for estimator in ("grpo", "fair_grpo"):
        assert facts["global_step"][estimator] == steps
        # Every step scored 16 prompts x 4 rollouts, all recorded by the notebook's reward function.
        assert facts["steps"][estimator] == list(range(steps))
        assert facts["completions"][estimator] == steps * 64
        low, high = facts["reward_range"][estimator]
        assert 0.0 <= low <= high <= 1.0
        assert {"disadvantaged", "other"} <= set(facts["planted"][estimator])
    assert not facts["grpo_has_fair_estimator"]
    assert facts["weights"] and all(w >= 0 for w in facts["weights"].values())
    assert set(facts["logged_weight_columns"]) >= set(facts["weights"])
    # Sample images, curves by planted status and by age group, the logged FairGRPO factors.
    assert len(outputs(nb, "image/png")) >= 4
    # Nothing lands next to the notebook, and the runs save no checkpoint or other file.
    assert not list((tmp_path / "cwd").iterdir())
    assert not [p for p in (tmp_path / "tmp").glob("fair-trl-quickstart-*/**/*") if p.is_file()]


def test_fairness_audit_finds_the_planted_gap(kernel_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIR_TRL_AUDIT_ROWS", "3000")
    monkeypatch.setenv("FAIR_TRL_AUDIT_BOOTSTRAP", "20")
    probe = """{
        "prefix": _sys.prefix,
        "samples": report["samples"],
        "planted_f1": {g: v["f1"] for g, v in results["planted"]["group_values"].items()},
        "gaps": gaps.to_dict(),
        "ci_keys": sorted(results["age"]["ci"]),
        "cli_attributes": list(saved["attributes"]),
    }"""
    nb, facts = execute("02_fairness_audit.ipynb", kernel_dirs, tmp_path, monkeypatch, probe)

    tables = "\n".join(outputs(nb, "text/markdown"))
    for title in ("Summary (Table 2 style)", "Per dataset and age group", "Per dataset and sex group"):
        assert f"### {title}" in tables
    header = tables.split("### Summary (Table 2 style)")[1].split("\n")[2]
    for metric in ("PP", "EOD", "FPR_diff", "sigma_F1", "delta_F1", "Acc", "F1", "Acc_ES", "F1_ES"):
        assert f"| {metric} |" in header
    for column in ("| TPR |", "| FPR |", "| FDR |", "| sigma_Acc |", "| delta_TPR |"):
        assert column in tables
    assert "| chexpert | a" in tables  # per-group rows, not just headers

    assert 400 < facts["samples"] < 800  # the test split of 3000 rows
    assert {"EOD", "PP", "f1", "f1_es"} <= set(facts["ci_keys"])
    assert facts["cli_attributes"] == ["age", "sex", "planted"]
    written = {p.name for p in (tmp_path / "tmp").glob("fair-trl-audit-*/*")}
    assert written == {"predictions.jsonl", "predictions_even.jsonl", "fairness.json", "fairness.md"}
    assert len(outputs(nb, "image/png")) >= 3

    # The simulated classifier is worse for the disadvantaged patients, and the audit sees it.
    assert facts["planted_f1"]["disadvantaged"] < facts["planted_f1"]["other"]
    # Small groups score lower F1 even under an equally good classifier (classes they lack score 0);
    # measured against that control, the classifier's own share of the gap must still be clear.
    classifier_share = facts["gaps"]["due to the classifier"]
    assert classifier_share["planted: other - disadvantaged"] > 0.1
    assert classifier_share["age: (a2, a3) - (a1, a4)"] > 0.0


def test_audit_and_compare_runs_both_commands_on_the_tiny_vlm_and_shows_the_plots(kernel_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIR_TRL_AUDIT03_ROWS", "300")
    monkeypatch.setenv("FAIR_TRL_AUDIT03_SFT_STEPS", "20")
    monkeypatch.setenv("FAIR_TRL_AUDIT03_BOOTSTRAP", "50")
    probe = """{
        "prefix": _sys.prefix,
        "work": str(WORK),
        "samples": [report_a["samples"], report_b["samples"]],
        "resumed": [resumed_info["resumed"], resumed_info["answered"]],
        "evaluate_agrees": same,
        "verdicts": {a: c["verdict"] for a, c in comparison["attributes"].items()},
        "a_no_valid_label": report_a["no_valid_label"],
    }"""
    nb, facts = execute("03_audit_and_compare.ipynb", kernel_dirs, tmp_path, monkeypatch, probe)

    rows = facts["samples"][0]
    assert 40 < rows < 90 and facts["samples"] == [rows, rows]  # both audits answered the whole test split
    assert facts["resumed"] == [rows, 0]  # the rerun answered nothing again
    assert facts["evaluate_agrees"]
    assert set(facts["verdicts"]) == {"age", "sex"}
    assert all("ΔF1" in v and ("fairer" in v or "no detectable change" in v) for v in facts["verdicts"].values())
    printed = "".join(out.get("text", "") for cell in nb.cells for out in cell.get("outputs", []))
    assert "refused:" in printed and "max_new_tokens: 16 then, 4 now" in printed
    # Two audits x three plots, and the comparison's per-group differences.
    assert len(outputs(nb, "image/png")) == 7
    work = Path(facts["work"])
    for name in ("audit-a", "audit-b"):
        assert {"predictions.jsonl", "fairness.json", "report.md", "group_f1.png"} <= {
            p.name for p in (work / name).iterdir()
        }
    assert (work / "a-vs-b" / "compare.md").read_text().count("ΔF1") == 2
    assert not list((tmp_path / "cwd").iterdir())  # nothing lands next to the notebook


def test_your_own_data_inspects_trains_and_audits_a_generated_csv(kernel_dirs, tmp_path, monkeypatch):
    steps = 3
    monkeypatch.setenv("FAIR_TRL_BYOD_ROWS", "120")
    monkeypatch.setenv("FAIR_TRL_BYOD_STEPS", str(steps))
    monkeypatch.setenv("FAIR_TRL_BYOD_BOOTSTRAP", "20")
    probe = """{
        "prefix": _sys.prefix,
        "csv_rows": len(table),
        "ages": sorted(set(table["PatientAge"]))[:3],
        "groups": {site: [g["group"] for g in d["groups"]] for site, d in inspection["domains"].items()},
        "label_sources": {site: d["label_source"] for site, d in inspection["domains"].items()},
        "scores": [float(s) for s in scores],
        "splits": {side: len(split) for side, split in data.items()},
        "train_patients": sorted(set(data["train"]["PatientID"])),
        "test_patients": sorted(set(data["test"]["PatientID"])),
        "global_step": trainer.state.global_step,
        "demographic_columns": list(trainer.args.demographic_columns),
        "estimator_step": trainer.fair_estimator.step,
        "audit_samples": audit_report["samples"],
        "audit_attributes": sorted(audit_report["attributes"]),
    }"""
    nb, facts = execute("04_your_own_data.ipynb", kernel_dirs, tmp_path, monkeypatch, probe)

    assert facts["csv_rows"] == 120 and "" in facts["ages"]  # blank ages are in the file, as in a lab's
    for site, groups in facts["groups"].items():
        assert facts["label_sources"][site] == "declared"
        # Declared kinds: ages binned a1-a4 (from "053Y" and plain years alike), sexes read as F/M.
        # Rows with a blank age or sex join an agreeing complete group; only rows with neither are latent.
        labelled = [g for g in groups if g != "unknown (latent groups)"]
        assert labelled and all(
            g.split("|")[0] in {f"PatientAge=a{i}" for i in range(1, 5)} and g.split("|")[1] in {"PatientSex=F",
            "PatientSex=M"} for g in labelled
        )  # fmt: skip
    assert facts["scores"] == [1.0, 0.0, 0.0]  # listing every label never scores
    assert sum(facts["splits"].values()) == 120
    assert not set(facts["train_patients"]) & set(facts["test_patients"])
    assert facts["global_step"] == steps == facts["estimator_step"]
    assert facts["audit_samples"] == facts["splits"]["test"]
    assert facts["audit_attributes"] == ["PatientAge", "PatientSex"]
    assert outputs(nb, "image/png"), "the audit's per-group F1 plot is not shown"
