"""Child targets for the queue tests: module-level, so spawn and forkserver can pickle
them, and light to import."""

from __future__ import annotations

import os
import signal
import struct
from multiprocessing.connection import Connection
from typing import Any

import corral
from corral._core import _ring


def put_all(q: corral.Queue, items: list[Any]) -> int:
    for x in items:
        q.put(x, timeout=30)
    return len(items)


def put_many_all(q: corral.Queue, items: list[Any]) -> int:
    q.put_many(items, timeout=30)
    return len(items)


def get_n(q: corral.Queue, n: int) -> list[Any]:
    return [q.get(timeout=30) for _ in range(n)]


def get_until_shutdown(q: corral.Queue) -> list[Any]:
    return list(q)


def _park(conn: Connection, point: str) -> Any:
    """A hook that tells the parent it reached ``point``, then waits to be killed."""

    def hook(where: str) -> None:
        if where == point:
            conn.send_bytes(point.encode())
            signal.pause()  # SIGKILL ends this; nothing else is expected to come

    return hook


def put_and_park(q: corral.Queue, item: Any, point: str, conn: Connection) -> None:
    """Put ``item`` and stop at hook ``point`` inside the put (mutex held)."""
    _ring.set_hook(_park(conn, point))
    q.put(item)


def put_publish_and_park(q: corral.Queue, item: Any, point: str, conn: Connection) -> None:
    """Put ``item`` and stop at hook ``point`` (the publishing store) after making
    that store itself: the message is published, ``count`` not yet raised."""
    ring = q._ring
    park = _park(conn, point)

    def publish_then_park(where: str) -> None:
        if where == point:
            tail = ring._q[_ring.Q_TAIL]
            (frame_len,) = struct.unpack_from("@Q", ring._mm, _ring.DATA + ring.off(tail))
            ring._q[_ring.Q_TAIL] = tail + frame_len
        park(where)

    _ring.set_hook(publish_then_park)
    q.put(item)


def get_and_park(q: corral.Queue, point: str, conn: Connection) -> None:
    """Get, and stop at hook ``point`` inside the get (mutex held)."""
    _ring.set_hook(_park(conn, point))
    q.get(timeout=30)


def put_with_tokens(q: corral.Queue, items: list[Any], conn: Connection) -> None:
    """Send the index of each item just before putting it (then park forever)."""
    for i, x in enumerate(items):
        conn.send(i)
        q.put(x, timeout=30)
    conn.send(len(items))
    signal.pause()


def get_with_reports(q: corral.Queue, conn: Connection) -> None:
    """Get (id, payload) items forever, reporting each id after it was got. (Only
    the id: a short write to a pipe is atomic, so a kill never cuts a report.)"""
    while True:
        ident, _payload = q.get(timeout=60)
        conn.send(ident)


def blocked_get(q: corral.Queue, conn: Connection) -> Any:
    conn.send_bytes(b"about to block")
    return q.get(timeout=60)


def pid() -> int:
    return os.getpid()


def use_pure_python() -> None:
    """Turn the C fast path off in this process (no-op where it was not built)."""
    if _ring._speedups is not None:
        _ring._speedups.set_enabled(False)


def put_tagged(q: corral.Queue, tag: str, n: int, pure: bool) -> int:
    """Put (tag, i, payload) for i in range(n), through the C or the Python path."""
    if pure:
        use_pure_python()
    for i in range(n):
        q.put((tag, i, bytes(i % 700)), timeout=30)
    return n


def get_count(q: corral.Queue, n: int, pure: bool) -> list[Any]:
    """Get ``n`` messages, through the C or the Python path."""
    if pure:
        use_pure_python()
    return [q.get(timeout=30) for _ in range(n)]
