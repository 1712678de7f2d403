"""Checkpoints a kill cannot tear, resumes under the checkpoint's own group settings, data big enough to train.

The SIGKILL-inside-a-checkpoint run is in tests/test_resume.py; these are the quick checks around it.
"""

import json
import logging
import os
import re

import pytest
from conftest import length_reward, text_dataset, trainer_config

from fair_trl import FairGRPOConfig, FairGRPOTrainer
from fair_trl.checkpoint_io import CheckpointFiles, newest_complete_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_checkpoint(folder, complete=True):
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": 1}))


def test_resume_true_skips_a_checkpoint_cut_short_and_says_so(tmp_path, caplog):
    make_checkpoint(tmp_path / "checkpoint-3")
    make_checkpoint(tmp_path / "checkpoint-6", complete=False)  # as transformers' in-place write leaves a kill
    make_checkpoint(tmp_path / "checkpoint-9", complete=False)
    (tmp_path / "checkpoint-9" / "trainer_state.json").write_text('{"global_st')
    with caplog.at_level(logging.WARNING):
        assert newest_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-3")
    assert "checkpoint-9: its trainer_state.json is not whole JSON" in caplog.text
    assert "checkpoint-6: it has no trainer_state.json" in caplog.text
    files = CheckpointFiles({})
    assert files.resolve(True, str(tmp_path)) == str(tmp_path / "checkpoint-3")
    with pytest.raises(ValueError, match=r"checkpoint-6 is not a complete checkpoint.*checkpoint-3"):
        files.resolve(str(tmp_path / "checkpoint-6"), str(tmp_path))
    with pytest.raises(ValueError, match="No complete checkpoint"):
        files.resolve(True, str(tmp_path / "empty"))


def trainer(model_dir, tmp_path, data=None, **overrides):
    args = FairGRPOConfig(**trainer_config(tmp_path, **overrides))
    return FairGRPOTrainer(
        model=model_dir, reward_funcs=length_reward, args=args, train_dataset=text_dataset() if data is None else data
    )


def test_checkpoints_are_published_whole_and_rotated_and_a_resume_under_other_groups_is_refused(
    text_model_dir, tmp_path
):
    trainer(text_model_dir, tmp_path, max_steps=3, save_strategy="steps", save_steps=1, save_total_limit=2).train()
    out = tmp_path / "out"
    # Only renamed, complete checkpoints: save_total_limit kept the newest two, no staging folder is left.
    assert sorted(p for p in os.listdir(out) if "checkpoint" in p) == ["checkpoint-2", "checkpoint-3"]
    assert (out / "checkpoint-3" / "trainer_state.json").is_file()

    other = trainer(text_model_dir, tmp_path, max_steps=4, demographic_columns=["sex"], age_bins=[30, 60])
    with pytest.raises(ValueError) as refused:
        other.train(resume_from_checkpoint=True)
    message = str(refused.value)
    assert "checkpoint-3 was saved under other group settings" in message
    assert "demographic_columns: ['sex', 'age'] in the checkpoint, ['sex'] now" in message
    assert re.search(
        r"age_bins: \[25(\.0)?, 50(\.0)?, 75(\.0)?\] in the checkpoint, \[30(\.0)?, 60(\.0)?\] now", message
    )
    assert "max_age" not in message  # unchanged settings are not named
    # The same settings resume.
    same = trainer(text_model_dir, tmp_path, max_steps=4, save_strategy="steps", save_steps=1, save_total_limit=2)
    same.train(resume_from_checkpoint=True)
    assert same.state.global_step == 4


@pytest.mark.parametrize("rows", [0, 1])
def test_a_train_dataset_smaller_than_one_generation_batch_is_refused_naming_the_sizes(text_model_dir, tmp_path, rows):
    data = text_dataset().select(range(rows))
    # 8 completions per device step / 4 generations = 2 prompts per generation batch.
    with pytest.raises(ValueError) as refused:
        trainer(text_model_dir, tmp_path, data=data)
    message = str(refused.value)
    assert ("is empty" if rows == 0 else "has 1 rows") in message
    assert "takes 2 prompts" in message and "num_generations 4" in message
    trainer(text_model_dir, tmp_path, data=text_dataset().select(range(2)))  # one whole batch: accepted
