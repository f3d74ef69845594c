"""An RL run with its files, for `python -m training grpo|ppo|demo` (the lessons call training.loop.train directly).

    run_rl(algo, hp, model, task, out_dir, seed=0) -> summary

It builds the reference policy pi_ref (a frozen copy of the starting model), the critic for PPO (a copy of the
policy's trunk, training.model.ValueModel.from_policy), the trainer of the chosen implementation
(training.trainers.build_trainer) and three private random streams (sampling, training problems, the KL probe);
trains with training.loop.train; and leaves in out_dir:
    metrics.jsonl   one line per step, written as it goes
    model.pt        a checkpoint at every evaluation: `--init` starts from its weights, `--resume` continues
                    the run exactly (optimizer states, random streams, reference and critic included)
    curves.png      the curves of training.defaults.PLOTS[algo]
    summary.json    what the run reached (written by the caller with its own fields added: see cli.py)
At each evaluation the KL(pi_theta || pi_ref) per token is measured on fresh samples of KL_PROMPTS held-out
prompts, from a generator seeded the same way every time: the same weights always give the same number.
"""
import statistics
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from . import impl as course_impl
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .defaults import ALGORITHMS, KL_PROMPTS, PLOTS
from .device import make_generator, seed_everything
from .evaluate import greedy_accuracy
from .loop import train
from .model import PRESETS, ValueModel
from .rl_metrics import kl_to_reference
from .runlog import RunLog, plot_curves
from .trainers import build_trainer, frozen_copy


def preset_of(model) -> str:
    """The PRESETS name whose shape `model` has ("custom" if none)."""
    c = model.config
    for name, shape in PRESETS.items():
        if (c.n_layer, c.n_head, c.n_embd) == (shape["n_layer"], shape["n_head"], shape["n_embd"]):
            return name
    return "custom"


def load_rl_checkpoint(path):
    """The checkpoint of an interrupted `grpo` / `ppo` run, checked to be one (CheckpointError otherwise)."""
    ckpt = load_checkpoint(path)
    if ckpt["extra"].get("algo") not in ALGORITHMS or "hparams" not in ckpt["extra"]:
        raise CheckpointError(f"{path} is not an RL checkpoint written by `grpo` or `ppo` (use --init instead)")
    return ckpt


def run_rl(algo, hp, model, task, out_dir, *, seed=0, impl=None, resume=None, progress=True) -> dict:
    """Train `model` in place with `algo` and the hyperparameters `hp`; write the run's files; return the summary.

    resume: the checkpoint dict of an interrupted run (load_rl_checkpoint); `hp` must then be its hparams
    (steps may be raised) and the run keeps its own seed. An exercise that still raises NotImplementedError
    becomes one ImplError line.
    """
    try:
        return _run(algo, hp, model, task, Path(out_dir), seed, impl, resume, progress)
    except NotImplementedError as err:
        where = course_impl.resolve(impl)
        other = " (or run the reference with --impl solutions)" if course_impl.has_solutions() else ""
        raise course_impl.ImplError(f"the {algo.upper()} code in {where}/ is not finished ({err}): "
                                    f"python tools/grade.py shows what is left{other}") from None


