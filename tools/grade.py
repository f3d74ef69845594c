"""The autograder: runs the graded tests against an implementation and reports a score students can trust.

    python tools/grade.py [--impl exercises|solutions] [--submission DIR] [--json results.json]
                          [--expect-full | --expect-zero] [--timeout S] [--memory-limit GIB] [EXERCISE ...]

It prints one line per graded test (`PASS 2/2 grpo_loss::clipping`,
`FAIL 0/3 ppo_loss::gae  - <what is likely wrong>`), a subtotal per exercise and `TOTAL: X/Y` last.
With --json it also writes Gradescope's results.json (rewritten after every test, so it is always valid).
The graded tests are tests/autograder/test_<exercise>.py; each carries `@pytest.mark.points(n)`.

  --impl exercises   (default) grade exercises/, your code: what `make grade` runs
  --impl solutions   grade the reference solutions (instructors; CI expects full marks)
  --submission DIR   grade the exercise files in DIR (grpo_loss.py, ...; or DIR/exercises/): the form
                     Gradescope uses. A file that is missing grades as "file not submitted".
  --expect-full, --expect-zero   exit 1 unless the score is full marks / zero (for CI)
  --timeout S        CPU seconds per test (default 10; three times that in wall time). Once a test has timed
                     out, each call into graded code gets 2 s, and a call of a function that already ran too
                     long 0.25 s (the graded code's calls take milliseconds): endless loops everywhere cost
                     seconds, not minutes
  --memory-limit GIB memory per test process (default 4 GiB); a test that uses more fails, the rest go on;
                     once one has, each later test may add a quarter GiB: memory bombs everywhere cost
                     seconds, not minutes

Exit code: 0 when grading completed, whatever the score; 1 when an --expect-... is not met; 2 for bad
arguments or when the graded tests themselves could not be collected.

On Gradescope: upload the student release (tools/release.py, which holds no solutions/) as the autograder
source, and run `python tools/grade.py --submission /autograder/submission
--json /autograder/results/results.json`. Grading the full solutions takes well under a minute on 2 cores.

How it runs (tools/grading/ holds the parts)
The grader reads the course folder into memory (without .git, .venv, runs, notebooks, and solutions/ unless
--impl solutions), then runs each exercise's tests in a child `pytest` process, two at a time, each in a
fresh temporary copy of that folder with the graded files in exercises/. The repository is never touched.
The child loads a small plugin that sends one signed record per event to the grader over a pipe. A test
that uses more than --timeout seconds of CPU time (or three times that in wall time: a test that sleeps or
waits), or whose process holds more than --memory-limit GiB of memory, is stopped inside the child
(tools/grading/watchdog.py), and the next test runs on. From outside, the grader kills a child whose test
goes a second past that limit anyway (code that resists being stopped), holds more than 1.25 times the
memory limit (its address space is capped at twice that, so a huge allocation fails at once, with a memory
reason), or prints more than 1 MB, and stops everything after
--time-limit seconds; a test that hangs, floods, runs out of memory or takes the process down (os._exit, a
crash, a KeyboardInterrupt) fails with a one-line reason and the tests after it run in a fresh child. The
exercise module is imported once before its tests, so an import that raises, exits, hangs or is not valid
Python fails every test of that exercise once, with the reason (a syntax error shows its line). The graded
tests themselves check values, NaN/inf, shapes, dtypes and that inputs are left unmodified, and their
assertion messages are the reasons shown.

Threat model (what a submission cannot do to the score, and what is out of scope)
Student code runs with the grader's user rights inside the child, so the defence is layered:
  - The report is the grader's alone. Only the grader process writes the terminal table and results.json;
    the test names and points come from the grader's own collection (made in the child before any student
    code is imported; a test's score is its declared points or 0); results.json is written last, after
    every child, and every process a child left behind, has been killed. A submission that writes its own
    results.json, even at the path given to --json, is overwritten. (Text it writes straight to the
    terminal can mislead a reader of the terminal, never the file or the exit code.)
  - Records cannot be forged: each child gets a fresh random key on stdin, read by the plugin before any
    student code runs; a record without a valid HMAC is ignored. Lines printed to look like records are
    output, nothing more.
  - A pass needs the test function to have run to its end: the plugin wraps every test function before
    student code is imported. Rewriting pytest's reports or making pytest skip the call gains nothing.
  - Monkeypatching is noticed: replacing a function of torch (torch.allclose, torch.testing.assert_close,
    Tensor methods), numpy, pytest, pluggy, builtins or of the tests fails every later test of that child.
  - Writing into the course files (a test, a snapshot, the plugin) fails the whole exercise: every
    file's inode, size and ctime are checked after each test (ctime cannot be set back). Every child starts
    from the in-memory copy, so nothing carries over. Editing the Python installation (pytest, pluggy,
    torch's testing code, a .pth file) is noticed the same way and fails everything.
  - Limits and leftovers: each child has its own process group and the grader is a child subreaper, so a
    process forked off to write results.json after grading ends is killed when grading ends. The time and
    memory limits are enforced from outside the child; stopping a test inside it (the watchdog) only saves
    time, and code that defeats it is killed a second later with the same reason.
Out of scope: student code shares the child's interpreter with the plugin, so code written against the
grader itself (reading the plugin's closures or objects through gc, rewriting code objects, ptrace) can
forge records; so can attacks on the machine (memory spread over many forked processes, other users'
files). Such code has to name what it attacks: the report lists the words of tools/grading/review.py found
in a submitted file ("review: grpo_loss.py mentions _pytest, /proc/") for an instructor to read; they never
change the score.
Run graders in a throwaway container per submission (Gradescope does) and keep solutions/ off the grading
machine (upload the release, not this repository).
"""
import argparse
import os
import signal
import sys
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.grading.report import Report  # noqa: E402
from tools.grading.review import suspicious_words  # noqa: E402
from tools.grading.runner import Job, Limits, Runner, test_file  # noqa: E402
from tools.grading.tree import Fingerprint, read_tree  # noqa: E402
from training.impl import EXERCISES, has_solutions  # noqa: E402  (no torch: the grader itself stays light)


