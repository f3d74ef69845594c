"""The course folder a grading child runs in, and the checks that nothing in it (or around it) changed.

The grader reads the course folder into memory once, before any student code runs (`read_tree`), and
writes a fresh copy of it for every child (`write_tree`), with the student's exercise files put into
exercises/. So a submission that rewrites a test, a snapshot or the grader's own plugin in its copy changes
nothing for the next child, and `Fingerprint` notices the write: every file's inode, size and ctime are
recorded after the copy is written and compared after each test. (ctime cannot be set back by a normal
program, so writing a file and restoring it is noticed too.) The same fingerprint, taken of the packages
the child imports (pytest, pluggy, torch's testing code, site-packages itself), notices a submission that
edits the Python installation to fool the next child.
"""
import os
import stat
import sysconfig
from pathlib import Path

SKIPPED_NAMES = {".git", ".venv", "runs", "dist", "notebooks", "__pycache__", ".pytest_cache",
                 ".ipynb_checkpoints"}
IMPORTABLE_SUFFIXES = (".py", ".pyc", ".pth", ".so")  # new files of these kinds could shadow a module
MAX_FILE = 20_000_000  # bytes; bigger files (a checkpoint left in the folder) are not needed to grade


def read_tree(root: Path, with_solutions: bool) -> dict[str, tuple[bytes, bool]]:
    """{relative path: (content, executable)} for the files a grading run needs: the course folder without
    SKIPPED_NAMES, hidden files, solutions/ (unless asked for) and files over MAX_FILE bytes."""
    files = {}
    for folder, dirs, names in os.walk(root):
        rel_folder = Path(folder).relative_to(root)
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_NAMES and not d.startswith(".")
                         and not (rel_folder == Path(".") and d == "solutions" and not with_solutions))
        for name in sorted(names):
            path = Path(folder) / name
            if name.endswith(".pyc") or name.startswith(".") or not path.is_file() or path.stat().st_size > MAX_FILE:
                continue
            files[str(rel_folder / name)] = (path.read_bytes(), bool(path.stat().st_mode & stat.S_IXUSR))
    return files


def write_tree(files: dict[str, tuple[bytes, bool]], dest: Path):
    for rel, (content, executable) in files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        if executable:
            path.chmod(0o755)


def _stat_key(path: str):
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_ctime_ns)


class Fingerprint:
    """The identity (inode, size, ctime) of a set of files and folders, to tell later whether any changed.

    `folders` are walked: a file that disappears or changes is a change, and so is a new file whose name
    could be imported (`.py`, `.pth`, ...); other new files (a plot a student saves) are not.
    `paths` are single files or folders whose own entry is watched (a folder's ctime changes when an
    entry is added to or removed from it).
    """

    def __init__(self, folders=(), paths=(), skip_pycache=False):
        self.folders = [str(f) for f in folders]
        self.paths = [str(p) for p in paths]
        self.skip_pycache = skip_pycache
        self.before = self._take()

    def _walk(self, folder):
        for top, dirs, names in os.walk(folder):
            if self.skip_pycache:
                dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in names:
                yield os.path.join(top, name)

    def _take(self) -> dict[str, tuple]:
        seen = {}
        for folder in self.folders:
            for path in self._walk(folder):
                seen[path] = _stat_key(path)
        for path in self.paths:
            seen[path] = _stat_key(path)
        return seen

    def first_change(self) -> str | None:
        """A path that changed since the fingerprint was taken, or None."""
        now = self._take()
        for path, key in self.before.items():
            if now.get(path) != key:
                return path
        for path in now.keys() - self.before.keys():
            if path.endswith(IMPORTABLE_SUFFIXES):
                return path
        return None


def installation_fingerprint() -> Fingerprint:
    """What a grading child imports from the Python installation before and around student code."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    folders = [purelib / name for name in ("_pytest", "pluggy", "torch/testing", "numpy/testing")]
    paths = [purelib, stdlib, purelib / "pytest" / "__init__.py", purelib / "torch" / "__init__.py",
             *purelib.glob("*.pth")]
    # Their __pycache__ folders are left out: other Python programs on the machine legitimately write there.
    return Fingerprint(folders=[f for f in folders if f.is_dir()], paths=paths, skip_pycache=True)
