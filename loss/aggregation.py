"""How a per-token loss matrix becomes one number: verl's `agg_loss`, the form the policy-loss registry uses.

With L the loss [N, T], M the mask [N, T], n_i = sum_t M_i,t and R the rows with n_i > 0:

    "token-mean"               sum(L M) / sum(M)                       every token weighs the same (DAPO)
    "seq-mean-token-mean"      1/|R| sum_{i in R} sum_t L M / n_i        every sequence weighs the same (GRPO)
    "seq-mean-token-sum"       1/|R| sum_{i in R} sum_t L M
    "seq-mean-token-sum-norm"  sum(L M) / (|R| * max_len)                 a constant divisor (Dr. GRPO)

The modes are loss.names.LOSS_AGG_MODES. This is verl 0.9.1's `verl.trainer.ppo.core_algos.agg_loss` on one
process (dp_size=1; max_len is its loss_scale_factor, T by default), with two deliberate differences: an all-zero
mask gives 0 instead of NaN, and "seq-mean-token-mean" divides by n_i exactly (verl adds 1e-8 to n_i, a relative
difference below 1e-8). Padding may hold any value, even inf or NaN: it never reaches the result (verl multiplies
by the mask, so an inf in the padding gives NaN there). The exercise `aggregate_loss` (solutions/grpo_loss.py)
computes the same sums; this copy is the given one that loss/ may import.
"""
import torch

from .masked import masked_mean, masked_sum
from .names import LOSS_AGG_MODES


def check_loss_agg_mode(mode: str) -> None:
    """One clear ValueError for a mode that is not in LOSS_AGG_MODES."""
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode {mode!r}: choose one of {', '.join(LOSS_AGG_MODES)}")


def agg_loss(loss_mat: torch.Tensor, loss_mask: torch.Tensor, loss_agg_mode: str = "token-mean",
             max_len: int | None = None) -> torch.Tensor:
    """loss_mat [N, T], loss_mask [N, T] (float or bool) -> scalar, by `loss_agg_mode` (see the module docstring).

    Written in verl's order: a token mean, or a sum (or mean) per sequence, then a mean over the sequences that
    have tokens, then (seq-mean-token-sum-norm) one more constant divisor."""
    check_loss_agg_mode(loss_agg_mode)
    mask = loss_mask.to(loss_mat.dtype)
    if loss_agg_mode == "token-mean":                                   # verl: masked_sum / batch_num_tokens
        token_count = mask.sum()
        return masked_sum(loss_mat, mask) / torch.where(token_count > 0, token_count, torch.ones_like(token_count))
    per_sequence = masked_mean if loss_agg_mode == "seq-mean-token-mean" else masked_sum
    seq_losses = per_sequence(loss_mat, mask, dim=-1)                   # token-mean / token-sum of each sequence
    loss = masked_mean(seq_losses, mask.sum(dim=-1) > 0)                # seq-mean over the non-empty sequences
    if loss_agg_mode == "seq-mean-token-sum-norm":
        loss = loss / (loss_mat.shape[-1] if max_len is None else max_len)
    return loss
