"""The one RL run loop (training/loop.py) and the run around it (training/run.py), through the command line and
directly: files, determinism, NaN handling, resume, the loop's hooks, flag errors. Tiny runs: a fresh nano model,
4 prompts x 2 samples, a handful of steps."""
import json
import math

import pytest
import torch

from training import cli, impl as course_impl
from training import run as run_module
from training.checkpoint import load_checkpoint, save_checkpoint
from training.defaults import RL_DEFAULTS
from training.device import make_generator
from training.loop import train
from training.model import make_model
from training.runlog import read_metrics
from training.tasks import make_task
from training.tokenizer import TOKENIZER
from training.trainers import build_trainer, frozen_copy

TIMING = {"step_time_s", "rl_wall_time_s", "step_time_median_s", "wall_s"}


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory):
    """A fresh, seeded nano model for sorting, saved as a checkpoint for --init."""
    task = make_task("sort")
    torch.manual_seed(0)
    model = make_model("nano", TOKENIZER.vocab_size, task.block_size)
    return save_checkpoint(tmp_path_factory.mktemp("init") / "model.pt", model, task=task, preset="nano", step=0)


def run_cli(algo, init, out, *extra):
    argv = [algo, "--init", str(init), "--out", str(out), "--prompts-per-step", "4", "--eval-every", "2", "--quiet",
            "--seed", "3", *extra]
    if "--steps" not in extra:
        argv += ["--steps", "3"]
    if algo == "grpo" and "--group-size" not in extra:
        argv += ["--group-size", "2"]
    return cli.main(argv)


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_grpo_run_writes_its_files(init_ckpt, tmp_path):
    assert run_cli("grpo", init_ckpt, tmp_path) == 0
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    for key in ("reward_mean", "response_length", "zero_std_fraction", "optimizer_steps", "step_time_s", "lr"):
        assert all(key in r for r in records[1:]), f"metrics.jsonl lacks {key}"
    updated = [r for r in records[1:] if r["optimizer_steps"] > 0]   # dynamic sampling may leave a step no group
    assert updated and all(key in r for r in updated for key in ("loss", "clip_fraction", "entropy", "grad_norm"))
    assert "accuracy" in records[2] and "kl_to_ref" in records[2] and "accuracy" in records[3]  # steps 2 and last
    assert "accuracy" not in records[1]
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("task", "algo", "impl", "device", "seed", "accuracy_before", "accuracy_after", "rl_steps",
                "rl_wall_time_s", "step_time_median_s", "nonfinite_steps", "init"):
        assert summary.get(key) is not None, f"summary.json lacks {key}"
    assert summary["rl_steps"] == 3 and summary["algo"] == "grpo" and summary["nonfinite_steps"] == 0
    assert summary["accuracy_after"] == records[3]["accuracy"]
    assert summary["accuracy_before"] == records[0]["accuracy"]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt["step"] == 3 and ckpt["extra"]["algo"] == "grpo"
    # the RL checkpoint is a valid --init for another run
    assert run_cli("grpo", tmp_path / "model.pt", tmp_path / "again", "--steps", "1") == 0


def test_same_seed_same_metrics(init_ckpt, tmp_path):
    assert run_cli("grpo", init_ckpt, tmp_path / "a") == 0
    assert run_cli("grpo", init_ckpt, tmp_path / "b") == 0
    a = without_timing(read_metrics(tmp_path / "a" / "metrics.jsonl"))
    b = without_timing(read_metrics(tmp_path / "b" / "metrics.jsonl"))
    assert a == b


def test_the_lessons_loop_is_the_command_lines(init_ckpt, tmp_path):
    """training.loop.train called directly, as the lessons call it, gives the command line's numbers."""
    assert run_cli("grpo", init_ckpt, tmp_path) == 0
    logged = without_timing(read_metrics(tmp_path / "metrics.jsonl"))
    task = make_task("sort")
    model = make_model("nano", TOKENIZER.vocab_size, task.block_size)
    model.load_state_dict(load_checkpoint(init_ckpt)["model"])
    hp = dict(RL_DEFAULTS["grpo"]["sort"], steps=3, prompts_per_step=4, group_size=2, eval_every=2)
    torch.manual_seed(3)
    trainer = build_trainer("grpo", hp, model, frozen_copy(model), task, make_generator(3 + 11))
    result = train(trainer, task, steps=3, prompts_per_step=4, eval_every=2, lr=hp["lr"], warmup=hp["warmup"],
                   schedule=hp["schedule"], data=make_generator(3 + 13))
    direct = without_timing(result.records)
    assert [r.get("accuracy") for r in direct] == [r.get("accuracy") for r in logged]
    for mine, theirs in zip(direct[1:], logged[1:]):
        assert mine["reward_mean"] == theirs["reward_mean"] and mine["loss"] == theirs["loss"]


