"""Check that lessons 01-06 catch every loss negative control, run the way the student release runs them.

    python tools/lessons_catch_controls.py                       # every loss control, stop at the first lesson that fails
    python tools/lessons_catch_controls.py k3_reversed kl_dropped  # just these controls
    python tools/lessons_catch_controls.py --all-lessons         # run every lesson for every control (slower, full table)
    python tools/lessons_catch_controls.py --list                # the controls it would run

Instructors only (it reads tests/negative_controls/, which the student release leaves out). For each loss control
(tests/negative_controls/loss_controls.py: exercise grpo_loss or ppo_loss) it writes a temporary copy of the repository
(no .git, no .venv, no solutions/) whose exercises/grpo_loss.py and exercises/ppo_loss.py are the reference solutions, with
the control's mistake put into its own exercise, and runs

    COURSE_IMPL=exercises  python -m pytest --nbval-lax notebooks/0[1-6]_*.ipynb

there, as `make notebooks` does in the student release (--nbval-lax: a lesson fails only when a cell raises). A lesson
catches a control when one of its cells fails (a check_exercise assert, a NaN, an exception). Before the controls, the
same copy runs once with the unmodified solutions: every lesson must pass, or every "catch" would mean nothing.

Prints one row per control: the lesson and cell that caught it, or NOT CAUGHT. Exit code: 0 when every control is
caught, 1 when one is not, 2 when the unmodified run fails or an argument is wrong. The copy is reused from control to
control (only the two exercise files change); --keep leaves it on disk.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.negative_controls import all_controls, apply  # noqa: E402

LOSS_EXERCISES = ("grpo_loss", "ppo_loss")
DEFAULT_LESSONS = "notebooks/0[1-6]_*.ipynb"
SKIP = {".git", ".venv", "solutions", "runs", "dist", "__pycache__", ".pytest_cache", ".ipynb_checkpoints"}
FAILED = re.compile(r"^FAILED (notebooks/[^:\s]+\.ipynb)::Cell (\d+)", re.MULTILINE)


def loss_controls(names):
    """The loss controls, in file order; `names` (if any) picks a subset, and an unknown name is an error."""
    controls = [c for c in all_controls() if c.exercise in LOSS_EXERCISES]
    if not names:
        return controls
    by_name = {c.name: c for c in controls}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown loss control(s): {', '.join(unknown)} (see --list)")
    return [by_name[n] for n in names]


def make_copy(dest: Path) -> Path:
    """A copy of the repository without .git, .venv, solutions/ and caches."""
    shutil.copytree(ROOT, dest, ignore=lambda _dir, names: [n for n in names if n in SKIP])
    return dest


def write_exercises(copy: Path, control=None) -> None:
    """exercises/grpo_loss.py and ppo_loss.py := the reference solutions, with `control` applied to its own file."""
    for exercise in LOSS_EXERCISES:
        text = (ROOT / "solutions" / f"{exercise}.py").read_text()
        if control is not None and control.exercise == exercise:
            text = apply(control, text)
        (copy / "exercises" / f"{exercise}.py").write_text(text)
        for cached in (copy / "exercises" / "__pycache__").glob(f"{exercise}.*.pyc"):
            cached.unlink()


def run_lessons(copy: Path, lessons, python: str, stop_first: bool, timeout: int):
    """Run the lessons under nbval-lax in `copy`; return (failures [(lesson, cell)], seconds, output)."""
    command = [python, "-m", "pytest", "--nbval-lax", "-q", "-rf", "-p", "no:cacheprovider",
               "--nbval-cell-timeout", str(timeout), *lessons]
    if stop_first:
        command.insert(3, "-x")
    env = dict(os.environ, COURSE_IMPL="exercises", PYTHONDONTWRITEBYTECODE="1")
    start = time.perf_counter()
    done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True)
    output = done.stdout + done.stderr
    failures = [(Path(m.group(1)).stem, int(m.group(2))) for m in FAILED.finditer(output)]
    if done.returncode not in (0, 1) or (done.returncode == 1 and not failures):
        failures = failures or [("(pytest error, exit code %d)" % done.returncode, -1)]
    return failures, time.perf_counter() - start, output


def describe(failures) -> str:
    if not failures:
        return "NOT CAUGHT"
    lessons = {}
    for lesson, cell in failures:
        lessons.setdefault(lesson, []).append(cell)
    return "; ".join(f"{lesson} (cell {', '.join(str(c) for c in cells)})" for lesson, cells in lessons.items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("controls", nargs="*", help="control names (default: every loss control)")
    parser.add_argument("--lessons", default=DEFAULT_LESSONS, help=f"notebooks to run, a glob (default {DEFAULT_LESSONS})")
    parser.add_argument("--all-lessons", action="store_true", help="run every lesson, not only up to the first catch")
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"),
                        help="the interpreter with pytest and nbval (default: .venv/bin/python)")
    parser.add_argument("--cell-timeout", type=int, default=300, help="seconds per cell (default 300)")
    parser.add_argument("--keep", action="store_true", help="leave the temporary copy on disk")
    parser.add_argument("--list", action="store_true", help="list the loss controls and exit")
    args = parser.parse_args(argv)

    try:
        controls = loss_controls(args.controls)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.list:
        for c in controls:
            print(f"{c.name:32} {c.exercise:10} {c.why}")
        return 0
    lessons = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(args.lessons))
    if not lessons:
        print(f"error: no notebook matches {args.lessons}", file=sys.stderr)
        return 2
    if not Path(args.python).is_file():
        print(f"error: no interpreter at {args.python} (use --python)", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="lessons-catch-controls-"))
    try:
        copy = make_copy(workdir / "repo")
        write_exercises(copy)
        failures, seconds, output = run_lessons(copy, lessons, args.python, False, args.cell_timeout)
        print(f"unmodified solutions: {'pass' if not failures else 'FAIL: ' + describe(failures)} "
              f"({len(lessons)} lessons, {seconds:.0f} s)", flush=True)
        if failures:
            print(output[-4000:], file=sys.stderr)
            return 2
        rows = []
        for control in controls:
            write_exercises(copy, control)
            failures, seconds, _ = run_lessons(copy, lessons, args.python, not args.all_lessons, args.cell_timeout)
            rows.append((control.name, control.exercise, describe(failures)))
            print(f"{control.name:32} {control.exercise:10} {describe(failures)}  ({seconds:.0f} s)", flush=True)
    finally:
        if args.keep:
            print(f"kept the copy in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    missed = [name for name, _, caught in rows if caught == "NOT CAUGHT"]
    width = max(len(name) for name, _, _ in rows)
    print(f"\n{'control':{width}}  {'exercise':10}  caught by (lesson, nbval's number of the failing code cell)")
    print(f"{'-' * width}  {'-' * 10}  {'-' * 34}")
    for name, exercise, caught in rows:
        print(f"{name:{width}}  {exercise:10}  {caught}")
    print(f"\n{len(rows) - len(missed)}/{len(rows)} loss controls caught by {DEFAULT_LESSONS if args.lessons == DEFAULT_LESSONS else args.lessons}"
          + (f"; NOT CAUGHT: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
