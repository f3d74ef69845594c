"""Masked reductions over response tokens.

A mask is 1 (or True) on response tokens and 0 (False) on the padding after EOS. Bool and float
masks are both accepted. Padding may hold any value, even inf or NaN: it never reaches a result.

These follow verl's `verl.utils.torch_functional` (masked_sum, masked_mean, masked_var,
masked_whiten), with one deliberate difference: a mean over an empty mask is 0, not NaN.
"""
import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim=None, keepdim: bool = False) -> torch.Tensor:
    """sum_i m_i * x_i over `dim` (all elements when dim is None); padding cannot leak, even if it is inf."""
    mask = mask.to(values.dtype)
    weighted = torch.where(mask != 0, values * mask, torch.zeros_like(values))
    return weighted.sum(dim=dim, keepdim=keepdim)


def masked_count(mask: torch.Tensor, dim=None, keepdim: bool = False, dtype=torch.float32) -> torch.Tensor:
    """sum_i m_i: how many response tokens (the denominator of a masked mean)."""
    return mask.to(dtype).sum(dim=dim, keepdim=keepdim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None, keepdim: bool = False) -> torch.Tensor:
    """sum_i m_i x_i / sum_i m_i over `dim`; 0 (never NaN) where the mask is empty."""
    total = masked_sum(values, mask, dim=dim, keepdim=keepdim)
    count = masked_count(mask, dim=dim, keepdim=keepdim, dtype=values.dtype)
    return total / torch.where(count > 0, count, torch.ones_like(count))


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked elements: mean((x - mean)^2), times n / (n - 1) when unbiased (as torch.var).

    Raises ValueError when fewer than 2 elements are masked in (unbiased) or none at all (verl does the same).
    """
    count = int(masked_count(mask).item())
    if count < (2 if unbiased else 1):
        raise ValueError(f"masked_var needs at least {2 if unbiased else 1} masked-in elements, got {count}")
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) with the mean and unbiased variance over the masked elements (verl's masked_whiten).

    shift_mean=False adds the mean back: only the scale changes. Every position is transformed,
    padding included; multiply by the mask where padding must read 0.
    """
    mean = masked_mean(values, mask)
    whitened = (values - mean) * torch.rsqrt(masked_var(values, mask) + eps)
    return whitened if shift_mean else whitened + mean
