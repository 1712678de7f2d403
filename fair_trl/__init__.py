"""fair-trl: FairGRPO, fairness-aware GRPO for clinical vision-language models, on TRL.

Names are imported on first use, so light entry points (`fair-trl evaluate`, the metrics) start
without loading torch and TRL.
"""

import importlib
from typing import Any

_EXPORTS = {
    "FairGRPOAdvantage": "fair_trl.advantages",
    "grpo": "fair_trl.advantages",
    "REGISTRY": "fair_trl.advantages",
    "EstimatorSpec": "fair_trl.advantages",
    "FairGRPOConfig": "fair_trl.config",
    "FairGRPOTrainer": "fair_trl.trainer",
    "GroupKeyer": "fair_trl.groups",
    "compute_fairness": "fair_trl.metrics",
    "accuracy_reward": "fair_trl.rewards",
    "format_reward": "fair_trl.rewards",
    "build_dataset": "fair_trl.data",
    "ModelCardRecord": "fair_trl.model_card",
    "render_model_card": "fair_trl.model_card",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fair_trl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
