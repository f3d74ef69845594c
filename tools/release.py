"""Write the student release: everything a student needs, and no answer.

    python tools/release.py OUT [--force]        (make release writes dist/student)

The release is the files git tracks or would track (`git ls-files --cached --others --exclude-standard`:
no .git, .venv, runs, caches), minus what is for instructors only (INSTRUCTOR_ONLY: solutions/, the
negative controls and the hostile battery, which are near-solutions; the tools that make exercises,
snapshots and releases, and their tests), with four changes:
  - exercises/ is written afresh from solutions/ by tools/make_exercises.py, so the stubs match;
  - README.md keeps its section for students and loses its instructor sections (`student_readme`);
  - every hidden-test region (a line `### BEGIN HIDDEN TESTS` through a line `### END HIDDEN TESTS`) is
    removed from every file;
  - a stamp file (STAMP) marks the folder as a release, so that a later --force may replace it.
Before anything is moved into OUT the release is checked: it is refused, with one line naming the file,
when a file still holds a marker (`### BEGIN SOLUTION`, ...); a released line equal to a non-trivial line of
a solution body (`leaked_solution_lines`) is printed as a warning, and fails tests/test_release.py. The graded tests' snapshots travel with tests/autograder/. The same sources
give a byte-identical release. OUT must be empty or missing; with --force it may be a previous release.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.make_exercises import MarkerError, expected_exercises  # noqa: E402

# Marker strings, spelt in pieces so that this file holds none of them.
SOLUTION_MARKERS = ("### BEGIN " + "SOLUTION", "### END " + "SOLUTION")
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN " + "HIDDEN TESTS", "### END " + "HIDDEN TESTS"
MARKERS = SOLUTION_MARKERS + (HIDDEN_BEGIN, HIDDEN_END)

INSTRUCTOR_ONLY = (
    "solutions/", "tests/negative_controls/", "tests/hostile/",
    "tools/make_exercises.py", "tools/make_snapshots.py", "tools/release.py", "tools/lessons_catch_controls.py",
    "tests/test_make_exercises.py", "tests/test_release.py", "tests/test_negative_controls.py",
    "tests/test_grader.py",
)
STAMP = ".course-release"
STAMP_TEXT = "A student release written by tools/release.py (tools/release.py --force may replace this folder).\n"
MIN_LEAK_LENGTH = 20  # a solution line shorter than this (`return loss`, `else:`) is too generic to count
GENERIC = {"with torch.no_grad():", "with torch.inference_mode():"}  # boilerplate, not an answer


class ReleaseError(Exception):
    """Why the release cannot be written: one line for the user, exit code 2."""


def released_paths(root: Path, out: Path) -> list[str]:
    """The repository's files (as git sees them) that go into the release, sorted."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                 cwd=root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise ReleaseError(f"{root} is not a git checkout ({error}): the release is made from one") from None
    paths = []
    for rel in sorted(set(listing.decode().split("\0")) - {""}):
        path = root / rel
        if rel.startswith(INSTRUCTOR_ONLY) or not path.is_file() or path.resolve().is_relative_to(out):
            continue
        if "__pycache__" in Path(rel).parts or rel.startswith("exercises/"):
            continue  # exercises/ is written afresh from solutions/
        paths.append(rel)
    return paths


def strip_hidden_tests(text: str, name: str) -> str:
    """The text without its hidden-test regions (marker lines included)."""
    kept, opened = [], None
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        marker = line.strip()
        if marker == HIDDEN_BEGIN:
            if opened is not None:
                raise ReleaseError(f"{name}:{number}: nested {HIDDEN_BEGIN} (line {opened} is not closed)")
            opened = number
        elif marker == HIDDEN_END:
            if opened is None:
                raise ReleaseError(f"{name}:{number}: {HIDDEN_END} without a {HIDDEN_BEGIN} before it")
            opened = None
        elif opened is None:
            kept.append(line)
    if opened is not None:
        raise ReleaseError(f"{name}:{opened}: {HIDDEN_BEGIN} is never closed")
    return "".join(kept)


def student_readme(text: str) -> str:
    """README.md without its instructor sections (a `## ...` heading that names instructors, to the next `## `)."""
    kept, skipping = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith(("# ", "## ")):
            skipping = line.startswith("## ") and "instructor" in line.lower()
        if not skipping:
            kept.append(line)
    return "".join(kept)


