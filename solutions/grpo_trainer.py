"""Exercise: the GRPO trainer (Group Relative Policy Optimization, Shao et al. 2024, DeepSeekMath).

One call of `training_step(batch)` is one GRPO iteration on B prompts:

    1. rollout      G completions per prompt from pi_old, the policy as it is now     generate_group_outputs
    2. reward       the task's rule: r_i = reward(o_i, answer)                          compute_rewards
    3. advantage    relative to the group:  A_i = (r_i - mean(r)) / (std(r) + eps)     compute_advantages
    4. log-probs    log pi_old (old) and log pi_ref (reference), once, without gradient  old_and_reference_logprobs
    5. update       num_iterations passes over the batch in minibatches of whole groups: update_policy
                        ratio_t = pi_theta / pi_old,   loss = GRPOLoss(...)   (clipped surrogate + beta * KL)
                        zero the gradients, backward, clip the gradient norm, optimizer step

Why old log-probs at all: after the first minibatch step pi_theta is no longer pi_old, so the ratio
pi_theta / pi_old moves away from 1 and the clip starts to matter; with num_iterations=1 and one
minibatch the ratio is exactly 1 and GRPO is plain REINFORCE with a group baseline.

Shapes: B prompts, G samples per prompt, T response tokens (T <= task.max_new_tokens). Masks are 1 on
response tokens (the EOS included) and 0 on the padding after EOS. Rows of one group are adjacent:
the flat row b * G + g is sample g of prompt b, and `.view(B, G, T)` groups them.

Your loss runs here: GRPOLoss and group_advantages come from your own grpo_loss.py (finish it first).
Write the bodies marked `your code here`. Run `python tools/grade.py grpo_trainer` to check them.
"""
from typing import NamedTuple

import torch

from loss import grpo_passk_advantages, keep_informative_groups, masked_mean, overlong_penalty, rloo_advantages
from loss import reinforce_plus_plus_advantages
from training.rollout import generate, sequence_logprobs

from .grpo_loss import GRPOLoss, group_advantages

ADVANTAGE_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_plus_plus", "grpo_passk")
REWARD_KINDS = ("exact", "partial", "format")
LOSS_METRICS = ("loss", "kl", "clip_fraction", "ratio_mean", "ratio_min", "ratio_max")  # logged from GRPOLoss


