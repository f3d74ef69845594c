"""Inside a grading child: stops a graded test that runs too long or holds too much memory by raising TimedOut
in it, so that the tests after it run on in the same process (a fresh one costs seconds of start-up).

A thread looks at the main thread's stack and at the process's resident memory every TICK seconds while a
test runs, and stops the test when
  - the process holds more than `memory_limit` bytes (VmRSS, the measure the grader kills at), or, once an
    earlier test of this process went over it, when the test has added more than `after_memory` bytes to what
    the process held when the test started (a list growing in every function then costs a fraction of a
    second a test, not the climb to the full limit each time);
  - the test has run for more than `per_test` seconds, or
  - one call of a function in a graded file has run for more than `repeat` seconds, and that function ran too
    long in an earlier test, or
  - once an earlier test has timed out, one call of any graded function has run for more than `after_timeout`
    seconds.
For the times, "earlier" counts the tests of every exercise: the grader passes on what earlier processes
found. So a submission that loops forever everywhere pays the full limit once or twice, not once per test.
Seconds are CPU seconds of the main thread, or wall seconds / `wall_factor` when that is more (a call that
sleeps). This is a courtesy to the student, not a defence: code that catches TimedOut or blocks in C is
killed from outside by the grader (tools/grading/runner.py) a little later, with the same reason.
"""
import ctypes
import os
import sys
import threading
import time

from tools.grading.reasons import is_student_file, memory_reason

TICK = 0.05  # seconds between two looks at the stack and the memory
GIB = 2 ** 30
PAGE = os.sysconf("SC_PAGE_SIZE")


class TimedOut(BaseException):
    """Raised in a test that ran too long or held too much memory. A BaseException: `except Exception` in graded
    code lets it pass."""


