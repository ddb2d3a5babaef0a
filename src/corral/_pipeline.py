"""corral.Pipeline: multi-stage producer-consumer on the pool engine.

    source --pump 0--> feed 1 --stage 1 (pool)--> pump 1 --> feed 2 --stage 2 (pool)--> ... --> you
                (thread)   (bounded)                (thread)  (bounded)

- A *feed* is a bounded hand-off in the parent: its producer (a pump thread) blocks
  when it is full, so a slow stage holds back the stages before it, and the source.
- Each *stage* is a pool engine running ``fn`` over its feed (lazily, as ``imap``
  does), so a worker killed mid-item costs nothing: the engine knows which items it
  held and re-runs them. Items move between stages in the parent for that reason: a
  queue read directly by workers would lose the item a killed worker had taken.
- A *pump* thread moves stage k's results into feed k+1, applies the stage's error
  policy, and closes feed k+1 when stage k is exhausted: end-of-stream travels down
  the stages with no sentinel written by the user.
"""

from __future__ import annotations

import collections
import pickle
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar, cast, overload

from ._context import CorralContext
from ._exceptions import CorralError, StageError
from ._pool import IMapIterator, Pool

__all__ = ["Pipeline"]

T = TypeVar("T")
U = TypeVar("U")

# Items each feed holds by default: the memory bound between two stages.
DEFAULT_CAPACITY = 1024

_END = object()


class _StageCall:
    """Runs in the worker: the stage's function, with the item attached to failures.

    A batched stage that fails on a batch runs the batch again item by item (each
    as a batch of one), so that only the items that fail are reported, each as
    itself: a :class:`_ItemFailed` takes its place in the returned list.
    """

    def __init__(self, fn: Callable[[Any], Any], stage: str, batched: bool):
        self.fn = fn
        self.stage = stage
        self.batched = batched

    def __call__(self, item: Any) -> Any:
        if not self.batched:
            try:
                return self.fn(item)
            except Exception as exc:
                raise self._error(item, exc) from exc
        try:
            out = list(self.fn(item))
            if len(out) != len(item):
                raise ValueError(
                    f"a batched stage must return one result per item: "
                    f"{len(out)} results for {len(item)} items"
                )
            return out
        except Exception:
            if len(item) == 1:
                raise
        results: list[Any] = []
        for one in item:
            try:
                (result,) = self.fn([one])
                results.append(result)
            except Exception as exc:
                results.append(_ItemFailed(self._error(one, exc)))
        return results

    def _error(self, item: Any, exc: Exception) -> StageError:
        try:
            pickle.loads(pickle.dumps(exc))
            carried: BaseException | None = exc
        except Exception:
            carried = None
        error = StageError(self.stage, item, f"{type(exc).__name__}: {exc}", carried)
        error.__cause__ = exc
        return error


class _ItemFailed:
    """In a batched stage's results: the item at this place failed with ``error``."""

    def __init__(self, error: StageError):
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        import traceback

        tb = "".join(traceback.format_exception(self.error.__cause__ or self.error))
        return (_rebuild_failed, (self.error, tb))


def _rebuild_failed(error: StageError, tb: str) -> _ItemFailed:
    from ._exceptions import RemoteTraceback

    error.__cause__ = RemoteTraceback(tb)
    return _ItemFailed(error)


