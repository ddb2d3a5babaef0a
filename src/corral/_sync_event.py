"""Event: one aligned flag word in a monitor's page, and futex wake-ups.

    set()     flag = 1, then change the futex word, then wake everyone
    wait()    read the futex word, then the flag; sleep on the word in slices
    _mon      counts waiters (statistics only), under its mutex when it can

A dead setter can only fail to set; a waiter's own timeout is always honoured.
See ``corral._synchronize`` for the family.
"""

from __future__ import annotations

import ctypes
from typing import Any

from ._core._arena import Block
from ._core._futex import futex_wait
from ._core._monitor import Monitor
from ._core._robust import WAIT_SLICE
from ._sync_base import SyncStatistics, _count_waiter, _deadline, _lock_wait, _remaining

__all__ = ["Event"]


class _EventFields(ctypes.Structure):
    _fields_ = (("flag", ctypes.c_uint32),)


class _EventMonitor(Monitor):
    def __init__(self, shm: Block | None = None):
        super().__init__(shm)
        self.f = _EventFields.from_address(self.user_address)


class Event:
    """:class:`multiprocessing.Event`, with sliced waits that always honour their timeout."""

    __module__ = "corral"

    def __init__(self, *, _shm: Block | None = None):
        self._mon = _EventMonitor(_shm)

    # The flag is one aligned word, read and written without the monitor's mutex,
    # so a peer paused while holding that mutex delays no set(), clear(),
    # is_set() or wait(). A waiter reads the futex word *then* the flag; set()
    # stores the flag *then* changes the futex word and wakes everyone: a waiter
    # that saw the flag clear sleeps on a futex value that set() changes after, so
    # it cannot sleep through the set (on x86-64 exactly; on aarch64, whose loads
    # may pass each other, within a WAIT_SLICE at worst). The mutex only counts
    # waiters, for statistics().

    def is_set(self) -> bool:
        return bool(self._mon.f.flag)

    def set(self) -> None:
        mon = self._mon
        mon.f.flag = 1
        h = mon.header
        h.seq = (h.seq + 1) & 0xFFFFFFFF  # (racing set()s: any change wakes)
        mon.wake_all()  # always: a waiter may be counting itself right now

    def clear(self) -> None:
        self._mon.f.flag = 0

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set or ``timeout`` passes; return the flag."""
        mon = self._mon
        f, h = mon.f, mon.header
        if f.flag:
            return True
        deadline = _deadline(True, timeout)
        counted = False  # (statistics only: skipped if a paused peer holds the mutex)
        try:  # (counted inside the try that uncounts: see Lock._acquire_slow_inner)
            try:
                if mon.try_lock(_lock_wait(deadline)):
                    _count_waiter(mon, 1)()
                    counted = True
            finally:
                mon.unlock()
            while True:
                seq = h.seq
                if f.flag:
                    return True
                remaining = _remaining(deadline)
                if remaining <= 0:
                    return bool(f.flag)
                futex_wait(mon.seq_address, seq, min(remaining, WAIT_SLICE))
        finally:
            if counted:
                mon.apply(_count_waiter(mon, -1))

    def statistics(self) -> SyncStatistics:
        waiters, recoveries, _ = self._mon.statistics_fields()
        return SyncStatistics(None, waiters, recoveries, value=int(self.is_set()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_event, (self._mon.shm,))

    def __repr__(self) -> str:
        # The stdlib's format (multiprocessing.synchronize.Event).
        return f"<{type(self).__qualname__} at {id(self):#x} {'set' if self.is_set() else 'unset'}>"


def _rebuild_event(shm: Block) -> Event:
    return Event(_shm=shm)


# Pickles name it in corral._synchronize (which re-exports it), as older versions did.
_rebuild_event.__module__ = "corral._synchronize"
