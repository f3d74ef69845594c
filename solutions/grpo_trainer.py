"""Exercise: the GRPO trainer (Group Relative Policy Optimization, Shao et al. 2024, DeepSeekMath).

One call of `training_step(batch)` is one GRPO iteration on B prompts:

    1. rollout      G completions per prompt from pi_old, the policy as it is now      generate_group_outputs (given)
    2. reward       the task's rule: r_i = reward(o_i, answer of its prompt)           compute_rewards
    3. advantage    relative to the group, e.g. A_i = (r_i - mean(r)) / (std(r) + eps)  compute_advantages (given)
    4. log-probs    log pi_old and log pi_ref of every sampled token, fixed before any update
    5. update       num_iterations passes over the batch in minibatches of whole groups: update_policy
                        ratio_t = pi_theta / pi_old,   loss = GRPOLoss(...)   (clipped surrogate + beta * KL)

Why log pi_old at all: after the first optimizer step pi_theta is no longer pi_old, so the ratio
pi_theta / pi_old moves away from 1 and the clip starts to matter; with num_iterations=1 and one
minibatch the ratio is exactly 1 and GRPO is plain REINFORCE with a group baseline.

Shapes: B prompts, G samples per prompt, T response tokens (T <= max_new_tokens). Masks are 1 on response
tokens (the EOS included) and 0 on the padding after EOS. A group batch is [B, G, ...]; the flat layout
[B * G, ...] that the rollout and sequence_logprobs use keeps a group's rows together (row b * G + g is
sample g of prompt b): training.bookkeeping.flatten_groups / unflatten_groups convert between the two.

Your loss runs here: GRPOLoss comes from your own grpo_loss.py (finish it first).
Write the bodies marked `your code here`. Run `python tools/grade.py grpo_trainer` to check them.
"""
from typing import NamedTuple

import torch

from loss import GROUP_ESTIMATORS, estimate_advantages, keep_informative_groups, masked_mean, overlong_penalty
from training.bookkeeping import StepMetrics, flatten_groups, rollout_metrics, select_rows, unflatten_groups
from training.rewards import REWARD_KINDS
from training.rollout import generate, sequence_logprobs

from .grpo_loss import GRPOLoss



class GroupOutputs(NamedTuple):
    """G sampled completions for each of B prompts, as the old policy produced them."""

    completions: torch.Tensor  # [B, G, T] long, PAD after the first EOS
    logprobs: torch.Tensor     # [B, G, T] float, log pi_old of each sampled token at the temperature (0 on padding)
    mask: torch.Tensor         # [B, G, T] float, 1 on response tokens (EOS included), 0 on padding


