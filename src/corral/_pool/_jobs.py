"""Jobs: one call's items, and where their outcomes go.

The engine sees only ``Job``. It asks a job for work (``has_work``, ``take``,
``start_chunk``), hands it outcomes (``deliver``) or a failure that ends it
(``abort``), and tells it when the pool stops taking input (``cut_input``). How
outcomes reach the caller is each job's own business:

- ``MapJob``: ``map``/``map_async``/``apply_async``; an :class:`AsyncResult`.
- ``IMapJob``: ``imap``/``imap_unordered``/``corral.map``/pipeline stages; pulls
  its input lazily, a window at a time, in the consumer's thread; an
  :class:`IMapIterator`.
- ``FutureJob``: ``submit``; a :class:`concurrent.futures.Future` whose
  ``cancel()`` also stops a running task.

Items are indexed 0.. in input order; outcomes may arrive in pieces (a worker
commits as it goes) and out of order (re-runs).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import multiprocessing
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, MutableSequence
from concurrent.futures import CancelledError, Future
from concurrent.futures._base import RUNNING
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._core._native import speedups
from .._exceptions import CorralError
from ._progress import Progress
from ._wire import ItemSlice
from ._worker import COMMIT_SECONDS, MODE_CALL, commit_policy

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = [
    "ApplyResult",
    "AsyncResult",
    "CorralFuture",
    "FutureJob",
    "IMapIterator",
    "IMapJob",
    "Job",
    "MapJob",
    "MapResult",
]

T = TypeVar("T")

# How long one automatically sized chunk should take to run in a worker. Longer
# chunks amortise the per-message cost better; shorter ones balance the load.
TARGET_CHUNK_SECONDS = 0.02
# Automatic chunks start at one item and grow at most this much per measured chunk,
# so a slow task is never handed out in a large batch before it was measured.
CHUNK_GROWTH = 8
# Upper bound on an automatic chunk.
MAX_CHUNK = 4096
# imap/corral.map keep at most this many automatic chunks per worker in flight
# (pulled from the input but not yet consumed): the memory bound on lazy input.
WINDOW_CHUNKS_PER_WORKER = 4
_ALL = 1 << 62
_load_scalars_into = getattr(speedups, "load_scalars_into", None)


class Job:
    """One call's items and outcomes, as the engine sees them."""

    def __init__(
        self,
        engine: Engine,
        fn: Callable[..., Any],
        mode: int,
        chunksize: int | None,
        timeout: float | None,
        retries: int,
        progress: Progress | None = None,
    ):
        self.engine = engine
        self.fn = fn
        self.mode = mode
        self.fixed_chunksize = chunksize
        self.timeout = timeout
        self.retries = retries
        self.progress = progress
        self.name = getattr(fn, "__qualname__", None) or repr(fn)
        self.items: list[Any] = []  # items[i] is item base + i
        # May items handed out be dropped from the list? Not from a caller's list.
        self.owns_items = True
        # A caller's list is read in place while the call runs (``borrow``): ``end``
        # is its length at the call, the items this call runs; None for our own.
        self.end: int | None = None
        # Why the call ended by itself, found under the engine's lock; the engine
        # aborts the job with it outside the lock (``take_failure``).
        self.failure: BaseException | None = None
        self.base = 0
        self.cursor = 0  # next item (absolute index) not handed out yet
        self.solo: collections.deque[tuple[int, Any]] = collections.deque()  # run alone
        self.tries: dict[int, int] = {}
        # The next automatic chunk size: from one item, or, if this pool ran ``fn``
        # before, one growth step below the size its last call reached. The trade-off:
        # a call whose items are far slower than the last one's gets first chunks of
        # that size before it is measured, in return for not paying the ramp from one
        # item (a round trip per step) on every call of the same function.
        # (A fixed chunksize, as every submit's 1, never asks: no lookup to pay.)
        learned = 1 if chunksize is not None else engine.learned_chunk(fn)
        self.chunk = max(1, learned // CHUNK_GROWTH)
        self.commit_every = 1  # items between two commits, once measured
        self.commit_seconds = COMMIT_SECONDS  # the work between two commits
        self.balance_cap = MAX_CHUNK
        self.input_done = True
        # May a chunk of this job wait in a busy worker's socket? Not for single
        # tasks: one that waits there can't be cancelled before it starts, and a
        # single task gains little from it.
        self.prefetchable = True
        self.stopped = False  # hand out nothing more
        self.kill_running = False  # and stop what runs (a user's cancel)

    # -- asked by the engine (scheduler thread, under the engine's lock for take) --

    def borrow(self, items: list[Any]) -> None:
        """Run the items of the caller's ``items`` as they are at the call, read in
        place while the call runs: no copy. Items the caller appends later are not
        part of the call; a list the caller shortens fails it (``shortened``)."""
        self.items, self.owns_items, self.base, self.end = items, False, 0, len(items)

    def has_work(self) -> bool:
        return not self.stopped and (bool(self.solo) or self.cursor < self.known_end())

    def shortened(self, seen: bool = False) -> bool:
        """Did the caller shorten the list this call borrowed (or was it ``seen``
        shortened)? Then the items it still had to read are gone: the call stops, and
        fails with an error saying so (``take_failure``), where multiprocessing's
        ``map`` would wait for them for ever. Cheap (a length), so it is asked
        wherever an item is read again."""
        if self.end is None or (len(self.items) >= self.end and not seen):
            return False
        if self.failure is None:
            self.failure = CorralError(
                f"the list given to this call of {self.name} was shortened from "
                f"{self.end} to {len(self.items)} items while the call ran; the pool "
                "reads it in place (as multiprocessing does): pass a copy if it may change"
            )
        self.stopped = True
        return True

    def take_failure(self) -> BaseException | None:
        """The error the call ended with by itself (``shortened``), once."""
        failure, self.failure = self.failure, None
        return failure

    def next_size(self) -> int:
        if self.timeout is not None:
            return 1  # a deadline per item
        if self.fixed_chunksize is not None:
            return self.fixed_chunksize
        return max(1, min(self.chunk, self.balance_cap))

    def take_slice(self, n: int) -> tuple[int, list[Any] | ItemSlice]:
        """``take``, as an ``ItemSlice`` where the list is only ever read."""
        if self.owns_items:
            return self.take(n)
        start = self.cursor
        n = 0 if self.shortened() else max(0, min(n, self.known_end() - start))
        self.cursor += n
        return start, ItemSlice(self.items, start - self.base, n)

    def known_end(self) -> int:
        """The index after the last item this call runs that is known so far."""
        return self.base + len(self.items) if self.end is None else self.end

    def take(self, n: int) -> tuple[int, list[Any]]:
        """The next ``n`` items (fewer at the end): (the first's index, the items)."""
        start = self.cursor
        lo = start - self.base
        if self.shortened():
            return start, []
        chunk = self.items[lo : lo + min(n, self.known_end() - start)]
        self.cursor += len(chunk)
        if (
            self.owns_items
            and self.cursor - self.base > 4096
            and self.cursor - self.base > len(self.items) // 2
        ):
            del self.items[: self.cursor - self.base]
            self.base = self.cursor
        return start, chunk

    def measured(self, n: int, seconds: float) -> None:
        """A chunk of ``n`` items took ``seconds`` in a worker: size the next ones."""
        if n <= 0:
            return
        per_item = seconds / n
        self.commit_every = commit_policy(per_item, self.commit_seconds)
        if self.fixed_chunksize is not None or n < self.chunk // 2:
            return
        ideal = TARGET_CHUNK_SECONDS / per_item if per_item > 0 else MAX_CHUNK
        self.chunk = int(max(1, min(ideal, self.chunk * CHUNK_GROWTH, MAX_CHUNK)))
        self.engine.learn_chunk(self.fn, self.chunk)

    def describe(self, index: int, item: Any) -> str:
        """How errors name a task: ``task 17 of map(f), item 34`` or ``task f(1, 2)``."""
        if self.mode == MODE_CALL:
            args, kwargs = item
            shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
            text = f"{self.name}({', '.join(shown)})"
        else:
            text = f"{index} of map({self.name}), item {item!r}"
        return "task " + (text if len(text) <= 120 else text[:117] + "...")

    def start_chunk(self) -> bool:
        """About to send a chunk of this job: False if it must not run after all."""
        return not self.stopped

    def cancel_if_pending(self) -> None:
        """The executor's ``shutdown(cancel_futures=True)``: drop what did not start."""

    def cut_input(self) -> None:
        """The pool is closing: take no more input (what was taken still runs)."""

    def drain(self) -> None:
        """Take the rest of the input now (the executor's shutdown); eager jobs have."""

    # -- outcomes (scheduler thread, never under the engine's lock) --

    def deliver(self, start: int, values: list[Any], errors: dict[int, BaseException]) -> None:
        if self.progress is not None:
            self.progress.update(len(values))
        self._deliver(start, values, errors)

    def _deliver(self, start: int, values: list[Any], errors: dict[int, BaseException]) -> None:
        raise NotImplementedError

    def store_pickled(self, start: int, count: int, data: memoryview) -> bool:
        """Outcomes of items ``start``.. (``count``, none of them an error), still
        pickled: put them where they go without a list unpickled in between, if this
        job can. False if not: the engine then unpickles and delivers them as usual.
        If True, the engine calls ``deliver_stored(count)`` once it counted them."""
        return False

    def deliver_stored(self, count: int) -> None:
        """``count`` outcomes were stored by ``store_pickled``."""
        raise NotImplementedError

    def abort(self, exc: BaseException) -> None:
        """The job ends with ``exc`` (terminate, a broken pool, a cancel)."""
        self.stopped = True
        self._abort(exc)
        self.finished()

    def _abort(self, exc: BaseException) -> None:
        raise NotImplementedError

    def finished(self) -> None:
        if self.progress is not None:
            self.progress.close()

    def cancel(self) -> None:
        """Stop this call: nothing more is handed out, and running items are killed."""
        self.stopped = True
        self.kill_running = True
        self.abort(CancelledError())
        self.engine.wake()


class AsyncResult(Generic[T]):
    """The result of ``apply_async``/``map_async``, as :class:`multiprocessing.pool.AsyncResult`.

    Plus :meth:`cancel`, which stops the call, running tasks included.
    """

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
        self._job: Job | None = None

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

    def cancel(self) -> bool:
        """Stop the call: its waiting tasks never run, its running ones are killed
        (their workers' subtrees too, and the workers replaced). ``get()`` then
        raises :class:`concurrent.futures.CancelledError`. False if it had finished.
        """
        if self.ready() or self._job is None:
            return False
        self._job.cancel()
        return True

    def _finish(self, success: bool, value: Any) -> None:
        self._success, self._value = success, value
        self._job = None  # no reference cycle keeps the value alive past the caller's use
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


class MapJob(Job):
    def __init__(
        self,
        engine: Engine,
        fn: Callable[..., Any],
        mode: int,
        items: list[Any],
        chunksize: int | None,
        result: AsyncResult[Any],
        single: bool,
        timeout: float | None,
        retries: int,
        progress: Progress | None,
    ):
        super().__init__(engine, fn, mode, chunksize, timeout, retries, progress)
        self.borrow(items)  # possibly the caller's own list: only ever read
        self.result = result
        result._job = self
        self.single = single
        self.prefetchable = not single
        self.values: list[Any] = [None] * len(items)
        self.remaining = len(items)
        self.balance_cap = max(1, math.ceil(len(items) / (4 * engine.processes)))
        self.lock = threading.Lock()

    def _deliver(self, start: int, values: list[Any], errors: dict[int, BaseException]) -> None:
        with self.lock:
            if self.result.ready():
                return
            self.values[start : start + len(values)] = values
            outcome = self._count(len(values), errors)
        if outcome is not None:
            self.result._finish(*outcome)
            self.finished()

    def store_pickled(self, start: int, count: int, data: memoryview) -> bool:
        # Plain scalars (as _wire.dump_scalars packs them) are read straight into
        # the result list, in C: no list unpickled, copied in and dropped, which on
        # the "100k trivial tasks" case was a third of the scheduler thread's time.
        if _load_scalars_into is None:
            return False
        with self.lock:
            if self.result.ready():
                return True  # (dropped, as _deliver drops them)
            stored: bool = _load_scalars_into(data, self.values, start, count)
            return stored

    def deliver_stored(self, count: int) -> None:
        if self.progress is not None:
            self.progress.update(count)
        with self.lock:
            if self.result.ready():
                return
            outcome = self._count(count, {})
        if outcome is not None:
            self.result._finish(*outcome)
            self.finished()

    def _count(self, count: int, errors: dict[int, BaseException]) -> tuple[bool, Any] | None:
        """(Under the lock.) ``count`` more outcomes are in: the call's, if it is over."""
        self.remaining -= count
        if errors:
            self.stopped = True  # the call fails: run nothing more of it
            return False, errors[min(errors)]
        if self.remaining == 0:
            return True, self.values[0] if self.single else self.values
        return None

    def _abort(self, exc: BaseException) -> None:
        with self.lock:
            if self.result.ready():
                return
        self.result._finish(False, exc)


class _Failure:
    """An item's exception, as it waits in an iterator's buffer among plain values."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


class _PyBufferedIter:
    """The pure-Python twin of ``_speedups.BufferedIter``, with the same contract:
    ``__next__`` hands out the values of ``_items`` in order, keeps none it handed
    out, raises the ``exc`` of a value of type ``_failure`` instead of returning it,
    and calls ``_refill()`` (which waits until it has appended values, or raises)
    when there is none. Here ``_items`` is a deque (so ``_pos`` stays 0): its
    ``popleft`` is one atomic step, so threads sharing the iterator never get one
    value twice.
    """

    def __init__(self) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._pos = 0
        self._failure: type | None = None

    def __iter__(self) -> _PyBufferedIter:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                value = self._items.popleft()
            except IndexError:
                self._refill()  # (then round again: another thread may take it all)
                continue
            if value.__class__ is self._failure:
                failure: Any = value
                raise failure.exc
            return value

    def _refill(self) -> None:
        raise NotImplementedError


# The iterator's per-item step is a list read in C when the extension is there.
_BufferedIter: Any = _PyBufferedIter if speedups is None else speedups.BufferedIter


class IMapIterator(_BufferedIter, Generic[T]):  # type: ignore[misc]
    """The iterator from ``imap``/``imap_unordered``; pulls its input lazily.

    At most a window of items (a few chunks per worker) is pulled from the input and
    not yet consumed, so a slow consumer holds back the input, and an infinite input
    works. ``next(timeout)`` raises :class:`multiprocessing.TimeoutError` as the
    stdlib's does. :meth:`cancel` stops the call, running tasks included.
    """

    __module__ = "corral"
    _items: MutableSequence[Any]  # (the base class's fields: a list in C, a deque here)
    _pos: int
    _failure: type | None

    def __init__(self, job: IMapJob):
        super().__init__()
        self._failure = _Failure
        self._job = job

    if TYPE_CHECKING:  # (at run time, __iter__ and __next__ are the base class's)

        def __iter__(self) -> IMapIterator[T]: ...

        def __next__(self) -> T: ...

    def _refill(self) -> None:
        """The buffer is used up: wait for the next outcomes (or the end)."""
        self._job.refill(self._items, None)

    def next(self, timeout: float | None = None) -> T:
        if self._pos >= len(self._items):
            self._items.clear()
            self._pos = 0
            self._job.refill(self._items, timeout)
        return self.__next__()

    def cancel(self) -> None:
        """Stop: pull no more input, run nothing more, and kill the tasks running."""
        self._job.cancel()

    def close(self) -> None:
        """Stop pulling input and handing out work; tasks already running finish."""
        self._job.stop()

    def __del__(self) -> None:
        # Abandoned: nobody will read what is left, so hand out none of it. No lock
        # is taken here (the collector may run this inside any of them): plain
        # stores, seen by the scheduler at its next turn.
        self._job.stopped = True


class IMapJob(Job):
    def __init__(
        self,
        engine: Engine,
        fn: Callable[..., Any],
        mode: int,
        source: Iterable[Any],
        chunksize: int | None,
        ordered: bool,
        timeout: float | None,
        retries: int,
        progress: Progress | None,
    ):
        super().__init__(engine, fn, mode, chunksize, timeout, retries, progress)
        # A pipeline feed is pulled from as items arrive, not a window at a time.
        feed: Any = source
        self.feed: Any = feed if hasattr(feed, "_corral_take") else None
        self.sized = hasattr(source, "__len__")
        self.source: Iterator[Any] | None = iter(source)
        self.poked = False
        if self.feed is not None:
            self.feed.listener = self.poke
        self.source_error: BaseException | None = None
        self.input_done = False
        self.ordered = ordered
        self.pulled = 0
        if type(source) is list:  # all in memory already: read it in place, as map does
            self.borrow(source)
            self.source, self.input_done, self.pulled = None, True, len(source)
        self.consumed = 0
        self.done: dict[int, tuple[list[Any], dict[int, BaseException]]] = {}
        self.arrived: collections.deque[tuple[int, list[Any], dict[int, BaseException]]]
        self.arrived = collections.deque()
        self.cond = threading.Condition(threading.Lock())
        self.abort_exc: BaseException | None = None

    def window(self) -> int:
        if self.sized:  # already in memory: nothing to bound; chunks size themselves
            return _ALL
        size = self.fixed_chunksize or self.chunk
        processes = self.engine.processes
        return max(2 * processes, WINDOW_CHUNKS_PER_WORKER * processes * size)

    def drain(self) -> None:
        """Pull the rest of the input now, whatever the window (the executor's
        ``shutdown``: the stdlib's ``Executor.map`` has taken all its input by then)."""
        with self.cond:
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

    def cut_input(self) -> None:
        if self.feed is not None:
            return  # a pipeline's feed ends by itself
        if self.sized:  # finite and in memory: take it all, as the stdlib's imap has
            self.drain()
            return
        with self.cond:
            if self.source is not None:
                self.source = None
                self.source_error = self.source_error or CorralError(
                    "the pool was closed before this imap had read all its input; "
                    "the items read before the close were all run and returned"
                )
            self.cond.notify_all()
        self.engine.add_items(self, [], True)

    def poke(self) -> None:
        """The feed got items (or closed): wake the consumer to pull them."""
        with self.cond:
            self.poked = True
            self.cond.notify_all()

    def pull(self) -> None:
        """Top the input up to the window (in the consumer's thread: its generator)."""
        window = self.window()
        if self.source is None or self.pulled - self.consumed > window // 2:
            return
        want = window - (self.pulled - self.consumed)
        if self.feed is not None:
            items, exhausted, error = self.feed._corral_take(
                want, block=self.pulled == self.consumed
            )
            self.pulled += len(items)
            if exhausted:
                self.source = None
                self.source_error = error
            self.engine.add_items(self, items, exhausted)
            return
        batch: list[Any] = []
        source = self.source
        try:
            batch.extend(itertools.islice(source, want))
            exhausted = len(batch) < want
        except Exception as exc:
            self.source_error = exc
            exhausted = True
        self.pulled += len(batch)
        if exhausted:
            self.source = None
        self.engine.add_items(self, batch, exhausted)

    def stop(self) -> None:
        with self.cond:
            if self.source is None and self.stopped:
                return
            self.stopped = True
            self.source = None
            self.cond.notify_all()
        self.finished()
        self.engine.wake()

    def refill(self, buf: MutableSequence[Any], timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.pull()
            with self.cond:
                while True:
                    if self._take_ready(buf):
                        return  # outcomes that came before an abort still count
                    if self.abort_exc is not None:
                        raise self.abort_exc
                    if self.source is None and self.consumed == self.pulled:
                        self.finished()
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

    def _take_ready(self, buf: MutableSequence[Any]) -> bool:
        if self.ordered:
            while self.consumed in self.done:
                values, errors = self.done.pop(self.consumed)
                self._append(buf, values, errors)
                self.consumed += len(values)
        else:
            while self.arrived:
                _, values, errors = self.arrived.popleft()
                self._append(buf, values, errors)
                self.consumed += len(values)
        return bool(buf)

    @staticmethod
    def _append(
        buf: MutableSequence[Any], values: list[Any], errors: dict[int, BaseException]
    ) -> None:
        if not errors:
            buf.extend(values)
            return
        for i, value in enumerate(values):
            buf.append(_Failure(errors[i]) if i in errors else value)

    def _deliver(self, start: int, values: list[Any], errors: dict[int, BaseException]) -> None:
        with self.cond:
            if self.ordered:
                self.done[start] = (values, errors)
            else:
                self.arrived.append((start, values, errors))
            self.cond.notify_all()

    def _abort(self, exc: BaseException) -> None:
        with self.cond:
            if self.abort_exc is None:
                self.abort_exc = exc
            self.cond.notify_all()


class CorralFuture(Future[T]):
    """A :class:`concurrent.futures.Future` whose ``cancel()`` also stops a running task.

    Cancelling a running task kills its worker's subtree; the worker is replaced.
    """

    _corral_job: FutureJob | None = None

    def cancel(self) -> bool:
        with self._condition:  # an RLock: Future.cancel takes it again
            running = self._state == RUNNING
            if running:
                self._state = "PENDING"  # so that Future.cancel cancels it
            cancelled = super().cancel()
        if cancelled and running and self._corral_job is not None:
            job = self._corral_job
            job.stopped = job.kill_running = True
            job.engine.wake()
        return cancelled


class FutureJob(Job):
    def __init__(
        self,
        engine: Engine,
        fn: Callable[..., Any],
        item: Any,
        future: CorralFuture[Any],
        timeout: float | None,
        retries: int,
    ):
        super().__init__(engine, fn, MODE_CALL, 1, timeout, retries)
        self.items = [item]
        self.future = future
        future._corral_job = self
        self.prefetchable = False

    def start_chunk(self) -> bool:
        if self.stopped:
            return False
        if self.future.running() or self.future.set_running_or_notify_cancel():
            return True
        self.stopped = True  # cancelled before it was sent
        return False

    def cancel_if_pending(self) -> None:
        if Future.cancel(self.future):  # the stdlib's: a running task is left alone
            self.stopped = True

    def _deliver(self, start: int, values: list[Any], errors: dict[int, BaseException]) -> None:
        if self.future.done():
            return
        try:
            if errors:
                self.future.set_exception(self._for_future(errors[0]))
            else:
                self.future.set_result(values[0])
        except Exception:  # cancelled meanwhile (InvalidStateError)
            pass
        self.future._corral_job = None  # no reference cycle through the result

    def _for_future(self, err: BaseException) -> BaseException:
        """An executor's future reports unpickling errors as the stdlib's users expect."""
        if not (self.engine.stdlib_errors and vars(err).get("_corral_unpickling")):
            return err
        from .._workercrash import TransferError

        wrapped = TransferError(
            f"{self.describe(0, self.items[0])} could not be unpickled on the other side: "
            f"{type(err).__name__}: {err}"
        )
        wrapped.__cause__ = err
        return wrapped

    def _abort(self, exc: BaseException) -> None:
        # A broken pool fails its pending futures with the reason, as the stdlib's
        # executor does; a terminate or a cancel cancels them.
        broken = isinstance(exc, BrokenProcessPool)
        if not self.future.done() and (broken or not Future.cancel(self.future)):
            with contextlib.suppress(Exception):
                self.future.set_exception(exc)
        self.future._corral_job = None
