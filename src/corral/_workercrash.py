"""The exceptions whose stdlib bases cost an import, apart from the others.

``WorkerCrashed`` and ``BrokenPool`` are ``concurrent.futures.process.BrokenProcessPool``s;
``RemoteTraceback`` is both ``multiprocessing.pool.RemoteTraceback`` and
``concurrent.futures.process._RemoteTraceback``. Those modules cost concurrent.futures
and logging at import (about 10 ms), and every spawned child imports corral, so this
module is loaded on first use: by the pool, by a remote error being decoded, or by
``corral.WorkerCrashed`` and the like (``corral.__getattr__``).
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool as _BrokenProcessPool
from concurrent.futures.process import _RemoteTraceback as _FuturesRemoteTraceback

# typeshed lacks multiprocessing.pool.RemoteTraceback.
from multiprocessing.pool import RemoteTraceback as _PoolRemoteTraceback  # type: ignore[attr-defined]
from typing import Any

from ._exceptions import CorralError, ProcessDied, _describe_status

__all__ = ["BrokenPool", "RemoteTraceback", "TransferError", "WorkerCrashed"]


class RemoteTraceback(_PoolRemoteTraceback, _FuturesRemoteTraceback):  # type: ignore[misc]
    """The traceback of an exception raised in another process.

    It is attached as ``__cause__`` of the re-raised exception (by
    :meth:`corral.Process.result`, the pool's results and futures, and pipelines),
    so the child's stack is printed below the parent's, as :mod:`concurrent.futures`
    does. It is also :class:`multiprocessing.pool.RemoteTraceback` and
    ``concurrent.futures.process._RemoteTraceback``, so code that looks for either
    finds it; ``tb`` is the formatted traceback.
    """

    __module__ = "corral"

    def __init__(self, tb: str):
        Exception.__init__(self, tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class BrokenPool(CorralError, _BrokenProcessPool):
    """The pool can no longer run tasks.

    Raised by every call on a :class:`corral.Pool` or
    :class:`corral.ProcessPoolExecutor` (``submit``, ``map``, ``apply_async``, ...)
    once its initializer raised or outlived ``initializer_timeout``, or once
    ``MAX_EARLY_DEATHS`` workers in a row died before they were ready; and by the
    results and futures of the tasks that had not finished then. The cause (the
    initializer's exception, with its remote traceback) is ``__cause__``. It is a
    :class:`~concurrent.futures.process.BrokenProcessPool`, as the stdlib's executor
    raises in the same case. A worker that dies mid-task does not break a pool
    (see :class:`WorkerCrashed`).
    """

    __module__ = "corral"


class WorkerCrashed(ProcessDied, _BrokenProcessPool):
    """The worker running a pool task died, and the task's retries are exhausted.

    Raised (for that task only) by :class:`corral.Pool` results, futures from
    ``submit()`` and :class:`corral.ProcessPoolExecutor`, and by ``corral.map``,
    when the worker process running the task was killed by a signal (SIGKILL, OOM,
    segfault) or exited (``os._exit()``) mid-task ``retries + 1`` times. The pool
    replaces the worker and keeps going; every other task is unaffected.

    It is also a :class:`~concurrent.futures.process.BrokenProcessPool`, so code
    written for the stdlib executor that catches worker deaths keeps catching them
    (here the pool itself stays usable), and a :class:`ProcessDied`.

    Attributes:
        exitcode: the worker's exit code (negative signal number if signalled).
        signal: the :class:`signal.Signals` that killed it, or ``None``.
        pid: the worker's process id.
        task: a short description of the task, e.g. ``"task 17 of map(square)"``.
        attempts: how many times the task was run.
    """

    __module__ = "corral"

    def __init__(
        self, exitcode: int | None, pid: int | None = None, task: str = "a task", attempts: int = 1
    ):
        super().__init__(exitcode, pid, "worker")
        self.task = task
        self.attempts = attempts
        tries = "" if attempts <= 1 else f" (its attempt {attempts}; no retries left)"
        Exception.__init__(
            self, f"worker {pid} {_describe_status(exitcode)} while running {task}{tries}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.exitcode, self.pid, self.task, self.attempts))


class TransferError(CorralError, _BrokenProcessPool):
    """A task's arguments could not be unpickled in the worker, or its result in the parent.

    Raised (for that task only) by the futures of :class:`corral.ProcessPoolExecutor`,
    where the stdlib's executor raises
    :class:`~concurrent.futures.process.BrokenProcessPool` (and breaks); corral's
    pool goes on. The exception that unpickling raised (with a note saying where,
    and the worker's traceback when it was raised there) is ``__cause__``.
    :class:`corral.Pool` raises that exception itself instead.
    """

    __module__ = "corral"
