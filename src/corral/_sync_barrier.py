"""Barrier: parties, arrivals, generation and broken flag in a monitor's page.

    _BarrierFields     parties, count (arrivals), generation, broken, in_action,
                         reset_bits (generations ended by reset())
    wait()             arrive; the last arriver runs the action and starts the next
                         generation; the others sleep in slices for it
    _BarrierMonitor    every process holding the barrier has a slot (eager
                         attach): one that vanishes, or leaves by an exception,
                         while others wait breaks the barrier

See ``corral._synchronize`` for the family.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from threading import BrokenBarrierError
from typing import Any

from ._core._arena import Block
from ._core._errors import LockTimeout
from ._core._monitor import Monitor, Slot
from ._sync_base import SyncStatistics, _deadline, _lock_wait, _remaining

__all__ = ["Barrier"]


class _BarrierFields(ctypes.Structure):
    _fields_ = (
        ("parties", ctypes.c_uint32),
        ("count", ctypes.c_uint32),  # arrivals in the current generation
        ("generation", ctypes.c_uint32),
        ("broken", ctypes.c_uint32),
        ("in_action", ctypes.c_uint32),
        ("reset_bits", ctypes.c_uint64),  # bit g % 64: generation g ended by reset()
    )


class _BarrierMonitor(Monitor):
    eager_attach = True  # every process holding the barrier is a known party

    def __init__(self, shm: Block | None = None):
        # Fields first: attaching may already reap.
        self.f: _BarrierFields | None = None
        super().__init__(shm)

    def fields(self) -> _BarrierFields:
        if self.f is None:
            self.f = _BarrierFields.from_address(self.user_address)
        return self.f

    def on_dead_slot(self, slot: Slot) -> None:
        f = self.fields()
        if f.count > 0 and not f.broken:
            f.broken = 1
            self.header.recoveries += 1
            self.bump()

    def on_detach(self, slot: Slot) -> None:
        # A party leaves for good (its run() raised, say, and it exits) while
        # others wait: it will never arrive, so the barrier breaks, as for a death.
        f = self.fields()
        if f.count > 0 and not f.broken:
            f.broken = 1

    def repair(self) -> None:
        # A party died in the middle of the barrier's bookkeeping or its action.
        f = self.fields()
        if f.count > 0 or f.in_action:
            f.broken = 1
            f.in_action = 0
            self.bump()


class Barrier:
    """:class:`multiprocessing.Barrier`: ``parties`` processes or threads meet.

    Every process holding the barrier (its creator, and each child it was passed
    to) is a party. If one of them vanishes (killed; not a clean exit) while others
    wait, the barrier breaks and they get :class:`threading.BrokenBarrierError`
    within about 50 ms instead of hanging. ``action`` runs in the last arriver.
    """

    __module__ = "corral"

    def __init__(
        self,
        parties: int,
        action: Callable[[], object] | None = None,
        timeout: float | None = None,
        *,
        _shm: Block | None = None,
    ):
        if parties < 1:
            raise ValueError("parties must be >= 1")
        self._action = action
        self._timeout = timeout
        self._mon = _BarrierMonitor(_shm)
        if _shm is None:
            self._mon.fields().parties = parties

    def wait(self, timeout: float | None = None) -> int:
        """Wait for all parties; return this arrival's index (0 .. parties-1)."""
        if timeout is None:
            timeout = self._timeout
        mon = self._mon
        f = mon.fields()
        deadline = _deadline(True, timeout)
        wake = False
        try:  # (the mutex is taken inside: see _core._monitor, "Interrupts")
            if not mon.try_lock(_lock_wait(deadline)):
                # A paused peer holds the barrier's state past our deadline: a timeout,
                # which breaks the barrier (as the stdlib's does), once it can be had.
                if mon.apply(self._break_locked):
                    mon.wake_all()
                raise BrokenBarrierError
            if f.broken:
                raise BrokenBarrierError
            gen = int(f.generation)
            index = int(f.count)
            f.count += 1
            if f.count >= f.parties:
                if self._action is not None:
                    f.in_action = 1
                    try:
                        self._action()
                    except BaseException:
                        self._break_locked()
                        wake = True
                        raise
                    finally:
                        f.in_action = 0
                f.reset_bits &= ~(1 << (gen % 64))
                f.count = 0
                f.generation = (gen + 1) & 0xFFFFFFFF
                mon.bump()
                wake = True
                return index
            while True:
                if f.generation != gen:
                    if f.reset_bits >> (gen % 64) & 1:
                        raise BrokenBarrierError
                    return index
                if f.broken:
                    raise BrokenBarrierError
                remaining = _remaining(deadline)
                if remaining <= 0:
                    self._break_locked()
                    wake = True
                    raise BrokenBarrierError
                try:
                    woken, _ = mon.wait(remaining)
                except LockTimeout:
                    wake = mon.apply(self._break_locked)
                    raise BrokenBarrierError from None
                if not woken and mon.reap_due():
                    wake = True
        finally:
            mon.unlock()  # (EPERM, if a LockTimeout left it not ours, is ignored)
            if wake:
                mon.wake_all()

    def _break_locked(self) -> None:
        f = self._mon.fields()
        f.broken = 1
        self._mon.bump()

    def abort(self) -> None:
        """Break the barrier: current and future waiters get BrokenBarrierError."""
        mon = self._mon
        try:
            mon.lock()
            self._break_locked()
        finally:
            mon.unlock()
        mon.wake_all()

    def reset(self) -> None:
        """Back to the empty state; threads waiting now get BrokenBarrierError."""
        mon = self._mon
        f = mon.fields()
        try:
            mon.lock()
            if f.count > 0:
                gen = f.generation
                f.reset_bits |= 1 << (gen % 64)
                f.generation = (gen + 1) & 0xFFFFFFFF
            f.count = 0
            f.broken = 0
            mon.bump()
        finally:
            mon.unlock()
        mon.wake_all()

    def _read(self, name: str) -> int:
        # One aligned load, without the mutex: a paused peer holding it delays no one.
        return int(getattr(self._mon.fields(), name))

    @property
    def parties(self) -> int:
        return self._read("parties")

    @property
    def n_waiting(self) -> int:
        return 0 if self._read("broken") else self._read("count")

    @property
    def broken(self) -> bool:
        return bool(self._read("broken"))

    def statistics(self) -> SyncStatistics:
        waiters, recoveries, _ = self._mon.statistics_fields()
        return SyncStatistics(None, waiters, recoveries, value=self.n_waiting)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_barrier, (self._mon.shm, self._action, self._timeout))

    def __repr__(self) -> str:
        return f"<corral.Barrier parties={self.parties} waiting={self.n_waiting}>"


def _rebuild_barrier(
    shm: Block, action: Callable[[], object] | None, timeout: float | None
) -> Barrier:
    return Barrier(1, action, timeout, _shm=shm)


# Pickles name it in corral._synchronize (which re-exports it), as older versions did.
_rebuild_barrier.__module__ = "corral._synchronize"