def _run(algo, hp, model, task, out_dir, seed, impl, resume, progress):
    device = next(model.parameters()).device
    state = resume["extra"] if resume else {}
    seed = state.get("seed", seed)
    seed_everything(seed)
    sampling = make_generator(seed + 11, device)   # rollouts and minibatch shuffling
    data = make_generator(seed + 13)               # training problems (CPU)
    ref_model = frozen_copy(model)
    critic = ValueModel.from_policy(model) if algo == "ppo" else None
    if resume:
        ref_model.load_state_dict(state["ref_model"])
        if critic is not None:
            critic.load_state_dict(state["critic"])
    trainer = build_trainer(algo, hp, model, ref_model, task, sampling, impl, critic)
    if resume:
        for optimizer, saved in zip(trainer.optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)
        sampling.set_state(state["sampling_rng"])
        data.set_state(state["data_rng"])
    eval_batch = task.eval_batch()
    kl_prompts = eval_batch.prompts[:KL_PROMPTS].to(device)
    counts = dict(state.get("counts", {"nonfinite_steps": 0, "skipped_steps": 0}))
    cpu_before, cpu_start = state.get("cpu_time_s", 0.0), time.process_time()
    log = RunLog(out_dir, resume_step=resume["step"] if resume else None)

    def measure(policy):
        probe = make_generator(seed + 17, device)   # fresh every time: same weights, same KL
        return {"kl_to_ref": kl_to_reference(policy, ref_model, kl_prompts, task.max_new_tokens, hp["temperature"],
                                             probe)}

    bar = tqdm(total=hp["steps"], initial=resume["step"] if resume else 0, desc=f"{algo.upper()} {task.name}",
               disable=not progress or None, dynamic_ncols=True, leave=False)

    first = [state.get("before")]   # record 0 (before any step): kept in every checkpoint for --resume

    def on_record(record):
        if record["step"] == 0:
            first[0] = record
        if (record.get("nonfinite_losses") or 0) > 0:
            counts["nonfinite_steps"] += 1
            tqdm.write(f"warning: step {record['step']}: NaN/inf loss on {record['nonfinite_losses']} minibatch(es), "
                       f"not applied", file=sys.stderr)
        if record["step"] > 0 and record.get("optimizer_steps", 1) == 0:
            counts["skipped_steps"] += 1
        log.step(record)
        if record["step"] > 0:
            bar.update(1)
            accuracy = record.get("accuracy")
            bar.set_postfix(reward=f"{record.get('reward_mean') or float('nan'):.3f}",
                            acc="-" if accuracy is None else f"{accuracy:.1%}")

    def on_evaluation(step, record):
        save_checkpoint(out_dir / "model.pt", model, task=task, preset=preset_of(model), step=step, extra=dict(
            algo=algo, hparams=hp, seed=seed, before=first[0], wall_time_s=record["wall_s"], counts=counts,
            cpu_time_s=cpu_before + time.process_time() - cpu_start, ref_model=ref_model.state_dict(),
            critic=critic.state_dict() if critic is not None else None,
            optimizers=[o.state_dict() for o in trainer.optimizers], sampling_rng=sampling.get_state(),
            data_rng=data.get_state()))

    result = train(
        trainer, task, steps=hp["steps"], prompts_per_step=hp["prompts_per_step"], eval_every=hp["eval_every"],
        lr=hp["lr"], warmup=hp["warmup"], schedule=hp["schedule"], data=data,
        repeats_per_prompt=hp["group_size"] if algo == "ppo" else 1, eval_batch=eval_batch, measure=measure,
        on_record=on_record, on_evaluation=on_evaluation, start_step=resume["step"] if resume else 0,
        before=state.get("before"), wall_before=state.get("wall_time_s", 0.0),
        time_budget_s=hp["time_budget_s"], stop_at_accuracy=hp["stop_at_accuracy"])
    bar.close()
    if result.steps == 0 and resume:   # a finished run resumed: nothing left to train, measure it as it is
        result.records.append(dict(step=resume["step"], accuracy=greedy_accuracy(model, task, eval_batch)))
    log.close()
    plot_curves(log.metrics_path, out_dir / "curves.png", keys=PLOTS[algo])
    return _summary(algo, hp, task, out_dir, seed, impl, device, result, counts, cpu_before + time.process_time()
                    - cpu_start)


def _summary(algo, hp, task, out_dir, seed, impl, device, result, counts, cpu_s) -> dict:
    """The fields every RL run reports (DESIGN.md, "The command line"), from the run's records."""
    steps = [r for r in result.records if r["step"] > 0]
    step_times = [r["step_time_s"] for r in steps]
    reached = [r["step"] for r in steps if (r.get("accuracy") or 0) >= 0.95]
    return dict(
        task=task.name, task_options=task.options, algo=algo, impl=course_impl.resolve(impl), device=str(device),
        seed=seed, accuracy_before=result.accuracy_before, accuracy_after=result.accuracy_after,
        rl_steps=result.steps, rl_wall_time_s=result.wall_s, rl_cpu_time_s=cpu_s,
        step_time_median_s=statistics.median(step_times) if step_times else None,
        first_step_at_95=reached[0] if reached else None, stop_reason=result.stop_reason,
        nonfinite_steps=counts["nonfinite_steps"], skipped_steps=counts["skipped_steps"],
        final_reward_mean=next((r.get("reward_mean") for r in reversed(steps) if r.get("reward_mean") is not None),
                               None),
        hparams=hp, checkpoint=str(out_dir / "model.pt"))
