"""Futexes on 32-bit words in shared memory, through ``libc.syscall``.

A futex is a word in memory plus a kernel wait queue keyed by its *physical*
page, so it works across processes mapping the same memfd at different
addresses. We use the non-private ops for exactly that reason.

- ``futex_wait(addr, expected, timeout)`` sleeps only if ``*addr == expected``
  when the kernel looks (atomically with respect to ``futex_wake``), so a waker
  that changes the word and then wakes can never be missed. Callers always
  re-check their condition afterwards: a ``True`` return means "woken, value
  already changed, or interrupted by a signal", not "the condition holds".
- Timeouts are relative (FUTEX_WAIT measures them on CLOCK_MONOTONIC).
- ``futex_wake`` costs a syscall even with nobody waiting (about 0.7 us from
  Python here); callers keep a waiter count and skip it when it is zero.

Memory ordering: the syscall itself is a full barrier on both x86-64 and aarch64,
so a store made before ``futex_wake`` is visible to a waiter that the wake
releases, and ``futex_wait`` reads the word inside the kernel with the barrier
the futex protocol requires. Plain loads through ``load_u32`` are single aligned
32-bit reads (never torn), but impose no ordering: read shared state under a
lock, or re-check after a syscall.
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
import platform

from ._linux import libc

__all__ = ["futex_wait", "futex_wake", "load_u32", "store_u32", "u32_at"]

_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}[platform.machine().lower()]

FUTEX_WAIT = 0
FUTEX_WAKE = 1

# Wake everybody: the kernel takes an int.
WAKE_ALL = 0x7FFFFFFF


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


_syscall = libc.syscall
_syscall.argtypes = [
    ctypes.c_long,  # syscall number
    ctypes.c_void_p,  # uaddr
    ctypes.c_int,  # futex_op
    ctypes.c_uint,  # val
    ctypes.c_void_p,  # timeout (or val2)
    ctypes.c_void_p,  # uaddr2
    ctypes.c_uint,  # val3
]
_syscall.restype = ctypes.c_long


def futex_wait(address: int, expected: int, timeout: float | None) -> bool:
    """Sleep while the 32-bit word at ``address`` equals ``expected``.

    Returns False if ``timeout`` seconds passed, True otherwise (woken, the value
    had already changed, or a signal interrupted the wait). Never raises for those.
    """
    if timeout is None:
        ts_ptr = None
    else:
        if timeout <= 0:
            return False
        frac, whole = math.modf(timeout)
        ts = _Timespec(int(whole), int(frac * 1e9))
        ts_ptr = ctypes.addressof(ts)
    res = _syscall(_SYS_FUTEX, address, FUTEX_WAIT, expected & 0xFFFFFFFF, ts_ptr, None, 0)
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ETIMEDOUT:
        return False
    if err in (errno.EAGAIN, errno.EINTR):
        return True
    raise OSError(err, f"futex wait: {os.strerror(err)}")


def futex_wake(address: int, n: int) -> int:
    """Wake up to ``n`` waiters on the word at ``address``; return how many woke."""
    res = _syscall(_SYS_FUTEX, address, FUTEX_WAKE, min(n, WAKE_ALL), None, None, 0)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"futex wake: {os.strerror(err)}")
    return int(res)


def u32_at(address: int) -> ctypes.c_uint32:
    """A ctypes view of the word at ``address``; cache it to read or write cheaply."""
    return ctypes.c_uint32.from_address(address)


def load_u32(address: int) -> int:
    return int(ctypes.c_uint32.from_address(address).value)


def store_u32(address: int, value: int) -> None:
    ctypes.c_uint32.from_address(address).value = value & 0xFFFFFFFF
