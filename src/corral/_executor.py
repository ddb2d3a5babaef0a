"""corral.ProcessPoolExecutor and corral.map: two more fronts over the pool's engine.

Both are thin: every guarantee (crash recovery, retries, task timeouts, lazy input,
clean Ctrl-C) comes from ``_pool._Engine``.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, TypeVar

from ._context import CorralContext
from ._pool import Pool, PoolStatistics

__all__ = ["ProcessPoolExecutor", "map"]

T = TypeVar("T")


class ProcessPoolExecutor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` on corral's pool engine.

    Same constructor as the stdlib's, plus the options of :class:`corral.Pool`
    (``retries``, ``task_timeout``, ``max_memory_per_child``, ``progress``,
    ``on_event``). Unlike the stdlib's, a worker's death fails only the task it was
    running (:class:`corral.WorkerCrashed`, once retries are exhausted); the executor
    never becomes broken. Works with ``asyncio``'s ``loop.run_in_executor``.

    :meth:`map` pulls its input lazily, a bounded window at a time, with automatic
    chunks unless ``chunksize`` is given.
    """

    __module__ = "corral"

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: CorralContext | str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_child: int | None = None,
        retries: int = 0,
        task_timeout: float | None = None,
        progress: bool | str = False,
        max_memory_per_child: int | None = None,
        on_event: Callable[[str, int], object] | None = None,
    ):
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._pool = Pool(
            max_workers,
            initializer,
            initargs,
            max_tasks_per_child,
            mp_context,
            retries=retries,
            task_timeout=task_timeout,
            progress=progress,
            max_memory_per_child=max_memory_per_child,
            on_event=on_event,
        )
        self._max_workers = self._pool._processes
        self._shutdown_lock = threading.Lock()
        self._shutdown = False

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            return self._pool.submit(fn, *args, **kwargs)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Iterator[T]:
        """Results of ``fn(*args)`` in order, as :meth:`concurrent.futures.Executor.map`.

        Raises :class:`TimeoutError` from ``__next__`` if a result is not ready within
        ``timeout`` seconds of this call, and a task's exception when its result is
        reached.
        """
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            it = self._pool._imap(fn, zip(*iterables, strict=False), chunksize, 1, ordered=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        return _timed(it, deadline)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._shutdown_lock:
            self._shutdown = True
        if cancel_futures:
            self._pool._engine.cancel_pending()
        self._pool.close()
        if wait:
            self._pool.join()

    def statistics(self) -> PoolStatistics:
        """Workers alive and restarted, tasks in flight, completed and retried."""
        return self._pool.statistics()


def _timed(it: Any, deadline: float | None) -> Iterator[Any]:
    try:
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                value = it.next(left)
            except StopIteration:
                return
            except multiprocessing.TimeoutError:
                raise TimeoutError from None
            yield value
    finally:
        it.cancel()


def map(
    fn: Callable[[Any], T],
    iterable: Iterable[Any],
    *,
    workers: int | None = None,
    ordered: bool = True,
    chunksize: int | None = None,
    **pool_options: Any,
) -> Generator[T, None, None]:
    """``fn`` over ``iterable`` on every core: an iterator of results, in one call.

    A pool of ``workers`` processes (default: one per CPU) is made now, fed lazily
    (an infinite iterable works), and torn down when the iterator is exhausted,
    closed, or garbage-collected. ``ordered=False`` yields results as they complete.
    ``pool_options`` are :class:`corral.Pool`'s: ``retries``, ``task_timeout``,
    ``context``, ``initializer``, ``initargs``, ``maxtasksperchild``,
    ``max_memory_per_child``, ``progress``, ``on_event``.
    """
    pool = Pool(workers, **pool_options)
    it = (
        pool.imap(fn, iterable, chunksize)
        if ordered
        else pool.imap_unordered(fn, iterable, chunksize)
    )
    return _run_then_close(pool, it)


def _run_then_close(pool: Pool, it: Iterator[T]) -> Generator[T, None, None]:
    try:
        yield from it
        pool.close()
        pool.join()
    finally:
        pool.terminate()


map.__module__ = "corral"
