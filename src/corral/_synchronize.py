"""Synchronisation primitives that survive the death of any process using them.

Every object lives in one page of anonymous shared memory (a block of a shared
memfd arena, ``_core._arena``: many objects, one fd), laid out by the core's
robust monitor (``_core._monitor``)::

    Lock / RLock      a second robust mutex *is* the lock; the monitor only counts
                      waiters and recoveries. Fast path: one trylock + one unlock.
    Semaphore         value, total and per-process units held, under the monitor's
                      mutex; waiters sleep on the monitor's futex word.
    Event             a flag under the monitor's mutex, futex wake-ups.
    Condition         glibc-1-style counters (registered / notified / consumed).
    Barrier           parties, arrivals, generation, broken; every process holding
                      the barrier has a slot, and a vanished one breaks it.

How death is handled, per primitive:

- Lock, RLock: glibc's robust mutex. The kernel releases a dead thread's robust
  mutexes and the next acquirer gets EOWNERDEAD: corral makes the mutex
  consistent, sets ``owner_died`` and warns (``on_owner_death="warn"``) or raises
  ``OwnerDiedError`` with the lock held (``"raise"``).
- Semaphores (SEM_UNDO-like): each process's slot counts the units it holds.
  A waiter whose wait slice (50 ms) ends without news reaps the slots of
  vanished processes (pid + start time, so a recycled pid is not mistaken for
  the holder) and returns their units. The value is kept equal to
  ``total - sum(held)``, and every update is a single store ordered so that a
  death between two stores is repaired by recomputing it.
- Condition, Event: every wait is sliced; a dead notifier can only fail to
  notify, and the waiter's own timeout is honoured.
- Barrier: a party that vanishes while others wait breaks the barrier.

Memory ordering: all shared fields are read and written with a robust mutex held
(lock = acquire barrier, unlock = release barrier, on every architecture); the
futex word is only ever a hint to re-check under the mutex. See ``_core._monitor``.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import math
import operator
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import starmap
from threading import BrokenBarrierError
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ._core._arena import Block
from ._core._errors import LockTimeout
from ._core._futex import futex_wait
from ._core._linux import pid_of_tid
from ._core._monitor import Monitor, Slot
from ._core._native import speedups
from ._core._robust import (
    EOWNERDEAD,
    FUTEX_TID_MASK,
    INCONSISTENT,
    NOWAIT_GRACE,
    WAIT_SLICE,
    RobustMutex,
    checked_unlock,
    consistent_unchecked,
    exit_calling,
    init_mutex,
)
from ._core._robust import trylock_unchecked as _fast_trylock
from ._core._robust import unlock_unchecked as _fast_unlock
from ._exceptions import OwnerDiedError, OwnerDiedWarning

__all__ = [
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Lock",
    "RLock",
    "Semaphore",
    "SyncStatistics",
]

_T = TypeVar("_T")

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


# --------------------------------------------------------------------------- locks

# Where the lock's own mutex sits in the monitor's user area.
_LOCK_MUTEX_OFFSET = 64


class _CMethod(property):
    """A method whose call on an instance runs no Python frame first: reading it
    from an instance is property's C ``__get__`` (its getter an ``attrgetter``),
    which gives a C callable. Read from the class (``contextlib.ExitStack`` takes
    ``type(cm).__exit__``), it is callable as a plain method."""

    def __call__(self, obj: Any, /, *args: Any) -> Any:
        assert self.fget is not None
        return self.fget(obj)(*args)


class _PyLockBase:
    """The fast paths of :class:`Lock` in Python, where the C extension
    (``_speedups.LockBase``, the same methods) was not built."""

    __slots__ = ("_exit", "_release", "owner_died")
    _m: ctypes.c_void_p

    # The fast paths are written out in full: each Python call level costs about
    # as much as a ctypes call.
    # An interrupt (an exception from a signal handler) can land right after the
    # trylock returns, before its answer is stored: it must not leave the lock
    # held by an acquire() that never returned. The handler gives back what the
    # trylock may have taken (glibc refuses, EPERM, if it took nothing).
    # release() and __exit__ are no Python functions: CPython checks for signals
    # at the start of every Python function, which would be before the unlock.
    # Each is a property (C: attrgetter) giving a C callable (``checked_unlock``:
    # partial over ctypes; for __exit__, ``exit_calling`` over it, which drops the
    # exception's details) that unlocks before any Python frame runs.
    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Acquire the lock; with ``block`` False or a ``timeout``, return False
        if it could not be had. ``timeout=None`` waits forever."""
        try:
            rc = _fast_trylock(self._m)
        except BaseException:  # (inline: a Python call would be a place to land again)
            if self._mutex.owner.value == INCONSISTENT:
                self._give_back()
            else:
                _fast_unlock(self._m)
            raise
        if rc == 0:
            self.owner_died = False
            return True
        return self._acquire_slow(rc, block, timeout)

    def __enter__(self) -> bool:
        try:
            rc = _fast_trylock(self._m)
        except BaseException:  # (inline: a Python call would be a place to land again)
            if self._mutex.owner.value == INCONSISTENT:
                self._give_back()
            else:
                _fast_unlock(self._m)
            raise
        if rc == 0:
            self.owner_died = False
            return True
        return self._acquire_slow(rc, True, None)

    _mutex: RobustMutex

    def _give_back(self) -> None:
        raise NotImplementedError

    if TYPE_CHECKING:

        def release(self) -> None:
            """Release the lock. Raises RuntimeError unless this thread holds it."""

        def __exit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> None: ...

    else:
        release = _CMethod(
            operator.attrgetter("_release"),
            doc="release(): release the lock. Raises RuntimeError unless this thread holds it.",
        )
        __exit__ = _CMethod(operator.attrgetter("_exit"))

    def _bind(self, address: int) -> None:
        """(The C version keeps the address; this one binds the unlocking calls.)"""
        release = checked_unlock(_not_owner_raiser(type(self).__name__))
        self._release = functools.partial(release, self._m)
        self._exit = exit_calling(self._release)

    def _acquire_slow(self, rc: int, block: bool, timeout: float | None) -> bool:
        raise NotImplementedError

    def _not_owner(self, what: str) -> None:
        raise NotImplementedError


