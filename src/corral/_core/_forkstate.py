"""What an ``os.fork()`` child inherits from this process that is not its own, and
how it lets go of it: the files at once, the rest on first use.

    parent                                      fork child
    ──────                                      ──────────
    a module makes an fd that only this         one at-fork hook, first (a builtin
      process may hold (the supervisor's          where the C extension is built):
      socket, the lifeline's write end, the       each slot's fd closed, or /dev/null
      reaper's epoll...): set_fd(slot, fd)        put under it if an object owns it;
    the module's lock is held across the          the armed lifeline given a
      fork (*_LOCK, below): the child             description of its own (ARMED);
      finds that state whole                      generation() + 1
                                                the module's lock released (a bound
                                                  method: no Python frame)
                                                first use of the module: stale(), so
                                                  it drops its parent's state; an
                                                  object left on /dev/null is closed
                                                  (let_go)

Why lazily: every Python frame and object a fresh fork child touches costs it a
copy-on-write page fault, 2-10 us each here, and the start+join that ``join()``
waits for is mostly those faults. Five Python at-fork hooks that reset this state
eagerly cost each child about 50 faults and 0.2 ms, timed from inside, of a fork
start+join of some 2.3 ms; this way, 7 faults and 0.05 ms (docs/design.md, "Sixth
look"). Most children never use any of it.

Why /dev/null under an object's fd: the object (a socket, an epoll) would close the
number again one day, maybe under a file the child has opened since. With /dev/null
there, the number stays the object's until it is let go of; ``let_go`` closes it
only if it still is /dev/null (a program that closed every fd, ``os.closerange``,
and reused the numbers keeps its files; the object is then kept, never closed). So
a fork child holds up to two /dev/null fds until it first uses corral.

Objects without fds (locks, registries) are made again per fork generation:
``PerFork``.
"""

from __future__ import annotations

import os
import stat
import threading

from ._native import speedups

# typing costs a few ms at import, and every spawned child imports this module: at
# run time, stand-ins that only subscript.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Generic, TypeVar
else:

    class Generic:
        __class_getitem__ = classmethod(lambda cls, item: cls)

    def TypeVar(name: str) -> str:
        return name

    Any = object


__all__ = [
    "ARMED",
    "LIFELINE_LOCK",
    "LIFELINE_WRITE",
    "REAPER_EPOLL",
    "REAPER_LOCK",
    "REAPER_WAKE_READ",
    "REAPER_WAKE_WRITE",
    "SUPERVISOR_LOCK",
    "SUPERVISOR_PIDFD",
    "SUPERVISOR_SOCKET",
    "PerFork",
    "armed",
    "fd",
    "generation",
    "let_go",
    "set_armed",
    "set_fd",
]

T = TypeVar("T")

# The slots: one fd each, or -1. ARMED is this process's armed lifeline (a corral
# child's): a fork child keeps the number, with a description of its own under it.
(
    SUPERVISOR_SOCKET,
    SUPERVISOR_PIDFD,
    LIFELINE_WRITE,
    REAPER_EPOLL,
    REAPER_WAKE_READ,
    REAPER_WAKE_WRITE,
) = range(6)
ARMED = 7
_SLOTS = 8

_DEV_NULL = os.makedev(1, 3)

# The C extension's side, or None each (all or none).
_c_after_fork: Callable[[], None] | None = getattr(speedups, "after_fork_child", None)
_c_slot: Callable[[int, int, bool], None] | None = getattr(speedups, "fork_slot", None)
_c_fd: Callable[[int], int] | None = getattr(speedups, "fork_fd", None)
_c_take_inherited: Callable[[], int] | None = getattr(speedups, "fork_take_inherited", None)
_c_generation: Callable[[], int] | None = getattr(speedups, "fork_generation", None)
if _c_after_fork is not None and (
    getattr(speedups, "FORK_SLOTS", None),
    getattr(speedups, "FORK_ARMED", None),
) != (_SLOTS, ARMED):
    raise ImportError("corral._core._speedups disagrees with corral._core._forkstate on slots")

# The pure path's slots, inherited armed lifeline and count (the C extension keeps
# its own).
_fds = [-1] * _SLOTS
_inherited = -1
_count = 0


# The slots whose fd a Python object owns: a fork child gets /dev/null under them.
_OWNED = (SUPERVISOR_SOCKET, REAPER_EPOLL)


def set_fd(slot: int, fd: int) -> None:
    """``fd`` (-1: none) is the slot's from now on. Call it with the owner's lock
    held (the one held across the fork), after making the fd and before closing it."""
    if _c_slot is not None:
        _c_slot(slot, fd, slot in _OWNED)
    else:
        _fds[slot] = fd


