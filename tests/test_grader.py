"""tools/grade.py: the solutions get full marks, a partial submission is graded as such, bad arguments get one
line, and the pieces (reasons, signed records, the report) do what the autograder relies on.

The graded tests themselves (tests/autograder/) run here, through the grader, against the solutions; `make
test` leaves that folder out so they do not run twice. Run them directly with
`pytest tests/autograder --impl solutions`.
"""
import importlib.util
import json
import subprocess
import sys
import traceback

import pytest

from tests.hostile.submissions import GRADE, ROOT, grade_many, results_problems, solution_text
from tools.grading import channel
from tools.grading.reasons import memory_reason, reason_for
from tools.grading.report import Report, GradedTest, cap_bytes
from tools.grading.watchdog import GIB, TimedOut, Watchdog, resident_bytes
from training.impl import EXERCISES

MARK = "# submitted-for-the-untouched-repository-check"


def graded_exercises():
    return [ex for ex in EXERCISES if (ROOT / "tests" / "autograder" / f"test_{ex}.py").is_file()]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The solutions graded in full, and a submission holding one file (in an exercises/ folder) graded for two."""
    base = tmp_path_factory.mktemp("grader")
    first, second = graded_exercises()[:2]
    partial = {f"exercises/{first}.py": solution_text(first) + f"\n{MARK}\n"}
    solutions, submitted = grade_many([
        (base / "solutions", None, ("--impl", "solutions", "--expect-full"), 0.0),
        (base / "partial", partial, ("--expect-full", first, second), 0.0),
    ])
    return {"solutions": solutions, "partial": submitted, "first": first, "second": second}


@pytest.mark.slow
def test_solutions_get_full_marks(graded):
    result = graded["solutions"]
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert results_problems(result.results) == []
    assert all(test["status"] == "passed" for test in result.results["tests"])
    lines = result.stdout.rstrip().splitlines()
    total = result.results["max_score"]
    assert lines[-1] == f"TOTAL: {total:g}/{total:g}"
    for exercise in graded_exercises():
        assert any(line.startswith(f"{exercise}: ") for line in lines), f"no subtotal line for {exercise}"
    print(f"grading the solutions took {result.seconds:.1f} s")


@pytest.mark.slow
def test_partial_submission(graded):
    result, first, second = graded["partial"], graded["first"], graded["second"]
    assert result.returncode == 1, "--expect-full must fail when a file is missing"
    assert results_problems(result.results) == []
    by_exercise = {}
    for test in result.results["tests"]:
        by_exercise.setdefault(test["name"].split("::")[0], []).append(test)
    assert set(by_exercise) == {first, second}
    assert all(test["status"] == "passed" for test in by_exercise[first])
    assert all(test["status"] == "failed" and test["output"].startswith("file not submitted")
               for test in by_exercise[second])
    for path in (ROOT / "exercises").glob("*.py"):
        assert MARK not in path.read_text(), f"grading a submission wrote into {path}"


@pytest.mark.parametrize("args, message", [
    (["no_such_exercise"], "unknown exercise"),
    (["--submission", "/nonexistent/folder"], "does not exist"),
    (["--submission", ".", "--impl", "solutions"], "leave out --impl solutions"),
    (["--json", "/nonexistent/folder/results.json"], "does not exist"),
    (["--timeout", "0"], "must be positive"),
    (["--memory-limit", "-1"], "must be positive"),
])
def test_bad_arguments_get_one_line(args, message):
    done = subprocess.run([sys.executable, str(GRADE), *args], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and message in done.stderr and done.stderr.count("\n") == 1, done.stderr


def raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:
        return caught


def test_reasons():
    assert reason_for(raised(NotImplementedError("kl_estimate: your code here"))) == \
        "not implemented yet (kl_estimate: your code here)"
    # pytest puts its own explanation after the message; the message is the reason
    assert reason_for(raised(AssertionError("advantages not zero-mean per group: use dim=1\nassert False"))) == \
        "advantages not zero-mean per group: use dim=1"
    assert reason_for(raised(AssertionError("assert 2 == 1\n +  where ..."))) == "assertion failed: assert 2 == 1"
    syntax = raised(SyntaxError("invalid syntax", ("exercises/grpo_loss.py", 12, 5, "def f(:\n")))
    assert reason_for(syntax) == "syntax error in grpo_loss.py line 12: invalid syntax: def f(:"
    assert reason_for(raised(SystemExit(3))).startswith("your code called sys.exit(3)")
    assert reason_for(raised(ValueError("bad\nsecond line"))) == "ValueError: bad"
    assert len(reason_for(raised(ValueError("x" * 1000)))) <= 300
    assert reason_for(raised(MemoryError()), memory_gib=4) == \
        "ran out of memory (the limit is 4 GiB) - a tensor far too large, or a list growing in a loop?"
    torch_error = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 4000000000000 bytes. Error code 12")
    assert reason_for(raised(torch_error)).startswith("ran out of memory - a tensor far too large")
    assert memory_reason(4) == "used more than 4 GiB of memory - a tensor far too large, or a list growing in a loop?"


def graded_function(folder, source: str, name: str):
    """Function `name` of `source`, loaded from folder/exercises/spin.py: a graded file for the watchdog."""
    path = folder / "exercises" / "spin.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("spin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def stopped(watchdog: Watchdog, function) -> tuple[str, str]:
    """Run `function` as a watched test; the watchdog's (reason, function) for stopping it."""
    watchdog.start()
    try:
        with pytest.raises(TimedOut) as caught:
            function()
        traceback.clear_frames(caught.tb)  # as the grading child does: what the frames held is freed
    finally:
        result = watchdog.stop()
    return result