# The base with the fast paths: C where built, else the Python one above.
if TYPE_CHECKING:
    _LockBase = _PyLockBase
else:
    _LockBase = _PyLockBase if speedups is None else speedups.LockBase


def _not_owner_text(name: str, what: str) -> str:
    return (
        f"cannot {what} a {name} this thread does not hold "
        "(it is unlocked, or held by another thread or process)"
    )


@functools.cache
def _not_owner_raiser(name: str) -> Callable[[int], None]:
    """The pure path's release error (one function per class, for ``checked_unlock``)."""

    def raise_not_owner(rc: int) -> None:
        raise RuntimeError(_not_owner_text(name, "release"))

    return raise_not_owner


class Lock(_LockBase):
    """A lock shared between processes that recovers when its owner dies.

    As :class:`multiprocessing.Lock`, with these differences:

    - Ownership is per process *and* thread: :meth:`release` from anyone but the
      holder raises :class:`RuntimeError` (``multiprocessing.Lock`` lets any
      thread or process release it). Acquiring it twice from one thread blocks,
      as with the stdlib.
    - If the holder dies (SIGKILL, ``os._exit``, a thread exiting while holding
      it), the next acquirer gets the lock within milliseconds. For that holding,
      ``owner_died`` is True, and either a :class:`corral.OwnerDiedWarning` is
      emitted (``on_owner_death="warn"``) or :class:`corral.OwnerDiedError` is
      raised *with the lock held* (``"raise"``), so the caller can repair the
      state the lock protects and then ``release()``. From ``with lock:`` the
      error leaves the ``with`` before its body, the lock still held: catch it
      around the ``with``.

    Pass it to children as a ``Process`` argument; it cannot be sent later.
    """

    __module__ = "corral"
    __slots__ = ("__weakref__", "_m", "_mon", "_mutex", "_on_owner_death")
    _recursive = False

    def __init__(
        self,
        *,
        on_owner_death: OnOwnerDeath = "warn",
        _shm: Block | None = None,
        _data_bytes: int = 0,
    ):
        if on_owner_death not in ("warn", "raise"):
            raise ValueError(f"on_owner_death must be 'warn' or 'raise', not {on_owner_death!r}")
        # (_data_bytes: room for a Value's bytes in the lock's own block.)
        self._mon = Monitor(_shm, data_bytes=_data_bytes, what=type(self).__name__)
        address = self._mon.user_address + _LOCK_MUTEX_OFFSET
        if _shm is None:
            init_mutex(address, recursive=self._recursive)
        self._mutex = RobustMutex(address)
        self._m = ctypes.c_void_p(address)
        self._bind(address)
        self._on_owner_death: OnOwnerDeath = on_owner_death
        self.owner_died = False

    # acquire(), release(), __enter__ and __exit__ come from the base: a trylock (in
    # C, with a short spin while the lock is busy) or an unlock, then the methods
    # below for everything else.

    def _acquire_fallback(self, rc: int, block: bool = True, timeout: float | None = None) -> bool:
        """The C base's trylock returned ``rc`` (-1: it did not try; the arguments
        are checked here first)."""
        if rc < 0:
            rc = _fast_trylock(self._m)
            if rc == 0:
                self.owner_died = False
                return True
        return self._acquire_slow(rc, block, timeout)

    def _not_owner(self, what: str) -> None:
        raise RuntimeError(_not_owner_text(type(self).__name__, what))

    def _give_back(self) -> None:
        """An interrupt escaped a trylock whose answer was lost: if it took the lock
        (a dead owner's included), let it go; if not, glibc answers EPERM."""
        mutex = self._mutex
        if mutex.owner.value == INCONSISTENT and mutex.held():
            mutex.make_consistent()
        _fast_unlock(self._m)

    def _acquire_slow(self, rc: int, block: bool, timeout: float | None) -> bool:
        """Finish an acquire whose trylock answered ``rc``. An exception that escapes
        leaves the lock as it found it (except ``OwnerDiedError``, raised with the
        lock held on purpose): an interrupt may land after the lock was taken and
        before this returns."""
        mutex = self._mutex
        me = threading.get_native_id()
        held_before = rc != 0 and rc != EOWNERDEAD and mutex.held()
        depth_before = mutex.depth()
        try:
            return self._acquire_slow_inner(rc, block, timeout)
        except OwnerDiedError:
            raise
        except BaseException:
            # No call before the unlock but glibc's: CPython checks for signals at
            # the start of every Python function and after every call, where a
            # second interrupt would leave the lock held. Attribute reads only.
            # (A dead owner's mutex is made consistent first, one C call: a second
            # interrupt right after it is the one window left, after a death only.)
            if mutex.word.value & FUTEX_TID_MASK == me and (
                not held_before or mutex.count.value > depth_before
            ):
                if mutex.owner.value == INCONSISTENT:
                    consistent_unchecked(self._m)
                _fast_unlock(self._m)
            raise

    def _acquire_slow_inner(self, rc: int, block: bool, timeout: float | None) -> bool:
        mutex = self._mutex
        deadline = _deadline(block, timeout)
        if rc == errno.EBUSY and deadline != 0.0:
            # Critical sections are usually short: spin before paying for a sleep
            # and a wake-up, by corral's one spin policy (_robust.SPIN). (The C
            # acquire() without arguments spins by the same policy before coming
            # here: the lock then gets a second round of looks before the sleep.)
            rc = mutex.spin_trylock()
        if rc != errno.EBUSY or deadline == 0.0:
            got = mutex.acquire_after(rc, 0)  # 0: ours; EOWNERDEAD: ours, owner died
        else:
            # Counted as a waiter (for statistics) under the monitor's mutex, which
            # a paused peer may hold: then within the deadline, or not counted.
            mon = self._mon
            counted = False
            try:
                if mon.try_lock(_lock_wait(deadline)):
                    _count_waiter(mon, 1)()
                    counted = True
            finally:
                mon.unlock()
            try:
                got = mutex.acquire(None if deadline == math.inf else _remaining(deadline))
            finally:
                if counted:
                    mon.apply(_count_waiter(mon, -1))
        if not got:
            return False
        if mutex.owner_died:
            self._owner_died()
        else:
            self.owner_died = False
        return True

    def _owner_died(self) -> None:
        self.owner_died = True
        mon = self._mon
        mon.apply(_count_recovery(mon))
        what = f"corral.{type(self).__name__}"
        if self._on_owner_death == "raise":
            raise OwnerDiedError(what)
        warnings.warn(OwnerDiedWarning(what), stacklevel=5)

    def locked(self) -> bool:
        """Whether some thread, in any process, holds the lock (racy)."""
        return self._mutex.owner_tid() != 0

    def _is_owned(self) -> bool:
        return self._mutex.owner_tid() == threading.get_native_id()

    def _release_save(self) -> int:
        """Release fully; return how many times it was held (for Condition)."""
        if _fast_unlock(self._m):
            self._not_owner("release")
        return 1

    def _acquire_restore(self, count: int) -> None:
        self.acquire()

    def statistics(self) -> SyncStatistics:
        waiters, recoveries, _ = self._mon.statistics_fields()
        tid = self._mutex.owner_tid()
        return SyncStatistics(
            owner_pid=pid_of_tid(tid) if tid else None,
            waiters=waiters,
            recoveries=recoveries,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_lock, (type(self), self._mon.shm, self._on_owner_death))

    def __repr__(self) -> str:
        tid = self._mutex.owner_tid()
        state = f"locked by thread {tid}" if tid else "unlocked"
        return f"<corral.{type(self).__name__} {state}>"


