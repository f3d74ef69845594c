"""The policy-loss registry: the losses that verl 0.9.1 and TRL 1.16.0 offer today, one short function each.

    POLICY_LOSSES[name](log_prob, old_log_prob, advantages, response_mask, loss_agg_mode="token-mean",
                        **hyperparameters) -> scalar loss (to minimise)

Keys are verl's `actor.policy_loss.loss_mode` names; hyperparameters carry verl's actor-config names and verl
0.9.1's defaults (verl/workers/config/actor.py: clip_ratio_low = clip_ratio_high = 0.2, clip_ratio_c = 3.0,
tau_pos = 1.0, tau_neg = 1.05; policy_loss: clip_cov_ratio = 2e-4, clip_cov_lb = 1.0, clip_cov_ub = 5.0,
kl_cov_ratio = 2e-4, ppo_kl_coef = 0.1). Where TRL 1.16.0's GRPOTrainer computes something different, the TRL
form is an option with TRL's name (`delta` in vanilla, `epsilon_high` in cispo).

Shapes: N sequences, T response tokens; every tensor is [N, T] as in verl (advantages may also be [N, 1]). The
course's [B, G, T] tensors flatten to [B * G, T]. log_prob carries the gradient; old_log_prob and advantages are
constants. r = exp(log_prob - old_log_prob) is the importance ratio pi_theta / pi_old of a sampled token.

Three deliberate differences from verl, the same for every entry (tests/test_policy_losses.py shows each with
numbers):
- no clamp of the log-ratio (verl clamps it to [-20, 20] in most losses, to <= 10 in gspo): a ratio beyond
  e^20 is a bug to see, not to hide;
- padding may hold any value, even inf or NaN: it is replaced by 0 before any arithmetic, so neither the loss nor
  the gradient can see it (verl multiplies by the mask, and inf * 0 is NaN);
- empty rows (a sequence with no response token) never count in a sequence mean (see loss.aggregation.agg_loss;
  geo_mean too).

`metrics`: pass a dict to receive each loss's own diagnostics as floats, e.g. "clip_fraction" (share of response
tokens whose gradient the loss cuts or changes) and "ppo_kl" (mean of log pi_old - log pi_theta over the tokens).

A per-token weight w >= 0 folded into the advantages (A_t w_t) multiplies each token's loss by w_t exactly for
the entries in LINEAR_IN_ADVANTAGE (their per-token loss is positively homogeneous in A): that is how
training/menu.py applies importance-sampling corrections and token selection (verl: pg_losses * rollout_is_weights).
"""
import inspect

import torch

from .aggregation import agg_loss, check_loss_agg_mode
from .masked import masked_mean
from .shapes import check_same_shape


# ---------------------------------------------------------------------------------------------- helpers
def _inputs(log_prob, old_log_prob, advantages, response_mask):
    """(log_prob, old_log_prob, advantages, mask) with padding set to 0 and advantages broadcast to [N, T]."""
    if log_prob.dim() != 2:
        raise ValueError(f"log_prob must be [N, T] (flatten [B, G, T] with .flatten(0, 1)), got {tuple(log_prob.shape)}")
    check_same_shape("log_prob", log_prob, old_log_prob=old_log_prob, response_mask=response_mask)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    if advantages.dim() != 2 or advantages.shape[0] != log_prob.shape[0] or advantages.shape[1] not in (1, log_prob.shape[1]):
        raise ValueError(f"advantages must be [N, T] or [N, 1] with N, T = {tuple(log_prob.shape)}, "
                         f"got {tuple(advantages.shape)}")
    is_response = response_mask.bool()
    mask = response_mask.to(log_prob.dtype)
    zero = torch.zeros((), dtype=log_prob.dtype, device=log_prob.device)
    log_prob = torch.where(is_response, log_prob, zero)
    old_log_prob = torch.where(is_response, old_log_prob.to(log_prob.dtype), zero)
    advantages = torch.where(is_response, advantages.to(log_prob.dtype).expand_as(log_prob), zero)
    return log_prob, old_log_prob, advantages, mask


