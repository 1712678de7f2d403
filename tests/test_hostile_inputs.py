"""Hostile inputs (issue 7, part 3): each gives a message naming the value, or a counted fallback; none stops a run.

Every input the issue lists, what it gets, and where it is tested ("here" = this module; unit tests first,
then short real `FairGRPOTrainer` runs of the tiny text model):

| input | what happens | tests |
|---|---|---|
| age "-5", "200", "45 years" | invalid: warned once per column naming the value, counted in `GroupKeyer.summary()["invalid"]` and logged as `fair/invalid_demographics`; treated as missing | here (keyer, run); test_groups.py (parse_age_invalid, counted_and_warned); test_trainer.py (bad_demographics) |
| age "NaN", "unknown", "" (blank), None | missing: counted in `summary()["missing"]`, no warning | here (keyer, run); test_groups.py (parse_age_missing) |
| sex "U", "", None | missing, counted | here (keyer, run); test_groups.py (parse_sex_missing) |
| sex "Other" | invalid, warned naming it, counted | here (keyer, run); test_groups.py; test_trainer.py |
| group strings with commas and pipes | categorical values keep commas; "\\|" and "=" become "_", so keys stay unambiguous; sex "F\\|M" is invalid | here (keyer, compute_fairness, estimator state, run); test_groups.py (separators) |
| a domain with one prompt | its statistics start from that prompt; its weight is logged and finite | here (estimator, run) |
| every group unknown in a batch | all prompts clustered by reward vectors; `fair/unknown_group_frac` = 1; fairness logging has no group to score and logs nothing | here (estimator, run); test_trainer.py (bad_demographics) |
| reward function returning None | TRL makes it NaN; advantage 0, left out of every statistic (TRL warns when all functions return None) | here (estimator, run); test_advantages.py (nan_rewards) |
| reward function returning NaN | as None | here (estimator, run) |
| reward function returning +-inf | unscorable, as NaN: advantage 0, left out of every statistic; warned once per reward function ("returned inf") and counted in `fair/nonfinite_rewards` | here (estimator, run) |
| completion with no parseable answer | reward 0, counted in `AccuracyReward.no_valid_label` and logged as `accuracy/no_valid_label_frac`; in fairness metrics it is negative for every class | here (rewards, run); test_rewards.py |
| missing image file in a builder | row skipped, counted as `skipped["missing_image"]` | here (ham10000); test_data_skin.py, test_data_chexpert.py, test_data_vindr.py, ... |
| corrupt image file (JPEG) in a builder | decoded at build time; skipped, counted as `skipped["unreadable_image"]` and warned once | here (ham10000) |
| corrupt DICOM / video | skipped, counted as unreadable_dicom / unreadable_video, warned once | test_data_skin.py (isic2020), test_data_vindr.py, test_data_covid_blues.py |
| predictions file: malformed JSON lines | stops with the line number (exit 2), or with `--skip-invalid` skipped and counted in the report | here (several kinds); test_evaluate_cli.py |
| predictions file: unknown dataset | classes are the labels its references use (recorded in the JSON's `classes`); predictions naming none of them count as no valid label | here |
| predictions file: hostile demographics | counted in the JSON's `demographics`; invalid ones warned naming the value | here |
"""  # noqa: E501 (a markdown table, for the issue note)

import io
import json
import logging
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import length_reward
from datasets import Dataset
from PIL import Image

from fair_trl import FairGRPOAdvantage, FairGRPOConfig, FairGRPOTrainer
from fair_trl.cli import main as cli_main
from fair_trl.data import build_dataset
from fair_trl.groups import GroupKeyer, InvalidDemographic, parse_age, parse_sex
from fair_trl.metrics import compute_fairness
from fair_trl.rewards import AccuracyReward, format_reward

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GROUPS_LOGGER = "fair_trl.groups"

# value -> "missing" or "invalid", as the issue lists them.
HOSTILE_AGES = {
    "-5": "invalid",
    "200": "invalid",
    "NaN": "missing",
    "unknown": "missing",
    "45 years": "invalid",
    "": "missing",
}
HOSTILE_SEXES = {"U": "missing", "Other": "invalid", "": "missing", None: "missing"}