class RLock(Lock):
    """A re-entrant :class:`Lock`: the holding thread may acquire it again, and
    must release it as many times. Re-entries are counted per process and thread
    (by glibc, in the shared mutex). Same owner-death rules as :class:`Lock`."""

    __module__ = "corral"
    __slots__ = ()
    _recursive = True

    def _release_save(self) -> int:
        count = 0
        while _fast_unlock(self._m) == 0:
            count += 1
        if count == 0:
            self._not_owner("release")
        return count

    def _acquire_restore(self, count: int) -> None:
        for _ in range(count):
            self.acquire()


def _count_waiter(mon: Monitor, n: int) -> Callable[[], None]:
    """A job for the monitor's mutex: count ``n`` more waiters in this process."""

    def job() -> None:
        slot = mon.my_slot()
        slot.waiters = max(0, slot.waiters + n)
        mon.header.nwaiters = max(0, mon.header.nwaiters + n)

    return job


def _count_recovery(mon: Monitor) -> Callable[[], None]:
    def job() -> None:
        mon.header.recoveries += 1

    return job


def _rebuild_lock(cls: type[Lock], shm: Block, on_owner_death: OnOwnerDeath) -> Lock:
    return cls(on_owner_death=on_owner_death, _shm=shm)


# ----------------------------------------------------------------------- semaphore


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
            # did not return, so the unit goes back.
            if took[0]:
                self._mon.apply(self._give_back_unit)
                self._mon.wake_all()
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


