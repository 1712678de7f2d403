"""A `GRPOTrainer` user changes one import: `FairGRPOTrainer` / `FairGRPOConfig` at their defaults train what TRL does.

Each training scenario runs a few real steps on a tiny offline model and checks, as TRL's own tests do, that every
trainable parameter moved. The data carries no fairness columns unless a test says so: left at their defaults
(``"auto"``), the domain and demographic columns are the ones the data has, and FairGRPO runs on what it has (one
domain, latent groups for every prompt: FairGRPO-ND), saying so once. Columns named explicitly are checked, TRL's
own argument errors come first with TRL's messages, and the settings FairGRPO cannot honour say how to get TRL's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re

import numpy as np
import pytest
import torch
from conftest import length_reward, text_dataset, trainer_config
from datasets import Dataset, IterableDataset
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, HfArgumentParser
from trl import GRPOConfig, GRPOTrainer

from fair_trl import FairGRPOAdvantage, FairGRPOConfig, FairGRPOTrainer
from fair_trl.checkpoint_io import GROUP_SETTINGS_FILE
from fair_trl.models import build_tiny_vlm

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MISSING_NOTE = "has no column"


def prompt_only(n=8):
    """TRL's standard prompt-only format, and no other column."""
    return Dataset.from_dict({"prompt": [f"The case {i} is Normal or Pneumonia ?" for i in range(n)]})


def conversational(n=8):
    """TRL's conversational prompt-only format, and no other column."""
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": f"Classify case {i} ."}] for i in range(n)]})


def distinct_words_reward(completions, **_):
    text = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [len(set(t.split())) / 6 for t in text]


def args(tmp_path, **overrides):
    """FairGRPOConfig at its defaults, but for a tiny quick CPU run (see conftest.trainer_config)."""
    return FairGRPOConfig(**trainer_config(tmp_path, **{"max_steps": 2, **overrides}))


