"""The 2025-26 menu in the GRPO trainer: any registry policy loss, rollout corrections, token selection, and a
sampler that differs from the trainer the way an inference engine does.

    configure(trainer, hp) -> trainer            applies the hp keys below to a built GRPOTrainer (in place)
    PolicyLoss(name, loss_agg_mode, kl_beta, kl_estimator, **hyperparameters)
                                                  a loss.policy_losses entry (+ an optional KL term) called like
                                                  the exercise's GRPOLoss, with `.metrics`

hp keys (defaults None / False: the exercise's trainer unchanged):
    policy_loss                   a loss.policy_losses.POLICY_LOSSES name (None: keep the exercise's GRPOLoss)
    rollout_correction            a loss.corrections.ROLLOUT_CORRECTIONS name: token_tis, sequence_tis (truncate
                                  the importance weight pi_old / mu at C), token_mask, sequence_mask (drop tokens /
                                  rows whose weight leaves [1/C, C])
    rollout_correction_threshold  C (default 2.0, verl 0.9.1's rollout_is_threshold)
    top_entropy_quantile          q in (0, 1]: only the q share of highest-entropy response tokens is trained
    mask_truncated                True: completions without EOS leave the loss
    sampler_mismatch              a SAMPLER_MISMATCHES kind: the rollout samples from bf16 weights, with top-k /
                                  top-p truncation, or from weights up to 3 updates old (stale); its log-probs are then
                                  the SAMPLER's

How it plugs in. The trainer's training_step gets its rollout only from `generate_group_outputs` and its
advantages only from `compute_advantages(rewards, outputs)`, and uses outputs.logprobs as log pi_old and
outputs.mask as the loss mask; the loss is `trainer.grpo_loss`. configure replaces those two methods on the
instance (the student's training_step and update_policy run unchanged):

  generate_group_outputs   samples (with the mismatched sampler if asked: its log-probs are log mu), then, when
                           anything below needs it, recomputes log pi_old and the entropy with the trainer's own
                           model in one pass without gradient (verl's "decoupled" mode: the ratio pi_theta /
                           pi_old uses the trainer's numbers, the correction the sampler's), and masks truncated
                           completions. It returns MenuOutputs: GroupOutputs' three fields plus sampler_logprobs
                           and entropy, which survive the dynamic-sampling row selection.
  compute_advantages       the trainer's own advantages A, times a per-token weight w >= 0:
                               w_t = (importance weight of the correction) * (1 if t is a high-entropy token else 0)
                           A_t w_t multiplies each token's policy loss by w_t exactly for the losses linear in A
                           (loss.policy_losses.LINEAR_IN_ADVANTAGE; verl: pg_losses * rollout_is_weights; TRL:
                           per_token_loss * importance_sampling_ratio and * entropy_mask), and leaves the KL term
                           and the loss's normaliser alone, as both libraries do.
  training_step            wrapped only to add this step's correction metrics (rho_mean, rho_min, rho_max,
                           mismatch_kl, correction_weight_mean, is_zero_fraction, entropy_kept_fraction,
                           truncated_fraction) to the record.
"""
import copy
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from loss.advantages import ADVANTAGE_ESTIMATORS
from loss.aggregation import agg_loss, check_loss_agg_mode
from loss.corrections import (DEFAULT_THRESHOLD, check_rollout_correction, correction_weights, high_entropy_mask,
                              mask_truncated_completions, mismatch_metrics, truncated_rows)
from loss.masked import masked_mean
from loss.names import KL_ESTIMATORS
from loss.policy_losses import POLICY_LOSSES, check_hyperparameters, check_policy_loss, hyperparameters
from loss.shapes import check_same_shape

from . import impl as course_impl
from .defaults import MENU_DEFAULTS
from .rollout import generate, sequence_logprobs
from .tokenizer import EOS_ID

# kind -> how the sampler differs from the trained policy (top_k / top_p act on the distribution at the sampling
# temperature, as inference engines apply them, and the sampler reports the log-probs of what it sampled from).
SAMPLER_MISMATCHES = {
    "bf16": dict(dtype=torch.bfloat16),   # a bfloat16 copy of the weights (and activations), synced every step
    "top_k": dict(top_k=3),               # only the 3 likeliest tokens, renormalised
    "top_p": dict(top_p=0.9),             # nucleus sampling: the smallest set of tokens with 90% of the mass
    "stale": dict(sync_every=4),          # an asynchronous engine: weights reloaded only every 4th rollout
}
MENU_KEYS = tuple(MENU_DEFAULTS)


