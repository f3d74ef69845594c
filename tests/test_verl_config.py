"""`python -m training verl-config`: the course's GRPO flags as verl 0.9.1 keys, checked against verl's own default
trainer config (hydra composition, and an OmegaConf merge in struct mode: a key verl does not have fails)."""
import argparse
import importlib.util

import pytest

INSTALL = "pip install -r requirements-test.txt (make test does it)"
pytest.importorskip("hydra", reason=f"hydra-core is not installed: {INSTALL}")
if importlib.util.find_spec("verl") is None:
    pytest.skip(f"verl is not installed: {INSTALL}", allow_module_level=True)

import yaml  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from omegaconf.errors import ConfigKeyError  # noqa: E402

from training import cli, verl_config  # noqa: E402
from training.defaults import RL_DEFAULTS  # noqa: E402
from training.errors import UsageError  # noqa: E402
from training.flags import rl_hparams  # noqa: E402
from training.tasks import make_task  # noqa: E402

ACTOR = "actor_rollout_ref.actor"


def pairs_for(*argv, task="sort"):
    parser = argparse.ArgumentParser()
    verl_config.add_arguments(parser)
    args = parser.parse_args(list(argv))
    task = make_task(task)
    hp = rl_hparams("grpo", task, args, args.steps)
    return verl_config.verl_overrides(hp, task, kl_in_reward=args.kl_in_reward, kl_estimator=args.kl_estimator,
                                      data_dir=args.data_dir), hp


def composed(*argv, task="sort"):
    pairs, _ = pairs_for(*argv, task=task)
    return verl_config.compose_verl_config(pairs)


def test_the_installed_verl_is_the_one_named():
    assert verl_config.installed_verl_version() == verl_config.VERL_VERSION


def test_course_defaults_become_verls_keys():
    cfg = composed()
    row = RL_DEFAULTS["grpo"]["sort"]
    assert cfg.algorithm.adv_estimator == "grpo" and cfg.algorithm.norm_adv_by_std_in_grpo is True
    assert cfg.actor_rollout_ref.rollout.n == row["group_size"] and cfg.data.train_batch_size == row["prompts_per_step"]
    actor = cfg.actor_rollout_ref.actor
    assert actor.ppo_mini_batch_size == row["prompts_per_step"] // row["num_minibatches"]
    assert actor.ppo_epochs == row["num_iterations"]
    assert (actor.clip_ratio_low, actor.clip_ratio_high) == (row["clip_epsilon"], row["clip_epsilon"])
    assert actor.loss_agg_mode == "seq-mean-token-mean" and actor.policy_loss.loss_mode == "vanilla"
    assert actor.loss_scale_factor is None          # only Dr. GRPO's seq-mean-token-sum-norm sets it
    assert actor.use_kl_loss is False and cfg.algorithm.use_kl_in_reward is False
    assert actor.optim.lr == row["lr"] and actor.optim.lr_scheduler_type == "cosine"
    assert actor.optim.min_lr_ratio == 0.1
    assert list(actor.optim.betas) == [0.9, 0.99] and actor.optim.weight_decay == 0.0
    assert cfg.actor_rollout_ref.rollout.temperature == row["temperature"]
    assert cfg.algorithm.filter_groups.enable is True  # the sort row's dynamic sampling
    assert cfg.data.max_response_length == make_task("sort").max_new_tokens
    assert cfg.trainer.total_training_steps == row["steps"]
    assert cfg.reward.custom_reward_function.name == "compute_score_partial"


