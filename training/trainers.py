"""Build the GRPOTrainer or PPOTrainer of the chosen implementation from a row of hyperparameters.

    build_trainer("grpo", hp, model, ref_model, task, generator)            -> GRPOTrainer
    build_trainer("ppo", hp, model, ref_model, task, generator, critic=V)   -> PPOTrainer

`hp` is a dict such as training.defaults.RL_DEFAULTS["grpo"]["sort"]. The class comes from
training.impl.load, so `impl="exercises"` builds the student's trainer and "solutions" the reference.
For GRPO, the row's menu keys (training/menu.py: policy_loss, sampler_mismatch, rollout_correction, ...)
are applied by menu.configure; left at their defaults they change nothing. Both trainers follow one protocol: settings (passes / epochs included) in the constructor,
`training_step(batch) -> dict of floats`, and `optimizers`, the policy's optimizer first.
"""
import copy

from . import impl as course_impl
from .menu import configure


def frozen_copy(model):
    """A copy of `model` in eval mode with no gradients: the reference policy pi_ref."""
    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


def build_trainer(algo, hp, model, ref_model, task, generator, impl=None, critic=None):
    """The trainer of `algo` ("grpo" | "ppo") in implementation `impl`, configured from `hp`."""
    module = course_impl.load(f"{algo}_trainer", impl)
    shared = dict(task=task, lr=hp["lr"], num_minibatches=hp["num_minibatches"], max_grad_norm=hp["max_grad_norm"],
                  temperature=hp["temperature"], reward_kind=hp["reward"], generator=generator)
    if algo == "grpo":
        trainer = module.GRPOTrainer(
            model, ref_model, hp["group_size"], hp["clip_epsilon"], hp["kl_beta"], **shared,
            num_iterations=hp["num_iterations"], normalize_std=hp["normalize_std"],
            loss_agg_mode=hp["loss_agg_mode"], clip_epsilon_high=hp["clip_epsilon_high"],
            advantage_estimator=hp["advantage_estimator"], dynamic_sampling=hp["dynamic_sampling"],
            overlong_cache_len=hp["overlong_penalty"])
        return configure(trainer, hp, impl)   # the 2025-26 menu: another policy loss, sampler, corrections (if asked)
    if algo == "ppo":
        return module.PPOTrainer(
            model, critic, ref_model, hp["clip_epsilon"], hp["gamma"], hp["lam"], **shared, kl_beta=hp["kl_beta"],
            critic_lr=hp["critic_lr"], num_epochs=hp["epochs"], target_kl=hp["target_kl"],
            value_loss_coef=hp["value_loss_coef"], entropy_coef=hp["entropy_coef"], value_clip=hp["value_clip"])
    raise ValueError(f"unknown RL algorithm {algo!r}: choose grpo or ppo")