class UsageError(Exception):
    """Bad arguments: one line for the user, exit code 2."""


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="tools/grade.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("exercises", nargs="*", metavar="EXERCISE", help=f"grade only these ({', '.join(EXERCISES)})")
    parser.add_argument("--impl", choices=("exercises", "solutions"), default="exercises",
                        help="whose code to grade (default: exercises)")
    parser.add_argument("--submission", type=Path, metavar="DIR", help="grade the exercise files in DIR")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write Gradescope's results.json here")
    expect = parser.add_mutually_exclusive_group()
    expect.add_argument("--expect-full", action="store_true", help="exit 1 unless the score is full marks")
    expect.add_argument("--expect-zero", action="store_true", help="exit 1 unless the score is zero")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help=f"CPU seconds per test (default 10; three times that in wall time); once a test has "
                             f"timed out, a call into graded code gets {Limits.after_timeout:g} s "
                             f"({Limits.repeat:g} s for a function that ran too long before)")
    parser.add_argument("--memory-limit", type=float, default=4.0, metavar="GIB",
                        help="GiB of memory per test process (default 4; address space twice that)")
    parser.add_argument("--time-limit", type=float, default=600.0, metavar="S",
                        help="seconds for the whole run (default 600)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), metavar="N",
                        help="exercises graded at the same time (default 2)")
    args = parser.parse_args(argv)
    if args.timeout <= 0 or args.time_limit <= 0 or args.memory_limit <= 0 or args.jobs < 1:
        raise UsageError("--timeout, --time-limit and --memory-limit must be positive, --jobs at least 1")
    if args.submission is not None and args.impl == "solutions":
        raise UsageError("--submission grades the submitted files: leave out --impl solutions")
    return args


