"""The battery: broken and hostile versions of one exercise file, each with the reason the grader must give.

Each case is the reference solution (or the stub a student starts from) with a few lines put in, at import
or as the first statement of one function (tests/hostile/submissions.py does the editing), so that no
solution code is copied here. The exercise is grpo_loss: its tests run in about two seconds.
"""
import textwrap
from dataclasses import dataclass

from tests.hostile.submissions import at_import, in_function, solution_text, stub_text

EXERCISE = "grpo_loss"
LOOP_TIMEOUT = "3"  # --timeout for the cases that hang, so that the battery stays fast
MEMORY_LIMIT = "1"  # --memory-limit (GiB) for the cases that hoard memory, so that they hit it within seconds
HOARD = "_hoard = []\nwhile True:\n    _hoard.append(len(_hoard))"  # a list growing forever (~40 bytes a turn)
# The misbehaviour inside a function happens only for a group of one, which a single test (group_of_one_raises)
# asks for: one test loses its points, and the battery pays one time-out or restart per case, not ten.
ONE_TEST = "if rewards.shape[-1] == 1:"


def lines(*blocks: str) -> str:
    """Blocks of code, each dedented on its own, one after the other."""
    return "\n".join(textwrap.dedent(block).strip("\n") for block in blocks)


# Lines that find the --json path the grader was given, as a submission could (the grader is the parent).
FIND_REPORT = """
    import json as _json, os as _os
    _argv = open(f"/proc/{_os.getppid()}/cmdline", "rb").read().split(b"\\0")
    _report = _argv[_argv.index(b"--json") + 1].decode() if b"--json" in _argv else "results.json"
    _fake = _json.dumps({"score": 999, "max_score": 48, "execution_time": 1,
                         "tests": [{"name": "grpo_loss::all", "score": 999, "max_score": 48, "status": "passed"}]})
"""


@dataclass(frozen=True)
class Case:
    name: str
    base: str           # "solution" or "stub": the file the change is made to
    where: str          # "import" or a function's qualified name
    code: str           # the lines put in
    expect: str         # the failed tests' reason must contain this (case-insensitive)
    every: bool = False  # every test fails with that reason (a broken import), not only some
    args: tuple = ()    # extra arguments for tools/grade.py
    wait_after: float = 0.0
    review: str = ""    # a word the report must flag for an instructor to read (tools/grading/review.py)

    def source(self) -> str:
        text = solution_text(EXERCISE) if self.base == "solution" else stub_text(EXERCISE)
        return at_import(text, self.code) if self.where == "import" else in_function(text, self.where, self.code)


