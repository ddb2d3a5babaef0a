"""corral.Pool: the multiprocessing.pool.Pool API over the engine, plus per-call options."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from multiprocessing.context import BaseContext
from typing import Any, ParamSpec, TypeVar, TypeVarTuple, Unpack, cast, overload

from .._context import CorralContext
from .._process import Process
from ._engine import Engine, PoolStatistics
from ._jobs import AsyncResult, CorralFuture, FutureJob, IMapIterator, IMapJob, MapJob, MapResult
from ._options import CallOptions, PoolOptions
from ._progress import Progress, ProgressArg, total_of
from ._worker import MODE_CALL, MODE_MAP, MODE_STAR

__all__ = ["Pool", "PoolView"]

# The stdlib's pool states (multiprocessing.pool.RUN, ...), for Pool._state.
RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"

A = TypeVar("A")
T = TypeVar("T")
P = ParamSpec("P")
Ts = TypeVarTuple("Ts")

# The argument tuples of apply/apply_async/starmap are checked against the function's
# parameters when they are tuples (the common case). Lists, iterators and explicit
# keyword dicts fall back to unchecked arguments, as in typeshed's multiprocessing.
_LooseArgs = list[Any] | Iterator[Any] | tuple[()]


class _Calls:
    """The calls that run work, shared by a pool and its :meth:`Pool.with_options` views."""

    _engine: Engine
    _call: CallOptions

    # Single calls.

    @overload
    def apply(
        self,
        func: Callable[[Unpack[Ts]], T],
        args: tuple[*Ts],
        kwds: None = None,
        *,
        task_timeout: float | None = None,
    ) -> T: ...
    @overload
    def apply(
        self,
        func: Callable[..., T],
        args: _LooseArgs = (),
        kwds: Mapping[str, Any] | None = None,
        *,
        task_timeout: float | None = None,
    ) -> T: ...
    @overload
    def apply(
        self,
        func: Callable[..., T],
        args: Iterable[Any],
        kwds: Mapping[str, Any],
        *,
        task_timeout: float | None = None,
    ) -> T: ...
    def apply(
        self,
        func: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        *,
        task_timeout: float | None = None,
    ) -> T:
        result = self._apply_async(func, args, kwds, None, None, task_timeout)
        return _wait(self._engine, result)

    @overload
    def apply_async(
        self,
        func: Callable[[Unpack[Ts]], T],
        args: tuple[*Ts],
        kwds: None = None,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
    ) -> AsyncResult[T]: ...
    @overload
    def apply_async(
        self,
        func: Callable[..., T],
        args: _LooseArgs = (),
        kwds: Mapping[str, Any] | None = None,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
    ) -> AsyncResult[T]: ...
    @overload
    def apply_async(
        self,
        func: Callable[..., T],
        args: Iterable[Any],
        kwds: Mapping[str, Any],
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
    ) -> AsyncResult[T]: ...
    def apply_async(
        self,
        func: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
    ) -> AsyncResult[T]:
        return self._apply_async(func, args, kwds, callback, error_callback, task_timeout)

    def _apply_async(
        self,
        func: Callable[..., T],
        args: Iterable[Any],
        kwds: Mapping[str, Any] | None,
        callback: Callable[[T], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        task_timeout: float | None,
    ) -> AsyncResult[T]:
        timeout, retries = self._options(task_timeout)
        result: AsyncResult[T] = AsyncResult(callback, error_callback)
        item = (tuple(args), dict(kwds or {}))
        job = MapJob(self._engine, func, MODE_CALL, [item], 1, result, True, timeout, retries, None)
        self._engine.add_job(job)
        return result

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> CorralFuture[T]:
        """Run ``fn(*args, **kwargs)`` in a worker; return a :class:`concurrent.futures.Future`.

        Its ``cancel()`` stops the task even when it is running. Per-call options:
        ``pool.with_options(task_timeout=5, retries=2).submit(fn, x)``.
        """
        timeout, retries = self._options(None)
        future: CorralFuture[T] = CorralFuture()
        self._engine.add_job(FutureJob(self._engine, fn, (args, kwargs), future, timeout, retries))
        return future

    # Maps.

    def map(
        self,
        func: Callable[[A], T],
        iterable: Iterable[A],
        chunksize: int | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressArg | None = None,
    ) -> list[T]:
        result = self._map_async(
            func, iterable, chunksize, MODE_MAP, None, None, task_timeout, progress
        )
        return _wait(self._engine, result)

    def map_async(
        self,
        func: Callable[[A], T],
        iterable: Iterable[A],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressArg | None = None,
    ) -> MapResult[T]:
        return self._map_async(
            func, iterable, chunksize, MODE_MAP, callback, error_callback, task_timeout, progress
        )

    @overload
    def starmap(
        self,
        func: Callable[[Unpack[Ts]], T],
        iterable: Iterable[tuple[*Ts]],
        chunksize: int | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressArg | None = None,
    ) -> list[T]: ...
    @overload
    def starmap(
        self,
        func: Callable[..., T],
        iterable: Iterable[list[Any]] | Iterable[Iterator[Any]],
        chunksize: int | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressArg | None = None,
    ) -> list[T]: ...
    def starmap(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressArg | None = None,
    ) -> list[T]:
        result = self._map_async(
            func, iterable, chunksize, MODE_STAR, None, None, task_timeout, progress
        )
        return _wait(self._engine, result)

    @overload
    def starmap_async(
        self,
        func: Callable[[Unpack[Ts]], T],
        iterable: Iterable[tuple[*Ts]],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressArg | None = None,
    ) -> MapResult[T]: ...
    @overload
    def starmap_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[list[Any]] | Iterable[Iterator[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressArg | None = None,
    ) -> MapResult[T]: ...
    def starmap_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressArg | None = None,
    ) -> MapResult[T]:
        return self._map_async(
            func, iterable, chunksize, MODE_STAR, callback, error_callback, task_timeout, progress
        )

    def imap(
        self,
        func: Callable[[A], T],
        iterable: Iterable[A],
        chunksize: int | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressArg | None = None,
        total: int | None = None,
    ) -> IMapIterator[T]:
        """Like the stdlib's, but lazy, and with automatic chunks when ``chunksize`` is None."""
        return self._imap(func, iterable, chunksize, MODE_MAP, True, task_timeout, progress, total)

    def imap_unordered(
        self,
        func: Callable[[A], T],
        iterable: Iterable[A],
        chunksize: int | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressArg | None = None,
        total: int | None = None,
    ) -> IMapIterator[T]:
        return self._imap(func, iterable, chunksize, MODE_MAP, False, task_timeout, progress, total)

    # Shared plumbing.

    def _options(self, task_timeout: float | None) -> tuple[float | None, int]:
        timeout, retries = self._call.resolve(self._engine.options)
        if task_timeout is not None:
            CallOptions(task_timeout)  # checks it
            timeout = task_timeout if timeout is None else min(timeout, task_timeout)
        return timeout, retries

    def _progress(
        self, progress: ProgressArg | None, iterable: object, total: int | None, fn: object
    ) -> Progress | None:
        if progress is None:
            progress = self._engine.options.progress
        name = getattr(fn, "__qualname__", None) or "tasks"
        return Progress.make(progress, total_of(iterable, total), name)

    def _imap(
        self,
        func: Callable[..., T],
        iterable: Iterable[Any],
        chunksize: int | None,
        mode: int,
        ordered: bool,
        task_timeout: float | None,
        progress: ProgressArg | None,
        total: int | None,
        commit_seconds: float | None = None,
    ) -> IMapIterator[T]:
        """``commit_seconds``: the work between two commits of outcomes, if not the
        workers' ``COMMIT_SECONDS`` (a cluster node's chunk: see ``_cluster_node``)."""
        _check_chunksize(chunksize)
        self._engine.check_running()
        timeout, retries = self._options(task_timeout)
        bar = self._progress(progress, iterable, total, func)
        job = IMapJob(self._engine, func, mode, iterable, chunksize, ordered, timeout, retries, bar)
        if commit_seconds is not None:
            job.commit_seconds = commit_seconds
        self._engine.add_job(job)
        if job.sized and job.feed is None:
            # Finite and in memory: taken now, so the items run while the caller
            # does something else before iterating, as the stdlib's imap does (a
            # generator is still pulled as the caller iterates, a window at a time).
            job.pull()
        return IMapIterator(job)

    def _map_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Any],
        chunksize: int | None,
        mode: int,
        callback: Callable[[list[T]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        task_timeout: float | None,
        progress: ProgressArg | None,
    ) -> MapResult[T]:
        _check_chunksize(chunksize)
        self._engine.check_running()
        timeout, retries = self._options(task_timeout)
        # A list is used as it is, not copied (as the stdlib's map does): it is only
        # read, and a copy of 100k items costs a tenth of a trivial map's time.
        items = iterable if type(iterable) is list else list(iterable)
        if mode == MODE_STAR:
            items = [tuple(a) for a in items]
        result: MapResult[T] = MapResult(callback, error_callback)
        if not items:
            result._finish(True, [])
            return result
        bar = self._progress(progress, items, None, func)
        job = MapJob(
            self._engine, func, mode, items, chunksize, result, False, timeout, retries, bar
        )
        self._engine.add_job(job)
        return result

    def with_options(
        self, *, task_timeout: float | None = None, retries: int | None = None
    ) -> PoolView:
        """The same pool, with options for the calls made through the view returned.

        ``pool.with_options(task_timeout=5, retries=2).submit(fn, x)``: the tighter of
        the pool's and the view's ``task_timeout`` applies; ``retries`` replaces the
        pool's. Views are cheap, and share the pool's workers.
        """
        timeout, _ = self._options(task_timeout)
        if retries is None:
            retries = self._call.retries
        return PoolView(self._engine, CallOptions(timeout, retries))


class PoolView(_Calls):
    """A pool seen through per-call options: see :meth:`Pool.with_options`."""

    __module__ = "corral"

    def __init__(self, engine: Engine, call: CallOptions):
        self._engine = engine
        self._call = call

    def __repr__(self) -> str:
        return f"<corral.PoolView {self._call}>"


class Pool(_Calls):
    """A process pool with the :class:`multiprocessing.pool.Pool` API, that survives crashes.

    - A worker that dies mid-task (SIGKILL, OOM, segfault, ``os._exit``) is replaced.
      Only the item it was running is charged an attempt; it is retried up to
      ``retries`` times, then fails alone with :class:`corral.WorkerCrashed`. The
      items of its chunk that had finished are never run again; those that had
      not started are re-queued, uncharged.
    - ``task_timeout`` (seconds; per pool, per call, or both: the tighter wins)
      kills a task's worker tree when it runs too long; the task is retried or
      raises :class:`corral.TaskTimeout`. ``initializer_timeout`` bounds a worker's
      start (default: ``task_timeout``).
    - ``cancel()`` on a future, an async result or an imap iterator stops its
      tasks, running ones included.
    - With no ``chunksize``, chunks are sized from measured task durations.
    - ``imap``/``imap_unordered`` pull their input lazily, a bounded window at a time.
    - Task exceptions keep the worker's traceback as ``__cause__``; lambdas and
      closures work through cloudpickle when it is installed.
    - Ctrl-C while waiting on a result terminates the pool and raises
      :class:`KeyboardInterrupt` at once; no worker or descendant survives.
    - ``max_memory_per_child`` (bytes): a worker whose resident memory exceeds it is
      replaced after its current chunk. Workers are named ``corral worker i/n`` in
      ``ps`` when setproctitle is installed.
    - ``progress``: a tqdm bar per call (``True``, ``"force"`` or a dict of tqdm
      options; per call too). ``on_event(kind, n)`` receives ``submitted``,
      ``completed``, ``failed``, ``retried`` and ``worker_died`` events.
    - ``cluster=`` runs the tasks on a dask.distributed cluster, with the same
      guarantees on every node: a scheduler address, a ``distributed.Client``, a
      dask Cluster, ``"local"`` (corral starts and owns one on this machine), or
      ``"auto"`` (the ``CORRAL_CLUSTER`` address if set, else this machine).
      ``processes`` is then the total concurrency (default: the cluster's threads).
      Needs ``pip install 'corral[distributed]'``.
    """

    __module__ = "corral"

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: CorralContext | BaseContext | str | None = None,
        *,
        retries: int = 0,
        task_timeout: float | None = None,
        initializer_timeout: float | None = None,
        progress: ProgressArg = False,
        max_memory_per_child: int | None = None,
        on_event: Callable[[str, int], object] | None = None,
        cluster: Any = None,
        _start_on_demand: bool = False,
    ):
        options = PoolOptions.make(
            processes,
            initializer,
            initargs,
            maxtasksperchild,
            context,
            retries=retries,
            task_timeout=task_timeout,
            initializer_timeout=initializer_timeout,
            max_memory_per_child=max_memory_per_child,
            on_event=on_event,
            progress=progress,
            start_on_demand=_start_on_demand,
        )
        self._engine = _engine_for(options, cluster, processes)
        self._call = CallOptions()
        self._processes = self._engine.processes
        self._state = RUN  # the stdlib's Pool._state: RUN, CLOSE or TERMINATE
        self._finalizer = weakref.finalize(self, self._engine.terminate)

    def __del__(self) -> None:
        # As the stdlib's Pool: a pool nobody closed or terminated is a resource leak
        # (its finalizer still terminates it). An executor's pool is the executor's
        # to end (it detaches the finalizer), so it never warns.
        if getattr(self, "_state", None) == RUN and self._finalizer.alive:
            warnings.warn(
                f"unclosed running multiprocessing pool {self!r}",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )

    @property
    def _pool(self) -> list[Process]:
        """The worker processes alive now (the stdlib's ``Pool._pool``; none here for a
        pool on a cluster, whose processes are on its nodes)."""
        with self._engine.lock:
            workers = list(getattr(self._engine, "workers", ()))
        return [w.proc for w in workers]

    def __repr__(self) -> str:
        return f"<corral.Pool state={self._engine.state} pool_size={self._processes}>"

    # Lifecycle.

    def statistics(self) -> PoolStatistics:
        """Workers alive and restarted, tasks in flight, completed and retried."""
        return self._engine.statistics()

    def close(self) -> None:
        """Accept no more work, and pull no more lazy input; what was taken finishes.

        An ``imap`` over an unsized iterable (a generator) that had not read all its
        input raises :class:`corral.CorralError` after the items it had read.
        """
        self._state = CLOSE if self._state == RUN else self._state
        self._engine.close()

    def terminate(self) -> None:
        """Kill every worker (and its subtree) now; unfinished results fail."""
        self._state = TERMINATE
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


def _engine_for(options: PoolOptions, cluster: Any, processes: int | None) -> Engine:
    """The local engine, or with ``cluster=`` the cluster engine (``_cluster``),
    which drives the same jobs; the fronts use either through the same calls."""
    if cluster is not None:
        from ._cluster_connect import resolve_auto

        cluster = resolve_auto(cluster)
    if cluster is None:
        return Engine(options)
    from ._cluster import ClusterEngine

    return cast(Engine, ClusterEngine(options, cluster, processes))


def _wait(engine: Engine, result: AsyncResult[T]) -> T:
    try:
        while not result._event.wait(0.5):
            pass
    except KeyboardInterrupt:
        engine.terminate()
        raise
    return result.get(0)


def _check_chunksize(chunksize: int | None) -> None:
    if chunksize is not None and chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
