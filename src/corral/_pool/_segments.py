"""Shared-memory segments for large buffers, reused across tasks and calls.

A frame's out-of-band buffers (numpy arrays and other pickle-5 buffers of at least
``_wire.OOB_MIN_BYTES``) are copied into one segment: a memfd that its sender keeps
mapped. Its fd rides on the frame (SCM_RIGHTS); the receiver maps it and unpickles
straight from the mapping, with no copy. When the last object built on that mapping
is gone, the receiver tells the sender (a "freed" control frame, see ``_wire``), and
the sender puts the segment back in its cache for the next buffer of that size::

    sender                                    receiver
    take(n) -> segment k (cached, or new)
    copy the buffers in, send frame + fd  --> mmap, unpickle (arrays view the map)
                                              ... the arrays die: finalizer ->
    release(k) -> cache   <-- freed [k] ----  queued, sent with its next frame

Why: a fresh memfd per buffer costs its page allocation on every write (7.8 ms for
16 MiB here, against 0.7 ms to copy into pages that are already there), and the
write is on the sender's path: the scheduler thread's for arguments.

Who owns what: each ``Engine`` has one ``Segments`` for what it sends, each worker
process one for its results. A segment lent to a worker that dies is back in the
parent's cache as soon as the worker's channel closes (its mapping died with it);
the parent's segments are closed when its pool stops, a worker's when it exits.
Everything is a memfd: nothing is ever in /dev/shm, and the kernel frees a segment
when its last fd and mapping are gone, whoever dies first.

Mappings are made with libc's mmap (``_core._shm.map_fd``), not ``mmap.mmap``, which keeps
a duplicate of the fd for its life: a result the caller holds would cost it an fd,
where the stdlib's costs none. A segment costs its sender one fd; a mapping the
receiver holds, none.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time

from .._core._shm import NAME_PREFIX, map_fd

__all__ = ["CACHE_BYTES", "IDLE_SECONDS", "Segment", "Segments"]

# Idle segments a sender keeps for reuse, in bytes. More keeps more large buffers
# fast (their pages are already allocated) at the price of holding that much memory
# while nothing is sent; the least recently used are closed beyond it.
CACHE_BYTES = 256 * 1024 * 1024
# How long an idle segment is kept. Longer keeps reuse across calls that come
# further apart; shorter gives the memory back sooner to a program that has moved
# on. The parent trims on its scheduler's clock; a worker when it has waited this
# long for work.
IDLE_SECONDS = 2.0
# A cached segment is reused for a buffer that fills at least this share of it, so
# that a small buffer never pins a large segment.
MIN_FILL = 0.5
# Segments are sized in multiples of this, so that sizes that differ a little reuse
# the same segments.
GRAIN = 64 * 1024


class Segment:
    """A memfd and the sender's mapping of it (``view``, bytes)."""

    __slots__ = ("fd", "id", "idle_since", "size", "view")

    def __init__(self, ident: int, size: int):
        self.id = ident
        self.size = size
        self.idle_since = 0.0
        self.fd = os.memfd_create(f"{NAME_PREFIX}pool-buffers", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self.view = memoryview(map_fd(self.fd, size)).cast("B")
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        self.view.release()  # the mapping goes with its last view
        os.close(self.fd)


class Segments:
    """One sender's segments: lent to receivers, or cached for reuse.

    Thread-safe: the scheduler thread takes and releases, and a closing pool may
    release from another thread.
    """

    def __init__(self, cache_bytes: int = CACHE_BYTES):
        self.cache_bytes = cache_bytes
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._lent: dict[int, Segment] = {}
        self._idle: collections.OrderedDict[int, Segment] = collections.OrderedDict()
        self._idle_bytes = 0
        self._pid = os.getpid()
        self.created = 0  # segments made so far (a statistic, for tests)

    def take(self, nbytes: int) -> Segment:
        """A segment of at least ``nbytes``, lent until :meth:`release`."""
        with self._lock:
            best = None
            for seg in self._idle.values():
                fits = seg.size * MIN_FILL <= nbytes <= seg.size
                if fits and (best is None or seg.size < best.size):
                    best = seg
            if best is not None:
                del self._idle[best.id]
                self._idle_bytes -= best.size
                self._lent[best.id] = best
                return best
        seg = Segment(next(self._ids), max(GRAIN, -(-nbytes // GRAIN) * GRAIN))
        with self._lock:
            self._lent[seg.id] = seg
            self.created += 1
        return seg

    def release(self, ident: int) -> None:
        """The receiver is done with segment ``ident`` (or it was never sent)."""
        with self._lock:
            seg = self._lent.pop(ident, None)
            if seg is None:
                return
            seg.idle_since = time.monotonic()
            self._idle[ident] = seg
            self._idle_bytes += seg.size
            closing = []
            while self._idle_bytes > self.cache_bytes:
                _, old = self._idle.popitem(last=False)
                self._idle_bytes -= old.size
                closing.append(old)
        for old in closing:
            old.close()

    def trim(self, idle_for: float | None = None) -> None:
        """Close the segments idle for ``idle_for`` (default ``IDLE_SECONDS``) or more."""
        cutoff = time.monotonic() - (IDLE_SECONDS if idle_for is None else idle_for)
        closing = []
        with self._lock:
            while self._idle:  # in the order they became idle
                seg = next(iter(self._idle.values()))
                if seg.idle_since > cutoff:
                    break
                del self._idle[seg.id]
                self._idle_bytes -= seg.size
                closing.append(seg)
        for seg in closing:
            seg.close()

    def next_trim(self) -> float | None:
        """When (``time.monotonic()``) :meth:`trim` will next have something to close."""
        with self._lock:
            if not self._idle:
                return None
            return next(iter(self._idle.values())).idle_since + IDLE_SECONDS

    @property
    def idle_bytes(self) -> int:
        return self._idle_bytes

    def lent(self) -> int:
        """How many segments are out with receivers."""
        return len(self._lent)

    def close(self) -> None:
        """Close every segment; lent ones stay alive in their receivers' mappings."""
        with self._lock:
            segs = list(self._lent.values()) + list(self._idle.values())
            self._lent.clear()
            self._idle.clear()
            self._idle_bytes = 0
        if os.getpid() != self._pid:  # a forked copy: the parent's to close, not ours
            return
        for seg in segs:
            seg.close()
