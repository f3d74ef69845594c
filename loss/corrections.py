"""Corrections for a sampler that is not the trainer, and token selection: per-token weights and masks.

An inference engine (vLLM, SGLang) samples the rollout with its own kernels, precision and truncation, so the
log-probabilities it reports, log mu(y_t), differ from the trainer's log pi_old(y_t) for the very same weights.
The gradient then needs the importance weight rho_t = pi_old(y_t) / mu(y_t) (Yao et al. 2025, "Your Efficient RL
Framework Secretly Brings You Off-Policy RL Training", fengyao.notion.site/off-policy-rl; Liu, Li et al. 2025,
"When Speed Kills Stability", richardli.xyz/rl-collapse). Unbounded rho has unbounded variance, so it is bounded:

    truncate (TIS)   w = min(rho, C)                        biased a little, variance bounded
    mask  (MIS)      w = rho if lo <= rho <= C else 0        drops the samples the sampler got badly wrong
                                                            (IcePop when lo > 0)

at the token level (rho_t) or the sequence level (rho = prod_t rho_t, one weight for every token of the row).
The weights multiply each token's policy loss (verl: pg_losses * rollout_is_weights; TRL: per_token_loss *
importance_sampling_ratio) and carry no gradient. Shapes: [N, T] (flatten the course's [B, G, T]).

    ROLLOUT_CORRECTIONS           the course's names -> verl 0.9.1's rollout_is / threshold form and TRL 1.16.0's mode
    rollout_is_weights            verl's compute_rollout_correction_weights
    vllm_importance_sampling_ratio  TRL's GRPOTrainer IS ratio (vllm_importance_sampling_mode)
    rollout_rejection_mask        verl's compute_rollout_rejection_mask (rollout_rs): a mask that drops rows or tokens
    mismatch_metrics              how far sampler and trainer are apart (verl's compute_offpolicy_metrics, in part)
    high_entropy_mask             TRL's top_entropy_quantile (Wang et al. 2025, arXiv:2506.01939)
    mask_truncated_completions    TRL's mask_truncated_completions (DAPO's overlong filtering, Yu et al. 2025,
                                  arXiv:2503.14476)

One deliberate difference from verl: log-ratios are not clamped to [-20, 20] before exp (a ratio that overflows to
inf is truncated to C or masked just the same; below e^-20 a weight is ~0 either way). Padding may hold any value.
"""
import math

import torch

from .masked import masked_mean, masked_sum

# name -> (level, kind). The threshold C is verl's rollout_is_threshold: truncate clamps w to <= C; mask keeps
# 1/C <= rho <= C (verl writes the IcePop bounds as the string "lower_upper"; TRL calls them
# vllm_importance_sampling_clip_min / _clip_max).
ROLLOUT_CORRECTIONS = {
    "token_tis": ("token", "truncate"),          # verl rollout_is="token", threshold C        TRL "token_truncate"
    "sequence_tis": ("sequence", "truncate"),    # verl rollout_is="sequence", threshold C     TRL "sequence_truncate"
    "token_mask": ("token", "mask"),             # verl rollout_is="token", "1/C_C" (IcePop)   TRL "token_mask"
    "sequence_mask": ("sequence", "mask"),       # verl rollout_is="sequence", "1/C_C"         TRL "sequence_mask"
}
DEFAULT_THRESHOLD = 2.0  # verl 0.9.1's rollout_is_threshold default (TRL 1.16.0's clip_max default is 3.0)
TRL_MODES = {"token_tis": "token_truncate", "sequence_tis": "sequence_truncate",
             "token_mask": "token_mask", "sequence_mask": "sequence_mask"}
ROLLOUT_RS_OPTIONS = ("token_k1", "token_k2", "token_k3", "seq_sum_k1", "seq_sum_k2", "seq_sum_k3",
                      "seq_mean_k1", "seq_mean_k2", "seq_mean_k3", "seq_max_k2", "seq_max_k3")


def _clean_log_ratio(old_log_prob, rollout_log_prob, response_mask):
    """log(pi_old / mu) with padding (and unscored NaN tokens, as TRL) set to 0; the mask as a bool tensor."""
    if old_log_prob.shape != rollout_log_prob.shape or old_log_prob.shape != response_mask.shape:
        raise ValueError(f"old_log_prob, rollout_log_prob and response_mask must share one shape, got "
                         f"{tuple(old_log_prob.shape)}, {tuple(rollout_log_prob.shape)}, {tuple(response_mask.shape)}")
    is_response = response_mask.bool()
    log_ratio = (old_log_prob - rollout_log_prob).detach()
    log_ratio = torch.where(is_response & ~torch.isnan(log_ratio), log_ratio, torch.zeros_like(log_ratio))
    return log_ratio, is_response


