"""Run CPython's own multiprocessing and concurrent.futures suites with corral substituted.

    python -m tests.cpython.run_suite [--methods fork,spawn] [--suites mp,cf] [-k TEXT]
                                      [--baseline] [--list-expected]

    parent (this module)                       child (python -m ... --child SUITE METHOD)
    ────────────────────                       ──────────────────────────────────────────
    for each (suite, start method):
      start a child ───────────────────────►   import _mp_suite / _cf_suite (corral in)
                                               run each test under a watchdog:
      read its report pipe  ◄── JSON lines ──    {"start": id} ... {"end": id, outcome}
      child died inside a test (watchdog,        faulthandler dumps every thread and
      crash): that test is "timeout"/"crash";    exits after TEST_TIMEOUT seconds
      start a new child after it
    compare with expected.toml; print a line per class; exit 1 on any surprise

- ``mp``: ``Lib/test/_test_multiprocessing.py``, every class of the "processes"
  flavour, with ``ProcessesMixin`` pointing at corral's Process, Queue, Lock, ...,
  Pool (``_mp_suite``).
- ``cf``: ``test_concurrent_futures``' process-pool classes with
  ``concurrent.futures.ProcessPoolExecutor`` replaced by corral's (``_cf_suite``).
  Fetched from Debian when the interpreter lacks it (``_obtain``).
- ``expected.toml``: every expected difference, with its reason and the test of
  ours that pins corral's behaviour. A listed test that passes is a surprise too.

Test ids are neutral of the start method: ``mp.TestCondition.test_notify``,
``cf.ProcessPoolExecutorTest.test_killed_child``. ``--baseline`` runs the suites
against the stdlib instead (no expectations): a check of the suites themselves on
this interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import fnmatch
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
import unittest
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EXPECTED = HERE / "expected.toml"

# Per-test watchdog (seconds). A passing test of either suite takes at most ~7 s
# here (test_map_timeout sleeps 6 s); the suites' own waits are lowered to 10-15 s
# (substitute.py). Lower catches hangs sooner but risks killing a slow pass on a
# loaded 2-core CI machine.
TEST_TIMEOUT = 30.0

SUITES = {"mp": "tests.cpython._mp_suite", "cf": "tests.cpython._cf_suite"}
FAILED = ("fail", "error", "timeout", "crash")


# --- expectations ---------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    test: str  # a neutral id, or an fnmatch pattern of ids
    outcome: str  # "fail": must not pass; "skip": not run (it can only wait out a
    # timeout); "flaky": either (a known bug)
    reason: str
    ours: str  # the test of ours that pins corral's behaviour
    methods: tuple[str, ...] = ("fork", "forkserver", "spawn")

    def applies(self, test_id: str, method: str) -> bool:
        return method in self.methods and fnmatch.fnmatchcase(test_id, self.test)


def load_expected(path: Path) -> list[Difference]:
    with path.open("rb") as f:
        data = tomllib.load(f)
    out = []
    for row in data.get("difference", []):
        methods = tuple(row.get("methods", Difference.methods))
        if row["outcome"] not in ("fail", "skip", "flaky"):
            raise ValueError(f"{path}: {row['test']}: outcome must be fail, skip or flaky")
        out.append(Difference(row["test"], row["outcome"], row["reason"], row["ours"], methods))
    return out


def expectation(diffs: list[Difference], test_id: str, method: str) -> Difference | None:
    return next((d for d in diffs if d.applies(test_id, method)), None)


# --- the child: runs one suite under one start method ---------------------------------


def neutral_id(test: Any, suite: str) -> str:
    """``mp.TestQueue.test_put`` for every start method's copy of a test."""
    cls = type(test).__name__
    for prefix in ("WithProcesses", "ProcessPoolForkserver", "ProcessPoolFork", "ProcessPoolSpawn"):
        if cls.startswith(prefix):
            cls = cls[len(prefix) :]
            break
    if cls == "_ErrorHolder":  # a failing setUpModule/setUpClass
        return f"{suite}.{test.description}"
    return f"{suite}.{cls}.{test._testMethodName}"


