"""Answer extraction, label matching and the TRL reward functions."""

import pytest

from fair_trl.rewards import (
    AccuracyReward,
    LabelMatcher,
    completion_text,
    extract_answer,
    format_reward,
    parse_prediction,
    split_labels,
)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (r"<think>mole-like</think> The answer is \boxed{NV}.", "NV"),
        (r"\boxed{MEL} on second thought \boxed{ NV }", "NV"),
        (r"\boxed{MEL} then <answer>BCC</answer>", "BCC"),
        (r"<answer>BCC</answer> so \boxed{MEL}", "MEL"),
        (r"\boxed{\text{Pleural Effusion}}", "Pleural Effusion"),
        (r"\boxed{a {nested} b}", "a {nested} b"),
        ("<ANSWER>\nNV\n</ANSWER>", "NV"),
        ("no markup at all", None),
        (r"\boxed{unclosed", None),
    ],
)
def test_extract_answer_takes_the_last_boxed_or_answer_tag(text, answer):
    assert extract_answer(text) == answer


def test_split_labels_on_comma_semicolon_and_ampersand():
    assert split_labels("Edema, Pneumonia and Atelectasis & Fracture; No Finding") == [
        "Edema",
        "Pneumonia",
        "Atelectasis",
        "Fracture",
        "No Finding",
    ]
    # "and" only as a word: "Cardiomegaly" and "Standard" stay whole.
    assert split_labels("Standard") == ["Standard"]


@pytest.mark.parametrize(
    ("text", "dataset", "labels"),
    [
        (r"\boxed{Nevus}", "ham10000", {"NV"}),
        (r"\boxed{melanoma and basal cell carcinoma}", "ham10000", {"MEL", "BCC"}),
        (r"\boxed{seborrheic keratosis}", "ham10000", {"OTHER"}),
        (r"\boxed{BI-RADS 2}", "vindr_mammo", {"BI-RADS 2"}),
        (r"\boxed{2}", "vindr_mammo", {"BI-RADS 2"}),
        (r"\boxed{birads 4}", "VinDr", {"BI-RADS 4"}),
        (r"\boxed{pleural effusion, EDEMA}", "chexpert", {"Pleural Effusion", "Edema"}),
        (r"\boxed{No Hemorrhage}", "hemorrhage", {"No Hemorrhage"}),
        (r"\boxed{hemorrhage}", "hemorrhage", {"Has Hemorrhage"}),
        (r"\boxed{COVID-19}", "covid_blues", {"Has COVID"}),
        (r"\boxed{banana}", "ham10000", set()),
        ("NV", "PAD-UFES-20", {"NV"}),
    ],
)
def test_parse_prediction_maps_synonyms_case_insensitively(text, dataset, labels):
    assert parse_prediction(text, dataset) == labels


def test_parse_prediction_needs_markup_when_asked():
    assert parse_prediction("NV", "ham10000") == {"NV"}
    assert parse_prediction("NV", "ham10000", require_markup=True) == set()


def test_matcher_for_an_unknown_dataset_uses_the_labels_given():
    matcher = LabelMatcher(["Glaucoma", "Healthy"])
    assert matcher.match("glaucoma") == {"Glaucoma"}
    assert matcher.match("Nevus") == set()


def chat(text):
    return [{"role": "assistant", "content": text}]


def test_accuracy_reward_scores_label_sets_and_counts_answers_naming_no_label():
    reward = AccuracyReward()
    logged = []
    completions = [
        chat(r"<think>x</think>\boxed{nevus}"),
        chat(r"\boxed{Pneumonia, Edema}"),
        chat(r"\boxed{Edema}"),
        chat(r"\boxed{banana}"),
        chat("NV"),
        r"\boxed{2}",
    ]
    solution = ["NV", "Edema, Pneumonia", "Edema, Pneumonia", "NV", "NV", "BI-RADS 2"]
    dataset = ["ham10000", "chexpert", "chexpert", "ham10000", "ham10000", "vindr_mammo"]
    rewards = reward(completions, solution=solution, dataset=dataset, log_metric=lambda k, v: logged.append((k, v)))
    assert rewards == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert reward.no_valid_label == 2 and reward.scored == 6
    assert logged == [("accuracy/no_valid_label_frac", pytest.approx(2 / 6))]
    assert reward.__name__ == "accuracy_reward"


