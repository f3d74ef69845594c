"""Every negative control (tests/negative_controls/*_controls.py: a known-wrong version of an exercise)
loses points when graded as a submission, as Gradescope would grade it. A control that keeps full marks means
a graded test lets that mistake through. Every positive control (tests/negative_controls/trainer_alternatives.py:
a correct exercise written differently) gets full marks: one that loses points means a graded test rejects a
right answer.

Each control is submitted together with the reference solutions of the other exercises (the trainers import
the student's own losses), and only its exercise is graded. The gradings run two at a time in one fixture.
"""
import pytest

from tests.hostile.submissions import ROOT, grade_many, results_problems, solution_text
from tests.negative_controls import Control, all_controls, apply
from tests.negative_controls.trainer_alternatives import ALTERNATIVES

pytestmark = pytest.mark.slow
CONTROLS = all_controls()


def submission(control: Control) -> dict[str, str]:
    files = {path.name: solution_text(path.stem) for path in sorted((ROOT / "solutions").glob("*.py"))
             if path.name != "__init__.py"}
    files[f"{control.exercise}.py"] = apply(control)
    return files


def grade_all(tmp_path_factory, folder: str, controls) -> dict:
    """{control name: its grading result}, every control graded as a submission of its own."""
    base = tmp_path_factory.mktemp(folder)
    results = grade_many([(base / f"{c.exercise}-{c.name}", submission(c), (c.exercise,), 0.0) for c in controls])
    return dict(zip((c.name for c in controls), results))


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    return grade_all(tmp_path_factory, "controls", CONTROLS)


@pytest.mark.parametrize("control", CONTROLS, ids=[f"{c.exercise}-{c.name}" for c in CONTROLS])
def test_control_loses_points(control: Control, graded):
    result = graded[control.name]
    assert result.returncode == 0, f"the grader did not complete:\n{result.stderr[-2000:]}"
    assert results_problems(result.results) == []
    lost = {test["name"]: test["output"].splitlines()[0] for test in result.results["tests"]
            if test["status"] == "failed"}
    assert result.results["score"] < result.results["max_score"], (
        f"control {control.name} ({control.why}) keeps full marks: no graded test catches it")
    print(f"{control.name}: lost {result.results['max_score'] - result.results['score']:g} points in "
          + "; ".join(f"{name} ({reason})" for name, reason in lost.items()))


@pytest.fixture(scope="module")
def graded_alternatives(tmp_path_factory):
    return grade_all(tmp_path_factory, "alternatives", ALTERNATIVES)


@pytest.mark.parametrize("alternative", ALTERNATIVES, ids=[f"{c.exercise}-{c.name}" for c in ALTERNATIVES])
def test_alternative_gets_full_marks(alternative: Control, graded_alternatives):
    result = graded_alternatives[alternative.name]
    assert result.returncode == 0, f"the grader did not complete:\n{result.stderr[-2000:]}"
    assert results_problems(result.results) == []
    lost = {test["name"]: test["output"].splitlines()[0] if test["output"] else "" for test in result.results["tests"]
            if test["status"] == "failed"}
    assert result.results["score"] == result.results["max_score"], (
        f"{alternative.name} ({alternative.why}) is correct but lost points: "
        + "; ".join(f"{name} ({reason})" for name, reason in lost.items()))
