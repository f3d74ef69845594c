"""Exercise: the GRPO loss (Group Relative Policy Optimization, Shao et al. 2024, DeepSeekMath).

For each prompt the old policy samples a group of G completions; each gets a scalar reward. GRPO
needs no critic: a completion's advantage is its reward compared with the rest of its group.

    A_i       = (r_i - mean(r)) / (std(r) + eps)                        group-relative advantage
    r_i,t     = pi_theta(o_i,t | q, o_i,<t) / pi_old(o_i,t | q, o_i,<t)  importance ratio per token
    loss_i,t  = -min(r_i,t A_i, clip(r_i,t, 1 - eps_low, 1 + eps_high) A_i) + beta * KL_i,t
    loss      = aggregate(loss_i,t over the response tokens)

Shapes: B prompts, G samples per prompt, T response tokens. Masks are 1 on response tokens and
0 on the padding after EOS (float or bool).

One keyword away from the original GRPO (the defaults):
- Dr. GRPO (Liu et al. 2025): `normalize_std=False, loss_agg_mode="seq-mean-token-sum-norm"`.
- DAPO (Yu et al. 2025): `clip_epsilon_high=0.28, loss_agg_mode="token-mean"` (and kl_beta=0).
- GSPO (Zheng et al. 2025): `importance_sampling_level="sequence"` (one ratio per completion).

Write the bodies marked `your code here`. Run `python tools/grade.py grpo_loss` to check them.
"""
import torch
from torch import nn

from loss import check_same_shape, clip_fraction, masked_mean, masked_sum
from loss.aggregation import check_loss_agg_mode
from loss.names import IMPORTANCE_SAMPLING_LEVELS, KL_ESTIMATORS


def group_advantages(rewards: torch.Tensor, normalize_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages, one per completion.

        A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)     original GRPO (normalize_std=True)
        A_i =  r_i - mean(r_1..r_G)                              Dr. GRPO      (normalize_std=False)

    mean and std run over the G samples of one prompt (dim 1), never over the whole batch. The std
    is the unbiased one (divides by G - 1), as `torch.std`, verl and TRL compute it.

    rewards: [B, G] -> advantages [B, G]. A group of one (G < 2) has no baseline: raise ValueError.
    Same as verl's `compute_grpo_outcome_advantage` (norm_adv_by_std_in_grpo) and TRL's GRPOTrainer
    (scale_rewards="group").
    """
    # TODO: check the shape first (a clear ValueError for G < 2), then the group mean, then the std.
    raise NotImplementedError("group_advantages: your code here")


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from sampled tokens (John Schulman, "Approximating KL").

    With log_ratio = ref_logp - logp (log of pi_ref / pi_theta at the sampled token):

        k1 = logp - ref_logp                                    unbiased, can be negative
        k2 = (logp - ref_logp)^2 / 2                            biased, low variance, >= 0
        k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1       unbiased, low variance, >= 0

    k3 is what GRPO puts in its loss (DeepSeekMath eq. 4; TRL's per_token_kl; verl's "low_var_kl",
    which also clamps it to [-10, 10]; here it is not clamped). Every estimate is 0 where logp == ref_logp.
    Any shape in, the same shape out. Unknown kind: ValueError.
    """
    raise NotImplementedError("kl_estimate: your code here")


