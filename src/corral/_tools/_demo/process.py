"""Process scenarios: zombies, orphans, tree termination, daemons with children, result().

Each runs the same program with corral and with multiprocessing. The demo process
makes itself a child subreaper, so that orphans come back to it and can be counted
and cleaned up honestly (PID 1 on some machines never reaps them).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import tempfile
import time
from types import ModuleType

import corral
from corral._core import _linux

from . import Report, _targets, _watch, scenario

LIBS: tuple[tuple[str, ModuleType], ...] = (
    ("corral", corral),
    ("multiprocessing", multiprocessing),
)

# The guarantee's bound: a parent's whole subtree is gone this long after it dies.
ORPHAN_BOUND = 1.0


def _subreaper() -> None:
    with contextlib.suppress(OSError):
        _linux.set_child_subreaper(True)


@scenario("zombies", "a child that exits is reaped at once, even if nobody joins it")
def zombies(ns: argparse.Namespace, report: Report) -> None:
    n = 5
    for name, lib in LIBS:
        procs = [lib.Process(target=_targets.exit_now) for _ in range(n)]
        for p in procs:
            p.start()
        pidfds = _watch.pin([p.pid for p in procs])
        _watch.wait_dead(pidfds, 10.0)  # all have exited
        deadline = time.monotonic() + 0.1
        while time.monotonic() < deadline:
            zombie_count = sum(_linux.proc_state(pid) == "Z" for pid in pidfds)
            if zombie_count == 0:
                break
            time.sleep(0.005)
        for fd in pidfds.values():
            os.close(fd)
        for p in procs:
            p.join(10)
        if name == "corral":
            report.check(
                f"corral: no zombies 100 ms after {n} children exited, with no join()",
                zombie_count == 0,
                f"{zombie_count} zombies",
            )
        else:
            report.note(f"multiprocessing: {zombie_count} of {n} were zombies until join()")


@scenario("orphans", "when a parent is SIGKILLed, its children and their descendants go too")
def orphans(ns: argparse.Namespace, report: Report) -> None:
    _subreaper()
    for name, _lib in LIBS:
        parent, pids = _targets.start_parent(name)
        pidfds = _watch.pin(list(_linux.descendants_of(parent.pid)))
        parent.kill()
        parent.wait(10)
        assert parent.stdout is not None
        parent.stdout.close()
        survivors, took = _watch.wait_dead(pidfds, ORPHAN_BOUND)
        mine = [pid for pid in survivors if pid in pids]
        _watch.kill_reap_close(pidfds)
        if name == "corral":
            report.check(
                f"corral: 0 of {len(pids)} descendants alive {ORPHAN_BOUND:g} s after the "
                "parent's SIGKILL (child, subprocess, fork, setsid)",
                not mine,
                f"{len(mine)} alive; all gone in {took * 1000:.0f} ms" if not mine else "",
            )
        else:
            report.note(
                f"multiprocessing: {len(mine)} of {len(pids)} descendants still alive "
                f"{ORPHAN_BOUND:g} s after the parent's SIGKILL"
            )


@scenario("tree-kill", "terminate() ends the child's whole subtree")
def tree_kill(ns: argparse.Namespace, report: Report) -> None:
    _subreaper()
    for name, lib in LIBS:
        r, w = lib.Pipe(duplex=False)
        p = lib.Process(target=_targets.descendants_then_wait, args=(w,))
        p.start()
        w.close()
        descendants = r.recv() if r.poll(60) else []
        r.close()
        pidfds = _watch.pin(descendants)
        p.terminate()
        p.join(10)
        survivors, _ = _watch.wait_dead(pidfds, ORPHAN_BOUND)
        _watch.kill_reap_close(pidfds)
        if name == "corral":
            report.check(
                "corral: terminate() left 0 of 3 descendants running",
                not survivors and len(descendants) == 3,
                f"{len(survivors)} left",
            )
        else:
            report.note(f"multiprocessing: terminate() left {len(survivors)} of 3 descendants")


@scenario("daemon-children", "a daemonic process may start children of its own")
def daemon_children(ns: argparse.Namespace, report: Report) -> None:
    for name, lib in LIBS:
        r, w = lib.Pipe(duplex=False)
        p = lib.Process(target=_targets.start_child_from_daemon, args=(name, w), daemon=True)
        p.start()
        w.close()
        outcome = r.recv() if r.poll(60) else "no answer within 60 s"
        r.close()
        p.join(10)
        if name == "corral":
            report.check(
                "corral: a daemonic child started a child", outcome.startswith("started"), outcome
            )
        else:
            report.note(f"multiprocessing: {outcome}")


@scenario("result", "result() returns the target's value, or re-raises its exception")
def result(ns: argparse.Namespace, report: Report) -> None:
    p = corral.Process(target=pow, args=(2, 10))
    p.start()
    report.check("corral: result() returned the target's value", p.result(timeout=60) == 1024)
    with tempfile.TemporaryDirectory() as tmp:
        printed = os.path.join(tmp, "stderr")
        p = corral.Process(target=_targets.int_with_stderr_to, args=(printed, "not a number"))
        p.start()
        try:
            p.result(timeout=60)
            raised = None
        except ValueError as exc:
            raised = exc
        with open(printed) as f:
            child_stderr = f.read().splitlines()
    # multiprocessing prints a failing target's traceback on the child's stderr; shown
    # here as what it is, not mixed with the PASS lines.
    report.note("(the child printed, as multiprocessing children do:)")
    for line in child_stderr:
        report.note("  | " + line)
    report.check(
        "corral: result() re-raised the child's ValueError with its traceback",
        raised is not None and isinstance(raised.__cause__, corral.RemoteTraceback),
    )
    report.note("multiprocessing: Process has no result(); the return value is dropped")
