"""Print the course's GRPO settings as a verl 0.9.1 config: `verl-config [flags] > grpo.yaml`.

The same flags as `python -m training grpo` (training/flags.py) become verl's own keys, laid over verl's default
trainer config (verl/trainer/config/ppo_trainer.yaml) by hydra:

    course                                   verl 0.9.1
    --advantage-estimator, --normalize-std   algorithm.adv_estimator, algorithm.norm_adv_by_std_in_grpo
                                             (the course's dr_grpo is verl's grpo without the std)
    --group-size G                           actor_rollout_ref.rollout.n
    --prompts-per-step B, --num-minibatches  data.train_batch_size = B, actor.ppo_mini_batch_size = B / M (prompts)
    --num-iterations                         actor.ppo_epochs
    --clip-epsilon(-high)                    actor.clip_ratio, clip_ratio_low, clip_ratio_high
    --loss-agg-mode                          actor.loss_agg_mode
    --kl-beta (k3 in the loss)               actor.use_kl_loss, kl_loss_coef, kl_loss_type=low_var_kl
      or with --kl-in-reward                 algorithm.use_kl_in_reward, algorithm.kl_ctrl.kl_coef, kl_penalty
    --temperature                            actor_rollout_ref.rollout.temperature
    --lr, --warmup, --schedule,              actor.optim.lr, lr_warmup_steps, lr_scheduler_type (+ min_lr_ratio 0.1),
      --max-grad-norm                        actor.optim.clip_grad (betas [0.9, 0.99], weight_decay 0 as the course)
    --dynamic-sampling                       algorithm.filter_groups.enable (metric score)
    --overlong-penalty L                     reward.reward_manager.name=dapo + reward_kwargs.overlong_buffer_cfg
    --steps, task.max_new_tokens             trainer.total_training_steps, data.max_response_length

(actor = actor_rollout_ref.actor.) The output is a hydra config file whose defaults list pulls in verl's
ppo_trainer, so `python -m verl.trainer.main_ppo --config-path=$PWD --config-name=grpo` runs it; `--format
overrides` prints the same settings as command-line overrides instead. The keys are checked by composing them
into verl's own config (hydra refuses a key that verl does not have) whenever verl is installed.

`compute_score` at the end is the course's rule reward in verl's custom-reward signature, and `--data-dir`
writes the task's problems as verl's parquet files, so the launch line can run on the course task too.
"""
import importlib.util
import re
from pathlib import Path

if __package__:  # imported as training.verl_config (verl loads this file by path only for compute_score_*)
    from loss.advantages import ADVANTAGE_ESTIMATORS

    from .errors import UsageError
    from .flags import add_rl_arguments, positive_int, rl_hparams, task_of
    from .tasks import OPS

VERL_VERSION = "0.9.1"
KL_LOSS_TYPES = {"k1": "kl", "k2": "mse", "k3": "low_var_kl"}  # the course's estimator names -> verl's
# The course's advantage estimators are keyed by verl's names, except dr_grpo (verl: grpo without the std).
VERL_ESTIMATORS = {name: "grpo" if name == "dr_grpo" else name for name in ADVANTAGE_ESTIMATORS}
ACTOR = "actor_rollout_ref.actor"
ROLLOUT = "actor_rollout_ref.rollout"
INSTALL_HINT = "pip install -r requirements-test.txt (verl 0.9.1 without its cluster dependencies)"


def add_arguments(parser) -> None:
    parser.add_argument("--task", choices=("sort", "add"), default="sort", help="the task (default sort)")
    parser.add_argument("--op", choices=tuple(OPS), default=None, help="arithmetic operation for --task add")
    parser.add_argument("--steps", type=positive_int, default=None, help="RL steps (trainer.total_training_steps)")
    parser.add_argument("--seed", type=int, default=0, help="data.seed and the problems drawn for --data-dir")
    parser.add_argument("--model-path", default="Qwen/Qwen2.5-0.5B-Instruct",
                        help="actor_rollout_ref.model.path: a hub id or a local folder, e.g. one written by "
                             "`python -m training export-hf` (default Qwen/Qwen2.5-0.5B-Instruct)")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="write the task's problems to DIR/train.parquet and DIR/test.parquet and point "
                             "data.train_files / data.val_files there (default: ~/data/course_<task>/)")
    parser.add_argument("--kl-in-reward", action="store_true",
                        help="put --kl-beta into the reward (algorithm.use_kl_in_reward) instead of the loss")
    parser.add_argument("--kl-estimator", choices=tuple(KL_LOSS_TYPES), default="k3",
                        help="the KL estimate (k1 = verl kl, k2 = mse, k3 = low_var_kl; default k3 as the course)")
    parser.add_argument("--n-gpus", type=positive_int, default=1, help="trainer.n_gpus_per_node (default 1)")
    parser.add_argument("--nnodes", type=positive_int, default=1, help="trainer.nnodes (default 1)")
    parser.add_argument("--rollout-engine", choices=("vllm", "sglang", "hf"), default="vllm",
                        help="actor_rollout_ref.rollout.name (default vllm)")
    parser.add_argument("--format", choices=("yaml", "overrides"), default="yaml",
                        help="a hydra config file (default) or one key=value override per line")
    parser.add_argument("--no-check", action="store_true",
                        help="do not compose the keys into the installed verl's config (checked by default)")
    add_rl_arguments(parser, "grpo")