class PolicyLoss(nn.Module):
    """A loss.policy_losses entry called like the exercise's GRPOLoss, so the trainer can use it unchanged.

        loss = POLICY_LOSSES[name](log pi_theta, log pi_old, A, mask, loss_agg_mode, **hyperparameters)
               + kl_beta * aggregate(KL_t(pi_theta || pi_ref))          (when kl_beta > 0 and a reference is given)

    KL_t is the course's own kl_estimate (your grpo_loss.py, through training.impl) with kl_estimator k1 / k2 / k3.

    forward(policy_logprobs, old_policy_logprobs, rewards=None, reference_logprobs=None, response_mask=None, *,
    advantages=None): logprobs [B, G] or [B, G, T] (flattened to [B * G, T] for the registry); exactly one of
    rewards [B, G] (GRPO's group advantage is computed inside, with normalize_std and eps) and advantages [B, G]
    or [B, G, T] (used as given). hyperparameters: the entry's own, verl's names and defaults (e.g. clip_ratio_c,
    tau_pos); an unknown one is a ValueError naming the valid ones. max_len: the divisor of
    seq-mean-token-sum-norm (default T).

    After each call `self.metrics` holds floats: loss, kl, clip_fraction (the loss's own definition, 0 for losses
    without a clip), ratio_mean, ratio_min, ratio_max (r = pi_theta / pi_old over the response tokens),
    advantage_mean, response_length, and the entry's other diagnostics (ppo_kl, clip_fraction_lower, ...).
    """

    def __init__(self, name: str = "vanilla", loss_agg_mode: str = "token-mean", kl_beta: float = 0.0,
                 kl_estimator: str = "k3", *, max_len: int | None = None, normalize_std: bool = True,
                 eps: float = 1e-6, impl: str | None = None, **hyperparameters_):
        super().__init__()
        check_policy_loss(name)
        check_loss_agg_mode(loss_agg_mode)
        if kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"unknown kl_estimator {kl_estimator!r}: choose one of {', '.join(KL_ESTIMATORS)}")
        valid = check_hyperparameters(name, hyperparameters_)
        self.name, self.loss_agg_mode, self.kl_beta, self.kl_estimator = name, loss_agg_mode, kl_beta, kl_estimator
        self.max_len, self.normalize_std, self.eps = max_len, normalize_std, eps
        self._kl_estimate = course_impl.load("grpo_loss", impl).kl_estimate   # the KL of the trainer's own grpo_loss
        self.hyperparameters = dict(valid, **hyperparameters_)
        self.metrics: dict[str, float] = {}

    def extra_repr(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.hyperparameters.items() if k != "generator")
        return f"{self.name!r}, {self.loss_agg_mode!r}, kl_beta={self.kl_beta}" + (f", {settings}" if settings else "")

    def forward(self, policy_logprobs, old_policy_logprobs, rewards=None, reference_logprobs=None,
                response_mask=None, *, advantages=None):
        shape = tuple(policy_logprobs.shape)
        if policy_logprobs.dim() not in (2, 3):
            raise ValueError(f"policy_logprobs must be [B, G] or [B, G, T], got shape {shape}")
        if (rewards is None) == (advantages is None):
            raise ValueError("give exactly one of rewards= and advantages=")
        check_same_shape("policy_logprobs", policy_logprobs, old_policy_logprobs=old_policy_logprobs,
                         reference_logprobs=reference_logprobs, response_mask=response_mask)
        if rewards is not None:
            advantages = ADVANTAGE_ESTIMATORS["grpo"](rewards, normalize_std=self.normalize_std, eps=self.eps)
        if tuple(advantages.shape) not in (shape[:2], shape):
            raise ValueError(f"advantages must be [B, G] = {shape[:2]} or {shape}, got {tuple(advantages.shape)}")
        mask = torch.ones_like(policy_logprobs) if response_mask is None else response_mask.to(policy_logprobs.dtype)
        as_rows = (lambda x: x.reshape(-1, 1)) if policy_logprobs.dim() == 2 else (lambda x: x.flatten(0, 1))
        logp, old_logp, mask = as_rows(policy_logprobs), as_rows(old_policy_logprobs), as_rows(mask)
        adv = advantages.to(logp.dtype)
        adv = adv.reshape(-1, 1) if adv.dim() == 2 else adv.flatten(0, 1)    # [B * G, 1] or [B * G, T]
        details: dict[str, float] = {}
        loss = POLICY_LOSSES[self.name](logp, old_logp, adv, mask, self.loss_agg_mode, max_len=self.max_len,
                                        metrics=details, **self.hyperparameters)
        kl = None
        if reference_logprobs is not None:
            is_response = mask.bool()
            ref = torch.where(is_response, as_rows(reference_logprobs), torch.zeros_like(logp))
            kl = self._kl_estimate(torch.where(is_response, logp, torch.zeros_like(logp)), ref, self.kl_estimator)
            if self.kl_beta:
                loss = loss + self.kl_beta * agg_loss(kl, mask, self.loss_agg_mode, self.max_len)
        self.metrics = self._metrics(loss, logp, old_logp, adv, mask, kl, details)
        return loss

    @torch.no_grad()
    def _metrics(self, loss, logp, old_logp, adv, mask, kl, details) -> dict[str, float]:
        is_response = mask.bool()
        ratio = torch.exp(torch.where(is_response, logp - old_logp, torch.zeros_like(logp)))
        ratios = ratio[is_response]
        metrics = dict(details)
        metrics.update(
            loss=loss.item(),
            kl=masked_mean(kl, mask).item() if kl is not None else 0.0,
            clip_fraction=details.get("clip_fraction", 0.0),
            ratio_mean=masked_mean(ratio, mask).item(),
            ratio_min=ratios.min().item() if ratios.numel() else 1.0,
            ratio_max=ratios.max().item() if ratios.numel() else 1.0,
            advantage_mean=masked_mean(adv.expand_as(mask), mask).item(),
            response_length=mask.sum().item() / max(mask.shape[0], 1),
        )
        return metrics


