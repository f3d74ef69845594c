"""The command line: `python -m training <sft|grpo|ppo|demo|bench> [flags]`.

    sft    supervised warm start (--weak stops early at the documented weak checkpoint)
    grpo   GRPO from a checkpoint (--init; without it the weak SFT start is trained first into OUT/sft)
    ppo    PPO, the same way
    demo   the main job: weak SFT (kept at OUT/sft/model.pt), then GRPO, then held-out accuracy before/after
    bench  speed figures (rollout tokens/s with and without the KV cache, matmul GFLOP/s, GRPO step time)

Every run writes OUT/metrics.jsonl, OUT/summary.json, OUT/curves.png and OUT/model.pt. Bad input (a bad flag, an
unknown task, a missing or corrupt checkpoint, an impossible device) prints one line `error: ...` and exits 2.
The RL trainers live in training/rl.py (issue 4); it is imported only when a subcommand needs it.
"""
import argparse
import importlib
import os
import sys
from pathlib import Path

import torch

from . import sft
from .checkpoint import CheckpointError, model_from_checkpoint, task_from_checkpoint
from .device import DeviceError, pick_device, seed_everything
from .evaluate import greedy_accuracy
from .impl import ImplError, resolve
from .model import PRESETS, UnknownPresetError, count_parameters, make_model
from .runlog import write_summary
from .tasks import OPS, TASKS, UnknownTaskError, make_task
from .tokenizer import TOKENIZER

NOT_BUILT = "the {algo} trainer is not built yet (issue 4)"


class UsageError(ValueError):
    """Flags that make no sense together (one clear line)."""


USER_ERRORS = (UsageError, UnknownTaskError, UnknownPresetError, CheckpointError, DeviceError, ImplError)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (`error: ...`) and exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see: python -m training {self.prog.split()[-1]} --help)\n")


def load_rl():
    """training.rl when it exists (issue 4), else None. Imported here, lazily, never at module import."""
    try:
        return importlib.import_module("training.rl")
    except ModuleNotFoundError as err:
        if err.name == "training.rl":
            return None
        raise


def add_common(p, out_default, *, checkpoints=True):
    p.add_argument("--task", default=None, help=f"{' | '.join(TASKS)} (default: sort, or the checkpoint's task)")
    p.add_argument("--op", choices=tuple(OPS), default=None, help="arithmetic operation for --task add (default add)")
    p.add_argument("--steps", type=int, default=None, help="number of optimizer steps")
    p.add_argument("--out", type=Path, default=Path(out_default), help=f"output folder (default {out_default})")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same numbers on CPU)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--impl", choices=("auto", "exercises", "solutions"), default=None,
                   help="whose GRPO/PPO code runs (default: $COURSE_IMPL or auto = solutions if present)")
    p.add_argument("--preset", choices=tuple(PRESETS), default="nano", help="model size for a fresh model")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads(p)
    if checkpoints:
        p.add_argument("--init", type=Path, default=None, metavar="CKPT", help="start from this checkpoint's weights")
        p.add_argument("--resume", type=Path, nargs="?", const=Path(""), default=None, metavar="CKPT",
                       help="continue an interrupted run exactly (default CKPT: OUT/model.pt)")
    else:
        p.set_defaults(init=None, resume=None)


def add_threads(p):
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch CPU threads (default 1: the tiny model gains nothing from more, and on a busy shared "
                        "CPU more threads can be many times slower; 0 = torch's default)")


def add_sft_flags(p, prefix=""):
    p.add_argument(f"--{prefix}lr", type=float, default=None, help="peak learning rate (default: per task)")
    p.add_argument(f"--{prefix}batch-size", type=int, default=sft.BATCH_SIZE)
    p.add_argument(f"--{prefix}eval-every", type=int, default=50, help="held-out evaluation every K steps")
    p.add_argument(f"--{prefix}schedule", choices=("cosine", "constant"), default=None,
                   help="LR schedule (default: per task)")
    p.add_argument(f"--{prefix}warmup", type=int, default=20)
    p.add_argument(f"--{prefix}stop-at", type=float, default=None, metavar="ACC",
                   help="stop once exact match on a validation batch from the training pool reaches ACC")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m training", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True

    p = sub.add_parser("sft", help="supervised warm start")
    add_common(p, "runs/sft")
    add_sft_flags(p)
    p.add_argument("--weak", action="store_true",
                   help="the documented weak-checkpoint recipe (sft.WEAK, RL's start) instead of full SFT")

    rl = load_rl()
    for algo in ("grpo", "ppo"):
        p = sub.add_parser(algo, help=f"{algo.upper()} from a checkpoint")
        add_common(p, f"runs/{algo}")
        if rl is not None:
            rl.add_rl_arguments(p, algo)

    p = sub.add_parser("demo", help="weak SFT, then GRPO, then before/after accuracy")
    add_common(p, "runs/demo", checkpoints=False)
    p.add_argument("--sft-steps", type=int, default=None, help="SFT steps (default: the weak checkpoint's)")
    add_sft_flags(p, prefix="sft-")
    if rl is not None:
        rl.add_rl_arguments(p, "grpo")

    p = sub.add_parser("bench", help="speed figures, written to OUT/bench.json")
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--repeats", type=int, default=7, help="timed repetitions per figure (the median is kept)")
    p.add_argument("--seed", type=int, default=0)
    add_threads(p)
    return parser


