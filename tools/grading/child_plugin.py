"""The pytest plugin inside each grading child: tells the grader, through signed records, what happened.

Loaded with `-p tools.grading.child_plugin` into the child that runs one exercise's graded tests
(tools/grading/runner.py starts it). It never decides the score; it reports, and the grader keeps the
books. Records, in order:
  collected  {tests: [{id, name, points}]}        right after collection, before any student code runs
  start      {step: "import"}, then done {step: "import", ok, reason}: the exercise module is imported once,
             up front, so an import that raises, exits or hangs is reported as such (once, not per test)
  start      {id}, then done {id, passed, reason, details} for each test

A test that runs too long or holds too much memory is stopped inside the process by
tools/grading/watchdog.py (the `done` record of one that ran too long carries `timed_out`: the function it was
stopped in), so the tests after it need no fresh process. The frames of a stopped test are cleared at once,
so that what it hoarded is freed before the next test starts.

A test passes only when the test function itself ran to its end: the plugin wraps each collected test
function (before student code is imported) and records whether it returned or raised. pytest's own reports
can only turn a pass into a fail (a broken fixture teardown), never the other way, so student code that
rewrites reports gains nothing; `guard` notices student code that replaces functions the tests rely on.
"""
import functools
import json
import os
import sys
import time
import traceback

import pytest

from tools.grading import channel, guard
from tools.grading.reasons import one_line, reason_for
from tools.grading.watchdog import GIB, TimedOut, Watchdog

MAX_DETAILS = 1500
_COMPLETED = object()


class _Reporter:
    def __init__(self):
        self.send = self._sender(self._read_key(), int(os.environ.pop("COURSE_GRADER_FD")))
        self.exercise = os.environ.pop("COURSE_GRADER_EXERCISE", "")
        limits = json.loads(os.environ.pop("COURSE_GRADER_LIMITS"))
        self.memory_gib = limits["memory_gib"]
        self.watchdog = Watchdog(limits["per_test"], limits["after_timeout"], limits["repeat"], limits["wall_factor"],
                                 limits["timed_out_before"], limits["slow_functions"],
                                 memory_limit=int(self.memory_gib * GIB))
        self.outcomes = {}       # nodeid -> _COMPLETED or the exception the test function raised
        self.phase_errors = {}   # nodeid -> [(phase, exception)] for setup/teardown errors
        self.reports = {}        # nodeid -> pytest's failure text, for the details shown to the student
        self.watched = []
        self.tampered = None     # the first replaced function: once set, no later test can pass

    @staticmethod
    def _read_key() -> bytes:
        """The key arrives on stdin; read it, then point stdin at /dev/null so student code finds nothing."""
        key = b""
        while not key.endswith(b"\n"):
            chunk = os.read(0, 128)
            if not chunk:
                break
            key += chunk
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        return key.strip()

    @staticmethod
    def _sender(key: bytes, fd: int):
        """send(record): the key stays in this closure, not in an attribute that student code could read."""
        def send(record: dict):
            data = channel.encode(key, record)
            while data:
                data = data[os.write(fd, data):]
        return send

    def reason(self, exc: BaseException) -> str:
        return reason_for(exc, self.memory_gib)

    def stop_watching(self) -> tuple[str | None, str | None]:
        """The watchdog's (reason, function) for the test that just ran, once no TimedOut can arrive any more."""
        while True:
            try:
                return self.watchdog.stop()
            except TimedOut:  # raised just before the watchdog was stopped: it is stopped now
                continue


_reporter: _Reporter | None = None


def pytest_configure(config):
    global _reporter
    _reporter = _Reporter()
    config.option.tbstyle = "short"  # the failure text shown under a test in results.json


def _points(item) -> float:
    marker = item.get_closest_marker("points")
    return float(marker.args[0]) if marker and marker.args else 0.0


