"""Condition: glibc-1-style counters in a monitor's page, over a corral Lock/RLock.

    _CondFields     total (waits registered), wakeup (notified or cancelled),
                      woken (notifications consumed)
    wait()          register, release the lock, sleep in slices until
                      wakeup moves past the registration, re-take the lock
    notify(n)       wakeup += n (at most the waits registered), wake everyone
    Slot.mark       waits a process has registered: a dead one's are cancelled

A dead notifier can only fail to notify; the waiter's own timeout is always
honoured. See ``corral._synchronize`` for the family.
"""

from __future__ import annotations

import ctypes
import functools
import math
import operator
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ._core._arena import Block
from ._core._errors import LockTimeout
from ._core._monitor import Monitor, Slot
from ._sync_base import (
    SyncStatistics,
    _CMethod,
    _deadline,
    _hold_signals,
    _lock_wait,
    _release_signals,
    _remaining,
)
from ._sync_lock import Lock, RLock

__all__ = ["Condition"]

_T = TypeVar("_T")


class _CondFields(ctypes.Structure):
    _fields_ = (
        ("total", ctypes.c_uint64),  # waits ever registered
        ("wakeup", ctypes.c_uint64),  # waits notified or cancelled
        ("woken", ctypes.c_uint64),  # notifications consumed (or cancelled)
    )


class _CondMonitor(Monitor):
    def __init__(self, shm: Block | None = None):
        super().__init__(shm)
        self.f = _CondFields.from_address(self.user_address)

    def cancel_one(self) -> None:
        """(Lock held.) One registered wait ends without a notification (written
        out again in ``Condition._cancel``, where a call would be a place for an
        interrupt to land)."""
        f = self.f
        if f.total > f.wakeup:
            f.wakeup += 1
            f.woken += 1
        elif f.woken < f.wakeup:
            f.woken += 1

    def on_dead_slot(self, slot: Slot) -> None:
        # slot.mark: waits of that process still registered. Cancel them, as if
        # they had timed out, so that no notification is spent on the dead.
        for _ in range(slot.mark):
            self.cancel_one()
        if slot.mark:
            self.header.recoveries += 1

    def repair(self) -> None:
        f = self.f
        f.wakeup = min(f.wakeup, f.total)
        f.woken = min(f.woken, f.wakeup)


