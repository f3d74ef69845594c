"""The command line: `python -m training COMMAND [flags]`.

    sft           supervised warm start (--weak stops early at the documented weak checkpoint)
    grpo          GRPO from a checkpoint (--init; without it the weak SFT start is trained first into OUT/sft)
    ppo           PPO, the same way
    demo          the main job: weak SFT (kept at OUT/sft/model.pt), then GRPO, then held-out accuracy before/after
    bench         speed figures (rollout, matmul limit, the GRPO step; --vs-trl: beside TRL's GRPOTrainer)
    export-hf     a checkpoint as a transformers model folder (GPT-2 architecture, same logits)
    trl           TRL's own GRPOTrainer on the course's task, reward and weak checkpoint
    verl-config   the same GRPO settings as verl overrides (YAML on stdout)

Every training run writes OUT/metrics.jsonl, OUT/summary.json, OUT/curves.png and OUT/model.pt. Bad input (a bad
flag, an unknown task, a missing or corrupt checkpoint, an impossible device, an --out that cannot be written)
prints one line `error: ...` and exits 2, before any work starts.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from . import bench, hf_export, sft, trl_engine, verl_config
from .checkpoint import CheckpointError, model_from_checkpoint, task_from_checkpoint
from .device import DeviceError, pick_device, seed_everything
from .errors import UsageError
from .flags import (add_rl_arguments, any_int, fraction, non_negative_int, positive_float, positive_int, rl_hparams,
                    task_of)
from .impl import CHOICES as IMPL_CHOICES, ImplError, resolve
from .model import PRESETS, UnknownPresetError, count_parameters, make_model
from .run import load_rl_checkpoint, run_rl
from .runlog import write_summary
from .tasks import OPS, TASKS, UnknownTaskError
from .tokenizer import TOKENIZER

USER_ERRORS = (UsageError, UnknownTaskError, UnknownPresetError, CheckpointError, DeviceError, ImplError)
DELEGATED = {"bench": bench, "export-hf": hf_export, "trl": trl_engine, "verl-config": verl_config}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (`error: ...`) and exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but a flag the chosen command does not know is reported with that command's help."""
        args, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(args, "command", None)
            self.prog = f"{self.prog} {command}" if command else self.prog
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return args


