"""Exercise: the PPO trainer for a language model (actor-critic, Schulman et al. 2017; InstructGPT's recipe).

Every response token is an action; the state is the prompt plus the tokens so far. One call of
`training_step(batch)` is one PPO iteration:

    1. collect_experiences   sample completions from pi_old; without gradient: log pi_old, log pi_ref, the
                             critic's values V(s_t), the task score; per-token rewards
                                 r_t = -kl_beta * (log pi_old(y_t) - log pi_ref(y_t))  +  score * [t == last]
    2. compute_advantages    GAE over the response tokens (compute_gae from your ppo_loss.py), then the
                             advantages whitened over every response token of the batch (padding left out)
    3. update_policy         num_epochs passes over the batch in shuffled minibatches: PPOLoss (clipped
                             surrogate + value regression - entropy bonus), one backward, gradient clipping
                             on each network, a step of the actor's and of the critic's optimizer; stop early
                             when the approximate KL(pi_old || pi_theta) passes 1.5 * target_kl

LLM defaults: gamma = 1 (an episode is one short completion; no discounting), lam = 0.95.
Shapes: N sequences, P prompt tokens, T response tokens; masks are 1 on response tokens (EOS included).

Your loss runs here: compute_gae and PPOLoss come from your own ppo_loss.py (finish it first).
Write the bodies marked `your code here`. Run `python tools/grade.py ppo_trainer` to check them.
"""
import torch

from loss import masked_mean, masked_whiten
from training.bookkeeping import StepMetrics, rollout_metrics, select_rows
from training.rewards import REWARD_KINDS
from training.rl_metrics import explained_variance
from training.rollout import generate, sequence_logprobs, values_for

from .ppo_loss import PPOLoss, compute_gae