def _report(metrics, mask, **values) -> None:
    """Store masked means of boolean / float tensors (or plain floats) into `metrics`, when a dict was given."""
    if metrics is None:
        return
    for key, value in values.items():
        if torch.is_tensor(value):
            value = masked_mean(value.detach().to(mask.dtype), mask).item() if value.shape == mask.shape else value.item()
        metrics[key] = float(value)


def _check_clip(clip_ratio_low, clip_ratio_high) -> None:
    if not (clip_ratio_low >= 0 and clip_ratio_high >= 0):
        raise ValueError(f"clip_ratio_low and clip_ratio_high must be >= 0, got {clip_ratio_low}, {clip_ratio_high}")


# ---------------------------------------------------------------------------------------------- the losses
def vanilla(log_prob, old_log_prob, advantages, response_mask, loss_agg_mode="token-mean", *,
            clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0, delta=None, max_len=None, metrics=None):
    """PPO's clipped surrogate (Schulman et al. 2017, arXiv:1707.06347) with the dual clip for A < 0
    (Ye et al. 2020, arXiv:1912.09729). verl: compute_policy_loss_vanilla.

        l_t = max(-A r, -A clip(r, 1 - clip_ratio_low, 1 + clip_ratio_high))
        l_t = min(l_t, -A clip_ratio_c)          where A < 0   (dual clip: a huge r cannot blow up the loss)

    clip_ratio_c=None turns the dual clip off (TRL 1.16.0's default). delta: TRL's two-sided clip (INTELLECT-2,
    Prime Intellect 2025, arXiv:2505.07291): r is capped at delta before the min, l_t = max(-A min(r, delta),
    -A clip(r, ...)); with delta > 1 + clip_ratio_high it cuts the same tokens as the dual clip at clip_ratio_c =
    delta. verl 0.9.1 clamps log r to [-20, 20]; here it is not clamped.
    metrics: clip_fraction (tokens the PPO clip cuts), clip_fraction_lower (the dual clip), ppo_kl.
    """
    _check_clip(clip_ratio_low, clip_ratio_high)
    if clip_ratio_c is not None and not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c (the dual clip for A < 0) must be > 1, got {clip_ratio_c}")
    log_prob, old_log_prob, advantages, mask = _inputs(log_prob, old_log_prob, advantages, response_mask)
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * (ratio if delta is None else ratio.clamp(max=delta))
    clipped = -advantages * ratio.clamp(1 - clip_ratio_low, 1 + clip_ratio_high)
    losses = torch.maximum(unclipped, clipped)
    lower = torch.zeros_like(mask, dtype=torch.bool)
    if clip_ratio_c is not None:
        dual = -advantages * clip_ratio_c
        lower = (advantages < 0) & (losses > dual)
        losses = torch.where(advantages < 0, torch.minimum(losses, dual), losses)
    _report(metrics, mask, clip_fraction=clipped > unclipped, clip_fraction_lower=lower, ppo_kl=-log_ratio)
    return agg_loss(losses, mask, loss_agg_mode, max_len)


