"""The advantage-estimator zoo: critic-free baselines beyond GRPO's group mean.

Shapes: B prompts, G samples per prompt, N sequences, T response tokens. Rewards of a group
share a row: rewards[b, g] is the reward of sample g of prompt b. Unbiased std (N-1), as torch,
verl and TRL use. Each function matches the estimator of the same name in verl's
`verl/trainer/ppo/core_algos.py`, vectorised over groups instead of looping over a group index.
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
    """Pass@k training (Chen et al. 2025, arXiv:2503.19595), verl's GRPO_PASSK.

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