def _task(args, ckpt=None):
    """The task from --task/--op, or the checkpoint's (they must agree when both are given)."""
    if ckpt is not None:
        task = task_from_checkpoint(ckpt)
        if args.task is not None and args.task != task.name:
            raise UsageError(f"--task {args.task} but the checkpoint was trained on {task.name!r}")
        return task
    name = args.task or "sort"
    return make_task(name, op=args.op) if args.op and name == "add" else make_task(name)


def _announce(model, preset, task, device):
    c = model.config
    print(f"model: {preset} GPT, {count_parameters(model):,} parameters ({c.n_layer} layers, {c.n_head} heads, "
          f"width {c.n_embd}); task {task!r}; device {device}", flush=True)


def _fresh_or_loaded(args, device):
    """(model, task, preset, ckpt): from --resume, --init, or a fresh seeded model."""
    path = None
    if args.resume is not None:
        path = args.resume if str(args.resume) not in ("", ".") else args.out / "model.pt"
    elif args.init is not None:
        path = args.init
    if path is not None:
        model, ckpt = model_from_checkpoint(path, device)
        return model, _task(args, ckpt), ckpt.get("preset") or "nano", ckpt
    task = _task(args)
    return make_model(args.preset, TOKENIZER.vocab_size, task.block_size).to(device), task, args.preset, None


def _info(args, device, algo):
    return dict(algo=algo, impl=resolve(args.impl), device=str(device), seed=args.seed)


def _recipe(plan, steps=None, lr=None, schedule=None, stop_at=None):
    """A task's SFT recipe (sft.WEAK or sft.FULL) with the flags the user gave laid over it."""
    return dict(plan, steps=steps or plan["steps"], lr=lr or plan["lr"], schedule=schedule or plan["schedule"],
                stop_at=plan["stop_at"] if stop_at is None else stop_at)


def _sft_line(task, summary, where):
    return (f"SFT {task.name}: held-out exact match {summary['accuracy_before']:.1%} -> "
            f"{summary['accuracy_after']:.1%} in {summary['sft_steps']} steps ({summary['sft_wall_time_s']:.1f} s); "
            f"{where}")


def _run_weak_sft(args, task, device, out_dir, batch_size=sft.BATCH_SIZE, eval_every=50, warmup=20, **overrides):
    """Seeded fresh model -> weak SFT checkpoint in out_dir (sft.WEAK's recipe unless overridden)."""
    seed_everything(args.seed)
    model = make_model(args.preset, TOKENIZER.vocab_size, task.block_size).to(device)
    _announce(model, args.preset, task, device)
    summary = sft.train_weak(
        model, task, out_dir, **_recipe(sft.WEAK[task.name], **overrides), batch_size=batch_size,
        eval_every=eval_every, warmup=warmup, seed=args.seed, preset=args.preset,
        info=_info(args, device, "sft"), progress=not args.quiet)
    print(_sft_line(task, summary, f"checkpoint {out_dir / 'model.pt'}"), flush=True)
    return model, summary


def cmd_sft(args):
    device = pick_device(args.device)
    seed_everything(args.seed)
    model, task, preset, ckpt = _fresh_or_loaded(args, device)
    resume = ckpt if args.resume is not None else None
    if resume is not None and resume["extra"].get("algo") != "sft":
        raise UsageError("--resume needs an SFT checkpoint written by `sft` (use --init to start from weights)")
    _announce(model, preset, task, device)
    plan = sft.WEAK[task.name] if args.weak else sft.FULL[task.name]
    recipe = _recipe(plan, args.steps, args.lr, args.schedule, args.stop_at)
    if resume is not None:  # the saved run's own settings; only --steps may extend it
        recipe["steps"] = args.steps or resume["extra"]["hparams"]["steps"]
    summary = sft.train_sft(
        model, task, args.out, **recipe, batch_size=args.batch_size, eval_every=args.eval_every,
        seed=args.seed, warmup=args.warmup, preset=preset, resume=resume,
        info=dict(_info(args, device, "sft"), init=str(args.init) if args.init else None), progress=not args.quiet)
    print(_sft_line(task, summary, f"outputs in {args.out}/"))
    return 0