@pytest.mark.parametrize("argv, key, value", [
    (("--kl-beta", "0.01"), f"{ACTOR}.use_kl_loss", True),
    (("--kl-beta", "0.01"), f"{ACTOR}.kl_loss_coef", 0.01),
    (("--kl-beta", "0.01"), f"{ACTOR}.kl_loss_type", "low_var_kl"),
    (("--kl-beta", "0.01", "--kl-estimator", "k2"), f"{ACTOR}.kl_loss_type", "mse"),
    (("--kl-beta", "0.01", "--kl-in-reward"), "algorithm.use_kl_in_reward", True),
    (("--kl-beta", "0.01", "--kl-in-reward"), "algorithm.kl_ctrl.kl_coef", 0.01),
    (("--kl-beta", "0.01", "--kl-in-reward"), f"{ACTOR}.use_kl_loss", False),
    (("--no-normalize-std",), "algorithm.norm_adv_by_std_in_grpo", False),
    (("--advantage-estimator", "dr_grpo"), "algorithm.adv_estimator", "grpo"),
    (("--advantage-estimator", "dr_grpo"), "algorithm.norm_adv_by_std_in_grpo", False),
    (("--advantage-estimator", "rloo"), "algorithm.adv_estimator", "rloo"),
    (("--advantage-estimator", "reinforce_plus_plus"), "algorithm.adv_estimator", "reinforce_plus_plus"),
    (("--clip-epsilon-high", "0.28"), f"{ACTOR}.clip_ratio_high", 0.28),
    (("--loss-agg-mode", "token-mean"), f"{ACTOR}.loss_agg_mode", "token-mean"),
    (("--num-minibatches", "4"), f"{ACTOR}.ppo_mini_batch_size", 8),
    (("--no-dynamic-sampling",), "algorithm.filter_groups.enable", False),
    (("--overlong-penalty", "4"), "reward.reward_manager.name", "dapo"),
    (("--overlong-penalty", "4"), "reward.reward_kwargs.overlong_buffer_cfg.len", 4),
])
def test_each_flag_lands_on_its_verl_key(argv, key, value):
    pairs, _ = pairs_for(*argv)
    assert {k.lstrip("+"): v for k, v in pairs}[key] == value


@pytest.mark.parametrize("argv", [
    ("--kl-beta", "0.01", "--kl-estimator", "k2", "--no-normalize-std", "--loss-agg-mode", "token-mean"),
    ("--kl-beta", "0.01", "--kl-in-reward", "--advantage-estimator", "rloo", "--num-minibatches", "4"),
    ("--overlong-penalty", "4", "--advantage-estimator", "dr_grpo", "--clip-epsilon-high", "0.28"),
])
def test_every_variant_composes_into_verls_config(argv):
    """Each key of each variant exists in verl's config (hydra refuses others) and arrives with its value."""
    pairs, _ = pairs_for(*argv)
    cfg = verl_config.compose_verl_config(pairs)
    for key, value in pairs:
        got = OmegaConf.select(cfg, key.lstrip("+"))
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        assert got == (list(value) if isinstance(value, tuple) else value), key


def test_every_course_estimator_has_a_verl_name():
    from loss.advantages import GROUP_ESTIMATORS

    for name in GROUP_ESTIMATORS:
        pairs, _ = pairs_for("--advantage-estimator", name)
        assert dict(pairs)["algorithm.adv_estimator"] == ("grpo" if name == "dr_grpo" else name)


def test_a_key_verl_does_not_have_fails():
    pairs, _ = pairs_for()
    with pytest.raises(UsageError, match="adv_estimatr"):
        verl_config.check_pairs(pairs + [("algorithm.adv_estimatr", "grpo")])


def test_merge_into_verls_generated_default_in_struct_mode():
    """The overrides merged into verl/trainer/config/_generated_ppo_trainer.yaml (the flattened default) with
    OmegaConf in struct mode: every plain key exists there; a misspelt one raises."""
    default = OmegaConf.load(verl_config.verl_config_dir() / "_generated_ppo_trainer.yaml")
    OmegaConf.set_struct(default, True)
    pairs, _ = pairs_for("--kl-beta", "0.01")
    dotted = [f"{k}={verl_config._value_text(v)}" for k, v in pairs if not k.startswith("+")]
    merged = OmegaConf.merge(default, OmegaConf.from_dotlist(dotted))
    assert merged.actor_rollout_ref.actor.kl_loss_coef == 0.01
    with pytest.raises(ConfigKeyError):
        OmegaConf.merge(default, OmegaConf.from_dotlist(["actor_rollout_ref.actor.kl_los_coef=0.01"]))