class FakeTrainer:
    """training_step returns its call count; the policy never changes (the loop's bookkeeping alone)."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self.optimizers = (torch.optim.SGD(model.parameters(), lr=1.0),)

    def training_step(self, batch):
        self.calls.append(batch.prompts.clone())
        return {"reward_mean": float(len(self.calls)), "lr_seen": self.optimizers[0].param_groups[0]["lr"]}


def test_loop_hooks_schedule_and_stops():
    task = make_task("sort")
    trainer = FakeTrainer(make_model("nano", TOKENIZER.vocab_size, task.block_size))
    seen, evaluated = [], []
    small = task.eval_batch()
    result = train(trainer, task, steps=5, prompts_per_step=3, eval_every=2, lr=1.0, warmup=2, schedule="constant",
                   eval_batch=type(small)(small.prompts[:8], small.answers[:8]), measure=lambda m: {"extra": 1.0},
                   on_record=seen.append, on_evaluation=lambda step, record: evaluated.append(step))
    assert [r["step"] for r in seen] == [0, 1, 2, 3, 4, 5] and evaluated == [2, 4, 5]
    assert [r["lr_seen"] for r in result.records[1:]] == [0.5, 1.0, 1.0, 1.0, 1.0]   # warm-up then constant
    assert result.records[0]["extra"] == 1.0 and "accuracy" in result.records[5] and "accuracy" not in result.records[3]
    assert [r["samples"] for r in result.records] == [0, 3, 6, 9, 12, 15]
    again = FakeTrainer(trainer.model)
    train(again, task, steps=5, prompts_per_step=3, eval_every=5, eval_batch=small)
    assert all(torch.equal(a, b) for a, b in zip(trainer.calls, again.calls)), "same data seed, same problems"
    stopped = train(FakeTrainer(trainer.model), task, steps=50, prompts_per_step=2, eval_every=1, eval_batch=small,
                    stop_at_accuracy=0.0)
    assert stopped.steps == 1 and stopped.stop_reason == "accuracy reached"


def test_nan_loss_is_skipped_and_counted(init_ckpt, tmp_path, monkeypatch, capsys):
    module = course_impl.load("grpo_loss")
    real_forward = module.GRPOLoss.forward

    def nan_forward(self, *args, **kwargs):
        return real_forward(self, *args, **kwargs) * float("nan")

    monkeypatch.setattr(module.GRPOLoss, "forward", nan_forward)
    before = load_checkpoint(init_ckpt)["model"]
    assert run_cli("grpo", init_ckpt, tmp_path, "--steps", "2", "--no-dynamic-sampling") == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["nonfinite_steps"] == 2
    assert "NaN/inf loss" in capsys.readouterr().err
    after = load_checkpoint(tmp_path / "model.pt")["model"]
    assert all(torch.equal(before[k], after[k]) for k in before), "a NaN loss must not change the weights"


def test_resume_continues_exactly(init_ckpt, tmp_path, monkeypatch):
    assert run_cli("grpo", init_ckpt, tmp_path / "full", "--steps", "4", "--eval-every", "1") == 0
    real_train = run_module.train

    def stop_after_two(*args, on_record, **kwargs):
        def record_then_stop(record):
            on_record(record)
            if record["step"] == 2:
                raise KeyboardInterrupt
        return real_train(*args, on_record=record_then_stop, **kwargs)

    monkeypatch.setattr(run_module, "train", stop_after_two)
    assert run_cli("grpo", init_ckpt, tmp_path / "cut", "--steps", "4", "--eval-every", "1") == 130
    monkeypatch.setattr(run_module, "train", real_train)
    assert cli.main(["grpo", "--resume", "--out", str(tmp_path / "cut"), "--quiet"]) == 0
    full = without_timing(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    cut = without_timing(read_metrics(tmp_path / "cut" / "metrics.jsonl"))
    assert cut == full


def test_ppo_run_logs_critic_metrics(init_ckpt, tmp_path):
    assert run_cli("ppo", init_ckpt, tmp_path, "--steps", "2", "--epochs", "1") == 0
    records = read_metrics(tmp_path / "metrics.jsonl")
    for key in ("value_loss", "explained_variance", "approx_kl", "clip_fraction", "reward_mean"):
        assert key in records[1], f"PPO metrics lack {key}"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["algo"] == "ppo" and summary["rl_steps"] == 2
    assert load_checkpoint(tmp_path / "model.pt")["extra"]["critic"] is not None


@pytest.mark.parametrize("flags, message", [
    (["--group-size", "1"], "at least 2 samples per prompt"),
    (["--temperature", "0"], "argument --temperature: expected a number > 0, got '0'"),
    (["--lr", "fast"], "argument --lr: expected a number > 0, got 'fast'"),
    (["--steps", "ten"], "argument --steps: expected a whole number >= 1, got 'ten'"),
    (["--stop-at-accuracy", "1.5"], "expected a number in (0, 1]"),
    (["--advantage-estimator", "nope"], "invalid choice"),
])
def test_bad_flags_one_line(init_ckpt, tmp_path, capsys, flags, message):
    assert run_cli("grpo", init_ckpt, tmp_path, *flags) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and message in err
    assert "(see: python -m training grpo --help)" in err


def test_unfinished_exercise_is_one_clear_line(init_ckpt, tmp_path, monkeypatch, capsys):
    module = course_impl.load("grpo_trainer")

    def not_done(self, batch):
        raise NotImplementedError("GRPOTrainer.training_step: your code here")

    monkeypatch.setattr(module.GRPOTrainer, "training_step", not_done)
    assert run_cli("grpo", init_ckpt, tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not finished" in err and "grade.py" in err


def test_stop_at_time_budget(init_ckpt, tmp_path):
    assert run_cli("grpo", init_ckpt, tmp_path / "t", "--steps", "50", "--time-budget-s", "0.001") == 0
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["rl_steps"] == 1 and summary["stop_reason"] == "time budget"
    assert math.isfinite(summary["accuracy_after"])