def gspo(log_prob, old_log_prob, advantages, response_mask, loss_agg_mode="token-mean", *,
         clip_ratio_low=0.2, clip_ratio_high=0.2, max_len=None, metrics=None):
    """Group Sequence Policy Optimization (Zheng et al. 2025, arXiv:2507.18071). verl: compute_policy_loss_gspo.

        s_i   = exp( 1/|y_i| sum_t log r_i,t )                  one ratio per sequence (a geometric mean)
        s_i,t = sg[s_i] * pi_theta(y_i,t) / sg[pi_theta(y_i,t)]   its value is s_i; its gradient flows through token t
        l_t   = max(-A s_i,t, -A clip(s_i,t, 1 - clip_ratio_low, 1 + clip_ratio_high))

    A sequence is clipped as a whole, so one odd token cannot carry it out of the trust region alone. The paper
    uses far smaller clip ranges (3e-4 / 4e-4) than verl's default 0.2, and aggregates with seq-mean-token-mean.
    With one advantage per sequence this is also TRL 1.16.0's importance_sampling_level="sequence" (loss and
    gradient); with per-token advantages TRL sends every token's gradient through the whole sequence ratio, verl
    (and this function) only through the token's own log-probability.
    verl 0.9.1 clamps log s_i,t to <= 10; here it is not clamped. metrics: clip_fraction, ppo_kl.
    """
    _check_clip(clip_ratio_low, clip_ratio_high)
    log_prob, old_log_prob, advantages, mask = _inputs(log_prob, old_log_prob, advantages, response_mask)
    log_ratio = log_prob - old_log_prob
    sequence_log_ratio = masked_mean(log_ratio, mask, dim=-1, keepdim=True)
    ratio = torch.exp(log_prob - log_prob.detach() + sequence_log_ratio.detach())
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_ratio_low, 1 + clip_ratio_high)
    _report(metrics, mask, clip_fraction=clipped > unclipped, ppo_kl=-log_ratio)
    return agg_loss(torch.maximum(unclipped, clipped), mask, loss_agg_mode, max_len)


def cispo(log_prob, old_log_prob, advantages, response_mask, loss_agg_mode="token-mean", *,
          clip_ratio_low=0.2, clip_ratio_high=0.2, epsilon_high=None, max_len=None, metrics=None):
    """Clipped IS-weight Policy Optimization (MiniMax 2025, MiniMax-M1, arXiv:2506.13585). verl:
    compute_policy_loss_cispo; TRL: loss_type="cispo".

        l_t = -sg[clip(r, 1 - clip_ratio_low, 1 + clip_ratio_high)] * A * log pi_theta(y_t)

    The clip acts on the importance weight, not on the objective: every token keeps a gradient (A w grad log pi),
    only its size is capped. (PPO's clip drops the gradient of a clipped token entirely.)
    epsilon_high: TRL 1.16.0's form, a one-sided cap w = min(r, epsilon_high) with no lower bound (ScaleRL, Khatri
    et al. 2025, arXiv:2510.13786 recommends 5.0); when given, clip_ratio_low/high are not used.
    The loss value is not comparable with the ratio losses (it is a weighted log-likelihood); its gradient is.
    metrics: clip_fraction (tokens whose weight was changed by the clip), ppo_kl.
    """
    _check_clip(clip_ratio_low, clip_ratio_high)
    log_prob, old_log_prob, advantages, mask = _inputs(log_prob, old_log_prob, advantages, response_mask)
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    if epsilon_high is None:
        weight = ratio.clamp(1 - clip_ratio_low, 1 + clip_ratio_high)
    else:
        weight = ratio.clamp(max=epsilon_high)
    _report(metrics, mask, clip_fraction=weight != ratio, ppo_kl=-log_ratio)
    return agg_loss(-weight.detach() * advantages * log_prob, mask, loss_agg_mode, max_len)