def finite_json(state) -> str:
    """JSON of an estimator state, refusing NaN/inf (which json.dump would write as non-standard tokens)."""
    return json.dumps(state, allow_nan=False)


# ------------------------------------------------------------------------------------ demographics


@pytest.mark.parametrize(("value", "kind"), list(HOSTILE_AGES.items()))
def test_each_hostile_age_is_missing_or_a_named_invalid_value(value, kind):
    if kind == "invalid":
        with pytest.raises(InvalidDemographic, match=repr(value)):
            parse_age(value)
    else:
        assert parse_age(value) is None
    keyer = GroupKeyer(["age"])
    assert keyer.attribute("age", value) is None
    assert keyer.summary()[kind] == {"age": 1}


@pytest.mark.parametrize(("value", "kind"), list(HOSTILE_SEXES.items()))
def test_each_hostile_sex_is_missing_or_a_named_invalid_value(value, kind):
    if kind == "invalid":
        with pytest.raises(InvalidDemographic, match=repr(value)):
            parse_sex(value)
    else:
        assert parse_sex(value) is None
    keyer = GroupKeyer(["sex"])
    assert keyer.attribute("sex", value) is None
    assert keyer.summary()[kind] == {"sex": 1}


def test_keyer_counts_every_hostile_row_and_warns_once_per_column_naming_the_value(caplog):
    rows = [{"age": age, "sex": sex} for age in HOSTILE_AGES for sex in HOSTILE_SEXES]
    rows.append({"age": "40", "sex": "F"})  # one good row: the bad ones do not poison it
    keyer = GroupKeyer(["sex", "age"])
    with caplog.at_level(logging.WARNING, logger=GROUPS_LOGGER):
        keys = keyer.keys(rows)
    assert keys == [None] * (len(rows) - 1) + ["sex=F|age=a2"]
    n_ages, n_sexes = len(HOSTILE_AGES), len(HOSTILE_SEXES)
    bad_ages = sum(k == "invalid" for k in HOSTILE_AGES.values())
    bad_sexes = sum(k == "invalid" for k in HOSTILE_SEXES.values())
    assert keyer.summary() == {
        "rows": len(rows),
        "rows_without_key": len(rows) - 1,
        "invalid": {"sex": bad_sexes * n_ages, "age": bad_ages * n_sexes},
        "missing": {"sex": (n_sexes - bad_sexes) * n_ages, "age": (n_ages - bad_ages) * n_sexes},
    }
    messages = [r.getMessage() for r in caplog.records if r.name == GROUPS_LOGGER]
    assert len(messages) == 2
    assert any("'age'" in m and "'-5'" in m for m in messages)  # the first invalid age, named
    assert any("'sex'" in m and "'Other'" in m for m in messages)


def test_group_values_with_commas_and_pipes_keep_keys_unambiguous():
    keyer = GroupKeyer(["race", "site", "sex"])
    rows = [
        {"race": "White, Hispanic", "site": "A|B", "sex": "F"},
        {"race": "White", "site": "Hispanic|A, B", "sex": "F"},  # same characters, other split
        {"race": "a=b", "site": " x | y ", "sex": "M"},
    ]
    keys = keyer.keys(rows)
    assert keys[0] == "race=White, Hispanic|site=A_B|sex=F"
    assert keys[1] == "race=White|site=Hispanic_A, B|sex=F"
    assert keys[2] == "race=a_b|site=x _ y|sex=M"
    # "F|M" is not a sex: the row is unlabeled, so no key carries the separator.
    assert keyer.key({"race": "a", "site": "b", "sex": "F|M"}) is None
    assert keyer.summary()["invalid"] == {"race": 0, "site": 0, "sex": 1}
    for key, row in zip(keys, rows, strict=True):
        # Splitting on "|" then the first "=" gives back one part per present column.
        parts = dict(part.split("=", 1) for part in key.split("|"))
        assert list(parts) == [c for c in keyer.columns if keyer.attribute(c, row[c]) is not None]

    # compute_fairness keeps such groups apart and names them verbatim.
    result = compute_fairness(["NV", "MEL", "NV"], ["NV", "NV", "NV"], ["ham10000"] * 3, keys)
    assert set(result["per_group"]["ham10000"]) == set(keys)

    # The estimator's state keeps them apart through a JSON round trip.
    est = FairGRPOAdvantage()
    est(torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0]), 2, ["d, e|f"] * 6, [k for k in keys for _ in range(2)])
    again = FairGRPOAdvantage()
    again.load_state_dict(json.loads(finite_json(est.state_dict())))
    assert set(again.group_stats["d, e|f"]) == set(keys)
    assert again.state_dict() == est.state_dict()