# ---------------------------------------------------------------------------------------------- the sampler
class MismatchedSampler(nn.Module):
    """The policy as an inference engine would sample from it: `generate(sampler, ...)` works as with the model.

    dtype: a copy of the weights in that dtype (bf16: the logits differ from the float32 trainer's by rounding);
    call sync() before each rollout (an engine reloads the weights after every update).
    sync_every: keep a copy that sync() refreshes only on every sync_every-th call (the first included): the rollouts
    of the calls in between come from weights up to sync_every - 1 updates old, as in an asynchronous engine.
    top_k / top_p: the distribution at `temperature` is truncated to the k likeliest tokens / the smallest set
    holding p of the mass, and renormalised; the logits outside are -inf, so generate's recorded log-probs are
    those of the truncated distribution the token was really drawn from: log mu.
    """

    def __init__(self, policy, temperature: float = 1.0, *, dtype=None, top_k=None, top_p=None, sync_every=1):
        super().__init__()
        self._policy = [policy]  # a list: not a submodule, so generate's eval()/train() leaves the policy alone
        keep_copy = dtype is not None or sync_every > 1
        self.copy = copy.deepcopy(policy).to(dtype).requires_grad_(False) if keep_copy else None
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.sync_every, self.syncs = sync_every, 0

    @property
    def net(self):
        return self.copy if self.copy is not None else self._policy[0]

    @torch.no_grad()
    def sync(self) -> None:
        if self.copy is not None and self.syncs % self.sync_every == 0:
            self.copy.load_state_dict(self._policy[0].state_dict())
        self.syncs += 1

    def new_kv_cache(self, batch_size: int, max_len=None):
        return self.net.new_kv_cache(batch_size, max_len)

    def forward(self, idx, kv_cache=None):
        logits = self.net(idx, kv_cache=kv_cache).float()
        if self.top_k is None and self.top_p is None:
            return logits
        scaled = logits / self.temperature
        drop = torch.zeros_like(scaled, dtype=torch.bool)
        if self.top_k is not None and self.top_k < scaled.shape[-1]:
            kth = scaled.topk(self.top_k, dim=-1).values[..., -1:]
            drop |= scaled < kth
        if self.top_p is not None:
            probs, order = F.softmax(scaled, dim=-1).sort(dim=-1, descending=True)
            mass_before = probs.cumsum(dim=-1) - probs          # mass of the likelier tokens
            drop |= torch.zeros_like(drop).scatter(-1, order, mass_before >= self.top_p)
        return logits.masked_fill(drop, float("-inf"))


