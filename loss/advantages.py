"""The advantage estimators: critic-free baselines, and the registry the trainers choose from by name.

Shapes: B prompts, G samples per prompt, N sequences, T response tokens. Rewards of a group
share a row: rewards[b, g] is the reward of sample g of prompt b. Unbiased std (N-1), as torch,
verl and TRL use. Each function matches the estimator of the same name in verl 0.9.1's
`verl/trainer/ppo/core_algos.py`, vectorised over groups instead of looping over a group index.

ADVANTAGE_ESTIMATORS maps verl's `algorithm.adv_estimator` names (plus the course's "dr_grpo") to one
calling convention, so a trainer needs no branch per estimator:

    estimator(rewards [B, G], response_mask [B, G, T], *, normalize_std, eps, gamma, baseline_rewards)
        -> advantages [B, G] (one per completion) or [B, G, T] (one per token, 0 on padding)

The outcome reward of a completion sits on its last response token (the EOS), as verl's token_level_rewards.
"""
import torch

from .masked import masked_whiten


def _check_groups(rewards: torch.Tensor, name: str) -> None:
    if rewards.ndim != 2 or rewards.size(1) < 2:
        raise ValueError(
            f"{name} needs rewards of shape [B, G] with G >= 2 samples per prompt, got shape {tuple(rewards.shape)}"
        )


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE Leave-One-Out (Ahmadian et al. 2024, arXiv:2402.14740).

        A_i = r_i - 1/(G-1) * sum_{j != i} r_j  =  G/(G-1) * (r_i - mean(r))

    The baseline of a sample is the mean reward of the *other* samples of its prompt, so it does not
    depend on the sample's own reward (an unbiased baseline). rewards: [B, G] -> advantages [B, G].
    """
    _check_groups(rewards, "rloo_advantages")
    group_size = rewards.shape[1]
    return group_size / (group_size - 1) * (rewards - rewards.mean(dim=1, keepdim=True))


def grpo_passk_advantages(rewards: torch.Tensor, normalize_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Pass@k training (Tang et al. 2025, arXiv:2503.19595), verl's GRPO_PASSK.

        A_best = (r_max - r_second) / (std(r) + eps),   A_i = 0 for every other sample

    Only the best sample of each group is pushed up, by its margin over the runner-up (optionally
    divided by the group std). On ties the first best sample gets the (zero) margin.
    rewards: [B, G] -> advantages [B, G].
    """
    _check_groups(rewards, "grpo_passk_advantages")
    top_two = rewards.topk(2, dim=1).values                 # [B, 2]
    margin = top_two[:, 0] - top_two[:, 1]                  # [B]
    if normalize_std:
        margin = margin / (rewards.std(dim=1) + eps)
    best = rewards.argmax(dim=1, keepdim=True)              # [B, 1], first best on ties
    return torch.zeros_like(rewards).scatter(1, best, margin.unsqueeze(1))


def remax_advantages(rewards: torch.Tensor, baseline_rewards: torch.Tensor) -> torch.Tensor:
    """ReMax (Li et al. 2023, arXiv:2310.10505).

        A_i = r(x_i, y_i) - r(x_i, y_greedy_i)

    The baseline is the reward of the greedy completion of the same prompt: one extra greedy rollout
    per prompt instead of a critic. rewards, baseline_rewards: [N] -> advantages [N].
    """
    if rewards.shape != baseline_rewards.shape:
        raise ValueError(
            f"remax_advantages needs rewards and baseline_rewards of one shape, "
            f"got {tuple(rewards.shape)} and {tuple(baseline_rewards.shape)}"
        )
    return rewards - baseline_rewards


