"""Every exception corral raises, in one place.

The tree::

    CorralError                      root of everything corral raises
    ├── ChildDiedAtStart             a spawned child died while start() wrote its data
    ├── ProcessDied                  a child ended without producing a result
    │   └── WorkerCrashed            a pool task's worker died, retries exhausted
    │                                (also concurrent.futures.process.BrokenProcessPool)
    ├── BrokenPool                   a pool whose initializer failed runs nothing more
    │                                (also concurrent.futures.process.BrokenProcessPool)
    ├── SharingError                 a corral object pickled outside a child's start
    │                                (also RuntimeError)
    ├── ShutDown                     get/put on a queue that was shut down (also queue.ShutDown)
    ├── MessageTooLarge              put of an object the queue can never hold (also ValueError)
    ├── OwnerDiedError               a lock's previous owner died holding it (also RuntimeError)
    ├── StageError                   an item failed in a Pipeline stage (the cause attached)
    └── TaskTimeout                  a pool task ran past task_timeout (also TimeoutError)

    OwnerDiedWarning                 the same news as a warning (a RuntimeWarning, not an error)
    RemoteTraceback                  a child's traceback, as __cause__ of what it raised
                                     (also multiprocessing.pool.RemoteTraceback and
                                     concurrent.futures.process._RemoteTraceback)

``CorralError``, ``SharingError`` and ``ChildDiedAtStart`` are defined in
``_core._errors`` (the core raises them) and re-exported here. ``WorkerCrashed``,
``BrokenPool`` and ``RemoteTraceback`` live in ``_workercrash`` (their stdlib bases
cost concurrent.futures and multiprocessing.pool at import) and are loaded on first
use by ``corral.__getattr__``.

Each class also inherits the stdlib exception that a user of ``multiprocessing``
would already catch, where one fits. Every exception here survives pickling,
because exceptions cross process boundaries.
"""

from __future__ import annotations

import signal as _signal
import sys

# Defined in the core, which raises SharingError itself (from inside pickle, where
# nothing could translate it); the root comes along.
from ._core._errors import ChildDiedAtStart, CorralError, SharingError

# typing costs a few ms at import, and every spawned child imports this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "ChildDiedAtStart",
    "CorralError",
    "MessageTooLarge",
    "OwnerDiedError",
    "OwnerDiedWarning",
    "ProcessDied",
    "SharingError",
    "ShutDown",
    "StageError",
    "TaskTimeout",
]


def _describe_status(exitcode: int | None) -> str:
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            name = _signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"exited with code {exitcode}"


class ProcessDied(CorralError):
    """A child process ended without delivering a result.

    Raised by :meth:`corral.Process.result` when the child was killed by a signal,
    called ``os._exit()``, or exited through ``SystemExit`` with a non-zero code.

    Attributes:
        exitcode: the child's exit code as ``multiprocessing`` reports it (negative
            signal number when a signal killed it).
        signal: the :class:`signal.Signals` that killed the child, or ``None``.
        pid: the child's process id, or ``None`` if unknown.
    """

    __module__ = "corral"

    def __init__(self, exitcode: int | None, pid: int | None = None, name: str | None = None):
        self.exitcode = exitcode
        self.pid = pid
        self.name = name
        self.signal: _signal.Signals | None = None
        if exitcode is not None and exitcode < 0:
            try:
                self.signal = _signal.Signals(-exitcode)
            except ValueError:
                self.signal = None
        who = f"process {name or '?'} (pid {pid})" if pid is not None else f"process {name or '?'}"
        super().__init__(f"{who} {_describe_status(exitcode)} without returning a result")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.exitcode, self.pid, self.name))


if sys.version_info >= (3, 13):
    from queue import ShutDown as _QueueShutDown
else:

    class _QueueShutDown(Exception):
        """Stands in for ``queue.ShutDown`` before Python 3.13."""


