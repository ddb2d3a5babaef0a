"""corral.Pool: a worker pool that loses one task to a crash, never the pool.

    user threads                       scheduler thread (one per pool)             workers
    ------------                       -------------------------------             -------
    map/apply/submit/imap
      _Job: items + result sink  --->  jobs (FIFO) -> chunk -> pickle  --- pipe --> _worker_main
      (imap pulls its input                 per worker: the chunks it holds,         run chunk
       lazily, window-bounded)              in order (the first one is running)      results
                                       wait(pipes, sentinels, wake fd, deadlines) <-- pipe ---
      results / futures  <-----------  deliver results; size the next chunk
                                       sentinel ready: worker died -> its chunks
                                         re-queued item by item, the running item
                                         charged one try; worker replaced
                                       deadline passed: worker tree killed, task
                                         charged one try (TaskTimeout when none left)

- ``_Job`` holds one call's items (a list for map, a growing window for imap) and is
  also where its results go (``_MapResult``, ``_IMapIterator``, ``_FutureJob``).
- ``_Engine`` owns the workers and the scheduler thread; ``Pool`` and
  ``ProcessPoolExecutor`` are thin fronts over it.
- Each worker has its own duplex pipe, and runs the chunks it receives in order, so
  the parent always knows exactly which items each worker holds, and which one it
  is running.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import itertools
import math
import mmap
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, TypeVar

from ._context import CorralContext, get_context
from ._exceptions import CorralError, RemoteTraceback, TaskTimeout
from ._process import Process
from ._workercrash import WorkerCrashed

__all__ = ["ApplyResult", "AsyncResult", "IMapIterator", "MapResult", "Pool", "PoolStatistics"]

T = TypeVar("T")

# --- Tunables -----------------------------------------------------------------------

# How long one automatically sized chunk should take to run in a worker. Longer
# chunks amortise the per-message cost better; shorter ones balance load and keep
# the items lost to a crash (re-run, never failed) few.
TARGET_CHUNK_SECONDS = 0.02
# Automatic chunks start at one item and grow at most this much per measured chunk,
# so a slow task is never handed out in a large batch before it was measured.
CHUNK_GROWTH = 8
# Upper bound on an automatic chunk; also bounds what one crash re-runs.
MAX_CHUNK = 4096
# Chunks a worker may hold beyond the one it is running. One keeps the worker busy
# while its previous result travels back; more would only unbalance the load.
PREFETCH = 1
# A prefetched chunk must fit in the pipe's buffer, so the scheduler never blocks
# writing to a busy worker (which may itself be blocked writing its result).
PREFETCH_MAX_BYTES = 32 * 1024
# imap/corral.map keep at most this many automatic chunks per worker in flight
# (pulled from the input but not yet consumed): the memory bound on lazy input.
WINDOW_CHUNKS_PER_WORKER = 4
# terminate(): how long busy workers get to act on SIGTERM (their teardown kills and
# reaps what they started) before they and their subtrees are SIGKILLed. Ctrl-C
# promises the parent's KeyboardInterrupt within 1 s, so this stays well below.
TERMINATE_GRACE = 0.5
# close()+join(): how long idle workers get to exit once told to stop.
CLOSE_GRACE = 30.0
# A worker that dies before it ever became ready this many times in a row breaks the
# pool (an import error under spawn, say), rather than being restarted forever.
MAX_EARLY_DEATHS = 3

_MODE_MAP, _MODE_STAR, _MODE_CALL = 0, 1, 2
_PICKLE_ERRORS = (pickle.PicklingError, TypeError, AttributeError, ValueError, RecursionError)


def _dumps(obj: Any) -> bytes:
    """pickle, falling back to cloudpickle (lambdas, closures, __main__ functions)."""
    try:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except _PICKLE_ERRORS as first:
        try:
            import cloudpickle  # type: ignore[import-untyped]
        except ImportError:
            first.add_note(
                "corral: cloudpickle would pickle lambdas and closures: pip install 'corral[pool]'"
            )
            raise first from None
        data: bytes = cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        return data


# --- Messages: pickles through the pipe, large buffers beside it ----------------------

# Buffers (numpy arrays, bytes-like objects pickled with protocol 5) at least this
# large travel out of band: written once into a memfd whose fd is passed with the
# message (SCM_RIGHTS), and mapped copy-on-write by the reader. Through the pipe they
# would be copied four times (pickle, pipe write, pipe read, unpickle); smaller ones
# are cheaper in band than a memfd and an fd transfer.
OOB_MIN_BYTES = 1 << 20

_IN_BAND, _OUT_OF_BAND = b"\0", b"\1"


def _encode(obj: Any) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj`` (cloudpickle as the fallback); large buffers are returned apart."""
    buffers: list[memoryview] = []

    def keep_apart(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes >= OOB_MIN_BYTES:
            buffers.append(raw)
            return False
        return True

    try:
        return pickle.dumps(obj, 5, buffer_callback=keep_apart), buffers
    except _PICKLE_ERRORS as first:
        buffers.clear()
        try:
            import cloudpickle
        except ImportError:
            first.add_note(
                "corral: cloudpickle would pickle lambdas and closures: pip install 'corral[pool]'"
            )
            raise first from None
        data: bytes = cloudpickle.dumps(obj, 5, buffer_callback=keep_apart)
        return data, buffers


def _send(conn: Connection, sock: socket.socket, payload: bytes, buffers: list[memoryview]) -> None:
    if not buffers:
        conn.send_bytes(_IN_BAND + payload)
        return
    fd = os.memfd_create("corral-pool-buffers", os.MFD_CLOEXEC)
    try:
        for buf in buffers:
            view = buf.cast("B")
            while view:
                view = view[os.write(fd, view) :]
        sizes = [b.nbytes for b in buffers]
        header = struct.pack(f"<I{len(sizes)}Q", len(sizes), *sizes)
        conn.send_bytes(_OUT_OF_BAND + header + payload)
        socket.send_fds(sock, [b"f"], [fd])
    finally:
        os.close(fd)


def _recv(conn: Connection, sock: socket.socket) -> tuple[memoryview, list[memoryview] | None]:
    """One message: (pickle, out-of-band buffers). An empty pickle means "stop"."""
    data = memoryview(conn.recv_bytes())
    if not data or data[:1] == _IN_BAND:
        return data[1:], None
    (count,) = struct.unpack_from("<I", data, 1)
    sizes = struct.unpack_from(f"<{count}Q", data, 5)
    _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    if not fds:
        raise EOFError("the peer died between a message and its buffers")
    try:
        mapped = mmap.mmap(fds[0], sum(sizes), mmap.MAP_PRIVATE)
    finally:
        for fd in fds:
            os.close(fd)
    whole = memoryview(mapped)
    buffers, offset = [], 0
    for size in sizes:
        buffers.append(whole[offset : offset + size])
        offset += size
    return data[5 + 8 * count :], buffers


def _sock_for(conn: Connection) -> socket.socket:
    """A socket object on (a dup of) the pipe's socketpair end, to pass fds with."""
    return socket.socket(fileno=os.dup(conn.fileno()))


# --- The worker -----------------------------------------------------------------------


def _error_record(exc: BaseException) -> tuple[bytes | None, str, str, str]:
    tb = "".join(traceback.format_exception(exc))
    try:
        data: bytes | None = _dumps(exc)
        pickle.loads(data)  # type: ignore[arg-type]
    except Exception:
        data = None
    return (data, tb, type(exc).__qualname__, str(exc))


def _rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _set_title(title: str) -> None:
    try:
        setproctitle = importlib.import_module("setproctitle")
    except ImportError:
        return
    setproctitle.setproctitle(title)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _worker_main(
    conn: Connection,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    maxtasks: int | None,
    max_memory: int | None,
    title: str,
) -> None:
    """A worker's life: initializer, then run chunks in order until told to stop.

    Messages in: pickled ``(mode, fn, items)`` chunks, or ``b""`` to stop. Messages
    out: ``("ready",)``, ``("init", tb)``, ``("bad", error)`` when a chunk could not
    be unpickled, and ``("done", values, errors, seconds, retiring)`` per chunk.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # terminate(): unwind, tear down
    _set_title(title)
    sock = _sock_for(conn)
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            _send(conn, sock, pickle.dumps(("init", _error_record(exc)[1])), [])
            return
    _send(conn, sock, pickle.dumps(("ready",)), [])
    done = 0
    while True:
        try:
            data, buffers = _recv(conn, sock)
        except EOFError:
            return
        if not data:
            return
        t0 = time.perf_counter()
        try:
            mode, fn, items = pickle.loads(data, buffers=buffers)
        except BaseException as exc:
            _send(conn, sock, pickle.dumps(("bad", _error_record(exc)[1:])), [])
            continue
        del data, buffers
        values: list[Any] = []
        errors: dict[int, Any] = {}
        while len(values) < len(items):
            rest = items[len(values) :] if values else items
            try:
                # list.extend keeps what was appended before an exception, so a
                # failing item costs nothing to the ones before it, and the loop
                # carries on after it.
                if mode == _MODE_MAP:
                    values.extend(map(fn, rest))
                elif mode == _MODE_STAR:
                    values.extend(itertools.starmap(fn, rest))
                else:
                    values.extend(fn(*args, **kwargs) for args, kwargs in rest)
            except Exception as exc:
                errors[len(values)] = _error_record(exc)
                values.append(None)
        del items
        seconds = time.perf_counter() - t0
        done += len(values)
        retiring = (maxtasks is not None and done >= maxtasks) or (
            max_memory is not None and _rss_bytes() > max_memory
        )
        try:
            reply = _encode(("done", values, errors, seconds, retiring))
        except Exception:
            reply = _encode_item_by_item(values, errors, seconds, retiring)
        del values
        _send(conn, sock, *reply)
        del reply
        if retiring:
            return


def _encode_item_by_item(
    values: list[Any], errors: dict[int, Any], seconds: float, retiring: bool
) -> tuple[bytes, list[memoryview]]:
    for i, value in enumerate(values):
        if i in errors:
            continue
        try:
            values[i] = pickle.loads(_dumps(value))
        except Exception as exc:
            values[i] = None
            err = CorralError(f"the task's result could not be pickled: {exc!r}")
            errors[i] = _error_record(err)
    return _encode(("done", values, errors, seconds, retiring))


def _decode_error(record: tuple[bytes | None, str, str, str]) -> BaseException:
    data, tb, typename, message = record
    exc: BaseException
    try:
        if data is None:
            raise ValueError("it could not be pickled")
        exc = pickle.loads(data)
    except Exception as why:
        exc = CorralError(f"the task raised {typename}: {message} (not re-raised as such: {why})")
    exc.__cause__ = RemoteTraceback(tb)
    return exc


# --- Jobs: one call's items, and where its results go --------------------------------


class _Job:
    """One call's items and results. Items are indexed 0.. in input order."""

    def __init__(self, engine: _Engine, fn: Callable[..., Any], mode: int, chunksize: int | None):
        self.engine = engine
        self.fn = fn
        self.mode = mode
        self.fixed_chunksize = chunksize
        self.name = getattr(fn, "__qualname__", None) or repr(fn)
        self.items: list[Any] = []  # items[i] is item base + i
        self.base = 0
        self.cursor = 0  # next item (absolute index) not yet handed out
        self.solo: collections.deque[tuple[int, Any]] = collections.deque()  # re-run alone
        self.tries: dict[int, int] = {}
        self.chunk = 1  # the next automatic chunk size
        self.balance_cap = MAX_CHUNK
        self.input_done = True
        self.cancelled = False

    def describe(self, index: int, item: Any) -> str:
        """How errors name a task: ``task 17 of map(f), item 34`` or ``task f(1, 2)``."""
        if self.mode == _MODE_CALL:
            args, kwargs = item
            shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
            text = f"{self.name}({', '.join(shown)})"
        else:
            text = f"{index} of map({self.name}), item {item!r}"
        return "task " + (text if len(text) <= 120 else text[:117] + "...")

    def has_work(self) -> bool:
        return not self.cancelled and (bool(self.solo) or self.cursor < self.base + len(self.items))

    def next_size(self, workers: int) -> int:
        if self.fixed_chunksize is not None:
            return self.fixed_chunksize
        return max(1, min(self.chunk, self.balance_cap))

    def measured(self, n: int, seconds: float) -> None:
        if self.fixed_chunksize is not None or n < self.chunk // 2:
            return
        per_item = seconds / n
        ideal = TARGET_CHUNK_SECONDS / per_item if per_item > 0 else MAX_CHUNK
        self.chunk = int(max(1, min(ideal, self.chunk * CHUNK_GROWTH, MAX_CHUNK)))

    def take(self, n: int) -> tuple[int, list[Any]]:
        start = self.cursor
        lo = start - self.base
        chunk = self.items[lo : lo + n]
        self.cursor += len(chunk)
        if self.cursor - self.base > 4096 and self.cursor - self.base > len(self.items) // 2:
            del self.items[: self.cursor - self.base]
            self.base = self.cursor
        return start, chunk

    # Called by the scheduler thread, never under the engine lock.
    def deliver(self, start: int, values: list[Any], errors: dict[int, BaseException]) -> None:
        raise NotImplementedError

    def abort(self, exc: BaseException) -> None:
        raise NotImplementedError


class AsyncResult(Generic[T]):
    """The result of ``apply_async``/``map_async``, as :class:`multiprocessing.pool.AsyncResult`."""

    __module__ = "corral"

    def __init__(
        self,
        callback: Callable[[T], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ):
        self._event = threading.Event()
        self._success = False
        self._value: Any = None
        self._callback = callback
        self._error_callback = error_callback

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> T:
        self.wait(timeout)
        if not self.ready():
            raise multiprocessing.TimeoutError
        if self._success:
            value: T = self._value
            return value
        raise self._value

    def _finish(self, success: bool, value: Any) -> None:
        self._success, self._value = success, value
        self._event.set()
        callback = self._callback if success else self._error_callback
        if callback is not None:
            try:
                callback(value)
            except Exception:
                sys.stderr.write("corral.Pool: a result callback raised:\n")
                traceback.print_exc()


ApplyResult = AsyncResult


class MapResult(AsyncResult[list[T]]):
    """The result of ``map_async``/``starmap_async``: a list, or the first error."""

    __module__ = "corral"


class _MapJob(_Job):
    def __init__(
        self,
        engine: _Engine,
        fn: Callable[..., Any],
        mode: int,
        items: list[Any],
        chunksize: int | None,
        result: AsyncResult[Any],
        single: bool,
    ):
        super().__init__(engine, fn, mode, chunksize)
        self.items = items
        self.result = result
        self.single = single
        self.values: list[Any] = [None] * len(items)
        self.remaining = len(items)
        self.balance_cap = max(1, math.ceil(len(items) / (4 * engine.processes)))
        self.lock = threading.Lock()

    def deliver(self, start: int, values: list[Any], errors: dict[int, BaseException]) -> None:
        with self.lock:
            if self.result.ready():
                return
            self.values[start : start + len(values)] = values
            self.remaining -= len(values)
            if errors:
                self.cancelled = True
                success: bool = False
                value: Any = errors[min(errors)]
            elif self.remaining == 0:
                success, value = True, self.values[0] if self.single else self.values
            else:
                return
        self.result._finish(success, value)

    def abort(self, exc: BaseException) -> None:
        with self.lock:
            if self.result.ready():
                return
            self.cancelled = True
        self.result._finish(False, exc)


class _Failure:
    """An item's exception, as it waits in an iterator's buffer among plain values."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


class IMapIterator(Generic[T]):
    """The iterator from ``imap``/``imap_unordered``; pulls its input lazily.

    At most a window of items (a few chunks per worker) is pulled from the input and
    not yet consumed, so a slow consumer holds back the input, and an infinite input
    works. ``next(timeout)`` raises :class:`multiprocessing.TimeoutError` as the
    stdlib's does.
    """

    __module__ = "corral"

    def __init__(self, job: _IMapJob):
        self._job = job
        self._buf: collections.deque[Any] = collections.deque()

    def __iter__(self) -> IMapIterator[T]:
        return self

    def __next__(self) -> T:
        try:
            value = self._buf.popleft()  # the fast path: no lock, no call
        except IndexError:
            self._job.refill(self._buf, None)
            value = self._buf.popleft()
        if value.__class__ is _Failure:
            raise value.exc
        result: T = value
        return result

    def next(self, timeout: float | None = None) -> T:
        if not self._buf:
            self._job.refill(self._buf, timeout)
        return self.__next__()

    def cancel(self) -> None:
        """Stop: pull no more input, and run none of what was not started yet."""
        self._job.cancel()


class _IMapJob(_Job):
    def __init__(
        self,
        engine: _Engine,
        fn: Callable[..., Any],
        mode: int,
        source: Iterable[Any],
        chunksize: int | None,
        ordered: bool,
    ):
        super().__init__(engine, fn, mode, chunksize)
        # A pipeline feed is pulled from as items arrive, not a window at a time.
        feed: Any = source
        self.feed: Any = feed if hasattr(feed, "_corral_take") else None
        self.source: Iterator[Any] | None = iter(source)
        self.poked = False
        if self.feed is not None:
            self.feed.listener = self.poke
        self.source_error: BaseException | None = None
        self.input_done = False
        self.ordered = ordered
        self.pulled = 0
        self.consumed = 0
        self.done: dict[int, tuple[list[Any], dict[int, BaseException]]] = {}
        self.arrived: collections.deque[tuple[int, list[Any], dict[int, BaseException]]]
        self.arrived = collections.deque()
        self.cond = threading.Condition(threading.Lock())
        self.abort_exc: BaseException | None = None

    def window(self) -> int:
        size = self.fixed_chunksize or self.chunk
        return max(
            2 * self.engine.processes, WINDOW_CHUNKS_PER_WORKER * self.engine.processes * size
        )

    def drain(self) -> None:
        """Pull the rest of the input now, whatever the window (see _Engine.close)."""
        source, self.source = self.source, None
        if source is None:
            return
        batch: list[Any] = []
        try:
            batch.extend(source)
        except Exception as exc:
            self.source_error = exc
        self.pulled += len(batch)
        self.engine.add_items(self, batch, True)

    def poke(self) -> None:
        """The feed got items (or closed): wake the consumer to pull them."""
        with self.cond:
            self.poked = True
            self.cond.notify_all()

    def _pull(self) -> None:
        """Top the input up to the window (in the consumer's thread: its generator)."""
        window = self.window()
        if self.source is None or self.pulled - self.consumed > window // 2:
            return
        if self.feed is not None:
            items, exhausted, error = self.feed._corral_take(
                window - (self.pulled - self.consumed), block=self.pulled == self.consumed
            )
            self.pulled += len(items)
            if exhausted:
                self.source = None
                self.source_error = error
            self.engine.add_items(self, items, exhausted)
            return
        batch: list[Any] = []
        try:
            for item in itertools.islice(self.source, window - (self.pulled - self.consumed)):
                batch.append(item)
            exhausted = len(batch) < window - (self.pulled - self.consumed)
        except Exception as exc:
            self.source_error = exc
            exhausted = True
        self.pulled += len(batch)
        if exhausted:
            self.source = None
        self.engine.add_items(self, batch, exhausted)

    def cancel(self) -> None:
        with self.cond:
            self.cancelled = True
            self.source = None
        self.engine.wake()

    def refill(self, buf: collections.deque[Any], timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._pull()
            with self.cond:
                while True:
                    if self.abort_exc is not None:
                        raise self.abort_exc
                    got = self._take_ready(buf)
                    if got:
                        return
                    if self.source is None and self.consumed == self.pulled:
                        if self.source_error is not None:
                            exc, self.source_error = self.source_error, None
                            raise exc
                        raise StopIteration
                    if (
                        self.source is not None
                        and self.pulled - self.consumed <= self.window() // 2
                        and (self.feed is None or self.poked or self.pulled == self.consumed)
                    ):
                        self.poked = False
                        break  # pull more input before waiting
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise multiprocessing.TimeoutError
                    self.engine.wait_interruptibly(self.cond, left)

    def _take_ready(self, buf: collections.deque[Any]) -> bool:
        if self.ordered:
            while self.consumed in self.done:
                values, errors = self.done.pop(self.consumed)
                self._append(buf, self.consumed, values, errors)
                self.consumed += len(values)
        else:
            while self.arrived:
                start, values, errors = self.arrived.popleft()
                self._append(buf, start, values, errors)
                self.consumed += len(values)
        return bool(buf)

    @staticmethod
    def _append(
        buf: collections.deque[Any],
        start: int,
        values: list[Any],
        errors: dict[int, BaseException],
    ) -> None:
        if not errors:
            buf.extend(values)
            return
        for i, value in enumerate(values):
            buf.append(_Failure(errors[i]) if i in errors else value)

    def deliver(self, start: int, values: list[Any], errors: dict[int, BaseException]) -> None:
        with self.cond:
            if self.ordered:
                self.done[start] = (values, errors)
            else:
                self.arrived.append((start, values, errors))
            self.cond.notify_all()

    def abort(self, exc: BaseException) -> None:
        with self.cond:
            self.cancelled = True
            if self.abort_exc is None:
                self.abort_exc = exc
            self.cond.notify_all()


class _FutureJob(_Job):
    def __init__(self, engine: _Engine, fn: Callable[..., Any], item: Any, future: Future[Any]):
        super().__init__(engine, fn, _MODE_CALL, 1)
        self.items = [item]
        self.future = future

    def start_running(self) -> bool:
        """False if the future was cancelled before its task was sent."""
        return self.future.running() or self.future.set_running_or_notify_cancel()

    def deliver(self, start: int, values: list[Any], errors: dict[int, BaseException]) -> None:
        if self.future.done():
            return
        if errors:
            self.future.set_exception(errors[0])
        else:
            self.future.set_result(values[0])

    def abort(self, exc: BaseException) -> None:
        self.cancelled = True
        if not self.future.done() and not self.future.cancel():
            with contextlib.suppress(Exception):
                self.future.set_exception(exc)


# --- The engine ------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of a pool: see :meth:`Pool.statistics`."""

    workers: int
    workers_alive: int
    workers_restarted: int
    tasks_in_flight: int
    tasks_completed: int
    tasks_retried: int

    __module__ = "corral"


class _Chunk:
    __slots__ = ("buffers", "indices", "items", "job", "payload", "sent_at", "start")

    def __init__(self, job: _Job, start: int, items: list[Any], indices: list[int] | None):
        self.job = job
        self.start = start
        self.items = items
        self.indices = indices  # None: start, start+1, ...; else a solo re-run
        self.payload = b""
        self.buffers: list[memoryview] = []
        self.sent_at = 0.0


class _Worker:
    __slots__ = (
        "chunks",
        "conn",
        "index",
        "killed",
        "proc",
        "ready",
        "retiring",
        "sent",
        "sock",
    )

    def __init__(self, index: int, proc: Process, conn: Connection):
        self.index = index
        self.proc = proc
        self.conn: Connection | None = conn
        self.sock = _sock_for(conn)  # the same socketpair end, for passing fds
        self.chunks: collections.deque[_Chunk] = collections.deque()
        self.ready = False
        self.retiring = False
        self.killed = False
        self.sent = 0  # items handed to this worker, for maxtasksperchild

    def kill_tree(self) -> None:
        """SIGKILL the worker and its subtree (Process.kill freezes and kills the tree)."""
        with contextlib.suppress(Exception):
            self.proc.kill()

    def close_conn(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
            self.sock.close()


_engines: weakref.WeakSet[_Engine] = weakref.WeakSet()


class _Engine:
    """Workers plus the scheduler thread that feeds them; shared by Pool and the executor."""

    def __init__(
        self,
        processes: int | None,
        initializer: Callable[..., object] | None,
        initargs: Iterable[Any],
        maxtasksperchild: int | None,
        context: CorralContext | str | None,
        retries: int,
        task_timeout: float | None,
        max_memory_per_child: int | None,
        on_event: Callable[[str, int], object] | None,
        progress: bool | str,
    ):
        if processes is None:
            processes = len(os.sched_getaffinity(0)) or 1
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if task_timeout is not None and task_timeout <= 0:
            raise ValueError("task_timeout must be > 0 or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if isinstance(context, str) or context is None:
            context = get_context(context)
        self.context = context
        self.processes = processes
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self.maxtasks = maxtasksperchild
        self.retries = retries
        self.task_timeout = task_timeout
        self.max_memory = max_memory_per_child
        self.on_event = on_event
        self.progress = _Progress.make(progress)
        self.lock = threading.Lock()
        self.jobs: collections.deque[_Job] = collections.deque()
        self.stash: collections.deque[_Chunk] = collections.deque()  # pickled, unsent
        self.workers: list[_Worker] = []
        self.state = "run"  # run -> close -> (stopped) | terminate
        self.broken: BaseException | None = None
        self.early_deaths = 0
        self.restarted = 0
        self.completed = 0
        self.retried = 0
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for i in range(processes):
            self.workers.append(self._start_worker(i))
        self.thread = threading.Thread(
            target=self._run, name=f"corral-pool-scheduler-{id(self):x}", daemon=True
        )
        self.thread.start()
        _engines.add(self)

    # -- API for the fronts (any thread) --

    def wake(self) -> None:
        with self._wake_lock:  # never write to the fd number once it was closed
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.write(self._wake_w, b"x")

    def check_running(self) -> None:
        if self.state != "run":
            raise ValueError("Pool not running")
        if self.broken is not None:
            raise CorralError(f"the pool is broken: {self.broken}") from self.broken

    def add_job(self, job: _Job) -> None:
        with self.lock:
            self.check_running()
            self.jobs.append(job)
        self._event("submitted", len(job.items))
        self.wake()

    def add_items(self, job: _Job, items: list[Any], exhausted: bool) -> None:
        with self.lock:
            job.items.extend(items)
            if exhausted:
                job.input_done = True
        if items:
            self._event("submitted", len(items))
        self.wake()

    def wait_interruptibly(self, cond: threading.Condition, timeout: float | None) -> None:
        """cond.wait, but a Ctrl-C in the waiting thread terminates the pool first."""
        try:
            cond.wait(timeout)
        except KeyboardInterrupt:
            cond.release()
            try:
                self.terminate()
            finally:
                cond.acquire()
            raise

    def cancel_pending(self) -> None:
        """Cancel every submitted future whose task was not sent to a worker yet."""
        with self.lock:
            jobs = list(self.jobs)
        for job in jobs:
            if isinstance(job, _FutureJob) and job.future.cancel():
                job.cancelled = True
        self.wake()

    def close(self) -> None:
        """No new work; what was submitted finishes. Lazy inputs are drained first, so
        an imap (or Executor.map) not fully consumed yet still completes, as it
        would with the stdlib's eager submission."""
        with self.lock:
            if self.state != "run":
                return
            lazy = [j for j in self.jobs if isinstance(j, _IMapJob) and j.feed is None]
        for job in lazy:
            job.drain()
        with self.lock:
            if self.state == "run":
                self.state = "close"
        self.wake()

    def terminate(self) -> None:
        with self.lock:
            if self.state == "terminate" and not self.thread.is_alive():
                return
            self.state = "terminate"
        self.wake()
        self.join(None)

    def join(self, timeout: float | None) -> None:
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)

    def statistics(self) -> PoolStatistics:
        with self.lock:
            return PoolStatistics(
                workers=self.processes,
                workers_alive=sum(1 for w in self.workers if w.proc.is_alive()),
                workers_restarted=self.restarted,
                tasks_in_flight=sum(len(c.items) for w in self.workers for c in w.chunks),
                tasks_completed=self.completed,
                tasks_retried=self.retried,
            )

    def _event(self, kind: str, n: int) -> None:
        if self.progress is not None:
            self.progress.event(kind, n)
        if self.on_event is not None:
            try:
                self.on_event(kind, n)
            except Exception:
                traceback.print_exc()

    # -- The scheduler thread --

    def _start_worker(self, index: int) -> _Worker:
        parent_end, child_end = multiprocessing.Pipe(duplex=True)
        proc = self.context.Process(
            target=_worker_main,
            args=(
                child_end,
                self.initializer,
                self.initargs,
                self.maxtasks,
                self.max_memory,
                f"corral worker {index + 1}/{self.processes}",
            ),
            name=f"corral-pool-worker-{index + 1}",
            daemon=True,
        )
        try:
            proc.start()
        finally:
            child_end.close()
        return _Worker(index, proc, parent_end)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug here must not leave callers hanging
            self.broken = exc
            traceback.print_exc()
        finally:
            self._abort_all(CorralError("the pool was terminated before this task finished"))
            self._shutdown_workers(kill=True)
            with self._wake_lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1
            if self.progress is not None:
                self.progress.close()

    def _loop(self) -> None:
        while True:
            if self.state == "terminate" or self.broken is not None:
                return
            if self.state == "close" and not self._busy():
                self._shutdown_workers(kill=False)
                return
            self._dispatch()
            timeout = self._next_deadline()
            waitables: list[Any] = [self._wake_r]
            for w in self.workers:
                if w.conn is not None:
                    waitables.append(w.conn)
                waitables.append(w.proc.sentinel)
            ready = wait(waitables, timeout)
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            for w in list(self.workers):
                if w.conn is not None and w.conn in ready:
                    self._receive(w)
            for w in list(self.workers):
                if w.proc.sentinel in ready:
                    self._on_exit(w)
            self._check_deadlines()

    def _busy(self) -> bool:
        with self.lock:
            jobs = any(j.has_work() or not j.input_done for j in self.jobs if not j.cancelled)
        return jobs or bool(self.stash) or any(w.chunks for w in self.workers)

    # Handing out work.

    def _slots(self, w: _Worker) -> int:
        return 1 if self.task_timeout is not None else 1 + PREFETCH

    def _dispatch(self) -> None:
        for w in self.workers:
            while (
                w.ready
                and not w.retiring
                and not w.killed
                and w.conn is not None
                and len(w.chunks) < self._slots(w)
                and (self.maxtasks is None or w.sent < self.maxtasks)
            ):
                chunk = self._next_chunk(w)
                if chunk is None:
                    break
                if w.chunks and len(chunk.payload) > PREFETCH_MAX_BYTES:
                    self.stash.appendleft(chunk)  # for the next idle worker
                    break
                if isinstance(chunk.job, _FutureJob) and not chunk.job.start_running():
                    continue
                try:
                    _send(w.conn, w.sock, chunk.payload, chunk.buffers)
                except OSError:  # it died; its sentinel will say so
                    self.stash.appendleft(chunk)
                    w.close_conn()
                    break
                chunk.sent_at = time.monotonic()
                chunk.payload = b""
                chunk.buffers = []
                w.sent += len(chunk.items)
                w.chunks.append(chunk)

    def _next_chunk(self, w: _Worker) -> _Chunk | None:
        if self.stash:
            chunk = self.stash.popleft()
            if not chunk.job.cancelled:
                if self.maxtasks is not None and len(chunk.items) > self.maxtasks - w.sent:
                    self._split(chunk)
                    return self._next_chunk(w)
                return chunk
        while True:
            with self.lock:
                job = next((j for j in self.jobs if j.has_work()), None)
                self._drop_finished_jobs()
                if job is None:
                    return None
                if job.solo:
                    index, item = job.solo.popleft()
                    chunk = _Chunk(job, index, [item], [index])
                else:
                    n = 1 if self.task_timeout is not None else job.next_size(self.processes)
                    if self.maxtasks is not None:
                        n = min(n, self.maxtasks - w.sent)
                    start, items = job.take(n)
                    chunk = _Chunk(job, start, items, None)
            if self._encode(chunk):
                return chunk

    def _drop_finished_jobs(self) -> None:
        while self.jobs and (
            self.jobs[0].cancelled or (not self.jobs[0].has_work() and self.jobs[0].input_done)
        ):
            self.jobs.popleft()

    def _encode(self, chunk: _Chunk) -> bool:
        """Pickle the chunk; on failure split it, or fail the lone item. True if sendable."""
        job = chunk.job
        try:
            chunk.payload, chunk.buffers = _encode((job.mode, job.fn, chunk.items))
            return True
        except Exception as exc:
            if len(chunk.items) > 1:
                self._split(chunk)
            else:
                exc.add_note(
                    f"corral: could not pickle {job.describe(chunk.start, chunk.items[0])}"
                )
                self._finish_items(job, chunk.start, [None], {0: exc})
            return False

    def _split(self, chunk: _Chunk) -> None:
        """Re-queue a chunk's items to be run one by one, ahead of new work."""
        indices = chunk.indices or range(chunk.start, chunk.start + len(chunk.items))
        with self.lock:
            chunk.job.solo.extendleft(reversed(list(zip(indices, chunk.items, strict=True))))
            if chunk.job not in self.jobs:
                self.jobs.appendleft(chunk.job)

    # Results coming back.

    def _receive(self, w: _Worker) -> None:
        assert w.conn is not None
        try:
            data, buffers = _recv(w.conn, w.sock)
        except (EOFError, OSError):
            w.close_conn()
            return
        try:
            msg = pickle.loads(data, buffers=buffers)
        except Exception as exc:
            chunk = w.chunks.popleft()
            if len(chunk.items) > 1:
                self._split(chunk)
            else:
                what = chunk.job.describe(chunk.start, chunk.items[0])
                err = CorralError(f"the result of {what} could not be unpickled: {exc!r}")
                self._finish_items(chunk.job, chunk.start, [None], {0: err})
            return
        kind = msg[0]
        if kind == "ready":
            w.ready = True
            self.early_deaths = 0
        elif kind == "init":
            self.broken = CorralError(f"the pool's initializer raised:\n{msg[1]}")
        elif kind == "bad":
            chunk = w.chunks.popleft()
            if len(chunk.items) > 1:
                self._split(chunk)
            else:
                remote = _decode_error((None, *msg[1]))
                what = chunk.job.describe(chunk.start, chunk.items[0])
                err = CorralError(f"the worker could not unpickle {what}")
                err.__cause__ = remote.__cause__
                self._finish_items(chunk.job, chunk.start, [None], {0: err})
        else:
            _, values, errors, seconds, retiring = msg
            chunk = w.chunks.popleft()
            w.retiring = w.retiring or retiring
            chunk.job.measured(len(values), seconds)
            decoded = {i: _decode_error(e) for i, e in errors.items()}
            self._finish_items(chunk.job, chunk.start, values, decoded, chunk.indices)

    def _finish_items(
        self,
        job: _Job,
        start: int,
        values: list[Any],
        errors: dict[int, BaseException],
        indices: list[int] | None = None,
    ) -> None:
        self.completed += len(values)
        if errors:
            self._event("failed", len(errors))
        self._event("completed", len(values))
        job.deliver(indices[0] if indices else start, values, errors)

    # Deaths and deadlines.

    def _on_exit(self, w: _Worker) -> None:
        while w.conn is not None and w.conn.poll(0):  # results it sent before dying
            self._receive(w)
        w.proc.join(5)
        exitcode = w.proc.exitcode
        pid = w.proc.pid
        w.close_conn()
        w.proc.close()
        chunks = list(w.chunks)
        w.chunks.clear()
        if not w.ready and not chunks:
            self.early_deaths += 1
            if self.early_deaths >= MAX_EARLY_DEATHS and self.broken is None:
                self.broken = CorralError(
                    f"{MAX_EARLY_DEATHS} workers in a row died before they were ready "
                    f"(the last one {_status(exitcode)})"
                )
        for n, chunk in enumerate(chunks):
            if n == 0 and not w.retiring and not w.killed and len(chunk.items) == 1:
                self._charge(chunk, _crashed(exitcode, pid, chunk))
            else:
                self._split(chunk)
        if not w.retiring and not w.killed and w.ready:
            self._event("worker_died", 1)
        self.workers.remove(w)
        if self.state != "terminate" and self.broken is None:
            self.workers.append(self._start_worker(w.index))
            self.workers.sort(key=lambda x: x.index)
            self.restarted += 1

    def _charge(self, chunk: _Chunk, make_error: Callable[[int], BaseException]) -> None:
        """One failed try of a lone item: retry it, or fail it with make_error(attempts)."""
        job = chunk.job
        index = chunk.start
        attempts = job.tries.get(index, 0) + 1
        job.tries[index] = attempts
        if attempts <= self.retries and not job.cancelled:
            self.retried += 1
            self._event("retried", 1)
            self._split(chunk)
        else:
            self._finish_items(job, index, [None], {0: make_error(attempts)}, [index])

    def _next_deadline(self) -> float | None:
        if self.task_timeout is None:
            return None
        started = [w.chunks[0].sent_at for w in self.workers if w.chunks and not w.killed]
        if not started:
            return None
        return max(0.0, min(started) + self.task_timeout - time.monotonic())

    def _check_deadlines(self) -> None:
        if self.task_timeout is None:
            return
        now = time.monotonic()
        for w in self.workers:
            if w.chunks and not w.killed and now - w.chunks[0].sent_at >= self.task_timeout:
                chunk = w.chunks.popleft()
                w.killed = True
                w.kill_tree()
                self._charge(chunk, _timed_out(self.task_timeout, chunk))
                for rest in w.chunks:
                    self._split(rest)
                w.chunks.clear()

    # Shutting down.

    def _shutdown_workers(self, kill: bool) -> None:
        """Stop every worker: idle ones by message, busy ones (if ``kill``) by SIGTERM.

        Both let the worker's own teardown kill and reap whatever it started; what is
        still alive after TERMINATE_GRACE is SIGKILLed with its subtree.
        """
        for w in self.workers:
            idle = not w.chunks and not w.killed
            if w.conn is not None and (idle or not kill):
                with contextlib.suppress(OSError):
                    w.conn.send_bytes(b"")
            elif kill:
                with contextlib.suppress(Exception):
                    w.proc.terminate()
        deadline = time.monotonic() + (TERMINATE_GRACE if kill else CLOSE_GRACE)
        for w in self.workers:
            with contextlib.suppress(ValueError):
                w.proc.join(max(0.0, deadline - time.monotonic()))
                if w.proc.exitcode is None:
                    w.kill_tree()
                    w.proc.join()
            w.close_conn()
            with contextlib.suppress(ValueError):
                w.proc.close()
        self.workers = []

    def _abort_all(self, exc: BaseException) -> None:
        if self.broken is not None:
            exc = CorralError(f"the pool is broken: {self.broken}")
        with self.lock:
            jobs = list(self.jobs)
            self.jobs.clear()
        seen = set()
        for chunk in itertools.chain(self.stash, *(w.chunks for w in self.workers)):
            jobs.append(chunk.job)
        for job in jobs:
            if id(job) not in seen:
                seen.add(id(job))
                job.abort(exc)
        self.stash.clear()


def _crashed(
    exitcode: int | None, pid: int | None, chunk: _Chunk
) -> Callable[[int], BaseException]:
    def make(attempts: int) -> BaseException:
        return WorkerCrashed(
            exitcode, pid, chunk.job.describe(chunk.start, chunk.items[0]), attempts
        )

    return make


def _timed_out(timeout: float, chunk: _Chunk) -> Callable[[int], BaseException]:
    def make(attempts: int) -> BaseException:
        return TaskTimeout(timeout, chunk.job.describe(chunk.start, chunk.items[0]))

    return make


def _status(exitcode: int | None) -> str:
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def _terminate_all_at_exit() -> None:
    for engine in list(_engines):
        with contextlib.suppress(Exception):
            engine.terminate()


import atexit  # noqa: E402

atexit.register(_terminate_all_at_exit)
# A forked child (a worker, or the user's own fork) owns none of its parent's pools.
os.register_at_fork(after_in_child=_engines.clear)


class _Progress:
    """A tqdm bar fed by the pool's events."""

    def __init__(self, bar: Any):
        self.bar = bar
        self.lock = threading.Lock()

    @staticmethod
    def make(progress: bool | str) -> _Progress | None:
        if not progress:
            return None
        if progress != "force" and not sys.stderr.isatty():
            return None
        try:
            tqdm = importlib.import_module("tqdm").tqdm
        except ImportError as exc:
            raise ImportError("progress=True needs tqdm: pip install 'corral[pool]'") from exc
        # No monitor thread: it would outlive the pool (tqdm keeps it per class).
        bar_class = type("CorralProgress", (tqdm,), {"monitor_interval": 0})
        return _Progress(bar_class(total=0, file=sys.stderr, unit="task", dynamic_ncols=True))

    def event(self, kind: str, n: int) -> None:
        with self.lock:
            if kind == "submitted":
                self.bar.total += n
                self.bar.refresh()
            elif kind == "completed":
                self.bar.update(n)

    def close(self) -> None:
        with self.lock:
            self.bar.close()


# --- The public front ------------------------------------------------------------------


class Pool:
    """A process pool with the :class:`multiprocessing.pool.Pool` API, that survives crashes.

    - A worker that dies mid-task (SIGKILL, OOM, segfault, ``os._exit``) is replaced;
      its task is retried up to ``retries`` times, then fails alone with
      :class:`corral.WorkerCrashed`. Items that shared its chunk are re-run, never
      failed.
    - ``task_timeout`` (seconds) kills a task's worker tree when it runs too long;
      the task is retried or raises :class:`corral.TaskTimeout`.
    - With no ``chunksize``, chunks are sized from measured task durations.
    - ``imap``/``imap_unordered`` pull their input lazily, a bounded window at a time.
    - Task exceptions keep the worker's traceback as ``__cause__``; lambdas and
      closures work through cloudpickle when it is installed.
    - Ctrl-C while waiting on a result terminates the pool and raises
      :class:`KeyboardInterrupt` at once; no worker or descendant survives.
    - ``max_memory_per_child`` (bytes): a worker whose resident memory exceeds it is
      replaced after its current chunk. Workers are named ``corral worker i/n`` in
      ``ps`` when setproctitle is installed.
    - ``progress=True`` shows a tqdm bar on stderr when it is a terminal
      (``progress="force"``: always); ``on_event(kind, n)`` receives the same events:
      ``submitted``, ``completed``, ``failed``, ``retried``, ``worker_died``.
    """

    __module__ = "corral"

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: CorralContext | str | None = None,
        *,
        retries: int = 0,
        task_timeout: float | None = None,
        progress: bool | str = False,
        max_memory_per_child: int | None = None,
        on_event: Callable[[str, int], object] | None = None,
    ):
        self._engine = _Engine(
            processes,
            initializer,
            initargs,
            maxtasksperchild,
            context,
            retries,
            task_timeout,
            max_memory_per_child,
            on_event,
            progress,
        )
        self._processes = self._engine.processes
        weakref.finalize(self, _Engine.terminate, self._engine)

    def __repr__(self) -> str:
        return f"<corral.Pool state={self._engine.state} pool_size={self._processes}>"

    # Single calls.

    def apply(
        self, func: Callable[..., T], args: Iterable[Any] = (), kwds: dict[str, Any] | None = None
    ) -> T:
        return self._wait(self.apply_async(func, args, kwds))

    def apply_async(
        self,
        func: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: dict[str, Any] | None = None,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[T]:
        result: AsyncResult[T] = AsyncResult(callback, error_callback)
        item = (tuple(args), dict(kwds or {}))
        self._engine.add_job(_MapJob(self._engine, func, _MODE_CALL, [item], 1, result, True))
        return result

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` in a worker; return a :class:`concurrent.futures.Future`."""
        future: Future[T] = Future()
        self._engine.add_job(_FutureJob(self._engine, fn, (args, kwargs), future))
        return future

    # Maps.

    def map(
        self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int | None = None
    ) -> list[T]:
        return self._wait(self._map_async(func, iterable, chunksize, _MODE_MAP, None, None))

    def map_async(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult[T]:
        return self._map_async(func, iterable, chunksize, _MODE_MAP, callback, error_callback)

    def starmap(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
    ) -> list[T]:
        return self._wait(self._map_async(func, iterable, chunksize, _MODE_STAR, None, None))

    def starmap_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult[T]:
        return self._map_async(func, iterable, chunksize, _MODE_STAR, callback, error_callback)

    def imap(
        self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int | None = None
    ) -> IMapIterator[T]:
        """Like the stdlib's, but lazy, and with automatic chunks when ``chunksize`` is None."""
        return self._imap(func, iterable, chunksize, _MODE_MAP, ordered=True)

    def imap_unordered(
        self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int | None = None
    ) -> IMapIterator[T]:
        return self._imap(func, iterable, chunksize, _MODE_MAP, ordered=False)

    def _imap(
        self,
        func: Callable[..., T],
        iterable: Iterable[Any],
        chunksize: int | None,
        mode: int,
        ordered: bool,
    ) -> IMapIterator[T]:
        _check_chunksize(chunksize)
        job = _IMapJob(self._engine, func, mode, iterable, chunksize, ordered)
        self._engine.add_job(job)
        return IMapIterator(job)

    def _map_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Any],
        chunksize: int | None,
        mode: int,
        callback: Callable[[list[T]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> MapResult[T]:
        _check_chunksize(chunksize)
        self._engine.check_running()
        items = list(iterable)
        if mode == _MODE_STAR:
            items = [tuple(a) for a in items]
        result: MapResult[T] = MapResult(callback, error_callback)
        if not items:
            result._finish(True, [])
            return result
        self._engine.add_job(_MapJob(self._engine, func, mode, items, chunksize, result, False))
        return result

    def _wait(self, result: AsyncResult[T]) -> T:
        try:
            while not result._event.wait(0.5):
                pass
        except KeyboardInterrupt:
            self.terminate()
            raise
        return result.get(0)

    # Lifecycle.

    def statistics(self) -> PoolStatistics:
        """Workers alive and restarted, tasks in flight, completed and retried."""
        return self._engine.statistics()

    def close(self) -> None:
        """Accept no more work; workers exit once what was submitted is done."""
        self._engine.close()

    def terminate(self) -> None:
        """Kill every worker (and its subtree) now; unfinished results fail."""
        self._engine.terminate()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the workers to exit, after :meth:`close` or :meth:`terminate`."""
        if self._engine.state == "run":
            raise ValueError("Pool is still running")
        self._engine.join(timeout)

    def __enter__(self) -> Pool:
        if self._engine.state != "run":
            raise ValueError("Pool not running")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")


def _check_chunksize(chunksize: int | None) -> None:
    if chunksize is not None and chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
