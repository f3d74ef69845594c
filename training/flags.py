"""Command-line flags: value types that say what they expect, and the RL flags laid over training.defaults.

A flag left unset is None and takes its value from RL_DEFAULTS[algo][task] (`rl_hparams`), so the help text
always shows the real defaults and the command line and the lessons train with the same settings.
"""
import argparse

from loss.advantages import GROUP_ESTIMATORS
from loss.names import LOSS_AGG_MODES

from loss.corrections import DEFAULT_THRESHOLD, ROLLOUT_CORRECTIONS
from loss.policy_losses import POLICY_LOSSES

from .defaults import RL_DEFAULTS, defaults_for
from .errors import UsageError
from .menu import SAMPLER_MISMATCHES
from .rewards import REWARD_KINDS
from .tasks import make_task


def _number(kind, text, low=None, low_ok=True, high=None, what=""):
    """text -> kind(text) checked against the bounds; an ArgumentTypeError that says what was expected."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    too_low = low is not None and (value < low if low_ok else value <= low)
    if too_low or (high is not None and value > high) or value != value:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text):
    return _number(int, text, 1, what="a whole number >= 1")


def non_negative_int(text):
    return _number(int, text, 0, what="a whole number >= 0")


def any_int(text):
    return _number(int, text, what="a whole number")


def positive_float(text):
    return _number(float, text, 0.0, low_ok=False, what="a number > 0")


def non_negative_float(text):
    return _number(float, text, 0.0, what="a number >= 0")


def any_float(text):
    return _number(float, text, what="a number")


def fraction(text):
    return _number(float, text, 0.0, low_ok=False, high=1.0, what="a number in (0, 1]")


def above_one(text):
    return _number(float, text, 1.0, low_ok=False, what="a number > 1")


def group_size(text):
    value = _number(int, text, what="a whole number >= 2")
    if value < 2:
        raise argparse.ArgumentTypeError(f"GRPO needs at least 2 samples per prompt (a group of one has no baseline), "
                                         f"got {text!r}")
    return value


def _default_text(algo: str, key: str) -> str:
    """'default 0.2' or 'default: sort 2e-4, add 0.001' from RL_DEFAULTS (the help always tells the truth)."""
    values = {task: row[key] for task, row in RL_DEFAULTS[algo].items()}
    if len(set(map(repr, values.values()))) == 1:
        return f"default {next(iter(values.values()))}"
    return "default: " + ", ".join(f"{task} {value}" for task, value in values.items())


def add_rl_arguments(parser, algo: str) -> None:
    """Add the flags of `algo` ("grpo" | "ppo") to an argparse parser. Unset flags are None (see rl_hparams)."""
    group = parser.add_argument_group(f"{algo.upper()} (--steps {_default_text(algo, 'steps')})")

    def flag(name, help_text, **kwargs):
        key = name[2:].replace("-", "_")
        group.add_argument(name, help=f"{help_text} ({_default_text(algo, key)})".replace("%", "%%"), **kwargs)

    flag("--prompts-per-step", "problems per step", type=positive_int)
    flag("--group-size", "samples per prompt (GRPO's G, at least 2)" if algo == "grpo" else "samples per prompt",
         type=group_size if algo == "grpo" else positive_int)
    flag("--lr", "peak learning rate of the policy", type=positive_float)
    flag("--warmup", "steps of linear LR warm-up", type=non_negative_int)
    flag("--schedule", "LR after warm-up: cosine down to 10% over --steps, or constant", choices=("cosine", "constant"))
    flag("--kl-beta", "weight of KL(pi || pi_ref); 0 skips the reference pass", type=non_negative_float)
    flag("--clip-epsilon", "ratio clip", type=positive_float)
    flag("--temperature", "sampling temperature (the weak sort model is very flat at 1.0)", type=positive_float)
    flag("--reward", "rule reward: exact match, partial credit, or format", choices=REWARD_KINDS)
    flag("--eval-every", "held-out evaluation every K steps", type=positive_int, metavar="K")
    flag("--max-grad-norm", "gradient-norm clip", type=positive_float)
    flag("--num-minibatches", "optimizer steps per pass over a batch", type=positive_int)
    flag("--stop-at-accuracy", "stop once held-out exact match reaches ACC (None: run every step)", type=fraction,
         metavar="ACC")
    flag("--time-budget-s", "stop after S seconds of RL", type=positive_float, metavar="S")
    if algo == "grpo":
        flag("--num-iterations", "passes over each batch (GRPO's mu)", type=positive_int)
        flag("--clip-epsilon-high", "upper clip, e.g. DAPO's clip-higher 0.28 (None: = --clip-epsilon)",
             type=positive_float)
        flag("--normalize-std", "divide advantages by the group std (--no-normalize-std: Dr. GRPO)",
             action=argparse.BooleanOptionalAction)
        flag("--loss-agg-mode", "token aggregation of the loss", choices=LOSS_AGG_MODES)
        flag("--advantage-estimator", "advantage estimator (verl's names)", choices=GROUP_ESTIMATORS)
        flag("--dynamic-sampling", "DAPO: drop the groups whose rewards are all equal",
             action=argparse.BooleanOptionalAction)
        flag("--overlong-penalty", "DAPO soft overlong penalty over the last CACHE_LEN tokens (0: off)",
             type=non_negative_int, metavar="CACHE_LEN")
        add_menu_arguments(parser.add_argument_group("the 2025-26 menu (training/menu.py)"))
    else:
        flag("--epochs", "PPO epochs over each batch", type=positive_int)
        flag("--critic-lr", "critic learning rate (constant)", type=positive_float)
        flag("--gamma", "discount", type=any_float)
        flag("--lam", "GAE lambda", type=any_float)
        flag("--target-kl", "stop an update's epochs once approx KL > 1.5 x this (None: never)", type=positive_float)
        flag("--value-loss-coef", "weight of the value loss", type=non_negative_float)
        flag("--entropy-coef", "weight of the entropy bonus", type=non_negative_float)
        flag("--value-clip", "clip the value update around the collected values (None: off)", type=positive_float)


def add_menu_arguments(group) -> None:
    """The flags of training/menu.py: another policy loss, a sampler that is not the trainer and its correction,
    token selection. Unset: the exercise's GRPOLoss and the policy's own rollout."""
    group.add_argument("--policy-loss", choices=tuple(POLICY_LOSSES), default=None, metavar="NAME",
                       help="a verl 0.9.1 policy loss instead of the exercise's GRPOLoss: "
                            + ", ".join(POLICY_LOSSES) + " (default: GRPOLoss)")
    group.add_argument("--rollout-correction", choices=tuple(ROLLOUT_CORRECTIONS), default=None, metavar="NAME",
                       help="importance-sampling correction for a sampler that is not the trainer: "
                            "token_tis / sequence_tis truncate the weight pi_old/mu at C, token_mask / "
                            "sequence_mask drop tokens / completions whose weight leaves [1/C, C] (default: none)")
    group.add_argument("--rollout-correction-threshold", type=above_one, default=None, metavar="C",
                       help=f"C of --rollout-correction (default {DEFAULT_THRESHOLD})")
    group.add_argument("--top-entropy-quantile", type=fraction, default=None, metavar="Q",
                       help="train only the Q share of response tokens with the highest entropy (e.g. 0.2; "
                            "default: every token)")
    group.add_argument("--mask-truncated", action="store_true", default=None,
                       help="leave completions that hit the length limit without EOS out of the loss")
    group.add_argument("--sampler-mismatch", choices=tuple(SAMPLER_MISMATCHES), default=None, metavar="KIND",
                       help="sample the rollout as an inference engine would: bf16 (a bfloat16 copy of the "
                            "weights), top_k (the 3 likeliest tokens), top_p (nucleus 0.9), stale (weights reloaded "
                            "every 4th step, as an asynchronous engine); log pi_old is then recomputed by the trainer "
                            "(default: sample from the policy itself)")


def rl_hparams(algo: str, task, args, steps=None) -> dict:
    """RL_DEFAULTS[algo][task] with every flag the user set laid over it (and --steps)."""
    hp = defaults_for(algo, task.name)
    for key in hp:
        value = getattr(args, key, None)
        if value is not None:
            hp[key] = value
    if steps is not None:
        hp["steps"] = steps
    if algo == "grpo" and hp["overlong_penalty"] > task.max_new_tokens:
        raise UsageError(f"--overlong-penalty must be at most the task's max_new_tokens={task.max_new_tokens}, "
                         f"got {hp['overlong_penalty']}")
    return hp


def task_of(args, checkpoint_task=None):
    """The task from --task/--op, or `checkpoint_task` (a checkpoint's; --task must then agree with it)."""
    if checkpoint_task is not None:
        if args.task is not None and args.task != checkpoint_task.name:
            raise UsageError(f"--task {args.task} but the checkpoint was trained on {checkpoint_task.name!r}")
        return checkpoint_task
    name = args.task or "sort"
    return make_task(name, op=args.op) if args.op and name == "add" else make_task(name)
