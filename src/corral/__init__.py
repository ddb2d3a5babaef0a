"""corral: multi-core work with processes that never leak, never hang, and never
lose data silently.

``import corral as multiprocessing`` works: corral keeps the stdlib's names and
signatures. What corral does not reimplement yet comes straight from
:mod:`multiprocessing`, so nothing a user imports is missing.
"""

from __future__ import annotations

# --- Straight from multiprocessing: names corral does not reimplement (yet). ---
# Each name is on its own line; remove a name here when corral provides its own.
from multiprocessing import (
    AuthenticationError,
    BufferTooShort,
    Manager,
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

# --- corral's own objects, and every exception corral raises. ---
from ._context import CorralContext, get_context
from ._exceptions import (
    CorralError,
    MessageTooLarge,
    OwnerDiedError,
    OwnerDiedWarning,
    ProcessDied,
    RemoteTraceback,
    SharingError,
    ShutDown,
    StageError,
    TaskTimeout,
    WorkerCrashed,
)
from ._executor import ProcessPoolExecutor, map
from ._pipeline import Pipeline
from ._pool import AsyncResult, Pool, PoolStatistics
from ._process import Process
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

__version__ = "0.1.0"

__all__ = (
    "Array",
    "AsyncResult",
    "AuthenticationError",
    "Barrier",
    "BoundedSemaphore",
    "BufferTooShort",
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
