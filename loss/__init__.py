"""Loss building blocks that are given, not exercised.

- `masked`: masked_sum, masked_mean, masked_var, masked_whiten (reductions over response tokens)
- `advantages`: rloo, GRPO pass@k, ReMax and REINFORCE++ advantage estimators
- `dapo`: DAPO's soft overlong penalty and its dynamic-sampling group filter
- `metrics`: clip_fraction, the share of tokens whose gradient the PPO clip cuts
- `shapes`: check_same_shape, one clear ValueError for inputs of the wrong shape

The exercises (group_advantages, aggregate_loss, GRPOLoss, compute_gae, PPOLoss) are not here: they
live in exercises/ (yours) and solutions/ (the reference).
"""
from .advantages import grpo_passk_advantages, reinforce_plus_plus_advantages, remax_advantages, rloo_advantages
from .dapo import keep_informative_groups, overlong_penalty
from .metrics import clip_fraction
from .masked import masked_count, masked_mean, masked_sum, masked_var, masked_whiten
from .shapes import check_same_shape

__all__ = [
    "masked_sum", "masked_count", "masked_mean", "masked_var", "masked_whiten",
    "rloo_advantages", "grpo_passk_advantages", "remax_advantages", "reinforce_plus_plus_advantages",
    "overlong_penalty", "keep_informative_groups", "clip_fraction",
    "check_same_shape",
]
