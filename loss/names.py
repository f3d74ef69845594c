"""The names that several places accept, each list defined once here and imported everywhere else.

    LOSS_AGG_MODES               how a per-token loss matrix becomes one number (verl's `loss_agg_mode` names)
    KL_ESTIMATORS                the per-token estimates of KL(pi_theta || pi_ref) (John Schulman's k1, k2, k3)
    IMPORTANCE_SAMPLING_LEVELS   one ratio per token (GRPO, PPO) or one per sequence (GSPO)

The advantage estimators are the keys of `loss.advantages.ADVANTAGE_ESTIMATORS`.
"""
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