def test_settings_verl_cannot_split_are_usage_errors():
    with pytest.raises(UsageError, match="split evenly"):
        pairs_for("--prompts-per-step", "30", "--num-minibatches", "4")


def run(capsys, *argv):
    code = cli.main(list(map(str, argv)))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_command_prints_a_hydra_config_that_composes_with_verls(capsys, tmp_path):
    code, out, err = run(capsys, "verl-config", "--kl-beta", "0.02")
    assert code == 0, err
    assert "checked against the installed verl 0.9.1" in out
    tree = yaml.safe_load(out)
    assert tree["defaults"] == ["ppo_trainer", "_self_"]
    assert tree["actor_rollout_ref"]["actor"]["kl_loss_coef"] == 0.02
    # compose the printed file as verl's main_ppo would (the search path pointed at the installed verl's folder)
    text = out.replace("pkg://verl.trainer.config", f"file://{verl_config.verl_config_dir()}")
    (tmp_path / "grpo.yaml").write_text(text)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        cfg = compose(config_name="grpo")
    assert cfg.actor_rollout_ref.actor.kl_loss_coef == 0.02 and cfg.actor_rollout_ref.rollout.n == 8
    assert cfg.critic is not None  # the rest is verl's own default


def test_the_command_prints_overrides(capsys):
    code, out, err = run(capsys, "verl-config", "--format", "overrides", "--no-check")
    assert code == 0, err
    lines = out.splitlines()
    assert "algorithm.adv_estimator=grpo" in lines and "actor_rollout_ref.rollout.n=8" in lines


def test_bad_flags_are_one_line_and_exit_2(capsys):
    code, _, err = run(capsys, "verl-config", "--prompts-per-step", "30", "--num-minibatches", "4")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_compute_score_is_the_course_rule_reward():
    assert verl_config.compute_score_exact("course_sort", "0123", "0123") == 1.0
    assert verl_config.compute_score_exact("course_sort", "0124", "0123") == 0.0
    assert verl_config.compute_score_partial("course_sort", "0124", "0123") == pytest.approx(4 / 5)
    assert verl_config.compute_score_partial("course_sort", "01", "0123") == pytest.approx(2 / 5)


def test_data_dir_writes_verls_parquet_files(tmp_path, capsys):
    import datasets

    code, _, err = run(capsys, "verl-config", "--no-check", "--steps", "2", "--data-dir", tmp_path / "data")
    assert code == 0, err
    train = datasets.Dataset.from_parquet(str(tmp_path / "data" / "train.parquet"))
    test = datasets.Dataset.from_parquet(str(tmp_path / "data" / "test.parquet"))
    assert len(train) == 2 * 32 and len(test) == 500
    row = train[0]
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].endswith("=")
    assert verl_config.compute_score_exact(row["data_source"], row["reward_model"]["ground_truth"],
                                           row["reward_model"]["ground_truth"]) == 1.0


@pytest.mark.slow
def test_the_printed_file_composes_through_the_pkg_search_path(capsys, tmp_path):
    code, out, _ = run(capsys, "verl-config", "--no-check", "--overlong-penalty", "4")
    assert code == 0
    (tmp_path / "grpo.yaml").write_text(out)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        cfg = compose(config_name="grpo")   # pkg://verl.trainer.config, as printed
    assert cfg.reward.reward_kwargs.overlong_buffer_cfg.len == 4 and cfg.algorithm.adv_estimator == "grpo"


@pytest.mark.slow
def test_verl_loads_the_course_reward_the_way_its_trainer_does():
    from verl.utils.import_utils import load_extern_object

    pairs, _ = pairs_for()
    keys = dict(pairs)
    score = load_extern_object(keys["reward.custom_reward_function.path"], keys["reward.custom_reward_function.name"])
    got = score(data_source="course_sort", solution_str="0123", ground_truth="0124", extra_info={})
    assert got == pytest.approx(0.8)