class ShutDown(CorralError, _QueueShutDown):
    """The queue was shut down.

    Raised by ``put()`` (and ``put_many()``, ``put_nowait()``) of
    :class:`corral.Queue` and its kin once ``shutdown()`` was called, and by
    ``get()`` once the queue is shut down and empty (at once, after
    ``shutdown(immediate=True)``). On Python 3.13+ it is also a
    :class:`queue.ShutDown`, as ``queue.Queue.shutdown()`` raises.
    """

    __module__ = "corral"


class MessageTooLarge(CorralError, ValueError):
    """An object is too large for the queue to ever hold.

    Raised by ``put()`` and ``put_many()`` of :class:`corral.Queue` before anything
    is written: the queue is unchanged. Give the queue a larger ``capacity_bytes``.

    Attributes:
        size: the bytes the message needs, framing included.
        capacity: the queue's ``capacity_bytes``.
    """

    __module__ = "corral"

    def __init__(self, size: int, capacity: int):
        self.size = size
        self.capacity = capacity
        super().__init__(
            f"a message of {size} bytes can never fit in a queue of {capacity} bytes; "
            "create the queue with a larger capacity_bytes"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.size, self.capacity))


_OWNER_DIED = (
    "the previous owner of this {what} died while holding it; the state it protects "
    "may be half-updated. The lock is now held by the caller."
)


class OwnerDiedError(CorralError, RuntimeError):
    """The previous owner of a lock died while holding it.

    Raised by ``acquire()`` (and ``with``) of a :class:`corral.Lock` or
    :class:`corral.RLock` created with ``on_owner_death="raise"``, when the process
    or thread that held it was killed or exited. The lock **is held by the caller**
    when this is raised: repair the shared state, then ``release()`` it.

    Attributes:
        what: which object, e.g. ``"corral.Lock"``.
    """

    __module__ = "corral"

    def __init__(self, what: str = "lock"):
        self.what = what
        super().__init__(_OWNER_DIED.format(what=what))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.what,))


class OwnerDiedWarning(RuntimeWarning):
    """The previous owner of a lock died while holding it; the caller now holds it.

    Emitted by ``acquire()`` (and ``with``) of a :class:`corral.Lock` or
    :class:`corral.RLock` created with the default ``on_owner_death="warn"``, and by
    :class:`corral.Condition` when re-acquiring such a lock. ``lock.owner_died``
    is True for that holding.
    """

    __module__ = "corral"

    def __init__(self, what: str = "lock"):
        self.what = what
        super().__init__(_OWNER_DIED.format(what=what))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.what,))


class TaskTimeout(CorralError, TimeoutError):
    """A pool task ran longer than the pool's ``task_timeout``.

    Raised (for that task only) by :class:`corral.Pool` results, futures and
    ``corral.map`` once the task's retries are exhausted. The worker running the task
    was killed, with its whole subtree, and replaced: the task really stopped.

    Attributes:
        timeout: the ``task_timeout`` in seconds.
        task: a short description of the task.
    """

    __module__ = "corral"

    def __init__(self, timeout: float, task: str = "a task"):
        self.timeout = timeout
        self.task = task
        super().__init__(f"{task} ran longer than task_timeout={timeout:g} s and was killed")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.timeout, self.task))


class StageError(CorralError):
    """An item failed in a pipeline stage.

    Raised by iterating a :class:`corral.Pipeline` when a stage with
    ``on_error="stop"`` fails on an item; collected in ``Pipeline.errors`` (and not
    raised) for a stage with ``on_error="skip"``. The original exception (with the
    worker's traceback) is ``__cause__``.

    Attributes:
        stage: the stage's name.
        item: the item that failed (its input to that stage), or ``None`` if it could
            not be carried back.
    """

    __module__ = "corral"

    def __init__(self, stage: str, item: Any, error: str, exception: BaseException | None = None):
        self.stage = stage
        self.item = item
        self.error = error
        self.exception = exception  # carried across processes; becomes __cause__
        super().__init__(f"stage {stage!r} failed on item {item!r:.200}: {error}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.stage, self.item, self.error, self.exception))
