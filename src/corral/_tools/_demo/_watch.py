"""Watching processes from outside: pin them with pidfds, wait for them to die, clean up.

Used by the demo scenarios, the benchmarks and the tests to assert what survived a
kill and how long the rest took to go, without ever signalling a recycled pid.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time

__all__ = ["kill_reap_close", "pin", "wait_dead"]


def pin(pids: list[int]) -> dict[int, int]:
    """A pidfd for each pid; a process already gone (a transient helper) is skipped."""
    out = {}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            out[pid] = os.pidfd_open(pid)
    return out


def wait_dead(pidfds: dict[int, int], timeout: float) -> tuple[list[int], float]:
    """Wait up to ``timeout`` for every pinned process to exit.

    Returns the pids still alive, and the seconds it took (until the last exit, or
    the timeout). Polls at least once, so a timeout of 0 answers "who is alive now".
    """
    start = time.monotonic()
    pending = dict(pidfds)
    while pending:
        left = max(0.0, start + timeout - time.monotonic())
        poller = select.poll()
        for fd in pending.values():
            poller.register(fd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(left * 1000)}
        pending = {pid: fd for pid, fd in pending.items() if fd not in ready}
        if left == 0:
            break
    return sorted(pending), time.monotonic() - start


def kill_reap_close(pidfds: dict[int, int]) -> None:
    """SIGKILL what is left, reap what came back to us (as a subreaper), close the pidfds."""
    for fd in pidfds.values():
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    wait_dead(pidfds, 5.0)
    for fd in pidfds.values():
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
        os.close(fd)