def geo_mean(log_prob, old_log_prob, advantages, response_mask, loss_agg_mode="token-mean", *,
             clip_ratio_low=0.2, clip_ratio_high=0.2, max_len=None, metrics=None):
    """Geometric-Mean Policy Optimization, GMPO (Zhao et al. 2025, arXiv:2507.20673). verl:
    compute_policy_loss_geo_mean.

        log r~_t = sgn(A) * min(sgn(A) log r_t, sgn(A) clip(log r_t, -clip_ratio_low, clip_ratio_high))
        l_i      = -A_i * exp( 1/|y_i| sum_t log r~_t )          A_i = mean of A over the tokens of sequence i
        loss     = mean over the non-empty sequences of l_i

    The geometric mean of the token ratios replaces their arithmetic mean (GRPO's token average of r_t A), so one
    extreme token ratio moves the objective far less; the clip acts on log r, token by token.
    loss_agg_mode is not used (the loss is a mean over sequences, as in verl). Differences from verl 0.9.1:
    verl averages over ALL rows (an empty row adds a 0 to the mean) and adds 1e-8 to each length.
    metrics: clip_fraction (tokens whose log r was clipped, A > 0), clip_fraction_lower (A < 0), ppo_kl.
    """
    _check_clip(clip_ratio_low, clip_ratio_high)
    check_loss_agg_mode(loss_agg_mode)
    log_prob, old_log_prob, advantages, mask = _inputs(log_prob, old_log_prob, advantages, response_mask)
    log_ratio = log_prob - old_log_prob
    sign = torch.sign(advantages)
    log_ratio_clamped = log_ratio.clamp(-clip_ratio_low, clip_ratio_high)
    log_ratio_min = sign * torch.minimum(sign * log_ratio, sign * log_ratio_clamped)
    ratio = torch.exp(masked_mean(log_ratio_min, mask, dim=-1))              # [N]
    sequence_advantage = masked_mean(advantages, mask, dim=-1)               # [N]
    non_empty = mask.sum(dim=-1) > 0
    clipped = log_ratio != log_ratio_clamped
    _report(metrics, mask, clip_fraction=clipped & (advantages > 0), clip_fraction_lower=clipped & (advantages < 0),
            ppo_kl=-log_ratio)
    return masked_mean(-sequence_advantage * ratio, non_empty)


def sapo(log_prob, old_log_prob, advantages, response_mask, loss_agg_mode="token-mean", *,
         tau_pos=1.0, tau_neg=1.05, max_len=None, metrics=None):
    """Soft Adaptive Policy Optimization (Gao et al. 2025, arXiv:2511.20347). verl: compute_policy_loss_sapo;
    TRL: loss_type="sapo" (sapo_temperature_pos / sapo_temperature_neg).

        f(r; tau) = sigmoid(tau (r - 1)) * 4 / tau                 tau = tau_pos if A > 0 else tau_neg
        l_t       = -f(r_t; tau) * A_t

    A smooth gate instead of a hard clip: d f / d r = 4 sigmoid' = 1 at r = 1 (the on-policy gradient is PPO's),
    and it fades smoothly as r leaves 1, faster for negative advantages (tau_neg > tau_pos).
    verl 0.9.1 always aggregates SAPO with seq-mean-token-mean, whatever loss_agg_mode says (TRL too); here the
    argument is honoured, so pass loss_agg_mode="seq-mean-token-mean" for the library's result. verl clamps log r
    to [-20, 20]; here it is not clamped. metrics: ppo_kl (no clip to count).
    """
    log_prob, old_log_prob, advantages, mask = _inputs(log_prob, old_log_prob, advantages, response_mask)
    log_ratio = log_prob - old_log_prob
    like = dict(dtype=log_prob.dtype, device=log_prob.device)
    tau = torch.where(advantages > 0, torch.as_tensor(tau_pos, **like), torch.as_tensor(tau_neg, **like))
    gate = torch.sigmoid(tau * (torch.exp(log_ratio) - 1.0)) * (4.0 / tau)
    _report(metrics, mask, ppo_kl=-log_ratio)
    return agg_loss(-gate * advantages, mask, loss_agg_mode, max_len)


def gpg(log_prob, old_log_prob, advantages, response_mask, loss_agg_mode="token-mean", *, max_len=None, metrics=None):
    """Group Policy Gradient, GPG (Chu et al. 2025, arXiv:2504.02546). verl: compute_policy_loss_gpg.

        l_t = -A_t * log pi_theta(y_t)

    Plain REINFORCE with the group baseline in A: no ratio, no clip, no reference model; old_log_prob is not used.
    Pair it with the "gpg" advantage estimator (loss.advantages), which rescales A by the batch's share of
    informative samples. metrics: ppo_kl (for the logs only).
    """
    log_prob, old_log_prob, advantages, mask = _inputs(log_prob, old_log_prob, advantages, response_mask)
    _report(metrics, mask, ppo_kl=old_log_prob - log_prob)
    return agg_loss(-advantages * log_prob, mask, loss_agg_mode, max_len)