def reinforce_plus_plus_advantages(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """REINFORCE++ (Hu 2025, arXiv:2501.03262).

        G_t = sum_{k >= t} gamma^(k - t) r_k        (return-to-go over the response tokens)
        A_t = (G_t - mean(G)) / sqrt(var(G) + 1e-8)  (whitened over every response token of the batch)

    token_rewards: [N, T] (usually the outcome reward on the last response token, maybe a per-token
    KL penalty), mask: [N, T]. Returns advantages [N, T], 0 on padding. Needs at least 2 response tokens.
    """
    if token_rewards.shape != mask.shape:
        raise ValueError(
            f"reinforce_plus_plus_advantages needs token_rewards and mask of one shape, "
            f"got {tuple(token_rewards.shape)} and {tuple(mask.shape)}"
        )
    is_response = mask.bool()
    rewards = torch.where(is_response, token_rewards, torch.zeros_like(token_rewards))
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    whitened = masked_whiten(returns, is_response)
    return torch.where(is_response, whitened, torch.zeros_like(whitened))


# ---------------------------------------------------------------------------------------------- the registry
def outcome_token_rewards(rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """rewards [B, G] and response_mask [B, G, T] -> token rewards [B, G, T]: each reward on its row's last
    response token, 0 elsewhere (verl's token_level_rewards for an outcome reward). Empty rows get nothing."""
    mask = response_mask.to(rewards.dtype)
    lengths = mask.sum(dim=-1).long()
    last = (lengths - 1).clamp(min=0).unsqueeze(-1)
    placed = (rewards * (lengths > 0).to(rewards.dtype)).unsqueeze(-1)
    return torch.zeros_like(mask).scatter(-1, last, placed)


def _needs_mask(response_mask, name: str) -> None:
    if response_mask is None:
        raise ValueError(f"the {name} estimator gives one advantage per token: it needs the response_mask [B, G, T]")


def grpo(rewards, response_mask=None, *, normalize_std=True, eps=1e-6, **_):
    """GRPO (Shao et al. 2024, arXiv:2402.03300): A_i = (r_i - mean_g r) / (std_g r + eps), or r_i - mean_g r
    without normalize_std. verl: compute_grpo_outcome_advantage (norm_adv_by_std_in_grpo)."""
    _check_groups(rewards, "grpo")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True) + eps) if normalize_std else centred


def dr_grpo(rewards, response_mask=None, **_):
    """Dr. GRPO (Liu et al. 2025, arXiv:2503.20783): A_i = r_i - mean_g r, never divided by the std.
    verl: "grpo" with norm_adv_by_std_in_grpo=False."""
    return grpo(rewards, normalize_std=False)


def rloo(rewards, response_mask=None, **_):
    """RLOO: A_i = r_i - mean of the other G-1 rewards (rloo_advantages). verl: compute_rloo_outcome_advantage."""
    return rloo_advantages(rewards)


def grpo_passk(rewards, response_mask=None, *, normalize_std=True, eps=1e-6, **_):
    """Pass@k (Tang et al. 2025, arXiv:2503.19595): only each group's best sample is non-zero, by its margin over
    the runner-up (grpo_passk_advantages). verl: compute_grpo_passk_outcome_advantage."""
    return grpo_passk_advantages(rewards, normalize_std=normalize_std, eps=eps)


def reinforce_plus_plus(rewards, response_mask=None, *, gamma=1.0, **_):
    """REINFORCE++ (Hu 2025, arXiv:2501.03262): the return-to-go of the outcome reward, whitened over every
    response token of the batch; no group baseline. verl: compute_reinforce_plus_plus_outcome_advantage.
    Returns [B, G, T]."""
    _needs_mask(response_mask, "reinforce_plus_plus")
    token_rewards = outcome_token_rewards(rewards, response_mask)
    advantages = reinforce_plus_plus_advantages(token_rewards.flatten(0, 1), response_mask.flatten(0, 1), gamma)
    return advantages.view_as(token_rewards)


def remax(rewards, response_mask=None, *, baseline_rewards=None, **_):
    """ReMax (Li et al. 2023, arXiv:2310.10505): A_i = r_i - r(greedy answer of the same prompt).
    baseline_rewards: [B] or [B, G] (the greedy answer's reward). verl: compute_remax_outcome_advantage."""
    if baseline_rewards is None:
        raise ValueError("the remax estimator needs baseline_rewards: the reward of each prompt's greedy answer")
    baseline = baseline_rewards if baseline_rewards.dim() == 2 else baseline_rewards.unsqueeze(1)
    return remax_advantages(rewards, baseline.expand_as(rewards))


