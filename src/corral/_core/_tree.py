"""Ending a whole process subtree, with nothing escaping.

Killing a parent before its children lets the children be re-parented away, out of
reach. Killing children first races with new forks. So a subtree is first *frozen*
from the top down (SIGSTOP, and wait until the stop has taken effect, so that a
fork in flight has finished), every member is pinned with a pidfd (no pid-reuse
race), and only then is the signal sent, from the bottom up.

A frozen parent cannot reap, so a pid read from its children list cannot be
recycled before we open a pidfd on it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time

from . import _linux

__all__ = ["Member", "freeze_subtree", "kill_own_descendants", "signal_members", "wait_dead"]

# How long to wait for one process to enter the stopped state after SIGSTOP. A
# process in uninterruptible sleep (D) stops only when it leaves it; past this
# bound it is signalled anyway, at the cost of possibly missing a child it forks
# in that instant.
STOP_TIMEOUT = 0.25

_STOPPED_OR_GONE = frozenset({"T", "t", "Z", "X", None})

Member = tuple[int, int]  # (pid, pidfd)


def _wait_stopped(pid: int) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT
    delay = 0.0
    while _linux.proc_state(pid) not in _STOPPED_OR_GONE and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(0.002, delay + 0.0002)


def _open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def _send(pidfd: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, sig)


def freeze_subtree(root_pid: int, root_pidfd: int | None) -> list[Member]:
    """Stop ``root_pid`` (unless ``root_pidfd`` is None, meaning "this process") and
    every descendant, parents first. Returns the descendants, parents first; the
    root is not included. The caller owns the returned pidfds.
    """
    if root_pidfd is not None:
        _send(root_pidfd, signal.SIGSTOP)
        _wait_stopped(root_pid)
    members: list[Member] = []
    pending = [root_pid]
    seen = {root_pid}
    while pending:
        parent = pending.pop()
        for child in _linux.children_of(parent):
            if child in seen:
                continue
            fd = _open(child)
            if fd is None:
                continue
            seen.add(child)
            _send(fd, signal.SIGSTOP)
            _wait_stopped(child)
            members.append((child, fd))
            pending.append(child)
    return members


def signal_members(members: list[Member], sig: int) -> None:
    """Send ``sig`` to frozen members, children before parents, then let them run."""
    for _, fd in reversed(members):
        _send(fd, sig)
    if sig != signal.SIGKILL:
        for _, fd in members:
            _send(fd, signal.SIGCONT)


def wait_dead(pidfds: list[int], timeout: float) -> bool:
    """Wait until every pidfd reports its process has exited. True if all did."""
    deadline = time.monotonic() + timeout
    remaining = list(pidfds)
    while remaining:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        poller = select.poll()
        for fd in remaining:
            poller.register(fd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(left * 1000)}
        remaining = [fd for fd in remaining if fd not in ready]
    return True


def close_members(members: list[Member]) -> None:
    for _, fd in members:
        os.close(fd)


def kill_own_descendants(timeout: float = 1.0) -> None:
    """SIGKILL every descendant of this process and reap the ones that come back to it.

    Called by a corral child as it exits, and when its parent dies. The process is a
    child subreaper, so every orphan in its subtree has been re-parented to it and is
    found here, including those that called setsid().
    """
    try:
        # One syscall answers the common case: a process with no children at all has
        # no descendants either (a subreaper's orphans become its children).
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return
    me = os.getpid()
    members = freeze_subtree(me, None)
    if not members:
        return
    try:
        signal_members(members, signal.SIGKILL)
        wait_dead([fd for _, fd in members], timeout)
        # Every member is dead, so every re-parenting has happened: reap them all.
        while True:
            try:
                if os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG) is None:
                    break
            except ChildProcessError:
                break
    finally:
        close_members(members)