def clip_cov(log_prob, old_log_prob, advantages, response_mask, loss_agg_mode="token-mean", *,
             clip_ratio_low=0.2, clip_ratio_high=0.2, clip_cov_ratio=0.0002, clip_cov_lb=1.0, clip_cov_ub=5.0,
             generator=None, max_len=None, metrics=None):
    """Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs", arXiv:2505.22617). verl:
    compute_policy_loss_clip_cov.

        cov_t = (A_t - mean A) * (log pi_theta(y_t) - mean log pi_theta)      over the response tokens
        pick  max(1, int(clip_cov_ratio * #tokens)) tokens at random among those with lb < cov_t < ub that the
              PPO clip has not already cut, and drop their gradient:
        l_t   = max(-A r, -A clip(r, 1 - clip_ratio_low, 1 + clip_ratio_high)) * (0 if t is picked else 1)

    Entropy collapses through tokens whose log-probability and advantage move together (high covariance);
    detaching a few of them keeps entropy up. The pick uses torch.randperm with `generator` (None: torch's
    global generator, as verl does). metrics: clip_fraction (the picked tokens), ppo_kl.
    """
    _check_clip(clip_ratio_low, clip_ratio_high)
    if not clip_cov_ratio > 0:
        raise ValueError(f"clip_cov_ratio must be > 0, got {clip_cov_ratio}")
    log_prob, old_log_prob, advantages, mask = _inputs(log_prob, old_log_prob, advantages, response_mask)
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_ratio_low, 1 + clip_ratio_high)
    keep = torch.ones_like(mask)
    with torch.no_grad():
        is_response = mask > 0
        cov = (advantages - masked_mean(advantages, mask)) * (log_prob - masked_mean(log_prob, mask))
        cov = cov.masked_fill(~is_response | (clipped > unclipped), -torch.inf)
        candidates = torch.nonzero((cov > clip_cov_lb) & (cov < clip_cov_ub) & is_response)
        if len(candidates) > 0:
            count = max(int(clip_cov_ratio * mask.sum().item()), 1)
            picked = candidates[torch.randperm(len(candidates), generator=generator)[:count]]
            keep[picked[:, 0], picked[:, 1]] = 0
    _report(metrics, mask, clip_fraction=keep == 0, ppo_kl=-log_ratio)
    return agg_loss(torch.maximum(unclipped, clipped) * keep, mask, loss_agg_mode, max_len)


def kl_cov(log_prob, old_log_prob, advantages, response_mask, loss_agg_mode="token-mean", *,
           kl_cov_ratio=0.0002, ppo_kl_coef=0.1, max_len=None, metrics=None):
    """KL-Cov (Cui et al. 2025, arXiv:2505.22617). verl: compute_policy_loss_kl_cov.

        cov_t = (A_t - mean A) * (log pi_theta(y_t) - mean log pi_theta)      over the response tokens
        l_t   = -A r + ppo_kl_coef * |log r|    for the max(1, int(kl_cov_ratio * #tokens)) tokens of largest cov_t
        l_t   = -A r                            for every other token (no clip at all)

    The same diagnosis as Clip-Cov, a softer cure: a KL penalty holds back only the tokens that drive entropy
    down. ppo_kl_coef: verl 0.9.1's config default 0.1 (the function's own fallback is 1.0).
    metrics: clip_fraction (the penalised tokens), ppo_kl (mean |log r|, as verl logs it).
    """
    if not kl_cov_ratio > 0:
        raise ValueError(f"kl_cov_ratio must be > 0, got {kl_cov_ratio}")
    log_prob, old_log_prob, advantages, mask = _inputs(log_prob, old_log_prob, advantages, response_mask)
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    penalised = torch.zeros_like(mask, dtype=torch.bool)
    with torch.no_grad():
        is_response = mask > 0
        count = int(is_response.sum().item())
        if count > 0:
            adv, logp = advantages[is_response], log_prob[is_response]
            cov = (adv - adv.mean()) * (logp - logp.mean())
            top = torch.topk(cov, max(1, int(count * kl_cov_ratio)), largest=True).indices
            flat = torch.nonzero(is_response.reshape(-1), as_tuple=True)[0][top]
            penalised.view(-1)[flat] = True
    losses = torch.where(penalised, -advantages * ratio + ppo_kl_coef * log_ratio.abs(), -advantages * ratio)
    _report(metrics, mask, clip_fraction=penalised, ppo_kl=log_ratio.abs())
    return agg_loss(losses, mask, loss_agg_mode, max_len)


