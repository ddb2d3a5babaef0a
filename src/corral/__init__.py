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
    Array,
    AuthenticationError,
    Barrier,
    BoundedSemaphore,
    BufferTooShort,
    Condition,
    Event,
    JoinableQueue,
    Lock,
    Manager,
    Pipe,
    Pool,
    ProcessError,
    Queue,
    RawArray,
    RawValue,
    RLock,
    Semaphore,
    SimpleQueue,
    TimeoutError,
    Value,
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

# --- The foundation: Process, contexts, exceptions. ---
from ._context import CorralContext, get_context
from ._exceptions import CorralError, ProcessDied, RemoteTraceback
from ._process import Process

# --- Queues (_queue.py). ---

# --- Synchronisation (_synchronize.py, _sharedctypes.py). ---

__version__ = "0.1.0"

__all__ = (
    "Array",
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
    "Pipe",
    "Pool",
    "Process",
    "ProcessDied",
    "ProcessError",
    "Queue",
    "RLock",
    "RawArray",
    "RawValue",
    "RemoteTraceback",
    "Semaphore",
    "SimpleQueue",
    "TimeoutError",
    "Value",
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
    "parent_process",
    "reducer",
    "set_executable",
    "set_forkserver_preload",
    "set_start_method",
)
