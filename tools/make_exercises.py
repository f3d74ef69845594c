"""Write the student stubs exercises/*.py from the reference solutions/*.py (the one source of truth).

Every region between a `### BEGIN SOLUTION` line and an `### END SOLUTION` line (markers included)
becomes one line at the marker's indentation:

    raise NotImplementedError("<function or Class.method>: your code here")

Everything else (signatures, docstrings with the formula, `# TODO` hints) is copied as it is. Every
solutions/*.py is processed, so a new exercise file needs no change here; other files are ignored.
A nested or unterminated region is a hard error.

    python tools/make_exercises.py            # (re)write exercises/
    python tools/make_exercises.py --check    # exit 1 and list the out-of-date files, write nothing
"""
import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Spelt in two pieces so that this file itself never holds a marker line.
BEGIN = "### BEGIN " + "SOLUTION"
END = "### END " + "SOLUTION"


class MarkerError(ValueError):
    """A solution file whose markers do not pair up (one line for the user)."""


def _qualified_names(source: str) -> list[tuple[int, int, str]]:
    """(first line, last line, "Class.method") of every function in the source, outermost first."""
    spans = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    spans.append((child.lineno, child.end_lineno, name))
                visit(child, name + ".")

    visit(ast.parse(source), "")
    return spans


def _enclosing_name(spans, line: int, fallback: str) -> str:
    """The innermost function around a line (the last matching span: spans go outermost first)."""
    names = [name for first, last, name in spans if first <= line <= last]
    return names[-1] if names else fallback


def replace_regions(text: str, begin: str, end: str, filename: str, replacement, error=None) -> str:
    """The text with every region from a `begin` line to an `end` line (markers included) replaced.

    replacement(line_number, indent) gives the text that stands for the region ("" drops it). A nested,
    unpaired or unterminated marker raises `error` (MarkerError by default) naming the file and line.
    Shared with tools/release.py, which drops hidden-test regions the same way.
    """
    error = error or MarkerError
    out, opened = [], None   # opened: 1-based line number of the open begin marker
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        marker = line.strip()
        if marker == begin:
            if opened is not None:
                raise error(f"{filename}:{number}: nested {begin} (the region opened at line {opened} is not closed)")
            opened = number
            out.append(replacement(number, line[: len(line) - len(line.lstrip())]))
        elif marker == end:
            if opened is None:
                raise error(f"{filename}:{number}: {end} without a {begin} before it")
            opened = None
        elif opened is None:
            out.append(line)
    if opened is not None:
        raise error(f"{filename}:{opened}: {begin} is never closed by an {end}")
    return "".join(out)


def make_stub(source: str, filename: str = "<solution>") -> str:
    """The exercise text for one solution file's text."""
    spans = _qualified_names(source)

    def stub_line(number, indent):
        name = _enclosing_name(spans, number, Path(filename).stem)
        return f'{indent}raise NotImplementedError("{name}: your code here")\n'

    return replace_regions(source, BEGIN, END, filename, stub_line)


def expected_exercises(solutions: Path) -> dict[str, str]:
    """File name -> the text exercises/ should hold, for every solutions/*.py (including __init__.py)."""
    return {path.name: make_stub(path.read_text(), str(path)) for path in sorted(solutions.glob("*.py"))}


def out_of_date(solutions: Path, exercises: Path) -> list[str]:
    """Names of the exercise files that are missing, different, or left over from a deleted solution."""
    expected = expected_exercises(solutions)
    stale = [name for name, text in expected.items()
             if not (exercises / name).exists() or (exercises / name).read_text() != text]
    extra = [path.name for path in sorted(exercises.glob("*.py")) if path.name not in expected]
    return stale + extra


def write_exercises(solutions: Path, exercises: Path) -> list[str]:
    """Write every stub (only those that changed) and remove left-over exercise files; returns the names touched."""
    expected = expected_exercises(solutions)   # all files are checked before any is written
    exercises.mkdir(parents=True, exist_ok=True)
    touched = out_of_date(solutions, exercises)
    for name in touched:
        if name in expected:
            (exercises / name).write_text(expected[name])
        else:
            (exercises / name).unlink()
    return touched


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report out-of-date files (exit 1 if any)")
    parser.add_argument("--solutions", type=Path, default=ROOT / "solutions", help="folder of the reference solutions")
    parser.add_argument("--out", type=Path, default=ROOT / "exercises", help="folder of the generated stubs")
    args = parser.parse_args(argv)
    try:
        if not (args.solutions / "__init__.py").exists():
            raise MarkerError(f"{args.solutions} has no __init__.py: is this the instructor's copy with solutions/?")
        if args.check:
            stale = out_of_date(args.solutions, args.out)
            for name in stale:
                print(f"out of date: {args.out / name} (run python tools/make_exercises.py)")
            return 1 if stale else 0
        for name in write_exercises(args.solutions, args.out):
            print(f"{'wrote' if (args.out / name).exists() else 'removed'} {args.out / name}")
    except (MarkerError, SyntaxError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