def release_files(root: Path, out: Path) -> dict[str, tuple[bytes, bool]]:
    """{relative path: (content, executable)} of the release."""
    solutions = root / "solutions"
    if not (solutions / "__init__.py").is_file():
        raise ReleaseError(f"{solutions} is missing: a release is made from the instructor's copy")
    files = {}
    for rel in released_paths(root, out):
        path = root / rel
        content = path.read_bytes()
        try:
            text = strip_hidden_tests(content.decode("utf-8"), rel)
            content = (student_readme(text) if rel == "README.md" else text).encode("utf-8")
        except UnicodeDecodeError:
            pass  # binary (a .pt snapshot): no markers to strip; the check below still looks for them
        files[rel] = (content, os.access(path, os.X_OK))
    try:
        stubs = expected_exercises(solutions)
    except (MarkerError, SyntaxError) as error:
        raise ReleaseError(str(error)) from None
    for name, text in stubs.items():
        files[f"exercises/{name}"] = (text.encode("utf-8"), False)
    files[STAMP] = (STAMP_TEXT.encode(), False)
    return dict(sorted(files.items()))


def normalise(line: str) -> str:
    """A line of code without its trailing comment (`  # ...`) and with its whitespace collapsed."""
    return " ".join(line.split("  #", 1)[0].split())


def solution_lines(solutions: Path) -> dict[str, str]:
    """{normalised line: "grpo_loss.py:42"} for the non-trivial code lines inside the solution regions.

    Left out: lines shorter than MIN_LEAK_LENGTH, comments, GENERIC boilerplate, and lines that the
    solution files also hold outside their regions (given code that every student sees anyway)."""
    inside_lines, given = {}, set()
    for path in sorted(solutions.glob("*.py")):
        inside = False
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            marker = line.strip()
            if marker in SOLUTION_MARKERS:
                inside = marker == SOLUTION_MARKERS[0]
            elif not inside:
                given.add(normalise(line))
            elif not marker.startswith("#") and len(normalise(line)) >= MIN_LEAK_LENGTH:
                inside_lines.setdefault(normalise(line), f"{path.name}:{number}")
    return {line: where for line, where in inside_lines.items() if line not in given and line not in GENERIC}


def _text_lines(rel: str, content: bytes) -> set[str]:
    """The normalised lines of a file (of its cells' sources, for a notebook)."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return set()
    if rel.endswith(".ipynb"):
        try:
            text = "\n".join("".join(cell.get("source", "")) for cell in json.loads(text).get("cells", []))
        except (ValueError, AttributeError, TypeError):
            pass  # not a readable notebook: compare its raw lines
    return {normalise(line) for line in text.splitlines()}


def leaked_solution_lines(files: dict[str, tuple[bytes, bool]], solutions: Path) -> list[str]:
    """["exercises/x.py holds grpo_loss.py:42: <line>", ...] for each solution line found in a released file."""
    wanted = solution_lines(solutions)
    leaks = []
    for rel, (content, _) in files.items():
        for line in sorted(_text_lines(rel, content) & wanted.keys()):
            leaks.append(f"{rel} holds {wanted[line]}: {line}")
    return leaks


def marker_leaks(files: dict[str, tuple[bytes, bool]]) -> list[str]:
    return [f"{rel} holds {marker!r}" for rel, (content, _) in files.items()
            for marker in MARKERS if marker.encode() in content]


def prepare_out(out: Path, force: bool):
    """Check that OUT may be (re)written; remove a previous release when forced."""
    if out == ROOT or ROOT.is_relative_to(out):
        raise ReleaseError(f"{out} holds the repository itself: choose another folder")
    if out.exists() and not out.is_dir():
        raise ReleaseError(f"{out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ReleaseError(f"{out} is not empty: use --force to replace a previous release")
        if not (out / STAMP).is_file():
            raise ReleaseError(f"{out} is not a previous release (no {STAMP} in it): refusing to delete it")


def write_release(out: Path, force: bool = False) -> int:
    """Write the release into `out`; returns the number of files."""
    out = out.resolve()
    prepare_out(out, force)
    files = release_files(ROOT, out)
    markers = marker_leaks(files)
    if markers:
        more = f" (and {len(markers) - 1} more)" if len(markers) > 1 else ""
        raise ReleaseError(f"refusing to release: {markers[0]}{more}")
    for leak in leaked_solution_lines(files, ROOT / "solutions"):  # tests/test_release.py fails on these
        print(f"warning: {leak}", file=sys.stderr)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    for rel, (content, executable) in files.items():
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(0o755 if executable else 0o644)
    if out.is_dir():
        shutil.rmtree(out)
    staging.rename(out)
    return len(files)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tools/release.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, metavar="OUT", help="folder to write the release into")
    parser.add_argument("--force", action="store_true", help="replace OUT when it holds a previous release")
    args = parser.parse_args(argv)
    try:
        count = write_release(args.out, args.force)
    except (ReleaseError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote the student release to {args.out}: {count} files, no solutions/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
