"""DAPO's reward shaping and batch filtering (Yu et al. 2025, arXiv:2503.14476).

DAPO's two other ingredients live in the GRPO loss: clip-higher (`GRPOLoss(clip_epsilon_high=0.28)`)
and token-level aggregation (`loss_agg_mode="token-mean"`).
"""
import torch


def overlong_penalty(lengths, max_len: int, cache_len: int) -> torch.Tensor:
    """Soft overlong punishment (DAPO, eq. 13), added to the task reward.

                   | 0                                   if |y| <= L_max - L_cache
        R(y)   =   | ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
                   | -1                                  if |y| > L_max

    Completions stay unpunished up to L_max - L_cache tokens, then lose reward linearly down to -1
    at L_max. lengths: [N] ints (tensor or list) -> penalties [N] float.
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(
            f"overlong_penalty needs 0 < cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}"
        )
    lengths = torch.as_tensor(lengths, dtype=torch.get_default_dtype())
    soft_start = max_len - cache_len
    ramp = (soft_start - lengths) / cache_len
    return torch.where(lengths <= soft_start, torch.zeros_like(lengths), ramp).clamp(min=-1.0)


def keep_informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """Dynamic sampling (DAPO, eq. 11): keep a group only if its rewards are not all equal.

        keep_b  =  0 < |{i : o_i is correct}| < G     (for 0/1 rewards; in general: max_i r_i != min_i r_i)

    A group whose samples all score the same has advantage 0 for every sample under any group
    baseline, so it only dilutes the batch. rewards: [B, G] -> bool mask [B]; `rewards[keep]` keeps them.
    """
    if rewards.dim() != 2:
        raise ValueError(f"keep_informative_groups needs rewards of shape [B, G], got shape {tuple(rewards.shape)}")
    return rewards.amax(dim=1) != rewards.amin(dim=1)