def test_accuracy_reward_without_a_dataset_column_matches_the_reference_itself():
    reward = AccuracyReward()
    assert reward([chat(r"\boxed{glaucoma}"), chat(r"\boxed{healthy}")], solution=["Glaucoma", "Glaucoma"]) == [
        1.0,
        0.0,
    ]


def test_accuracy_reward_with_explicit_label_sets():
    reward = AccuracyReward(labels={"eye": ["Glaucoma", "Healthy"]})
    assert reward([chat(r"\boxed{Healthy}")], solution=["Healthy"], dataset=["eye"]) == [1.0]
    assert reward([chat(r"\boxed{Cataract}")], solution=["Healthy"], dataset=["eye"]) == [0.0]
    assert reward.no_valid_label == 1


def test_format_reward_wants_think_then_boxed():
    completions = [
        chat(r"<think>a lesion</think> \boxed{NV}"),
        chat(r"\boxed{NV}"),
        chat(r"<think>a lesion</think> NV"),
        chat(r"<think></think>\boxed{NV}"),
        [{"role": "assistant", "content": [{"type": "text", "text": r"<think>x</think>\boxed{NV}"}]}],
    ]
    assert format_reward(completions) == [1.0, 0.0, 0.0, 0.0, 1.0]


# --- the exact-set reward: an answer cannot score by listing more labels -----------------------------

ALL_LABELS = r"<think>x</think>\boxed{Pneumonia, Normal, Covid}"


def test_listing_every_label_never_scores_with_or_without_a_declared_set():
    completions = [chat(ALL_LABELS), chat(r"\boxed{Normal}"), chat(r"\boxed{Normal, Edema}")]
    solution = ["Normal"] * 3
    # No declared set: the answer's items against the reference's, as normalised strings.
    assert AccuracyReward()(completions, solution=solution, dataset=["cxr_site_a"] * 3) == [0.0, 1.0, 0.0]
    declared = AccuracyReward(labels={"cxr_site_a": ["Normal", "Pneumonia", "Covid"]})
    assert declared(completions, solution=solution, dataset=["cxr_site_a"] * 3) == [0.0, 1.0, 0.0]
    # A known dataset: its built-in set; a label outside it ("TB") makes the answer name no valid label.
    assert AccuracyReward()(
        [chat(r"\boxed{No Finding, TB}"), chat(r"\boxed{normal}")],
        solution=["No Finding"] * 2,
        dataset=["chexpert"] * 2,
    ) == [0.0, 1.0]


def test_declared_label_sets_come_from_json_a_file_or_a_config(tmp_path):
    (tmp_path / "labels.yaml").write_text("eye: [Glaucoma, Healthy]\n")
    for labels in ('{"eye": ["Glaucoma", "Healthy"]}', str(tmp_path / "labels.yaml")):
        reward = AccuracyReward(labels=labels)
        assert reward.label_set("eye") == ("Glaucoma", "Healthy")
    with pytest.raises(ValueError, match="neither a JSON mapping nor a file"):
        AccuracyReward(labels=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="'eye' must be a list"):
        AccuracyReward(labels={"eye": "Glaucoma"})


def test_config_label_sets_and_solution_column_reach_the_shared_reward(tmp_path):
    from types import SimpleNamespace

    from fair_trl.rewards import accuracy_reward, format_reward, with_config_label_sets

    config = SimpleNamespace(label_sets={"eye": ["Glaucoma", "Healthy"]}, solution_column="label", domain_column="site")
    funcs = with_config_label_sets([accuracy_reward, format_reward], config)
    assert funcs[1] is format_reward and funcs[0] is not accuracy_reward
    # TRL passes every column by name: the reference from solution_column, the domain from domain_column.
    assert funcs[0]([chat(r"\boxed{Healthy, Glaucoma}"), chat(r"\boxed{healthy}")], label=["Healthy"] * 2,
                    site=["eye"] * 2) == [0.0, 1.0]  # fmt: skip
    defaults = SimpleNamespace(label_sets=None, solution_column="solution", domain_column="dataset")
    assert with_config_label_sets([accuracy_reward], defaults)[0] is accuracy_reward