def _wrap(item, outcomes):
    """Replace the test function by one that records whether the real one returned or raised."""
    original = item.obj

    @functools.wraps(original)
    def graded_test(*args, **kwargs):
        try:
            result = original(*args, **kwargs)
        except BaseException as exc:
            outcomes[item.nodeid] = exc
            if isinstance(exc, TimedOut):  # stopped by the watchdog: free what the test's frames hold
                traceback.clear_frames(exc.__traceback__)
            raise
        outcomes[item.nodeid] = _COMPLETED
        return result

    item.obj = graded_test


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    for item in items:
        if isinstance(item, pytest.Function):  # graded tests are test functions; anything else cannot pass
            _wrap(item, _reporter.outcomes)


def pytest_collectreport(report):
    if report.failed:
        _reporter.send({"kind": "collect_error", "text": str(report.longrepr)[-MAX_DETAILS:]})


def pytest_collection_finish(session):
    early = sorted(name for name in sys.modules if name.startswith(("exercises.", "solutions.")))
    if early:  # the collection is only trustworthy when no graded code has run yet
        _reporter.send({"kind": "collect_error", "text": f"the graded tests imported {', '.join(early)} while "
                        "being collected: import exercises only through the fixtures (training.impl.load)"})
        return
    tests = [{"id": item.nodeid, "name": item.name, "points": _points(item)} for item in session.items]
    _reporter.send({"kind": "collected", "tests": tests})


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    """Snapshot what the guard watches, then import the exercise module once, before the first test."""
    if session.config.option.collectonly or session.testsfailed:
        return None
    _reporter.watched = guard.snapshot()
    if not _reporter.exercise:
        return None
    from training import impl  # the course's one way to import an exercise (COURSE_IMPL picks whose)
    _reporter.send({"kind": "start", "step": "import"})
    try:
        impl.load(_reporter.exercise)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt at import too
        _reporter.send({"kind": "done", "step": "import", "ok": False, "reason": _reporter.reason(exc)})
        return True  # run no test: the grader fails them all with this reason
    _reporter.send({"kind": "done", "step": "import", "ok": True})
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.excinfo is not None and call.when != "call":
        _reporter.phase_errors.setdefault(item.nodeid, []).append((call.when, call.excinfo.value))
    report = outcome.get_result()
    if report.failed:
        _reporter.reports[item.nodeid] = report.longreprtext


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _reporter.send({"kind": "start", "id": item.nodeid})
    started = time.perf_counter()
    _reporter.watchdog.start()
    try:
        yield
    finally:
        stopped, function = _reporter.stop_watching()
        passed, reason = _verdict(item.nodeid)
        if stopped and not _reporter.tampered:
            passed, reason = False, stopped
        details = _reporter.reports.get(item.nodeid, "")
        record = {"kind": "done", "id": item.nodeid, "passed": passed, "reason": reason,
                  "details": details[-MAX_DETAILS:], "seconds": round(time.perf_counter() - started, 3)}
        if stopped and _reporter.watchdog.stopped_for == "time":
            record["timed_out"] = function
        _reporter.send(record)


def _verdict(nodeid: str) -> tuple[bool, str]:
    """(passed, one-line reason). Only the wrapped test function returning normally counts as a pass."""
    if _reporter.tampered is None:
        changed = guard.first_change(_reporter.watched)
        if changed:
            _reporter.tampered = (f"the graded code replaced {changed}: it must not change torch, pytest, "
                                  "or the tests")
    if _reporter.tampered:
        return False, _reporter.tampered
    errors = _reporter.phase_errors.get(nodeid, [])
    setup_errors = [exc for when, exc in errors if when == "setup"]
    if setup_errors:
        return False, _reporter.reason(setup_errors[0])
    outcome = _reporter.outcomes.get(nodeid)
    if outcome is None:
        return False, "the test did not run to its end"
    if outcome is not _COMPLETED:
        return False, _reporter.reason(outcome)
    if errors:
        return False, one_line(f"error after the test: {_reporter.reason(errors[0][1])}")
    return True, ""
