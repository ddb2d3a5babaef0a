"""Synchronisation primitives that survive the death of any process using them.

Every object lives in one page of anonymous shared memory (a block of a shared
memfd arena, ``_core._arena``: many objects, one fd), laid out by the core's
robust monitor (``_core._monitor``)::

    Lock / RLock      a second robust mutex *is* the lock; the monitor only counts
                      waiters and recoveries. Fast path: one trylock + one unlock.
    Semaphore         value, total and per-process units held, under the monitor's
                      mutex; waiters sleep on the monitor's futex word.
    Event             a flag (one aligned word, no mutex), futex wake-ups.
    Condition         glibc-1-style counters (registered / notified / consumed).
    Barrier           parties, arrivals, generation, broken; every process holding
                      the barrier has a slot, and a vanished one breaks it.

How death is handled, per primitive:

- Lock, RLock: glibc's robust mutex. The kernel releases a dead thread's robust
  mutexes and the next acquirer gets EOWNERDEAD: corral makes the mutex
  consistent, sets ``owner_died`` and warns (``on_owner_death="warn"``) or raises
  ``OwnerDiedError`` with the lock held (``"raise"``).
- Semaphores (SEM_UNDO-like): each process's slot counts the units it holds.
  A waiter whose wait slice (50 ms) ends without news reaps the slots of
  vanished processes (pid + start time, so a recycled pid is not mistaken for
  the holder) and returns their units. The value is kept equal to
  ``total - sum(held)``, and every update is a single store ordered so that a
  death between two stores is repaired by recomputing it.
- Condition, Event: every wait is sliced; a dead notifier can only fail to
  notify, and the waiter's own timeout is honoured.
- Barrier: a party that vanishes while others wait breaks the barrier.

Where each lives (this module re-exports them all, and the ``_rebuild_*``
functions that pickles name here)::

    _sync_base.py        SyncStatistics, deadlines, _CMethod, waiter counting
    _sync_lock.py        Lock, RLock (fast paths: C ``_speedups.LockBase``, or
                         ``_PyLockBase``)
    _sync_semaphore.py   Semaphore, BoundedSemaphore
    _sync_event.py       Event
    _sync_condition.py   Condition (over a Lock or RLock)
    _sync_barrier.py     Barrier

Memory ordering: all shared fields are read and written with a robust mutex held
(lock = acquire barrier, unlock = release barrier, on every architecture); the
futex word is only ever a hint to re-check under the mutex. See ``_core._monitor``.
"""

from __future__ import annotations

from ._sync_barrier import Barrier
from ._sync_barrier import _rebuild_barrier as _rebuild_barrier
from ._sync_base import OnOwnerDeath as OnOwnerDeath
from ._sync_base import SyncStatistics
from ._sync_condition import Condition
from ._sync_condition import _rebuild_condition as _rebuild_condition
from ._sync_event import Event
from ._sync_event import _rebuild_event as _rebuild_event
from ._sync_lock import Lock, RLock
from ._sync_lock import _rebuild_lock as _rebuild_lock
from ._sync_semaphore import BoundedSemaphore, Semaphore
from ._sync_semaphore import _rebuild_semaphore as _rebuild_semaphore

__all__ = [
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Lock",
    "RLock",
    "Semaphore",
    "SyncStatistics",
]
