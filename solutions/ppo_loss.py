"""Exercise: PPO for language models (Schulman et al. 2017): GAE advantages and the PPO loss.

Each response token is an action; the critic V estimates the return from the state before it.
The only reward is usually the outcome score on the last response token (minus a KL penalty per token).

    delta_t  = r_t + gamma * V_{t+1} - V_t                  TD residual, V after the last token = 0
    A_t      = delta_t + gamma * lam * A_{t+1}              GAE (Schulman et al. 2016), computed backwards
    R_t      = A_t + V_t                                    the critic's regression target
    loss     = -min(r A, clip(r, 1 - eps, 1 + eps) A) + c_v (V - R)^2 - c_e * entropy   (token means)

Shapes: B sequences, T response tokens. Masks are 1 on response tokens and 0 on the padding after
EOS (float or bool); every mean is over the response tokens only.

Write the bodies marked `your code here`. Run `python tools/grade.py ppo_loss` to check them.
"""
import torch
from torch import nn

from loss import check_same_shape, clip_fraction, masked_mean


@torch.no_grad()
def compute_gae(
    rewards: torch.Tensor,    # [B, T], reward of each response token
    values: torch.Tensor,     # [B, T], V(s_t): the critic's value of the state before token t
    gamma: float = 0.99,
    lam: float = 0.95,
    mask: torch.Tensor | None = None,   # [B, T], 1 on response tokens; None: all ones
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation over the response tokens. Returns (advantages, returns), each [B, T].

        delta_t = r_t + gamma * V_{t+1} - V_t,  with V_{t+1} = 0 after the last response token
        A_t     = delta_t + gamma * lam * A_{t+1}    (A after the last response token = 0)
        R_t     = A_t + V_t                          on response tokens

    lam = 0 gives the TD residual A_t = delta_t; gamma = lam = 1 gives the Monte-Carlo return minus
    the value, A_t = sum_{k >= t} r_k - V_t. Padding holds anything (the critic's output past EOS is
    garbage): it must not change a single response-token number, and padding gets A = R = 0.
    The mask is a prefix of ones (the response) then zeros (padding), as the rollout returns it.
    No gradient flows through the result (the targets are constants). Same recursion as CleanRL's
    ppo.py, verl's `compute_gae_advantage_return` and TRL's PPOTrainer (without their whitening).
    """
    check_same_shape("values", values, rewards=rewards, mask=mask)
    mask = torch.ones_like(values) if mask is None else mask.to(values.dtype)
    # TODO 1: set rewards and values to 0 on padding, with torch.where (0 * inf is nan: a product
    # does not remove garbage). Do not modify the caller's tensors in place.
    ### BEGIN SOLUTION
    is_response = mask.bool()
    rewards = torch.where(is_response, rewards, torch.zeros_like(rewards))
    values = torch.where(is_response, values, torch.zeros_like(values))
    ### END SOLUTION

    # TODO 2: walk backwards over t = T-1 .. 0, carrying V_{t+1} and A_{t+1} (both 0 past the end);
    # A_t must be 0 on padding (multiply by mask[:, t]).
    ### BEGIN SOLUTION
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])       # V after the last response token: 0
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    ### END SOLUTION

    # TODO 3: the returns, the critic's targets.
    ### BEGIN SOLUTION
    returns = advantages + values
    ### END SOLUTION
    return advantages, returns


class PPOLoss(nn.Module):
    """PPO's loss to minimise: clipped policy surrogate + value regression - entropy bonus.

        policy_loss = mean_t( -min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t) ),  r_t = exp(logp_t - old_logp_t)
        value_loss  = mean_t( (V_t - R_t)^2 )
                    = mean_t( max((V_t - R_t)^2, (V_old_t + clip(V_t - V_old_t, -c, c) - R_t)^2) )  with value_clip=c
        loss        = policy_loss + value_loss_coef * value_loss - entropy_coef * mean_t(entropy_t)

    Every mean_t is a token mean over the response mask (all tokens of the batch weigh the same).
    value_clip needs old_values (the critic's values when the experience was collected).

    After each call `self.metrics` holds floats: loss, policy_loss, value_loss, entropy, clip_fraction,
    approx_kl (mean of (r - 1) - log r, CleanRL's estimate of KL(pi_old || pi_theta)), ratio_mean, ratio_max.
    """

    def __init__(self, clip_epsilon: float = 0.2, value_loss_coef: float = 0.5, entropy_coef: float = 0.01, *,
                 value_clip: float | None = None):
        super().__init__()
        self.clip_epsilon = clip_epsilon
        self.value_loss_coef = value_loss_coef
        self.entropy_coef = entropy_coef
        self.value_clip = value_clip
        self.metrics: dict[str, float] = {}

    def forward(
        self,
        policy_logprobs: torch.Tensor,      # [B, T], log pi_theta of the sampled tokens (carries the gradient)
        old_policy_logprobs: torch.Tensor,  # [B, T], log pi_old (the policy that sampled)
        values: torch.Tensor,               # [B, T], the critic's current predictions (carries the gradient)
        returns: torch.Tensor,              # [B, T], targets from compute_gae
        advantages: torch.Tensor,           # [B, T], from compute_gae
        entropy: torch.Tensor,              # [B, T], entropy of pi_theta at each position
        response_mask: torch.Tensor | None = None,   # [B, T]; None: all ones
        old_values: torch.Tensor | None = None,      # [B, T], needed with value_clip
    ) -> torch.Tensor:
        """The scalar PPO loss (see the class docstring)."""
        check_same_shape("policy_logprobs", policy_logprobs, old_policy_logprobs=old_policy_logprobs, values=values,
                         returns=returns, advantages=advantages, entropy=entropy, response_mask=response_mask,
                         old_values=old_values)
        if self.value_clip is not None and old_values is None:
            raise ValueError("PPOLoss(value_clip=...) needs old_values, the critic's values at collection time")
        mask = torch.ones_like(policy_logprobs) if response_mask is None else response_mask.to(policy_logprobs.dtype)

        # The metrics at the end read `loss`, `policy_loss`, `value_loss` and `mean_entropy`: keep the names.
        # TODO 1: the ratio and `policy_loss`, the clipped surrogate's token mean over the mask (masked_mean).
        ### BEGIN SOLUTION
        ratio = torch.exp(policy_logprobs - old_policy_logprobs)
        clipped_ratio = torch.clamp(ratio, 1 - self.clip_epsilon, 1 + self.clip_epsilon)
        policy_loss = masked_mean(-torch.min(ratio * advantages, clipped_ratio * advantages), mask)
        ### END SOLUTION

        # TODO 2: `value_loss`, plain or (self.value_clip is not None) clipped around old_values.
        ### BEGIN SOLUTION
        value_error = (values - returns) ** 2
        if self.value_clip is not None:
            clipped_values = old_values + torch.clamp(values - old_values, -self.value_clip, self.value_clip)
            value_error = torch.max(value_error, (clipped_values - returns) ** 2)
        value_loss = masked_mean(value_error, mask)
        ### END SOLUTION

        # TODO 3: `mean_entropy`, and the total `loss`. The entropy is a bonus: more entropy, lower loss.
        ### BEGIN SOLUTION
        mean_entropy = masked_mean(entropy, mask)
        loss = policy_loss + self.value_loss_coef * value_loss - self.entropy_coef * mean_entropy
        ### END SOLUTION

        self.metrics = self.compute_metrics(loss, policy_loss, value_loss, mean_entropy,
                                            policy_logprobs - old_policy_logprobs, advantages, mask)
        return loss

    @torch.no_grad()
    def compute_metrics(self, loss, policy_loss, value_loss, mean_entropy, log_ratio, advantages, mask):
        """What to log each step (floats). clip_fraction counts the tokens whose gradient the clip cuts."""
        ratio = torch.exp(log_ratio)
        ratios = ratio[mask.bool()]
        return {
            "loss": loss.item(),
            "policy_loss": policy_loss.item(),
            "value_loss": value_loss.item(),
            "entropy": mean_entropy.item(),
            "clip_fraction": clip_fraction(ratio, advantages, mask, self.clip_epsilon, self.clip_epsilon),
            "approx_kl": masked_mean((ratio - 1) - log_ratio, mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
            "ratio_max": ratios.max().item() if ratios.numel() else 0.0,
        }
