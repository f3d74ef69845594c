"""The grader's books: every graded test with its points and verdict, shown as a terminal table and as
Gradescope's results.json.

Only the grader process writes here, from its own collection of the tests (names and points) and the
verdicts its children reported; a test's score is its declared points when it passed, else 0.
results.json is rewritten atomically (temporary file + rename) after every verdict, so whenever the grader
stops, the file on disk is a valid, pessimistic report: a test not graded yet counts as failed.
"""
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MAX_OUTPUT = 2048  # bytes of `output` per test in results.json
NOT_GRADED = "not graded yet (the grader stopped before this test)"


@dataclass
class GradedTest:
    id: str            # pytest node id: tests/autograder/test_grpo_loss.py::test_clipping[k1]
    exercise: str
    name: str          # what students read: grpo_loss::clipping[k1]
    points: float
    passed: bool | None = None  # None until graded
    reason: str = ""
    output: str = ""

    @property
    def score(self) -> float:
        return self.points if self.passed else 0.0


def test_name(exercise: str, pytest_name: str) -> str:
    """test_clipping[k1] -> grpo_loss::clipping[k1]."""
    name = pytest_name[len("test_"):] if pytest_name.startswith("test_") else pytest_name
    return f"{exercise}::{name}"


def points_text(value: float) -> str:
    return f"{value:g}"


def cap_bytes(text: str, limit: int = MAX_OUTPUT) -> str:
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    marker = "\n... (cut)"
    return data[: limit - len(marker)].decode("utf-8", "ignore") + marker


class Report:
    def __init__(self, exercises: list[str], json_path: Path | None):
        self.exercises = list(exercises)
        self.tests: dict[str, list[GradedTest] | None] = {ex: None for ex in exercises}
        self.errors: dict[str, str] = {}   # exercise -> why its tests could not be collected (a grader fault)
        self.json_path = json_path
        self.started = time.monotonic()
        self.printed = 0                   # exercises already printed to the terminal

    # ---- the books
    def set_tests(self, exercise: str, tests: list[GradedTest]):
        if self.tests[exercise] is None:
            self.tests[exercise] = tests

    def test(self, exercise: str, test_id: str) -> GradedTest | None:
        for test in self.tests[exercise] or ():
            if test.id == test_id:
                return test
        return None

    def pending(self, exercise: str) -> list[GradedTest]:
        return [t for t in self.tests[exercise] or () if t.passed is None]

    def verdict(self, test: GradedTest, passed: bool, reason: str = "", output: str = ""):
        test.passed, test.reason = bool(passed), ("" if passed else reason or "failed")
        test.output = output
        self.write_json()

    def fail(self, tests, reason: str, output: str = "", even_passed: bool = False):
        """Fail every test in `tests` not graded yet (or every one, `even_passed`) with one reason."""
        for test in tests:
            if test.passed is None or even_passed:
                test.passed, test.reason, test.output = False, reason, output
        self.write_json()

    def all_tests(self) -> list[GradedTest]:
        return [t for ex in self.exercises for t in self.tests[ex] or ()]

    def score(self) -> float:
        return sum(t.score for t in self.all_tests())

    def max_score(self) -> float:
        return sum(t.points for t in self.all_tests())

    def finished(self, exercise: str) -> bool:
        return exercise in self.errors or (self.tests[exercise] is not None and not self.pending(exercise))

    # ---- the terminal
    @staticmethod
    def line(test: GradedTest) -> str:
        status = "PASS" if test.passed else "FAIL"
        text = f"{status} {points_text(test.score)}/{points_text(test.points)} {test.name}"
        reason = test.reason or (NOT_GRADED if test.passed is None else "")
        return f"{text}  - {reason}" if status == "FAIL" else text

    def block(self, exercise: str) -> list[str]:
        if exercise in self.errors:
            return [f"ERROR {exercise}: {self.errors[exercise]}", ""]
        tests = self.tests[exercise] or []
        score, most = sum(t.score for t in tests), sum(t.points for t in tests)
        return [self.line(t) for t in tests] + [f"{exercise}: {points_text(score)}/{points_text(most)}", ""]

    def print_ready(self, out, final: bool = False):
        """Print, in order, each exercise block whose tests are all graded (every block when `final`)."""
        while self.printed < len(self.exercises):
            exercise = self.exercises[self.printed]
            if not (final or self.finished(exercise)):
                break
            print("\n".join(self.block(exercise)), file=out, flush=True)
            self.printed += 1
        if final:
            print(f"TOTAL: {points_text(self.score())}/{points_text(self.max_score())}", file=out, flush=True)

    # ---- results.json
    def as_gradescope(self, note: str = "") -> dict:
        tests = []
        for test in self.all_tests():
            reason = test.reason or (NOT_GRADED if test.passed is None else "")
            text = "passed" if test.passed else "\n\n".join(p for p in (reason, test.output) if p)
            tests.append({"name": test.name, "score": test.score, "max_score": test.points,
                          "status": "passed" if test.passed else "failed",
                          "output": cap_bytes(text), "visibility": "visible"})
        for exercise, error in self.errors.items():
            tests.append({"name": f"{exercise} (tests could not be run)", "score": 0.0, "max_score": 0.0,
                          "status": "failed", "output": cap_bytes(error), "visibility": "visible"})
        summary = f"TOTAL: {points_text(self.score())}/{points_text(self.max_score())}"
        return {"score": self.score(), "max_score": self.max_score(),
                "execution_time": round(time.monotonic() - self.started, 2),
                "output": f"{note}\n{summary}".strip(), "visibility": "visible", "stdout_visibility": "visible",
                "tests": tests}

    def write_json(self, note: str = ""):
        if self.json_path is None:
            return
        # A fresh, randomly named file (O_EXCL): nothing planted at a predictable name can redirect the write.
        with tempfile.NamedTemporaryFile("w", dir=self.json_path.parent, prefix=f".{self.json_path.name}.",
                                         delete=False) as temporary:
            temporary.write(json.dumps(self.as_gradescope(note), indent=1) + "\n")
        os.chmod(temporary.name, 0o644)
        os.replace(temporary.name, self.json_path)