def submitted_files(folder: Path) -> dict[str, bytes]:
    """{exercise: source} for the exercise files in `folder` (or in `folder`/exercises/)."""
    if not folder.is_dir():
        raise UsageError(f"submission folder {folder} does not exist")
    if (folder / "exercises").is_dir():
        folder = folder / "exercises"
    return {ex: (folder / f"{ex}.py").read_bytes() for ex in EXERCISES if (folder / f"{ex}.py").is_file()}


def plan(args):
    """(course files in memory, exercises to grade, their jobs, a line saying what is graded)."""
    if args.impl == "solutions" and not has_solutions():
        raise UsageError("this copy of the course has no solutions/ folder (student release): use --impl exercises")
    files = read_tree(ROOT, with_solutions=args.impl == "solutions")
    graded = [ex for ex in EXERCISES if test_file(ex) in files]
    for name in args.exercises:
        if name not in EXERCISES:
            raise UsageError(f"unknown exercise {name!r}: choose from {', '.join(EXERCISES)}")
        if name not in graded:
            raise UsageError(f"no graded tests for {name} yet ({test_file(name)} is missing)")
    if args.exercises:
        graded = [ex for ex in EXERCISES if ex in args.exercises]
    if not graded:
        raise UsageError("no graded tests found in tests/autograder/")
    missing = {}
    if args.submission is not None:
        submitted = submitted_files(args.submission)
        for ex, source in submitted.items():
            files[f"exercises/{ex}.py"] = (source, False)
        missing = {ex: f"file not submitted ({ex}.py is not in the submission; graded as the stub)"
                   for ex in graded if ex not in submitted}
        names = ", ".join(f"{ex}.py" for ex in submitted) or "no exercise files"
        note = f"grading the submission in {args.submission}: {names}"
        for ex, source in submitted.items():
            words = suspicious_words(source)
            if words:  # never changes the score; tells an instructor where to look
                note += f"\nreview: {ex}.py mentions {', '.join(words)} (unusual in an exercise solution)"
    else:
        folder = "solutions" if args.impl == "solutions" else "exercises"
        missing = {ex: f"{folder}/{ex}.py is missing" for ex in graded if f"{folder}/{ex}.py" not in files}
        note = f"grading {folder}/"
    files.setdefault("exercises/__init__.py", (b"", False))
    jobs = deque(Job(ex, reason_override=missing.get(ex, "")) for ex in graded)
    return files, graded, jobs, note


def _stop(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        if args.json is not None and not args.json.resolve().parent.is_dir():
            raise UsageError(f"cannot write {args.json}: folder {args.json.resolve().parent} does not exist")
        files, graded, jobs, note = plan(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    json_path = args.json.resolve() if args.json else None
    report = Report(graded, json_path)
    course = Fingerprint(paths=[ROOT / rel for rel in files if (ROOT / rel).is_file()])
    first, *reviews = note.splitlines()
    print(f"{first} ({', '.join(graded)})", flush=True)
    for line in reviews:
        print(line, file=sys.stderr)
    limits = Limits(per_test=args.timeout, whole_run=args.time_limit, memory_gib=args.memory_limit, jobs=args.jobs)
    signal.signal(signal.SIGTERM, _stop)  # a CI timeout: end the children and keep results.json valid
    try:
        Runner(report, files, "solutions" if args.impl == "solutions" else "exercises", limits, jobs).run()
    except KeyboardInterrupt:
        report.write_json("grading was interrupted")
        print("\ninterrupted: results.json holds the tests graded so far", file=sys.stderr)
        return 130
    report.print_ready(sys.stdout, final=True)
    report.write_json(note)
    changed = course.first_change()
    if changed:
        print(f"warning: {os.path.relpath(changed, ROOT)} changed while grading (another program, or graded code "
              "writing into the course folder?): check it before grading again", file=sys.stderr)
    if report.errors:
        print(f"error: grading did not complete: {'; '.join(sorted(report.errors))} could not be run", file=sys.stderr)
        return 2
    score, most = report.score(), report.max_score()
    if args.expect_full and not (most > 0 and score == most):
        print(f"expected full marks, got {score:g}/{most:g}", file=sys.stderr)
        return 1
    if args.expect_zero and score != 0:
        print(f"expected zero, got {score:g}/{most:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