def _run_rl(rl, algo, args, model, task, device, out_dir, extra=None):
    """Held-out accuracy, run_rl, then summary.json = common fields + whatever run_rl returned."""
    accuracy_before = greedy_accuracy(model, task)
    result = rl.run_rl(algo, args, model, task, device, out_dir) or {}
    summary = dict(_info(args, device, algo), task=task.name, task_options=task.options,
                   accuracy_before=accuracy_before, **(extra or {}))
    summary.update(result)
    if summary.get("accuracy_after") is None:
        summary["accuracy_after"] = greedy_accuracy(model, task)
    for key in ("rl_steps", "rl_wall_time_s", "step_time_median_s"):
        summary.setdefault(key, None)
    write_summary(out_dir, summary)
    return summary


def _rl_line(algo, task, s, out_dir):
    wall = s.get("rl_wall_time_s")
    return (f"{algo.upper()} {task.name}: held-out exact match {s['accuracy_before']:.1%} -> {s['accuracy_after']:.1%}"
            f" in {s.get('rl_steps')} steps" + (f" ({wall:.1f} s of RL)" if wall is not None else "")
            + f"; outputs in {out_dir}/")


def cmd_rl(args, algo):
    rl = load_rl()
    if rl is None:
        print(NOT_BUILT.format(algo=algo.upper()), file=sys.stderr)
        return 2
    device = pick_device(args.device)
    resolve(args.impl)  # fail early, one line, if the chosen implementation cannot exist
    seed_everything(args.seed)
    if args.resume is None and args.init is None:
        print(f"no --init checkpoint given: training the weak SFT start first ({args.out / 'sft'})", flush=True)
        task = _task(args)
        model, _ = _run_weak_sft(args, task, device, args.out / "sft")
        args.init = args.out / "sft" / "model.pt"
    else:
        model, task, preset, _ = _fresh_or_loaded(args, device)
        _announce(model, preset, task, device)
    seed_everything(args.seed)
    summary = _run_rl(rl, algo, args, model, task, device, args.out, extra=dict(init=str(args.init)))
    print(_rl_line(algo, task, summary, args.out))
    return 0


def cmd_demo(args):
    device = pick_device(args.device)
    resolve(args.impl)
    task = _task(args)
    out = args.out
    model, sft_summary = _run_weak_sft(
        args, task, device, out / "sft", batch_size=args.sft_batch_size, eval_every=args.sft_eval_every,
        warmup=args.sft_warmup, steps=args.sft_steps, lr=args.sft_lr, schedule=args.sft_schedule,
        stop_at=args.sft_stop_at)
    rl = load_rl()
    if rl is None:
        summary = dict(sft_summary, note="SFT only: the GRPO trainer is not built yet (issue 4)")
        write_summary(out, summary)
        print(f"{NOT_BUILT.format(algo='GRPO')}: the demo stopped after the supervised warm start. "
              f"Still to come: GRPO lifting held-out exact match from {sft_summary['accuracy_after']:.1%} "
              f"toward 95%+ (then `make demo` runs it). Outputs so far in {out}/sft/")
        return 0
    seed_everything(args.seed)
    summary = _run_rl(rl, "grpo", args, model, task, device, out,
                      extra=dict(init=str(out / "sft" / "model.pt"), sft_steps=sft_summary["sft_steps"]))
    print(f"held-out greedy exact match on {task.name} ({len(task.eval_batch())} problems): "
          f"after weak SFT {summary['accuracy_before']:.1%} -> after GRPO {summary['accuracy_after']:.1%}")
    print(_rl_line("grpo", task, summary, out))
    return 0


def cmd_bench(args):
    from .bench import run_bench, format_table

    results = run_bench(args.out, pick_device(args.device), repeats=args.repeats, seed=args.seed)
    print(format_table(results))
    print(f"written to {args.out / 'bench.json'}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # argparse's --help (0) or a usage error (2, already printed as one line)
        return done.code
    if os.environ.get("COURSE_QUIET") and hasattr(args, "quiet"):
        args.quiet = True
    for name in ("steps", "sft_steps", "batch_size", "eval_every", "sft_batch_size", "sft_eval_every", "repeats"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1, got {value}", file=sys.stderr)
            return 2
    if args.threads < 0:
        print(f"error: --threads must be 0 (torch's default) or more, got {args.threads}", file=sys.stderr)
        return 2
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.command == "sft":
            return cmd_sft(args)
        if args.command in ("grpo", "ppo"):
            return cmd_rl(args, args.command)
        if args.command == "demo":
            return cmd_demo(args)
        return cmd_bench(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (resume with --resume)", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads_before)  # leave an in-process caller (a test, a notebook) as it was