def trainable(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def assert_trained(trainer, before, steps=2):
    """It took `steps` optimizer steps and every trainable parameter moved."""
    assert trainer.state.global_step == steps
    after = dict(trainer.model.named_parameters())
    unchanged = [name for name, p in before.items() if torch.equal(p, after[name])]
    assert before and not unchanged, f"parameters that did not move: {unchanged}"


def missing_notes(caplog):
    notes = [r.getMessage() for r in caplog.records if r.name == "fair_trl.inspection"]
    return [note for note in notes if MISSING_NOTE in note]


def train(caplog=None, **kwargs):
    """Build a FairGRPOTrainer, train it and check that it did; returns it."""
    with caplog.at_level(logging.WARNING, logger="fair_trl") if caplog else contextlib.nullcontext():
        trainer = FairGRPOTrainer(**kwargs)
        before = trainable(trainer.model)
        trainer.train()
    assert_trained(trainer, before, steps=trainer.args.max_steps)
    return trainer


@pytest.fixture(scope="module")
def reward_model_dir(text_model_dir, tmp_path_factory):
    """A tiny sequence-classification reward model with its tokenizer, saved offline: a reward model's Hub id."""
    out = tmp_path_factory.mktemp("reward_model")
    model = AutoModelForSequenceClassification.from_pretrained(text_model_dir, num_labels=1)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(text_model_dir).save_pretrained(out)
    return str(out)


# -- (a)-(m): TRL's usual set-ups, at FairGRPO's defaults ------------------------------------------------------


@pytest.mark.parametrize("data", [prompt_only, conversational], ids=["standard", "conversational"])
def test_prompt_only_data_without_fairness_columns_trains_as_fairgrpo_nd(text_model_dir, tmp_path, caplog, data):
    config = args(tmp_path)
    trainer = train(caplog, model=text_model_dir, reward_funcs=length_reward, args=config, train_dataset=data())
    # Said once, naming every default column the data lacks and how to declare others.
    (note,) = missing_notes(caplog)
    assert "'dataset' (the default domain_column)" in note and "'sex', 'age' (the default demographic_columns)" in note
    assert "FairGRPO-ND" in note and "demographic_columns=['PatientSex:sex', 'PatientAge:age']" in note
    # The columns it trained with are in its args, checkpoints and card; the caller's config is left as it was.
    assert (trainer.args.domain_column, trainer.args.demographic_columns) == (None, [])
    assert (config.domain_column, config.demographic_columns) == ("auto", ["auto"])
    assert trainer.model_card_record().hyperparameters["demographic_columns"] == []
    # One domain; every prompt in a latent group, clustered by its rewards.
    state = trainer.fair_estimator.state_dict()
    assert set(state["domain_stats"]) == {"all"} and state["group_stats"] == {}
    assert state["unlabeled_seen"] == {"all": 2 * 2}
    assert any("fair/num_clusters" in entry for entry in trainer.state.log_history)


@pytest.mark.parametrize("kind", ["features known", "features unknown", "features unknown, with the columns"])
def test_iterable_dataset(text_model_dir, tmp_path, caplog, kind):
    with_columns = kind.endswith("with the columns")
    rows = (text_dataset(n=16) if with_columns else prompt_only(16)).to_list()
    if kind == "features known":
        stream = Dataset.from_list(rows).to_iterable_dataset()
    else:
        stream = IterableDataset.from_generator(lambda: iter(rows))
        assert stream.column_names is None  # its columns are only known from its rows: the first one says
    trainer = train(caplog, model=text_model_dir, reward_funcs=length_reward, args=args(tmp_path),
                    train_dataset=stream)  # fmt: skip
    if with_columns:
        assert (trainer.args.domain_column, trainer.args.demographic_columns) == ("dataset", ["sex", "age"])
        assert not missing_notes(caplog) and set(trainer.fair_estimator.domain_stats) <= set(text_dataset()["dataset"])
    else:
        assert (trainer.args.domain_column, trainer.args.demographic_columns) == (None, [])
        assert len(missing_notes(caplog)) == 1


def test_eval_dataset(text_model_dir, tmp_path):
    config = args(tmp_path, eval_strategy="steps", eval_steps=1, per_device_eval_batch_size=8)
    trainer = train(model=text_model_dir, reward_funcs=length_reward, args=config, train_dataset=prompt_only(),
                    eval_dataset=conversational())  # fmt: skip
    evaluations = [e for e in trainer.state.log_history if "eval_reward" in e]
    assert [e["step"] for e in evaluations] == [1, 2]
    assert all(np.isfinite(e["eval_reward"]) for e in evaluations)


def test_several_plain_reward_functions(text_model_dir, tmp_path):
    config = args(tmp_path, reward_weights=[1.0, 0.5])
    trainer = train(model=text_model_dir, reward_funcs=[length_reward, distinct_words_reward], args=config,
                    train_dataset=prompt_only())  # fmt: skip
    logged = trainer.state.log_history[0]
    assert {"rewards/length_reward/mean", "rewards/distinct_words_reward/mean"} <= set(logged)


@pytest.mark.parametrize("as_id", [False, True], ids=["model", "hub id"])
def test_reward_model(text_model_dir, reward_model_dir, tmp_path, as_id):
    # A reward model's scores are unbounded; FairGRPO measures temperatures from the lowest score seen.
    reward = reward_model_dir if as_id else AutoModelForSequenceClassification.from_pretrained(reward_model_dir)
    trainer = train(model=text_model_dir, reward_funcs=reward, args=args(tmp_path), train_dataset=prompt_only())
    assert isinstance(trainer.reward_funcs[0], torch.nn.Module)
    assert trainer.fair_estimator.lowest_reward < 0  # the tiny model scores below 0: measured, not refused


def test_reward_processing_classes_pair(text_model_dir, reward_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(reward_model_dir)
    reward_model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir)
    trainer = train(model=text_model_dir, reward_funcs=[reward_model, length_reward], args=args(tmp_path),
                    train_dataset=prompt_only(), reward_processing_classes=[tokenizer, None])  # fmt: skip
    assert trainer.reward_processing_classes[0] is tokenizer and trainer.reward_processing_classes[1] is None


def test_vlm_with_images(tmp_path, caplog):
    model, processor = build_tiny_vlm(seed=0)
    rng = np.random.default_rng(0)
    data = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Normal ?"}]}]] * 8,
            "image": [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(8)],
        }
    )
    trainer = train(caplog, model=model, reward_funcs=length_reward, args=args(tmp_path, learning_rate=1e-2),
                    train_dataset=data, processing_class=processor)  # fmt: skip
    assert len(missing_notes(caplog)) == 1 and trainer.fair_estimator.step == 2


