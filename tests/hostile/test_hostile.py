"""The battery: every broken or hostile submission in cases.py is graded without crashing the grader, gets a
valid results.json with the same tests and points as the reference, scores below full marks, and fails with
the expected reason on the failed test's line.

All the gradings run first, two at a time, in one module fixture (about a minute on two quiet cores); each
test then checks one case. Last, on their own, a submission whose every function loops forever is graded: every
test fails as an endless loop, and the time limits granted add up to at most HANG_EVERYWHERE_BUDGET_S; and one
whose every function hoards memory: every test fails for its memory, and only the first climbs to the limit.
"""
import os
import re

import pytest

from tests.hostile.cases import CASES, EXERCISE, HOARD, MEMORY_LIMIT, Case
from tests.hostile.submissions import ROOT, grade, grade_many, in_every_function, results_problems, solution_text
from training.impl import EXERCISES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """{case name: Graded}, plus "reference": the untouched solution, graded the same way."""
    base = tmp_path_factory.mktemp("hostile")
    calls = [(base / "reference", {f"{EXERCISE}.py": solution_text(EXERCISE)}, (EXERCISE,), 0.0)]
    calls += [(base / case.name, {f"{EXERCISE}.py": case.source()}, (*case.args, EXERCISE), case.wait_after)
              for case in CASES]
    results = grade_many(calls)
    return {"reference": results[0], **{case.name: result for case, result in zip(CASES, results[1:])}}


def test_reference_gets_full_marks(graded):
    reference = graded["reference"]
    assert reference.returncode == 0, reference.stderr
    assert results_problems(reference.results) == []
    assert reference.results["score"] == reference.results["max_score"] > 0, reference.stdout


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_submission(case: Case, graded):
    result, reference = graded[case.name], graded["reference"]
    assert result.returncode == 0, f"the grader did not complete (exit {result.returncode}):\n{result.stderr[-2000:]}"
    assert results_problems(result.results) == [], result.results
    names = [test["name"] for test in result.results["tests"]]
    assert names == [test["name"] for test in reference.results["tests"]], "the graded tests differ from the reference"
    assert result.results["max_score"] == reference.results["max_score"]
    assert result.results["score"] < result.results["max_score"], f"{case.name} got full marks:\n{result.stdout}"
    assert result.stdout.rstrip().splitlines()[-1] == \
        f"TOTAL: {result.results['score']:g}/{result.results['max_score']:g}", "TOTAL is not the last line"
    failed = result.failed()
    expected = case.expect.lower()
    matching = [name for name, reason in failed.items() if expected in reason.lower()]
    assert matching, f"no failed test says {case.expect!r}:\n{result.stdout}"
    if case.every:
        assert len(failed) == len(names) and len(matching) == len(names), \
            f"every test should fail with {case.expect!r}:\n{result.stdout}"
    outputs = {test["name"]: test["output"] for test in result.results["tests"]}
    assert expected in outputs[matching[0]].lower(), "results.json does not give the reason"
    if case.review:
        assert f"review: {EXERCISE}.py mentions" in result.results["output"] and case.review in result.results["output"]


HANG_EVERYWHERE_BUDGET_S = 90  # CPU seconds the limits may grant in all; each test waiting 10 s took minutes


def test_hang_everywhere_is_graded_fast(tmp_path):
    """Every function of every exercise loops forever: each test fails as an endless loop, at most one per
    exercise waits the full --timeout, and the limits the grader grants add up to seconds, not minutes.
    (The wall time is printed, not asserted: on a loaded machine it stretches; the limits do not.)"""
    exercises = [ex for ex in EXERCISES if (ROOT / "tests" / "autograder" / f"test_{ex}.py").is_file()]
    files = {f"{ex}.py": in_every_function(solution_text(ex), "while True:\n    pass") for ex in exercises}
    result = grade(tmp_path, files)
    assert result.returncode == 0, f"the grader did not complete (exit {result.returncode}):\n{result.stderr[-2000:]}"
    assert results_problems(result.results) == [], result.results
    tests = result.results["tests"]
    assert {test["name"].split("::")[0] for test in tests} == set(exercises)
    assert result.results["score"] == 0 and all(test["status"] == "failed" for test in tests), result.stdout
    failed = result.failed()
    assert len(failed) == len(tests), result.stdout
    assert all("an endless loop" in reason for reason in failed.values()), result.stdout
    limits = [float(re.match(r"took longer than ([0-9.]+) s", reason).group(1)) for reason in failed.values()]
    full_waits = [limit for limit in limits if limit >= 10]
    assert len(full_waits) <= len(exercises), f"{len(full_waits)} tests waited the full time-out:\n{result.stdout}"
    assert sum(limits) <= HANG_EVERYWHERE_BUDGET_S, (
        f"the limits granted add up to {sum(limits):.1f} s of CPU time for {len(tests)} hanging tests:\n{result.stdout}")
    print(f"a submission that hangs everywhere ({len(tests)} tests) was graded in {result.seconds:.1f} s of wall time "
          f"(limits granted: {sum(limits):.1f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


def test_memory_bomb_everywhere_is_graded_in_one_process(tmp_path):
    """Every function of the exercise grows a list forever: each test fails for its memory; the watchdog stops
    the first at the limit and, from then on, each test once it has added a quarter GiB, in the same process.
    (The wall time is printed, not asserted.)"""
    files = {f"{EXERCISE}.py": in_every_function(solution_text(EXERCISE), HOARD)}
    result = grade(tmp_path, files, "--memory-limit", MEMORY_LIMIT, EXERCISE)
    assert result.returncode == 0, f"the grader did not complete (exit {result.returncode}):\n{result.stderr[-2000:]}"
    assert results_problems(result.results) == [], result.results
    failed, tests = result.failed(), result.results["tests"]
    assert result.results["score"] == 0 and len(failed) == len(tests), result.stdout
    full = [name for name, reason in failed.items() if reason.startswith(f"used more than {MEMORY_LIMIT} GiB")]
    after = [name for name, reason in failed.items()
             if "more memory than when the test started" in reason and "an earlier test went over" in reason]
    assert len(full) == 1 and len(after) == len(tests) - 1, (
        f"the memory bomb was not stopped in one process:\n{result.stdout}")
    print(f"a submission that hoards memory everywhere ({len(tests)} tests) was graded in {result.seconds:.1f} s of "
          f"wall time (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
