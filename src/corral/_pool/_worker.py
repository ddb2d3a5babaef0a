"""The worker: run chunks in order, and make each item's outcome durable as it goes.

    parent --chunk (seq, mode, fn, items, commit_every, commit_seconds)--> worker
    worker: for each item: running word := (seq, items started)   # shared memory
                           run it; keep its outcome (and log it, see below)
                           every ``commit_every`` items: send the outcomes kept
    parent <--("r", count, errors, seconds, final, retiring) + values-- worker

The running word and the commits are what let the parent account for every item
when a worker dies mid-chunk (see ``_engine.Engine._on_death``): items whose
outcome arrived are done; the item the word names was running and is charged one
attempt; later items never started and are re-queued, uncharged. Items between
the two had finished: their outcomes are in the outcome log (``_log``), which the
parent reads after the death.

Commits come about every ``COMMIT_SECONDS`` of work, or a job's own interval (a
cluster node's chunk commits once per report interval: its outcomes leave the node
no more often than that); items slower than that are committed one by one and need
no log. Every other item's outcome is logged before the next item starts, however
fast the item: in C when the optional extension is built (``_speedups.map_logged``:
ints, floats, str, bytes, bools and None are pickled there in a few ns; other
results through ``_log_record``), else in Python, at about 1.4 µs an item. So a
finished item's outcome survives its worker's death and is delivered; nothing
finished is lost or run again.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .._core._fdpass import FdHandle
from .._core._native import speedups
from .._core._shm import SharedMemory
from .._remote import dumps, encode_error
from ._log import MAX_RECORDS, LogWriter
from ._wire import WorkerEnd, decode, encode

__all__ = [
    "COMMIT_SECONDS",
    "DECODING",
    "MODE_CALL",
    "MODE_MAP",
    "MODE_STAR",
    "RETURNED",
    "WorkerSetup",
    "worker_main",
]

# How much work a worker does between two commits of outcomes. A commit costs a
# pickle and a socket write (some µs), so commits further apart cost less; but
# between commits every outcome is also pickled into the log (see ``_log``), and
# the parent learns of outcomes only at commits. Items slower than this are
# committed one by one.
COMMIT_SECONDS = 0.002
# Upper bound on items between two commits: what the outcome log can index.
MAX_COMMIT_ITEMS = MAX_RECORDS

MODE_MAP, MODE_STAR, MODE_CALL = 0, 1, 2
# The running word while a chunk is being unpickled (before its seq is known): a
# death then is the chunk's doing (a __reduce__ that exits or segfaults), not bad luck.
DECODING = -1

# A flag in the running word: the item it names has returned (or raised), and its
# outcome is being logged or committed. Killed before that is done, such an item is
# reported lost (WorkerCrashed, "it had finished"), not charged and re-run.
RETURNED = 1 << 31

# The hot loops in C, when the optional extension is built: the running word alone
# (about 45 ns an item instead of 90), or with the outcome log (about 60 ns an item
# for a small int, instead of 1.5 µs); the "100k trivial tasks" pool benchmark.
_map_tracked = getattr(speedups, "map_tracked", None)
_map_logged = getattr(speedups, "map_logged", None)
if _map_logged is not None and getattr(speedups, "RETURNED_BIT", None) != RETURNED:
    raise ImportError("corral._core._speedups disagrees with corral._pool._worker on RETURNED")

_terminating = False


class WorkerSetup:
    """What a worker needs to start; pickled once per worker."""

    __slots__ = (
        "initargs",
        "initializer",
        "log",
        "max_memory",
        "maxtasks",
        "slot",
        "title",
        "words",
    )

    def __init__(
        self,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        maxtasks: int | None,
        max_memory: int | None,
        title: str,
        words: SharedMemory,
        slot: int,
        log: FdHandle,
    ):
        self.initializer = initializer
        self.initargs = initargs
        self.maxtasks = maxtasks
        self.max_memory = max_memory
        self.title = title
        self.words = words
        self.slot = slot
        self.log = log

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    global _terminating
    _terminating = True
    raise SystemExit(128 + signum)


def _set_title(title: str) -> None:
    try:
        setproctitle = importlib.import_module("setproctitle")
    except ImportError:
        return
    setproctitle.setproctitle(title)


def _rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker_main(conn: Connection, setup: WorkerSetup) -> None:
    """A worker's life: initializer, then chunks in order until told to stop.

    Messages out: ``("initializing",)`` before the initializer; ``("ready",)``;
    ``("init", error)`` if the initializer raised;
    ``("bad", error)`` for a chunk that could not be unpickled; ``("r", ...)``
    commits (see the module docstring).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # terminate(): unwind, tear down
    _set_title(setup.title)
    end = WorkerEnd(socket.socket(fileno=os.dup(conn.fileno())))
    conn.close()
    words = setup.words.buf.cast("q")
    log = LogWriter(setup.log)
    if setup.initializer is not None:
        end.send_obj(("initializing",))  # its deadline starts now, not at spawn
        try:
            setup.initializer(*setup.initargs)
        except BaseException as exc:
            if _terminating:
                raise
            _log_initializer_failure()
            end.send_obj(("init", encode_error(exc)))
            return
    end.send_obj(("ready",))
    done = 0
    while True:
        frame = end.recv()
        if frame is None or not len(frame[0]):
            return
        words[setup.slot] = DECODING
        try:
            seq, mode, fn, items, commit_every, commit_seconds = decode(*frame, end)
            if items.__class__ is bytes:  # plain scalars, as _wire.dump_scalars packs them
                items = pickle.loads(items)
        except BaseException as exc:
            if _terminating:
                raise
            end.send_obj(("bad", encode_error(exc)))
            continue
        del frame
        done += len(items)
        retiring = _run_chunk(
            end, words, log, setup, seq, mode, fn, items, commit_every, commit_seconds, done
        )
        del fn, items
        end.send_freed()  # the arguments' segments, if they are gone now
        if retiring:
            return


