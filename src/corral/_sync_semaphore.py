"""Semaphore and BoundedSemaphore: counters in a monitor's page (SEM_UNDO-like).

    _SemFields               total, value, bound (under the monitor's mutex)
    Slot.held (per process)  units this process holds; value = total - sum(held)
    acquire()                take a unit, or sleep on the futex word in slices;
                               a slice that ends without news reaps vanished
                               holders, whose units come back (on_dead_slot)
    release(n)               plan every store, then make them in one C call

A waiter whose wait slice (50 ms) ends without news reaps the slots of vanished
processes (pid + start time, so a recycled pid is not mistaken for the holder)
and returns their units. Every update is a single store ordered so that a death
between two stores is repaired by recomputing the value. See
``corral._synchronize`` for the family.
"""

from __future__ import annotations

import ctypes
from collections import deque
from itertools import starmap
from types import TracebackType
from typing import Any

from ._core._arena import Block
from ._core._errors import LockTimeout
from ._core._monitor import Monitor, Slot
from ._sync_base import (
    SyncStatistics,
    _deadline,
    _hold_signals,
    _lock_wait,
    _release_signals,
    _remaining,
)

__all__ = ["BoundedSemaphore", "Semaphore"]


class _SemFields(ctypes.Structure):
    _fields_ = (
        ("total", ctypes.c_int64),  # initial value + units released by non-holders
        ("value", ctypes.c_int64),  # always total - sum(held), rebuilt after a death
        ("bound", ctypes.c_int64),  # 0: unbounded
    )


class _SemMonitor(Monitor):
    def __init__(self, shm: Block | None = None):
        super().__init__(shm)
        self.f = _SemFields.from_address(self.user_address)

    def repair(self) -> None:
        self.f.value = self.f.total - sum(s.held for s in self.slots if s.pid)

    def on_dead_slot(self, slot: Slot) -> None:
        # SEM_UNDO: a vanished process's units come back. The reaper then clears
        # slot.held; a death in between is repaired by recomputing the value.
        if slot.held > 0:
            self.f.value += slot.held
            self.header.recoveries += 1

    def on_detach(self, slot: Slot) -> None:
        if slot.held > 0:
            self.f.value += slot.held