# ------------------------------------------------------------------------------------ the estimator


def test_domain_with_one_prompt_gets_finite_advantages_and_its_own_statistics():
    est = FairGRPOAdvantage()
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0] * 3 + [1.0, 1.0, 0.0, 0.0])
    domains = ["big"] * 12 + ["lonely"] * 4
    adv = est(rewards, 4, domains, ["sex=F"] * 16)
    assert torch.isfinite(adv).all()
    assert est.domain_stats["lonely"].prompts == 1 and est.domain_stats["lonely"].reward_sum == 2.0
    assert math.isfinite(est.last_info["weight"]["lonely"]) and est.last_info["weight"]["lonely"] > 0
    # The lonely domain's prompt carries signal and is trained on: positive for its correct rollouts.
    assert adv[12] > 0 and adv[14] < 0
    assert adv.std().item() == pytest.approx(1.0)
    # A domain that only ever had an unscorable prompt has no statistics at all.
    adv = est(torch.tensor([float("nan")] * 4 + [1.0, 0.0, 0.0, 0.0]), 4, ["ghost"] * 4 + ["big"] * 4, [None] * 8)
    assert "ghost" not in est.domain_stats and torch.equal(adv[:4], torch.zeros(4))


def test_batch_where_every_group_is_unknown_is_clustered_and_normalised():
    est = FairGRPOAdvantage()
    rng = np.random.default_rng(0)
    for _ in range(3):
        rewards = torch.from_numpy((rng.random(64) < 0.4).astype(np.float32))
        adv = est(rewards, 4, ["a"] * 32 + ["b"] * 32, [None] * 64)
        assert torch.isfinite(adv).all()
        assert adv.std().item() == pytest.approx(1.0, rel=1e-5)
    assert est.group_stats == {}
    assert est.unlabeled_seen == {"a": 24, "b": 24}
    assert {d: len(p) for d, p in est.pools.items()} == {"a": 24, "b": 24}
    assert est.last_info["num_clusters"] >= 2  # at least one cluster per domain


def test_all_rewards_none_gives_zeros_and_touches_no_statistic():
    est = FairGRPOAdvantage()
    adv = est(torch.full((8,), float("nan")), 4, ["d"] * 8, ["sex=F"] * 8)
    assert torch.equal(adv, torch.zeros(8))
    assert est.domain_stats == {} and est.group_stats == {}
    assert est.last_info["batch_std"] == 0.0


@pytest.mark.parametrize("bad", [float("inf"), float("-inf")], ids=["inf", "-inf"])
def test_infinite_reward_is_unscorable_and_does_not_poison_the_run(bad):
    """Fails until the estimator treats +-inf rewards like NaN (see the module docstring)."""
    est = FairGRPOAdvantage()
    rewards = torch.tensor([1.0, 0.0, bad, 0.0, 1.0, 0.0, 1.0, 0.0])
    adv = est(rewards, 4, ["d"] * 8, ["sex=F"] * 4 + ["sex=M"] * 4)
    assert torch.isfinite(adv).all()
    assert adv[2] == 0
    # The other prompt, and the finite rollouts of the first, still carry their signal.
    assert adv[4] > 0 and adv[5] < 0 and adv[0] > 0
    state = est.state_dict()
    finite_json(state)  # raises on inf/NaN running sums
    assert state["domain_stats"]["d"]["reward_count"] == 7
    # A later, clean batch of the same domain is trained on normally.
    adv = est(torch.tensor([1.0, 0.0, 1.0, 0.0] * 2), 4, ["d"] * 8, ["sex=F"] * 4 + ["sex=M"] * 4)
    assert adv.abs().min() > 0 and adv.std().item() == pytest.approx(1.0)


