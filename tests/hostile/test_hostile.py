"""The battery: every broken or hostile submission in cases.py is graded without crashing the grader, gets a
valid results.json with the same tests and points as the reference, scores below full marks, and fails with
the expected reason on the failed test's line.

All the gradings run first, two at a time, in one module fixture (about a minute on two quiet cores); each
test then checks one case.
"""
import pytest

from tests.hostile.cases import CASES, EXERCISE, Case
from tests.hostile.submissions import grade_many, results_problems, solution_text

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