def fd(slot: int) -> int:
    """The slot's fd, or -1."""
    return _c_fd(slot) if _c_fd is not None else _fds[slot]


def armed() -> int | None:
    """This process's armed lifeline (a corral child's), if it has one."""
    armed_fd = fd(ARMED)
    return None if armed_fd < 0 else armed_fd


def set_armed(fd: int) -> None:
    """``fd`` is this process's armed lifeline now (the pure path's arming; the C
    extension's ``child_setup`` records it itself): the one inherited from the
    forking process, if any, is closed."""
    global _inherited
    if _c_slot is not None and _c_take_inherited is not None:
        _c_slot(ARMED, fd, False)
        inherited = _c_take_inherited()
    else:
        _fds[ARMED] = fd
        inherited, _inherited = _inherited, -1
    if inherited >= 0:
        os.close(inherited)


def generation() -> int:
    """How many forks this process's line has seen: it moves in a fork child."""
    return _c_generation() if _c_generation is not None else _count


_kept: list[Any] = []  # objects whose number the program reused: never closed


def let_go(obj: Any) -> None:
    """Close ``obj`` (a socket, an epoll: an owned slot's fd, inherited), if its fd
    still is the /dev/null the fork put under it; else keep it for good, so that it
    never closes the number under the file the program has put there since."""
    try:
        fd = obj.fileno()
    except ValueError:  # (closed already)
        return
    try:
        st = os.fstat(fd)
    except OSError:  # the program closed the number: it may open another file there
        _kept.append(obj)
        return
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == _DEV_NULL:
        obj.close()
    else:
        _kept.append(obj)


def _own_description(fd: int, devnull: int) -> None:
    try:
        own = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        if devnull >= 0:
            os.dup2(devnull, fd, inheritable=False)
        return
    os.dup2(own, fd, inheritable=False)
    os.close(own)


def _after_fork_in_child() -> None:
    """The pure path's hook: what ``_speedups.after_fork_child`` does."""
    global _count, _inherited
    try:
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        devnull = -1
    try:
        for slot, fd in enumerate(_fds):
            if fd < 0:
                continue
            _fds[slot] = -1
            if slot == ARMED:
                _own_description(fd, devnull)
                _inherited = fd
            elif slot in _OWNED and devnull >= 0:
                os.dup2(devnull, fd, inheritable=False)
            else:
                os.close(fd)
    finally:
        if devnull >= 0:
            os.close(devnull)
        _count += 1


os.register_at_fork(
    after_in_child=_c_after_fork if _c_after_fork is not None else _after_fork_in_child
)

# The locks of the modules that own slots, held across every os.fork() so that a
# fork child never finds their state half changed: taken before the fork, let go
# of after it in both processes, by bound methods (no Python frame, in either).
# Made here, together, so that the objects those calls write (the bound methods,
# the lock objects, their semaphores) sit on as few pages as can be: each page is
# a copy-on-write fault for the parent right after every fork. (The three
# releases cost it some 15 faults there, which multiprocessing, registering no
# such hook, does not pay; made together, 3 fewer than made apart.) The "before"
# hooks run last-registered first, so the locks are taken supervisor, lifeline,
# reaper: the reaper's last, because the garbage collector can take it (a
# launcher's finalizer closing its fds) inside either of the others' sections.
# The reaper's is reentrant for the same reason.
REAPER_LOCK = threading.RLock()
LIFELINE_LOCK = threading.Lock()
SUPERVISOR_LOCK = threading.Lock()
for _held in (REAPER_LOCK, LIFELINE_LOCK, SUPERVISOR_LOCK):
    os.register_at_fork(
        before=_held.acquire, after_in_parent=_held.release, after_in_child=_held.release
    )
del _held


class PerFork(Generic[T]):
    """An object this process needs its own of (a lock, a registry): made by
    ``factory``, and made again on first use in a fork child, where the parent's may
    be held by a thread that the child does not have."""

    __slots__ = ("_current", "_factory", "_made")

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._made: dict[int, T] = {}
        self._current: tuple[int, T] | None = None

    def get(self) -> T:
        current = self._current  # (one load: the pair is never seen half updated)
        gen = generation()
        if current is not None and current[0] == gen:
            return current[1]
        # Two threads may get here at once: setdefault keeps one object per
        # generation (under the GIL, for an int key), and the other's is dropped.
        obj = self._made.setdefault(gen, self._factory())
        self._current = (gen, obj)
        return obj
