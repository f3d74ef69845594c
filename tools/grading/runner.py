"""Runs the graded tests in child processes and turns whatever happens to them into verdicts.

One child per exercise (a Python + pytest + torch start costs seconds, so not one per test), up to
`jobs` at a time. Each child gets a fresh copy of the course folder, its own process group, a random key on
stdin for signing its records (tools/grading/channel.py), and two pipes the grader drains all the time:
the record channel and the child's stdout+stderr. The grader enforces the limits from outside, where student
code cannot switch them off:
  - per step (the exercise import, each test): `per_test` seconds of CPU time of the child's main thread
    (so a busy machine does not fail slow-but-correct code), or `WALL_FACTOR` times that in wall time (a
    step that sleeps or waits forever), then the child is killed. Inside the child, tools/grading/watchdog.py
    stops a test at that limit first (and a single call of a function that ran too long before after
    `repeat` seconds, of any graded function once a test has timed out after `after_timeout`), so the tests
    after it need no fresh child; the kill, KILL_GRACE seconds later, is for code that resists;
  - per step: `memory_gib` GiB of resident memory (VmRSS) of the child. The watchdog inside stops a test
    there (and, once one has, a later test that adds a quarter GiB), so the tests after it need no fresh
    child; past MEMORY_KILL_FACTOR times the limit (code that resists; at the import, past the limit itself) the
    child is killed. Its address space is capped at ADDRESS_SPACE_FACTOR times the limit (RLIMIT_AS), so that an
    allocation far beyond it fails at once (torch's "can't allocate memory", a MemoryError: the test fails
    with a memory reason);
  - per step: `max_output` bytes printed, then the child is killed;
  - the whole run: `whole_run` seconds.
When a child dies or is killed in the middle of a test, that test fails with the reason and the tests
still to run go to a fresh child. If it dies while importing the exercise, all of that exercise's tests
fail with that reason (the next child would import the same file again).
"""
import ctypes
import json
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from tools.grading import channel
from tools.grading.reasons import memory_reason
from tools.grading.report import Report, GradedTest, test_name
from tools.grading.tree import Fingerprint, installation_fingerprint, write_tree
from tools.grading.watchdog import GIB, resident_bytes

STEP_OUTPUT_KEPT = 1024   # bytes of a test's printed output kept for the report
WALL_FACTOR = 3           # a step may take this many times its CPU limit in wall time
KILL_GRACE = 1.0          # seconds past the limit before a test the watchdog could not stop is killed
ADDRESS_SPACE_FACTOR = 2  # a child's address space may be this many times its memory limit
MEMORY_KILL_FACTOR = 1.25  # a child holding this many times its memory limit is killed (the watchdog stops at 1)
TAIL_KEPT = 2048          # bytes of a child's last output kept to explain a crash


@dataclass
class Limits:
    per_test: float = 10.0
    after_timeout: float = 2.0    # once a test timed out: seconds for one call into graded code
    repeat: float = 0.25          # seconds for one call of a function that ran too long before
    memory_gib: float = 4.0       # resident memory of one child
    whole_run: float = 600.0
    startup: float = 120.0        # Python + torch + pytest start and collection, on a busy machine
    max_output: int = 1_000_000   # bytes printed by one step
    jobs: int = 2


@dataclass
class Job:
    exercise: str
    ids: list[str] | None = None  # None: the whole test file; else the tests still to run
    reason_override: str = ""     # e.g. "file not submitted": only collect the tests, and fail each with it


def test_file(exercise: str) -> str:
    return f"tests/autograder/test_{exercise}.py"


