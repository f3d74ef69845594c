"""Exercise: the PPO trainer for a language model (actor-critic, Schulman et al. 2017; InstructGPT's recipe).

Every response token is an action; the state is the prompt plus the tokens so far. One call of
`training_step(batch)` is one PPO iteration:

    1. collect_experiences   sample completions from pi_old; in no-grad: log pi_old, log pi_ref, the critic's
                             values V(s_t), the task score; per-token rewards
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
from training.rl_metrics import explained_variance
from training.rollout import generate, sequence_logprobs, values_for

from .ppo_loss import PPOLoss, compute_gae

REWARD_KINDS = ("exact", "partial", "format")


class PPOTrainer:
    """PPO with a separate critic (a training.model.ValueModel) and a frozen reference for the KL penalty.

    actor_model: the policy pi_theta (training.model.GPT), trained in place.
    critic_model: V(s_t) for every response position (training.model.ValueModel, e.g. ValueModel.from_policy).
    ref_model: pi_ref for the per-token KL penalty; never called when kl_beta == 0 (may be None then).
    clip_epsilon: PPO's ratio clip; gamma, lam: GAE's discount and trace decay.

    Keyword options:
    task: a training.tasks.Task (its `reward` and `max_new_tokens` are used); reward_kind: "exact" | "partial".
    kl_beta: weight of the per-token KL penalty inside the reward (k1 = log pi_old - log pi_ref at the sampled token).
    actor_lr, critic_lr / actor_optimizer, critic_optimizer: AdamW unless optimizers are given.
    num_minibatches: optimizer steps per epoch; max_grad_norm: clip each network's gradient norm (None: off).
    target_kl: stop the epochs early once approx KL(pi_old || pi_theta) > 1.5 * target_kl (None: never).
    value_loss_coef, entropy_coef, value_clip: PPOLoss's coefficients.
    temperature: sampling temperature (every log-prob uses the same); generator: seeds sampling and shuffling.

    Attributes tests and tools rely on: actor, critic, ref_model, kl_beta, gamma, lam, ppo_loss,
    actor_optimizer, critic_optimizer, num_minibatches, target_kl, metrics (floats of the last update).
    """

    def __init__(
        self,
        actor_model,
        critic_model,
        ref_model,
        clip_epsilon: float = 0.2,
        gamma: float = 1.0,
        lam: float = 0.95,
        *,
        task,
        kl_beta: float = 0.0,
        actor_lr: float = 2e-4,
        critic_lr: float = 1e-3,
        actor_optimizer: torch.optim.Optimizer | None = None,
        critic_optimizer: torch.optim.Optimizer | None = None,
        num_minibatches: int = 4,
        max_grad_norm: float | None = 1.0,
        target_kl: float | None = None,
        value_loss_coef: float = 0.5,
        entropy_coef: float = 0.0,
        value_clip: float | None = None,
        temperature: float = 1.0,
        reward_kind: str = "exact",
        max_new_tokens: int | None = None,
        generator: torch.Generator | None = None,
    ):
        if reward_kind not in REWARD_KINDS:
            raise ValueError(f"unknown reward kind {reward_kind!r}: choose one of {', '.join(REWARD_KINDS)}")
        if num_minibatches < 1:
            raise ValueError(f"num_minibatches must be >= 1, got {num_minibatches}")
        if kl_beta != 0 and ref_model is None:
            raise ValueError("kl_beta > 0 needs a reference model (ref_model is None)")
        self.actor = actor_model
        self.critic = critic_model
        self.ref_model = ref_model
        self.gamma = gamma
        self.lam = lam
        self.task = task
        self.kl_beta = kl_beta
        self.num_minibatches = num_minibatches
        self.max_grad_norm = max_grad_norm
        self.target_kl = target_kl
        self.temperature = temperature
        self.reward_kind = reward_kind
        self.max_new_tokens = max_new_tokens or task.max_new_tokens
        self.generator = generator
        self.ppo_loss = PPOLoss(clip_epsilon, value_loss_coef, entropy_coef, value_clip=value_clip)
        self.actor_optimizer = actor_optimizer or torch.optim.AdamW(
            actor_model.parameters(), lr=actor_lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.critic_optimizer = critic_optimizer or torch.optim.AdamW(
            critic_model.parameters(), lr=critic_lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.metrics: dict[str, float] = {}
        if ref_model is not None:
            ref_model.requires_grad_(False)

    # ------------------------------------------------------------------ 1. experience
    @staticmethod
    def token_rewards(scores, old_logprobs, ref_logprobs, mask, kl_beta: float) -> torch.Tensor:
        """Per-token rewards [N, T]: a KL penalty on every response token, the task score on the last one.

            r_t = -kl_beta * (old_logprobs_t - ref_logprobs_t)          t a response token (no KL term when
                  + score  if t is the last response token (the EOS)      ref_logprobs is None or kl_beta == 0)
            r_t = 0 on padding

        scores [N]; old_logprobs, ref_logprobs (or None), mask: [N, T]. The last response token of row i is
        at index mask[i].sum() - 1 (the mask is ones then zeros). Rows with an empty mask get no score.
        """
        # TODO: the KL part (masked), then add each row's score at its last response position.
        raise NotImplementedError("PPOTrainer.token_rewards: your code here")

    def collect_experiences(self, batch) -> dict:
        """Roll out the actor on batch.prompts [N, P] and gather everything the update needs, without gradient.

        Returns a dict of tensors (each [N, T] unless noted): prompts [N, P], completions, mask,
        old_logprobs (the rollout's log pi_old), ref_logprobs (None when kl_beta == 0: the reference is
        never called), values (the critic's V(s_t)), scores [N] (the task reward), rewards (token_rewards),
        advantages and returns (compute_advantages).
        """
        prompts, answers = batch.prompts, batch.answers
        rollout = generate(self.actor, prompts, self.max_new_tokens, temperature=self.temperature,
                           generator=self.generator)
        completions, mask, old_logprobs = rollout.completions, rollout.mask, rollout.logprobs
        scores = self.task.reward(completions, answers, kind=self.reward_kind)
        # TODO: in torch.no_grad(): the critic's values (values_for), the reference log-probs (only when
        # kl_beta != 0, else None), the per-token rewards, then the advantages and returns.
        raise NotImplementedError("PPOTrainer.collect_experiences: your code here")
        return dict(prompts=prompts, completions=completions, mask=mask, old_logprobs=old_logprobs,
                    ref_logprobs=ref_logprobs, values=values, scores=scores, rewards=rewards,
                    advantages=advantages, returns=returns)

    # ------------------------------------------------------------------ 2. advantages
    def compute_advantages(self, rewards, values, mask):
        """GAE, then whitening over the response tokens: returns (advantages, returns), each [N, T].

            A, R = compute_gae(rewards, values, self.gamma, self.lam, mask)       (R = A + V: critic targets)
            A    = (A - mean(A)) / sqrt(var(A) + 1e-8), mean and var over the response tokens only
                   (loss.masked_whiten), then 0 on padding

        The returns stay unwhitened: they are what the critic regresses on. Whitening the advantages keeps the
        policy step the same size whatever the reward scale; padding must not enter the mean or the variance.
        """
        # TODO: compute_gae with self.gamma, self.lam and the mask; masked_whiten; zero the padding.
        raise NotImplementedError("PPOTrainer.compute_advantages: your code here")

    # ------------------------------------------------------------------ 3. update
    def update_policy(self, experiences: dict, num_epochs: int = 4) -> float:
        """num_epochs passes over the experiences in shuffled minibatches; returns the mean loss.

        For each minibatch (idx: row indices; num_minibatches of them per epoch):
            logp, entropy = sequence_logprobs(actor, ..., temperature, with_entropy=True)   # with gradient
            values = values_for(critic, ...)                                                 # with gradient
            loss = self.ppo_loss(logp, old_logprobs, values, returns, advantages, entropy, mask,
                                 old_values=the collected values)
            early stop (before stepping) if target_kl is set and ppo_loss.metrics["approx_kl"] > 1.5 * target_kl
            zero both optimizers' gradients, backward, clip each network's norm, step both optimizers
        A NaN/inf loss is not stepped on (counted in metrics["nonfinite_losses"]).
        """
        exp = experiences
        num_rows = exp["completions"].shape[0]
        device = exp["completions"].device
        sums, steps, nonfinite, stopped = {}, 0, 0, False
        losses = []
        for epoch in range(num_epochs):
            order = torch.randperm(num_rows, generator=self.generator, device=device)
            for idx in order.chunk(self.num_minibatches):
                prompts, completions, mask = exp["prompts"][idx], exp["completions"][idx], exp["mask"][idx]
                # TODO: forward both networks, the loss, the approx-KL early stop, then one step of each optimizer
                # (name the loss `loss`; `continue` past a loss that is not finite; set stopped = True and
                # break to stop early).
                raise NotImplementedError("PPOTrainer.update_policy: your code here")
                losses.append(loss.item())
                for key, value in self.ppo_loss.metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                steps += 1
            if stopped:
                break
        self.metrics = {key: value / steps for key, value in sums.items()} if steps else {"loss": float("nan")}
        self.metrics.update(optimizer_steps=steps, nonfinite_losses=nonfinite, epochs_run=epoch + 1,
                            early_stopped=float(stopped))
        return sum(losses) / len(losses) if losses else float("nan")

    # ------------------------------------------------------------------ one iteration
    def training_step(self, batch, num_epochs: int = 4) -> dict:
        """collect_experiences, then update_policy; returns floats to log (self.metrics plus the rollout's)."""
        exp = self.collect_experiences(batch)
        self.actor.train()
        self.critic.train()
        self.update_policy(exp, num_epochs)
        mask = exp["mask"]
        stats = {
            "reward_mean": exp["scores"].mean().item(),
            "solved": self.task.reward(exp["completions"], batch.answers, kind="exact").mean().item(),
            "response_length": mask.sum(dim=1).mean().item(),
            "explained_variance": explained_variance(exp["values"], exp["returns"], mask),
            "value_mean": masked_mean(exp["values"], mask).item(),
        }
        if exp["ref_logprobs"] is not None:
            stats["kl"] = masked_mean(exp["old_logprobs"] - exp["ref_logprobs"], mask).item()
        return dict(self.metrics, **stats)