class MenuOutputs(NamedTuple):
    """GroupOutputs' fields, then what the corrections need; every field is [B, G, T] (None when not computed)."""

    completions: torch.Tensor
    logprobs: torch.Tensor                 # log pi_old: the trainer's recomputation when one was made
    mask: torch.Tensor                     # the loss mask (truncated completions masked when asked)
    sampler_logprobs: torch.Tensor | None  # log mu: what the sampler reported
    entropy: torch.Tensor | None           # entropy of pi_old at each position (for top_entropy_quantile)


# ---------------------------------------------------------------------------------------------- configure
def check_menu(hp: dict) -> dict:
    """The menu keys of hp with their defaults, validated: one ValueError line naming the valid choices."""
    menu = {key: hp.get(key, default) for key, default in MENU_DEFAULTS.items()}
    menu["mask_truncated"] = bool(menu["mask_truncated"])
    if menu["policy_loss"] is not None:
        check_policy_loss(menu["policy_loss"])
    if menu["rollout_correction"] is not None:
        check_rollout_correction(menu["rollout_correction"])
    if menu["sampler_mismatch"] is not None and menu["sampler_mismatch"] not in SAMPLER_MISMATCHES:
        raise ValueError(f"unknown sampler mismatch {menu['sampler_mismatch']!r}: "
                         f"choose one of {', '.join(SAMPLER_MISMATCHES)}")
    if menu["rollout_correction_threshold"] is None:
        menu["rollout_correction_threshold"] = DEFAULT_THRESHOLD
    elif not menu["rollout_correction_threshold"] > 1:
        raise ValueError(f"rollout_correction_threshold must be > 1, got {menu['rollout_correction_threshold']}")
    quantile = menu["top_entropy_quantile"]
    if quantile is not None and not 0 < quantile <= 1:
        raise ValueError(f"top_entropy_quantile must be in (0, 1], got {quantile}")
    return menu


def make_policy_loss(name: str, hp: dict, trainer=None, impl: str | None = None) -> PolicyLoss:
    """PolicyLoss(name) with the run's settings: loss_agg_mode, kl_beta and kl_estimator from hp (or the trainer),
    clip_ratio_low / clip_ratio_high from clip_epsilon / clip_epsilon_high for every entry that has them (as verl
    feeds actor.clip_ratio_* to every loss_mode: for dppo_* they are the divergence thresholds), and any of the
    entry's own hyperparameters present in hp under verl's names (e.g. hp["clip_ratio_c"] = 2.0), which win."""
    own = hyperparameters(name)
    settings = {key: hp[key] for key in own if hp.get(key) is not None}
    if "clip_ratio_low" in own and hp.get("clip_epsilon") is not None:
        settings.setdefault("clip_ratio_low", hp["clip_epsilon"])
        high = hp.get("clip_epsilon_high")
        settings.setdefault("clip_ratio_high", hp["clip_epsilon"] if high is None else high)
    kl_beta = hp.get("kl_beta", getattr(trainer, "kl_beta", 0.0)) or 0.0
    return PolicyLoss(name, hp.get("loss_agg_mode") or "token-mean", kl_beta, hp.get("kl_estimator") or "k3",
                      max_len=getattr(trainer, "max_new_tokens", None), normalize_std=hp.get("normalize_std", True),
                      impl=impl, **settings)