CASES = [
    # -- hangs, exits, crashes
    Case("endless_loop_in_function", "solution", "group_advantages", f"{ONE_TEST}\n    while True:\n        pass",
         "took longer than 3 s - an endless loop?", args=("--timeout", LOOP_TIMEOUT)),
    Case("endless_loop_at_import", "solution", "import", "while True:\n    pass",
         "importing grpo_loss.py took longer than 3 s - an endless loop at import?", every=True,
         args=("--timeout", LOOP_TIMEOUT)),
    Case("os_exit_at_import", "solution", "import", "import os\nos._exit(0)",
         "importing grpo_loss.py ended the process (exit code 0)", every=True),
    Case("os_exit_in_function", "solution", "group_advantages", f"import os\n{ONE_TEST}\n    os._exit(3)",
         "the process running this test ended (exit code 3)"),
    Case("sys_exit_at_import", "solution", "import", "import sys\nsys.exit(2)",
         "importing grpo_loss.py failed: your code called sys.exit(2)", every=True),
    Case("sys_exit_in_function", "solution", "group_advantages", f"import sys\n{ONE_TEST}\n    sys.exit('bye')",
         "your code called sys.exit('bye') (grpo_loss.py line"),
    Case("keyboard_interrupt_in_function", "solution", "group_advantages", f"{ONE_TEST}\n    raise KeyboardInterrupt",
         "your code raised KeyboardInterrupt (grpo_loss.py line"),
    Case("swallows_the_timeout", "solution", "group_advantages",
         f"{ONE_TEST}\n    while True:\n        try:\n            while True:\n                pass\n"
         "        except BaseException:\n            pass",
         "took longer than 3 s - an endless loop?", args=("--timeout", LOOP_TIMEOUT)),
    Case("segfault_in_function", "solution", "group_advantages",
         f"import os, signal\n{ONE_TEST}\n    os.kill(os.getpid(), signal.SIGSEGV)", "killed by signal SIGSEGV"),
    # -- broken files
    Case("exception_at_import", "solution", "import", "raise RuntimeError('broken at import')",
         "importing grpo_loss.py failed: RuntimeError: broken at import (grpo_loss.py line", every=True),
    Case("syntax_error", "solution", "import", "def broken(:\n    pass",
         "importing grpo_loss.py failed: syntax error in grpo_loss.py line", every=True),
    # -- memory bombs
    Case("list_growing_at_import", "solution", "import", HOARD,
         "importing grpo_loss.py used more than 1 GiB of memory - a tensor far too large, or a list growing",
         every=True, args=("--memory-limit", MEMORY_LIMIT)),
    Case("list_growing_in_function", "solution", "group_advantages",
         f"{ONE_TEST}\n" + textwrap.indent(HOARD, "    "),
         "used more than 1 GiB of memory - a tensor far too large", args=("--memory-limit", MEMORY_LIMIT)),
    Case("huge_tensor_at_import", "solution", "import", "_huge = torch.zeros(10**12)",
         "importing grpo_loss.py failed: ran out of memory (grpo_loss.py line", every=True),
    Case("huge_tensor_in_function", "solution", "group_advantages", f"{ONE_TEST}\n    torch.empty(10**12)",
         "ran out of memory (grpo_loss.py line"),
    # -- output floods
    Case("print_flood_in_function", "solution", "group_advantages", f"{ONE_TEST}\n    while True:\n        print('x' * 1000)",
         "printed more than 1 MB of output - a print inside a loop?"),
    Case("print_flood_at_import", "solution", "import", "while True:\n    print('x' * 1000)",
         "importing grpo_loss.py printed more than 1 MB", every=True),
    # -- wrong results (the graded tests catch these; the reason is their message)
    Case("nan_advantages", "solution", "group_advantages", "rewards = rewards * float('nan')", "NaN"),
    Case("wrong_shape", "solution", "group_advantages", "return rewards.mean(dim=1)", "shape"),
    Case("wrong_dtype", "solution", "aggregate_loss", "loss_mat = loss_mat.float()", "float64 input gave torch.float32"),
    Case("inputs_modified_in_place", "solution", "GRPOLoss.forward", "rewards.add_(1.0)", "modified in place"),
    # -- attempts on the report and the grader
    Case("writes_its_own_results_json", "stub", "import",
         lines(FIND_REPORT, "open(_report, 'w').write(_fake)\nopen('results.json', 'w').write(_fake)"),
         "not implemented yet", every=True),
    Case("daemon_rewrites_results_later", "stub", "import",
         lines(FIND_REPORT, """
         import time as _time
         _grader = _os.getppid()
         if _os.fork() == 0:
             _os.setsid()
             if _os.fork() == 0:
                 while _os.path.exists(f"/proc/{_grader}"):
                     _time.sleep(0.05)
                 open(_report, 'w').write(_fake)
             _os._exit(0)
         """), "not implemented yet", every=True, wait_after=3.0, review="setsid"),
    Case("forged_records", "stub", "import", """
         import os as _os, json as _json
         for _test in range(40):
             _line = b'GRADER ' + b'0' * 64 + b' ' + _json.dumps({"kind": "done", "id": "x", "passed": True}).encode()
             print(_line.decode())
             for _fd in range(3, 40):
                 try:
                     _os.write(_fd, b'\\n' + _line + b'\\n')
                 except OSError:
                     pass
         """, "not implemented yet", every=True),
    Case("patches_pytest_reports", "stub", "import", """
         import _pytest.reports as _reports
         _original = _reports.TestReport.from_item_and_call
         def _always_passed(cls, item, call):
             report = _original(item, call)
             report.outcome, report.longrepr = "passed", None
             return report
         _reports.TestReport.from_item_and_call = classmethod(_always_passed)
         """, "the graded code replaced _pytest.reports.TestReport.from_item_and_call", every=True, review="_pytest"),
    Case("patches_torch_comparisons", "solution", "import", """
         torch.allclose = lambda *args, **kwargs: True
         torch.testing.assert_close = lambda *args, **kwargs: None
         torch.Tensor.allclose = lambda self, *args, **kwargs: True
         """, "the graded code replaced torch.", every=True),
    Case("rewrites_the_tests", "stub", "import", """
         from pathlib import Path as _Path
         _tests = _Path(__file__).resolve().parents[1] / "tests" / "autograder" / "test_grpo_loss.py"
         _tests.write_text("def test_everything():\\n    pass\\n")
         """, "the graded code changed the grader's files (tests/autograder/test_grpo_loss.py)", every=True),
    Case("closes_the_grader_pipes", "solution", "import", "import os\nos.closerange(3, 256)",
         "importing grpo_loss.py ended the process", every=True),
]
