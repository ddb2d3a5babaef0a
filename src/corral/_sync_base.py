"""What the synchronisation primitives share::

    SyncStatistics           the record every ``statistics()`` returns
    _deadline, _remaining    a call's deadline: monotonic time, or math.inf
    _lock_wait               how long a call may wait for a busy *internal*
                               mutex: never past its deadline
    _CMethod                 a method reached through C only: no Python frame,
                               so no interrupt, before it
    _count_waiter            a monitor job: count this process's waiters

``corral._synchronize`` draws the primitives built on these.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ._core._monitor import Monitor
from ._core._robust import NOWAIT_GRACE

__all__ = ["OnOwnerDeath", "SyncStatistics"]

OnOwnerDeath = Literal["warn", "raise"]


@dataclass(frozen=True)
class SyncStatistics:
    """A snapshot of a synchronisation object's state (racy by nature).

    Attributes:
        owner_pid: the process holding the lock (for a Condition, its lock); for a
            semaphore, the holder when exactly one process holds units; else None.
        waiters: threads blocked in the object right now, in live processes.
        recoveries: how many times the object recovered from a dead process (a
            lock taken over from a dead owner, semaphore units returned, a barrier
            broken by a vanished party, state repaired after a death).
        value: a semaphore's value; 1/0 for an Event's flag; a Barrier's arrivals.
        holders: ``(pid, units)`` for each live process holding semaphore units.
    """

    __module__ = "corral"

    owner_pid: int | None
    waiters: int
    recoveries: int
    value: int | None = None
    holders: tuple[tuple[int, int], ...] = ()


# The signals that may arrive at any moment, and so raise from a Python handler
# anywhere: blocked while an exception handler undoes bookkeeping (``_hold_signals``).
# Faults stay deliverable, and SIGKILL and SIGSTOP can't be blocked.
_ASYNC_SIGNALS = frozenset(signal.valid_signals()) - {
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGTRAP,
    signal.SIGSYS,
    signal.SIGKILL,
    signal.SIGSTOP,
}


def _hold_signals() -> set[int | signal.Signals]:
    """Block the asynchronous signals in this thread; returns the mask to restore
    (``_release_signals``). For an exception handler's cleanup, so that a second
    interrupt can't land half-way through it: one arriving meanwhile is delivered,
    and its handler runs, once the mask is restored. (One already taken by the
    interpreter before the block still runs at once: the window left is the few
    instructions before this call.)"""
    return signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNC_SIGNALS)


def _release_signals(mask: set[int | signal.Signals]) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _deadline(block: bool, timeout: float | None) -> float:
    """Absolute monotonic deadline; ``math.inf`` for "wait forever"."""
    if not block:
        return 0.0
    if timeout is None:
        return math.inf
    return time.monotonic() + max(0.0, timeout)


def _remaining(deadline: float) -> float:
    if deadline == math.inf:
        return math.inf
    return deadline - time.monotonic()


def _lock_wait(deadline: float) -> float | None:
    """How long a call with this deadline may wait for a busy *internal* mutex:
    ``NOWAIT_GRACE`` when it must not block (deadline 0.0), not at all past its
    deadline, for good without one (None). A paused peer holding the mutex thus
    never holds the caller past its deadline."""
    if deadline == 0.0:
        return NOWAIT_GRACE
    if deadline == math.inf:
        return None
    return max(0.0, deadline - time.monotonic())


class _CMethod(property):
    """A method whose call on an instance runs no Python frame first: reading it
    from an instance is property's C ``__get__`` (its getter an ``attrgetter``),
    which gives a C callable. Read from the class (``contextlib.ExitStack`` takes
    ``type(cm).__exit__``), it is callable as a plain method."""

    def __call__(self, obj: Any, /, *args: Any) -> Any:
        assert self.fget is not None
        return self.fget(obj)(*args)


def _count_waiter(mon: Monitor, n: int) -> Callable[[], None]:
    """A job for the monitor's mutex: count ``n`` more waiters in this process."""

    def job() -> None:
        slot = mon.my_slot()
        h = mon.header
        # (One step: no call between the two stores, where an interrupt could land.)
        mine, total = slot.waiters + n, h.nwaiters + n
        slot.waiters = mine if mine > 0 else 0
        h.nwaiters = total if total > 0 else 0

    return job
