"""An exception raised during a graded test -> the one line a student reads next to FAIL.

The graded tests are written so that their assertion messages name the likely mistake, so for an
AssertionError the reason is that message (pytest appends its own `assert ...` explanation after a
newline; that part is dropped unless there is no message). NotImplementedError is the untouched stub.
Running out of memory (MemoryError, or torch's "DefaultCPUAllocator: can't allocate memory" under the
grader's memory limit) reads as such. For any other exception the reason is `Type: message`, and, when the
error happened inside the student's file, where: `(grpo_loss.py line 42)`.
"""
import os
import traceback

MAX_REASON = 300
STUDENT_FOLDERS = ("exercises", "solutions")  # the folders whose files are the graded code
MEMORY_HINT = "a tensor far too large, or a list growing in a loop?"
OUT_OF_MEMORY = ("can't allocate memory", "not enough memory")  # torch's allocator errors (RuntimeError)


def one_line(text: str, limit: int = MAX_REASON) -> str:
    """Collapse whitespace and newlines into single spaces; cut to `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def memory_reason(limit_gib: float) -> str:
    """What the grader says of a step it stopped for using more than `limit_gib` GiB of memory."""
    return f"used more than {limit_gib:g} GiB of memory - {MEMORY_HINT}"


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says an allocation failed."""
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError)
                                             and any(text in str(exc) for text in OUT_OF_MEMORY))


def is_student_file(filename: str) -> bool:
    """Whether `filename` is a graded file (in exercises/ or solutions/)."""
    parts = os.path.normpath(filename).split(os.sep)
    return len(parts) >= 2 and parts[-2] in STUDENT_FOLDERS


def student_location(exc: BaseException) -> str:
    """`grpo_loss.py line 42` for the innermost traceback frame in a student file, else ''."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{os.path.basename(exc.filename)} line {exc.lineno}"
    where = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if is_student_file(frame.filename):
            where = f"{os.path.basename(frame.filename)} line {frame.lineno}"
    return where


def reason_for(exc: BaseException, memory_gib: float | None = None) -> str:
    """The one-line reason for `exc`; `memory_gib`: the memory limit the test ran under, to name it."""
    name = type(exc).__name__
    message = str(exc)
    where = student_location(exc)
    suffix = f" ({where})" if where else ""
    if isinstance(exc, NotImplementedError):
        return one_line(f"not implemented yet ({message})" if message else "not implemented yet")
    if out_of_memory(exc):
        notes = [note for note in (where, f"the limit is {memory_gib:g} GiB" if memory_gib else "") if note]
        shown = f" ({'; '.join(notes)})" if notes else ""
        return one_line(f"ran out of memory{shown} - {MEMORY_HINT}")
    if isinstance(exc, SyntaxError):
        text = (exc.text or "").strip()
        shown = f": {text}" if text else ""
        return one_line(f"syntax error in {where}: {exc.msg}{shown}")
    if isinstance(exc, AssertionError) and not where:
        head = message.partition("\nassert ")[0]
        if head.strip() and not head.startswith("assert "):
            return one_line(head)
        first = message.strip().splitlines()[0] if message.strip() else "assert"
        return one_line(f"assertion failed: {first}")
    if isinstance(exc, SystemExit):
        return one_line(f"your code called sys.exit({exc.code!r}){suffix}: graded code must return, not exit")
    if isinstance(exc, KeyboardInterrupt):
        return one_line(f"your code raised KeyboardInterrupt{suffix}")
    if name == "Skipped":  # pytest.skip() called from student code: a skip never earns points
        return one_line(f"skipped: {message}")
    if name == "Failed":  # pytest.fail("...") in a test: the message is the reason
        return one_line(message or "failed")
    first = message.strip().splitlines()[0] if message.strip() else ""
    return one_line(f"{name}: {first}{suffix}" if first else f"{name}{suffix}")