def parse_threshold(threshold) -> tuple[float | None, float]:
    """verl's rollout_is_threshold: a number C -> (None, C) (truncate); "lo_C" -> (lo, C) (mask outside)."""
    if isinstance(threshold, bool):
        raise ValueError("the threshold must be a number or a 'lower_upper' string, not a bool")
    if isinstance(threshold, str) and "_" in threshold:
        lower, upper = (float(part) for part in threshold.split("_", 1))
    else:
        lower, upper = None, float(threshold)
    if not upper > 0 or (lower is not None and not 0 < lower <= upper):
        raise ValueError(f"the threshold needs 0 < lower <= upper, got {threshold!r}")
    return lower, upper


def importance_weights(log_ratio, response_mask, level="token", lower=None, upper=DEFAULT_THRESHOLD,
                       kind="truncate") -> torch.Tensor:
    """The weights [N, T] from log rho [N, T] (0 on padding, no gradient).

        token:    rho_t = exp(log rho_t)              sequence: rho = exp(sum_t log rho_t) on every token of the row
        truncate: w = clamp(rho, lower, upper)        mask:     w = rho where lower <= rho <= upper, else 0
    lower=None means no lower bound.
    """
    if level not in ("token", "sequence") or kind not in ("truncate", "mask"):
        raise ValueError(f"level must be token or sequence and kind truncate or mask, got {level!r}, {kind!r}")
    is_response = response_mask.bool()
    log_ratio = torch.where(is_response, log_ratio.detach(), torch.zeros_like(log_ratio))
    if level == "sequence":
        log_ratio = log_ratio.sum(dim=-1, keepdim=True).expand_as(log_ratio)
    rho = torch.exp(log_ratio)
    if kind == "truncate":
        weights = rho.clamp(min=lower, max=upper)
    else:
        keep = rho <= upper if lower is None else (rho >= lower) & (rho <= upper)
        weights = torch.where(keep, rho, torch.zeros_like(rho))
    return torch.where(is_response, weights, torch.zeros_like(weights))


def rollout_is_weights(old_log_prob, rollout_log_prob, response_mask, rollout_is="token",
                       rollout_is_threshold=DEFAULT_THRESHOLD, rollout_is_batch_normalize=False) -> torch.Tensor:
    """verl 0.9.1's rollout importance-sampling weights (compute_rollout_correction_weights), [N, T].

        rho_t = pi_old(y_t) / mu(y_t)   (old_log_prob: the trainer's recomputation; rollout_log_prob: the sampler's)
        rollout_is="token": w_t = f(rho_t);  "sequence": w_t = f(prod_t rho_t) for every token of the row
        rollout_is_threshold=C (a number): f(x) = min(x, C) (TIS);  "lo_C" (a string): f(x) = x if lo <= x <= C
        else 0 (IcePop)
        rollout_is_batch_normalize: divide by the mean weight (over tokens, or over rows for "sequence")

    0 on padding, no gradient.
    """
    log_ratio, is_response = _clean_log_ratio(old_log_prob, rollout_log_prob, response_mask)
    lower, upper = parse_threshold(rollout_is_threshold)
    kind = "truncate" if lower is None else "mask"
    weights = importance_weights(log_ratio, is_response, rollout_is, lower, upper, kind)
    if rollout_is_batch_normalize:
        if rollout_is == "token":
            mean = masked_mean(weights, is_response)
        else:
            non_empty = is_response.any(dim=-1)
            mean = masked_mean(weights, is_response, dim=-1)[non_empty].mean() if non_empty.any() else weights.sum()
        if mean > 1e-8:
            weights = weights / mean
    return weights