def become_subreaper():
    """Make orphaned descendants (a daemon a submission forks off) our children, so we can end them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass  # not Linux: orphans escape to init; the process-group kill still covers ordinary cases


def kill_orphans(keep: set[int]):
    """SIGKILL each direct child of ours that is not a running grading child and not in our session: an
    orphan that a grading child left behind (the grading children each lead a session of their own).
    Repeated while it finds some, since killing an orphan hands its own children over to us."""
    me, my_session = str(os.getpid()), str(os.getsid(0))
    for _ in range(50):
        found = []
        for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
            if not entry.isdigit() or int(entry) in keep:
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[3] != my_session:
                found.append(int(entry))
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
        if not found:
            return


def cap_address_space(limit: int):
    """A preexec_fn for Popen: the child's address space (RLIMIT_AS, soft and hard) at most `limit` bytes."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main_thread_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by the main thread of process `pid`; None where unknown."""
    try:
        with open(f"/proc/{pid}/task/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Child:
    """One pytest process running (part of) one exercise's graded tests."""

    def __init__(self, job: Job, files, impl: str, workdir: Path, limits: Limits, timed_out_before: bool,
                 slow_functions: list[str]):
        """`timed_out_before`, `slow_functions`: what earlier children found (for the watchdog's limits)."""
        self.job, self.limits = job, limits
        self.dir = Path(tempfile.mkdtemp(prefix=f"{job.exercise}-", dir=workdir))
        write_tree(files, self.dir)
        self.fingerprint = Fingerprint(folders=[self.dir])
        self.key = channel.new_key()
        self.records = channel.LineReader()
        self.current = None               # "import", a test id, or None between steps
        self.started = self.step_started = time.monotonic()
        self.step_cpu = None
        self.step_bytes, self.step_output, self.tail = 0, bytearray(), bytearray()
        self.collected = False
        self.done: set[str] = set()
        self.killed_because = None        # ("timeout" | "flood" | "stopped", text) when the grader killed it
        read_records, write_records = os.pipe()
        read_key, write_key = os.pipe()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST", "COURSE_", "COV"))}
        settings = dict(per_test=limits.per_test, after_timeout=limits.after_timeout, repeat=limits.repeat,
                        wall_factor=WALL_FACTOR, timed_out_before=timed_out_before,
                        slow_functions=slow_functions, memory_gib=limits.memory_gib)
        env.update(COURSE_IMPL=impl, COURSE_GRADER_FD=str(write_records), COURSE_GRADER_EXERCISE=job.exercise,
                   COURSE_GRADER_LIMITS=json.dumps(settings), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", MPLBACKEND="Agg")
        # One thread per child: `jobs` children already share the cores, and the graded tests' tensors are tiny
        # (with torch's default threads, grading the solutions takes twice the time and twice the CPU).
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
        targets = job.ids if job.ids is not None else [test_file(job.exercise)]
        if job.reason_override:
            targets = ["--collect-only", *targets]
        command = [sys.executable, "-E", "-s", "-B", "-u", "-m", "pytest", "-p", "tools.grading.child_plugin",
                   "-p", "no:cacheprovider", "-p", "no:terminal", "-s", "-o", "addopts=",
                   "-c", "pytest.ini", "--rootdir", ".", *targets]
        address_space = int(ADDRESS_SPACE_FACTOR * limits.memory_gib * GIB)
        self.process = subprocess.Popen(command, cwd=self.dir, env=env, stdin=read_key, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, pass_fds=(write_records,),
                                        start_new_session=True, preexec_fn=cap_address_space(address_space))
        os.close(write_records)
        os.close(read_key)
        os.write(write_key, self.key + b"\n")
        os.close(write_key)
        self.record_fd, self.output_fd = read_records, self.process.stdout.fileno()
        for fd in (self.record_fd, self.output_fd):
            os.set_blocking(fd, False)

    def kill(self, kind: str, text: str):
        if self.killed_because is None:
            self.killed_because = (kind, text)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except OSError:
            pass

    def begin_step(self, step: str):
        self.current, self.step_started = step, time.monotonic()
        self.step_cpu = main_thread_cpu(self.process.pid)
        self.step_bytes, self.step_output = 0, bytearray()

    def take_output(self, data: bytes):
        self.step_bytes += len(data)
        self.step_output = (self.step_output + data)[-STEP_OUTPUT_KEPT:]
        self.tail = (self.tail + data)[-TAIL_KEPT:]

    def step_too_long(self, now: float, limit: float) -> bool:
        """More than `limit` CPU seconds in this step, or WALL_FACTOR * `limit` wall seconds."""
        if now - self.step_started > WALL_FACTOR * limit:
            return True
        cpu = main_thread_cpu(self.process.pid)
        if cpu is None or self.step_cpu is None:
            return now - self.step_started > limit  # no /proc: wall time only
        return cpu - self.step_cpu > limit

    def printed(self) -> str:
        text = bytes(self.step_output).decode("utf-8", "replace").strip()
        return f"printed output (last {STEP_OUTPUT_KEPT} bytes):\n{text}" if text else ""

    def exit_text(self) -> str:
        code = self.process.returncode
        if code is not None and code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def close(self):
        for fd in (self.record_fd,):
            try:
                os.close(fd)
            except OSError:
                pass
        self.process.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Runner:
    report: Report
    files: dict                         # the course folder, in memory (tools/grading/tree.py)
    impl: str
    limits: Limits
    jobs: deque = field(default_factory=deque)
    out: object = sys.stdout
    installation_changed: str | None = None
    timed_out: bool = False                           # whether a test timed out
    slow_functions: set = field(default_factory=set)  # graded functions that ran too long in a test

    def run(self):
        become_subreaper()
        installation = installation_fingerprint()
        workdir = Path(tempfile.mkdtemp(prefix="course-grading-"))
        selector = selectors.DefaultSelector()
        running: list[Child] = []
        deadline = time.monotonic() + self.limits.whole_run
        self.report.write_json("grading...")
        try:
            while self.jobs or running:
                while self.jobs and len(running) < self.limits.jobs:
                    job = self.jobs.popleft()
                    child = Child(job, self.files, self.impl, workdir, self.limits, self.timed_out,
                                  sorted(self.slow_functions))
                    selector.register(child.record_fd, selectors.EVENT_READ, (child, "records"))
                    selector.register(child.output_fd, selectors.EVENT_READ, (child, "output"))
                    running.append(child)
                for key, _ in selector.select(timeout=0.05):
                    child, kind = key.data
                    self._read(child, kind, selector)
                now = time.monotonic()
                for child in list(running):
                    if now > deadline:
                        child.kill("stopped", f"not graded: the whole run took longer than "
                                              f"{self.limits.whole_run:g} s")
                    else:
                        self._enforce_limits(child, now)
                    if child.process.poll() is not None:
                        running.remove(child)
                        self._finish(child, selector, installation)
                        kill_orphans(keep={c.process.pid for c in running})
                if now > deadline:
                    for job in self.jobs:
                        self._fail_job(job, f"not graded: the whole run took longer than {self.limits.whole_run:g} s")
                    self.jobs.clear()
                self.report.print_ready(self.out)
        finally:
            for child in running:
                child.kill("stopped", "not graded: grading was interrupted")
                child.process.wait()
                child.close()
            kill_orphans(keep=set())
            shutil.rmtree(workdir, ignore_errors=True)
        if self.installation_changed:
            self.report.fail(self.report.all_tests(), f"the graded code changed the Python installation "
                             f"({self.installation_changed}): no test result can be trusted", even_passed=True)

    # ---- reading the pipes
    def _read(self, child: Child, kind: str, selector):
        fd = child.record_fd if kind == "records" else child.output_fd
        for _ in range(16):  # at most 1 MB per call, so that a flood cannot keep the limits from being checked
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                selector.unregister(fd)
                return
            if kind == "output":
                child.take_output(data)
            else:
                for line in child.records.feed(data):
                    record = channel.decode(child.key, line)
                    if record is not None:
                        self._handle(child, record)

    def _handle(self, child: Child, record: dict):
        exercise, kind = child.job.exercise, record.get("kind")
        if kind == "collected" and not child.collected:
            child.collected = True
            if child.job.ids is None:  # the first child of this exercise: no student code has run in it yet
                self.report.set_tests(exercise, [
                    GradedTest(id=t["id"], exercise=exercise, name=test_name(exercise, t["name"]),
                               points=float(t["points"]))
                    for t in record.get("tests", []) if str(t.get("id", "")).startswith(test_file(exercise))])
        elif kind == "collect_error":
            self.report.errors.setdefault(exercise, "the graded tests could not be collected: "
                                          + str(record.get("text", ""))[-1500:])
        elif kind == "start" and record.get("step") == "import":
            child.begin_step("import")
        elif kind == "done" and record.get("step") == "import" and child.current == "import":
            child.current = None
            if not record.get("ok"):
                self.report.fail(self._expected(child), f"importing {exercise}.py failed: {record.get('reason')}",
                                 child.printed())
        elif kind == "start" and record.get("id") in self._expected_ids(child):
            child.begin_step(record["id"])
        elif kind == "done" and record.get("id") == child.current and child.current not in child.done:
            test = self.report.test(exercise, child.current)
            child.done.add(child.current)
            child.current = None
            if "timed_out" in record:  # the watchdog stopped it, in this function ("": in none of the graded files)
                self.timed_out = True
                if record["timed_out"]:
                    self.slow_functions.add(str(record["timed_out"]))
            changed = child.fingerprint.first_change()
            if changed:
                child.kill("tamper", self._tamper_reason(child, changed))
            elif test is not None and test.passed is None:
                output = "\n\n".join(p for p in (str(record.get("details", "")), child.printed()) if p)
                self.report.verdict(test, bool(record.get("passed")), str(record.get("reason", "")), output)

    def _expected(self, child: Child) -> list[GradedTest]:
        tests = self.report.tests[child.job.exercise] or []
        if child.job.ids is None:
            return tests
        return [t for t in tests if t.id in child.job.ids]

    def _expected_ids(self, child: Child) -> set[str]:
        return {t.id for t in self._expected(child) if t.passed is None}

    @staticmethod
    def _tamper_reason(child: Child, path: str) -> str:
        rel = os.path.relpath(path, child.dir)
        return f"the graded code changed the grader's files ({rel}): no points for this exercise"

    # ---- limits
    def _enforce_limits(self, child: Child, now: float):
        exercise, limits = child.job.exercise, self.limits
        held = resident_bytes(child.process.pid) if child.current is not None else 0
        factor = 1.0 if child.current == "import" else MEMORY_KILL_FACTOR  # no watchdog runs during the import
        if held > factor * limits.memory_gib * GIB:
            doing = f"importing {exercise}.py " if child.current == "import" else ""
            child.kill("memory", doing + memory_reason(limits.memory_gib))
        elif child.current == "import":
            if child.step_too_long(now, limits.per_test):
                child.kill("timeout", f"importing {exercise}.py took longer than {limits.per_test:g} s"
                                      f" - an endless loop at import?")
            elif child.step_bytes > limits.max_output:
                child.kill("flood", f"importing {exercise}.py printed more than {limits.max_output / 1_000_000:g}"
                                    f" MB - a print inside a loop?")
        elif child.current is not None:
            if child.step_too_long(now, limits.per_test + KILL_GRACE):
                child.kill("timeout", f"took longer than {limits.per_test:g} s - an endless loop?")
                self.timed_out = True
            elif child.step_bytes > limits.max_output:
                child.kill("flood", f"printed more than {limits.max_output / 1_000_000:g} MB of output"
                                    f" - a print inside a loop?")
        elif not child.collected and now - child.started > limits.startup:
            child.kill("startup", f"the test process did not start within {limits.startup:g} s")
        elif child.step_bytes > limits.max_output:  # printing between tests (a thread the submission started)
            child.kill("flood", f"printed more than {limits.max_output / 1_000_000:g} MB of output"
                                f" - a print inside a loop?")

    # ---- a child has ended
    def _finish(self, child: Child, selector, installation: Fingerprint):
        child.kill("ended", "")  # its process group: anything it left running
        child.process.wait()
        for kind, fd in (("records", child.record_fd), ("output", child.output_fd)):
            if fd in selector.get_map():
                self._read(child, kind, selector)
                if fd in selector.get_map():
                    selector.unregister(fd)
        exercise = child.job.exercise
        kind, text = child.killed_because if child.killed_because[0] != "ended" else (None, "")
        changed = child.fingerprint.first_change()
        if kind == "tamper" or changed:
            text = text if kind == "tamper" else self._tamper_reason(child, changed)
            self.report.fail(self.report.tests[exercise] or [], text, even_passed=True)
            self.jobs = deque(j for j in self.jobs if j.exercise != exercise)
        self.installation_changed = self.installation_changed or installation.first_change()
        expected = [t for t in self._expected(child) if t.passed is None]
        tail = bytes(child.tail).decode("utf-8", "replace").strip()
        how = child.exit_text()
        if self.report.tests[exercise] is None:  # never collected: a fault of the grader or the tests
            self.report.errors.setdefault(exercise, f"the graded tests could not be collected ({how}): {tail[-1500:]}")
        elif child.job.reason_override:
            self.report.fail(expected, child.job.reason_override)
        elif child.current == "import":
            reason = text or f"importing {exercise}.py ended the process ({how}) - os._exit() at import?"
            self.report.fail(expected, reason, child.printed())
        elif expected and kind is None and child.current is None and child.done:
            self.jobs.appendleft(Job(exercise, [t.id for t in expected]))  # pytest stopped early (a KeyboardInterrupt)
        elif expected:
            # The test that was running when the child died is to blame; if none was and none had finished,
            # the first test still to run is (it was about to start: something at startup killed the child).
            culprit = self.report.test(exercise, child.current) if child.current else expected[0]
            if kind == "stopped":
                self.report.fail(expected, text)
            else:
                if text:
                    reason = text
                elif child.current:
                    reason = f"the process running this test ended ({how}) - os._exit() or a crash in your code?"
                else:
                    reason = f"the process ended between tests ({how}) - something your code started ended it?"
                self.report.fail([culprit], reason,
                                 "\n\n".join(p for p in (child.printed(), f"last output:\n{tail}") if p))
                rest = [t.id for t in expected if t is not culprit]
                if rest:
                    self.jobs.appendleft(Job(exercise, rest))
        child.close()

    def _fail_job(self, job: Job, reason: str):
        tests = self.report.tests[job.exercise]
        if tests is None:
            self.report.errors.setdefault(job.exercise, reason)
        else:
            self.report.fail([t for t in tests if job.ids is None or t.id in job.ids], reason)
