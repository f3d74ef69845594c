"""tools/make_exercises.py: exercises/ is in sync with solutions/, markers are checked, stubs teach and raise."""
import importlib
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("make_exercises", ROOT / "tools" / "make_exercises.py")
make_exercises = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_exercises)
BEGIN, END = make_exercises.BEGIN, make_exercises.END

needs_solutions = pytest.mark.skipif(not (ROOT / "solutions").is_dir(), reason="student release: no solutions/")


def write_solutions(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text("")
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


EXAMPLE = f'''"""An exercise."""


def double(x):
    """Return 2 x."""
    # TODO: multiply
    {BEGIN}
    y = 2 * x
    return y
    {END}


class Model:
    def forward(self, x):
        h = x + 1
        if h > 0:
            {BEGIN}
            h = h * 3
            {END}
        return h
'''


def test_stub_keeps_everything_outside_the_markers():
    stub = make_exercises.make_stub(EXAMPLE)
    assert stub == f'''"""An exercise."""


def double(x):
    """Return 2 x."""
    # TODO: multiply
    raise NotImplementedError("double: your code here")


class Model:
    def forward(self, x):
        h = x + 1
        if h > 0:
            raise NotImplementedError("Model.forward: your code here")
        return h
'''


def test_stub_runs_and_names_the_function():
    namespace = {}
    exec(compile(make_exercises.make_stub(EXAMPLE), "stub", "exec"), namespace)
    with pytest.raises(NotImplementedError, match=r"^double: your code here$"):
        namespace["double"](1)
    with pytest.raises(NotImplementedError, match=r"^Model\.forward: your code here$"):
        namespace["Model"]().forward(1)
    assert namespace["Model"]().forward(-5) == -4, "code outside the markers must still run"


@pytest.mark.parametrize("text, problem", [
    (f"def f():\n    {BEGIN}\n    {BEGIN}\n    pass\n    {END}\n", "nested"),
    (f"def f():\n    {BEGIN}\n    pass\n", "never closed"),
    (f"def f():\n    pass\n    {END}\n", "without"),
])
def test_marker_errors_are_hard_errors(text, problem):
    with pytest.raises(make_exercises.MarkerError, match=problem) as error:
        make_exercises.make_stub(text, "solutions/bad.py")
    assert "solutions/bad.py:" in str(error.value), "the error names the file and line"


def test_bad_markers_exit_2_with_one_line(tmp_path, capsys):
    solutions = write_solutions(tmp_path / "solutions", {"bad.py": f"def f():\n    {BEGIN}\n    pass\n"})
    assert make_exercises.main(["--solutions", str(solutions), "--out", str(tmp_path / "exercises")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "exercises" / "bad.py").exists(), "nothing is written when a marker is wrong"


def test_generation_and_check(tmp_path, capsys):
    solutions = write_solutions(tmp_path / "solutions", {"one.py": EXAMPLE, "notes.txt": f"{BEGIN}\n"})
    exercises = tmp_path / "exercises"
    assert make_exercises.main(["--solutions", str(solutions), "--out", str(exercises)]) == 0
    assert sorted(p.name for p in exercises.iterdir()) == ["__init__.py", "one.py"], "only .py files are processed"
    assert make_exercises.main(["--check", "--solutions", str(solutions), "--out", str(exercises)]) == 0

    (exercises / "one.py").write_text("# edited by hand\n")
    (exercises / "left_over.py").write_text("")
    capsys.readouterr()
    assert make_exercises.main(["--check", "--solutions", str(solutions), "--out", str(exercises)]) == 1
    out = capsys.readouterr().out
    assert "one.py" in out and "left_over.py" in out, out
    assert (exercises / "one.py").read_text() == "# edited by hand\n", "--check writes nothing"

    make_exercises.main(["--solutions", str(solutions), "--out", str(exercises)])
    assert make_exercises.out_of_date(solutions, exercises) == []
    assert not (exercises / "left_over.py").exists(), "a stub whose solution is gone is removed"


@needs_solutions
def test_exercises_folder_is_in_sync():
    stale = make_exercises.out_of_date(ROOT / "solutions", ROOT / "exercises")
    assert not stale, f"exercises/ is out of date ({', '.join(stale)}): run `make exercises`"


@needs_solutions
def test_every_solution_file_has_a_stub_without_markers():
    for path in sorted((ROOT / "solutions").glob("*.py")):
        stub = (ROOT / "exercises" / path.name).read_text()
        assert BEGIN not in stub and END not in stub, f"exercises/{path.name} still holds a marker"
        compile(stub, f"exercises/{path.name}", "exec")
        if BEGIN in path.read_text():
            assert "your code here" in stub


def test_loss_stubs_raise_naming_the_function():
    grpo = importlib.import_module("exercises.grpo_loss")
    ppo = importlib.import_module("exercises.ppo_loss")
    x = torch.zeros(2, 3)
    calls = {
        "group_advantages": lambda: grpo.group_advantages(x),
        "kl_estimate": lambda: grpo.kl_estimate(x, x),
        "aggregate_loss": lambda: grpo.aggregate_loss(x, x, "token-mean"),
        "GRPOLoss.forward": lambda: grpo.GRPOLoss()(x, x, x, x),
        "compute_gae": lambda: ppo.compute_gae(x, x),
        "PPOLoss.forward": lambda: ppo.PPOLoss()(x, x, x, x, x, x),
    }
    for name, call in calls.items():
        with pytest.raises(NotImplementedError, match=rf"^{name}: your code here$"):
            call()


def student_share(source: str) -> tuple[int, int]:
    """(code lines inside solution regions, all code lines) of a solution file. Code lines leave out docstrings,
    comments (the marker lines included) and blank lines; a statement over several lines counts each line."""
    import ast
    import io
    import tokenize

    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    not_code = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                tokenize.ENCODING, tokenize.ENDMARKER}
    code = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in not_code:
            code.update(range(token.start[0], token.end[0] + 1))
    code -= docstrings
    inside, opened = set(), False
    for number, line in enumerate(source.splitlines(), start=1):
        if line.strip() in (BEGIN, END):
            opened = line.strip() == BEGIN
        elif opened:
            inside.add(number)
    return len(code & inside), len(code)


@needs_solutions
@pytest.mark.parametrize("exercise, methods", [
    ("grpo_trainer", ("training_step", "update_policy")),
    ("ppo_trainer", ("training_step", "update_policy", "collect_experiences", "compute_advantages")),
])
def test_students_write_the_trainers_algorithm(exercise, methods):
    """The student writes at least 40% of each trainer's code lines, and the algorithm's methods whole."""
    import ast

    written, total = student_share((ROOT / "solutions" / f"{exercise}.py").read_text())
    share = written / total
    print(f"{exercise}: the student writes {written} of {total} code lines ({share:.0%})")
    assert share >= 0.40, f"{exercise}: the student writes {written} of {total} code lines ({share:.0%}), under 40%"
    stub = ast.parse((ROOT / "exercises" / f"{exercise}.py").read_text())
    bodies = {node.name: node.body for node in ast.walk(stub) if isinstance(node, ast.FunctionDef)}
    for name in methods:
        body = bodies[name]
        assert len(body) == 2 and isinstance(body[0], ast.Expr) and isinstance(body[1], ast.Raise), (
            f"exercises/{exercise}.py {name}: the stub must be a docstring and a single raise")
