"""Worker for the multi-process recipe test: recipes/fairmedgemma.py's own `main`, with its trainer recording.

    accelerate launch --config_file recipes/accelerate/fsdp.yaml ... tests/scripts/recipe_worker.py OUT.json \\
        --config recipes/fairmedgemma.yaml [recipe arguments]

Runs the recipe as `accelerate launch ... recipes/fairmedgemma.py` would, except that its
`FairGRPOTrainer` records the global advantages each rank computed and the distributed setup it ran
under, and its format reward also pays a little for length: a random tiny model never earns the
recipe's rewards, and advantages that are all 0 would agree across ranks whatever the ranks did.
Every rank writes OUT.rank{N}.json when the recipe returns. Not collected by pytest.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fair_trl.rewards import completion_text  # noqa: E402

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "fairmedgemma.py"


def load_recipe():
    spec = importlib.util.spec_from_file_location("fairmedgemma_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    out = sys.argv.pop(1)
    recipe = load_recipe()
    trainers = []

    class RecordingTrainer(recipe.FairGRPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.records = []
            trainers.append(self)

        def _compute_advantages(self, rewards, inputs):
            advantages = super()._compute_advantages(rewards, inputs)
            self.records.append(
                {"step": self.state.global_step, "rewards": rewards.tolist(), "advantages": advantages.tolist()}
            )
            return advantages

    format_reward = recipe.format_reward

    def format_or_length_reward(completions, **kwargs):
        formatted = format_reward(completions, **kwargs)
        return [f + min(len(completion_text(c)), 40) / 400 for f, c in zip(formatted, completions, strict=True)]

    recipe.FairGRPOTrainer = RecordingTrainer
    recipe.format_reward = format_or_length_reward
    recipe.main(*recipe.make_parser().parse_args_and_config())
    (trainer,) = trainers
    accelerator = trainer.accelerator
    result = {
        "process_index": accelerator.process_index,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "fsdp": bool(getattr(trainer, "is_fsdp_enabled", False)),
        "model_class": type(trainer.model_wrapped).__name__,
        "global_step": trainer.state.global_step,
        "records": trainer.records,
        "estimator_state": trainer.fair_estimator.state_dict() if trainer.fair_estimator else None,
    }
    Path(f"{out}.rank{accelerator.process_index}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