def vllm_importance_sampling_ratio(old_per_token_logps, sampling_per_token_logps, completion_mask,
                                   vllm_importance_sampling_mode="sequence_mask", vllm_importance_sampling_clip_min=None,
                                   vllm_importance_sampling_clip_max=3.0) -> torch.Tensor:
    """TRL 1.16.0's importance-sampling ratio for vLLM rollouts (GRPOTrainer._generate_and_score_completions).

        "token_truncate"     w_t = clamp(rho_t, clip_min, clip_max)
        "token_mask"         w_t = rho_t if clip_min <= rho_t <= clip_max else 0     (None: that side unbounded)
        "sequence_truncate"  as token_truncate with rho = prod_t rho_t, one value per row
        "sequence_mask"      as token_mask with rho = prod_t rho_t (TRL's default mode)

    Returns [N, T] for the token modes and [N, 1] for the sequence modes, as TRL (it multiplies per_token_loss).
    A NaN sampling log-prob (a token vLLM could not score) gives rho_t = 1, as in TRL.
    """
    modes = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
    if vllm_importance_sampling_mode not in modes:
        raise ValueError(f"unknown vllm_importance_sampling_mode {vllm_importance_sampling_mode!r}: "
                         f"choose one of {', '.join(modes)}")
    log_ratio, is_response = _clean_log_ratio(old_per_token_logps, sampling_per_token_logps, completion_mask)
    level, kind = vllm_importance_sampling_mode.split("_")
    if level == "sequence":
        log_ratio = log_ratio.sum(dim=-1, keepdim=True)
    rho = torch.exp(log_ratio)
    if kind == "truncate":
        return rho.clamp(min=vllm_importance_sampling_clip_min, max=vllm_importance_sampling_clip_max)
    low = -math.inf if vllm_importance_sampling_clip_min is None else vllm_importance_sampling_clip_min
    high = math.inf if vllm_importance_sampling_clip_max is None else vllm_importance_sampling_clip_max
    return rho.masked_fill((rho < low) | (rho > high), 0.0)


def check_rollout_correction(name: str) -> None:
    """One clear ValueError for a name that is not in ROLLOUT_CORRECTIONS."""
    if name not in ROLLOUT_CORRECTIONS:
        raise ValueError(f"unknown rollout correction {name!r}: choose one of {', '.join(ROLLOUT_CORRECTIONS)}")


def correction_weights(name: str, old_log_prob, rollout_log_prob, response_mask, threshold=DEFAULT_THRESHOLD):
    """The weights [N, T] of one of ROLLOUT_CORRECTIONS: truncate at C, or mask outside [1/C, C] (C = threshold)."""
    check_rollout_correction(name)
    if not threshold > 1:
        raise ValueError(f"the rollout-correction threshold must be > 1, got {threshold}")
    level, kind = ROLLOUT_CORRECTIONS[name]
    log_ratio, is_response = _clean_log_ratio(old_log_prob, rollout_log_prob, response_mask)
    lower = 1.0 / threshold if kind == "mask" else None
    return importance_weights(log_ratio, is_response, level, lower, float(threshold), kind)


def rollout_rejection_mask(old_log_prob, rollout_log_prob, response_mask, rollout_rs="seq_mean_k3",
                           rollout_rs_threshold=0.01) -> torch.Tensor:
    """verl 0.9.1's rejection sampling (compute_rollout_rejection_mask): the response mask with rejected tokens or
    whole rows set to 0 (they leave the loss AND its normaliser, unlike a zero weight).

    With log rho_t = log pi_old - log mu per token:
        k1 = -log rho_t     k2 = (log rho_t)^2 / 2     k3 = rho_t - 1 - log rho_t
        token_kX: each token on its own;  seq_sum_kX / seq_mean_kX / seq_max_kX: the row's sum / mean / max decides
        for all its tokens.
        k1 options keep  log(lo) <= statistic <= log(hi)  (threshold "lo_hi"; a single number hi means lo = 1/hi);
        k2 / k3 options keep statistic <= threshold.
    rollout_rs may list several options, comma separated; every one must pass. rollout_rs_threshold: one value for
    all, or one per option, comma separated.
    """
    log_ratio, is_response = _clean_log_ratio(old_log_prob, rollout_log_prob, response_mask)
    options = list(dict.fromkeys(part.strip() for part in rollout_rs.split(",") if part.strip()))
    for option in options:
        if option not in ROLLOUT_RS_OPTIONS:
            raise ValueError(f"unknown rollout_rs option {option!r}: choose from {', '.join(ROLLOUT_RS_OPTIONS)}")
    specs = [part.strip() for part in str(rollout_rs_threshold).split(",")]
    if len(specs) not in (1, len(options)):
        raise ValueError(f"give one rollout_rs_threshold for all options or one per option, got {len(specs)}")
    specs = specs * len(options) if len(specs) == 1 else specs
    statistic = {"k1": -log_ratio, "k2": 0.5 * log_ratio ** 2, "k3": torch.exp(log_ratio) - 1.0 - log_ratio}
    keep = torch.ones_like(is_response)
    for option, spec in zip(options, specs):
        scope, estimator = option.rsplit("_", 1)
        values = statistic[estimator]
        if scope == "seq_sum":
            values = masked_sum(values, is_response, dim=-1, keepdim=True)
        elif scope == "seq_mean":
            values = masked_mean(values, is_response, dim=-1, keepdim=True)
        elif scope == "seq_max":
            values = values.masked_fill(~is_response, -math.inf).amax(dim=-1, keepdim=True)
            values = torch.where(torch.isinf(values), torch.zeros_like(values), values)
        if estimator == "k1":
            lower, upper = spec.split("_", 1) if "_" in spec else (str(1.0 / float(spec)), spec)
            passed = (values >= math.log(float(lower))) & (values <= math.log(float(upper)))
        else:
            passed = values <= float(spec)
        keep = keep & passed.expand_as(keep)
    return response_mask * keep.to(response_mask.dtype)