class _Feed:
    """A bounded, closable hand-off between two threads of the parent."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.items: collections.deque[Any] = collections.deque()
        self.cond = threading.Condition()
        self.closed = False
        self.error: BaseException | None = None
        self.listener: Callable[[], None] | None = None  # the pool job pulling from us

    def put(self, item: Any, stop: threading.Event) -> bool:
        with self.cond:
            while len(self.items) >= self.capacity and not self.closed:
                if stop.is_set():
                    return False
                self.cond.wait(0.1)
            if self.closed:
                return False
            self.items.append(item)
            self.cond.notify_all()
        if self.listener is not None:
            self.listener()
        return True

    def close(self, error: BaseException | None = None) -> None:
        with self.cond:
            self.closed = True
            self.error = self.error or error
            self.cond.notify_all()
        if self.listener is not None:
            self.listener()

    def _corral_take(self, n: int, block: bool) -> tuple[list[Any], bool, BaseException | None]:
        """Up to ``n`` items, waiting for one only if ``block``: (items, exhausted, error).

        How a pool job pulls from a feed: what is there now, so a stage starts on
        items as they arrive instead of waiting for a full window.
        """
        with self.cond:
            while block and not self.items and not self.closed:
                self.cond.wait()
            out = [self.items.popleft() for _ in range(min(n, len(self.items)))]
            if out:
                self.cond.notify_all()
            exhausted = self.closed and not self.items
            return out, exhausted, self.error if exhausted else None

    def __iter__(self) -> Iterator[Any]:
        while True:
            with self.cond:
                while not self.items and not self.closed:
                    self.cond.wait()
                if self.items:
                    item = self.items.popleft()
                    self.cond.notify_all()
                elif self.error is not None:
                    raise self.error
                else:
                    return
            yield item


class _Upstream(Exception):
    """Carries a stopping failure from an earlier stage down to the consumer."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class _Stage:
    def __init__(
        self,
        fn: Callable[[Any], Any],
        name: str,
        workers: int,
        batch: int | None,
        on_error: str,
        options: dict[str, Any],
    ):
        self.fn = fn
        self.name = name
        self.workers = workers
        self.batch = batch
        self.on_error = on_error
        self.options = options


