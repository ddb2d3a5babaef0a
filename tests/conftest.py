"""Fixtures shared by the whole suite.

- ``start_method`` / ``ctx``: every test that takes them runs under fork, forkserver
  and spawn.
- ``_no_leaks`` (autouse): fails a test that leaves behind a child process, a zombie,
  a file descriptor, a thread or a /dev/shm entry. Leftovers are killed and reaped
  so that one leaky test can't poison the next.

The test process makes itself a child subreaper, so that descendants orphaned by a
test come back to it and /proc stays honest about them (PID 1 on these machines
does not reap zombies).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

import corral
from corral._core import _lifeline, _linux

START_METHODS = ("fork", "forkserver", "spawn")

# How long a test's processes, threads and fds get to go away by themselves after
# the test body ends. corral reaps within 100 ms; the slack is for loaded CI boxes.
LEAK_GRACE = 3.0


def pytest_configure(config: pytest.Config) -> None:
    _linux.set_child_subreaper(True)
    # Long-lived helpers belong to the session, not to the first test that happens
    # to start them: the stdlib's forkserver, and corral's per-process lifeline pipe
    # (made once, on the first start(), and kept for the life of the process).
    multiprocessing.forkserver.ensure_running()
    _lifeline.child_end()


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    method: str = request.param
    return method


@pytest.fixture
def ctx(start_method: str) -> corral.CorralContext:
    return corral.get_context(start_method)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return its last value.

    For conditions that have no event to wait on (the state of another process in
    /proc). Never used to give another process "time to get ready".
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(interval)


@dataclass(frozen=True)
class _Snapshot:
    children: frozenset[int]
    fds: frozenset[tuple[int, str]]
    threads: frozenset[int]
    shm: frozenset[str]


def _fds() -> frozenset[tuple[int, str]]:
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            out.add((int(name), os.readlink(f"/proc/self/fd/{name}")))
        except FileNotFoundError:  # the fd listdir itself used
            continue
    return frozenset(out)


def _snapshot() -> _Snapshot:
    return _Snapshot(
        children=frozenset(_linux.children_of(os.getpid())),
        fds=_fds(),
        threads=frozenset(t.ident for t in threading.enumerate() if t.ident is not None),
        shm=frozenset(os.listdir("/dev/shm")),
    )


def _describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                comm = f.read().split(b")")[0].split(b"(", 1)[1].decode()
        except (OSError, IndexError):
            comm = "?"
        out.append(f"{pid} ({comm})")
    return out


def _kill_and_reap(pids: set[int]) -> None:
    for pid in pids:
        for victim in [*_linux.descendants_of(pid), pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    before = _snapshot()
    yield
    problems: list[str] = []
    # corral.map keeps its pools for the next call, until interpreter exit; a test
    # is a shorter life, so its kept pools end with it.
    executor = sys.modules.get("corral._executor")
    if executor is not None:
        executor._close_kept()

    def new_children() -> set[int]:
        return set(_linux.children_of(os.getpid())) - before.children

    if not wait_until(lambda: not new_children(), LEAK_GRACE):
        leaked = new_children()
        states = {pid: _linux.proc_state(pid) for pid in leaked}
        zombies = sorted(p for p, s in states.items() if s == "Z")
        alive = sorted(p for p, s in states.items() if s not in ("Z", None))
        if zombies:
            problems.append(f"zombie children nobody reaped: {_describe(zombies)}")
        if alive:
            problems.append(f"child processes still running: {_describe(alive)}")
        _kill_and_reap(leaked)

    def new_threads() -> set[int]:
        alive = {t.ident for t in threading.enumerate() if t.ident is not None}
        return alive - before.threads

    if not wait_until(lambda: not new_threads(), LEAK_GRACE):
        names = [t.name for t in threading.enumerate() if t.ident in new_threads()]
        problems.append(f"threads left running: {names}")

    def new_fds() -> set[tuple[int, str]]:
        gc.collect()
        return set(_fds() - before.fds)

    if not wait_until(lambda: not new_fds(), LEAK_GRACE, interval=0.05):
        problems.append(f"file descriptors left open: {sorted(new_fds())}")

    shm = set(os.listdir("/dev/shm")) - before.shm
    if shm:
        problems.append(f"/dev/shm entries left behind: {sorted(shm)}")

    if problems:
        pytest.fail("test leaked resources:\n  " + "\n  ".join(problems), pytrace=False)