def _dppo(log_prob, old_log_prob, advantages, response_mask, loss_agg_mode, clip_ratio_low, clip_ratio_high,
          clip_ratio_c, max_len, metrics, divergence):
    """The shared body of dppo_tv and dppo_kl: a token keeps its gradient unless it moved the wrong way past the
    divergence threshold; the kept gradient is the truncated-IS policy gradient sg[min(r, c)] A grad log pi."""
    _check_clip(clip_ratio_low, clip_ratio_high)
    log_prob, old_log_prob, advantages, mask = _inputs(log_prob, old_log_prob, advantages, response_mask)
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    truncated = ratio.clamp(max=clip_ratio_c).detach()
    with torch.no_grad():
        prob, old_prob = log_prob.exp(), old_log_prob.exp()
        if divergence == "tv":
            valid_pos = prob - old_prob <= clip_ratio_high
            valid_neg = prob - old_prob >= -clip_ratio_low
        else:
            binary_kl = old_prob * (old_log_prob - log_prob) + (1 - old_prob) * torch.log(
                (1.0 - old_prob + 1e-8) / (1.0 - prob + 1e-8))
            valid_pos = (binary_kl <= clip_ratio_high) | (prob <= old_prob)
            valid_neg = (binary_kl <= clip_ratio_low) | (prob >= old_prob)
        valid = torch.where(advantages > 0, valid_pos, valid_neg).to(log_prob.dtype)
    _report(metrics, mask, clip_fraction=valid == 0, clip_fraction_lower=(ratio > clip_ratio_c) & (valid > 0),
            ppo_kl=-log_ratio)
    return agg_loss(-advantages * truncated * log_prob * valid, mask, loss_agg_mode, max_len)


def dppo_tv(log_prob, old_log_prob, advantages, response_mask, loss_agg_mode="token-mean", *,
            clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0, max_len=None, metrics=None):
    """Divergence PPO, binary total-variation form (Qi et al. 2026, "Rethinking the Trust Region in LLM
    Reinforcement Learning", arXiv:2602.04879). verl: compute_policy_loss_dppo_tv.

        valid_t = p_t - p_old,t <= clip_ratio_high   if A_t > 0      (p = pi(y_t), a probability, not a ratio)
                  p_t - p_old,t >= -clip_ratio_low   otherwise
        l_t     = -A_t * sg[min(r_t, clip_ratio_c)] * log pi_theta(y_t) * valid_t

    PPO's ratio clip over-constrains rare tokens (a ratio of 2 on p = 0.001 is a tiny move) and under-constrains
    likely ones; DPPO bounds the change of the probability itself. clip_ratio_c: verl 0.9.1 reads the actor
    config's clip_ratio_c (3.0); its code falls back to 20.0 and recommends a large value.
    metrics: clip_fraction (tokens outside the trust region), clip_fraction_lower (truncated ratios), ppo_kl.
    """
    return _dppo(log_prob, old_log_prob, advantages, response_mask, loss_agg_mode, clip_ratio_low, clip_ratio_high,
                 clip_ratio_c, max_len, metrics, "tv")


