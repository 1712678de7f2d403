"""`fair-trl inspect`, the column check of every estimator, and the group table the trainer logs at the start."""

import json
import logging
import os
import re
from pathlib import Path

import pytest
from conftest import length_reward, trainer_config
from datasets import Dataset

from fair_trl import FairGRPOConfig, FairGRPOTrainer
from fair_trl.cli import main
from fair_trl.inspection import MIN_GROUP_PROMPTS, ColumnSettings, inspect_rows, resolve_columns

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HEADER = "image,prompt,solution,dataset,PatientAge,PatientSex,site\n"


def clinic_csv(path: Path) -> Path:
    """A lab's table: DICOM-style ages, one unknown dataset name, a few bad values, a site id with many values."""
    lines = []
    for i in range(120):
        dataset = "cxr_clinic" if i % 3 else "ham10000"
        solution = ["Normal", "Pneumonia", "Covid"][i % 3] if dataset == "cxr_clinic" else ["NV", "MEL"][i % 2]
        age = ["034Y", "35", "053Y", "0", "", "81"][i % 6]
        sex = ["F", "M", "female", "O", "M"][i % 5]
        lines.append(f"img/{i}.png,Which finding?,{solution},{dataset},{age},{sex},site{i % 15}\n")
    lines.append("img/x.png,Which finding?,Effusion,cxr_clinic,40,F,site0\n")  # outside the declared set
    path.write_text(HEADER + "".join(lines))
    return path