# ------------------------------------------------------------------------------------ rewards and metrics


UNPARSEABLE = [
    "",
    "NV",  # no markup: training rewards require it
    "<think>hmm</think> the answer is NV",
    r"\boxed{NV",  # unclosed
    r"\boxed{}",
    "<answer></answer>",
    r"\boxed{Banana}",  # a label of no dataset
    [{"role": "assistant", "content": [{"type": "image"}]}],  # a conversation with no text part
]


def test_completions_with_no_parseable_answer_score_zero_and_are_counted():
    reward = AccuracyReward()
    logged = []
    rewards = reward(
        UNPARSEABLE + [r"\boxed{NV}"],
        solution=["NV"] * (len(UNPARSEABLE) + 1),
        dataset=["ham10000"] * (len(UNPARSEABLE) + 1),
        log_metric=lambda name, value: logged.append((name, value)),
    )
    assert rewards == [0.0] * len(UNPARSEABLE) + [1.0]
    assert reward.no_valid_label == len(UNPARSEABLE) and reward.scored == len(UNPARSEABLE) + 1
    assert logged == [("accuracy/no_valid_label_frac", pytest.approx(len(UNPARSEABLE) / (len(UNPARSEABLE) + 1)))]
    assert format_reward(UNPARSEABLE) == [0.0] * len(UNPARSEABLE)


def test_compute_fairness_when_every_group_is_unknown():
    result = compute_fairness(["NV", "MEL"], ["NV", "NV"], ["ham10000"] * 2, [None, None])
    assert result["n"] == 2 and result["n_unknown_group"] == 2
    assert result["per_group"] == {"ham10000": {}} and result["group_values"] == {}
    assert all(math.isfinite(result[key]) for key in ("acc", "f1", "EOD", "sigma_f1"))


# ------------------------------------------------------------------------------------ fair-trl evaluate


GOOD = {"prediction": r"\boxed{NV}", "reference": "NV", "dataset": "ham10000", "age": 40, "sex": "F"}
MALFORMED = [
    "{not json",
    "[1, 2, 3]",
    json.dumps({"prediction": "NV", "dataset": "ham10000"}),  # no reference
    json.dumps({**GOOD, "dataset": "  "}),
    json.dumps({**GOOD, "prediction": 3}),
    json.dumps({**GOOD, "reference": ""}),
]


@pytest.mark.parametrize("bad", MALFORMED)
def test_evaluate_stops_on_a_malformed_line_naming_its_number(tmp_path, capsys, bad):
    path = tmp_path / "pred.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + bad + "\n" + json.dumps(GOOD) + "\n")
    assert cli_main(["evaluate", str(path)]) == 2
    assert "line 2" in capsys.readouterr().err