def dppo_kl(log_prob, old_log_prob, advantages, response_mask, loss_agg_mode="token-mean", *,
            clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0, max_len=None, metrics=None):
    """Divergence PPO, binary KL form (Qi et al. 2026, arXiv:2602.04879). verl: compute_policy_loss_dppo_kl.

        D_t     = p_old log(p_old / p) + (1 - p_old) log((1 - p_old) / (1 - p))     KL of the two coins "y_t or not"
        valid_t = D_t <= clip_ratio_high or p <= p_old    if A_t > 0
                  D_t <= clip_ratio_low  or p >= p_old    otherwise
        l_t     = -A_t * sg[min(r_t, clip_ratio_c)] * log pi_theta(y_t) * valid_t

    As dppo_tv with a KL divergence between Bernoulli(p_old) and Bernoulli(p) (1e-8 guards, as verl).
    metrics: clip_fraction, clip_fraction_lower, ppo_kl.
    """
    return _dppo(log_prob, old_log_prob, advantages, response_mask, loss_agg_mode, clip_ratio_low, clip_ratio_high,
                 clip_ratio_c, max_len, metrics, "kl")


POLICY_LOSSES = {
    "vanilla": vanilla,
    "gspo": gspo,
    "cispo": cispo,
    "geo_mean": geo_mean,
    "sapo": sapo,
    "gpg": gpg,
    "clip_cov": clip_cov,
    "kl_cov": kl_cov,
    "dppo_tv": dppo_tv,
    "dppo_kl": dppo_kl,
}
# Entries whose per-token loss is positively homogeneous in the advantage (l(w A) = w l(A) for w >= 0), so a
# per-token weight folded into A multiplies that token's loss exactly. geo_mean averages A over a sequence
# (exact for one weight per sequence only); clip_cov and kl_cov choose their tokens from A, and kl_cov's penalty
# does not scale with A.
LINEAR_IN_ADVANTAGE = ("vanilla", "gspo", "cispo", "sapo", "gpg", "dppo_tv", "dppo_kl")
_NOT_HYPERPARAMETERS = ("log_prob", "old_log_prob", "advantages", "response_mask", "loss_agg_mode", "metrics",
                        "generator", "max_len")


def hyperparameters(name: str) -> dict:
    """The hyperparameters of POLICY_LOSSES[name] with their defaults, e.g. {"clip_ratio_low": 0.2, ...}."""
    check_policy_loss(name)
    signature = inspect.signature(POLICY_LOSSES[name])
    return {key: p.default for key, p in signature.parameters.items() if key not in _NOT_HYPERPARAMETERS}


def check_policy_loss(name: str) -> None:
    """One clear ValueError for a name that is not in POLICY_LOSSES."""
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r}: choose one of {', '.join(POLICY_LOSSES)}")


def check_hyperparameters(name: str, settings) -> dict:
    """hyperparameters(name), after one clear ValueError for a key of `settings` that is none of them (clip_cov
    also takes the `generator` of its random pick)."""
    valid = hyperparameters(name)
    unknown = set(settings) - set(valid) - ({"generator"} if name == "clip_cov" else set())
    if unknown:
        raise ValueError(f"policy loss {name!r} has no hyperparameter {', '.join(sorted(unknown))}: "
                         f"it takes {', '.join(valid) or 'none'}")
    return valid


def policy_loss(name: str, log_prob, old_log_prob, advantages, response_mask, loss_agg_mode="token-mean",
                **settings) -> torch.Tensor:
    """POLICY_LOSSES[name](...), with one clear error for an unknown name or hyperparameter."""
    check_hyperparameters(name, set(settings) - {"metrics", "max_len"})
    return POLICY_LOSSES[name](log_prob, old_log_prob, advantages, response_mask, loss_agg_mode, **settings)
