"""The RL run loop behind `python -m training grpo|ppo|demo`: flags, training, logging, checkpoints.

    run_rl(algo, args, model, task, device, out_dir) -> summary fields

Each step: draw prompts_per_step training problems, trainer.training_step(batch) (GRPOTrainer or PPOTrainer,
loaded with training.impl.load so `--impl exercises` runs the student's code), log one line to
metrics.jsonl; every eval_every steps the held-out greedy exact match (and KL to the reference). The
learning rate warms up then follows a cosine to 10% over the planned steps (training.sft.learning_rate).
A step whose loss is NaN or inf is not applied (the trainer skips it), warned about, and counted.
The run stops after --steps, or earlier at --time-budget-s or once held-out accuracy reaches --stop-at-accuracy.
It leaves OUT/metrics.jsonl, OUT/curves.png, OUT/model.pt (for --init and --resume) and returns the summary.

Defaults depend on the task and algorithm (RL_DEFAULTS, measured on the course's 2-core CPU machine, see
README): a flag left unset takes the value of its row.
"""
import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import impl as course_impl
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .device import make_generator, seed_everything
from .evaluate import greedy_accuracy
from .model import PRESETS, ValueModel, make_model
from .rl_metrics import grpo_step_flops, kl_to_reference
from .runlog import RunLog, plot_curves
from .sft import learning_rate
from .tasks import Batch, make_task
from .tokenizer import TOKENIZER

ADVANTAGE_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_plus_plus", "grpo_passk")
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_PROMPTS = 64  # held-out prompts sampled at each evaluation to measure KL(pi_theta || pi_ref)

COMMON = dict(steps=240, prompts_per_step=32, group_size=8, lr=2e-4, warmup=10, schedule="cosine", kl_beta=0.0,
              clip_epsilon=0.2, clip_epsilon_high=None, temperature=0.2, reward="partial", eval_every=10,
              max_grad_norm=1.0, num_minibatches=2, stop_at_accuracy=None, time_budget_s=None)
RL_DEFAULTS = {
    "grpo": {
        "sort": dict(COMMON, num_iterations=2, normalize_std=True, loss_agg_mode="seq-mean-token-mean",
                     advantage_estimator="grpo", dynamic_sampling=True, overlong_penalty=0),
        "add": dict(COMMON, steps=300, lr=1e-3, temperature=1.0, reward="exact", num_iterations=2,
                    normalize_std=True, loss_agg_mode="seq-mean-token-mean", advantage_estimator="grpo",
                    dynamic_sampling=False, overlong_penalty=0),
    },
    "ppo": {
        "sort": dict(COMMON, group_size=1, prompts_per_step=128, num_minibatches=4, epochs=2, critic_lr=1e-3,
                     gamma=1.0, lam=0.95, target_kl=None, value_loss_coef=0.5, entropy_coef=0.0, value_clip=None),
        "add": dict(COMMON, group_size=1, prompts_per_step=128, num_minibatches=4, epochs=2, critic_lr=1e-3,
                    gamma=1.0, lam=0.95, target_kl=None, value_loss_coef=0.5, entropy_coef=0.0, value_clip=None),
    },
}
PLOTS = {
    "grpo": ("reward_mean", "accuracy", "kl", "clip_fraction", "response_length", "zero_std_fraction"),
    "ppo": ("reward_mean", "accuracy", "kl", "clip_fraction", "response_length", "value_loss",
            "explained_variance"),
}


# ---------------------------------------------------------------------------------------------- flags
def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text):
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _group_size(text):
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"GRPO needs at least 2 samples per prompt (a group of one has no baseline), got {value}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _fraction(text):
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _default_text(algo: str, key: str) -> str:
    """'default 0.2' or 'default: sort 2e-4, add 0.001' from RL_DEFAULTS (the help always tells the truth)."""
    values = {task: row[key] for task, row in RL_DEFAULTS[algo].items()}
    if len(set(map(repr, values.values()))) == 1:
        return f"default {next(iter(values.values()))}"
    return "default: " + ", ".join(f"{task} {value}" for task, value in values.items())