# ------------------------------------------------------------------------------------------- the mapping
def verl_overrides(hp: dict, task, *, model_path="Qwen/Qwen2.5-0.5B-Instruct", data_dir=None, kl_in_reward=False,
                   kl_estimator="k3", n_gpus=1, nnodes=1, rollout_engine="vllm", seed=0) -> list[tuple[str, object]]:
    """The course hyperparameters `hp` (training.flags.rl_hparams) -> [(verl key, value)], in a readable order.

    Keys starting with '+' are new keys that verl's default config does not declare (hydra's append syntax);
    every other key must exist in verl's ppo_trainer config. UsageError for a setting verl cannot express.
    """
    estimator = hp["advantage_estimator"]
    if estimator not in VERL_ESTIMATORS:
        raise UsageError(f"--advantage-estimator {estimator} has no verl name")
    prompts, minibatches = hp["prompts_per_step"], hp["num_minibatches"]
    if prompts % minibatches:
        raise UsageError(f"--prompts-per-step {prompts} must split evenly into --num-minibatches {minibatches}: "
                         f"verl's ppo_mini_batch_size counts prompts")
    normalize = hp["normalize_std"] and estimator != "dr_grpo"
    low = hp["clip_epsilon"]
    high = low if hp["clip_epsilon_high"] is None else hp["clip_epsilon_high"]
    data_dir = Path(data_dir) if data_dir is not None else Path(f"~/data/course_{task.name}")
    pairs = [
        ("algorithm.adv_estimator", VERL_ESTIMATORS[estimator]),
        ("algorithm.norm_adv_by_std_in_grpo", normalize),
        (f"{ROLLOUT}.n", hp["group_size"]),
        ("data.train_batch_size", prompts),
        (f"{ACTOR}.ppo_mini_batch_size", prompts // minibatches),
        (f"{ACTOR}.ppo_epochs", hp["num_iterations"]),
        (f"{ACTOR}.shuffle", True),
        (f"{ACTOR}.clip_ratio", low),
        (f"{ACTOR}.clip_ratio_low", low),
        (f"{ACTOR}.clip_ratio_high", high),
        (f"{ACTOR}.loss_agg_mode", hp["loss_agg_mode"]),
        # Dr. GRPO's constant divisor: without it verl divides each micro-batch by its own longest response
        (f"{ACTOR}.loss_scale_factor", task.max_new_tokens if hp["loss_agg_mode"] == "seq-mean-token-sum-norm"
         else None),
        (f"{ACTOR}.policy_loss.loss_mode", "vanilla"),
    ]
    beta = hp["kl_beta"]
    if kl_in_reward:
        pairs += [(f"{ACTOR}.use_kl_loss", False), ("algorithm.use_kl_in_reward", beta > 0),
                  ("algorithm.kl_penalty", KL_LOSS_TYPES[kl_estimator]), ("algorithm.kl_ctrl.type", "fixed"),
                  ("algorithm.kl_ctrl.kl_coef", beta)]
    else:
        pairs += [(f"{ACTOR}.use_kl_loss", beta > 0), (f"{ACTOR}.kl_loss_coef", beta),
                  (f"{ACTOR}.kl_loss_type", KL_LOSS_TYPES[kl_estimator]), ("algorithm.use_kl_in_reward", False)]
    pairs += [
        (f"{ACTOR}.entropy_coeff", 0.0),
        (f"{ACTOR}.optim.lr", hp["lr"]),
        (f"{ACTOR}.optim.lr_warmup_steps", hp["warmup"]),
        (f"{ACTOR}.optim.lr_scheduler_type", "cosine" if hp["schedule"] == "cosine" else "constant"),
        (f"{ACTOR}.optim.min_lr_ratio", 0.1 if hp["schedule"] == "cosine" else 0.0),
        (f"{ACTOR}.optim.betas", [0.9, 0.99]),
        (f"{ACTOR}.optim.weight_decay", 0.0),
        (f"{ACTOR}.optim.clip_grad", hp["max_grad_norm"] if hp["max_grad_norm"] else 1e9),
        (f"{ROLLOUT}.temperature", hp["temperature"]),
        (f"{ROLLOUT}.top_k", -1),
        (f"{ROLLOUT}.top_p", 1.0),
        (f"{ROLLOUT}.name", rollout_engine),
        ("algorithm.filter_groups.enable", bool(hp["dynamic_sampling"])),
    ]
    if hp["dynamic_sampling"]:
        pairs.append(("algorithm.filter_groups.metric", "score"))
    if hp["overlong_penalty"]:
        pairs += [("reward.reward_manager.name", "dapo"),
                  ("+reward.reward_kwargs.max_resp_len", task.max_new_tokens),
                  ("+reward.reward_kwargs.overlong_buffer_cfg.enable", True),
                  ("+reward.reward_kwargs.overlong_buffer_cfg.len", hp["overlong_penalty"]),
                  ("+reward.reward_kwargs.overlong_buffer_cfg.penalty_factor", 1.0),
                  ("+reward.reward_kwargs.overlong_buffer_cfg.log", False)]
    pairs += [
        ("reward.custom_reward_function.path", "pkg://training.verl_config"),  # run from the repo root
        ("reward.custom_reward_function.name", f"compute_score_{hp['reward']}"),
        ("data.max_prompt_length", 64),
        ("data.max_response_length", task.max_new_tokens),
        ("data.train_files", str(data_dir / "train.parquet")),
        ("data.val_files", str(data_dir / "test.parquet")),
        ("data.seed", seed),
        ("actor_rollout_ref.model.path", model_path),
        ("trainer.total_training_steps", hp["steps"]),
        ("trainer.test_freq", hp["eval_every"]),
        ("trainer.n_gpus_per_node", n_gpus),
        ("trainer.nnodes", nnodes),
        ("trainer.logger", ["console"]),
        ("trainer.project_name", "grpo_course"),
        ("trainer.experiment_name", f"{task.name}_grpo"),
    ]
    return pairs


def _value_text(value) -> str:
    """A value as hydra's override grammar and YAML both read it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value_text(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if not re.fullmatch(r"[\w./+-]+", text) or text in ("true", "false", "null"):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


def as_overrides(pairs) -> list[str]:
    """['algorithm.adv_estimator=grpo', ...]: hydra command-line overrides for verl.trainer.main_ppo."""
    return [f"{key}={_value_text(value)}" for key, value in pairs]


def as_yaml(pairs, header: str = "") -> str:
    """A hydra config file: verl's ppo_trainer as its defaults, then these settings nested by their dotted keys."""
    tree: dict = {}
    for key, value in pairs:
        node = tree
        parts = key.lstrip("+").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    lines = [header.rstrip("\n")] if header else []
    lines += ["hydra:", "  searchpath:", "    - pkg://verl.trainer.config",
              "defaults:", "  - ppo_trainer", "  - _self_"]

    def emit(node, indent):
        for key, value in node.items():
            if isinstance(value, dict):
                lines.append(f"{'  ' * indent}{key}:")
                emit(value, indent + 1)
            else:
                lines.append(f"{'  ' * indent}{key}: {_value_text(value)}")

    emit(tree, 0)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- the check
def verl_config_dir() -> Path:
    """verl's trainer config folder, found without importing verl (whose __init__ pulls in ray)."""
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"verl is not installed, so the keys cannot be checked: {INSTALL_HINT} (or --no-check)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "trainer" / "config"
    if not (folder / "ppo_trainer.yaml").is_file():
        raise UsageError(f"no ppo_trainer.yaml in {folder}: is verl {VERL_VERSION} installed?")
    return folder


def installed_verl_version() -> str | None:
    try:
        from importlib.metadata import version
        return version("verl")
    except Exception:
        return None


def compose_verl_config(pairs):
    """verl's ppo_trainer config composed by hydra with these overrides (struct mode: an unknown key fails with
    hydra's ConfigCompositionException). Returns the OmegaConf DictConfig."""
    try:
        from hydra import compose, initialize_config_dir
    except ImportError:
        raise UsageError(f"checking the keys needs hydra-core: {INSTALL_HINT} (or --no-check)") from None
    with initialize_config_dir(config_dir=str(verl_config_dir()), version_base=None):
        return compose(config_name="ppo_trainer", overrides=as_overrides(pairs))


def check_pairs(pairs) -> str:
    """Compose the pairs into the installed verl's config; UsageError naming the key verl refuses."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        compose_verl_config(pairs)
    except (HydraException, OmegaConfBaseException) as err:
        raise UsageError(f"verl {installed_verl_version()} refuses these settings: {str(err).splitlines()[0]}")
    return installed_verl_version() or "?"


# -------------------------------------------------------------------------------------------- the reward
def _course_reward(solution_str: str, ground_truth: str, kind: str) -> float:
    """The course's rule reward of one decoded response. verl imports this module as pkg://training.verl_config
    (the repository root on PYTHONPATH); loaded by file path instead, only these functions work."""
    import torch
    from training.rewards import REWARDS
    from training.tokenizer import EOS_ID, PAD_ID, TOKENIZER

    completion = [TOKENIZER.char_to_id.get(ch, PAD_ID) for ch in solution_str.strip()] + [EOS_ID]
    answer = TOKENIZER.encode(ground_truth) + [EOS_ID]
    completion += [PAD_ID] * (len(answer) - len(completion))
    return float(REWARDS[kind](torch.tensor([completion]), torch.tensor([answer]))[0])


def compute_score_exact(data_source, solution_str, ground_truth, extra_info=None, **_) -> float:
    """verl's custom reward signature: 1.0 when the decoded response is exactly the answer, else 0.0."""
    return _course_reward(solution_str, ground_truth, "exact")


def compute_score_partial(data_source, solution_str, ground_truth, extra_info=None, **_) -> float:
    """verl's custom reward signature: the fraction of the answer's positions (and its end) that are right."""
    return _course_reward(solution_str, ground_truth, "partial")


def write_verl_data(task, hp, data_dir, seed: int = 0) -> Path:
    """The task's problems as verl's parquet files: steps x prompts-per-step training problems (the course's
    draw) and the held-out set, each row {data_source, prompt (chat), reward_model.ground_truth, extra_info}."""
    import datasets
    import torch

    from .device import make_generator
    from .tokenizer import TOKENIZER

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    generator = make_generator(seed + 13)
    train = [task.sample(hp["prompts_per_step"], generator) for _ in range(hp["steps"])]
    splits = {"train": (torch.cat([b.prompts for b in train]), torch.cat([b.answers for b in train])),
              "test": (task.eval_batch().prompts, task.eval_batch().answers)}
    for split, (prompts, answers) in splits.items():
        rows = [dict(data_source=f"course_{task.name}", prompt=[{"role": "user", "content": TOKENIZER.decode(p)}],
                     ability="arithmetic", reward_model={"style": "rule", "ground_truth": TOKENIZER.decode(a)},
                     extra_info={"split": split, "index": i})
                for i, (p, a) in enumerate(zip(prompts, answers))]
        datasets.Dataset.from_list(rows).to_parquet(str(data_dir / f"{split}.parquet"))
    return data_dir


# --------------------------------------------------------------------------------------------- the command
def main(args) -> int:
    task = task_of(args)
    hp = rl_hparams("grpo", task, args, args.steps)
    pairs = verl_overrides(hp, task, model_path=args.model_path, data_dir=args.data_dir,
                           kl_in_reward=args.kl_in_reward, kl_estimator=args.kl_estimator, n_gpus=args.n_gpus,
                           nnodes=args.nnodes, rollout_engine=args.rollout_engine, seed=args.seed)
    checked = None if args.no_check else check_pairs(pairs)
    if args.data_dir is not None:
        write_verl_data(task, hp, args.data_dir, seed=args.seed)
    if args.format == "overrides":
        print("\n".join(as_overrides(pairs)))
        return 0
    header = (f"# verl {VERL_VERSION} GRPO config for the course task {task.name!r}, from the course's GRPO settings"
              f" (python -m training verl-config).\n"
              + (f"# Keys checked against the installed verl {checked}'s ppo_trainer config.\n" if checked else "")
              + "# Run: python -m verl.trainer.main_ppo --config-path=\"$PWD\" --config-name=grpo\n")
    print(as_yaml(pairs, header), end="")
    return 0

