"""`python -m training trl`: the course flags mapped to TRL's GRPOConfig, the course reward as a TRL reward function,
and a short real run of TRL's GRPOTrainer on an exported course model."""
import argparse
import json
import os

import pytest
import torch

pytest.importorskip("trl", reason="TRL is not installed: pip install -r requirements-test.txt (make test does it)")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from training import cli, trl_engine  # noqa: E402
from training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from training.defaults import RL_DEFAULTS  # noqa: E402
from training.device import make_generator  # noqa: E402
from training.errors import UsageError  # noqa: E402
from training.flags import rl_hparams  # noqa: E402
from training.model import make_model  # noqa: E402
from training.tasks import make_task  # noqa: E402
from training.tokenizer import EOS_ID, PAD_ID, TOKENIZER  # noqa: E402


def parse(*argv):
    parser = argparse.ArgumentParser()
    trl_engine.add_arguments(parser)
    return parser.parse_args(list(argv))


def settings(*argv, task="sort", world_size=1):
    args = parse(*argv)
    task = make_task(task)
    hp = rl_hparams("grpo", task, args, args.steps)
    return trl_engine.trl_settings(hp, task, args, world_size)


def test_course_defaults_map_to_grpo_config_names():
    config, rows = settings()
    row = RL_DEFAULTS["grpo"]["sort"]
    updates = row["num_iterations"] * row["num_minibatches"]          # optimizer updates per rollout
    assert config["num_generations"] == row["group_size"]
    assert config["per_device_train_batch_size"] == row["prompts_per_step"] * row["group_size"] // row["num_minibatches"]
    assert config["steps_per_generation"] == row["num_minibatches"]
    assert config["num_iterations"] == row["num_iterations"] and config["gradient_accumulation_steps"] == 1
    assert config["max_steps"] == row["steps"] * updates
    assert config["loss_type"] == "grpo" and config["scale_rewards"] == "group"
    assert config["beta"] == row["kl_beta"] and config["use_bias_correction_kl"] is False
    assert (config["epsilon"], config["epsilon_high"], config["delta"]) == (row["clip_epsilon"], None, None)
    assert config["temperature"] == row["temperature"] and config["learning_rate"] == row["lr"]
    assert config["adam_beta2"] == 0.99
    assert config["max_completion_length"] == make_task("sort").max_new_tokens
    assert config["warmup_steps"] == row["warmup"] * updates and config["lr_scheduler_type"] == "cosine_with_min_lr"
    table = trl_engine.format_table(rows)
    assert "num_generations=8" in table and "loss_type='grpo'" in table
    assert "dynamic_sampling" in table  # the sort row's default that TRL cannot do is named, not hidden


@pytest.mark.parametrize("argv, key, value", [
    (("--loss-agg-mode", "token-mean"), "loss_type", "bnpo"),
    (("--loss-agg-mode", "seq-mean-token-sum-norm"), "loss_type", "dr_grpo"),
    (("--loss-type", "dapo"), "loss_type", "dapo"),
    (("--loss-type", "cispo"), "epsilon_high", 5.0),
    (("--no-normalize-std",), "scale_rewards", "none"),
    (("--advantage-estimator", "dr_grpo"), "scale_rewards", "none"),
    (("--kl-beta", "0.04"), "beta", 0.04),
    (("--clip-epsilon-high", "0.28"), "epsilon_high", 0.28),
    (("--delta", "1.5"), "delta", 1.5),
    (("--importance-sampling-level", "sequence"), "importance_sampling_level", "sequence"),
    (("--group-size", "4", "--prompts-per-step", "16", "--num-minibatches", "4"), "per_device_train_batch_size", 16),
])
def test_each_course_flag_reaches_its_grpo_config_field(argv, key, value):
    config, _ = settings(*argv)
    assert config[key] == value


def test_several_processes_share_the_generation_batch():
    config, _ = settings(world_size=4)
    assert config["per_device_train_batch_size"] == 32 * 8 // (2 * 4)


@pytest.mark.parametrize("argv, message", [
    (("--advantage-estimator", "rloo"), "RLOOTrainer"),
    (("--loss-agg-mode", "seq-mean-token-sum"), "no TRL loss_type"),
    (("--loss-type", "dr_grpo", "--loss-agg-mode", "token-mean"), "give one of the two"),
    (("--overlong-penalty", "3"), "overlong"),
    (("--dynamic-sampling",), "dynamic sampling"),
    (("--prompts-per-step", "5", "--num-minibatches", "2", "--group-size", "3"), "split evenly"),
])
def test_settings_trl_cannot_do_are_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        settings(*argv)