def inspect(*argv, capsys):
    code = main(["inspect", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_prints_groups_label_sets_and_warnings(tmp_path, capsys):
    data = clinic_csv(tmp_path / "clinic.csv")
    labels = '{"cxr_clinic": ["Normal", "Pneumonia", "Covid"]}'
    code, out, err = inspect(
        data, "--demographic-columns", "PatientSex:sex", "PatientAge:age", "site:category",
        "--label-sets", labels, "--json", tmp_path / "report.json", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    clinic = report["domains"]["cxr_clinic"]
    assert clinic["label_set"] == ["Normal", "Pneumonia", "Covid"] and clinic["label_source"] == "declared"
    assert report["domains"]["ham10000"]["label_source"] == "built-in"
    # "034Y" and "35" are one age bin; 0 and "" are unknown; "O" is an unparsed sex.
    groups = {g["group"]: g["prompts"] for g in clinic["groups"]}
    assert all(key.count("PatientAge=") == 1 for key in groups if "unknown" not in key)
    assert not any("PatientAge=0" in key or "PatientAge=34" in key for key in groups)
    assert sum(groups.values()) == clinic["rows"] == 81
    assert clinic["unknown_share"] == pytest.approx(groups["unknown (latent groups)"] / 81, abs=1e-4)
    warnings = "\n".join(report["warnings"])
    assert f"under {MIN_GROUP_PROMPTS} prompts" in warnings
    assert "'PatientSex' (sex)" in warnings and "'O'" in warnings
    assert "'site' is read as a category with 15 distinct values" in warnings
    assert "outside its declared label set: ['Effusion']" in warnings
    # The text output says the same.
    assert "domain cxr_clinic: 81 rows" in out and "label set (declared): Normal, Pneumonia, Covid" in out
    assert "PatientSex=F|PatientAge=a2|site=site" in out and "['Effusion']" in out


def test_inspect_reads_a_recipe_and_flags_win(tmp_path, capsys):
    data = clinic_csv(tmp_path / "clinic.csv")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "learning_rate: 1.0e-6\ndemographic_columns: [PatientSex:sex, PatientAge:age]\n"
        "label_sets:\n  cxr_clinic: [Normal, Pneumonia, Covid]\n"
    )
    code, out, _ = inspect(data, "--config", recipe, capsys=capsys)
    assert code == 0 and "label set (declared)" in out and "PatientSex=M|PatientAge=a2" in out
    code, out, _ = inspect(data, "--config", recipe, "--demographic-columns", "PatientSex:sex", capsys=capsys)
    assert code == 0 and "PatientAge=" not in out and "PatientSex=M " in out


def test_inspect_reads_saved_folders_jsonl_and_parquet(tmp_path, capsys):
    rows = Dataset.from_dict({"solution": ["NV", "MEL"] * 15, "dataset": ["ham10000"] * 30, "sex": ["F"] * 30,
                              "age": ["40"] * 30})  # fmt: skip
    rows.save_to_disk(str(tmp_path / "saved"))
    rows.to_json(str(tmp_path / "rows.jsonl"))
    rows.to_parquet(str(tmp_path / "rows.parquet"))
    for source in ("saved", "rows.jsonl", "rows.parquet"):
        code, out, err = inspect(tmp_path / source, capsys=capsys)
        assert code == 0, err
        assert "domain ham10000: 30 rows, 0.0% unknown" in out and "sex=F|age=a2       30" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--demographic-columns", "PatientAge:years"], "unknown kind 'years'; expected .* age, sex, category"),
        (["--demographic-columns", "Age"], r"no column 'Age' .*its columns are \['PatientAge', 'PatientSex'"),
        (["--label-sets", "{bad"], "label_sets: not valid JSON"),
        (
            ["--demographic-columns", "PatientSex:sex", "--json", "/no/such/dir/r.json"],
            "folder '/no/such/dir' does not",
        ),
    ],
)
def test_inspect_user_errors_are_one_line(tmp_path, capsys, argv, message):
    code, out, err = inspect(clinic_csv(tmp_path / "clinic.csv"), *argv, capsys=capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("fair-trl inspect: ")
    assert re.search(message, err), err


def test_inspect_of_a_hub_id_offline_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = inspect("some-lab/some-dataset", capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "some-lab/some-dataset" in err


def test_inspect_rows_with_no_demographic_columns_puts_every_row_in_the_latent_groups():
    report = inspect_rows([{"dataset": "x", "solution": "A"}] * 3, ColumnSettings(demographic_columns=[]))
    assert report["domains"]["x"]["groups"] == [{"group": "unknown (latent groups)", "prompts": 3, "share": 1.0}]


# --- the trainer: column check for every estimator, no demographics, the group table ----------------


def clinic_rows(n=16, **drop):
    data = {
        "prompt": [[{"role": "user", "content": f"Case {i}: Normal or Pneumonia ?"}] for i in range(n)],
        "solution": ["Normal", "Pneumonia"] * (n // 2),
        "dataset": ["cxr_clinic"] * n,
        "PatientAge": ["053Y", "034Y", "0", "71"] * (n // 4),
        "PatientSex": ["F", "M"] * (n // 2),
    }
    return Dataset.from_dict({k: v for k, v in data.items() if k not in drop})


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp", "fair_grpo", "fair_grpo_nd"])
def test_a_missing_demographic_column_is_an_error_for_every_estimator(text_model_dir, tmp_path, estimator):
    args = FairGRPOConfig(**trainer_config(tmp_path), advantage_estimator=estimator,
                          demographic_columns=["PatientSex:sex", "PatientAgee:age"])  # fmt: skip
    with pytest.raises(ValueError, match=r"no column 'PatientAgee' .*demographic_columns.*'PatientAge'"):
        FairGRPOTrainer(model=text_model_dir, reward_funcs=length_reward, args=args, train_dataset=clinic_rows())


def test_resolve_columns_keeps_explicit_settings_and_checks_them():
    resolved = resolve_columns(["dataset", "x"], ColumnSettings(domain_column="dataset", demographic_columns=[]))
    assert (resolved.domain_column, resolved.demographic_columns, resolved.missing_defaults) == ("dataset", [], ())
    assert resolved.note() is None
    message = r"no column 'dataset' \(FairGRPOConfig.domain_column\); its columns are \['x'\]. .*domain_column=None"
    with pytest.raises(ValueError, match=message):
        resolve_columns(["x"], ColumnSettings(domain_column="dataset", demographic_columns=[]))
    with pytest.raises(ValueError, match=r"no column 'PatientAge' .*demographic_columns=\[\]"):
        resolve_columns(["x"], ColumnSettings(domain_column=None, demographic_columns=["PatientAge:age"]))
    nothing = resolve_columns(["x"], ColumnSettings(domain_column=None, demographic_columns=[]))
    assert (nothing.domain_column, nothing.demographic_columns, nothing.note()) == (None, [], None)


@pytest.mark.parametrize(
    ("columns", "domain", "demographics", "missing"),
    [
        (["prompt", "dataset", "sex", "age"], "dataset", ["sex", "age"], ()),
        (["prompt", "age"], None, ["age"], ("dataset", "sex")),
        (["prompt"], None, [], ("dataset", "sex", "age")),
        (None, "dataset", ["sex", "age"], ()),  # columns unknown: the defaults, a missing key reading as unknown
    ],
)
def test_resolve_columns_takes_the_default_columns_the_data_has(columns, domain, demographics, missing):
    resolved = resolve_columns(columns, ColumnSettings(demographic_kinds={"sex": "category", "age": "age"}))
    assert (resolved.domain_column, resolved.demographic_columns) == (domain, demographics)
    assert resolved.missing_defaults == missing
    assert resolved.demographic_kinds == ({"sex": "category", "age": "age"} if "sex" in demographics else
                                          {"age": "age"} if demographics else None)  # fmt: skip
    note = resolved.note()
    if not missing:
        assert note is None
        return
    assert all(repr(column) in note for column in missing) and "demographic_columns=['PatientSex:sex'" in note
    assert ("FairGRPO-ND" in note) == (not demographics)
    assert ("one domain" in note) == (domain is None)


def test_inspect_at_defaults_uses_the_columns_the_data_has_and_says_which_it_lacks(tmp_path, capsys):
    code, out, err = inspect(clinic_csv(tmp_path / "clinic.csv"), "--json", tmp_path / "r.json", capsys=capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["columns"]["domain"] == "dataset" and report["columns"]["demographic"] == []
    assert set(report["domains"]) == {"cxr_clinic", "ham10000"}
    assert "no column(s) 'sex', 'age' (the default demographic_columns)" in report["warnings"][0]
    assert "FairGRPO-ND" in out


def test_fair_grpo_nd_trains_on_data_without_demographic_columns(text_model_dir, tmp_path):
    data = clinic_rows(PatientAge=True, PatientSex=True)
    args = FairGRPOConfig(**trainer_config(tmp_path, max_steps=2), advantage_estimator="fair_grpo_nd",
                          demographic_columns=[])  # fmt: skip
    trainer = FairGRPOTrainer(model=text_model_dir, reward_funcs=length_reward, args=args, train_dataset=data)
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.group_keyer.columns == ()


def test_trainer_reads_declared_kinds_and_logs_the_group_table(text_model_dir, tmp_path, caplog):
    args = FairGRPOConfig(
        **trainer_config(tmp_path, max_steps=1), demographic_columns=["PatientSex:sex", "PatientAge:age"]
    )
    assert args.demographic_columns == ["PatientSex", "PatientAge"]
    assert args.demographic_kinds == {"PatientSex": "sex", "PatientAge": "age"}
    with caplog.at_level(logging.INFO, logger="fair_trl.inspection"):
        trainer = FairGRPOTrainer(model=text_model_dir, reward_funcs=length_reward, args=args,
                                  train_dataset=clinic_rows())  # fmt: skip
    (record,) = [r for r in caplog.records if r.name == "fair_trl.inspection"]
    table = record.getMessage()
    # Age 0 is unknown: those 4 rows take the commonest complete group that agrees with their sex.
    assert "domain cxr_clinic: 16 rows, 0.0% unknown (latent groups), 4 partly known rows" in table
    assert "PatientSex=F|PatientAge=a3" in table and "PatientSex=M|PatientAge=a2" in table
    assert trainer.group_keyer.key({"PatientSex": "F", "PatientAge": "053Y"}) == "PatientSex=F|PatientAge=a3"
    trainer.train()
    assert trainer.state.global_step == 1


def test_trainer_puts_the_group_table_in_wandb(text_model_dir, tmp_path, monkeypatch):
    import wandb

    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(name, value)
    args = FairGRPOConfig(**trainer_config(tmp_path, max_steps=1, report_to="wandb"),
                          demographic_columns=["PatientSex:sex", "PatientAge:age"])  # fmt: skip
    trainer = FairGRPOTrainer(model=text_model_dir, reward_funcs=length_reward, args=args, train_dataset=clinic_rows())
    trainer.train()
    files = Path(wandb.run.dir)
    wandb.finish()
    (table_file,) = files.glob("media/table/fair/groups_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["domain", "group", "prompts", "share"]
    assert ["cxr_clinic", "PatientSex=F|PatientAge=a3", 8, 0.5] in table["data"]
    assert sum(row[2] for row in table["data"]) == 16
