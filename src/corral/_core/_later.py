"""Bookkeeping owed to shared state whose mutex a caller could not get in time.

A peer that is paused (SIGSTOP, a debugger, a descheduled VM) while it holds a
shared object's internal mutex is not dead: nobody may take its mutex over. Yet
a caller with a deadline must return by it. What that caller still owed the
shared state when its deadline passed (un-registering as a waiter, letting a
claim or a reservation go, breaking a barrier it timed out on) is handed here::

    caller: deadline passed,              later(key, job)
    mutex still busy         ──────────►    │  jobs of one key run in order, in one
    returns on time                         ▼  thread per key (a daemon)
                                          job(): takes the mutex itself (blocking,
                                          in slices), fixes the state, lets it go

``key`` names the shared object (its mutex's address), so that a peer paused
forever on one object never delays the jobs of another, and repeated timeouts on
one object queue behind a single thread instead of starting one each. The thread
ends as soon as its key has no jobs left. Jobs are rare: they exist only while a
peer holds a mutex past a caller's deadline.

A forked child starts with no jobs (the parent's threads are not in it; the
parent still runs its own).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable, Hashable

__all__ = ["later", "pending"]

_guard = threading.Lock()
_jobs: dict[Hashable, deque[Callable[[], None]]] = {}


def later(key: Hashable, job: Callable[[], None]) -> None:
    """Run ``job`` in the background, after the jobs already queued for ``key``."""
    with _guard:
        queued = _jobs.get(key)
        if queued is not None:
            queued.append(job)
            return
        _jobs[key] = deque([job])
    threading.Thread(target=_drain, args=(key,), name="corral-later", daemon=True).start()


def pending(key: Hashable) -> int:
    """How many jobs are queued or running for ``key`` (for tests and statistics)."""
    with _guard:
        queued = _jobs.get(key)
        return len(queued) if queued is not None else 0


def _drain(key: Hashable) -> None:
    while True:
        with _guard:
            queued = _jobs[key]
            if not queued:
                del _jobs[key]
                return
            job = queued[0]
        with contextlib.suppress(Exception):  # one failed job must not stop the others
            job()
        with _guard:
            queued.popleft()


def _after_fork_in_child() -> None:
    global _guard
    _guard = threading.Lock()
    _jobs.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