def test_evaluate_skips_and_counts_malformed_lines_unknown_datasets_and_bad_demographics(tmp_path, capsys, caplog):
    lines = [json.dumps(GOOD)] + MALFORMED + [
        json.dumps({**GOOD, "age": "45 years", "sex": "Other"}),
        json.dumps({**GOOD, "age": "NaN", "sex": "U"}),
        json.dumps({"prediction": "cat", "reference": "cat", "dataset": "pets", "age": 30, "sex": "M"}),
        json.dumps({"prediction": "fish", "reference": "dog", "dataset": "pets", "age": 70, "sex": "F"}),
    ]  # fmt: skip
    path = tmp_path / "pred.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "report.json"
    with caplog.at_level(logging.WARNING, logger=GROUPS_LOGGER):
        assert cli_main(["evaluate", str(path), "--skip-invalid", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())

    assert [s["line"] for s in report["skipped_lines"]] == list(range(2, 2 + len(MALFORMED)))
    assert f"{len(MALFORMED)} malformed line(s) skipped." in text
    assert report["samples"] == 5  # every well-formed line is used
    # The unknown dataset is scored on the labels its references use, and shown by name.
    assert report["attributes"]["sex"]["classes"]["pets"] == ["cat", "dog"]
    assert "pets" in text
    assert report["no_valid_label"] == 1  # "fish" names no class of "pets"
    assert report["demographics"]["invalid"] == {"age": 1, "sex": 1}
    assert report["demographics"]["missing"] == {"age": 1, "sex": 1}
    warnings = " ".join(r.getMessage() for r in caplog.records if r.name == GROUPS_LOGGER)
    assert "'45 years'" in warnings and "'Other'" in warnings
    assert report["attributes"]["age"]["n_unknown_group"] == 2


# ------------------------------------------------------------------------------------ builders


def _ham_release(root: Path, images: dict[str, bytes | None]) -> Path:
    release = root / "HAM10000"
    folder = release / "HAM10000_images_part_1"
    folder.mkdir(parents=True)
    header = "lesion_id,image_id,dx,dx_type,age,sex,localization\n"
    rows = [
        f"HAM_{i:07d},{name},{'nv' if i % 2 else 'mel'},histo,{30 + i},female,scalp" for i, name in enumerate(images)
    ]
    (release / "HAM10000_metadata.csv").write_text(header + "\n".join(rows) + "\n")
    for name, data in images.items():
        if data is not None:
            (folder / f"{name}.jpg").write_bytes(data)
    return release


def _jpeg(size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color=(200, 120, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_ham10000_missing_and_corrupt_images_are_skipped_and_counted(tmp_path):
    """Fails until builders check that images decode (see the module docstring)."""
    good = {f"ISIC_{i:07d}": _jpeg() for i in range(6)}
    images = {**good, "ISIC_BADBYTES": b"this is not a jpeg", "ISIC_TRUNCATED": _jpeg((64, 64))[:200]}
    images["ISIC_MISSING"] = None
    release = _ham_release(tmp_path, images)
    data, summary = build_dataset("ham10000", release, return_summary=True, test_size=0.0)

    assert summary.skipped["missing_image"] == 1
    # Every row the build kept must decode: a corrupt file would otherwise stop training mid-run.
    undecodable = []
    for row in data["train"].cast_column("image", data["train"].features["image"].__class__(decode=False)):
        try:
            Image.open(row["image"]["path"]).load()
        except OSError as err:  # PIL's UnidentifiedImageError and truncated-file errors are OSErrors
            undecodable.append((Path(row["image"]["path"]).stem, type(err).__name__))
    assert undecodable == [], f"build kept undecodable images: {undecodable}"
    assert sum(summary.skipped.values()) == 3, f"not every dropped row is counted: {dict(summary.skipped)}"
    assert summary.rows == len(good)


# ------------------------------------------------------------------------------------ real training runs


@pytest.fixture(scope="module")
def model_dir(text_model_dir):
    return text_model_dir


def rows(n, **columns):
    """n prompts with `columns` (lists of length n, or one value for every row)."""
    data = {
        "prompt": [[{"role": "user", "content": f"Classify case {i} : Normal or Pneumonia ?"}] for i in range(n)],
        "solution": ["Pneumonia" if i % 2 else "No Finding" for i in range(n)],
        "dataset": ["chexpert"] * n,
        "sex": ["F"] * n,
        "age": ["40"] * n,
    }
    data.update({k: v if isinstance(v, list) else [v] * n for k, v in columns.items()})
    return Dataset.from_dict(data)


def run_config(tmp_path, **overrides):
    # 8 prompts x 4 rollouts a step; 2 steps read a 16-row dataset exactly once.
    values = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        learning_rate=1e-3,
        per_device_train_batch_size=32,
        num_generations=4,
        max_completion_length=6,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=3,
        gradient_checkpointing=False,
    )
    values.update(overrides)
    return FairGRPOConfig(**values)


class Recorder(FairGRPOTrainer):
    """Keeps the gathered rewards and the advantages of every training step."""

    def _compute_advantages(self, rewards, inputs):
        advantages = super()._compute_advantages(rewards, inputs)
        self.steps = getattr(self, "steps", []) + [(rewards.clone(), advantages.clone())]
        return advantages


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def test_run_with_hostile_demographics_counts_every_row_and_finishes(model_dir, tmp_path, caplog):
    ages = list(HOSTILE_AGES) + ["22", "053Y", "80", None, "0", "abc", "120", "121", "NaN", "45 years"]
    sexes = [list(HOSTILE_SEXES)[i % len(HOSTILE_SEXES)] for i in range(16)]
    sexes[2::4] = ["F", "male", "F|M", "Female"]
    races = ["White, Hispanic", "A|B", "a=b", "", None, "Asian"] * 2 + ["Black", "White, Hispanic", "A|B", "x"]
    data = rows(16, age=ages, sex=sexes, race=races)
    trainer = Recorder(
        model=model_dir,
        reward_funcs=length_reward,
        args=run_config(tmp_path, demographic_columns=["sex", "age", "race"]),
        train_dataset=data,
    )
    with caplog.at_level(logging.WARNING, logger=GROUPS_LOGGER):
        trainer.train()
    assert trainer.state.global_step == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == GROUPS_LOGGER]

    # Every row keyed exactly once, with the counts an independent keyer gives the whole dataset.
    # (fitted on the train rows, as the trainer's keyer is: partly known rows take an agreeing group).
    expected = GroupKeyer(["sex", "age", "race"])
    domains = [str(d) for d in data["dataset"]]
    expected.fit(data.to_list(), domains)
    expected_keys = Counter(expected.keys(data.to_list(), domains))
    assert trainer.group_keyer.summary() == expected.summary()
    assert trainer.group_keyer.summary()["invalid"] == {"sex": 5, "age": 6, "race": 0}
    assert logged(trainer, "fair/invalid_demographics")[-1] == 11.0
    state = trainer.fair_estimator.state_dict()
    finite_json(state)
    assert state["domain_stats"]["chexpert"]["prompts"] == 16  # no prompt dropped
    grouped = {g: s["prompts"] for g, s in state["group_stats"]["chexpert"].items()}
    assert grouped == {k: n for k, n in expected_keys.items() if k is not None}
    assert state["unlabeled_seen"]["chexpert"] == expected_keys[None]
    for _, advantages in trainer.steps:
        assert torch.isfinite(advantages).all() and advantages.std().item() == pytest.approx(1.0, rel=1e-4)

    # Each bad column is warned about, naming a value. README: "reported once per column in the logs"; this
    # fails while the fairness-logging keyer warns a second time (see the lead's note).
    assert {w.split("'")[1] for w in warnings} == {"sex", "age"} and all("missing" in w for w in warnings)
    assert len(warnings) == 2, "\n".join(warnings)


def bad_every_fifth(value):
    def reward(completions, **_):
        out = length_reward(completions)
        return [value if i % 5 == 0 else r for i, r in enumerate(out)]

    reward.__name__ = "sometimes_bad"
    return reward


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf")], ids=["none", "nan", "inf"])
def test_run_with_a_reward_function_returning_bad_values(model_dir, tmp_path, caplog, bad):
    """None and NaN pass; inf fails until the estimator treats it as unscorable (see the module docstring)."""
    trainer = Recorder(
        model=model_dir,
        reward_funcs=bad_every_fifth(bad),
        args=run_config(tmp_path),
        train_dataset=rows(16, dataset=["chexpert", "ham10000"] * 8),
    )
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert trainer.state.global_step == 2
    for rewards, advantages in trainer.steps:
        bad_rows = ~torch.isfinite(rewards)
        assert bad_rows.sum() == 7  # indices 0, 5, ..., 30 of the 32
        assert torch.isfinite(advantages).all()
        assert torch.equal(advantages[bad_rows], torch.zeros(7))
        # The scored completions still carry the batch's signal, renormalised to unit std.
        scored = advantages[~bad_rows]
        assert scored.abs().max() > 0
        assert scored.std().item() == pytest.approx(1.0, rel=1e-4)
    state = trainer.fair_estimator.state_dict()
    finite_json(state)
    assert sum(s["reward_count"] for s in state["domain_stats"].values()) == 2 * (32 - 7)
    if bad is not None and math.isinf(bad):
        assert any("inf" in r.getMessage() for r in caplog.records), "inf rewards were dropped without a message"


def test_run_where_every_group_is_unknown_and_no_answer_parses(model_dir, tmp_path):
    from fair_trl.rewards import accuracy_reward

    data = rows(16, sex=[None, "unknown", "", "U"] * 4, age=[None, "", "NaN", "0"] * 4)
    trainer = Recorder(
        model=model_dir,
        reward_funcs=[accuracy_reward, format_reward, length_reward],
        args=run_config(tmp_path, fairness_logging_steps=1),
        train_dataset=data,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert logged(trainer, "fair/unknown_group_frac") == [1.0, 1.0]
    # The random tiny model never writes \boxed{}: every completion is counted as naming no label.
    assert logged(trainer, "accuracy/no_valid_label_frac") == [1.0, 1.0]
    state = trainer.fair_estimator.state_dict()
    assert state["group_stats"] == {} and state["unlabeled_seen"] == {"chexpert": 16}
    assert logged(trainer, "fair/num_clusters")[-1] >= 1
    for _, advantages in trainer.steps:
        assert torch.isfinite(advantages).all()
    # No known group: fairness logging has nothing to score and logs no fairness keys, without failing.
    assert not any(k.startswith("fairness/") for entry in trainer.state.log_history for k in entry)
    assert trainer.fairness_results["train"] == {}


def test_run_with_a_one_prompt_domain_named_with_commas_and_pipes(model_dir, tmp_path):
    lonely = "site|7, west"
    data = rows(16, dataset=["chexpert"] * 15 + [lonely], sex=["F", "M"] * 8, age=["30", "60", "80", "20"] * 4)
    trainer = Recorder(model=model_dir, reward_funcs=length_reward, args=run_config(tmp_path), train_dataset=data)
    trainer.train()
    assert trainer.state.global_step == 2
    state = trainer.fair_estimator.state_dict()
    assert state["domain_stats"][lonely]["prompts"] == 1
    assert sum(s["prompts"] for s in state["domain_stats"].values()) == 16
    weights = logged(trainer, f"fair/weight/{lonely}")
    assert len(weights) == 1 and math.isfinite(weights[0]) and weights[0] >= 0
    for _, advantages in trainer.steps:
        assert torch.isfinite(advantages).all()


def test_a_seeded_random_mutation_sweep_finds_no_traceback():
    """tests/scripts/mutation_sweep.py, bounded: mutated prediction files through `evaluate` and `compare`, mutated
    dataset rows through the keyer, the samplers' weights and the audit's checks and fingerprint. Each case is
    answered (rc 0) or refused with one line (rc 2, or ValueError); none raises anything else. accuracy_reward is
    left out here: its handling of non-string solutions and domains is its own module's (see rewards tests).
    """
    import sys
    from collections import Counter
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "scripts"))
    try:
        from mutation_sweep import sweep
    finally:
        sys.path.pop(0)
    results = sweep(cases=200, seed=0, reward=False)
    outcomes = Counter((kind, outcome) for kind, outcome, _, _ in results)
    failures = [(kind, detail, given) for kind, outcome, detail, given in results if outcome.startswith("FAIL")]
    assert not failures, failures[:3]
    # The sweep exercised both kinds and both answers, so "no failure" means something.
    assert outcomes[("predictions", "ok")] and outcomes[("predictions", "refused")], outcomes
    assert outcomes[("dataset rows", "ok")] >= 20, outcomes
