"""The command line, run as a user would: `python -m training ...` in a subprocess."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from training.cli import main

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, timeout=120):
    env = dict(os.environ, COURSE_QUIET="1")
    return subprocess.run([sys.executable, "-m", "training", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {result.stderr!r}"
    assert lines[0].startswith("error:") and "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("args,words", [
    (("sft", "--task", "reverse"), ("unknown task 'reverse'",)),
    (("sft", "--no-such-flag"), ("--no-such-flag",)),
    (("sft", "--steps", "ten"), ("--steps",)),
    (("sft", "--steps", "0"), ("--steps",)),
    (("sft", "--preset", "huge"), ("--preset",)),
    (("sft", "--init", "no/such/model.pt"), ("not found",)),
    (("sft", "--device", "tpu"), ("--device",)),
    (("teleport",), ("teleport",)),
    ((), ("COMMAND",)),
])
def test_bad_input_is_one_line_and_exit_2(args, words, capsys):
    code = main(list(args))  # in-process: the same main() that `python -m training` runs
    captured = capsys.readouterr()
    assert_one_line_error(SimpleNamespace(returncode=code, stderr=captured.err), *words)


def test_errors_from_the_real_entry_point():
    assert_one_line_error(cli("sft", "--task", "reverse"), "unknown task")
    assert_one_line_error(cli("grpo", "--bogus"), "--bogus")


def in_process(capsys, *args):
    code = main([str(a) for a in args])
    return SimpleNamespace(returncode=code, stderr=capsys.readouterr().err)


def test_corrupt_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x00garbage")
    assert_one_line_error(in_process(capsys, "sft", "--init", bad), "corrupt")
    assert_one_line_error(in_process(capsys, "sft", "--resume", "--out", tmp_path), "corrupt")


def test_sft_run_writes_every_output_and_its_checkpoint_is_reusable(tmp_path, capsys):
    out = tmp_path / "run"
    result = cli("sft", "--task", "add", "--steps", "3", "--eval-every", "2", "--out", out, "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert "parameters" in result.stdout and "SFT add" in result.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3] and all("step_time_s" in r for r in records)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("task", "algo", "impl", "device", "seed", "accuracy_before", "accuracy_after", "rl_steps",
                "rl_wall_time_s", "step_time_median_s"):
        assert key in summary
    assert summary["task"] == "add" and summary["algo"] == "sft" and summary["seed"] == 1
    assert (out / "curves.png").stat().st_size > 0 and (out / "model.pt").exists()
    again = in_process(capsys, "sft", "--init", out / "model.pt", "--steps", "1", "--out", tmp_path / "again",
                       "--quiet")
    assert again.returncode == 0, again.stderr
    mismatch = in_process(capsys, "sft", "--init", out / "model.pt", "--task", "sort", "--out", tmp_path / "x")
    assert_one_line_error(mismatch, "add")


def test_demo_wires_weak_sft_into_run_rl(tmp_path, capsys, monkeypatch):
    import training.cli as cli_module

    calls = []

    def run_rl(algo, hp, model, task, out_dir, **kwargs):
        calls.append((algo, hp["group_size"], task.name, out_dir))
        return {"algo": algo, "rl_steps": 3, "rl_wall_time_s": 1.5, "step_time_median_s": 0.5,
                "accuracy_before": 0.25, "accuracy_after": 0.75}

    monkeypatch.setattr(cli_module, "run_rl", run_rl)
    code = main(["demo", "--sft-steps", "2", "--group-size", "4", "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert calls == [("grpo", 4, "sort", tmp_path)]
    assert (tmp_path / "sft" / "model.pt").exists() and (tmp_path / "sft" / "metrics.jsonl").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["algo"] == "grpo" and summary["rl_steps"] == 3 and summary["accuracy_after"] == 0.75
    assert summary["sft_steps"] == 2 and summary["init"].endswith("model.pt")
    assert "after weak SFT 25.0%" in out and "after GRPO 75.0%" in out


@pytest.mark.parametrize("command", [["sft", "--steps", "1"], ["demo", "--sft-steps", "1"], ["grpo"],
                                     ["ppo", "--steps", "1"]])
def test_out_that_cannot_be_written_is_one_line_before_any_work(command, tmp_path, capsys):
    in_the_way = tmp_path / "file"
    in_the_way.write_text("not a folder")
    assert_one_line_error(in_process(capsys, *command, "--out", in_the_way, "--quiet"), "--out", "not a folder")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        if os.access(read_only, os.W_OK):   # running as root: permissions do not stop us; a file path does
            target = in_the_way / "below"
        else:
            target = read_only / "run"
        assert_one_line_error(in_process(capsys, *command, "--out", target, "--quiet"), "--out")
    finally:
        read_only.chmod(0o700)
    assert not (tmp_path / "read-only" / "run").exists()


def test_usage_hint_names_the_command(capsys):
    assert main(["--bogus"]) == 2
    assert "(see: python -m training --help)" in capsys.readouterr().err
    assert main(["sft", "--bogus"]) == 2
    assert "(see: python -m training sft --help)" in capsys.readouterr().err
