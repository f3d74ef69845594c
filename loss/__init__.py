"""Loss building blocks that are given, not exercised.

- `names`: the lists of names accepted everywhere (aggregation modes, KL estimators, importance-sampling levels)
- `masked`: masked_sum, masked_mean, masked_var, masked_whiten (reductions over response tokens)
- `advantages`: rloo, GRPO pass@k, ReMax, REINFORCE++ (and its group-baseline form), OPO and GPG advantage
  estimators, and ADVANTAGE_ESTIMATORS, the registry keyed by verl's names that the trainers choose from
- `aggregation`: agg_loss, verl's loss aggregation (the modes of names.LOSS_AGG_MODES)
- `policy_losses`: POLICY_LOSSES, the registry keyed by verl's loss_mode names (vanilla with the dual clip, gspo,
  cispo, geo_mean, sapo, gpg, clip_cov, kl_cov, dppo_tv, dppo_kl), each checked against verl 0.9.1 / TRL 1.16.0
- `corrections`: importance-sampling corrections for a sampler that is not the trainer (ROLLOUT_CORRECTIONS,
  verl's rollout_is / rollout_rs, TRL's vllm_importance_sampling_mode), high-entropy token selection, masking of
  truncated completions
- `dapo`: DAPO's soft overlong penalty and its dynamic-sampling group filter
- `metrics`: clip_fraction, the share of tokens whose gradient the PPO clip cuts
- `shapes`: check_same_shape, one clear ValueError for inputs of the wrong shape

The exercises (group_advantages, kl_estimate, aggregate_loss, GRPOLoss, compute_gae, PPOLoss) live in exercises/
(yours) and solutions/ (the reference). `aggregation` and `policy_losses` compute some of the same sums in verl's
library form, for the menu of lesson 07: write your exercises from the formulas before you read them.
"""
from .advantages import (ADVANTAGE_ESTIMATORS, GROUP_ESTIMATORS, estimate_advantages, grpo_passk_advantages,
                         outcome_token_rewards, reinforce_plus_plus_advantages, remax_advantages, rloo_advantages)
from .aggregation import agg_loss
from .corrections import (ROLLOUT_CORRECTIONS, correction_weights, high_entropy_mask, mask_truncated_completions,
                          mismatch_metrics, rollout_is_weights, rollout_rejection_mask, vllm_importance_sampling_ratio)
from .dapo import keep_informative_groups, overlong_penalty
from .metrics import clip_fraction
from .masked import masked_count, masked_mean, masked_sum, masked_var, masked_whiten
from .names import IMPORTANCE_SAMPLING_LEVELS, KL_ESTIMATORS, LOSS_AGG_MODES
from .policy_losses import LINEAR_IN_ADVANTAGE, POLICY_LOSSES, policy_loss
from .shapes import check_same_shape

__all__ = [
    "masked_sum", "masked_count", "masked_mean", "masked_var", "masked_whiten",
    "ADVANTAGE_ESTIMATORS", "GROUP_ESTIMATORS", "estimate_advantages", "outcome_token_rewards",
    "rloo_advantages", "grpo_passk_advantages", "remax_advantages", "reinforce_plus_plus_advantages",
    "overlong_penalty", "keep_informative_groups", "clip_fraction",
    "LOSS_AGG_MODES", "KL_ESTIMATORS", "IMPORTANCE_SAMPLING_LEVELS",
    "check_same_shape",
    "agg_loss", "POLICY_LOSSES", "LINEAR_IN_ADVANTAGE", "policy_loss",
    "ROLLOUT_CORRECTIONS", "correction_weights", "rollout_is_weights", "rollout_rejection_mask",
    "vllm_importance_sampling_ratio", "mismatch_metrics", "high_entropy_mask", "mask_truncated_completions",
]
