"""The outcome log: where a worker keeps the outcomes it has not committed yet.

Between two commits (see ``_worker``), a worker that runs fast items writes each
item's outcome here, pickled, before it starts the next item. The log is a memfd
the parent made; the parent reads it only after the worker died, so nothing is
read while it is written, and the kernel's teardown of the dead process orders
every store before the read. Outcomes in the log are delivered, not lost.

    header: base (u64: chunk seq << 32 | index in the chunk of the first record)
            count (u64: records written)
            ends[MAX_RECORDS] (i64: end offset of each record; negative: an error)
    data:   the records, back to back, from DATA_START

A record is published by storing its end, then the count: a worker killed between
the two leaves an uncounted record, never a counted one that is half written.
A worker commits (sends outcomes on its socket) at least every MAX_RECORDS items,
and then starts the log afresh.

The worker's hot loop writes records in C when the optional extension is built
(``_speedups.map_logged``, which pickles ints, floats, str, bytes, bools and None
itself, in a few ns); this module is the same layout in Python, and checks at
import that the two agree.
"""

from __future__ import annotations

import mmap
import os
import pickle
from typing import Any

from .._core._fdpass import FdHandle
from .._core._native import speedups

__all__ = ["MAX_RECORDS", "LogReader", "LogWriter", "new_log"]

# Items a worker may run between two commits, at most: the size of the ends table.
MAX_RECORDS = 4096
_HEADER_WORDS = 2 + MAX_RECORDS
DATA_START = 8 * _HEADER_WORDS
# The log's size at first; it grows (by doubling) to hold what a worker writes.
INITIAL_SIZE = DATA_START + (1 << 20)

_layout = (
    None
    if getattr(speedups, "map_logged", None) is None
    else (getattr(speedups, "LOG_MAX_RECORDS", None), getattr(speedups, "LOG_DATA_START", None))
)
if _layout is not None and _layout != (MAX_RECORDS, DATA_START):
    raise ImportError("corral._core._speedups disagrees with corral._pool._log on the log layout")


def new_log() -> FdHandle:
    """A log for one worker: a memfd the parent keeps and the worker writes."""
    fd = os.memfd_create("corral-pool-log", os.MFD_CLOEXEC)
    return FdHandle(fd, "pool worker log")


class LogWriter:
    """The worker's side."""

    def __init__(self, handle: FdHandle):
        self.fd = handle.fd
        self.size = 0
        self._map(INITIAL_SIZE)

    def _map(self, size: int) -> None:
        if os.fstat(self.fd).st_size < size:
            os.ftruncate(self.fd, size)
        self.mm = mmap.mmap(self.fd, size)
        self.size = size
        self.words = memoryview(self.mm)[:DATA_START].cast("q")

    def start(self, seq: int, index: int) -> None:
        """The next record is the outcome of item ``index`` of chunk ``seq``."""
        self.words[1] = 0
        self.words[0] = (seq << 32) | index

    def add(self, data: bytes, error: bool) -> None:
        """One more outcome: ``data`` is its pickle (an error record's, if ``error``).

        Records may also have been added by ``_speedups.map_logged``: where the next
        one goes is read from the header, never kept here.
        """
        words = self.words
        count = words[1]
        start = abs(words[1 + count]) if count else DATA_START
        end = start + len(data)
        if end > self.size:
            self._grow(end)
            words = self.words
        self.mm[start:end] = data
        words[2 + count] = -end if error else end
        words[1] = count + 1

    def _grow(self, need: int) -> None:
        words = self.words
        size = self.size
        while size < need:
            size *= 2
        self.words = memoryview(b"")
        words.release()
        self.mm.close()
        self._map(size)


class LogReader:
    """The parent's side, after the worker died: what it logged, and for which items."""

    @staticmethod
    def read(handle: FdHandle) -> tuple[int, int, list[tuple[bool, Any]]]:
        """(chunk seq, index of the first record, [(ok, value or error record)])."""
        size = os.fstat(handle.fd).st_size
        if size < DATA_START:
            return 0, 0, []
        with mmap.mmap(handle.fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as mm:
            words = memoryview(mm)[:DATA_START].cast("q")
            try:
                base, count = words[0], words[1]
                records: list[tuple[bool, Any]] = []
                start = DATA_START
                for i in range(min(count, MAX_RECORDS)):
                    end = words[2 + i]
                    ok = end > 0
                    end = abs(end)
                    try:
                        records.append((ok, pickle.loads(mm[start:end])))
                    except Exception as exc:  # it can't be rebuilt here: say so
                        records.append((False, exc))
                    start = end
            finally:
                words.release()
        return base >> 32, base & 0xFFFFFFFF, records