class _Reporter(unittest.TextTestResult):
    """Sends each test's start and outcome to the parent; a watchdog per test."""

    def __init__(self, stream: Any, report: IO[str], suite: str, timeout: float) -> None:
        super().__init__(stream, descriptions=False, verbosity=2)
        self._report = report
        self._suite = suite
        self._timeout = timeout
        self._started = 0.0

    def _send(self, **record: Any) -> None:
        self._report.write(json.dumps(record) + "\n")
        self._report.flush()

    def _arm(self) -> None:
        # fd 2, not sys.stderr: a test may replace sys.stderr (with a StringIO, say).
        faulthandler.dump_traceback_later(self._timeout, exit=True, file=2)

    def startTest(self, test: unittest.TestCase) -> None:
        self._arm()
        self._started = time.monotonic()
        self._send(start=neutral_id(test, self._suite))
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        super().stopTest(test)
        self._arm()  # class and module fixtures between tests are watched too

    def _end(self, test: Any, outcome: str, detail: str = "") -> None:
        seconds = time.monotonic() - self._started
        self._send(end=neutral_id(test, self._suite), outcome=outcome, detail=detail, s=seconds)

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._end(test, "pass")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._end(test, "fail", self.failures[-1][1])

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self._end(test, "error", self.errors[-1][1])

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._end(test, "skip", reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._end(test, "pass", "expected failure (unittest)")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self._end(test, "fail", "unexpected success (unittest)")


def _flatten(suite: unittest.TestSuite) -> Iterator[unittest.TestCase]:
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _flatten(item)
        else:
            yield item


def child(suite_name: str, report_fd: int, after: str | None, skip: list[str], k: str) -> int:
    import importlib

    module = importlib.import_module(SUITES[suite_name])
    tests = list(_flatten(unittest.defaultTestLoader.loadTestsFromModule(module)))
    ids = [neutral_id(t, suite_name) for t in tests]
    start = ids.index(after) + 1 if after in ids else 0
    chosen = unittest.TestSuite(
        t
        for t, i in list(zip(tests, ids, strict=True))[start:]
        if not any(fnmatch.fnmatchcase(i, s) for s in skip) and (not k or k in i)
    )
    with os.fdopen(report_fd, "w") as report:
        stream = unittest.runner._WritelnDecorator(os.fdopen(2, "w", closefd=False))
        result = _Reporter(stream, report, suite_name, TEST_TIMEOUT)
        chosen.run(result)
        faulthandler.cancel_dump_traceback_later()
        report.write(json.dumps({"done": True}) + "\n")
    return 0


# --- the parent -------------------------------------------------------------------------


@dataclass
class Run:
    suite: str
    method: str
    results: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # id -> outcome
    seconds: float = 0.0
    unavailable: str = ""
    note: str = ""


def _environment(method: str, test_path: str, baseline: bool) -> dict[str, str]:
    from . import substitute

    env = dict(os.environ)
    env[substitute.METHOD_VARIABLE] = method
    env[substitute.PATH_VARIABLE] = test_path
    env[substitute.BASELINE_VARIABLE] = "1" if baseline else "0"
    env["PYTHONFAULTHANDLER"] = "1"
    return env


def run_one(run: Run, env: dict[str, str], skip: list[str], k: str, log: IO[str]) -> None:
    """Run one suite under one start method, restarting after a test that never ends."""
    begin = time.monotonic()
    after: str | None = None
    crashed_after: list[str | None] = []
    while True:
        read, write = os.pipe()
        argv = [sys.executable, "-m", "tests.cpython.run_suite", "--child", run.suite]
        argv += ["--report-fd", str(write), "-k", k]
        argv += ["--after", after] if after else []
        for s in skip:
            argv += ["--skip", s]
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            pass_fds=(write,),
            stdout=log,
            stderr=log,
            start_new_session=True,  # a stdlib baseline's orphans are killed with it
        )
        os.close(write)
        current: str | None = None
        started = 0.0
        done = False
        with os.fdopen(read) as report:
            for line in report:
                record = json.loads(line)
                if "start" in record:
                    current, started = record["start"], time.monotonic()
                elif "end" in record:
                    outcome = (record["outcome"], record["detail"], record["s"])
                    run.results[record["end"]] = outcome
                    if record["end"] == current:
                        after, current = current, None
                elif record.get("done"):
                    done = True
        code = proc.wait()
        _kill_group(proc.pid)
        if done or (current is None and code == 0):
            break
        if current is None:  # died between tests (a fixture hung or crashed)
            run.results[f"{run.suite}.<fixture after {after}>"] = ("crash", f"exit {code}", 0.0)
            if after in crashed_after:
                break  # no progress since the last such death
            crashed_after.append(after)
            continue
        took = time.monotonic() - started
        kind = "timeout" if took >= TEST_TIMEOUT - 1 else "crash"
        detail = f"no outcome after {took:.0f} s (exit status {code}); see the log"
        run.results[current] = (kind, detail, took)
        after = current
    run.seconds = time.monotonic() - begin


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _class_of(test_id: str) -> str:
    return test_id.rsplit(".", 1)[0]