def _log_initializer_failure() -> None:
    """Logged in the worker as the stdlib's executor does (its users and tests hook the
    "concurrent.futures" logger); the parent raises it too, as BrokenPool's cause."""
    import logging  # only here: it costs about 5 ms at import

    logging.getLogger("concurrent.futures").critical("Exception in initializer:", exc_info=True)


def _caller(mode: int, fn: Callable[..., Any]) -> Callable[[Any], Any]:
    if mode == MODE_MAP:
        return fn
    if mode == MODE_STAR:
        return lambda args: fn(*args)
    return lambda call: fn(*call[0], **call[1])


def commit_policy(per_item: float, seconds: float = COMMIT_SECONDS) -> int:
    """Items between two commits, for items that take ``per_item`` seconds each and
    commits about ``seconds`` apart."""
    if per_item <= 0:
        return MAX_COMMIT_ITEMS
    return max(1, min(MAX_COMMIT_ITEMS, int(seconds / per_item)))


def _run_chunk(
    end_point: WorkerEnd,
    words: memoryview,
    log: LogWriter,
    setup: WorkerSetup,
    seq: int,
    mode: int,
    fn: Callable[..., Any],
    items: list[Any],
    commit_every: int,
    commit_seconds: float,
    done: int,
) -> bool:
    """Run one chunk, committing outcomes as it goes; True if the worker retires after.

    While commits are more than one item apart, each outcome also goes into the
    log before the next item starts, so that a death loses none of them.
    """
    # The hot loop of every map: kept inline and small (the try is outside the inner
    # loop, where it costs nothing per item). _tools/benchmarks/pool_bench.py's
    # "100k trivial tasks" case is what it is measured by.
    call = _caller(mode, fn)
    slot = setup.slot
    # The running word, stored before item i runs: (chunk, items started) = base + i.
    base = (seq << 32) + 1
    word = base
    n = len(items)
    pos = 0  # the first item of the group of items between two commits
    while True:
        end = min(n, pos + commit_every)
        logging = commit_every > 1
        if logging:
            log.start(seq, pos)
        values: list[Any] = []
        errors: dict[int, Any] = {}
        append = values.append
        start = time.perf_counter()
        i = pos
        while i < end:
            try:
                if logging and _map_logged is not None:  # the loop below, in C
                    while i < end:
                        record = _map_logged(
                            call, items, i, end, values, words, slot, base, log.mm, _log_record
                        )
                        if record is None:
                            break
                        i, data, error = record  # it did not fit: grow the log here
                        log.add(data, error)
                elif not logging and _map_tracked is not None:  # the same, unlogged
                    _map_tracked(call, items, i, end, values, words, slot, base)
                else:
                    for item in items[i:end]:
                        words[slot] = word
                        value = call(item)
                        words[slot] = word | RETURNED
                        word += 1
                        append(value)
                        if logging:
                            log.add(*_log_record(value))
                i = end
            except BaseException as exc:
                if _terminating:
                    raise
                words[slot] = (base + pos + len(values)) | RETURNED  # it raised
                record = encode_error(exc)
                errors[len(values)] = record
                append(None)
                if logging:
                    log.add(pickle.dumps(record), True)
                i = pos + len(values)
            word = base + i  # the C loops keep no count here
        seconds = time.perf_counter() - start
        if end == n:
            break
        _commit(end_point, values, errors, seconds, False, False)
        commit_every = commit_policy(seconds / (end - pos), commit_seconds)
        pos = end
    retiring = (setup.maxtasks is not None and done >= setup.maxtasks) or (
        setup.max_memory is not None and _rss_bytes() > setup.max_memory
    )
    _commit(end_point, values, errors, seconds, True, retiring)
    return retiring


def _log_record(value: Any) -> tuple[bytes, bool]:
    """An outcome's log record: (its pickle, False), or (a pickling error's, True)."""
    try:
        return pickle.dumps(value, 5), False
    except BaseException:
        try:
            return dumps(value, 5), False
        except BaseException as exc:
            if _terminating:
                raise
            exc.add_note("corral: raised while pickling the task's result")
            return pickle.dumps(encode_error(exc)), True


def _commit(
    end: WorkerEnd,
    values: list[Any],
    errors: dict[int, Any],
    seconds: float,
    final: bool,
    retiring: bool,
) -> None:
    """Send outcomes: a small frame that counts them, then a frame with the values.

    Should the values fail to unpickle in the parent, it still knows how many
    items they were, and fails exactly those.
    """
    try:
        data = encode(values, end.segments)
    except BaseException:
        if _terminating:
            raise
        values, errors = _one_by_one(values, errors)
        data = encode(values, end.segments)
    end.send(encode(("r", len(values), errors, seconds, final, retiring)), data)


def _one_by_one(values: list[Any], errors: dict[int, Any]) -> tuple[list[Any], dict[int, Any]]:
    """Replace each value that can't be pickled by its pickling error."""
    for i, value in enumerate(values):
        if i in errors:
            continue
        try:
            encode(value).discard()
        except BaseException as exc:
            if _terminating:
                raise
            exc.add_note("corral: raised while pickling the task's result")
            values[i] = None
            errors[i] = encode_error(exc)
    return values, errors
