"""Helpers shared by the lesson notebooks (one import at the top of each lesson: `from _common import *`).

- Puts the repository root on `sys.path`: the notebooks run with `notebooks/` as working directory (JupyterLab,
  nbval and tools/run_notebooks.py all do this), so without it `import training` and `import loss` would fail.
- `setup(seed)`: seeds torch and numpy, sets print precision and a readable plotting style.
- `try_exercise(compute)`: runs exercise code (reached only through `training.impl.load`). In the student
  release the stubs raise NotImplementedError; then this prints one clear line instead of a traceback.
- `check_exercise(label, compute, expected)`: the same, and then asserts the result equals the by-hand value.
- `print_table(headers, rows)`: a plain aligned text table (deterministic, so nbval can compare it).
- `reference_group_batch`: the correct batch layout for lesson 4's silent-bug exercise (imported by name there).

Lessons 6-9 (training the tiny GPT) add:
- `setup_training(seed)`: `setup`, plus one CPU thread for torch (see its docstring).
- `require_exercise(compute)`: like `try_exercise`, but a lesson that cannot go on without the exercise (it trains
  with your trainer) stops there with the same one line instead of a traceback.
- `weak_sft_model(task_name)`: the weak SFT checkpoint RL starts from (lesson 6 trains it and `save_weak_model` keeps it;
  lessons 7 and 8 load it, or train it again if it is missing).
- `eval_subset(task, n)`: the first n problems of the fixed held-out set (a faster, noisier accuracy).
- `rl_loop(step, model, task, ...)`: the run loop of lessons 7 and 8 (sample problems, one trainer step, evaluate now and then).
- `lr_schedule(optimizers, hp)`: the learning-rate warm-up and cosine of `python -m training grpo|ppo`, step by step.
- `series(records, key)`: (steps, values) of one logged quantity, for plotting.
"""
import os
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
           "setup_training", "require_exercise", "ExerciseNotWritten", "weak_sft_model", "save_weak_model", "eval_subset",
           "rl_loop", "lr_schedule", "series"]  # + reference_group_batch


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


# ---------------------------------------------------------------- lessons 6-9: training the tiny GPT


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


def _weak_cache_path(task, plan, seed, preset):
    """A file in the temporary folder, named by everything that decides the weights (code included)."""
    import hashlib
    import tempfile

    digest = hashlib.sha256(repr((task.name, sorted(task.options.items()), sorted(plan.items()), seed, preset)).encode())
    for name in ("model.py", "sft.py", "tasks.py", "tokenizer.py", "rewards.py"):
        digest.update((ROOT / "training" / name).read_bytes())
    return Path(tempfile.gettempdir()) / "grpo-course-notebooks" / f"weak-{task.name}-{digest.hexdigest()[:16]}.pt"


def weak_sft_model(task_name: str = "sort", seed: int = 0, preset: str = "nano"):
    """(model, task, accuracy): the weak SFT checkpoint of `training.sft.WEAK`, as `python -m training sft --weak`
    trains it (lesson 6 shows the run). The weights are kept in the temporary folder, under a name that changes with
    the code and the settings, so the next lesson loads them instead of training again: same numbers either way.
    """
    import tempfile

    from training import sft
    from training.device import seed_everything
    from training.evaluate import greedy_accuracy
    from training.model import make_model
    from training.tasks import make_task
    from training.tokenizer import TOKENIZER

    task = make_task(task_name)
    plan = sft.WEAK[task_name]
    seed_everything(seed)
    model = make_model(preset, TOKENIZER.vocab_size, task.block_size)
    path = _weak_cache_path(task, plan, seed, preset)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        with tempfile.TemporaryDirectory() as out:
            sft.train_sft(model, task, out, eval_every=plan["steps"], seed=seed, preset=preset, progress=False, **plan)
        save_weak_model(model, task_name, seed, preset)
    model.eval()
    return model, task, greedy_accuracy(model, task)


def save_weak_model(model, task_name: str = "sort", seed: int = 0, preset: str = "nano"):
    """Keep weights trained with `training.sft.WEAK[task_name]` from `seed` where `weak_sft_model` looks for them
    (lesson 6 trains that run itself, then saves it here so that lessons 7 and 8 need not train it again)."""
    from training import sft
    from training.tasks import make_task

    path = _weak_cache_path(make_task(task_name), sft.WEAK[task_name], seed, preset)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return path


def rl_loop(step, model, task, *, steps, prompts_per_step, eval_batch, eval_every, data_seed=1, samples_per_prompt=1,
            before_step=None, after_step=None, also_evaluate=None):
    """The run loop of lessons 7 and 8, in full:

        for each step: draw `prompts_per_step` fresh training problems, call step(batch) -> dict of metrics
        every `eval_every` steps (and at the end): greedy exact match of `model` on `eval_batch`

    Returns one record per step: the metrics, plus `step`, `samples` (completions sampled so far: prompts x
    samples_per_prompt), `wall_s` (seconds spent in step(), evaluation excluded) and, at evaluation steps, `accuracy`.
    Record 0 holds the accuracy before training. The problems come from their own generator (`data_seed`), so runs
    with different settings see the same problems in the same order. Hooks, all optional: before_step(number) (e.g.
    the learning-rate schedule), after_step(record) (e.g. keep a copy of the weights), also_evaluate(model) -> dict of
    more numbers to record at evaluation steps (e.g. the KL to the reference).
    """
    import time

    from training.evaluate import greedy_accuracy

    data = torch.Generator().manual_seed(data_seed)
    def evaluate():
        return dict(also_evaluate(model) if also_evaluate else {}, accuracy=greedy_accuracy(model, task, eval_batch))

    records = [dict(evaluate(), step=0, samples=0, wall_s=0.0)]
    wall = 0.0
    for number in range(1, steps + 1):
        batch = task.sample(prompts_per_step, data)
        if before_step is not None:
            before_step(number)
        start = time.perf_counter()
        metrics = step(batch)
        wall += time.perf_counter() - start
        record = dict(metrics, step=number, samples=number * prompts_per_step * samples_per_prompt, wall_s=wall)
        if number % eval_every == 0 or number == steps:
            record.update(evaluate())
        records.append(record)
        if after_step is not None:
            after_step(record)
    return records


def series(records, key, x="step"):
    """([x], [value]) over the records that hold `key` (not None): e.g. series(run, "accuracy")."""
    points = [(r[x], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def lr_schedule(optimizers, hp):
    """before_step(number) for rl_loop: sets the learning rate of each optimizer as `python -m training grpo|ppo`
    does (training.sft.learning_rate: linear warm-up over hp["warmup"] steps, then hp["schedule"] over hp["steps"])."""
    from training.sft import learning_rate

    def set_rate(number):
        rate = learning_rate(number - 1, hp["steps"], hp["lr"], hp["warmup"], hp["schedule"])
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = rate

    return set_rate