class GRPOTrainer:
    """GRPO on a task with a rule reward (no critic: the group is the baseline).

    model: the policy pi_theta (a training.model.GPT), trained in place.
    ref_model: the frozen reference pi_ref for the KL term (usually a copy of the SFT model); never
        called when kl_beta == 0, so it may be None then.
    group_size: G, samples per prompt (>= 2: a group of one has no baseline).
    clip_epsilon, clip_epsilon_high: the ratio is clipped to [1 - clip_epsilon, 1 + clip_epsilon_high]
        (None: symmetric; DAPO's clip-higher uses 0.28).
    kl_beta: weight of KL(pi_theta || pi_ref) in the loss (estimator `kl_estimator`, k3 by default).

    Keyword options:
    task: a training.tasks.Task (its `reward` and `max_new_tokens` are used); max_new_tokens overrides the latter.
    lr / optimizer: AdamW(lr) unless an optimizer is given (tests pass SGD).
    num_iterations: passes over each batch (GRPO's mu); num_minibatches: optimizer steps per pass,
        each over about B / num_minibatches whole groups.
    max_grad_norm: gradient-norm clip before each step (None: no clip).
    temperature: sampling temperature; every log-prob of the step (old, reference, updates) uses the same.
    normalize_std: divide by the group std (the grpo estimator).
    advantage_estimator: one of loss.GROUP_ESTIMATORS (every registry entry but ReMax, whose baseline, each
        prompt's greedy answer, compute_advantages(rewards, outputs) does not have).
    loss_agg_mode, kl_estimator, importance_sampling_level: GRPOLoss's options.
    policy_loss: a module called like GRPOLoss (same arguments, a scalar back, `.metrics`) used instead of it.
    dynamic_sampling: DAPO's filter: drop the groups whose rewards are all equal (advantage 0 everywhere).
    overlong_cache_len: DAPO's soft overlong penalty over the last tokens before max_new_tokens (0: off).
    reward_kind: one of training.rewards.REWARD_KINDS ("exact" 1/0, "partial" credit, "format").
    generator: the torch.Generator for sampling and shuffling (on the model's device); seeds everything.

    Attributes tests and tools rely on: model, ref_model, group_size, kl_beta, temperature, grpo_loss (the
    GRPOLoss or policy_loss), optimizer, optimizers (a tuple, the policy's optimizer first), generator,
    num_iterations, num_minibatches, max_grad_norm, advantage_estimator, dynamic_sampling.
    """

    def __init__(self, model, ref_model, group_size: int = 8, clip_epsilon: float = 0.2, kl_beta: float = 0.0, *,
                 task, lr: float = 2e-4, optimizer: torch.optim.Optimizer | None = None, num_iterations: int = 2,
                 num_minibatches: int = 2, max_grad_norm: float | None = 1.0, temperature: float = 1.0,
                 normalize_std: bool = True, loss_agg_mode: str = "seq-mean-token-mean",
                 clip_epsilon_high: float | None = None, kl_estimator: str = "k3",
                 importance_sampling_level: str = "token", policy_loss: torch.nn.Module | None = None,
                 advantage_estimator: str = "grpo", dynamic_sampling: bool = False, overlong_cache_len: int = 0,
                 reward_kind: str = "exact", max_new_tokens: int | None = None,
                 generator: torch.Generator | None = None):
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a group of one has no baseline), got {group_size}")
        if advantage_estimator not in GROUP_ESTIMATORS:
            raise ValueError(f"unknown advantage estimator {advantage_estimator!r} for GRPOTrainer: "
                             f"choose one of {', '.join(GROUP_ESTIMATORS)}")
        if reward_kind not in REWARD_KINDS:
            raise ValueError(f"unknown reward kind {reward_kind!r}: choose one of {', '.join(REWARD_KINDS)}")
        if num_iterations < 1 or num_minibatches < 1:
            raise ValueError(f"num_iterations and num_minibatches must be >= 1, "
                             f"got {num_iterations} and {num_minibatches}")
        if kl_beta != 0 and ref_model is None:
            raise ValueError("kl_beta > 0 needs a reference model (ref_model is None)")
        self.model, self.ref_model, self.task = model, ref_model, task
        self.group_size, self.kl_beta, self.temperature = group_size, kl_beta, temperature
        self.num_iterations, self.num_minibatches = num_iterations, num_minibatches
        self.max_grad_norm = float("inf") if max_grad_norm is None else max_grad_norm
        self.normalize_std, self.advantage_estimator = normalize_std, advantage_estimator
        self.dynamic_sampling, self.overlong_cache_len = dynamic_sampling, overlong_cache_len
        self.reward_kind, self.generator = reward_kind, generator
        self.max_new_tokens = max_new_tokens or task.max_new_tokens
        self.grpo_loss = policy_loss or GRPOLoss(
            clip_epsilon, kl_beta, clip_epsilon_high=clip_epsilon_high, loss_agg_mode=loss_agg_mode,
            kl_estimator=kl_estimator, importance_sampling_level=importance_sampling_level,
            max_len=self.max_new_tokens)
        self.optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.optimizers = (self.optimizer,)
        if ref_model is not None:
            ref_model.requires_grad_(False)

    # ------------------------------------------------------------------ 1. rollout (given)
    def generate_group_outputs(self, prompts: torch.Tensor) -> GroupOutputs:
        """Sample G completions for each prompt from the current policy (it is pi_old for this step).

        prompts: [B, P] -> GroupOutputs(completions, logprobs, mask), each [B, G, T]. One call of
        training.rollout.generate with num_samples=G: KV cache, no gradient, self.temperature, self.generator.
        """
        rollout = generate(self.model, prompts, self.max_new_tokens, temperature=self.temperature,
                           generator=self.generator, num_samples=self.group_size)
        fields = (rollout.completions, rollout.logprobs, rollout.mask)
        return GroupOutputs(*(unflatten_groups(field, self.group_size) for field in fields))

    # ------------------------------------------------------------------ 2. reward
    def compute_rewards(self, answers: torch.Tensor, completions: torch.Tensor, kind: str | None = None):
        """The task's rule reward of every completion: answers [B, A], completions [B, G, T] -> rewards [B, G].

        Every sample of prompt b is scored against answer b (not against another prompt's answer), with
        self.task.reward(completions [N, T], answers [N, A], kind=...) -> [N], where kind defaults to
        self.reward_kind ("exact" gives the exact-match rate whatever the training reward is).
        """
        ### BEGIN SOLUTION
        kind = kind or self.reward_kind
        group_answers = answers.repeat_interleave(completions.shape[1], dim=0)
        rewards = self.task.reward(flatten_groups(completions), group_answers, kind=kind)
        return unflatten_groups(rewards, completions.shape[1])
        ### END SOLUTION

    # ------------------------------------------------------------------ 3. advantage (given)
    def compute_advantages(self, rewards: torch.Tensor, outputs: GroupOutputs) -> torch.Tensor:
        """Advantages from rewards [B, G] and the rollout: [B, G] (one per completion) or [B, G, T] (per token).

            grpo        A_i = (r_i - mean_g r) / (std_g r + eps)      (normalize_std=False: r_i - mean_g r)
            dr_grpo     A_i =  r_i - mean_g r                         (Dr. GRPO: never divided by the std)
            rloo        A_i = r_i - mean of the other G-1 rewards      (leave-one-out baseline)
            grpo_passk  only each group's best sample non-zero, by its margin over the runner-up
            reinforce_plus_plus   per token: the return-to-go whitened over the batch (no group baseline)

        mean_g and std_g run over the G samples of ONE prompt, never over the whole batch: a prompt that is
        easy for the model (all samples right) must not look better than a hard one. With
        overlong_cache_len > 0, DAPO's soft overlong penalty is added to the rewards first.
        Subclasses may change the advantages (e.g. correct for a mismatched sampler): training_step must get
        them from here.
        """
        if self.overlong_cache_len > 0:
            penalty = overlong_penalty(outputs.mask.sum(dim=-1), self.max_new_tokens, self.overlong_cache_len)
            rewards = rewards + penalty.to(rewards)
        return estimate_advantages(self.advantage_estimator, rewards, outputs.mask, normalize_std=self.normalize_std)

    # ------------------------------------------------------------------ log-probs of a group batch
    def policy_logprobs(self, model, prompts: torch.Tensor, completions: torch.Tensor, with_entropy: bool = False):
        """log pi(y_t | prompt, y_<t) of every completion token under `model`, at self.temperature: [b, G, T].

        prompts [b, P], completions [b, G, T]: sample g of group i continues prompt i. One forward pass of
        training.rollout.sequence_logprobs over the b * G flat rows, viewed back as groups. With with_entropy
        also the entropy of each position's distribution: (logprobs, entropy), each [b, G, T].
        The gradient flows unless the caller turns it off (torch.no_grad() for pi_ref).
        """
        ### BEGIN SOLUTION
        group_size = completions.shape[1]
        row_prompts = prompts.repeat_interleave(group_size, dim=0)
        result = sequence_logprobs(model, row_prompts, flatten_groups(completions), temperature=self.temperature,
                                   with_entropy=with_entropy)
        if with_entropy:
            return tuple(unflatten_groups(part, group_size) for part in result)
        return unflatten_groups(result, group_size)
        ### END SOLUTION

    # ------------------------------------------------------------------ 5. update
    def update_policy(self, prompts, outputs: GroupOutputs, advantages, old_logprobs, ref_logprobs) -> dict:
        """num_iterations passes over the batch; returns the metrics of training.bookkeeping.StepMetrics.

        prompts [B, P]; outputs, old_logprobs, ref_logprobs (None when kl_beta == 0): [B, G, T];
        advantages [B, G] or [B, G, T], from compute_advantages.

        Each pass shuffles the B groups afresh (self.generator) and splits them into num_minibatches
        minibatches of whole groups: a group's samples are only comparable with each other, so they stay
        together. For each minibatch: ONE forward pass of the policy with gradient (policy_logprobs, at the
        sampling temperature, with the entropy to log), the loss

            self.grpo_loss(policy_logprobs, old_logprobs, reference_logprobs=..., response_mask=..., advantages=...)

        then one optimizer step: zero the gradients, backward, clip the gradient norm to self.max_grad_norm
        (torch.nn.utils.clip_grad_norm_, which also returns the norm before clipping), step.
        pi_theta changes after every step while log pi_old stays what it was: that is what moves the ratio.
        A loss that is NaN or inf is skipped, not stepped on, and counted. Log per step: the loss's metrics,
        grad_norm, and entropy (its mean over the response tokens).
        """
        ### BEGIN SOLUTION
        log = StepMetrics()
        for _ in range(self.num_iterations):
            order = torch.randperm(prompts.shape[0], generator=self.generator, device=prompts.device)
            for idx in order.chunk(self.num_minibatches):
                minibatch = select_rows(outputs, idx)
                logprobs, entropy = self.policy_logprobs(self.model, prompts[idx], minibatch.completions,
                                                       with_entropy=True)
                reference = None if ref_logprobs is None else ref_logprobs[idx]
                loss = self.grpo_loss(logprobs, old_logprobs[idx], reference_logprobs=reference,
                                      response_mask=minibatch.mask, advantages=advantages[idx])
                if log.skip_nonfinite(loss):
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
                self.optimizer.step()
                entropy = masked_mean(entropy.detach(), minibatch.mask)
                log.add(self.grpo_loss.metrics, grad_norm=grad_norm, entropy=entropy)
        return log.summary()
        ### END SOLUTION

    # ------------------------------------------------------------------ one step
    def training_step(self, batch) -> dict:
        """One GRPO iteration on a batch of problems (training.tasks.Batch: prompts [B, P], answers [B, A]).

        The stages, in this order:
          1. the rollout, only through self.generate_group_outputs (a subclass may sample differently);
          2. the rewards (compute_rewards);
          3. with self.dynamic_sampling, keep only the groups whose rewards are not all equal
             (loss.keep_informative_groups): under a group baseline they have advantage 0 and teach nothing;
          4. the advantages, only through self.compute_advantages(rewards, outputs);
          5. log pi_old (the rollout's log-probs, or a fresh pass without gradient: the same numbers) and,
             only when self.kl_beta != 0, log pi_ref: one pass of the reference model without gradient over
             every sample. Both are fixed now, before any update, and never recomputed during it;
          6. update_policy.
        If no group is left there is nothing to learn from: no update (loss None, optimizer_steps 0).

        Returns a dict of floats: reward_mean, solved (the exact-match rate of the samples), response_length
        (training.bookkeeping.rollout_metrics, over every sample), zero_std_fraction (the share of groups whose
        rewards are all equal), groups_kept, then update_policy's metrics (loss, clip_fraction, kl, entropy,
        grad_norm, optimizer_steps, nonfinite_losses, ...).
        """
        ### BEGIN SOLUTION
        prompts, answers = batch.prompts, batch.answers
        outputs = self.generate_group_outputs(prompts)
        rewards = self.compute_rewards(answers, outputs.completions)
        solved = self.compute_rewards(answers, outputs.completions, kind="exact")
        metrics = rollout_metrics(rewards, solved, outputs.mask)
        informative = keep_informative_groups(rewards)
        metrics["zero_std_fraction"] = 1.0 - informative.float().mean().item()
        if self.dynamic_sampling:
            prompts, rewards, outputs = prompts[informative], rewards[informative], select_rows(outputs, informative)
        metrics["groups_kept"] = float(prompts.shape[0])
        if prompts.shape[0] == 0:
            return dict(metrics, loss=None, optimizer_steps=0, nonfinite_losses=0)
        advantages = self.compute_advantages(rewards, outputs)
        old_logprobs = outputs.logprobs
        ref_logprobs = None
        if self.kl_beta != 0:
            with torch.no_grad():
                ref_logprobs = self.policy_logprobs(self.ref_model, prompts, outputs.completions)
        metrics.update(self.update_policy(prompts, outputs, advantages, old_logprobs, ref_logprobs))
        return metrics
        ### END SOLUTION
