"""``corral.synchronize``: :mod:`multiprocessing.synchronize` with corral's locks."""

from __future__ import annotations

from ._synchronize import Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore

__all__ = ["Barrier", "BoundedSemaphore", "Condition", "Event", "Lock", "RLock", "Semaphore"]