def resident_bytes(pid: int | str = "self") -> int:
    """Bytes of memory process `pid` (default: this one) holds in RAM (VmRSS: the second field of
    /proc/<pid>/statm, in pages); 0 where unknown."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


class Watchdog:
    """Watches one test at a time (start, stop) from a thread of its own, and stops it with TimedOut."""

    def __init__(self, per_test: float, after_timeout: float, repeat: float, wall_factor: float,
                 timed_out_before: bool = False, slow_functions=(), memory_limit: int | None = None,
                 after_memory: int = GIB // 4):
        """`timed_out_before`: whether a test timed out in an earlier process; `slow_functions`: the functions
        (`file:qualified name`) that ran too long in earlier tests; `memory_limit`: bytes of resident memory
        (None: not watched); `after_memory`: bytes a test may add once an earlier one went over the limit."""
        self.per_test, self.after_timeout, self.repeat, self.wall_factor = per_test, after_timeout, repeat, wall_factor
        self.timed_out_before = timed_out_before
        self.slow_functions = set(slow_functions)
        self.memory_limit, self.after_memory = memory_limit, after_memory
        self.memory_exceeded_before = False
        self.memory_at_start = 0    # resident bytes when the running test started
        self.stopped_for = None     # "time" or "memory": why the running test was stopped
        self.lock = threading.Lock()
        self.main = threading.main_thread().ident
        self.cpu_clock = time.pthread_getcpuclockid(self.main)
        self.test = None        # a fresh object while a test runs, else None
        self.started = None     # (cpu, wall) when the test started
        self.calls = {}         # graded frame on the stack -> (cpu, wall) when first seen
        self.reason = None      # why the running test was stopped
        self.function = None    # the function it was stopped in ("" when it was in none of the graded files)
        threading.Thread(target=self._watch, name="grading-watchdog", daemon=True).start()

    def start(self):
        """Watch the test about to run."""
        self.reason = self.function = self.stopped_for = None
        self.calls = {}
        self.memory_at_start = resident_bytes() if self.memory_limit is not None else 0
        self.started = self._now()
        self.test = object()

    def stop(self) -> tuple[str | None, str | None]:
        """Stop watching; (reason, function) when the test was stopped, else (None, None). A TimedOut still
        pending is cancelled; one raised in here before that is the caller's to catch and call again."""
        with self.lock:  # the watcher raises only while holding it
            self.test = None
            self._cancel()
        self.calls = {}
        return self.reason, self.function

    def _now(self) -> tuple[float, float]:
        return time.clock_gettime(self.cpu_clock), time.monotonic()

    def _seconds(self, since, now) -> float:
        return max(now[0] - since[0], (now[1] - since[1]) / self.wall_factor)

    def _raise(self):
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.main), ctypes.py_object(TimedOut))

    def _cancel(self):
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.main), None)

    def _watch(self):
        while True:
            time.sleep(TICK)
            test = self.test
            if test is None:
                continue
            verdict = self._check()
            with self.lock:
                if verdict is None or self.test is not test:
                    continue
                if self.reason is None:
                    self.reason, self.function, self.stopped_for = verdict
                    if self.stopped_for == "memory":
                        self.memory_exceeded_before = True
                    else:
                        self.timed_out_before = True
                        if self.function:
                            self.slow_functions.add(self.function)
                self._raise()

    def _check(self) -> tuple[str, str, str] | None:
        """(reason, function, "time" or "memory") when the running test has to be stopped now, else None."""
        now = self._now()
        frame, graded = sys._current_frames().get(self.main), []
        while frame is not None:
            if is_student_file(frame.f_code.co_filename):
                graded.append(frame)  # innermost first
            frame = frame.f_back
        self.calls = {frame: self.calls.get(frame, now) for frame in graded}
        if self.reason is not None:  # stopped already: again only while graded code runs on (it caught TimedOut)
            return (self.reason, self.function, self.stopped_for) if graded else None
        memory = self._memory_verdict(graded[0] if graded else None)
        if memory is not None:
            return memory
        if self.started is not None and self._seconds(self.started, now) > self.per_test:
            stuck = next((f for f in graded if self._seconds(self.calls[f], now) >= self.repeat), None)
            where = f" (stopped in {stuck.f_code.co_qualname}, {_line(stuck)})" if stuck else ""
            return f"took longer than {self.per_test:g} s - an endless loop?{where}", _function(stuck), "time"
        for frame in graded:
            function, seconds = _function(frame), self._seconds(self.calls[frame], now)
            name = f"{frame.f_code.co_qualname}()"
            if function in self.slow_functions and seconds > self.repeat:
                return (f"took longer than {self.repeat:g} s in {name} - an endless loop? (it ran too long in an "
                        f"earlier test too; stopped at {_line(frame)})", function, "time")
            if self.timed_out_before and seconds > self.after_timeout:
                return (f"took longer than {self.after_timeout:g} s in {name} - an endless loop? (an earlier test "
                        f"timed out, so each call now gets {self.after_timeout:g} s; stopped at {_line(frame)})",
                        function, "time")
        return None

    def _memory_verdict(self, innermost) -> tuple[str, str, str] | None:
        """(reason, function, "memory") when the process holds more than the memory limit, or, after an earlier
        test went over it, when this test has added more than after_memory; else None."""
        if self.memory_limit is None:
            return None
        held = resident_bytes()
        where = f" (stopped in {innermost.f_code.co_qualname}, {_line(innermost)})" if innermost else ""
        if held > self.memory_limit:
            return memory_reason(self.memory_limit / GIB) + where, _function(innermost), "memory"
        if self.memory_exceeded_before and held - self.memory_at_start > self.after_memory:
            return (f"used {self.after_memory / GIB:g} GiB more memory than when the test started - a list growing in "
                    f"a loop? (an earlier test went over the {self.memory_limit / GIB:g} GiB limit, so each test now "
                    f"gets {self.after_memory / GIB:g} GiB more){where}", _function(innermost), "memory")
        return None


def _function(frame) -> str:
    """`grpo_loss.py:GRPOLoss.forward` for a frame, '' for None."""
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_code.co_qualname}" if frame else ""


def _line(frame) -> str:
    return f"{os.path.basename(frame.f_code.co_filename)} line {frame.f_lineno}"
