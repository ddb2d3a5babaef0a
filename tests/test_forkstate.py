"""What an ``os.fork()`` child lets go of (``_core/_forkstate.py``), on both paths.

The fork closes, first thing, the files that only the forking process may hold
(its supervisor's socket and pidfd, its lifeline's write end, its reaper's epoll
and wake pipe), putting /dev/null under the numbers that a Python object owns;
the rest of the parent's state is dropped on the child's first use of corral.
Each row runs in a child interpreter (``CORRAL_PURE_PYTHON`` is read at import),
which forks a raw child and reports what that child holds, before and after it
starts a corral child of its own.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest

import corral
from corral._core import _forkstate, _started, _supervisor
from corral._core._native import speedups

TIMEOUT = 60.0
# How long a lock nobody holds may take to acquire, on the busiest machine.
FREE_LOCK_WAIT = 5.0

PATHS = [
    pytest.param("c", marks=pytest.mark.skipif(speedups is None, reason="no C extension")),
    "pure",
]

# Run as ``python -c SCRIPT [closerange]``: prints one JSON line.
_SCRIPT = r"""
import json, os, sys
import corral
from corral._core import _forkstate, _reaper, _supervisor

def target(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None

ctx = corral.get_context("fork")
gate = ctx.Event()
p = ctx.Process(target=gate.wait, args=(60,))
p.start()  # the lifeline, the supervisor and the reaper now exist
reaper = _reaper._reaper
slots = {
    "supervisor socket": _supervisor._sock.fileno(),
    "supervisor pidfd": _supervisor._pidfd,
    "lifeline write end": _forkstate.fd(_forkstate.LIFELINE_WRITE),
    "reaper epoll": reaper._epoll.fileno(),
    "reaper wake read": reaper._wake_r,
    "reaper wake write": reaper._wake_w,
}
theirs = {name: target(fd) for name, fd in slots.items()}
supervisor = _supervisor.pid()
def nulls():
    return sorted(n for n in map(int, os.listdir("/proc/self/fd")) if target(n) == "/dev/null")
parent_nulls = nulls()
closerange = sys.argv[1:] == ["closerange"]
generation = _forkstate.generation()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    report = {}
    try:
        report["generation moved"] = _forkstate.generation() == generation + 1
        report["before"] = {name: target(fd) for name, fd in slots.items()}
        if closerange:  # as a daemonizing program does, then a file of its own
            os.closerange(3, w)
            os.closerange(w + 1, 1 << 16)
            sock = slots["supervisor socket"]
            fd = os.open("/proc/self/status", os.O_RDONLY)
            os.dup2(fd, sock)
            os.close(fd)
        q = ctx.Process(target=os.getpid)
        q.start()
        report["own child ran"] = q.result(timeout=60) == q.pid
        q.close()
        held = []
        for n in map(int, os.listdir("/proc/self/fd")):
            t = target(n)
            try:
                with open(f"/proc/self/fdinfo/{n}") as f:
                    info = f.read()
            except OSError:  # (listdir's own fd, gone by now)
                continue
            writes = int(info.split("flags:")[1].split()[0], 8) & os.O_ACCMODE == os.O_WRONLY
            if t == theirs["supervisor socket"]:
                held.append("supervisor socket")
            if t == theirs["lifeline write end"] and writes:
                held.append("lifeline write end")
            if t == theirs["reaper wake read"]:
                held.append("reaper wake pipe")
            if f"Pid:\t{supervisor}\n" in info:
                held.append("supervisor pidfd")
        report["parent's files held"] = sorted(held)
        report["nulls"] = nulls()
        if closerange:
            sock = slots["supervisor socket"]
            report["own file kept"] = target(sock) == "/proc/{}/status".format(os.getpid())
    finally:
        os.write(w, json.dumps(report).encode())
        _supervisor.close()  # (its own, reaped here: os._exit runs no finalizer)
        os._exit(0)
os.close(w)
os.waitpid(pid, 0)
report = json.loads(os.read(r, 1 << 16))
gate.set()
p.join(60)
report["theirs"] = theirs
report["parent nulls"] = parent_nulls
print(json.dumps(report))
"""


def _run(path: str, *args: str) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("CORRAL_PURE_PYTHON", None)
    if path == "pure":
        env["CORRAL_PURE_PYTHON"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=True,
    ).stdout
    report: dict[str, Any] = json.loads(out.splitlines()[-1])
    return report


@pytest.mark.parametrize("path", PATHS)
def test_a_fork_child_holds_none_of_its_parents_own_files(path: str) -> None:
    report = _run(path)
    assert report["generation moved"]
    theirs = report["theirs"]
    assert all(t is not None and t != "/dev/null" for t in theirs.values()), theirs
    # At once: closed, or /dev/null under the numbers a Python object owns.
    assert report["before"] == {
        "supervisor socket": "/dev/null",
        "supervisor pidfd": None,
        "lifeline write end": None,
        "reaper epoll": "/dev/null",
        "reaper wake read": None,
        "reaper wake write": None,
    }
    # On first use: a supervisor, lifeline and reaper of its own, and the /dev/null
    # left by the fork closed (the parent's own /dev/null fds are inherited as is).
    assert report["own child ran"]
    assert report["parent's files held"] == []
    assert report["nulls"] == report["parent nulls"]


@pytest.mark.parametrize("path", PATHS)
def test_a_fork_child_that_closed_every_fd_keeps_the_files_it_opened(path: str) -> None:
    """A child that closed every fd and opened a file under a number the fork had
    left on /dev/null keeps that file when it later uses corral: the parent's
    socket object there is never closed (``_forkstate.let_go``)."""
    report = _run(path, "closerange")
    assert report["own child ran"]
    assert report["own file kept"]


def test_a_lock_held_by_a_thread_at_the_fork_is_not_the_childs() -> None:
    """``_started``'s lock, held by another thread of the parent when it forks, is
    not the fork child's: the child makes its own on first use (``PerFork``), and
    starts children; the parent's lock is the parent's still."""
    state = _started.state()
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with state.lock:
            taken.set()
            release.wait(TIMEOUT)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(TIMEOUT)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                own = _started.state()
                ok = own is not state and own.lock.acquire(timeout=FREE_LOCK_WAIT)
                if ok:
                    own.lock.release()
                q = corral.get_context("fork").Process(target=int)
                q.start()
                ok = ok and q.result(timeout=TIMEOUT) == 0 and own.count == 1
                os.write(w, b"1" if ok else b"0")
            finally:
                _supervisor.close()  # (its own, reaped here: os._exit runs no finalizer)
                os._exit(0)
        os.close(w)
        got = b"hung"  # (the child writes before it exits, or never: EOF)
        try:
            if select.select([r], [], [], FREE_LOCK_WAIT + TIMEOUT)[0]:
                got = os.read(r, 1)
        finally:
            os.close(r)
            if got == b"hung":
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert got == b"1"
        assert _started.state() is state
    finally:
        release.set()
        holder.join(TIMEOUT)


def test_per_fork_objects_are_made_once_per_generation() -> None:
    made: list[object] = []

    def factory() -> object:
        made.append(object())
        return made[-1]

    per_fork = _forkstate.PerFork(factory)
    first = per_fork.get()
    assert per_fork.get() is first
    assert made == [first]
