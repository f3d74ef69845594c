"""Build submission folders and grade them with tools/grade.py, as Gradescope would (a child process each).

Used by the hostile battery (tests/hostile/test_hostile.py) and the negative controls
(tests/test_negative_controls.py). Every submission is made at test time from the reference solution or the
generated stub, with a small change put in, so no solution code is copied into tests/.
"""
import ast
import json
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GRADE = ROOT / "tools" / "grade.py"
WORKERS = 2          # gradings at a time (each grading runs its own child processes)
MAX_OUTPUT = 2048    # bytes, the cap on each test's output in results.json


def solution_text(exercise: str) -> str:
    return (ROOT / "solutions" / f"{exercise}.py").read_text()


def stub_text(exercise: str) -> str:
    """The exercise file a student starts from, made from the solution the way tools/make_exercises.py does."""
    sys.path.insert(0, str(ROOT))
    from tools.make_exercises import make_stub
    return make_stub(solution_text(exercise), f"{exercise}.py")


def _indented(block: str, indent: str) -> list[str]:
    return [indent + line + "\n" for line in textwrap.dedent(block).strip("\n").splitlines()]


def at_import(source: str, block: str) -> str:
    """`block` put in at module level, right after the imports at the top."""
    tree = ast.parse(source)
    last = max(node.end_lineno for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))
    lines = source.splitlines(keepends=True)
    return "".join(lines[:last] + _indented(block, "") + lines[last:])


def in_function(source: str, qualname: str, block: str) -> str:
    """`block` put in as the first statement (after the docstring) of function `qualname` ("Class.method")."""
    tree = ast.parse(source)
    node = tree
    for name in qualname.split("."):
        node = next(child for child in node.body if getattr(child, "name", None) == name)
    body = node.body
    first = body[1] if (isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)) else body[0]
    lines = source.splitlines(keepends=True)
    indent = " " * first.col_offset
    return "".join(lines[: first.lineno - 1] + _indented(block, indent) + lines[first.lineno - 1:])


def in_every_function(source: str, block: str) -> str:
    """`block` put in as the first statement (after the docstring) of every function and method (except one
    whose body is on its `def` line)."""
    tree = ast.parse(source)
    firsts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            docstring = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            first = body[1] if docstring and len(body) > 1 else body[0]
            if first.lineno > node.lineno:
                firsts.append(first)
    lines = source.splitlines(keepends=True)
    for first in sorted(firsts, key=lambda node: node.lineno, reverse=True):
        lines[first.lineno - 1:first.lineno - 1] = _indented(block, " " * first.col_offset)
    return "".join(lines)


@dataclass
class Graded:
    returncode: int
    stdout: str
    stderr: str
    results: dict | None   # results.json as the grader left it
    seconds: float
    folder: Path

    def lines(self) -> dict[str, str]:
        """Test name -> its terminal line (PASS/FAIL ...)."""
        found = {}
        for line in self.stdout.splitlines():
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[0] in ("PASS", "FAIL"):
                found[parts[2]] = line
        return found

    def failed(self) -> dict[str, str]:
        """Failed test name -> the reason on its terminal line."""
        return {name: line.split("  - ", 1)[-1] for name, line in self.lines().items() if line.startswith("FAIL")}


def grade(folder: Path, files: dict[str, str] | None, *args: str, wait_after: float = 0.0) -> Graded:
    """Write `files` ({path in the submission: source}, e.g. {"grpo_loss.py": ...}) into folder/submission and
    grade them with tools/grade.py `args` (files=None: no --submission, grade what `args` say).

    `wait_after`: seconds to wait after the grader returns before reading results.json (to see whether
    anything the submission left behind changes it later)."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(GRADE), "--json", str(folder / "results.json"), *args]
    if files is not None:
        submission = folder / "submission"
        submission.mkdir(exist_ok=True)
        for rel, source in files.items():
            (submission / rel).parent.mkdir(parents=True, exist_ok=True)
            (submission / rel).write_text(source)
        command += ["--submission", str(submission)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    seconds = time.monotonic() - started
    time.sleep(wait_after)
    path = folder / "results.json"
    results = json.loads(path.read_text()) if path.exists() else None
    return Graded(done.returncode, done.stdout, done.stderr, results, seconds, folder)


def grade_many(calls, workers: int = WORKERS) -> list[Graded]:
    """Run several `grade(...)` calls at once: [(folder, files, args, wait_after)] -> results in order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(grade, folder, files, *args, wait_after=wait) for folder, files, args, wait in calls]
        return [future.result() for future in futures]


def results_problems(results: dict | None) -> list[str]:
    """What is wrong with a results.json against Gradescope's format (an empty list: nothing)."""
    if not isinstance(results, dict):
        return ["no results.json"]
    problems = []
    for key, kind in (("score", (int, float)), ("max_score", (int, float)), ("execution_time", (int, float)),
                      ("tests", list)):
        if not isinstance(results.get(key), kind):
            problems.append(f"{key} missing or not a {kind}")
    if problems:
        return problems
    total = 0.0
    for test in results["tests"]:
        for key in ("name", "score", "max_score", "status", "output", "visibility"):
            if key not in test:
                problems.append(f"test {test.get('name')!r} has no {key}")
        if test.get("status") not in ("passed", "failed"):
            problems.append(f"test {test.get('name')!r}: status {test.get('status')!r}")
        if not 0 <= test.get("score", -1) <= test.get("max_score", -1):
            problems.append(f"test {test.get('name')!r}: score {test.get('score')} outside [0, max_score]")
        expected_score = test.get("max_score") if test.get("status") == "passed" else 0
        if test.get("score") != expected_score:
            problems.append(f"test {test.get('name')!r}: {test.get('status')} with score {test.get('score')}")
        if len(str(test.get("output", "")).encode()) > MAX_OUTPUT:
            problems.append(f"test {test.get('name')!r}: output over {MAX_OUTPUT} bytes")
        total += test.get("score", 0)
    if abs(total - results["score"]) > 1e-9:
        problems.append(f"score {results['score']} is not the sum of the tests' scores {total}")
    if abs(sum(t.get("max_score", 0) for t in results["tests"]) - results["max_score"]) > 1e-9:
        problems.append("max_score is not the sum of the tests' max_score")
    return problems