def test_peft(text_model_dir, tmp_path):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = FairGRPOTrainer(model=text_model_dir, reward_funcs=length_reward, args=args(tmp_path, learning_rate=5e-2),
                              train_dataset=prompt_only(), peft_config=lora)  # fmt: skip
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    adapter = trainable(trainer.model)
    # LoRA's A matrices start random and its B matrices at zero: the A matrices get no gradient until B moves,
    # so what must move is every B matrix, and nothing of the frozen base.
    assert adapter and all("lora_" in name for name in adapter)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(not torch.equal(p, after[n]) for n, p in adapter.items() if "lora_B" in n)
    assert all(torch.equal(p, after[n]) for n, p in frozen.items())


def test_no_args(text_model_dir, tmp_path, monkeypatch):
    import transformers.training_args

    # TRL's defaults train in bf16, which transformers allows on a bf16 GPU only: without one, let it through as
    # a GPU machine would (torch runs bf16 autocast on the CPU too). GRPOConfig() itself needs it just the same.
    if not transformers.training_args.is_torch_bf16_gpu_available():
        monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)
    monkeypatch.chdir(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(text_model_dir)
    # TRL's default max_completion_length is 512; a third of the vocabulary ending a completion keeps them short.
    model.generation_config.eos_token_id = list(range(0, model.config.vocab_size, 3))
    defaults = GRPOConfig("text-GRPO")  # before the trainer: a new TrainingArguments resets accelerate's state
    trainer = FairGRPOTrainer(model=model, reward_funcs=length_reward, train_dataset=prompt_only(1))
    assert isinstance(trainer.args, FairGRPOConfig) and trainer.args.output_dir == "text-FairGRPO"
    for name in ("learning_rate", "num_generations", "per_device_train_batch_size", "max_completion_length", "beta"):
        assert getattr(trainer.args, name) == getattr(defaults, name), name
    before = trainable(trainer.model)
    trainer.train()
    assert_trained(trainer, before, steps=3)  # TRL's 3 epochs of one prompt


def test_steps_per_generation_above_one(text_model_dir, tmp_path):
    config = args(tmp_path, steps_per_generation=2)
    trainer = train(model=text_model_dir, reward_funcs=length_reward, args=config, train_dataset=prompt_only())
    # One generation batch (4 prompts x 4 completions) scored once, then trained on in two optimizer steps.
    assert trainer.fair_estimator.step == 1
    assert trainer.fair_estimator.state_dict()["unlabeled_seen"] == {"all": 4}


def test_resume_from_a_checkpoint(text_model_dir, tmp_path):
    config = args(tmp_path, save_strategy="steps", save_steps=1)
    first = train(model=text_model_dir, reward_funcs=length_reward, args=config, train_dataset=prompt_only())
    checkpoint = tmp_path / "out" / "checkpoint-1"
    settings = json.loads((checkpoint / GROUP_SETTINGS_FILE).read_text())
    assert (settings["domain_column"], settings["demographic_columns"]) == (None, [])

    resumed = FairGRPOTrainer(model=text_model_dir, reward_funcs=length_reward, args=config,
                              train_dataset=prompt_only())  # fmt: skip
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 2 and resumed.fair_estimator.step == 2
    saved = AutoModelForCausalLM.from_pretrained(checkpoint)
    trained = dict(resumed.model.named_parameters())
    assert all(not torch.equal(p, trained[name]) for name, p in saved.named_parameters())  # it trained on
    assert resumed.fair_estimator.state_dict() == first.fair_estimator.state_dict()  # and as the unbroken run


def test_model_and_reward_model_as_hub_ids(text_model_dir, reward_model_dir, tmp_path):
    trainer = train(model=text_model_dir, reward_funcs=[reward_model_dir, length_reward], args=args(tmp_path),
                    train_dataset=conversational())  # fmt: skip
    assert trainer.model.config._name_or_path == text_model_dir
    assert trainer.reward_func_names[0] == os.path.basename(reward_model_dir)


# -- part 1: defaults that adapt, explicit settings that are checked ----------------------------------------------


def test_data_with_the_columns_uses_them(text_model_dir, tmp_path, caplog):
    trainer = train(caplog, model=text_model_dir, reward_funcs=length_reward, args=args(tmp_path, max_steps=1),
                    train_dataset=text_dataset())  # fmt: skip
    assert not missing_notes(caplog)
    assert (trainer.args.domain_column, trainer.args.demographic_columns) == ("dataset", ["sex", "age"])
    assert trainer.group_keyer.columns == ("sex", "age")
    assert set(trainer.fair_estimator.domain_stats) <= {"chexpert", "ham10000", "covid_blues"}


def test_only_the_missing_default_columns_are_dropped_and_named(text_model_dir, tmp_path, caplog):
    data = prompt_only().add_column("age", ["34", "61"] * 4)
    with caplog.at_level(logging.WARNING, logger="fair_trl"):
        trainer = FairGRPOTrainer(model=text_model_dir, reward_funcs=length_reward, args=args(tmp_path),
                                  train_dataset=data)  # fmt: skip
    assert (trainer.args.domain_column, trainer.args.demographic_columns) == (None, ["age"])
    (note,) = missing_notes(caplog)
    lacks = note.split(":")[0]
    assert "'dataset'" in lacks and "'sex' (the default demographic_columns)" in lacks and "'age'" not in lacks
    assert "from 'age' only" in note and "FairGRPO-ND" not in note


def test_no_domain_and_no_demographics_are_settings_of_their_own(text_model_dir, tmp_path, caplog):
    config = args(tmp_path, max_steps=1)
    config.domain_column, config.demographic_columns = None, []
    trainer = train(caplog, model=text_model_dir, reward_funcs=length_reward, args=config,
                    train_dataset=text_dataset())  # fmt: skip
    assert not missing_notes(caplog)  # said on purpose: nothing to warn about, even though the data has them
    assert (trainer.args.domain_column, trainer.args.demographic_columns) == (None, [])
    assert set(trainer.fair_estimator.domain_stats) == {"all"} and trainer.fair_estimator.group_stats == {}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"domain_column": "site"}, r"no column 'site' \(FairGRPOConfig.domain_column\); its columns are \['prompt'\]"),
        ({"demographic_columns": ["PatientSex:sex"]}, r"no column 'PatientSex' \(FairGRPOConfig.demographic_columns\)"),
        ({"demographic_columns": ["sex", "age"]}, r"no column 'sex' .*its columns are \['prompt'\]"),
    ],
)
def test_a_column_named_explicitly_must_exist(text_model_dir, tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        FairGRPOTrainer(model=text_model_dir, reward_funcs=length_reward, args=args(tmp_path, **settings),
                        train_dataset=prompt_only())  # fmt: skip


def test_a_column_named_on_the_command_line_is_explicit(text_model_dir, tmp_path):
    # The default's own name, given on the command line (or in a YAML recipe): named, so checked.
    (config,) = HfArgumentParser(FairGRPOConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false", "--domain_column", "dataset"]
    )
    assert config.domain_column == "dataset" and config.demographic_columns == ["auto"]
    with pytest.raises(ValueError, match=r"no column 'dataset' \(FairGRPOConfig.domain_column\)"):
        FairGRPOTrainer(model=text_model_dir, reward_funcs=length_reward, args=config, train_dataset=prompt_only())


def test_one_config_serves_trainers_on_other_data(text_model_dir, tmp_path, caplog):
    config = args(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fair_trl"):
        bare = FairGRPOTrainer(model=text_model_dir, reward_funcs=length_reward, args=config,
                               train_dataset=prompt_only())  # fmt: skip
        full = FairGRPOTrainer(model=text_model_dir, reward_funcs=length_reward, args=config,
                               train_dataset=text_dataset())  # fmt: skip
    assert bare.args.demographic_columns == [] and full.args.demographic_columns == ["sex", "age"]
    assert len(missing_notes(caplog)) == 1


def test_auto_stands_alone():
    with pytest.raises(ValueError, match=r"'auto' stands alone .*\['sex', 'age', 'race'\]"):
        FairGRPOConfig(output_dir="x", use_cpu=True, demographic_columns=["auto", "race"])
    with pytest.raises(ValueError, match="kind given for 'PatientAge', which is not a demographic column"):
        FairGRPOConfig(output_dir="x", use_cpu=True, demographic_kinds={"PatientAge": "age"})


# -- part 2: TRL's own argument checks come first, with TRL's messages ----------------------------------------


@pytest.mark.parametrize(
    ("overrides", "config", "message"),
    [
        ({"reward_processing_classes": [None, None]}, {}, "The number of reward processing classes (2) must match"),
        ({"reward_funcs": None}, {}, "No reward source provided"),
        ({"train_dataset": [{"prompt": "a"}]}, {}, "`train_dataset` must be a `Dataset` or `IterableDataset`"),
        ({}, {"reward_weights": [1.0, 2.0]}, "Number of reward weights (2) must match"),
        (
            {"train_dataset": prompt_only().to_iterable_dataset()},
            {"accelerator_config": {"dispatch_batches": True}},
            "Iterable datasets require `dispatch_batches=False`",
        ),  # fmt: skip
    ],
)
def test_trl_checks_its_arguments_first(text_model_dir, tmp_path, overrides, config, message):
    kwargs = {"model": text_model_dir, "reward_funcs": length_reward, "train_dataset": prompt_only(), **overrides}
    error = TypeError if isinstance(kwargs["train_dataset"], list) else ValueError
    with pytest.raises(error, match=re.escape(message)):
        GRPOTrainer(**kwargs, args=GRPOConfig(**trainer_config(tmp_path, **config)))
    # The same set-up also breaks fair-trl's checks (an explicit column the data lacks, a sampler on a stream):
    # TRL's error, word for word, is the one raised.
    fair = FairGRPOConfig(**trainer_config(tmp_path, **config), domain_column="site", balanced_sampling=True)
    with pytest.raises(error, match=re.escape(message)):
        FairGRPOTrainer(**kwargs, args=fair)


# -- part 3: what FairGRPO cannot honour says why, and how to get TRL's behaviour ------------------------------


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"scale_rewards": "batch"}, r"implements scale_rewards=\['group'\] only, got 'batch'.*\(FairGRPO's first"),
        ({"scale_rewards": "none", "advantage_estimator": "fair_grpo_nd"}, r"got 'none'.*\(FairGRPO's first step"),
        ({"scale_rewards": "group", "advantage_estimator": "rloo"}, r"got 'group'.*\(RLOO's advantage is a reward"),
        ({"scale_rewards": "group", "advantage_estimator": "reinforce_pp"}, r"\(REINFORCE\+\+ normalises"),
        ({"multi_objective_aggregation": "normalize_then_sum"}, r"normalises each reward function on its own"),
    ],
)
def test_refusals_say_why_and_how_to_get_trls_behaviour(tmp_path, settings, reason):
    with pytest.raises(ValueError, match=reason) as refusal:
        FairGRPOConfig(**trainer_config(tmp_path), **settings)
    assert "use advantage_estimator='grpo'" in str(refusal.value)
    # The way out it names works: TRL's GRPO advantages under the same setting.
    way_out = FairGRPOConfig(**trainer_config(tmp_path), **{**settings, "advantage_estimator": "grpo"})
    assert all(getattr(way_out, name) == value for name, value in settings.items() if name != "advantage_estimator")


def test_a_reward_below_a_declared_floor_is_refused_with_the_way_out():
    rewards = torch.tensor([-1.0, 0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"below reward_min=0 .*None to measure from the lowest .*'grpo'"):
        FairGRPOAdvantage(reward_min=0.0)(rewards, 4, ["d"] * 4, [None] * 4)
    assert FairGRPOAdvantage(reward_min=None)(rewards, 4, ["d"] * 4, [None] * 4).abs().sum() > 0
