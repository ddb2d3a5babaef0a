"""corral.ProcessPoolExecutor and corral.map: two more fronts over the pool's engine.

Both are thin: every guarantee (per-item accounting, retries, task timeouts, lazy
input, clean Ctrl-C) comes from ``_pool``.

``corral.map`` keeps one pool per (workers, start method, options) across calls,
as loky's ``get_reusable_executor`` does, so that a loop of small ``corral.map``
calls does not start workers each time. A kept pool is replaced when it is
broken, terminated (a Ctrl-C) or its workers were started by another process
(after a fork); it is terminated at interpreter exit.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import multiprocessing
import os
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from multiprocessing.context import BaseContext
from typing import Any, ParamSpec, TypeVar

from ._context import CorralContext, get_context
from ._pool import Pool, PoolStatistics
from ._pool._engine import Engine
from ._pool._jobs import CorralFuture
from ._pool._progress import ProgressArg
from ._pool._worker import MODE_STAR
from ._process import Process
from ._workercrash import BrokenPool

__all__ = ["ProcessPoolExecutor", "map"]

A = TypeVar("A")
T = TypeVar("T")
P = ParamSpec("P")


class ProcessPoolExecutor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` on corral's pool engine.

    Same constructor as the stdlib's, plus the options of :class:`corral.Pool`
    (``retries``, ``task_timeout``, ``initializer_timeout``, ``max_memory_per_child``,
    ``progress``, ``on_event``). Unlike the stdlib's, a worker's death fails only the
    task it was running (:class:`corral.WorkerCrashed`, once retries are exhausted);
    the executor never becomes broken. Works with ``asyncio``'s
    ``loop.run_in_executor``.

    - ``Future.cancel()`` stops a running task too (its worker's tree is killed).
    - A ``KeyboardInterrupt`` that leaves a ``with`` block (or interrupts
      ``shutdown(wait=True)``) ends every worker and its subtree at once, instead of
      waiting for the queued work.
    - :meth:`map` pulls its input lazily, a bounded window at a time, with automatic
      chunks unless ``chunksize`` is given; ``shutdown`` reads the rest of it, as
      the stdlib's (eager) ``map`` would have.
    - ``cluster=`` runs the tasks on a dask.distributed cluster (see
      :class:`corral.Pool`); ``max_workers`` is then the total concurrency.
    """

    __module__ = "corral"

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: CorralContext | BaseContext | str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_child: int | None = None,
        retries: int = 0,
        task_timeout: float | None = None,
        initializer_timeout: float | None = None,
        progress: ProgressArg = False,
        max_memory_per_child: int | None = None,
        on_event: Callable[[str, int], object] | None = None,
        cluster: Any = None,
    ):
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        mp_context = _context_for(mp_context, max_tasks_per_child)
        self._pool = Pool(
            max_workers,
            initializer,
            initargs,
            max_tasks_per_child,
            mp_context,
            retries=retries,
            task_timeout=task_timeout,
            initializer_timeout=initializer_timeout,
            progress=progress,
            max_memory_per_child=max_memory_per_child,
            on_event=on_event,
            cluster=cluster,
            # As the stdlib's: workers start as tasks arrive, idle ones reused first,
            # except under fork, where all start at once (a fork from a process that
            # runs threads is safest early).
            _start_on_demand=mp_context.get_start_method() != "fork",
        )
        self._max_workers = self._pool._processes
        self._pool._engine.stdlib_errors = True
        self._mp_context = self._pool._engine.options.context
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        # Garbage-collected without shutdown(): as shutdown(wait=False), so that what
        # was submitted still runs (the stdlib's executor does the same), rather than
        # the Pool's terminate.
        self._pool._finalizer.detach()
        weakref.finalize(self, _shutdown_engine, self._pool._engine)
        _live.add(self)

    # The stdlib executor's private attributes that its users and tests read, with
    # the same meaning.

    @property
    def _processes(self) -> dict[int, Process]:
        """The worker processes alive now, by pid (a dead one is replaced)."""
        with self._pool._engine.lock:
            workers = list(self._pool._engine.workers)
        return {w.proc.pid: w.proc for w in workers if w.proc.pid is not None}

    @property
    def _broken(self) -> BaseException | bool:
        """Why the executor can run nothing more (a falsy value while it can)."""
        return self._pool._engine.broken or False

    @property
    def _executor_manager_thread(self) -> threading.Thread:
        """The thread that feeds the workers; it ends once shutdown is complete."""
        return self._pool._engine.thread

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> CorralFuture[T]:
        with self._shutdown_lock:
            self._check_open()
            try:
                return self._pool.submit(fn, *args, **kwargs)
            except ValueError as exc:  # the pool was terminated (a Ctrl-C, the exit hook)
                raise RuntimeError("cannot schedule new futures after shutdown") from exc

    def _check_open(self) -> None:
        broken = self._pool._engine.broken
        if broken is not None:
            raise BrokenPool(f"the executor is broken: {broken}") from broken
        if _global_shutdown:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

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
            self._check_open()
            it = self._pool._imap(
                fn, zip(*iterables, strict=False), chunksize, MODE_STAR, True, None, None, None
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        return _timed(it, deadline)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._shutdown_lock:
            self._shutdown = True
        engine = self._pool._engine
        if cancel_futures:
            engine.cancel_pending()
        engine.drain_inputs()
        self._pool.close()
        if wait:
            try:
                self._pool.join()
            except KeyboardInterrupt:
                self._pool.terminate()
                raise

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            with self._shutdown_lock:
                self._shutdown = True
            self._pool.terminate()  # one Ctrl-C: don't wait for the queued work
            return
        self.shutdown(wait=True)

    def statistics(self) -> PoolStatistics:
        """Workers alive and restarted, tasks in flight, completed and retried."""
        return self._pool.statistics()


def _timed(it: Any, deadline: float | None) -> Iterator[Any]:
    # No local holds a result across the yield: the caller's reference must be the
    # last one (the stdlib's test_free_reference).
    try:
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                yield it.next(left)
            except StopIteration:
                return
            except multiprocessing.TimeoutError:
                raise TimeoutError from None
    finally:
        it.cancel()


def _context_for(
    mp_context: CorralContext | BaseContext | str | None, max_tasks_per_child: int | None
) -> CorralContext:
    """The stdlib's rule: ``max_tasks_per_child`` means spawn by default, never fork.

    A replacement worker is started from the scheduler thread, and forking a process
    that runs threads can copy a lock some other thread holds.
    """
    if isinstance(mp_context, CorralContext):
        context = mp_context
    elif isinstance(mp_context, BaseContext):
        context = get_context(mp_context.get_start_method())
    elif mp_context is None and max_tasks_per_child is not None:
        context = get_context("spawn")
    else:
        context = get_context(mp_context)
    if max_tasks_per_child is not None and context.get_start_method() == "fork":
        raise ValueError(
            "max_tasks_per_child is incompatible with the 'fork' multiprocessing start "
            "method; supply a different mp_context."
        )
    return context


def _shutdown_engine(engine: Engine) -> None:
    """An executor nobody shut down was garbage-collected: finish its work, then stop."""
    with contextlib.suppress(Exception):
        engine.drain_inputs()
        engine.close()


# --- At interpreter exit: submitted work completes, as with the stdlib's executor ---

_global_shutdown = False
_live: weakref.WeakSet[ProcessPoolExecutor] = weakref.WeakSet()


def _python_exit() -> None:
    """Runs when the main thread ends, before atexit handlers (the pools' terminate)."""
    global _global_shutdown
    _global_shutdown = True
    for executor in list(_live):
        if executor._pool._engine.pid != os.getpid():
            continue  # a copy in a forked child (a worker): its parent's to end
        with contextlib.suppress(Exception):
            executor.shutdown(wait=True)


getattr(threading, "_register_atexit")(_python_exit)  # noqa: B009  (private, typeshed lacks it)
# A forked child (a worker, or the user's own fork) owns none of its parent's executors;
# a worker runs threading's exit hooks too, and would wait for them for ever.
os.register_at_fork(after_in_child=_live.clear)


# --- corral.map and its kept pools ----------------------------------------------------

_kept: dict[tuple[Any, ...], tuple[int, Pool]] = {}
_kept_lock = threading.Lock()


def _kept_pool(workers: int | None, options: dict[str, Any]) -> Pool:
    """The pool kept for these options, made (or remade) if there is none usable."""
    context = options.get("context")
    if isinstance(context, CorralContext):
        context = context.get_start_method()
    try:
        key = (workers, context, *sorted((k, v) for k, v in options.items() if k != "context"))
        hash(key)
    except TypeError:  # unhashable options (initargs with a list, say): a pool per call
        return Pool(workers, **options)
    with _kept_lock:
        pid, pool = _kept.get(key, (0, None))
        engine = pool._engine if pool is not None else None
        if (
            pool is None
            or pid != os.getpid()
            or engine is None
            or engine.state != "run"
            or engine.broken is not None
        ):
            if pool is not None and pid == os.getpid():
                pool.terminate()
            pool = Pool(workers, **options)
            _kept[key] = (os.getpid(), pool)
        return pool


def _close_kept() -> None:
    with _kept_lock:
        pools = [pool for pid, pool in _kept.values() if pid == os.getpid()]
        _kept.clear()
    for pool in pools:
        pool.terminate()


atexit.register(_close_kept)


def map(
    fn: Callable[[A], T],
    iterable: Iterable[A],
    *,
    workers: int | None = None,
    ordered: bool = True,
    chunksize: int | None = None,
    task_timeout: float | None = None,
    progress: ProgressArg = False,
    total: int | None = None,
    **pool_options: Any,
) -> Generator[T, None, None]:
    """``fn`` over ``iterable`` on every core: an iterator of results, in one call.

    The work runs on a pool of ``workers`` processes (default: one per CPU) that
    corral keeps for the next call with the same options, so repeated calls don't
    start workers again. The input is read lazily (an infinite iterable works).
    ``ordered=False`` yields results as they complete. Leaving the loop early stops
    the call's remaining tasks; a Ctrl-C terminates the pool (the next call makes a
    new one). ``task_timeout`` and ``progress`` (a bar for this call; ``total`` for
    inputs without ``len()``) are per call; ``pool_options`` are
    :class:`corral.Pool`'s: ``retries``, ``context``, ``initializer``, ``initargs``,
    ``maxtasksperchild``, ``max_memory_per_child``, ``on_event``, and ``cluster``
    (a dask.distributed cluster to run on; ``workers`` is then the total concurrency).
    """
    pool = _kept_pool(workers, pool_options)
    method = pool.imap if ordered else pool.imap_unordered
    it = method(fn, iterable, chunksize, task_timeout=task_timeout, progress=progress, total=total)
    return _run(it)


def _run(it: Any) -> Generator[Any, None, None]:
    try:
        yield from it
    finally:
        it.close()  # stops what is left of this call, if anything


map.__module__ = "corral"