def add_rl_arguments(parser, algo: str) -> None:
    """Add the flags of `algo` ("grpo" | "ppo"). Unset flags (None) take RL_DEFAULTS[algo][task]."""
    if algo not in RL_DEFAULTS:
        raise ValueError(f"unknown RL algorithm {algo!r}: choose grpo or ppo")
    g = parser.add_argument_group(f"{algo.upper()} (--steps {_default_text(algo, 'steps')})")

    def flag(name, help_text, **kwargs):
        key = name[2:].replace("-", "_")
        g.add_argument(name, help=f"{help_text} ({_default_text(algo, key)})".replace("%", "%%"), **kwargs)

    flag("--prompts-per-step", "problems per step", type=_positive_int)
    flag("--group-size", "samples per prompt (GRPO's G, at least 2)" if algo == "grpo" else "samples per prompt",
         type=_group_size if algo == "grpo" else _positive_int)
    flag("--lr", "peak learning rate of the policy", type=_positive_float)
    flag("--warmup", "steps of linear LR warm-up", type=_non_negative_int)
    flag("--schedule", "LR after warm-up: cosine down to 10% over --steps, or constant", choices=("cosine", "constant"))
    flag("--kl-beta", "weight of KL(pi || pi_ref); 0 skips the reference pass", type=_non_negative_float)
    flag("--clip-epsilon", "ratio clip", type=_positive_float)
    flag("--temperature", "sampling temperature (the weak sort model is very flat at 1.0)", type=_positive_float)
    flag("--reward", "rule reward: exact match, partial credit, or format", choices=("exact", "partial", "format"))
    flag("--eval-every", "held-out evaluation every K steps", type=_positive_int)
    flag("--max-grad-norm", "gradient-norm clip", type=_positive_float)
    flag("--num-minibatches", "optimizer steps per pass over a batch", type=_positive_int)
    flag("--stop-at-accuracy", "stop once held-out exact match reaches ACC (None: run every step)", type=_fraction,
         metavar="ACC")
    flag("--time-budget-s", "stop after S seconds of RL", type=_positive_float, metavar="S")
    if algo == "grpo":
        flag("--num-iterations", "passes over each batch (GRPO's mu)", type=_positive_int)
        flag("--clip-epsilon-high", "upper clip, e.g. DAPO's clip-higher 0.28 (None: = --clip-epsilon)",
             type=_positive_float)
        flag("--normalize-std", "divide advantages by the group std (--no-normalize-std: Dr. GRPO)",
             action=argparse.BooleanOptionalAction)
        flag("--loss-agg-mode", "token aggregation of the loss", choices=LOSS_AGG_MODES)
        flag("--advantage-estimator", "advantage estimator", choices=ADVANTAGE_ESTIMATORS)
        flag("--dynamic-sampling", "DAPO: drop the groups whose rewards are all equal",
             action=argparse.BooleanOptionalAction)
        flag("--overlong-penalty", "DAPO soft overlong penalty over the last CACHE_LEN tokens (0: off)",
             type=_non_negative_int, metavar="CACHE_LEN")
    else:
        flag("--epochs", "PPO epochs over each batch", type=_positive_int)
        flag("--critic-lr", "critic learning rate (constant)", type=_positive_float)
        flag("--gamma", "discount", type=float)
        flag("--lam", "GAE lambda", type=float)
        flag("--target-kl", "stop an update's epochs once approx KL > 1.5 x this (None: never)", type=_positive_float)
        flag("--value-loss-coef", "weight of the value loss", type=_non_negative_float)
        flag("--entropy-coef", "weight of the entropy bonus", type=_non_negative_float)
        flag("--value-clip", "clip the value update around the collected values (None: off)", type=_positive_float)


def resolve_hparams(algo: str, task, args) -> dict:
    """RL_DEFAULTS[algo][task] overridden by every flag the user set (and --steps)."""
    table = RL_DEFAULTS[algo].get(task.name, RL_DEFAULTS[algo]["sort"])
    hp = dict(table)
    for key in table:
        value = getattr(args, key, None)
        if value is not None:
            hp[key] = value
    if algo == "grpo" and hp["overlong_penalty"] > task.max_new_tokens:
        from .cli import UsageError  # the CLI turns it into one `error:` line

        raise UsageError(f"--overlong-penalty must be at most the task's max_new_tokens={task.max_new_tokens}, "
                         f"got {hp['overlong_penalty']}")
    return hp


# ---------------------------------------------------------------------------------------------- trainers
def _frozen_copy(model):
    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