def configure(trainer, hp: dict, impl: str | None = None):
    """Apply the menu keys of `hp` (MENU_KEYS; missing keys take MENU_DEFAULTS) to a built GRPOTrainer of
    implementation `impl` (whose grpo_loss gives the KL term of a menu policy loss); return it.

    With every key at its default the trainer keeps the exercise's GRPOLoss and its own rollout. trainer.menu
    records the settings applied (and the sampler). rho_* and mismatch_kl (k3 estimate of KL(mu || pi_old)) are
    logged whenever log pi_old is recomputed.
    """
    menu = check_menu(hp)
    if hasattr(trainer, "menu"):
        raise ValueError("configure() was already applied to this trainer: build a new one")
    if menu["policy_loss"] is not None:
        trainer.grpo_loss = make_policy_loss(menu["policy_loss"], hp, trainer, impl)
    needs_hooks = (menu["rollout_correction"] is not None or menu["top_entropy_quantile"] is not None
                   or menu["mask_truncated"] or menu["sampler_mismatch"] is not None)
    if not needs_hooks:
        trainer.menu = dict(menu, sampler=None)
        return trainer
    sampler = None
    if menu["sampler_mismatch"] is not None:
        sampler = MismatchedSampler(trainer.model, trainer.temperature, **SAMPLER_MISMATCHES[menu["sampler_mismatch"]])
    recompute = (menu["sampler_mismatch"] is not None or menu["rollout_correction"] is not None
                 or menu["top_entropy_quantile"] is not None)
    own_advantages = trainer.compute_advantages       # the trainer's own estimator (bound method)
    own_step = trainer.training_step
    step_metrics: dict[str, float] = {}

    def generate_group_outputs(prompts):
        group_size = trainer.group_size
        if sampler is not None:
            sampler.sync()
        rollout = generate(sampler if sampler is not None else trainer.model, prompts, trainer.max_new_tokens,
                           temperature=trainer.temperature, generator=trainer.generator, num_samples=group_size)
        groups = (-1, group_size)
        completions, sampler_logprobs, mask = (x.unflatten(0, groups) for x in
                                               (rollout.completions, rollout.logprobs, rollout.mask))
        old_logprobs, entropy = sampler_logprobs, None
        if recompute:
            with torch.no_grad():
                old, ent = sequence_logprobs(trainer.model, prompts.repeat_interleave(group_size, dim=0),
                                             rollout.completions, temperature=trainer.temperature, with_entropy=True)
            old_logprobs = torch.where(mask.bool(), old.unflatten(0, groups), torch.zeros_like(sampler_logprobs))
            entropy = ent.unflatten(0, groups)
            gap = mismatch_metrics(old_logprobs.flatten(0, 1), sampler_logprobs.flatten(0, 1), mask.flatten(0, 1))
            step_metrics.update(rho_mean=gap["rho_mean"], rho_min=gap["rho_min"], rho_max=gap["rho_max"],
                                mismatch_kl=gap["k3_kl"])
        if menu["mask_truncated"]:
            step_metrics["truncated_fraction"] = truncated_rows(completions, mask, EOS_ID).float().mean().item()
            mask = mask_truncated_completions(completions, mask, EOS_ID)
        return MenuOutputs(completions, old_logprobs, mask, sampler_logprobs, entropy)

    def compute_advantages(rewards, outputs):
        advantages = own_advantages(rewards, outputs)
        mask = outputs.mask
        weights = None
        if menu["rollout_correction"] is not None:
            weights = correction_weights(menu["rollout_correction"], outputs.logprobs.flatten(0, 1),
                                         outputs.sampler_logprobs.flatten(0, 1), mask.flatten(0, 1),
                                         menu["rollout_correction_threshold"]).view_as(mask)
            step_metrics["correction_weight_mean"] = masked_mean(weights, mask).item()
            step_metrics["is_zero_fraction"] = masked_mean((weights == 0).to(mask.dtype), mask).item()
        if menu["top_entropy_quantile"] is not None:
            keep = high_entropy_mask(outputs.entropy, mask, menu["top_entropy_quantile"]).to(mask.dtype)
            step_metrics["entropy_kept_fraction"] = masked_mean(keep, mask).item()
            weights = keep if weights is None else weights * keep
        if weights is None:
            return advantages
        if advantages.dim() == 2:
            advantages = advantages.unsqueeze(-1)
        return advantages * weights

    def training_step(batch):
        step_metrics.clear()
        metrics = own_step(batch)
        return dict(metrics, **step_metrics)

    trainer.generate_group_outputs = generate_group_outputs
    trainer.compute_advantages = compute_advantages
    trainer.training_step = training_step
    trainer.menu = dict(menu, sampler=sampler)
    return trainer
