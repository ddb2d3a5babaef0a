"""Thin wrappers over Linux facilities the stdlib does not expose.

Everything is reached through ``ctypes`` on glibc; no compiled extension is needed.
``libc`` (and with it ``ctypes``) is loaded on first use: a spawned child that only
needs ``prctl`` gets it from the C extension when that is built, and imports
``ctypes`` (about 1.5 ms) only without it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from . import _native
from ._sweep import children_of, proc_state
from ._sweep import read_small as _read_small

# typing costs a few ms at import, and every spawned child imports this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import ctypes

    libc: ctypes.CDLL

__all__ = [
    "F_OWNER_TID",
    "F_SETOWN",
    "F_SETOWN_EX",
    "F_SETSIG",
    "children_of",
    "descendants_of",
    "is_alive",
    "libc",
    "pid_of_tid",
    "proc_start_time",
    "proc_state",
    "self_identity",
    "set_child_subreaper",
]

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37

# fcntl commands for signal-driven I/O (include/uapi/asm-generic/fcntl.h); the
# stdlib's fcntl module only has them on some builds.
F_SETOWN = 8
F_SETSIG = 10
F_SETOWN_EX = 15
F_OWNER_TID = 0


def _load_libc() -> ctypes.CDLL:
    import ctypes

    # Not ctypes.util.find_library(): it runs ldconfig in a subprocess, at import time,
    # in every process that imports corral.
    try:
        lib = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc: the symbols already loaded into this process
        lib = ctypes.CDLL(None, use_errno=True)
    lib.prctl.argtypes = [
        ctypes.c_int,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    lib.prctl.restype = ctypes.c_int
    return lib


_libc_loaded: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    """libc through ctypes, loaded on first use (``libc`` is this, for importers)."""
    global _libc_loaded
    if _libc_loaded is None:
        _libc_loaded = _load_libc()
    return _libc_loaded


def __getattr__(name: str) -> object:
    if name == "libc":
        return _libc()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _prctl(option: int, arg: int = 0) -> int:
    fast = getattr(_native.speedups, "prctl", None)
    if fast is not None:
        res: int = fast(option, arg)  # raises OSError
        return res
    import ctypes

    res = _libc().prctl(option, arg, 0, 0, 0)
    if res == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res


def set_child_subreaper(on: bool = True) -> None:
    """Make orphaned descendants of this process come back to it instead of to PID 1."""
    _prctl(PR_SET_CHILD_SUBREAPER, int(on))


def is_child_subreaper() -> bool:
    import ctypes

    value = ctypes.c_int(0)
    res = _libc().prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(value), 0, 0, 0)
    return res == 0 and value.value != 0


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of ``pid``, or None if gone."""
    data = _read_small(f"/proc/{pid}/stat")
    if data is None:
        return None
    # The command name is in parentheses and may contain anything; count from ')'.
    rest = data[data.rindex(b")") + 2 :].split()
    return rest[0].decode(), int(rest[19])  # fields 3 (state) and 22 (starttime)


def proc_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None if it is gone. With the
    pid, it names a process for good: a recycled pid has another start time."""
    st = _stat(pid)
    return None if st is None else st[1]


def is_alive(pid: int, start: int) -> bool:
    """Whether process ``pid``, started at ``start`` (from ``proc_start_time``), still
    runs: corral's one liveness check, for every record of "process X holds this".

    A zombie counts as dead: its robust mutexes are already released and it will
    never touch shared memory again. A recycled pid has another start time.
    ``start`` may be kept in 32 bits (the ring's waiter table): it is then compared
    with the low 32 bits of the real one (2**32 ticks are 497 days at 100 Hz).
    """
    st = _stat(pid)
    if st is None or st[0] in ("Z", "X", "x"):
        return False
    return st[1] == start or (start <= 0xFFFFFFFF and st[1] & 0xFFFFFFFF == start)


def pid_of_tid(tid: int) -> int | None:
    """The process (thread group) that kernel thread ``tid`` belongs to."""
    data = _read_small(f"/proc/{tid}/status")
    if data is None:
        return None
    for line in data.splitlines():
        if line.startswith(b"Tgid:"):
            return int(line.split()[1])
    return None


_me: tuple[int, int] = (0, 0)


def self_identity() -> tuple[int, int]:
    """(pid, start time) of this process, read once per process."""
    global _me
    pid = os.getpid()
    if _me[0] != pid:
        _me = (pid, proc_start_time(pid) or 0)
    return _me


def descendants_of(pid: int) -> Iterator[int]:
    """Every live descendant of ``pid``, parents before children (a snapshot; racy)."""
    stack = children_of(pid)
    while stack:
        child = stack.pop()
        yield child
        stack.extend(children_of(child))