def reinforce_plus_plus_baseline(rewards, response_mask=None, **_):
    """REINFORCE++ with a group baseline (Hu 2025, arXiv:2501.03262, "REINFORCE++-baseline").

        A_i,t = whiten_batch(r_i - mean_g r)        the same value on every response token of completion i, then
                                                   whitened over every response token of the batch

    The group mean removes the prompt's difficulty (as GRPO), the batch-wide whitening replaces GRPO's per-group
    std (a group whose rewards barely differ is not blown up). The whitening counts tokens, so longer completions
    weigh more in its mean and variance. verl: compute_reinforce_plus_plus_baseline_outcome_advantage.
    Returns [B, G, T] (0 on padding); needs at least 2 response tokens in the batch.
    """
    _check_groups(rewards, "reinforce_plus_plus_baseline")
    _needs_mask(response_mask, "reinforce_plus_plus_baseline")
    is_response = response_mask.bool()
    centred = (rewards - rewards.mean(dim=1, keepdim=True)).unsqueeze(-1).expand(is_response.shape)
    centred = torch.where(is_response, centred, torch.zeros_like(centred))
    whitened = masked_whiten(centred, is_response)
    return torch.where(is_response, whitened, torch.zeros_like(whitened))


def opo(rewards, response_mask=None, **_):
    """On-Policy RL with Optimal reward baseline, OPO (Hao et al. 2025, arXiv:2505.23585).

        b = sum_g |y_g| r_g / sum_g |y_g|      the length-weighted mean reward of the group
        A_i = r_i - b

    For a sequence-level policy gradient the variance-minimising baseline weighs each sample by the squared norm of
    its score function, which grows with its length: a long completion pulls the baseline toward its reward. No
    std division. verl: compute_opo_outcome_advantage. Returns [B, G]; a group whose completions are all empty
    gets baseline 0 (verl divides 0 by 0).
    """
    _check_groups(rewards, "opo")
    _needs_mask(response_mask, "opo")
    lengths = response_mask.to(rewards.dtype).sum(dim=-1)                       # [B, G]
    total = lengths.sum(dim=1, keepdim=True)
    baseline = (lengths * rewards).sum(dim=1, keepdim=True) / torch.where(total > 0, total, torch.ones_like(total))
    return rewards - baseline


def gpg(rewards, response_mask=None, *, f_norm=1.0, **_):
    """Group Policy Gradient's advantage, GPG (Chu et al. 2025, arXiv:2504.02546).

        alpha = N / (number of non-zero rewards in the batch)       N = B * G completions
        A_i   = alpha * (r_i - mean_g r) / f_norm

    No std division; alpha scales the gradient back up when many samples carry no signal, so a batch full of
    uninformative groups does not shrink the step. This counts non-zero REWARDS, as verl 0.9.1 does
    (compute_gpg_outcome_advantage); the paper's correction counts the samples that carry a gradient.
    Returns [B, G]. Pair it with the "gpg" policy loss (loss.policy_losses).
    """
    _check_groups(rewards, "gpg")
    alpha = rewards.numel() / torch.count_nonzero(rewards).clamp(min=1)
    return alpha * (rewards - rewards.mean(dim=1, keepdim=True)) / f_norm


ADVANTAGE_ESTIMATORS = {
    "grpo": grpo,
    "dr_grpo": dr_grpo,
    "rloo": rloo,
    "grpo_passk": grpo_passk,
    "reinforce_plus_plus": reinforce_plus_plus,
    "remax": remax,
    "reinforce_plus_plus_baseline": reinforce_plus_plus_baseline,
    "opo": opo,
    "gpg": gpg,
}
# What a trainer can compute from the rewards and the rollout alone: ReMax also needs each prompt's greedy answer.
NEEDS_GREEDY_BASELINE = ("remax",)
GROUP_ESTIMATORS = tuple(name for name in ADVANTAGE_ESTIMATORS if name not in NEEDS_GREEDY_BASELINE)


def estimate_advantages(name: str, rewards, response_mask=None, **settings) -> torch.Tensor:
    """ADVANTAGE_ESTIMATORS[name](rewards, response_mask, **settings), with one clear error for an unknown name."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}: choose one of {', '.join(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[name](rewards, response_mask, **settings)