def build_trainer(algo, hp, model, ref_model, task, generator, impl=None, critic=None):
    """The GRPOTrainer / PPOTrainer of the chosen implementation, configured from the hyperparameters."""
    module = course_impl.load(f"{algo}_trainer", impl)
    if algo == "grpo":
        return module.GRPOTrainer(
            model, ref_model, hp["group_size"], hp["clip_epsilon"], hp["kl_beta"], task=task, lr=hp["lr"],
            num_iterations=hp["num_iterations"], num_minibatches=hp["num_minibatches"],
            max_grad_norm=hp["max_grad_norm"], temperature=hp["temperature"], normalize_std=hp["normalize_std"],
            loss_agg_mode=hp["loss_agg_mode"], clip_epsilon_high=hp["clip_epsilon_high"],
            advantage_estimator=hp["advantage_estimator"], dynamic_sampling=hp["dynamic_sampling"],
            overlong_cache_len=hp["overlong_penalty"], reward_kind=hp["reward"], generator=generator)
    return module.PPOTrainer(
        model, critic, ref_model, hp["clip_epsilon"], hp["gamma"], hp["lam"], task=task, kl_beta=hp["kl_beta"],
        actor_lr=hp["lr"], critic_lr=hp["critic_lr"], num_minibatches=hp["num_minibatches"],
        max_grad_norm=hp["max_grad_norm"], target_kl=hp["target_kl"], value_loss_coef=hp["value_loss_coef"],
        entropy_coef=hp["entropy_coef"], value_clip=hp["value_clip"], temperature=hp["temperature"],
        reward_kind=hp["reward"], generator=generator)


def _optimizers(algo, trainer):
    return [trainer.optimizer] if algo == "grpo" else [trainer.actor_optimizer, trainer.critic_optimizer]


def _preset_of(model) -> str:
    c = model.config
    for name, shape in PRESETS.items():
        if (c.n_layer, c.n_head, c.n_embd) == (shape["n_layer"], shape["n_head"], shape["n_embd"]):
            return name
    return "custom"


def _is_finite(value) -> bool:
    return value is not None and math.isfinite(value)


# ---------------------------------------------------------------------------------------------- the run
def run_rl(algo, args, model, task, device, out_dir, on_step=None) -> dict:
    """Train `model` (in place) with GRPO or PPO on `task`; write OUT/metrics.jsonl, curves.png, model.pt.

    args: the parsed CLI namespace (flags of add_rl_arguments plus steps, seed, impl, quiet, resume).
    on_step(step, record): called after each logged step (tests use it). Returns the summary fields.
    An exercise that still raises NotImplementedError becomes one clear ImplError line.
    """
    try:
        return _run(algo, args, model, task, device, out_dir, on_step)
    except NotImplementedError as err:
        impl = course_impl.resolve(getattr(args, "impl", None))
        other = " (or run the reference with --impl solutions)" if course_impl.has_solutions() else ""
        raise course_impl.ImplError(f"the {algo.upper()} code in {impl}/ is not finished ({err}): "
                                    f"python tools/grade.py shows what is left{other}") from None


