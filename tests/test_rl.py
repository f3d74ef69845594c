"""Fast checks of the RL run loop (training/rl.py) through the command line: files, determinism, NaN handling,
resume, flag errors. Tiny runs: a fresh nano model, 4 prompts x 2 samples, a handful of steps."""
import json
import math

import pytest
import torch

from training import cli, impl as course_impl
from training import rl
from training.checkpoint import load_checkpoint, save_checkpoint
from training.model import make_model
from training.runlog import read_metrics
from training.tasks import make_task
from training.tokenizer import TOKENIZER

TIMING = {"step_time_s", "rl_wall_time_s", "step_time_median_s"}


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
    for key in ("reward_mean", "loss", "clip_fraction", "ratio_mean", "entropy", "response_length",
                "zero_std_fraction", "step_time_s"):
        assert all(key in r for r in records[1:]), f"metrics.jsonl lacks {key}"
    assert "accuracy" in records[2] and "kl" in records[2] and "accuracy" in records[3]  # eval steps 2 and last
    assert "accuracy" not in records[1]
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("task", "algo", "impl", "device", "seed", "accuracy_before", "accuracy_after", "rl_steps",
                "rl_wall_time_s", "step_time_median_s", "nonfinite_steps"):
        assert summary.get(key) is not None, f"summary.json lacks {key}"
    assert summary["rl_steps"] == 3 and summary["algo"] == "grpo" and summary["nonfinite_steps"] == 0
    assert summary["accuracy_after"] == records[3]["accuracy"]
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


def test_nan_loss_is_skipped_and_counted(init_ckpt, tmp_path, monkeypatch, capsys):
    module = course_impl.load("grpo_trainer")
    real_forward = module.GRPOLoss.forward

    def nan_forward(self, *args, **kwargs):
        return real_forward(self, *args, **kwargs) * float("nan")

    monkeypatch.setattr(module.GRPOLoss, "forward", nan_forward)
    before = load_checkpoint(init_ckpt)["model"]
    assert run_cli("grpo", init_ckpt, tmp_path, "--steps", "2") == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["nonfinite_steps"] == 2
    assert "NaN/inf loss" in capsys.readouterr().err
    after = load_checkpoint(tmp_path / "model.pt")["model"]
    assert all(torch.equal(before[k], after[k]) for k in before), "a NaN loss must not change the weights"
    assert all(r.get("loss") is None for r in read_metrics(tmp_path / "metrics.jsonl")[1:])


def test_resume_continues_exactly(init_ckpt, tmp_path, monkeypatch):
    assert run_cli("grpo", init_ckpt, tmp_path / "full", "--steps", "4", "--eval-every", "1") == 0

    def stop_at_two(step, record):
        if step == 2:
            raise KeyboardInterrupt

    real_run = rl.run_rl
    monkeypatch.setattr(rl, "run_rl", lambda *a, **k: real_run(*a, **k, on_step=stop_at_two))
    assert run_cli("grpo", init_ckpt, tmp_path / "cut", "--steps", "4", "--eval-every", "1") == 130
    monkeypatch.setattr(rl, "run_rl", real_run)
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
    (["--temperature", "0"], "must be > 0"),
    (["--stop-at-accuracy", "1.5"], "must be in (0, 1]"),
    (["--advantage-estimator", "nope"], "invalid choice"),
])
def test_bad_flags_one_line(init_ckpt, tmp_path, capsys, flags, message):
    assert run_cli("grpo", init_ckpt, tmp_path, *flags) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and message in err


def test_unfinished_exercise_is_one_clear_line(init_ckpt, tmp_path, monkeypatch, capsys):
    module = course_impl.load("grpo_trainer")

    def not_done(self, prompts):
        raise NotImplementedError("GRPOTrainer.generate_group_outputs: your code here")

    monkeypatch.setattr(module.GRPOTrainer, "generate_group_outputs", not_done)
    assert run_cli("grpo", init_ckpt, tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not finished" in err and "grade.py" in err


def test_stop_at_accuracy_and_time_budget(init_ckpt, tmp_path):
    assert run_cli("grpo", init_ckpt, tmp_path / "t", "--steps", "50", "--time-budget-s", "0.001") == 0
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["rl_steps"] == 1 and summary["stop_reason"] == "time budget"
    assert math.isfinite(summary["accuracy_after"])


def test_grpo_step_measure():
    figures = rl.measure_grpo_step(torch.device("cpu"), repeats=1)
    assert figures["seconds"] > 0 and 1 <= figures["completion_len"] <= make_task("sort").max_new_tokens
    assert 1e9 < figures["flops"] < 1e11   # a few GFLOP: 256 sequences of ~25 tokens through an 87k-parameter model
