"""Robust, process-shared glibc mutexes in shared memory, through ctypes.

    init_mutex(addr)     pthread_mutexattr: pshared=1, robust=1 (optionally recursive)
    RobustMutex(addr)
      acquire()          trylock; if busy, clocklock(CLOCK_MONOTONIC) in short slices
      release()          unlock; EPERM (not the owner) is reported, never ignored

Why glibc's robust mutex: the kernel walks each dying thread's robust list and
marks every mutex it held with FUTEX_OWNER_DIED, waking one waiter. The next
``lock`` returns EOWNERDEAD *with the mutex held*; we call
``pthread_mutex_consistent`` at once (unlocking without it would make the mutex
unusable forever) and record ``owner_died = True`` for that holding, so that the
layers above can tell their users and repair shared state.

Ownership is per *thread* (the owner's kernel TID is stored in the mutex word),
so glibc itself refuses an unlock from any other thread or process (EPERM),
and a thread that exits while holding the mutex counts as a dead owner too.

Cost: the uncontended path is one ``trylock`` and one ``unlock`` call. Both are
bound through ``PyDLL`` (they never block, so there is no point in releasing the
GIL), which is about a third cheaper than ``CDLL`` here. Blocking waits go
through ``CDLL`` (GIL released) in slices of ``WAIT_SLICE`` seconds, so that
Ctrl-C is handled within one slice and no wait is ever unbounded in C.

Memory ordering: lock is an acquire and unlock a release (glibc uses atomic
compare-and-exchange / exchange, full barriers on aarch64), so whatever a holder
wrote under the mutex is visible to the next holder, on any architecture.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import io
import math
import threading
import time
from collections.abc import Callable

from ._linux import libc

# typing costs about 5 ms at import, on every process's first start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "HINT_OFFSET",
    "MUTEX_SIZE",
    "NOWAIT_GRACE",
    "SPIN",
    "WAIT_SLICE",
    "MutexError",
    "RobustMutex",
    "checked_unlock",
    "consistent_unchecked",
    "exit_calling",
    "init_mutex",
    "timeout_until",
]

# Bytes reserved for one mutex: pthread_mutex_t is 40 B on x86-64 and 48 B on
# aarch64; 64 keeps the next field on its own cache line.
MUTEX_SIZE = 64

# Longest single blocking call into glibc. Shorter: Ctrl-C and liveness checks
# react sooner; longer: fewer wake-ups of an idle waiter. 50 ms keeps both well
# under the 100 ms recovery promise.
WAIT_SLICE = 0.05

# How long a call that must not block (``block=False``, a non-blocking ``acquire``
# of a semaphore, the bookkeeping after a deadline) waits for a *busy internal*
# mutex before it gives up. Internal mutexes are held for microseconds, so a live
# holder lets go well within it, even descheduled on a busy machine; a holder that
# is paused (SIGSTOP) would hold it for good, and this bounds what that costs the
# caller. Longer: fewer spurious "would block" answers under heavy contention;
# shorter: a paused peer delays a non-blocking call less.
NOWAIT_GRACE = 0.02

# corral's one spin policy for a busy mutex (the ring's and corral.Lock's, here and
# in the C fast paths of _speedups.c, which export their count; _ringlayout checks
# that they agree): look at the lock word and try again only when it shows no
# owner, at most SPIN times, then sleep in the kernel. Reading rather than retrying
# the trylock leaves the cache line shared, so a waiter does not slow the holder's
# unlock with failing compare-and-swaps (in C that stream cut hand-offs between two
# busy processes to a fifth). More looks: hand-offs stay in user space more often
# (a futex sleep and wake-up cost several microseconds); fewer: less CPU burnt when
# the holder keeps the mutex long or is descheduled, which matters with more busy
# processes than cores. A look costs tens of ns in C and about 0.1 us in Python,
# so SPIN looks span a few microseconds on either path. (Measured: docs/design.md,
# "One spin policy".)
SPIN = 64

# Where, in a lock's MUTEX_SIZE bytes, the C fast path keeps its hand-off hint (a
# u32 a spinning waiter sets, so that release() lets it take the lock instead of
# re-acquiring first: see _speedups.c, "The hand-off hint"): past the largest
# pthread_mutex_t (48 B on aarch64), in the lock word's cache line.
HINT_OFFSET = 48

CLOCK_MONOTONIC = 1
PTHREAD_MUTEX_RECURSIVE = 1
EOWNERDEAD = getattr(errno, "EOWNERDEAD", 130)
ENOTRECOVERABLE = getattr(errno, "ENOTRECOVERABLE", 131)
# The owner's TID lives in the low bits of the mutex's first word (glibc's
# __data.__lock on every Linux architecture); used for statistics only.
FUTEX_TID_MASK = 0x3FFFFFFF

_ATTR_SIZE = 64  # pthread_mutexattr_t is 4 B on x86-64, 8 B on aarch64
# glibc's __owner of a robust mutex whose owner died and that was not made
# consistent yet (PTHREAD_MUTEX_INCONSISTENT).
INCONSISTENT = 0x7FFFFFFF


class MutexError(OSError):
    """An unexpected error from a pthread mutex call."""


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


_VP = ctypes.c_void_p
_I = ctypes.c_int

# Non-blocking calls: keep the GIL (PyDLL), prebound prototypes.
_pylibc = ctypes.PyDLL(libc._name)
_trylock = ctypes.PYFUNCTYPE(_I, _VP)(("pthread_mutex_trylock", _pylibc))
_unlock = ctypes.PYFUNCTYPE(_I, _VP)(("pthread_mutex_unlock", _pylibc))
_consistent = ctypes.PYFUNCTYPE(_I, _VP)(("pthread_mutex_consistent", _pylibc))
consistent_unchecked = _consistent  # (for exception handlers that must not call Python)
# The same two without a prototype, for the hottest paths only: ctypes then skips
# argument conversion (about 10 ns a call). They MUST be given a ctypes.c_void_p
# (a plain int would be passed as a 32-bit C int).
trylock_unchecked = _pylibc.pthread_mutex_trylock
trylock_unchecked.restype = _I
unlock_unchecked = _pylibc.pthread_mutex_unlock
unlock_unchecked.restype = _I
# Blocking call: release the GIL.
_clocklock = ctypes.CFUNCTYPE(_I, _VP, _I, ctypes.POINTER(_Timespec))(
    ("pthread_mutex_clocklock", libc)
)

_attr_init = ctypes.CFUNCTYPE(_I, _VP)(("pthread_mutexattr_init", libc))
_attr_destroy = ctypes.CFUNCTYPE(_I, _VP)(("pthread_mutexattr_destroy", libc))
_attr_setpshared = ctypes.CFUNCTYPE(_I, _VP, _I)(("pthread_mutexattr_setpshared", libc))
_attr_setrobust = ctypes.CFUNCTYPE(_I, _VP, _I)(("pthread_mutexattr_setrobust", libc))
_attr_settype = ctypes.CFUNCTYPE(_I, _VP, _I)(("pthread_mutexattr_settype", libc))
_mutex_init = ctypes.CFUNCTYPE(_I, _VP, _VP)(("pthread_mutex_init", libc))


class _UnlockAnswer(dict[int, None]):
    """The ``restype`` of ``checked_unlock``'s function: glibc's answer 0 maps to
    None in C (a dict lookup: no Python frame); any other (EPERM: not the owner)
    is missing and raises through ``on_error``."""

    def __init__(self, on_error: Callable[[int], None]):
        super().__init__({0: None})
        self._on_error = on_error

    def __missing__(self, rc: int) -> None:
        self._on_error(rc)


# A prototype as PYFUNCTYPE's (GIL kept) but without its "cdecl" flag, under which
# ctypes lets a call pass more arguments than declared (``release(1)`` would
# unlock): the calling convention is the platform's default all the same.
def _strict_proto(*argtypes: Any) -> Any:
    ns = {"_argtypes_": argtypes, "_restype_": _I, "_flags_": ctypes._FUNCFLAG_PYTHONAPI}  # type: ignore[attr-defined]
    return type("_StrictUnlock", (ctypes._CFuncPtr,), ns)  # type: ignore[attr-defined]


_RELEASE_PROTO = _strict_proto(_VP)
_UNLOCK_ADDRESS: int = ctypes.cast(unlock_unchecked, _VP).value or 0


@functools.cache
def checked_unlock(on_error: Callable[[int], None]) -> Any:
    """glibc's unlock as a ctypes function taking the mutex's address alone (bind
    it as a ``c_void_p`` with ``functools.partial``; more arguments are a
    TypeError). A call runs the unlock before any Python frame
    (``functools.partial`` and ctypes are C), so an exception that a signal handler
    raises can land only after it: ``release()`` never leaves the lock held. An
    error answer calls ``on_error(rc)``, which must raise. For ``__exit__``, wrap
    the bound call in ``exit_calling``."""
    release = _RELEASE_PROTO(_UNLOCK_ADDRESS)
    release.restype = _UnlockAnswer(on_error).__getitem__
    return release


class _ExitCalling(io.IOBase):
    """Holds ``close``, the call that ``exit_calling``'s ``__exit__`` makes.

    ``io.IOBase.__exit__`` is C in CPython (``_io._IOBase``): it ignores its
    arguments and calls ``self.close()``, found in the instance's dict before the
    class's. ``closed`` is always True so that IOBase's finaliser never calls it."""

    closed = True


def exit_calling(unlock: Callable[[], None]) -> Callable[..., Any]:
    """An ``__exit__(exc_type, exc, tb)`` that calls ``unlock()`` with no
    arguments, through C only (``io.IOBase.__exit__``): no Python frame runs
    before the unlock, and the exception's details never reach glibc."""
    holder = _ExitCalling()
    holder.close = unlock  # type: ignore[method-assign]
    return holder.__exit__