def test_accuracy_reward_names_the_missing_solution_column():
    # TRL calls it with the dataset's columns; a dataset whose references are in "label" has no "solution".
    with pytest.raises(ValueError, match=r"column 'solution'.*\['dataset', 'label'\].*solution_column"):
        AccuracyReward()([chat(r"\boxed{NV}")], dataset=["ham10000"], label=["NV"])


def test_an_integer_domain_column_is_read_as_text():
    reward = AccuracyReward(labels={"3": ["A", "B"]})
    assert reward([chat(r"\boxed{A}"), chat(r"\boxed{A, B}")], solution=["A", "A"], dataset=[3, 3]) == [1.0, 0.0]
    assert AccuracyReward()([chat(r"\boxed{A}")], solution=["A"], dataset=[7]) == [1.0]


def test_training_never_rewards_a_completion_that_lists_every_label(text_model_dir, tmp_path):
    """Real TRL steps in which one completion per prompt lists every label: its accuracy reward is always 0."""
    from conftest import trainer_config
    from datasets import Dataset

    from fair_trl import FairGRPOConfig, FairGRPOTrainer, accuracy_reward

    answers = [
        ALL_LABELS,
        r"<think>x</think>\boxed{Normal}",
        r"<think>x</think>\boxed{Covid}",
        r"\boxed{Covid, Normal}",
    ]

    def rollout(prompts, trainer):
        # Each prompt's G completions in order: the one listing every label, the right one, two wrong ones.
        tokenizer = trainer.processing_class
        rendered = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
        prompt_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
        texts = [answers[i % len(answers)] for i in range(len(prompts))]
        completion_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    scored = []

    def recorded_accuracy(completions, **kwargs):
        # What TRL passed and what accuracy_reward returned, for every completion of every step.
        rewards = accuracy_reward(completions, **kwargs)
        scored.extend(zip((completion_text(c) for c in completions), rewards, strict=True))
        return rewards

    n = 8
    data = Dataset.from_dict(
        {
            "prompt": [
                [{"role": "user", "content": f"Chest X-ray {i}: Normal, Pneumonia or Covid?"}] for i in range(n)
            ],
            "solution": ["Normal"] * n,
            "dataset": ["cxr_site_a"] * n,
            "sex": ["F", "M"] * (n // 2),
            "age": [30, 60] * (n // 2),
        }
    )
    trainer = FairGRPOTrainer(
        model=text_model_dir,
        reward_funcs=[recorded_accuracy],
        args=FairGRPOConfig(**trainer_config(tmp_path, max_completion_length=32)),
        train_dataset=data,
        rollout_func=rollout,
    )
    trainer.train()
    gamed = [reward for text, reward in scored if "Pneumonia, Normal, Covid" in text]
    right = [reward for text, reward in scored if text.endswith(r"\boxed{Normal}")]
    assert trainer.state.global_step == 3 and len(gamed) == len(right) == len(scored) // 4 >= 6
    assert set(gamed) == {0.0} and set(right) == {1.0}


def test_numeric_and_missing_references_score_instead_of_crashing():
    """A label column stored as numbers (0/1) is read as the labels' text; None and NaN name no label."""
    from fair_trl.rewards import accuracy_reward

    completions = [r"\boxed{1}", r"\boxed{0}", r"\boxed{1}", r"\boxed{True}", r"\boxed{1}"]
    solutions = [1, 1, None, True, float("nan")]
    assert accuracy_reward(completions, solution=solutions, dataset=["site"] * 5) == [1.0, 0.0, 0.0, 1.0, 0.0]
