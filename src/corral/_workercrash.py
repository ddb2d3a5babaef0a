"""corral.WorkerCrashed, apart from the other exceptions: its stdlib base,
``concurrent.futures.process.BrokenProcessPool``, costs concurrent.futures and logging
at import, and every spawned child imports corral. Loaded on first use (the pool,
or ``corral.WorkerCrashed``)."""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool as _BrokenProcessPool
from typing import Any

from ._exceptions import ProcessDied, _describe_status

__all__ = ["WorkerCrashed"]


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
