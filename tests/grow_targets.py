"""Child targets for the tests of growing queues: module-level, so spawn and
forkserver can pickle them, and light to import."""

from __future__ import annotations

import contextlib
import os

import corral

TIMEOUT = 60.0


def pattern(n: int, tag: int) -> bytes:
    """``n`` bytes that differ from one offset to the next and from one tag to the
    next, so that a misplaced or stale piece of a message is seen."""
    start = tag % 251
    return (bytes(range(251)) * (n // 251 + 2))[start : start + n]


def check_then_reply(q: corral.Queue, specs: list[tuple[int, int]], reply: int) -> tuple[int, int]:
    """Get one message per (length, tag) of ``specs`` and check each against its
    pattern; then put ``pattern(reply, 99)`` (growing the queue from here, if it
    must). Returns (messages that were right, this process's data area size)."""
    right = 0
    for n, tag in specs:
        got = q.get(timeout=TIMEOUT)
        right += got == pattern(n, tag)
    if reply:
        q.put(pattern(reply, 99), timeout=TIMEOUT)
    return right, q._ring.size


def get_then_put_big(q: corral.Queue, n: int, taken: corral.Event) -> bool:
    """Get a message and check it is ``bytearray(pattern(n, 1))``, say so on
    ``taken``; then put ``bytearray(pattern(n, 2))``. Each way, one message of
    ``n`` bytes."""
    got = q.get(timeout=TIMEOUT)
    taken.set()
    ok = isinstance(got, bytearray) and got == pattern(n, 1)
    del got
    q.put(bytearray(pattern(n, 2)), timeout=TIMEOUT)
    return ok


def fds_on(inode: int) -> int:
    """How many of this process's fds are open on the file with ``inode``."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # (listdir's own fd, closed since)
            count += os.stat(f"/proc/self/fd/{name}").st_ino == inode
    return count


def grow_then_count_fds(q: corral.Queue, n: int, inode: int) -> tuple[int, int, int]:
    """Count the fds open on the queue's memfd (``inode``) here, grow the queue
    with a message of ``n`` bytes, get it back, and count again. Returns (the fds
    before, the fds after, the data area size after)."""
    before = fds_on(inode)
    q.put(pattern(n, 3), timeout=TIMEOUT)
    assert q.get(timeout=TIMEOUT) == pattern(n, 3)
    return before, fds_on(inode), q._ring.size
