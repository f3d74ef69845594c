"""Diagnostics shared by the GRPO and PPO losses (logged, never differentiated)."""
import torch

from .masked import masked_mean


@torch.no_grad()
def clip_fraction(ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  clip_low: float, clip_high: float) -> float:
    """Share of response tokens whose gradient the PPO clip cuts (TRL's "is_region_clipped"):

        r > 1 + clip_high with A > 0,   or   r < 1 - clip_low with A < 0

    Near 0: the ratio barely moves; tens of percent: the policy runs away from pi_old between samples.
    """
    clipped = ((ratio > 1 + clip_high) & (advantages > 0)) | ((ratio < 1 - clip_low) & (advantages < 0))
    return masked_mean(clipped.to(ratio.dtype), mask).item()