def _run(algo, args, model, task, device, out_dir, on_step):
    out_dir = Path(out_dir)
    resume = _load_resume(args, out_dir)
    hp = resume["extra"]["hparams"] if resume else resolve_hparams(algo, task, args)
    if resume and getattr(args, "steps", None):
        hp = dict(hp, steps=args.steps)
    seed = getattr(args, "seed", 0)
    impl = getattr(args, "impl", None)
    seed_everything(seed)
    sampling = make_generator(seed + 11, device)   # rollouts and minibatch shuffling
    data = make_generator(seed + 13)               # training problems (CPU)
    probe = make_generator(seed + 17, device)      # the KL measurement's own samples
    ref_model = _frozen_copy(model)
    critic = ValueModel.from_policy(model) if algo == "ppo" else None
    start, accuracy_before, wall_before, counts = 0, None, 0.0, {"nonfinite_steps": 0, "skipped_steps": 0}
    cpu_before = 0.0
    if resume:
        extra = resume["extra"]
        ref_model.load_state_dict(extra["ref_model"])
        if critic is not None:
            critic.load_state_dict(extra["critic"])
        start, accuracy_before, wall_before = resume["step"], extra["accuracy_before"], extra["wall_time_s"]
        cpu_before = extra["cpu_time_s"]
        counts = dict(extra["counts"])
    trainer = build_trainer(algo, hp, model, ref_model, task, sampling, impl, critic)
    optimizers = _optimizers(algo, trainer)
    if resume:
        for optimizer, state in zip(optimizers, resume["extra"]["optimizers"]):
            optimizer.load_state_dict(state)
        sampling.set_state(resume["extra"]["sampling_rng"])
        data.set_state(resume["extra"]["data_rng"])
        probe.set_state(resume["extra"]["probe_rng"])
    log = RunLog(out_dir, resume_step=start if resume else None)
    eval_batch = task.eval_batch()
    kl_prompts = eval_batch.prompts[:KL_PROMPTS].to(device)
    if accuracy_before is None:
        accuracy_before = greedy_accuracy(model, task, eval_batch)
        log.step({"step": 0, "accuracy": accuracy_before, "kl": 0.0, "step_time_s": 0.0})

    def checkpoint(step, wall):
        extra = dict(algo=algo, hparams=hp, accuracy_before=accuracy_before, wall_time_s=wall, counts=counts,
                     cpu_time_s=cpu_before + time.process_time() - cpu_start,
                     ref_model=ref_model.state_dict(), critic=critic.state_dict() if critic is not None else None,
                     optimizers=[o.state_dict() for o in optimizers], sampling_rng=sampling.get_state(),
                     data_rng=data.get_state(), probe_rng=probe.get_state())
        save_checkpoint(out_dir / "model.pt", model, task=task, preset=_preset_of(model), step=step, extra=extra)

    quiet = getattr(args, "quiet", False)
    bar = tqdm(total=hp["steps"], initial=start, desc=f"{algo.upper()} {task.name}", disable=quiet or None,
               dynamic_ncols=True, leave=False)
    accuracy, step, t_start, cpu_start = None, start, time.perf_counter(), time.process_time()
    stop_reason = "steps"
    for step in range(start + 1, hp["steps"] + 1):
        t0 = time.perf_counter()
        rate = learning_rate(step - 1, hp["steps"], hp["lr"], hp["warmup"], hp["schedule"])
        for group in optimizers[0].param_groups:
            group["lr"] = rate
        batch = task.sample(hp["prompts_per_step"], data).to(device)
        if algo == "ppo" and hp["group_size"] > 1:  # PPO needs no groups, but may sample a prompt several times
            batch = Batch(batch.prompts.repeat_interleave(hp["group_size"], 0),
                          batch.answers.repeat_interleave(hp["group_size"], 0))
        if algo == "grpo":
            metrics = trainer.training_step(batch)
        else:
            metrics = trainer.training_step(batch, num_epochs=hp["epochs"])
        step_time = time.perf_counter() - t0
        if metrics.get("nonfinite_losses", 0) > 0:
            counts["nonfinite_steps"] += 1
            tqdm.write(f"warning: step {step}: NaN/inf loss on {metrics['nonfinite_losses']} minibatch(es), "
                       f"not applied", file=sys.stderr)
        if metrics.get("optimizer_steps", 1) == 0:
            counts["skipped_steps"] += 1
        record = {"step": step, **metrics, "lr": rate, "step_time_s": step_time}
        kl_penalty = record.pop("kl", None)  # the trainer's own KL on its samples (GRPO: the loss's k3; PPO: k1)
        if hp["kl_beta"] > 0 and kl_penalty is not None:
            record["kl_penalty"] = kl_penalty
        elapsed = wall_before + time.perf_counter() - t_start
        out_of_time = hp["time_budget_s"] is not None and elapsed >= hp["time_budget_s"]
        if step % hp["eval_every"] == 0 or step == hp["steps"] or out_of_time:
            accuracy = greedy_accuracy(model, task, eval_batch)
            record["accuracy"] = accuracy
            record["kl"] = kl_to_reference(model, ref_model, kl_prompts, task.max_new_tokens, hp["temperature"], probe)
            checkpoint(step, wall_before + time.perf_counter() - t_start)
        log.step(record)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics.get('reward_mean', float('nan')):.3f}",
                        acc="-" if accuracy is None else f"{accuracy:.1%}")
        if on_step is not None:
            on_step(step, record)
        if out_of_time:
            stop_reason = "time budget"
            break
        if hp["stop_at_accuracy"] is not None and accuracy is not None and accuracy >= hp["stop_at_accuracy"] \
                and "accuracy" in record:
            stop_reason = "accuracy reached"
            break
    bar.close()
    wall = wall_before + time.perf_counter() - t_start
    cpu = time.process_time() - cpu_start
    if accuracy is None:  # no step ran (a finished run resumed): evaluate and save as it is
        accuracy = greedy_accuracy(model, task, eval_batch)
        checkpoint(step, wall)
    records = log.records()
    log.close()
    plot_curves(log.metrics_path, out_dir / "curves.png", keys=PLOTS[algo])
    step_times = [r["step_time_s"] for r in records if r.get("step", 0) > 0 and r.get("step_time_s") is not None]
    reached = [r["step"] for r in records if r.get("step", 0) > 0 and (r.get("accuracy") or 0) >= 0.95]
    return dict(
        algo=algo, task=task.name, impl=course_impl.resolve(impl), seed=seed, device=str(device),
        accuracy_before=accuracy_before, accuracy_after=accuracy, rl_steps=step, rl_wall_time_s=wall,
        rl_cpu_time_s=cpu_before + cpu,
        step_time_median_s=statistics.median(step_times) if step_times else None,
        first_step_at_95=reached[0] if reached else None, stop_reason=stop_reason,
        nonfinite_steps=counts["nonfinite_steps"], skipped_steps=counts["skipped_steps"],
        final_reward_mean=next((r.get("reward_mean") for r in reversed(records) if "reward_mean" in r), None),
        hparams=hp, checkpoint=str(out_dir / "model.pt"),
    )