def test_the_reward_function_is_the_course_reward():
    task = make_task("sort")
    batch = task.sample(6, make_generator(3))
    completions = batch.answers.clone()
    completions[1, 2] = completions[1, 2] % 9 + 3          # one wrong digit
    completions[2, -1] = TOKENIZER.encode("7")[0]           # no EOS where it belongs
    rows = [[t for t in row if t != PAD_ID] for row in completions.tolist()]
    reward = trl_engine.make_reward(task, "partial")
    got = reward(prompts=None, completions=None, completion_ids=rows, answer_ids=batch.answers.tolist())
    expected = task.reward(trl_engine.completions_tensor(rows), batch.answers, kind="partial")
    assert got == pytest.approx(expected.tolist())
    assert got[0] == 1.0 and got[1] < 1.0 and got[2] < 1.0
    assert reward.__name__ == "course_sort_partial"


def test_text_of_another_tokenizer_maps_to_course_ids():
    assert trl_engine.text_to_course_ids("0123", ended=True) == TOKENIZER.encode("0123") + [EOS_ID]
    assert trl_engine.text_to_course_ids("01 x", ended=False) == TOKENIZER.encode("01") + [PAD_ID, PAD_ID]


def test_the_dataset_holds_the_course_problems_in_order():
    task = make_task("sort")
    hp = dict(rl_hparams("grpo", task, parse()), steps=3, prompts_per_step=5)
    dataset = trl_engine.build_dataset(task, hp, seed=7)
    data = make_generator(7 + 13)
    expected = [task.sample(5, data) for _ in range(3)]
    assert dataset["prompt"] == [TOKENIZER.decode(p) for b in expected for p in b.prompts]
    assert dataset["answer_ids"] == [a for b in expected for a in b.answers.tolist()]


def run(capsys, *argv):
    code = cli.main(list(map(str, argv)))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv, message", [
    ((), "exactly one of --init"),
    (("--init", "missing.pt"), "not found"),
    (("--model", "no_such_folder"), "not a transformers model folder"),
])
def test_bad_start_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    code, _, err = run(capsys, "trl", "--out", tmp_path / "out", *[str(tmp_path / a) if a.endswith(("pt", "folder"))
                                                                   else a for a in argv])
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err


@pytest.mark.slow
def test_trl_trains_an_exported_course_model_and_writes_the_run_files(tmp_path, capsys):
    from training import hf_export

    task = make_task("sort")
    torch.manual_seed(0)
    model = make_model("nano", TOKENIZER.vocab_size, task.block_size)
    hf_export.export_model(model, tmp_path / "hf", task=task)
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "trl", "--model", tmp_path / "hf", "--out", out, "--steps", "2",
                            "--prompts-per-step", "4", "--group-size", "4", "--eval-every", "1", "--quiet",
                            "--temperature", "1.0", "--kl-beta", "0.01")
    assert code == 0, err
    assert "num_generations=4" in stdout and "TRL GRPO sort" in stdout
    summary = json.loads((out / "summary.json").read_text())
    for key in ("task", "algo", "impl", "device", "seed", "accuracy_before", "accuracy_after", "rl_steps",
                "rl_wall_time_s", "step_time_median_s"):
        assert key in summary, key
    assert summary["engine"] == "trl" and summary["trl_version"] == "1.16.0" and summary["rl_steps"] == 2
    row = RL_DEFAULTS["grpo"]["sort"]
    updates = row["num_iterations"] * row["num_minibatches"]           # optimizer updates per rollout
    assert summary["evaluator"] == "course greedy_accuracy" and summary["optimizer_steps"] == 2 * updates
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert all(r["accuracy"] is not None for r in records) and records[1]["reward_mean"] is not None
    assert (out / "curves.png").is_file() and (out / "hf_model" / "config.json").is_file()
    checkpoint = load_checkpoint(out / "model.pt")          # the trained weights, as `--init` accepts them
    assert checkpoint["extra"]["engine"] == "trl"
    before = model.state_dict()["trunk.wte.weight"]
    assert not torch.equal(checkpoint["model"]["trunk.wte.weight"], before)  # TRL's updates came back


@pytest.mark.slow
def test_trl_from_a_course_checkpoint(tmp_path, capsys):
    task = make_task("sort")
    torch.manual_seed(0)
    model = make_model("nano", TOKENIZER.vocab_size, task.block_size)
    save_checkpoint(tmp_path / "model.pt", model, task=task, preset="nano", step=0)
    code, stdout, err = run(capsys, "trl", "--init", tmp_path / "model.pt", "--out", tmp_path / "run", "--steps", "1",
                            "--prompts-per-step", "2", "--group-size", "2", "--num-iterations", "1",
                            "--num-minibatches", "1", "--quiet")
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["init"] == str(tmp_path / "model.pt") and summary["rl_steps"] == 1