def test_watchdog_stops_endless_loops(tmp_path):
    spin = graded_function(tmp_path, "def spin():\n    while True:\n        pass\n", "spin")
    watchdog = Watchdog(per_test=0.5, after_timeout=0.3, repeat=0.1, wall_factor=3)
    reason, function = stopped(watchdog, spin)
    assert reason == "took longer than 0.5 s - an endless loop? (stopped in spin, spin.py line 2)"
    assert function == "spin.py:spin"
    reason, _ = stopped(watchdog, spin)
    assert reason.startswith("took longer than 0.1 s in spin() - an endless loop? (it ran too long in an earlier")
    other = Watchdog(per_test=5, after_timeout=0.3, repeat=0.1, wall_factor=3, timed_out_before=True)
    reason, _ = stopped(other, spin)
    assert reason.startswith("took longer than 0.3 s in spin() - an endless loop? (an earlier test timed out")
    passed_on = Watchdog(per_test=5, after_timeout=5, repeat=0.1, wall_factor=3, slow_functions=["spin.py:spin"])
    reason, _ = stopped(passed_on, spin)
    assert reason.startswith("took longer than 0.1 s in spin()")
    watchdog.start()
    assert watchdog.stop() == (None, None), "a test that ended in time was stopped"


def test_watchdog_stops_memory_hoarding(tmp_path):
    hoard = graded_function(tmp_path, "def hoard():\n    kept = []\n    while True:\n        kept.append(len(kept))\n",
                            "hoard")
    limit = resident_bytes() + GIB // 4
    watchdog = Watchdog(per_test=60, after_timeout=60, repeat=60, wall_factor=3, memory_limit=limit,
                        after_memory=GIB // 16)
    reason, function = stopped(watchdog, hoard)
    assert reason.startswith(f"used more than {limit / GIB:g} GiB of memory - a tensor far too large, or a list")
    assert "(stopped in hoard, spin.py line" in reason and function == "spin.py:hoard"
    assert watchdog.stopped_for == "memory" and not watchdog.timed_out_before and not watchdog.slow_functions
    # the list was freed with the frames; from now on each test may add only after_memory
    reason, _ = stopped(watchdog, hoard)
    assert reason.startswith("used 0.0625 GiB more memory than when the test started - a list growing in a loop? "
                             "(an earlier test went over the"), reason
    assert resident_bytes() < limit, "the hoarded list was not freed"
    watchdog.start()
    assert watchdog.stop() == (None, None), "a test that held little memory was stopped"


def test_records_need_the_key():
    key = channel.new_key()
    record = {"kind": "done", "id": "t", "passed": True}
    line = channel.encode(key, record).strip()
    assert channel.decode(key, line) == record
    assert channel.decode(channel.new_key(), line) is None, "a record signed with another key was accepted"
    forged = line.replace(b'"passed":true', b'"passed":false')
    assert channel.decode(key, forged) is None, "a changed record was accepted"
    reader = channel.LineReader()
    assert reader.feed(b"x" * (channel.MAX_LINE + 10)) == []
    assert reader.feed(b"tail of the long line\n" + line + b"\n") == [line], "a long line must be dropped whole"


def test_report_lines_and_json(tmp_path):
    report = Report(["grpo_loss"], tmp_path / "results.json")
    tests = [GradedTest("a", "grpo_loss", "grpo_loss::clipping", 2.0),
             GradedTest("b", "grpo_loss", "grpo_loss::gae", 3.0)]
    report.set_tests("grpo_loss", tests)
    report.verdict(tests[0], True)
    report.verdict(tests[1], False, "returns differ: did you add the values back?", "x" * 5000)
    assert Report.line(tests[0]) == "PASS 2/2 grpo_loss::clipping"
    assert Report.line(tests[1]) == "FAIL 0/3 grpo_loss::gae  - returns differ: did you add the values back?"
    results = json.loads((tmp_path / "results.json").read_text())
    assert results_problems(results) == []
    assert (results["score"], results["max_score"]) == (2.0, 5.0)
    assert len(cap_bytes("é" * 3000).encode()) <= 2048