def timeout_until(deadline: float | None) -> float | None:
    """The timeout (never negative) left until a ``time.monotonic()`` deadline;
    None stays None (no deadline)."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise MutexError(rc, f"{what}: {errno.errorcode.get(rc, rc)}")


def init_mutex(address: int, *, recursive: bool = False) -> None:
    """Initialise a robust, process-shared mutex at ``address`` (MUTEX_SIZE bytes).

    With ``recursive=True`` the owning thread may lock it again; glibc counts the
    re-entries and unlocks on the last ``release()``.
    """
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    _check(_attr_init(attr), "pthread_mutexattr_init")
    try:
        _check(_attr_setpshared(attr, 1), "pthread_mutexattr_setpshared")
        _check(_attr_setrobust(attr, 1), "pthread_mutexattr_setrobust")
        if recursive:
            _check(_attr_settype(attr, PTHREAD_MUTEX_RECURSIVE), "pthread_mutexattr_settype")
        _check(_mutex_init(address, attr), "pthread_mutex_init")
        ctypes.c_uint32.from_address(address + HINT_OFFSET).value = 0
    finally:
        _attr_destroy(attr)


class RobustMutex:
    """A robust mutex living at ``address`` in shared memory (see ``init_mutex``).

    ``owner_died`` is True for the current holding when the previous owner died
    while holding the mutex. The acquiring calls make it consistent again at once,
    unless given ``consistent=False``: then it stays *inconsistent* (glibc's
    ``__owner`` field reads ``INCONSISTENT``) until the caller has repaired what
    the mutex guards and calls ``make_consistent()``. The inconsistent state is
    itself the record that a repair is owed, which an interrupt cannot lose (see
    "Interrupts" below).

    Interrupts: ``unlock_raw`` is a C-level callable (a ``functools.partial`` over
    the ctypes function), so calling it runs no Python frame, and CPython checks
    for pending signals only *after* it returns: an exception raised by a signal
    handler cannot land between a ``finally:`` and the unlock it holds. It returns
    glibc's error number (EPERM when not held), never raises.
    """

    __slots__ = ("_m", "address", "count", "owner", "owner_died", "unlock_raw", "word")

    def __init__(self, address: int):
        self.address = address
        self._m = ctypes.c_void_p(address)
        # The lock word (the owner's TID in its low bits) and a recursive mutex's
        # re-entry count (glibc's __count, the second int of every layout): views
        # that an exception handler can read without a call (see Lock._acquire_slow).
        self.word = ctypes.c_uint32.from_address(address)
        self.count = ctypes.c_uint32.from_address(address + 4)
        # glibc's __data.__owner (the third int of every pthread_mutex_t layout):
        # INCONSISTENT while a dead owner's mutex awaits pthread_mutex_consistent.
        self.owner = ctypes.c_int.from_address(address + 8)
        self.unlock_raw = functools.partial(unlock_unchecked, self._m)
        self.owner_died = False

    def acquire(self, timeout: float | None = None, consistent: bool = True) -> bool:
        """Lock; return False if ``timeout`` seconds (None: forever) pass first."""
        rc = _trylock(self._m)
        if rc == 0:
            self.owner_died = False
            return True
        return self.acquire_after(rc, timeout, consistent)

    def try_acquire(self, consistent: bool = True) -> bool:
        rc = _trylock(self._m)
        if rc == 0:
            self.owner_died = False
            return True
        return self.acquire_after(rc, 0, consistent)

    def make_consistent(self) -> None:
        """After a repair: mark a dead owner's mutex consistent (a no-op if it is)."""
        if self.owner.value == INCONSISTENT:
            _consistent(self._m)

    def held(self) -> bool:
        """Whether this thread holds the mutex (its TID is in the lock word)."""
        return self.word.value & FUTEX_TID_MASK == threading.get_native_id()

    def depth(self) -> int:
        """A recursive mutex's re-entry count (glibc's ``__count``, the second int
        of every pthread_mutex_t layout); racy unless this thread holds it."""
        return int(self.count.value)

    def spin_trylock(self) -> int:
        """The SPIN policy: trylock, and while the mutex is busy, look at its word and
        try again when it shows no owner. Returns the last trylock's result (0, EBUSY,
        EOWNERDEAD...), for ``acquire_after``."""
        m = self._m
        rc: int = _trylock(m)
        if rc != errno.EBUSY:
            return rc
        word = self.word
        for _ in range(SPIN):
            if not word.value & FUTEX_TID_MASK:
                rc = _trylock(m)
                if rc != errno.EBUSY:
                    break
        return rc

    def spin_acquire(self, timeout: float | None = None, consistent: bool = True) -> bool:
        """``spin_trylock``, then ``acquire_after``: lock, sleeping only after the
        spin; False if ``timeout`` seconds (None: forever) pass first."""
        return self.acquire_after(self.spin_trylock(), timeout, consistent)

    def acquire_after(self, rc: int, timeout: float | None, consistent: bool = True) -> bool:
        """Finish an acquisition whose ``pthread_mutex_trylock`` returned ``rc``
        (EOWNERDEAD: it is ours already; EBUSY: wait up to ``timeout``). With
        ``consistent=False`` a dead owner's mutex is left inconsistent (see the
        class docstring)."""
        if rc == errno.EBUSY:
            if timeout is not None and timeout <= 0:
                return False
            deadline = math.inf if timeout is None else time.monotonic() + timeout
            ts = _Timespec()
            tsp = ctypes.pointer(ts)
            m = self._m
            while True:
                now = time.monotonic()
                if now >= deadline:
                    return False
                until = min(now + WAIT_SLICE, deadline)
                frac, whole = math.modf(until)
                ts.tv_sec = int(whole)
                ts.tv_nsec = int(frac * 1e9)
                rc = _clocklock(m, CLOCK_MONOTONIC, tsp)
                if rc != errno.ETIMEDOUT:
                    break
        if rc == 0:
            self.owner_died = False
            return True
        if rc == EOWNERDEAD:
            if consistent:
                _check(_consistent(self._m), "pthread_mutex_consistent")
            self.owner_died = True
            return True
        _check(rc, "pthread_mutex_lock")
        return False  # pragma: no cover  (_check raised)

    def release(self) -> None:
        """Unlock. Raises ``MutexError`` (EPERM) if this thread does not hold it."""
        rc = _unlock(self._m)
        if rc != 0:
            _check(rc, "pthread_mutex_unlock")

    def unlock_errno(self) -> int:
        """Unlock and return glibc's error number (0, or EPERM when not held)."""
        rc: int = _unlock(self._m)
        return rc

    def owner_tid(self) -> int:
        """The kernel TID of the holder, or 0 if free (racy; for statistics)."""
        return int(ctypes.c_uint32.from_address(self.address).value) & FUTEX_TID_MASK

    def __repr__(self) -> str:
        return f"<RobustMutex at {self.address:#x} owner_tid={self.owner_tid()}>"