def add_common(p, out_default, *, checkpoints=True):
    p.add_argument("--task", default=None, help=f"{' | '.join(TASKS)} (default: sort, or the checkpoint's task)")
    p.add_argument("--op", choices=tuple(OPS), default=None, help="arithmetic operation for --task add (default add)")
    p.add_argument("--steps", type=positive_int, default=None, help="number of optimizer steps")
    p.add_argument("--out", type=Path, default=Path(out_default), help=f"output folder (default {out_default})")
    p.add_argument("--seed", type=any_int, default=0, help="random seed (same seed, same numbers on CPU)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--impl", choices=IMPL_CHOICES, default=None,
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
    p.add_argument("--threads", type=non_negative_int, default=1, metavar="N",
                   help="torch CPU threads (default 1: the tiny model gains little from more, and on a busy shared "
                        "CPU more threads can be many times slower; 0 = torch's default)")


def add_sft_flags(p, prefix=""):
    p.add_argument(f"--{prefix}lr", type=positive_float, default=None, help="peak learning rate (default: per task)")
    p.add_argument(f"--{prefix}batch-size", type=positive_int, default=sft.BATCH_SIZE)
    p.add_argument(f"--{prefix}eval-every", type=positive_int, default=50, help="held-out evaluation every K steps")
    p.add_argument(f"--{prefix}schedule", choices=("cosine", "constant"), default=None,
                   help="LR schedule (default: per task)")
    p.add_argument(f"--{prefix}warmup", type=non_negative_int, default=20)
    p.add_argument(f"--{prefix}stop-at", type=fraction, default=None, metavar="ACC",
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
    for algo in ("grpo", "ppo"):
        p = sub.add_parser(algo, help=f"{algo.upper()} from a checkpoint")
        add_common(p, f"runs/{algo}")
        add_rl_arguments(p, algo)
    p = sub.add_parser("demo", help="weak SFT, then GRPO, then before/after accuracy")
    add_common(p, "runs/demo", checkpoints=False)
    p.add_argument("--sft-steps", type=positive_int, default=None, help="SFT steps (default: the weak checkpoint's)")
    add_sft_flags(p, prefix="sft-")
    add_rl_arguments(p, "grpo")
    for name, module in DELEGATED.items():
        p = sub.add_parser(name, help=module.__doc__.strip().splitlines()[0])
        module.add_arguments(p)
        add_threads(p)
    return parser


def check_out_dir(out: Path) -> None:
    """Fail now, in one line, if `out` cannot be created or written (before minutes of work are spent)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"cannot write to --out {out}: {err.strerror or err}") from None


def _announce(model, preset, task, device):
    c = model.config
    print(f"model: {preset} GPT, {count_parameters(model):,} parameters ({c.n_layer} layers, {c.n_head} heads, "
          f"width {c.n_embd}); task {task!r}; device {device}", flush=True)


def _checkpoint_path(args):
    if args.resume is not None:
        return args.resume if str(args.resume) not in ("", ".") else args.out / "model.pt"
    return args.init


def _fresh_or_loaded(args, device):
    """(model, task, preset, ckpt): from --resume, --init, or a fresh seeded model."""
    path = _checkpoint_path(args)
    if path is not None:
        model, ckpt = model_from_checkpoint(path, device)
        return model, task_of(args, task_from_checkpoint(ckpt)), ckpt.get("preset") or "nano", ckpt
    task = task_of(args)
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
    check_out_dir(args.out)
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


def _rl_line(algo, task, s, out_dir):
    return (f"{algo.upper()} {task.name}: held-out exact match {s['accuracy_before']:.1%} -> {s['accuracy_after']:.1%}"
            f" in {s['rl_steps']} steps ({s['rl_wall_time_s']:.1f} s of RL); outputs in {out_dir}/")


def _train_rl(algo, args, model, task, hp, resume=None, extra=None):
    """run_rl (which seeds the run), then summary.json = the run's fields + the command's own (init, sft_steps...)."""
    summary = run_rl(algo, hp, model, task, args.out, seed=args.seed, impl=args.impl, resume=resume,
                     progress=not args.quiet)
    summary.update(extra or {})
    write_summary(args.out, summary)
    return summary


def cmd_rl(args, algo):
    device = pick_device(args.device)
    resolve(args.impl)  # fail early, one line, if the chosen implementation cannot exist
    resume = None
    if args.resume is not None:
        path = _checkpoint_path(args)
        resume = load_rl_checkpoint(path)
        if resume["extra"]["algo"] != algo:
            raise UsageError(f"{path} is a {resume['extra']['algo']} run: resume it with `{resume['extra']['algo']}`")
    if args.resume is None and args.init is None:
        task = task_of(args)
        hp = rl_hparams(algo, task, args, args.steps)
        check_out_dir(args.out)
        print(f"no --init checkpoint given: training the weak SFT start first ({args.out / 'sft'})", flush=True)
        model, _ = _run_weak_sft(args, task, device, args.out / "sft")
        args.init = args.out / "sft" / "model.pt"
    else:
        model, task, preset, _ = _fresh_or_loaded(args, device)
        hp = dict(resume["extra"]["hparams"], steps=args.steps or resume["extra"]["hparams"]["steps"]) if resume \
            else rl_hparams(algo, task, args, args.steps)
        check_out_dir(args.out)
        _announce(model, preset, task, device)
    summary = _train_rl(algo, args, model, task, hp, resume, extra=dict(init=str(args.init) if args.init else None))
    print(_rl_line(algo, task, summary, args.out))
    return 0


def cmd_demo(args):
    device = pick_device(args.device)
    resolve(args.impl)
    task = task_of(args)
    hp = rl_hparams("grpo", task, args, args.steps)
    check_out_dir(args.out)
    model, sft_summary = _run_weak_sft(
        args, task, device, args.out / "sft", batch_size=args.sft_batch_size, eval_every=args.sft_eval_every,
        warmup=args.sft_warmup, steps=args.sft_steps, lr=args.sft_lr, schedule=args.sft_schedule,
        stop_at=args.sft_stop_at)
    summary = _train_rl("grpo", args, model, task, hp, extra=dict(
        init=str(args.out / "sft" / "model.pt"), sft_steps=sft_summary["sft_steps"],
        sft_wall_time_s=sft_summary["sft_wall_time_s"]))
    print(f"held-out greedy exact match on {task.name} ({len(task.eval_batch())} problems): "
          f"after weak SFT {summary['accuracy_before']:.1%} -> after GRPO {summary['accuracy_after']:.1%}")
    print(_rl_line("grpo", task, summary, args.out))
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # argparse's --help (0) or a usage error (2, already printed as one line)
        return done.code
    if os.environ.get("COURSE_QUIET") and hasattr(args, "quiet"):
        args.quiet = True
    threads_before = torch.get_num_threads()
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    try:
        if args.command == "sft":
            return cmd_sft(args)
        if args.command in ("grpo", "ppo"):
            return cmd_rl(args, args.command)
        if args.command == "demo":
            return cmd_demo(args)
        return DELEGATED[args.command].main(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (resume with --resume)", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads_before)  # leave an in-process caller (a test, a notebook) as it was
