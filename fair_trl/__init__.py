"""fair-trl: FairGRPO, fairness-aware GRPO for clinical vision-language models, on TRL."""

from fair_trl.advantages import FairGRPOAdvantage, grpo
from fair_trl.config import FairGRPOConfig
from fair_trl.groups import GroupKeyer
from fair_trl.trainer import FairGRPOTrainer

__all__ = ["FairGRPOAdvantage", "FairGRPOConfig", "FairGRPOTrainer", "GroupKeyer", "grpo"]
__version__ = "0.1.0"