# ---------------------------------------------------------------------------- event


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
        try:
            if mon.try_lock(_lock_wait(deadline)):
                _count_waiter(mon, 1)()
                counted = True
        finally:
            mon.unlock()
        try:
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


# ------------------------------------------------------------------------ condition


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
        try:  # (the mutex is taken inside: see _core._monitor, "Interrupts")
            if not mon.try_lock(_lock_wait(deadline)):
                return False  # a peer holds the bookkeeping past our deadline: timed out
            f.total += 1
            mon.my_slot().mark += 1
            registered_at = f.wakeup
        finally:
            mon.unlock()
        saved = lock._release_save()
        try:
            return self._wait_registered(registered_at, deadline)
        finally:
            lock._acquire_restore(saved)

    def _wait_registered(self, registered_at: int, deadline: float) -> bool:
        """Wait for a notification meant for the wait registered at
        ``registered_at``; then un-register it (in the background, ``_later``, if
        a paused peer holds the mutex past ``deadline``)."""
        mon = self._mon
        f = mon.f
        notified = relocked = False
        try:  # (the mutex is taken inside: see _core._monitor, "Interrupts")
            if not mon.try_lock(_lock_wait(deadline)):
                mon.apply(self._unregister)
                return False
            while True:
                if f.wakeup != registered_at and f.woken < f.wakeup:
                    f.woken += 1
                    notified = True
                    break
                remaining = _remaining(deadline)
                if remaining <= 0:
                    break
                try:
                    woken, _ = mon.wait(remaining)
                except LockTimeout:
                    mon.apply(self._unregister)
                    return False
                if not woken:
                    mon.reap_due()
            if notified:
                mon.my_slot().mark = max(0, mon.my_slot().mark - 1)
            else:
                self._unregister()
            relocked = True  # (un-registered: nothing left to do)
        except BaseException:  # (Ctrl-C in the wait: the mutex may not be ours)
            if not relocked:
                if mon.held():
                    self._unregister()
                else:
                    mon.apply(self._unregister)
            raise
        finally:
            mon.unlock()
        return notified

    def _unregister(self) -> None:
        """(Monitor mutex held.) A registered wait ends without a notification."""
        mon = self._mon
        mon.cancel_one()
        slot = mon.my_slot()
        slot.mark = max(0, slot.mark - 1)

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


# -------------------------------------------------------------------------- barrier


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