def _load_resume(args, out_dir):
    """The checkpoint to resume (--resume [CKPT], default OUT/model.pt), checked to be an RL one, or None."""
    path = getattr(args, "resume", None)
    if path is None:
        return None
    path = Path(path) if str(path) not in ("", ".") else out_dir / "model.pt"
    ckpt = load_checkpoint(path)
    if ckpt["extra"].get("algo") not in RL_DEFAULTS or "hparams" not in ckpt["extra"]:
        raise CheckpointError(f"{path} is not an RL checkpoint written by `grpo` or `ppo` (use --init instead)")
    return ckpt


# ---------------------------------------------------------------------------------------------- benchmark
def measure_grpo_step(device, repeats: int = 7, seed: int = 0) -> dict:
    """Time GRPO training_steps at 32 prompts x 8 samples on `sort` (nano model, fresh weights, the default GRPO
    hyperparameters; one warm-up step first) and count their FLOPs from the completion length actually sampled.

    Returns seconds (the median), flops (per step, rl_metrics.grpo_step_flops), gflop_per_s, completion_len.
    """
    task = make_task("sort")
    torch.manual_seed(seed)
    model = make_model("nano", TOKENIZER.vocab_size, task.block_size).to(device)
    hp = dict(RL_DEFAULTS["grpo"]["sort"], prompts_per_step=32, group_size=8)
    trainer = build_trainer("grpo", hp, model, _frozen_copy(model), task, make_generator(seed, device))
    lengths = []
    sample = trainer.generate_group_outputs

    def sample_and_note_length(prompts):
        outputs = sample(prompts)
        lengths.append(outputs.completions.shape[-1])
        return outputs

    trainer.generate_group_outputs = sample_and_note_length
    data = make_generator(seed + 1)
    batches = [task.sample(32, data).to(device) for _ in range(repeats + 1)]
    times = []
    for batch in batches:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.training_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times[1:])
    completion_len = round(statistics.mean(lengths[1:]))
    flops = grpo_step_flops(model.config, 32 * 8, task.prompt_len, completion_len, hp["num_iterations"],
                            reference_pass=hp["kl_beta"] != 0)
    return dict(seconds=seconds, flops=flops, gflop_per_s=flops / seconds / 1e9, completion_len=completion_len)


def bench_grpo_step(device, repeats: int = 7, seed: int = 0) -> float:
    """Median seconds of one full GRPO training_step at 32 prompts x 8 samples on `sort` (see measure_grpo_step)."""
    return measure_grpo_step(device, repeats, seed)["seconds"]
