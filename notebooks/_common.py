"""Helpers shared by the lesson notebooks (one import at the top of each lesson: `from _common import *`).

- Puts the repository root on `sys.path`: the notebooks run with `notebooks/` as working directory (JupyterLab,
  nbval and tools/run_notebooks.py all do this), so without it `import training` and `import loss` would fail.
- `setup(seed)`: seeds torch and numpy, sets print precision and a readable plotting style.
- `try_exercise(compute)`: runs exercise code (reached only through `training.impl.load`). In the student
  release the stubs raise NotImplementedError; then this prints one clear line instead of a traceback.
- `check_exercise(label, compute, expected)`: the same, and then asserts the result equals the by-hand value.
- `print_table(headers, rows)`: a plain aligned text table (deterministic, so nbval can compare it).
- `reference_group_batch`: the correct batch layout for lesson 4's silent-bug exercise (imported by name there).

The lessons that train the tiny GPT (08-11) add:
- `setup_training(seed)`: `setup`, plus one CPU thread for torch (see its docstring).
- `require_exercise(compute)`: like `try_exercise`, but a lesson that cannot go on without the exercise (it trains
  with your trainer) stops there with the same one line instead of a traceback.
- `eval_subset(task, n)`: the first n problems of the fixed held-out set (a faster, noisier accuracy).
- `series(records, key)`: (steps, values) of one logged quantity, for plotting.
The training itself is the course's own code, not a notebook copy: `training.loop.train` (the one run loop of
`python -m training grpo|ppo|demo`), `training.trainers.build_trainer`, `training.defaults.RL_DEFAULTS` and
`training.sft.weak_model` (the weak SFT start, trained once and cached).
"""
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["ROOT", "np", "torch", "plt", "setup", "try_exercise", "check_exercise", "print_table",
           "setup_training", "require_exercise", "ExerciseNotWritten", "eval_subset", "series"]  # + reference_group_batch


def setup(seed: int = 0) -> None:
    """Seed everything a lesson uses and set print/plot defaults."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_printoptions(precision=4, sci_mode=False)
    np.set_printoptions(precision=4, suppress=True)
    plt.rcParams.update({
        "figure.figsize": (7.5, 4.2), "figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3,
        "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9, "font.size": 10,
        "axes.spines.top": False, "axes.spines.right": False,
    })


def _not_written_message(err: NotImplementedError) -> str:
    """'finish exercises/grpo_loss.py first: GRPOLoss.forward is not implemented yet'."""
    frame = traceback.extract_tb(err.__traceback__)[-1]
    try:
        where = Path(frame.filename).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        where = frame.filename
    name = str(err).split(":")[0] or frame.name
    return f"finish {where} first: {name} is not implemented yet"


def try_exercise(compute):
    """Return compute() or, if the exercise behind it is still a stub, print why and return None."""
    try:
        return compute()
    except NotImplementedError as err:
        print(_not_written_message(err))
        return None


def check_exercise(label: str, compute, expected, **tolerance):
    """Run exercise code and assert it agrees with the by-hand `expected` (torch.testing.assert_close)."""
    got = try_exercise(compute)
    if got is None:
        return None
    torch.testing.assert_close(got, expected, **tolerance)
    print(f"ok: {label} agrees with the by-hand computation")
    return got


def _cell(value, digits: int) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return f"{value.item():.{digits}f}"
    return str(value)


def print_table(headers, rows, digits: int = 4) -> None:
    """Print rows (lists of str/float) under headers as an aligned plain-text table."""
    cells = [[str(h) for h in headers]] + [[_cell(v, digits) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def reference_group_batch(right_answer: torch.Tensor, group_size: int):
    """Lesson 4's silent-bug exercise, the correct batch layout: the G rows of a prompt sit next to each other.

    Row r answers prompt r // G and is graded against that prompt's right answer, so `view(B, G)` groups the
    G answers of one prompt (the layout `training.rollout` and lesson 3 use: `repeat_interleave`).
    """
    prompt_of_row = torch.arange(len(right_answer)).repeat_interleave(group_size)
    return prompt_of_row, right_answer[prompt_of_row]


# ---------------------------------------------------------------- lessons 08-11: training the tiny GPT


def setup_training(seed: int = 0) -> None:
    """`setup(seed)`, and one CPU thread for torch.

    The nano GPT's matrices are tiny (48 wide): a second thread brings almost no speed, and on a busy machine it
    costs a lot. One thread also keeps the order of every floating-point sum fixed, so the printed numbers do not
    depend on how many cores the machine has.
    """
    setup(seed)
    torch.set_num_threads(1)


class ExerciseNotWritten(Exception):
    """Stops a lesson that needs an unwritten exercise. IPython shows `_render_traceback_` instead of a traceback."""

    def _render_traceback_(self):
        return [str(self)]


def require_exercise(compute):
    """Return compute(); if the exercise behind it is still a stub, stop with one line (no traceback).

    For lessons that train with your code: every later cell needs the result, so the lesson stops here
    ("Run All" stops too) with `finish exercises/grpo_trainer.py first: ... is not implemented yet`.
    """
    try:
        return compute()
    except NotImplementedError as err:
        raise ExerciseNotWritten(_not_written_message(err) + " (this lesson trains with your code)") from None


def eval_subset(task, n: int):
    """The first n problems of the task's fixed held-out set: same problems every call, n/500 of the cost."""
    from training.tasks import Batch

    full = task.eval_batch()
    return Batch(full.prompts[:n], full.answers[:n])


def series(records, key, x="step"):
    """([x], [value]) over the records that hold `key` (not None): e.g. series(run.records, "accuracy")."""
    points = [(r[x], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]
