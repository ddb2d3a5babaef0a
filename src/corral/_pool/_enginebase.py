"""What every engine offers the fronts: the job list, its states, and shutdown.

    fronts (Pool, Executor, map, Pipeline)
        |  add_job / add_items / cancel_pending / close / terminate / join
        v
    EngineBase   jobs (FIFO), state run -> close -> stopped | terminate, broken
        |  wake()  (the only call into the subclass's scheduler)
        v
    Engine (local worker processes)  |  ClusterEngine (dask.distributed)

The fronts hold an engine and call only what is defined here, so a front never
knows where its items run. A subclass owns a scheduler thread (``self.thread``),
sets ``self.done`` once that thread has stopped everything, and says how to wake
it (``wake``), whether anything is in flight (``_in_flight``) and what new work
may need first (``_on_new_work``: the local engine starts workers on demand).
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import traceback
import weakref
from collections.abc import Callable
from typing import Any

from .._workercrash import BrokenPool
from ._jobs import Job
from ._options import PoolOptions

__all__ = ["EngineBase"]


class EngineBase:
    """The fronts' side of an engine (any thread); the scheduler is the subclass's."""

    thread: threading.Thread

    def __init__(self, options: PoolOptions):
        self.options = options
        self.lock = threading.Lock()
        self.jobs: collections.deque[Job] = collections.deque()
        self.state = "run"  # run -> close -> (stopped) | terminate
        self.broken: BaseException | None = None
        # Set when the scheduler has stopped everything. Waited on instead of
        # Thread.join: a Ctrl-C that interrupts Thread.join (CPython < 3.13) can leave
        # the thread marked finished while it still runs.
        self.done = threading.Event()
        self.pid = os.getpid()
        # The automatic chunk size each function reached in this pool, so that the
        # next call of it need not grow its chunks from one item again (Job.__init__).
        self._learned: weakref.WeakKeyDictionary[Callable[..., Any], int]
        self._learned = weakref.WeakKeyDictionary()
        self._learned_lock = threading.Lock()

    # -- What a subclass provides --

    def wake(self) -> None:
        """Make the scheduler thread look at the jobs again (never blocks)."""
        raise NotImplementedError

    def _on_new_work(self) -> None:
        """Called in the caller's thread when work was added (before the wake)."""

    def _in_flight(self) -> bool:
        """(Scheduler thread.) Is any work handed out and not yet accounted for?"""
        raise NotImplementedError

    # -- The fronts' API --

    def check_running(self) -> None:
        if self.state != "run":
            raise ValueError("Pool not running")
        if self.broken is not None:
            raise BrokenPool(f"the pool is broken: {self.broken}") from self.broken

    def add_job(self, job: Job) -> None:
        with self.lock:
            self.check_running()
            self.jobs.append(job)
        self._on_new_work()
        self.event("submitted", len(job.items))
        self.wake()

    def add_items(self, job: Job, items: list[Any], exhausted: bool) -> None:
        """More of a lazy job's input (``exhausted``: there is no more)."""
        with self.lock:
            job.items.extend(items)
            if exhausted:
                job.input_done = True
        if items:
            self._on_new_work()
            self.event("submitted", len(items))
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
        """Cancel every job's work that was not handed out yet (futures)."""
        with self.lock:
            jobs = list(self.jobs)
        for job in jobs:
            job.cancel_if_pending()
        self.wake()

    def drain_inputs(self) -> None:
        """Pull every lazy input to its end now (the executor's shutdown)."""
        with self.lock:
            jobs = list(self.jobs)
        for job in jobs:
            job.drain()

    def close(self) -> None:
        """No new work, and no more input pulled; what was taken finishes."""
        with self.lock:
            if self.state != "run":
                return
            self.state = "close"
            jobs = list(self.jobs)
        for job in jobs:
            job.cut_input()
        self.wake()

    def terminate(self) -> None:
        """Stop now: running work is killed, pending work fails; returns when done."""
        if self.pid != os.getpid():
            return  # a copy in an os.fork() child: the pool is its parent's
        with self.lock:
            if self.state == "terminate" and self.done.is_set():
                return
            self.state = "terminate"
        self.wake()
        self.join(None)

    def join(self, timeout: float | None) -> None:
        if threading.current_thread() is not self.thread:
            self.done.wait(timeout)

    def event(self, kind: str, n: int) -> None:
        """Tell the user's ``on_event`` hook (the progress bar); never raises."""
        on_event = self.options.on_event
        if on_event is not None:
            try:
                on_event(kind, n)
            except Exception:
                traceback.print_exc()

    def learned_chunk(self, fn: Callable[..., Any]) -> int:
        """The chunk size ``fn``'s last call here grew to (1 if none, or if ``fn``
        can't be weakly referenced: a builtin, say).

        A wrapper made per call (a cluster node's ``Journaled``) names the function
        it runs in ``_corral_chunk_key``: what is learned is that function's."""
        fn = getattr(fn, "_corral_chunk_key", fn)
        with self._learned_lock:
            try:
                return self._learned.get(fn, 1)
            except TypeError:
                return 1

    def learn_chunk(self, fn: Callable[..., Any], size: int) -> None:
        fn = getattr(fn, "_corral_chunk_key", fn)
        with self._learned_lock, contextlib.suppress(TypeError):  # (not weakly referable)
            self._learned[fn] = size

    # -- For the scheduler thread --

    def _busy(self) -> bool:
        """Is there work left: a job with items or input to come, or work in flight?"""
        with self.lock:
            jobs = any(j.has_work() or not j.input_done for j in self.jobs if not j.stopped)
        return jobs or self._in_flight()

    def _broken_error(self) -> BaseException:
        """The error pending work fails with once the pool broke."""
        exc = BrokenPool(f"the pool is broken: {self.broken}")
        exc.__cause__ = self.broken
        return exc