class Semaphore:
    """A counting semaphore shared between processes (see :class:`multiprocessing.Semaphore`).

    Units are accounted to the process that acquired them. When a process ends
    (killed, or exiting) still holding units, they are returned, as with SysV's
    SEM_UNDO: waiters notice a vanished holder within one wait slice (50 ms).

    ``release()`` first gives back units this process holds; a release by a
    process holding none adds a new unit (``Semaphore``) or gives back a unit on
    behalf of a holder (``BoundedSemaphore``, which never exceeds its bound).
    """

    __module__ = "corral"
    _bounded = False

    def __init__(self, value: int = 1, *, _shm: Block | None = None):
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        self._mon = _SemMonitor(_shm)
        if _shm is None:
            f = self._mon.f
            f.total = value
            f.value = value
            f.bound = value if self._bounded else 0

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take one unit; with ``block`` False or a ``timeout``, return False if
        none became available."""
        took = [False]
        try:
            return self._acquire(block, timeout, took)
        except BaseException:
            # An interrupt after the unit was taken (at the unlock, say): acquire()
            # did not return, so the unit goes back, with the asynchronous signals
            # held (a second interrupt waits until it is back: at most the
            # monitor's NOWAIT_GRACE, then the give-back is left to _later).
            mask = _hold_signals()
            try:
                if took[0]:
                    self._mon.apply(self._give_back_unit)
                    self._mon.wake_all()
            finally:
                _release_signals(mask)
            raise

    def _give_back_unit(self) -> None:
        """(Monitor mutex held.) Undo one unit taken by an acquire that raised."""
        mon = self._mon
        slot = mon.my_slot()
        if slot.held > 0:
            slot.held -= 1
            mon.f.value += 1
            mon.bump()

    def _acquire(self, block: bool, timeout: float | None, took: list[bool]) -> bool:
        mon = self._mon
        f = mon.f
        wake = False
        deadline = _deadline(block, timeout)
        try:  # (the mutex is taken inside: see _core._monitor, "Interrupts")
            if not mon.try_lock(_lock_wait(deadline)):
                return False  # a peer holds the state's mutex past our deadline
            while True:
                if f.value > 0:
                    # (No call between these three stores: nothing can interrupt them.)
                    mon.my_slot().held += 1
                    f.value -= 1
                    took[0] = True
                    return True
                remaining = _remaining(deadline)
                if remaining <= 0:
                    return False
                try:
                    woken, _ = mon.wait(remaining)
                except LockTimeout:
                    return False
                if not woken and mon.reap_due():
                    mon.bump()  # units came back: let the other waiters look too
                    wake = mon.has_waiters()
        finally:
            mon.unlock()
            if wake:
                mon.wake_all()

    def release(self, n: int = 1) -> None:
        """Give back ``n`` units, all or none: BoundedSemaphore raises ValueError,
        and gives back nothing, if they would take it past its bound."""
        if n < 1:
            raise ValueError("n must be one or more")
        mon = self._mon
        wake = False
        try:  # (the mutex is taken inside: see _core._monitor, "Interrupts")
            mon.lock()
            stores = self._release_stores(mon.my_slot(), n)
            # One C call makes every store: an interrupt (CPython checks for one
            # after each call and at each loop's end, never inside a C call) lands
            # before all of them or after all of them, never between two units.
            deque(starmap(setattr, stores), 0)
            wake = mon.has_waiters()
        finally:
            mon.unlock()
        if wake:
            mon.wake(n)

    def _release_stores(self, mine: Slot, n: int) -> list[tuple[object, str, int]]:
        """(Monitor mutex held.) The stores that give back ``n`` units, planned
        without making any: first this process's units (``mine``); then, for a
        bounded semaphore, other holders' (only after a repair, or a release on a
        holder's behalf); else new units. Raises ValueError past the bound."""
        mon = self._mon
        f = mon.f
        if f.bound and f.value + n > f.bound:
            raise ValueError("semaphore or lock released too many times")
        own = min(n, int(mine.held))
        stores: list[tuple[object, str, int]] = [(mine, "held", mine.held - own)]
        rest = n - own
        if f.bound:
            for s in mon.slots:
                if rest == 0:
                    break
                if s.pid and s.held > 0 and s is not mine:
                    k = min(rest, int(s.held))
                    stores.append((s, "held", s.held - k))
                    rest -= k
            if rest:  # only after a repair; never exceed the bound
                raise ValueError("semaphore or lock released too many times")
        else:
            stores.append((f, "total", f.total + rest))
        stores.append((f, "value", f.value + n))
        stores.append((mon.header, "seq", (mon.header.seq + 1) & 0xFFFFFFFF))  # mon.bump()
        return stores

    def get_value(self) -> int:
        # One aligned load, without the mutex: a paused peer holding it delays no one.
        return int(self._mon.f.value)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def statistics(self) -> SyncStatistics:
        waiters, recoveries, live = self._mon.statistics_fields()
        holders = tuple((s.pid, int(s.held)) for s in live if s.held > 0)
        return SyncStatistics(
            owner_pid=holders[0][0] if len(holders) == 1 else None,
            waiters=waiters,
            recoveries=recoveries,
            value=self.get_value(),
            holders=holders,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_semaphore, (type(self), self._mon.shm))

    def __repr__(self) -> str:
        # The stdlib's format (multiprocessing.synchronize.Semaphore).
        return f"<{type(self).__qualname__}(value={self.get_value()})>"


class BoundedSemaphore(Semaphore):
    """A :class:`Semaphore` whose value never exceeds its initial value, whoever
    dies: ``release()`` past the bound raises ValueError."""

    __module__ = "corral"
    _bounded = True


def _rebuild_semaphore(cls: type[Semaphore], shm: Block) -> Semaphore:
    return cls(_shm=shm)


# Pickles name it in corral._synchronize (which re-exports it), as older versions did.
_rebuild_semaphore.__module__ = "corral._synchronize"
