"""tools/release.py: the student release holds everything a student needs and no answer, and is reproducible."""
import subprocess
import sys
from pathlib import Path

import pytest

from tools import release
from tools.release import INSTRUCTOR_ONLY, MARKERS, STAMP

ROOT = release.ROOT


def tree(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mode) for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("release") / "student"
    assert release.main([str(out)]) == 0
    return out


def test_release_twice_gives_identical_trees(released, tmp_path):
    again = tmp_path / "again"
    assert release.main([str(again)]) == 0
    assert tree(released) == tree(again)


def test_release_leaves_out_instructor_files(released):
    files = tree(released)
    for rel in files:
        parts = Path(rel).parts
        assert not rel.startswith(INSTRUCTOR_ONLY), f"{rel} is for instructors only"
        assert not {"__pycache__", ".git", ".venv", "runs", ".pytest_cache"} & set(parts), rel
    assert not (released / "solutions").exists()


def test_release_has_what_students_need(released):
    for rel in ("tools/grade.py", "tools/grading/child_plugin.py", "training/impl.py", "exercises/__init__.py",
                "tests/autograder/conftest.py", "Makefile", "requirements.txt"):
        assert (released / rel).is_file(), f"the release lacks {rel}"
    for path in (ROOT / "tests" / "autograder").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            assert (released / path.relative_to(ROOT)).is_file(), f"the graded tests need {path.relative_to(ROOT)}"
    for path in (ROOT / "solutions").glob("*.py"):
        stub = released / "exercises" / path.name
        assert stub.is_file(), f"no stub for {path.name}"
    if (ROOT / "README.md").is_file():
        assert (released / "README.md").is_file(), "the README (with its section for students) is missing"
        headings = [line for line in (released / "README.md").read_text().splitlines() if line.startswith("## ")]
        student = [line for line in (ROOT / "README.md").read_text().splitlines()
                   if line.startswith("## ") and "student" in line.lower()]
        assert all(line in headings for line in student), "the README's section for students is missing"
        assert not any("instructor" in line.lower() for line in headings), "the README's instructor section stayed"


def test_readme_loses_only_its_instructor_sections():
    readme = "# Course\nintro\n## Student path\nfill in\n## Instructor path\nsecret\n### Detail\nmore\n## Layout\nx\n"
    assert release.student_readme(readme) == "# Course\nintro\n## Student path\nfill in\n## Layout\nx\n"


def test_release_holds_no_marker_text(released):
    for rel, (content, _) in tree(released).items():
        for marker in MARKERS:
            assert marker.encode() not in content, f"{rel} holds {marker!r}"


def test_release_holds_no_line_of_a_solution_body(released):
    leaks = release.leaked_solution_lines(tree(released), ROOT / "solutions")
    assert not leaks, "solution lines in the release:\n" + "\n".join(leaks)


def test_hidden_tests_are_removed():
    begin, end = release.HIDDEN_BEGIN, release.HIDDEN_END
    text = f"def test_a():\n    pass\n{begin}\ndef test_hidden():\n    pass\n{end}\ndef test_b():\n    pass\n"
    assert release.strip_hidden_tests(text, "t.py") == "def test_a():\n    pass\ndef test_b():\n    pass\n"
    for broken in (f"{begin}\nx\n", f"x\n{end}\n", f"{begin}\n{begin}\n{end}\n"):
        with pytest.raises(release.ReleaseError, match="t.py:"):
            release.strip_hidden_tests(broken, "t.py")


def test_release_refuses_to_overwrite(tmp_path, released, capsys):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    assert release.main([str(occupied)]) == 2
    assert release.main([str(occupied), "--force"]) == 2, "--force must not delete a folder that is not a release"
    assert (occupied / "notes.txt").read_text() == "mine"
    error = capsys.readouterr().err
    assert error.count("\n") == 2 and all(line.startswith("error: ") for line in error.splitlines())
    assert release.main([str(ROOT)]) == 2
    again = tmp_path / "again"
    assert release.main([str(again)]) == 0 and (again / STAMP).is_file()
    assert release.main([str(again), "--force"]) == 0, "--force replaces a previous release"


@pytest.mark.slow
def test_fresh_release_grades_to_zero(released, tmp_path):
    """What a student sees first: every graded test fails because of the stub: "not implemented yet", or, for a
    trainer test that first needs the loss, a reason naming the NotImplementedError the loss stub raised."""
    results = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(released / "tools" / "grade.py"), "--expect-zero", "--json", str(results)],
                          capture_output=True, text=True, cwd=released, timeout=600)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    lines = [line for line in done.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert lines and all(line.startswith("FAIL") for line in lines)
    not_yet = [line for line in lines if "  - not implemented yet" not in line and "NotImplementedError" not in line]
    assert not not_yet, "tests that fail for another reason than the stub:\n" + "\n".join(not_yet)