def report(runs: list[Run], diffs: list[Difference], baseline: bool) -> int:
    surprises: list[str] = []
    for run in runs:
        head = f"{run.suite:<3} {run.method:<10}"
        if run.unavailable:
            print(f"{head} UNAVAILABLE: {run.unavailable}")
            surprises.append(f"{head} unavailable")
            continue
        print(f"{head} {run.note} ({run.seconds:.0f} s)")
        classes: dict[str, list[str]] = {}
        for test_id in run.results:
            classes.setdefault(_class_of(test_id), []).append(test_id)
        for cls, ids in classes.items():
            counts = {"passed": 0, "skipped": 0, "expected": 0, "flaky": 0, "UNEXPECTED": 0}
            for test_id in ids:
                outcome, detail, _ = run.results[test_id]
                diff = None if baseline else expectation(diffs, test_id, run.method)
                failed = outcome in FAILED
                if outcome == "skip":
                    counts["skipped"] += 1
                elif diff is not None and diff.outcome == "flaky":
                    counts["flaky"] += 1
                    print(f"    {test_id}: known flaky, {outcome} this time")
                elif diff is not None and failed:
                    counts["expected"] += 1
                elif diff is None and not failed:
                    counts["passed"] += 1
                else:
                    counts["UNEXPECTED"] += 1
                    what = f"unexpected {outcome}" if failed else "unexpected pass"
                    surprises.append(f"{head} {test_id}: {what}\n{_indent(detail)}")
            shown = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
            print(f"    {cls:<45} {shown}")
    if surprises:
        print(f"\n{len(surprises)} surprise(s):")
        for s in surprises:
            print(f"- {s}")
    return 1 if surprises else 0


def _indent(text: str, keep: int = 25) -> str:
    lines = text.rstrip().splitlines()[-keep:]
    return "\n".join("      " + line for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cpython.run_suite")
    parser.add_argument("--methods", default="fork,spawn")
    parser.add_argument("--suites", default="mp,cf")
    parser.add_argument("-k", default="", help="only test ids containing this text")
    parser.add_argument("--baseline", action="store_true", help="the stdlib, not corral")
    parser.add_argument("--jobs", type=int, default=2, help="suite runs at once")
    parser.add_argument("--log", default=str(ROOT / ".cpython-suite.log"))
    parser.add_argument(
        "--allow-unavailable",
        action="store_true",
        help="a suite that can't be found or fetched is reported, not a failure",
    )
    parser.add_argument("--child")
    parser.add_argument("--report-fd", type=int)
    parser.add_argument("--after")
    parser.add_argument("--skip", action="append", default=[])
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.report_fd, args.after, args.skip, args.k)
    return parent(args)


def parent(args: argparse.Namespace) -> int:
    from . import _obtain

    diffs = load_expected(EXPECTED)
    runs = [Run(s, m) for m in args.methods.split(",") for s in args.suites.split(",")]
    sources: dict[str, str] = {}
    for run in runs:
        name = "_test_multiprocessing" if run.suite == "mp" else "test_concurrent_futures"
        try:
            source = _obtain.find(name)
        except _obtain.Unavailable as exc:
            run.unavailable = str(exc)
            continue
        run.note = source.note
        sources[run.suite] = "" if source.shipped else str(source.directory)
    begin = time.monotonic()
    with open(args.log, "w") as log:
        # Longest first (cf before mp, spawn before fork: about 80, 55, 50 and 25 s
        # here), so that two jobs end together.
        pending = sorted(
            (r for r in runs if not r.unavailable),
            key=lambda r: (r.suite != "cf", r.method == "fork"),
        )
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    if not pending:
                        return
                    run = pending.pop(0)
                skip = [] if args.baseline else _skips(diffs, run)
                env = _environment(run.method, sources[run.suite], args.baseline)
                run_one(run, env, skip, args.k, log)

        threads = [threading.Thread(target=worker) for _ in range(max(1, args.jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if args.allow_unavailable:
        for run in runs:
            if run.unavailable:
                print(f"{run.suite} {run.method}: not run ({run.unavailable})")
        runs = [r for r in runs if not r.unavailable]
    status = report(runs, diffs, args.baseline)
    print(f"\n{time.monotonic() - begin:.0f} s in all; children's output in {args.log}")
    return status


def _skips(diffs: list[Difference], run: Run) -> list[str]:
    """The tests expected.toml says not to run here; reported as skipped."""
    out = [
        d.test
        for d in diffs
        if d.outcome == "skip" and run.method in d.methods and d.test.startswith(run.suite + ".")
    ]
    for test in out:
        run.results[test] = ("skip", "not run: an expected difference (expected.toml)", 0.0)
    return out


if __name__ == "__main__":
    sys.exit(main())