def aggregate_loss(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str, max_len: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss matrix to a scalar, counting only the response tokens (verl's mode names).

    With L the loss, M the mask, n_i = sum_t M_i,t the length of row i and R the rows with n_i > 0:

        "token-mean"               sum(L M) / sum(M)                       every token weighs the same (DAPO)
        "seq-mean-token-mean"      1/|R| sum_{i in R} sum_t L M / n_i        every sequence weighs the same (GRPO)
        "seq-mean-token-sum"       1/|R| sum_{i in R} sum_t L M
        "seq-mean-token-sum-norm"  sum(L M) / (|R| * max_len)                 a constant divisor (Dr. GRPO)

    max_len defaults to T, the width of the matrix. Empty rows (n_i = 0) are left out of |R|: a
    sequence without tokens has no loss to average. An all-zero mask gives 0, never NaN. Padding may
    hold any value: it must not change the result.

    loss_mat: [N, T], mask: [N, T] (float or bool) -> scalar tensor.
    verl 0.9.1's `agg_loss` computes the same (called alone it too leaves empty rows out; verl's trainer passes
    the global batch size, which counts them); TRL 1.16.0's loss_type "grpo" and "dr_grpo" count every row.
    The masked helpers `masked_sum` and `masked_mean` from loss/ help.
    """
    check_loss_agg_mode(mode)
    # TODO: the sum and the token count of each row, which rows are non-empty, then one branch per mode.
    raise NotImplementedError("aggregate_loss: your code here")


class GRPOLoss(nn.Module):
    """The GRPO objective as a loss to minimise (the defaults are the original GRPO of DeepSeekMath).

        loss = aggregate( -min(r A, clip(r, 1 - clip_epsilon, 1 + clip_epsilon_high) A) + kl_beta * KL )

    clip_epsilon_high: the upper clip (DAPO's clip-higher, e.g. 0.28); None means clip_epsilon.
    normalize_std: divide the group advantage by the group std (False: Dr. GRPO); used only when the loss
        is given rewards (with advantages=, the advantage step happened before, and normalize_std with it).
    loss_agg_mode: one of loss.names.LOSS_AGG_MODES (see `aggregate_loss`); max_len: its divisor for "seq-mean-token-sum-norm".
    kl_estimator: "k1" | "k2" | "k3" (see `kl_estimate`); kl_beta=0 or no reference: no KL term.
    importance_sampling_level: "token" (GRPO) or "sequence" (GSPO: one ratio per completion, the
    exp of the mean token log-ratio, shared by all its tokens; pair it with seq-mean-token-mean and
    much smaller epsilons, e.g. 3e-4 / 4e-4).

    After each call `self.metrics` holds floats: loss, kl, clip_fraction, ratio_mean, ratio_min,
    ratio_max, advantage_mean (over the response tokens), advantage_std, response_length, and, when the
    loss was given rewards, reward_mean and reward_std.

    The per-token loss is TRL's GRPOTrainer loss (per_token_loss = -min(coef_1 A, coef_2 A) + beta * k3)
    and verl's compute_policy_loss_vanilla without its dual clip for A < 0 (clip_ratio_c) and without
    its clamp of the log-ratio to [-20, 20]: here the ratio is exp(logp - old_logp), unclamped.
    """

    def __init__(
        self,
        clip_epsilon: float = 0.2,
        kl_beta: float = 0.1,
        *,
        clip_epsilon_high: float | None = None,
        normalize_std: bool = True,
        loss_agg_mode: str = "seq-mean-token-mean",
        kl_estimator: str = "k3",
        eps: float = 1e-6,
        importance_sampling_level: str = "token",
        max_len: int | None = None,
    ):
        super().__init__()
        check_loss_agg_mode(loss_agg_mode)
        if kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"unknown kl_estimator {kl_estimator!r}: choose one of {', '.join(KL_ESTIMATORS)}")
        if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
            raise ValueError(
                f"unknown importance_sampling_level {importance_sampling_level!r}: "
                f"choose one of {', '.join(IMPORTANCE_SAMPLING_LEVELS)}"
            )
        self.clip_epsilon = clip_epsilon
        self.clip_epsilon_high = clip_epsilon if clip_epsilon_high is None else clip_epsilon_high
        self.kl_beta = kl_beta
        self.normalize_std = normalize_std
        self.loss_agg_mode = loss_agg_mode
        self.kl_estimator = kl_estimator
        self.eps = eps
        self.importance_sampling_level = importance_sampling_level
        self.max_len = max_len
        self.metrics: dict[str, float] = {}

    def forward(
        self,
        policy_logprobs: torch.Tensor,       # [B, G] or [B, G, T], log pi_theta: carries the gradient
        old_policy_logprobs: torch.Tensor,   # same shape, log pi_old (the policy that sampled)
        rewards: torch.Tensor | None = None,              # [B, G]: the group step runs inside
        reference_logprobs: torch.Tensor | None = None,   # same shape as the logprobs, log pi_ref; None: no KL term
        response_mask: torch.Tensor | None = None,        # same shape as the logprobs; None: all ones
        *,
        advantages: torch.Tensor | None = None,           # [B, G] or [B, G, T]: used exactly as given
    ) -> torch.Tensor:
        """The scalar GRPO loss. [B, G] logprobs are whole-sequence logprobs (T = 1, as in the lesson).

        Give exactly one of `rewards` (the lesson's form: A = group_advantages(rewards) inside, with
        self.normalize_std and self.eps) or `advantages` (a trainer's form: any estimator's advantages,
        per completion [B, G] or per token [B, G, T], taken as they are: no centring, no scaling).
        """
        logp, old_logp, ref_logp, mask, given = as_token_level(
            policy_logprobs, old_policy_logprobs, rewards, reference_logprobs, response_mask, advantages
        )
        # Now logp, old_logp, ref_logp (or None), mask: [B, G, T], with T = 1 for sequence-level inputs;
        # `given` is None (use the rewards) or the advantages as [B, G, 1] or [B, G, T].

        # The metrics at the end read the names `advantages`, `ratio` and `loss`: keep them.
        # TODO 1: `advantages`, shaped to broadcast over the tokens of each completion: [B, G, 1] from the
        # rewards (group_advantages with self.normalize_std, self.eps), or `given` when it is not None.
        raise NotImplementedError("GRPOLoss.forward: your code here")

        # TODO 2: `ratio` = pi_theta / pi_old, [B, G, T]. Work in log space: exp(logp - old_logp).
        # importance_sampling_level == "sequence": every token of a completion shares
        # exp(masked mean over its tokens of (logp - old_logp)): padding does not count in that mean.
        raise NotImplementedError("GRPOLoss.forward: your code here")

        # TODO 3: `per_token_loss`, the clipped surrogate, [B, G, T]:
        #         -min(r A, clip(r, 1 - eps, 1 + eps_high) A).
        raise NotImplementedError("GRPOLoss.forward: your code here")

        # TODO 4: add kl_beta * KL(pi_theta || pi_ref) per token (self.kl_estimator), unless
        # ref_logp is None or self.kl_beta == 0.
        raise NotImplementedError("GRPOLoss.forward: your code here")

        # TODO 5: `loss`, the aggregate with one row per completion, [B * G, T] (flatten(0, 1)),
        # with self.loss_agg_mode and self.max_len.
        raise NotImplementedError("GRPOLoss.forward: your code here")

        self.metrics = self.compute_metrics(loss, logp, ref_logp, mask, rewards, advantages, ratio)
        return loss

    @torch.no_grad()
    def compute_metrics(self, loss, logp, ref_logp, mask, rewards, advantages, ratio) -> dict[str, float]:
        """What to log each step (floats); clip_fraction: the share of tokens whose gradient the clip cuts."""
        is_response = mask.bool()
        ratios = ratio[is_response]
        kl = 0.0
        if ref_logp is not None:
            kl = masked_mean(kl_estimate(logp, ref_logp, self.kl_estimator), mask).item()
        metrics = {
            "loss": loss.item(),
            "kl": kl,
            "clip_fraction": clip_fraction(ratio, advantages, mask, self.clip_epsilon, self.clip_epsilon_high),
            "ratio_mean": masked_mean(ratio, mask).item(),
            "ratio_min": ratios.min().item() if ratios.numel() else 0.0,
            "ratio_max": ratios.max().item() if ratios.numel() else 0.0,
            "advantage_mean": masked_mean(advantages.expand_as(mask), mask).item(),
            "advantage_std": advantages.std().item() if advantages.numel() > 1 else 0.0,
            "response_length": mask.sum().item() / max(mask.shape[0] * mask.shape[1], 1),
        }
        if rewards is not None:  # the lesson's form: the loss saw the rewards themselves
            metrics["reward_mean"] = rewards.double().mean().item()
            metrics["reward_std"] = rewards.double().std().item() if rewards.numel() > 1 else 0.0
        return metrics


def as_token_level(policy_logprobs, old_policy_logprobs, rewards, reference_logprobs, response_mask, advantages=None):
    """Check the inputs; return (logp, old_logp, ref_logp, mask, given), each [B, G, T] (T = 1 for [B, G] inputs).

    Exactly one of `rewards` ([B, G]) and `advantages` ([B, G] or [B, G, T]) must be given, else ValueError.
    `given` is None when the rewards were given, else the advantages shaped [B, G, 1] or [B, G, T]. The mask
    comes back in the logprobs' dtype (all ones when None). Nothing is modified in place.
    """
    shape = tuple(policy_logprobs.shape)
    if policy_logprobs.dim() not in (2, 3):
        raise ValueError(f"policy_logprobs must be [B, G] or [B, G, T], got shape {shape}")
    if (rewards is None) == (advantages is None):
        raise ValueError("give exactly one of rewards= (the group step runs inside the loss) and advantages= "
                         f"(used as given), got {'both' if rewards is not None else 'neither'}")
    if rewards is not None and tuple(rewards.shape) != shape[:2]:
        raise ValueError(f"rewards must be [B, G] = {shape[:2]} to match the logprobs, got {tuple(rewards.shape)}")
    if advantages is not None and tuple(advantages.shape) not in (shape[:2], shape):
        raise ValueError(f"advantages must be [B, G] = {shape[:2]} or shaped like the logprobs {shape}, "
                         f"got {tuple(advantages.shape)}")
    check_same_shape("policy_logprobs", policy_logprobs, old_policy_logprobs=old_policy_logprobs,
                     reference_logprobs=reference_logprobs, response_mask=response_mask)
    if response_mask is None:
        response_mask = torch.ones_like(policy_logprobs)
    tensors = [policy_logprobs, old_policy_logprobs, reference_logprobs, response_mask.to(policy_logprobs.dtype)]
    if policy_logprobs.dim() == 2:
        tensors = [None if t is None else t.unsqueeze(-1) for t in tensors]
    given = None
    if advantages is not None:
        given = advantages.to(policy_logprobs.dtype)
        given = given.unsqueeze(-1) if given.dim() == 2 else given
    return (*tensors, given)