class PPOTrainer:
    """PPO with a separate critic (a training.model.ValueModel) and a frozen reference for the KL penalty.

    actor_model: the policy pi_theta (training.model.GPT), trained in place.
    critic_model: V(s_t) for every response position (training.model.ValueModel, e.g. ValueModel.from_policy).
    ref_model: pi_ref for the per-token KL penalty; never called when kl_beta == 0 (may be None then).
    clip_epsilon: PPO's ratio clip; gamma, lam: GAE's discount and trace decay.

    Keyword options:
    task: a training.tasks.Task (its `reward` and `max_new_tokens` are used); max_new_tokens overrides the latter.
    reward_kind: one of training.rewards.REWARD_KINDS.
    kl_beta: weight of the per-token KL penalty inside the reward (k1 = log pi_old - log pi_ref at the sampled token).
    lr, critic_lr / optimizer, critic_optimizer: AdamW for the actor and the critic unless optimizers are given.
    num_epochs: passes over each batch; num_minibatches: optimizer steps per epoch.
    max_grad_norm: clip each network's gradient norm (None: no clip).
    target_kl: stop the epochs early once approx KL(pi_old || pi_theta) > 1.5 * target_kl (None: never).
    value_loss_coef, entropy_coef, value_clip: PPOLoss's coefficients.
    temperature: sampling temperature (every log-prob uses the same); generator: seeds sampling and shuffling.

    Attributes tests and tools rely on: actor, critic, ref_model, kl_beta, gamma, lam, temperature, ppo_loss,
    actor_optimizer, critic_optimizer, optimizers (actor's first), num_epochs, num_minibatches, target_kl.
    """

    def __init__(self, actor_model, critic_model, ref_model, clip_epsilon: float = 0.2, gamma: float = 1.0,
                 lam: float = 0.95, *, task, kl_beta: float = 0.0, lr: float = 2e-4, critic_lr: float = 1e-3,
                 optimizer: torch.optim.Optimizer | None = None,
                 critic_optimizer: torch.optim.Optimizer | None = None, num_epochs: int = 4,
                 num_minibatches: int = 4, max_grad_norm: float | None = 1.0, target_kl: float | None = None,
                 value_loss_coef: float = 0.5, entropy_coef: float = 0.0, value_clip: float | None = None,
                 temperature: float = 1.0, reward_kind: str = "exact", max_new_tokens: int | None = None,
                 generator: torch.Generator | None = None):
        if reward_kind not in REWARD_KINDS:
            raise ValueError(f"unknown reward kind {reward_kind!r}: choose one of {', '.join(REWARD_KINDS)}")
        if num_epochs < 1 or num_minibatches < 1:
            raise ValueError(f"num_epochs and num_minibatches must be >= 1, got {num_epochs} and {num_minibatches}")
        if kl_beta != 0 and ref_model is None:
            raise ValueError("kl_beta > 0 needs a reference model (ref_model is None)")
        self.actor, self.critic, self.ref_model, self.task = actor_model, critic_model, ref_model, task
        self.gamma, self.lam, self.kl_beta, self.temperature = gamma, lam, kl_beta, temperature
        self.num_epochs, self.num_minibatches, self.target_kl = num_epochs, num_minibatches, target_kl
        self.max_grad_norm = float("inf") if max_grad_norm is None else max_grad_norm
        self.reward_kind, self.generator = reward_kind, generator
        self.max_new_tokens = max_new_tokens or task.max_new_tokens
        self.ppo_loss = PPOLoss(clip_epsilon, value_loss_coef, entropy_coef, value_clip=value_clip)
        self.actor_optimizer = optimizer or torch.optim.AdamW(
            actor_model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.critic_optimizer = critic_optimizer or torch.optim.AdamW(
            critic_model.parameters(), lr=critic_lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.optimizers = (self.actor_optimizer, self.critic_optimizer)
        if ref_model is not None:
            ref_model.requires_grad_(False)

    # ------------------------------------------------------------------ 1. experience
    @staticmethod
    def token_rewards(scores, old_logprobs, ref_logprobs, mask, kl_beta: float) -> torch.Tensor:
        """Per-token rewards [N, T]: a KL penalty on every response token, the task score on the last one.

            r_t = -kl_beta * (old_logprobs_t - ref_logprobs_t)          t a response token (no KL term when
                  + score  if t is the last response token (the EOS)      ref_logprobs is None or kl_beta == 0)
            r_t = 0 on padding

        scores [N]; old_logprobs, ref_logprobs (or None), mask: [N, T]. The mask is ones then zeros, so the
        last response token of a row sits where its ones end. A row with no response token gets nothing.
        """
        ### BEGIN SOLUTION
        mask = mask.to(old_logprobs.dtype)
        rewards = torch.zeros_like(old_logprobs)
        if ref_logprobs is not None and kl_beta != 0:
            rewards = -kl_beta * (old_logprobs - ref_logprobs) * mask
        lengths = mask.sum(dim=1).long()
        last = (lengths - 1).clamp(min=0)
        score_here = scores.to(rewards.dtype) * (lengths > 0).to(rewards.dtype)
        return rewards.scatter_add(1, last[:, None], score_here[:, None])
        ### END SOLUTION

    def collect_experiences(self, batch) -> dict:
        """Roll out the actor on batch.prompts [N, P] and gather everything the update needs, without gradient.

        The completions are sampled from pi_old (the actor now) at self.temperature with self.generator
        (training.rollout.generate), and scored by the task's rule (self.task.reward, kind=self.reward_kind).
        Then, with no gradient: the critic's value of every response position (training.rollout.values_for),
        log pi_ref only when self.kl_beta != 0 (the reference is never called otherwise), the per-token
        rewards (token_rewards) and the advantages and returns (compute_advantages).

        Returns a dict: prompts [N, P], completions, mask, old_logprobs (log pi_old at the sampling
        temperature), ref_logprobs (or None), values, rewards, advantages, returns (each [N, T]), scores [N].
        """
        ### BEGIN SOLUTION
        prompts, answers = batch.prompts, batch.answers
        rollout = generate(self.actor, prompts, self.max_new_tokens, temperature=self.temperature,
                           generator=self.generator)
        completions, mask, old_logprobs = rollout.completions, rollout.mask, rollout.logprobs
        scores = self.task.reward(completions, answers, kind=self.reward_kind)
        with torch.no_grad():
            values = values_for(self.critic, prompts, completions)
            ref_logprobs = None
            if self.kl_beta != 0:
                ref_logprobs = sequence_logprobs(self.ref_model, prompts, completions, temperature=self.temperature)
            rewards = self.token_rewards(scores, old_logprobs, ref_logprobs, mask, self.kl_beta)
            advantages, returns = self.compute_advantages(rewards, values, mask)
        return dict(prompts=prompts, completions=completions, mask=mask, old_logprobs=old_logprobs,
                    ref_logprobs=ref_logprobs, values=values, scores=scores, rewards=rewards,
                    advantages=advantages, returns=returns)
        ### END SOLUTION

    # ------------------------------------------------------------------ 2. advantages
    def compute_advantages(self, rewards, values, mask):
        """GAE, then whitening over the response tokens: returns (advantages, returns), each [N, T].

            A, R = GAE of the rewards and values with self.gamma, self.lam     (R = A + V: the critic's targets)
            A    = (A - mean(A)) / sqrt(var(A) + 1e-8), the mean and the unbiased variance over the response
                   tokens only (loss.masked_whiten), then 0 on padding

        The returns stay unwhitened: they are what the critic regresses on. Whitening the advantages keeps the
        policy step the same size whatever the reward scale; padding must not enter the mean or the variance.
        """
        ### BEGIN SOLUTION
        advantages, returns = compute_gae(rewards, values, self.gamma, self.lam, mask)
        advantages = masked_whiten(advantages, mask) * mask
        return advantages, returns
        ### END SOLUTION

    # ------------------------------------------------------------------ 3. update
    def update_policy(self, experiences: dict) -> dict:
        """self.num_epochs passes over the experiences; returns the metrics of training.bookkeeping.StepMetrics
        with epochs_run and early_stopped (1.0 or 0.0).

        Each epoch shuffles the N rows afresh (self.generator) into num_minibatches minibatches. For each
        minibatch: the actor's log-probs and entropy (sequence_logprobs at the sampling temperature) and the
        critic's values (values_for), both with gradient, then the loss

            self.ppo_loss(policy_logprobs, old_logprobs, values, returns, advantages, entropy, mask,
                          old_values=the values collected with the experiences)

        (value_clip clips the new values around the old ones). Early stop: once the minibatch's approximate
        KL(pi_old || pi_theta) (self.ppo_loss.metrics["approx_kl"]) exceeds 1.5 * self.target_kl, the policy
        has moved far enough: stop every epoch (target_kl None: never). Otherwise one step: zero both
        optimizers' gradients, one backward of the loss, clip each network's gradient norm to
        self.max_grad_norm, step both optimizers. A loss that is NaN or inf is skipped, not stepped on, and
        counted. Log the loss's metrics per step.
        """
        ### BEGIN SOLUTION
        log = StepMetrics()
        num_rows = experiences["completions"].shape[0]
        epochs_run, stopped = 0, False
        for _ in range(self.num_epochs):
            epochs_run += 1
            order = torch.randperm(num_rows, generator=self.generator, device=experiences["completions"].device)
            for idx in order.chunk(self.num_minibatches):
                minibatch = select_rows(experiences, idx)
                prompts, completions, mask = minibatch["prompts"], minibatch["completions"], minibatch["mask"]
                logprobs, entropy = sequence_logprobs(self.actor, prompts, completions, temperature=self.temperature,
                                                      with_entropy=True)
                values = values_for(self.critic, prompts, completions)
                loss = self.ppo_loss(logprobs, minibatch["old_logprobs"], values, minibatch["returns"],
                                     minibatch["advantages"], entropy, mask, old_values=minibatch["values"])
                if log.skip_nonfinite(loss):
                    continue
                if self.target_kl is not None and self.ppo_loss.metrics["approx_kl"] > 1.5 * self.target_kl:
                    stopped = True
                    break
                self.actor_optimizer.zero_grad(set_to_none=True)
                self.critic_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.actor.parameters(), self.max_grad_norm)
                torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.max_grad_norm)
                self.actor_optimizer.step()
                self.critic_optimizer.step()
                log.add(self.ppo_loss.metrics)
            if stopped:
                break
        return dict(log.summary(), epochs_run=float(epochs_run), early_stopped=float(stopped))
        ### END SOLUTION

    # ------------------------------------------------------------------ one iteration
    def training_step(self, batch) -> dict:
        """One PPO iteration on a batch of problems (training.tasks.Batch: prompts [N, P], answers [N, A]):
        collect_experiences, then update_policy.

        Returns a dict of floats: reward_mean (the task score), solved (the exact-match rate), response_length
        (training.bookkeeping.rollout_metrics), explained_variance of the collected values against the returns
        (training.rl_metrics.explained_variance), kl (only when kl_beta != 0: the mean over response tokens of
        log pi_old - log pi_ref), and update_policy's metrics (loss, value_loss, clip_fraction, approx_kl,
        optimizer_steps, nonfinite_losses, epochs_run, early_stopped, ...).
        """
        ### BEGIN SOLUTION
        experiences = self.collect_experiences(batch)
        metrics = self.update_policy(experiences)
        completions, mask = experiences["completions"], experiences["mask"]
        solved = self.task.reward(completions, batch.answers, kind="exact")
        metrics.update(rollout_metrics(experiences["scores"], solved, mask))
        metrics["explained_variance"] = explained_variance(experiences["values"], experiences["returns"], mask)
        if experiences["ref_logprobs"] is not None:
            log_ratio = experiences["old_logprobs"] - experiences["ref_logprobs"]
            metrics["kl"] = masked_mean(log_ratio, mask).item()
        return metrics
        ### END SOLUTION