class Condition:
    """:class:`multiprocessing.Condition` over a corral :class:`RLock` (or the
    :class:`Lock`/:class:`RLock` given).

    ``wait()`` releases the lock, sleeps in slices and always honours its timeout,
    whether or not the notifier is alive. If the lock's owner died in the meantime,
    re-acquiring it follows that lock's ``on_owner_death`` rule. After a process
    dies inside the condition's own bookkeeping a waiter may wake spuriously, which
    ``wait_for()`` absorbs.
    """

    __module__ = "corral"

    def __init__(self, lock: Lock | None = None, *, _shm: Block | None = None):
        if lock is None:
            lock = RLock()
        elif not isinstance(lock, Lock):
            raise TypeError(f"corral.Condition needs a corral Lock or RLock, not {lock!r}")
        self._lock = lock
        self._mon = _CondMonitor(_shm)
        self.acquire = lock.acquire
        self.release = lock.release

    # The lock's own __enter__ and __exit__, reached through C (attrgetter): a
    # Python method here would be a place for an interrupt to land before the
    # lock's unlock (CPython checks for signals at the start of every Python function).
    if TYPE_CHECKING:

        def __enter__(self) -> bool: ...

        def __exit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> None: ...

    else:
        __enter__ = _CMethod(operator.attrgetter("_lock.__enter__"))
        __exit__ = _CMethod(operator.attrgetter("_lock.__exit__"))

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock, wait for a notify or ``timeout``, re-acquire the lock.
        Returns False if it timed out."""
        lock = self._lock
        if not lock._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        mon = self._mon
        f = mon.f
        deadline = _deadline(True, timeout)
        # A registered wait must end notified or cancelled, whatever interrupts it,
        # or it would keep a notification no one takes (and waiters would wake for
        # it spuriously). wait[0]: where it was registered, until it has ended
        # (then -1); registering and ending are each one step of attribute stores,
        # with no call after which an interrupt could land half-way.
        wait = [-1]
        try:
            try:  # (the mutex is taken inside: see _core._monitor, "Interrupts")
                if not mon.try_lock(_lock_wait(deadline)):
                    return False  # a peer holds the bookkeeping past our deadline: timed out
                slot = mon.my_slot()
                f.total += 1
                slot.mark += 1
                wait[0] = f.wakeup
            finally:
                mon.unlock()
            saved = lock._release_save()
        except BaseException:
            mask = _hold_signals()  # (a second interrupt waits until the cancel is done)
            try:
                if wait[0] >= 0:
                    self._cancel_later(slot, wait)
            finally:
                _release_signals(mask)
            raise
        try:
            return self._wait_registered(slot, wait, deadline)
        except BaseException:
            mask = _hold_signals()
            try:
                if wait[0] >= 0:  # (landed before _wait_registered's own handler)
                    self._cancel_later(slot, wait)
            finally:
                _release_signals(mask)
            raise
        finally:
            lock._acquire_restore(saved)

    def _wait_registered(self, slot: Slot, wait: list[int], deadline: float) -> bool:
        """Wait for a notification meant for the wait registered at ``wait[0]``;
        else cancel it (in the background, ``_later``, if a paused peer holds the
        mutex past ``deadline``)."""
        mon = self._mon
        f = mon.f
        registered_at = wait[0]
        try:  # (the mutex is taken inside: see _core._monitor, "Interrupts")
            if not mon.try_lock(_lock_wait(deadline)):
                self._cancel_later(slot, wait)
                return False
            while True:
                if f.wakeup != registered_at and f.woken < f.wakeup:
                    # (One step: stores only. The notification is ours.)
                    f.woken += 1
                    slot.mark = slot.mark - 1 if slot.mark > 0 else 0
                    wait[0] = -1
                    return True
                remaining = _remaining(deadline)
                if remaining <= 0:
                    break
                try:
                    woken, _ = mon.wait(remaining)
                except LockTimeout:
                    self._cancel_later(slot, wait)
                    return False
                if not woken:
                    mon.reap_due()
            self._cancel(slot, wait)
            return False
        except BaseException:  # (Ctrl-C in the wait: the mutex may not be ours)
            mask = _hold_signals()  # (a second interrupt waits until the cancel is done)
            try:
                if wait[0] >= 0:
                    if mon.held():
                        self._cancel(slot, wait)
                    else:
                        self._cancel_later(slot, wait)
            finally:
                _release_signals(mask)
            raise
        finally:
            mon.unlock()

    def _cancel(self, slot: Slot, wait: list[int]) -> None:
        """(Monitor mutex held.) The registered wait ``wait`` ends without a
        notification: one step of stores, no calls (see ``wait``)."""
        if wait[0] < 0:
            return  # (ended already)
        f = self._mon.f
        if f.total > f.wakeup:
            f.wakeup += 1
            f.woken += 1
        elif f.woken < f.wakeup:
            f.woken += 1  # a notification came meanwhile: taken, as if cancelled
        slot.mark = slot.mark - 1 if slot.mark > 0 else 0
        wait[0] = -1

    def _cancel_later(self, slot: Slot, wait: list[int]) -> None:
        """``_cancel`` with the mutex taken now, or in the background."""
        self._mon.apply(functools.partial(self._cancel, slot, wait))

    def wait_for(self, predicate: Callable[[], _T], timeout: float | None = None) -> _T:
        """Wait until ``predicate()`` is true, or ``timeout`` passes; return its last value."""
        deadline = _deadline(True, timeout)
        result = predicate()
        while not result:
            remaining = _remaining(deadline)
            if remaining <= 0:
                break
            self.wait(None if remaining == math.inf else remaining)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` threads waiting now. The lock must be held."""
        if not self._lock._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        mon = self._mon
        f = mon.f
        try:
            mon.lock()
            k = min(n, f.total - f.wakeup)
            if k <= 0:
                return
            f.wakeup += k
            mon.bump()
            wake = mon.has_waiters()
        finally:
            mon.unlock()
        if wake:
            # Everyone looks: a futex wake cannot pick the waiters that are
            # eligible, and a woken ineligible waiter simply sleeps again.
            mon.wake_all()

    def notify_all(self) -> None:
        self.notify(1 << 62)

    # The stdlib Condition's three semaphores, as read-only counters with the same
    # meaning (CPython's own tests read them): waits ever begun; waits ended (woken
    # or timed out); notifications given and not yet taken by a waiter.

    def _counters(self) -> tuple[int, int, int]:
        mon = self._mon
        f = mon.f
        mon.lock()
        try:
            return f.total, f.woken, f.wakeup - f.woken
        finally:
            mon.unlock()

    @property
    def _sleeping_count(self) -> _Counter:
        return _Counter(lambda: self._counters()[0])

    @property
    def _woken_count(self) -> _Counter:
        return _Counter(lambda: self._counters()[1])

    @property
    def _wait_semaphore(self) -> _Counter:
        return _Counter(lambda: self._counters()[2])

    def statistics(self) -> SyncStatistics:
        waiters, recoveries, _ = self._mon.statistics_fields()
        lock = self._lock.statistics()
        return SyncStatistics(lock.owner_pid, waiters, recoveries + lock.recoveries)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_condition, (self._lock, self._mon.shm))

    def __repr__(self) -> str:
        return f"<corral.Condition({self._lock!r})>"


class _Counter:
    """A read-only shared counter with the ``get_value()`` of a stdlib semaphore."""

    __slots__ = ("_read",)

    def __init__(self, read: Callable[[], int]):
        self._read = read

    def get_value(self) -> int:
        return self._read()


def _rebuild_condition(lock: Lock, shm: Block) -> Condition:
    return Condition(lock, _shm=shm)


# Pickles name it in corral._synchronize (which re-exports it), as older versions did.
_rebuild_condition.__module__ = "corral._synchronize"