class GroupOutputs(NamedTuple):
    """G sampled completions for each of B prompts, as the old policy produced them."""

    completions: torch.Tensor  # [B, G, T] long, PAD after the first EOS
    logprobs: torch.Tensor     # [B, G, T] float, log pi_old of each sampled token (0 on padding), no gradient
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
    task: a training.tasks.Task (its `reward` and `max_new_tokens` are used).
    lr / optimizer: AdamW(lr) unless an optimizer is given (tests pass SGD).
    num_iterations: passes over each batch (GRPO's mu); num_minibatches: optimizer steps per pass,
        each over B / num_minibatches whole groups.
    max_grad_norm: gradient-norm clip before each step (None: no clip).
    temperature: sampling temperature; the log-probs of every pass use the same temperature.
    normalize_std: divide by the group std (grpo); loss_agg_mode: GRPOLoss's token aggregation.
    advantage_estimator: one of ADVANTAGE_ESTIMATORS (see compute_advantages).
    dynamic_sampling: DAPO's filter: drop the groups whose rewards are all equal (advantage 0 everywhere).
    overlong_cache_len: DAPO's soft overlong penalty over the last tokens before max_new_tokens (0: off).
    reward_kind: "exact" (1/0), "partial" (fraction of answer positions right) or "format".
    generator: the torch.Generator for sampling and shuffling (on the model's device); seeds everything.

    Attributes tests and tools rely on: model, ref_model, group_size, kl_beta, grpo_loss (the GRPOLoss),
    optimizer, generator, num_iterations, num_minibatches.
    """

    def __init__(
        self,
        model,
        ref_model,
        group_size: int = 8,
        clip_epsilon: float = 0.2,
        kl_beta: float = 0.0,
        *,
        task,
        lr: float = 2e-4,
        optimizer: torch.optim.Optimizer | None = None,
        num_iterations: int = 2,
        num_minibatches: int = 2,
        max_grad_norm: float | None = 1.0,
        temperature: float = 1.0,
        normalize_std: bool = True,
        loss_agg_mode: str = "seq-mean-token-mean",
        clip_epsilon_high: float | None = None,
        kl_estimator: str = "k3",
        advantage_estimator: str = "grpo",
        dynamic_sampling: bool = False,
        overlong_cache_len: int = 0,
        reward_kind: str = "exact",
        max_new_tokens: int | None = None,
        generator: torch.Generator | None = None,
    ):
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a group of one has no baseline), got {group_size}")
        if advantage_estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"unknown advantage estimator {advantage_estimator!r}: "
                             f"choose one of {', '.join(ADVANTAGE_ESTIMATORS)}")
        if reward_kind not in REWARD_KINDS:
            raise ValueError(f"unknown reward kind {reward_kind!r}: choose one of {', '.join(REWARD_KINDS)}")
        if num_iterations < 1 or num_minibatches < 1:
            raise ValueError(f"num_iterations and num_minibatches must be >= 1, got {num_iterations}, {num_minibatches}")
        if kl_beta != 0 and ref_model is None:
            raise ValueError("kl_beta > 0 needs a reference model (ref_model is None)")
        self.model = model
        self.ref_model = ref_model
        self.group_size = group_size
        self.kl_beta = kl_beta
        self.task = task
        self.num_iterations = num_iterations
        self.num_minibatches = num_minibatches
        self.max_grad_norm = max_grad_norm
        self.temperature = temperature
        self.normalize_std = normalize_std
        self.advantage_estimator = advantage_estimator
        self.dynamic_sampling = dynamic_sampling
        self.overlong_cache_len = overlong_cache_len
        self.reward_kind = reward_kind
        self.max_new_tokens = max_new_tokens or task.max_new_tokens
        self.generator = generator
        # The loss gets advantages that compute_advantages has already centred in each group, so it must
        # not normalise them again: normalize_std=False makes its group step "A - mean(A)" = A.
        self.grpo_loss = GRPOLoss(clip_epsilon, kl_beta, clip_epsilon_high=clip_epsilon_high, normalize_std=False,
                                  loss_agg_mode=loss_agg_mode, kl_estimator=kl_estimator,
                                  max_len=self.max_new_tokens)
        self.optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99),
                                                        weight_decay=0.0)
        if ref_model is not None:
            ref_model.requires_grad_(False)

    # ------------------------------------------------------------------ 1. rollout
    def generate_group_outputs(self, prompts: torch.Tensor) -> GroupOutputs:
        """Sample G completions for each prompt from the current policy (it is pi_old for this step).

        prompts: [B, P] -> GroupOutputs(completions, logprobs, mask), each [B, G, T].
        Repeat each prompt G times (rows b*G .. b*G+G-1 belong to prompt b), sample all B*G rows in one
        call of training.rollout.generate (KV cache, no gradient, self.temperature, self.generator,
        self.max_new_tokens), then view each [B*G, T] result as [B, G, T].
        """
        # TODO: prompts.repeat_interleave(G, dim=0); generate(...); .view(B, G, -1) on each field.
        ### BEGIN SOLUTION
        batch_size = prompts.shape[0]
        rollout = generate(self.model, prompts.repeat_interleave(self.group_size, dim=0), self.max_new_tokens,
                           temperature=self.temperature, generator=self.generator)
        return GroupOutputs(
            completions=rollout.completions.view(batch_size, self.group_size, -1),
            logprobs=rollout.logprobs.view(batch_size, self.group_size, -1),
            mask=rollout.mask.view(batch_size, self.group_size, -1),
        )
        ### END SOLUTION

    # ------------------------------------------------------------------ 2. reward
    def compute_rewards(self, answers: torch.Tensor, completions: torch.Tensor) -> torch.Tensor:
        """The task's rule reward of every completion: answers [B, A], completions [B, G, T] -> rewards [B, G].

        Every sample of prompt b is scored against answer b: repeat the answers G times like the prompts,
        score the flat [B*G, T] completions with self.task.reward(..., kind=self.reward_kind), view as [B, G].
        """
        # TODO: answers.repeat_interleave(G, dim=0); completions.flatten(0, 1); task.reward; .view(B, G).
        ### BEGIN SOLUTION
        batch_size = completions.shape[0]
        flat_answers = answers.repeat_interleave(self.group_size, dim=0)
        rewards = self.task.reward(completions.flatten(0, 1), flat_answers, kind=self.reward_kind)
        return rewards.view(batch_size, self.group_size)
        ### END SOLUTION

    # ------------------------------------------------------------------ 3. advantage
    def compute_advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """Advantages [B, G] from rewards [B, G]; every estimator's advantages have mean 0 in each group.

            grpo        A_i = (r_i - mean_g r) / (std_g r + eps)        (normalize_std=False: r_i - mean_g r)
            dr_grpo     A_i =  r_i - mean_g r                          (Dr. GRPO: no division by the std)
            rloo        A_i = G/(G-1) (r_i - mean_g r)                  (leave-one-out baseline, loss/)
            reinforce_plus_plus   A = whiten_batch(r_i - mean_g r)    (REINFORCE++ with a group baseline, loss/)
            grpo_passk  loss/'s pass@k advantage (only the best sample of a group pushed up), centred in its group

        mean_g and std_g run over the G samples of ONE prompt (dim 1), never over the whole batch: a
        prompt that is easy for the model (all samples right) must not look better than a hard one.
        """
        if self.advantage_estimator in ("grpo", "dr_grpo"):
            normalize = self.normalize_std and self.advantage_estimator == "grpo"
            # TODO: one call of group_advantages from your grpo_loss.py.
            ### BEGIN SOLUTION
            return group_advantages(rewards, normalize_std=normalize)
            ### END SOLUTION
        if self.advantage_estimator == "rloo":
            return rloo_advantages(rewards)
        if self.advantage_estimator == "grpo_passk":
            advantages = grpo_passk_advantages(rewards, normalize_std=self.normalize_std)
            return advantages - advantages.mean(dim=1, keepdim=True)
        # reinforce_plus_plus: each sequence's outcome (one "token" per row), group mean removed, whitened over
        # the batch; with equal group sizes the batch mean is 0 already, so the groups stay centred.
        centred = rewards - rewards.mean(dim=1, keepdim=True)
        ones = torch.ones_like(centred).flatten()[:, None]
        return reinforce_plus_plus_advantages(centred.flatten()[:, None], ones).view_as(rewards)

    # ------------------------------------------------------------------ 4. old and reference log-probs
    def old_and_reference_logprobs(self, prompts: torch.Tensor, outputs: GroupOutputs):
        """log pi_old and log pi_ref of every sampled token, each [B, G, T] (reference: None when unused).

        old: the log-probs the rollout recorded. The rollout ran the same weights at the same temperature,
            so they ARE log pi_old (sequence_logprobs would recompute the same numbers, up to rounding, at
            the cost of one more forward pass). They must be taken now, before any optimizer step, and carry
            no gradient: pi_old is a constant of this step.
        reference: one forward pass of ref_model under torch.no_grad() (training.rollout.sequence_logprobs
            on the flat [B*G, P] prompts and [B*G, T] completions, self.temperature), viewed as [B, G, T].
            Skipped entirely (None) when self.kl_beta == 0: the KL term is off, the pass would be wasted.
        """
        # TODO: old = the rollout's log-probs, detached; ref = None if kl_beta == 0 else a no-grad pass.
        ### BEGIN SOLUTION
        old_logprobs = outputs.logprobs.detach()
        if self.kl_beta == 0:
            return old_logprobs, None
        completions = outputs.completions.flatten(0, 1)
        with torch.no_grad():
            ref_logprobs = sequence_logprobs(self.ref_model, prompts.repeat_interleave(self.group_size, dim=0),
                                             completions, temperature=self.temperature)
        return old_logprobs, ref_logprobs.view_as(old_logprobs)
        ### END SOLUTION

    # ------------------------------------------------------------------ 5. update
    def update_policy(self, prompts, outputs: GroupOutputs, advantages, old_logprobs, ref_logprobs) -> dict:
        """num_iterations passes over the batch; each pass shuffles the B groups and takes one optimizer
        step per minibatch of B / num_minibatches groups. Returns metrics averaged over the steps.

        For each minibatch (idx: the prompt indices in it):
            logp, entropy = sequence_logprobs(model, prompts of the rows, completions, temperature,
                                              with_entropy=True)      # ONE forward, with gradient
            loss = self.grpo_loss(logp [b, G, T], old_logprobs[idx], advantages[idx], ref_logprobs[idx], mask[idx])
            zero the gradients, backward, clip the gradient norm to max_grad_norm, optimizer step
        A loss that is NaN or inf is not stepped on (counted in "nonfinite_losses").
        The loss receives advantages in its rewards slot; they are centred per group already, so its
        group step (normalize_std=False) leaves them as they are.
        """
        batch_size, group_size, length = outputs.completions.shape
        sums, count, nonfinite = {}, 0, 0
        device = prompts.device
        for _ in range(self.num_iterations):
            order = torch.randperm(batch_size, generator=self.generator, device=device)
            for idx in order.chunk(self.num_minibatches):
                rows = idx.numel()
                row_prompts = prompts[idx].repeat_interleave(group_size, dim=0)
                completions = outputs.completions[idx].flatten(0, 1)
                mask = outputs.mask[idx]
                ref = None if ref_logprobs is None else ref_logprobs[idx]
                # TODO: the forward pass (name its outputs logprobs, entropy), the loss, and one optimizer step
                # (keep the clipped norm in grad_norm; `continue` past a loss that is not finite).
                ### BEGIN SOLUTION
                logprobs, entropy = sequence_logprobs(self.model, row_prompts, completions,
                                                      temperature=self.temperature, with_entropy=True)
                logprobs = logprobs.view(rows, group_size, length)
                loss = self.grpo_loss(logprobs, old_logprobs[idx], advantages[idx], ref, mask)
                if not torch.isfinite(loss):
                    nonfinite += 1
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.tensor(0.0)
                if self.max_grad_norm is not None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
                self.optimizer.step()
                ### END SOLUTION
                step_metrics = {key: self.grpo_loss.metrics[key] for key in LOSS_METRICS if key in self.grpo_loss.metrics}
                step_metrics["grad_norm"] = float(grad_norm)
                step_metrics["entropy"] = masked_mean(entropy.detach(), mask.flatten(0, 1)).item()
                for key, value in step_metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
        metrics = {key: value / count for key, value in sums.items()} if count else {"loss": float("nan")}
        return dict(metrics, optimizer_steps=count, nonfinite_losses=nonfinite)

    # ------------------------------------------------------------------ one step
    def training_step(self, batch) -> dict:
        """One GRPO iteration on a batch of problems (training.tasks.Batch: prompts [B, P], answers [B, A]).

        Returns floats to log: reward_mean, solved (exact-match rate of the samples), zero_std_fraction
        (groups whose rewards are all equal: no signal), response_length, loss, kl, clip_fraction,
        ratio_mean, entropy, grad_norm, optimizer_steps, nonfinite_losses, groups_kept.
        """
        prompts, answers = batch.prompts, batch.answers
        outputs = self.generate_group_outputs(prompts)                          # 1. rollout (pi_old)
        rewards = self.compute_rewards(answers, outputs.completions)            # 2. rule reward [B, G]
        task_rewards = rewards
        if self.overlong_cache_len > 0:                                         # DAPO soft overlong penalty
            lengths = outputs.mask.sum(dim=-1).flatten()
            penalty = overlong_penalty(lengths, self.max_new_tokens, self.overlong_cache_len)
            rewards = rewards + penalty.to(rewards.device).view_as(rewards)
        informative = keep_informative_groups(rewards)
        stats = {
            "reward_mean": task_rewards.mean().item(),
            "solved": self._solved_fraction(answers, outputs.completions),
            "zero_std_fraction": 1.0 - informative.float().mean().item(),
            "response_length": outputs.mask.sum(dim=-1).mean().item(),
        }
        if self.dynamic_sampling:                                               # DAPO: keep informative groups
            prompts, rewards = prompts[informative], rewards[informative]
            outputs = GroupOutputs(*(field[informative] for field in outputs))
        stats["groups_kept"] = float(prompts.shape[0])
        if prompts.shape[0] == 0:                                               # nothing to learn from
            return dict(stats, loss=None, optimizer_steps=0, nonfinite_losses=0)
        advantages = self.compute_advantages(rewards)                           # 3. group-relative advantages
        old_logprobs, ref_logprobs = self.old_and_reference_logprobs(prompts, outputs)   # 4. before any update
        self.model.train()
        return dict(stats, **self.update_policy(prompts, outputs, advantages, old_logprobs, ref_logprobs))  # 5.

    def _solved_fraction(self, answers, completions) -> float:
        """Share of the samples that are exactly right (the reward may be partial credit)."""
        flat_answers = answers.repeat_interleave(self.group_size, dim=0)
        return self.task.reward(completions.flatten(0, 1), flat_answers, kind="exact").mean().item()
