"""Lock and RLock: a robust, process-shared glibc mutex in a monitor's page.

    Lock(_LockBase)          acquire / release / __enter__ / __exit__ come from
      _LockBase                the C ``_speedups.LockBase`` where it was built,
                               else ``_PyLockBase`` (ctypes; release and __exit__
                               C callables through ``_CMethod``)
      _acquire_slow          everything past one trylock: spin, sleep in slices,
                               a dead owner (EOWNERDEAD), interrupts
      _mon (Monitor)         counts waiters and recoveries only
    RLock(Lock)              the same mutex, recursive (glibc counts re-entries)

The kernel releases a dead thread's robust mutexes and the next acquirer gets
EOWNERDEAD: corral makes the mutex consistent, sets ``owner_died`` and warns
(``on_owner_death="warn"``) or raises ``OwnerDiedError`` with the lock held
(``"raise"``). See ``corral._synchronize`` for the family.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import math
import operator
import threading
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._core._arena import Block
from ._core._linux import pid_of_tid
from ._core._monitor import Monitor
from ._core._native import speedups
from ._core._robust import (
    EOWNERDEAD,
    FUTEX_TID_MASK,
    INCONSISTENT,
    RobustMutex,
    checked_unlock,
    consistent_unchecked,
    exit_calling,
    init_mutex,
)
from ._core._robust import trylock_unchecked as _fast_trylock
from ._core._robust import unlock_unchecked as _fast_unlock
from ._exceptions import OwnerDiedError, OwnerDiedWarning
from ._sync_base import (
    OnOwnerDeath,
    SyncStatistics,
    _CMethod,
    _count_waiter,
    _deadline,
    _lock_wait,
    _remaining,
)

__all__ = ["Lock", "RLock"]

# Where the lock's own mutex sits in the monitor's user area.
_LOCK_MUTEX_OFFSET = 64


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
            # (Counted inside the try whose finally uncounts: an interrupt right
            # after the monitor's unlock must not leave the count behind.)
            mon = self._mon
            counted = False
            try:
                try:
                    if mon.try_lock(_lock_wait(deadline)):
                        _count_waiter(mon, 1)()
                        counted = True
                finally:
                    mon.unlock()
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


def _count_recovery(mon: Monitor) -> Callable[[], None]:
    def job() -> None:
        mon.header.recoveries += 1

    return job


def _rebuild_lock(cls: type[Lock], shm: Block, on_owner_death: OnOwnerDeath) -> Lock:
    return cls(on_owner_death=on_owner_death, _shm=shm)


# Pickles name it in corral._synchronize (which re-exports it), as older versions did.
_rebuild_lock.__module__ = "corral._synchronize"
