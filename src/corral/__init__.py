"""corral: multi-core work with processes that never leak, never hang, and never
lose data silently.

``import corral as multiprocessing`` works: corral keeps the stdlib's names and
signatures. What corral does not reimplement yet comes straight from
:mod:`multiprocessing`, so nothing a user imports is missing.
"""

from __future__ import annotations

import importlib as _importlib

# --- Straight from multiprocessing: names corral does not reimplement (yet). ---
# Each name is on its own line; remove a name here when corral provides its own.
from multiprocessing import (
    AuthenticationError,
    BufferTooShort,
    Pipe,
    ProcessError,
    TimeoutError,
    active_children,
    allow_connection_pickling,
    cpu_count,
    current_process,
    freeze_support,
    get_all_start_methods,
    get_logger,
    get_start_method,
    log_to_stderr,
    parent_process,
    reducer,
    set_executable,
    set_forkserver_preload,
    set_start_method,
)

# --- corral's own. Process, contexts and exceptions load at once; the rest on first
# use (PEP 562), because every spawned or forkserver child imports corral and should
# pay only for what it uses.
from ._context import CorralContext, Manager, get_context
from ._exceptions import (
    ChildDiedAtStart,
    CorralError,
    MessageTooLarge,
    OwnerDiedError,
    OwnerDiedWarning,
    ProcessDied,
    SharingError,
    ShutDown,
    StageError,
    TaskTimeout,
)
from ._process import Process

# (typing is not imported at run time: it costs a few ms in every spawned child.)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any as _Any

    from ._executor import ProcessPoolExecutor, map
    from ._pipeline import Pipeline
    from ._pool import AsyncResult, Pool, PoolStatistics
    from ._queue import JoinableQueue, Queue, QueueStatistics, SimpleQueue
    from ._sharedctypes import Array, RawArray, RawValue, Value
    from ._synchronize import (
        Barrier,
        BoundedSemaphore,
        Condition,
        Event,
        Lock,
        RLock,
        Semaphore,
        SyncStatistics,
    )
    from ._workercrash import BrokenPool, RemoteTraceback, TransferError, WorkerCrashed

del TYPE_CHECKING  # not a public name

_LAZY = {
    **dict.fromkeys(("ProcessPoolExecutor", "map"), "._executor"),
    "Pipeline": "._pipeline",
    **dict.fromkeys(
        ("BrokenPool", "RemoteTraceback", "TransferError", "WorkerCrashed"), "._workercrash"
    ),
    **dict.fromkeys(("AsyncResult", "Pool", "PoolStatistics"), "._pool"),
    **dict.fromkeys(("JoinableQueue", "Queue", "QueueStatistics", "SimpleQueue"), "._queue"),
    **dict.fromkeys(("Array", "RawArray", "RawValue", "Value"), "._sharedctypes"),
    **dict.fromkeys(
        (
            "Barrier",
            "BoundedSemaphore",
            "Condition",
            "Event",
            "Lock",
            "RLock",
            "Semaphore",
            "SyncStatistics",
        ),
        "._synchronize",
    ),
}


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'corral' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = (
    "Array",
    "AsyncResult",
    "AuthenticationError",
    "Barrier",
    "BoundedSemaphore",
    "BrokenPool",
    "BufferTooShort",
    "ChildDiedAtStart",
    "Condition",
    "CorralContext",
    "CorralError",
    "Event",
    "JoinableQueue",
    "Lock",
    "Manager",
    "MessageTooLarge",
    "OwnerDiedError",
    "OwnerDiedWarning",
    "Pipe",
    "Pipeline",
    "Pool",
    "PoolStatistics",
    "Process",
    "ProcessDied",
    "ProcessError",
    "ProcessPoolExecutor",
    "Queue",
    "QueueStatistics",
    "RLock",
    "RawArray",
    "RawValue",
    "RemoteTraceback",
    "Semaphore",
    "SharingError",
    "ShutDown",
    "SimpleQueue",
    "StageError",
    "SyncStatistics",
    "TaskTimeout",
    "TimeoutError",
    "TransferError",
    "Value",
    "WorkerCrashed",
    "active_children",
    "allow_connection_pickling",
    "cpu_count",
    "current_process",
    "freeze_support",
    "get_all_start_methods",
    "get_context",
    "get_logger",
    "get_start_method",
    "log_to_stderr",
    "map",
    "parent_process",
    "reducer",
    "set_executable",
    "set_forkserver_preload",
    "set_start_method",
)