class Pipeline(Generic[T]):
    """A source, then stages of worker processes, with results streamed out.

    ::

        pipeline = (
            corral.Pipeline(read_lines("big.txt"))
            .stage(parse, workers=2)
            .stage(score, workers=4, batch=64, on_error="skip")
        )
        for result in pipeline:
            ...

    - Each stage runs ``fn(item)`` (or ``fn(list_of_items)`` with ``batch=n``, which
      returns one result per item) in ``workers`` processes of its own.
    - Feeds between stages hold at most ``capacity`` items: a slow stage or consumer
      holds back the stages before it, and an infinite source works.
    - End-of-stream propagates by itself: iteration ends once the source is exhausted
      and every item has passed every stage.
    - A failing item becomes a :class:`corral.StageError` naming the stage and the
      item. ``on_error="stop"`` (the default) raises it from the iteration and stops
      the pipeline; ``"skip"`` drops the item and records the error in
      :attr:`errors`.
    - Worker crashes and timeouts are the pool's business: ``retries`` and
      ``task_timeout`` (and every other :class:`corral.Pool` option) can be given per
      stage.
    - ``ordered=False`` streams results as they complete, which keeps workers busier.
    - Ctrl-C, an error, or leaving the loop early tears every stage down.
    """

    __module__ = "corral"

    def __init__(
        self,
        source: Iterable[T],
        *,
        ordered: bool = True,
        capacity: int = DEFAULT_CAPACITY,
        context: CorralContext | str | None = None,
    ):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._source = source
        self._ordered = ordered
        self._capacity = capacity
        self._context = context
        self._stages: list[_Stage] = []
        self._started = False
        self.errors: list[StageError] = []
        """Errors of items skipped by stages with ``on_error="skip"``."""

    @overload
    def stage(
        self,
        fn: Callable[[T], U],
        *,
        workers: int = 1,
        batch: None = None,
        on_error: str = "stop",
        name: str | None = None,
        **pool_options: Any,
    ) -> Pipeline[U]: ...

    @overload
    def stage(
        self,
        fn: Callable[[list[T]], Iterable[U]],
        *,
        workers: int = 1,
        batch: int,
        on_error: str = "stop",
        name: str | None = None,
        **pool_options: Any,
    ) -> Pipeline[U]: ...

    def stage(
        self,
        fn: Callable[[Any], Any],
        *,
        workers: int = 1,
        batch: int | None = None,
        on_error: str = "stop",
        name: str | None = None,
        **pool_options: Any,
    ) -> Pipeline[Any]:
        """Add a stage running ``fn`` in ``workers`` processes; returns the pipeline.

        ``fn`` takes an item (or, with ``batch=n``, a list of up to ``n`` items and
        returns one result per item); the pipeline's item type becomes its result's.
        """
        if self._started:
            raise RuntimeError("the pipeline is already running")
        if on_error not in ("stop", "skip"):
            raise ValueError("on_error must be 'stop' or 'skip'")
        if batch is not None and batch < 1:
            raise ValueError("batch must be at least 1")
        stage_name = name or getattr(fn, "__qualname__", None) or f"stage {len(self._stages)}"
        pool_options.setdefault("context", self._context)
        self._stages.append(_Stage(fn, stage_name, workers, batch, on_error, pool_options))
        return cast("Pipeline[Any]", self)

    def __iter__(self) -> Iterator[T]:
        if self._started:
            raise RuntimeError("a pipeline runs once")
        if not self._stages:
            raise ValueError("a pipeline needs at least one stage")
        self._started = True
        return self._run()

    def run(self) -> list[T]:
        """Run to the end; return every result."""
        return list(self)

    def _run(self) -> Iterator[Any]:
        stop = threading.Event()
        pools: list[Pool] = []
        threads: list[threading.Thread] = []
        try:
            upstream: Iterable[Any] = self._source
            for n, stage in enumerate(self._stages):
                feed = _Feed(self._capacity)
                source: Iterable[Any] = upstream
                pump = threading.Thread(
                    target=self._pump,
                    args=(source, feed, stop, self._stages[n - 1] if n else None, stage.batch),
                    name=f"corral-pipeline-pump-{n}",
                    daemon=True,
                )
                pool = Pool(stage.workers, **stage.options)
                pools.append(pool)
                call = _StageCall(stage.fn, stage.name, stage.batch is not None)
                it: IMapIterator[Any] = (
                    pool.imap(call, feed) if self._ordered else pool.imap_unordered(call, feed)
                )
                threads.append(pump)
                pump.start()
                upstream = it
            yield from self._outputs(upstream, self._stages[-1], stop)
        finally:
            stop.set()
            for pool in pools:
                pool.terminate()
            for thread in threads:
                thread.join(5)

    def _outputs(
        self, it: Iterable[Any], stage: _Stage | None, stop: threading.Event
    ) -> Iterator[Any]:
        """Results of ``it`` (a stage's output), with ``stage``'s error policy applied."""
        iterator = iter(it)
        while True:
            try:
                value = next(iterator)
            except StopIteration:
                return
            except _Upstream as up:
                raise up.error from up.error.__cause__
            except Exception as exc:
                if stop.is_set():  # torn down: whatever this is, it is not the item's
                    raise _Upstream(CorralError("the pipeline was stopped")) from None
                if stage is None:
                    raise  # the source itself failed
                self._apply_policy(stage, exc)
                continue
            if stage is None or stage.batch is None:
                yield value
                continue
            for one in value:
                if one.__class__ is _ItemFailed:
                    self._apply_policy(stage, one.error)
                else:
                    yield one

    def _apply_policy(self, stage: _Stage, exc: Exception) -> None:
        """A failure in ``stage``: record it (``skip``), or raise it (``stop``)."""
        err = exc
        if isinstance(exc, StageError) and exc.exception is not None:
            # The item's own exception, with the worker's traceback below it.
            exc.exception.__cause__ = exc.__cause__
            exc.__cause__ = exc.exception
            exc.exception = None
        if not isinstance(exc, StageError):  # WorkerCrashed, TaskTimeout, ...
            item = getattr(exc, "_corral_item", None)  # the item (or batch) it ran
            err = StageError(stage.name, item, f"{type(exc).__name__}: {exc}")
            err.__cause__ = exc
        if stage.on_error == "skip":
            self.errors.append(err)  # type: ignore[arg-type]
            return
        raise err from err.__cause__

    def _pump(
        self,
        source: Iterable[Any],
        feed: _Feed,
        stop: threading.Event,
        previous: _Stage | None,
        batch: int | None,
    ) -> None:
        """Move ``source`` (the previous stage's results) into ``feed``; close it at the end."""
        try:
            group: list[Any] = []
            for item in self._outputs(source, previous, stop):
                if batch is None:
                    if not feed.put(item, stop):
                        break
                    continue
                group.append(item)
                if len(group) >= batch:
                    if not feed.put(group, stop):
                        break
                    group = []
            else:
                if group:
                    feed.put(group, stop)
            if stop.is_set():
                feed.close(_Upstream(CorralError("the pipeline was stopped")))
            else:
                feed.close()
        except BaseException as exc:
            feed.close(exc if isinstance(exc, _Upstream) else _Upstream(exc))