@torch.no_grad()
def mismatch_metrics(old_log_prob, rollout_log_prob, response_mask) -> dict[str, float]:
    """How far the sampler mu is from the trainer pi_old on the sampled tokens (verl's compute_offpolicy_metrics
    names, a subset), plus the token ratio's extremes:

        kl          mean_t (log mu - log pi_old)         KL(mu || pi_old), k1 estimate
        k3_kl       mean_t (rho - 1 - log rho)            the same KL, k3 estimate (>= 0, lower variance)
        chi2_token  mean_t rho^2 - 1                      how heavy the token weights' tail is
        chi2_seq    mean_i (prod_t rho_t)^2 - 1           the same for sequence weights
        rho_mean, rho_min, rho_max                        over the response tokens
    """
    log_ratio, is_response = _clean_log_ratio(old_log_prob, rollout_log_prob, response_mask)
    rho = torch.exp(log_ratio)
    tokens = rho[is_response]
    return {
        "kl": masked_mean(-log_ratio, is_response).item(),
        "k3_kl": masked_mean(rho - 1 - log_ratio, is_response).item(),
        "chi2_token": masked_mean(rho ** 2, is_response).item() - 1.0,
        "chi2_seq": torch.exp(2.0 * log_ratio.sum(dim=-1)).mean().item() - 1.0,
        "rho_mean": masked_mean(rho, is_response).item(),
        "rho_min": tokens.min().item() if tokens.numel() else 1.0,
        "rho_max": tokens.max().item() if tokens.numel() else 1.0,
    }


# ---------------------------------------------------------------------------------------------- token selection
@torch.no_grad()
def high_entropy_mask(entropies, response_mask, top_entropy_quantile=0.2) -> torch.Tensor:
    """Keep only the top `top_entropy_quantile` share of response tokens by entropy (TRL's top_entropy_quantile;
    Wang et al. 2025, "Beyond the 80/20 Rule", arXiv:2506.01939): bool [N, T].

        tau    = quantile(H over the response tokens, 1 - top_entropy_quantile)   (torch.quantile, linear)
        keep_t = H_t >= tau and t is a response token

    The "forking" tokens, where the model hesitates between continuations, carry most of the learning signal;
    the confident rest mostly adds noise. top_entropy_quantile=1.0 keeps every token (TRL's default). The
    quantile runs over the batch given (TRL: over every process's tokens).
    """
    if not 0.0 < top_entropy_quantile <= 1.0:
        raise ValueError(f"top_entropy_quantile must be in (0, 1], got {top_entropy_quantile}")
    is_response = response_mask.bool()
    values = entropies[is_response].float()
    if values.numel() == 0:
        return torch.zeros_like(is_response)
    threshold = torch.quantile(values, 1.0 - top_entropy_quantile)
    return (entropies >= threshold) & is_response


def truncated_rows(completions, response_mask, eos_token_id) -> torch.Tensor:
    """bool [N]: the rows that stopped at the length limit, without an EOS among their response tokens."""
    return ~((completions == eos_token_id) & response_mask.bool()).any(dim=-1)


def mask_truncated_completions(completions, response_mask, eos_token_id) -> torch.Tensor:
    """TRL's mask_truncated_completions: the response mask with every truncated row (no EOS) set to 0.

    A completion cut off at max_new_tokens gets the reward of an unfinished answer, which says nothing about the
    tokens it wrote (DAPO's overlong filtering, Yu et al. 2025, arXiv:2503.14476): it leaves the loss. Its reward
    still counts in its group's baseline. completions, response_mask: [..., T] -> mask of the same shape.
    """
    keep = ~truncated_rows(completions, response_mask, eos_token_id)
    return response_mask * keep.unsqueeze(-1).to(response_mask.dtype)
