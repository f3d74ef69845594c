"""The RL recipes: every hyperparameter of `python -m training grpo|ppo|demo` and of lessons 09-10, per task.

RL_DEFAULTS[algo][task] is a plain dict; a command-line flag left unset takes its value from here, and the
lessons read the same rows, so the command line and the lessons train the same way. The figures were
measured on the course's 2-core CPU machine (README, "Results").
"""
COMMON = dict(steps=240, prompts_per_step=32, group_size=8, lr=2e-4, warmup=10, schedule="cosine", kl_beta=0.0,
              clip_epsilon=0.2, clip_epsilon_high=None, temperature=0.2, reward="partial", eval_every=10,
              max_grad_norm=1.0, num_minibatches=2, stop_at_accuracy=None, time_budget_s=None)
# The 2025-26 menu (training/menu.py): None / False keep the exercise's GRPOLoss and the policy's own rollout.
MENU_DEFAULTS = dict(policy_loss=None, rollout_correction=None, rollout_correction_threshold=None,
                     top_entropy_quantile=None, mask_truncated=False, sampler_mismatch=None)
GRPO_COMMON = dict(COMMON, num_iterations=2, normalize_std=True, loss_agg_mode="seq-mean-token-mean",
                   advantage_estimator="grpo", dynamic_sampling=False, overlong_penalty=0, **MENU_DEFAULTS)
PPO_COMMON = dict(COMMON, group_size=1, prompts_per_step=128, num_minibatches=4, epochs=2, critic_lr=1e-3,
                  gamma=1.0, lam=0.95, target_kl=None, value_loss_coef=0.5, entropy_coef=0.0, value_clip=None)
RL_DEFAULTS = {
    "grpo": {
        "sort": dict(GRPO_COMMON, steps=300, lr=4e-4, num_iterations=1, eval_every=20, dynamic_sampling=True),
        "add": dict(GRPO_COMMON, steps=360, lr=1e-3, temperature=1.0, reward="exact", eval_every=20),
    },
    "ppo": {
        "sort": dict(PPO_COMMON),
        "add": dict(PPO_COMMON),
    },
}
ALGORITHMS = tuple(RL_DEFAULTS)
KL_PROMPTS = 64  # held-out prompts sampled at each evaluation to measure KL(pi_theta || pi_ref)
PLOTS = {  # the panels of curves.png
    "grpo": ("reward_mean", "accuracy", "kl_to_ref", "clip_fraction", "response_length", "zero_std_fraction"),
    "ppo": ("reward_mean", "accuracy", "kl_to_ref", "clip_fraction", "response_length", "value_loss",
            "explained_variance"),
}


def defaults_for(algo: str, task_name: str) -> dict:
    """A copy of RL_DEFAULTS[algo][task_name] (a task without a row of its own takes sort's)."""
    rows = RL_DEFAULTS[algo]
    return dict(rows.get(task_name, rows["sort"]))
