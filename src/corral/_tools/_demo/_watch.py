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


def wait_dead(
    pidfds: dict[int, int], timeout: float, exits: dict[int, float] | None = None
) -> tuple[list[int], float]:
    """Wait up to ``timeout`` for every pinned process to exit.

    Returns the pids still alive, and the seconds it took (until the last exit, or
    the timeout). Polls at least once, so a timeout of 0 answers "who is alive now".
    ``exits``, if given, receives each pid's exit time, in seconds from the call.
    """
    start = time.monotonic()
    pending = {fd: pid for pid, fd in pidfds.items()}
    # epoll, registered once: a storm's thousands of pidfds exit a few at a time,
    # and a poll() rebuilt at each wake-up would cost the watcher (and the CPU it
    # shares with what it measures) time quadratic in their number.
    with select.epoll() as ep:
        for fd in pending:
            ep.register(fd, select.EPOLLIN)
        while pending:
            left = max(0.0, start + timeout - time.monotonic())
            for fd, _ in ep.poll(left, maxevents=len(pending)):
                if (pid := pending.pop(fd, None)) is not None:
                    ep.unregister(fd)
                    if exits is not None:
                        exits[pid] = time.monotonic() - start
            if left == 0:
                break
    return sorted(pending.values()), time.monotonic() - start


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
