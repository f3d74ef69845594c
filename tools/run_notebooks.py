"""Execute lesson notebooks in place, so they are committed with fresh outputs (nbval then compares against them).

    python tools/run_notebooks.py                          # every notebooks/NN_*.ipynb, in order
    python tools/run_notebooks.py notebooks/03_grpo.ipynb  # just these
    python tools/run_notebooks.py --impl solutions         # whose exercise code the lessons call (default: auto)

Each notebook runs with its own folder as the working directory, as JupyterLab and nbval run it (the lessons
put the repository root on sys.path themselves, via notebooks/_common.py). Prints the wall time of each
notebook; stops with exit code 1 at the first notebook that raises.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbconvert.preprocessors import CellExecutionError, ExecutePreprocessor

ROOT = Path(__file__).resolve().parent.parent


def execute(path: Path, timeout: int) -> float:
    """Run every cell of the notebook at `path`, write the outputs back, return the seconds it took."""
    notebook = nbformat.read(path, as_version=4)
    runner = ExecutePreprocessor(timeout=timeout, kernel_name="python3", record_timing=False)
    start = time.perf_counter()
    runner.preprocess(notebook, {"metadata": {"path": str(path.parent)}})
    seconds = time.perf_counter() - start
    nbformat.write(notebook, path)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/[0-9][0-9]_*.ipynb")
    parser.add_argument("--impl", choices=("auto", "exercises", "solutions"), help="sets COURSE_IMPL")
    parser.add_argument("--timeout", type=int, default=300, help="seconds allowed per cell (default 300)")
    args = parser.parse_args(argv)

    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"error: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.impl:
        os.environ["COURSE_IMPL"] = args.impl

    total = 0.0
    for path in paths:
        try:
            seconds = execute(path.resolve(), args.timeout)
        except CellExecutionError as err:
            print(f"FAILED {path}\n{err}", file=sys.stderr)
            return 1
        total += seconds
        shown = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
        print(f"{seconds:6.1f} s  {shown}")
    print(f"{total:6.1f} s  total ({len(paths)} notebooks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
