"""Pickling a cluster task, refusing what lives on one host only.

A corral Queue, Lock, Event, Value or Array is shared memory on this machine, and a
Process or Pool is processes on it: a task on another node would get a copy that
talks to nobody. ``dumps`` pickles with cloudpickle (a dependency of
dask.distributed, so lambdas and closures always travel) and raises a
:class:`corral.SharingError` that names the object instead.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from .._exceptions import SharingError

__all__ = ["dumps"]


def _host_bound() -> tuple[type, ...]:
    from multiprocessing.process import BaseProcess
    from multiprocessing.sharedctypes import SynchronizedBase

    from .._core._fdpass import FdHandle
    from .._core._shm import SharedMemory
    from .._queue import Queue
    from .._synchronize import Barrier, Condition, Event, Lock, Semaphore
    from . import Pool  # the package's: _front picks the engine that imports us

    return (
        Queue,
        Lock,
        Semaphore,
        Event,
        Condition,
        Barrier,
        SynchronizedBase,
        BaseProcess,
        Pool,
        SharedMemory,
        FdHandle,
    )


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    bound: tuple[type, ...] = ()

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, self.bound):
            name = type(obj).__name__
            if isinstance(obj, self.bound[-2:]):  # shared memory under a ctypes object
                name = "shared-memory object (a corral Value, Array or RawValue)"
            raise SharingError(
                f"a corral {name} can't be passed to a task that runs on a cluster: "
                "it lives in this machine's memory and processes, and a copy on "
                "another node would talk to nobody. Send plain data, and use the "
                "results the tasks return."
            )
        return super().reducer_override(obj)


def dumps(obj: Any) -> bytes:
    """cloudpickle.dumps, refusing host-bound corral objects with a SharingError."""
    if not _Pickler.bound:
        _Pickler.bound = _host_bound()
    f = io.BytesIO()
    _Pickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return f.getvalue()
