"""Interrupt storms: no exception raised by a signal handler leaves a lock held.

A child (the *victim*) loops over an object's operations in its main thread,
catching ``KeyboardInterrupt`` and carrying on, while the test sends it SIGINT
after SIGINT and a second child (the *contender*) uses the same object, so that
the victim also runs the slow paths (sleeping, waking, spinning). When the storm
ends, the victim reports whether it holds any internal mutex, or the user's lock,
outside any call: one such holding is a leak. The object must also work, for the
test process, after both children are gone, with no recovery from a dead owner
(a leaked holding would be recovered as one when the victim exits).

Both paths: CI runs this file again with ``CORRAL_PURE_PYTHON=1``. The user's
Lock/RLock (and a Condition's) are checked on both: on the pure-Python path too,
``release()``/``__exit__`` reach glibc's unlock before any Python frame, where an
interrupt could land first. A Semaphore's units are not checked: an interrupt at
the very start of its (Python) ``release()`` keeps the unit with the caller, as
design.md says ("Interrupts"). The release storm below checks them: an
interrupted ``release(n)`` gives back all ``n`` units or none, and no unit is
lost or made up. A Condition's registrations are checked too: every wait
registered ended, notified or cancelled.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import signal
import threading
import time
from typing import Any

import pytest

import corral
from corral._core._robust import RobustMutex
from tests.conftest import wait_until

# Interrupts sent per row in the default run (the slow run sends ten times more).
STORM = 800
# Between two interrupts. Pacing, not synchronisation: a signal sent while the last
# one is still pending is merged with it, and an interrupt that lands inside the
# victim's own ``except`` clause would end its loop.
PACE = 0.001
TIMEOUT = 30.0

KINDS = ["Lock", "RLock", "Queue", "JoinableQueue", "Semaphore", "Condition", "Event"]


def _make(kind: str) -> Any:
    return getattr(corral, kind)()


def _internal_mutexes(obj: Any) -> list[RobustMutex]:
    if isinstance(obj, corral.Queue):
        return [obj._ring._mutex]
    if isinstance(obj, corral.Condition):
        return [obj._mon.mutex, obj._lock._mon.mutex]
    return [obj._mon.mutex]


def _user_lock(obj: Any) -> corral.Lock | None:
    if isinstance(obj, corral.Lock):
        return obj
    if isinstance(obj, corral.Condition):
        return obj._lock
    return None


def _one_round(kind: str, obj: Any, contender: bool) -> None:
    if kind in ("Lock", "RLock"):
        with obj:
            pass
    elif kind == "Semaphore":
        # (Timed: a unit lost to an interrupt at the start of release(), which no
        # Python code can close, must not hang the loop; units are not checked.)
        if obj.acquire(timeout=0.01):
            obj.release()
    elif kind in ("Queue", "JoinableQueue"):
        obj.put(b"x")
        with contextlib.suppress(queue.Empty):
            obj.get(timeout=0.01)
        if kind == "JoinableQueue":
            with contextlib.suppress(ValueError):
                obj.task_done()
    elif kind == "Condition":
        with obj:
            if contender:
                obj.notify()
            else:
                obj.wait(0.001)
    elif contender:  # Event
        obj.set()
        obj.clear()
    else:
        obj.wait(0.001)


def victim(kind: str, obj: Any, stop: Any, ready: Any, seen: Any) -> tuple[int, int, list[str]]:
    """Loop until ``stop``; return (interrupts caught, rounds, leaks found), and
    keep ``seen`` at the interrupts caught so far.

    The SIGINT handler raises KeyboardInterrupt only while a round runs: one that
    lands in this loop's own bookkeeping (its ``while``, its ``except``) would end
    the loop, and says nothing about corral. Arming is a list store, which CPython
    never interrupts."""
    caught = rounds = 0
    armed = [False]

    def interrupt(signum: int, frame: Any) -> None:
        if armed[0]:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    ready.value = 1
    while not stop.value:
        try:
            armed[0] = True
            _one_round(kind, obj, False)
            armed[0] = False
            rounds += 1
        except KeyboardInterrupt:
            armed[0] = False
            caught += 1
            seen.value = caught
        except RuntimeError:
            # Condition.wait interrupted while re-taking the user's lock leaves it
            # not held, so the with's release() complains: not a leak, and the
            # interrupt did reach the object.
            armed[0] = False
            caught += 1
            seen.value = caught
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    me = threading.get_native_id()
    mutexes = _internal_mutexes(obj)
    leaks = [f"internal mutex {i}" for i, m in enumerate(mutexes) if m.owner_tid() == me]
    lock = _user_lock(obj)
    if lock is not None and lock._is_owned():
        leaks.append("the user's lock")
    return caught, rounds, leaks


def contender(kind: str, obj: Any, stop: Any) -> int:
    rounds = 0
    while not stop.value:
        _one_round(kind, obj, True)
        rounds += 1
    return rounds


def _storm(kind: str, interrupts: int) -> None:
    ctx = corral.get_context("fork")
    obj = _make(kind)
    stop = corral.RawValue("i", 0)
    ready = corral.RawValue("i", 0)
    seen = corral.RawValue("i", 0)
    v = ctx.Process(target=victim, args=(kind, obj, stop, ready, seen))
    c = ctx.Process(target=contender, args=(kind, obj, stop))
    v.start()
    c.start()
    try:
        # (A signal before this would hit the child's start-up, not the object.)
        assert wait_until(lambda: bool(ready.value), TIMEOUT)
        assert v.pid is not None
        # At least ``interrupts``, and on until a tenth of that many were caught:
        # on a loaded box signals sent while one is pending merge, or land while
        # the victim is between rounds (disarmed).
        deadline = time.monotonic() + TIMEOUT
        sent = 0
        while sent < interrupts or (seen.value < interrupts // 10 and time.monotonic() < deadline):
            os.kill(v.pid, signal.SIGINT)
            sent += 1
            time.sleep(PACE)
        stop.value = 1
        caught, rounds, leaks = v.result(timeout=TIMEOUT)
        c.result(timeout=TIMEOUT)
    finally:
        stop.value = 1
        for p in (v, c):
            p.join(TIMEOUT)
            if p.exitcode is None:
                p.kill()
                p.join(TIMEOUT)
    assert leaks == []
    # The storm reached the operations (signals sent while one is pending merge).
    assert caught >= interrupts // 10
    assert rounds > 0
    _works_after(kind, obj)


def _works_after(kind: str, obj: Any) -> None:
    if kind in ("Lock", "RLock"):
        assert obj.acquire(timeout=TIMEOUT)
        obj.release()
        assert obj.statistics().recoveries == 0  # no holding left to a dead owner
    elif kind == "Semaphore":
        assert obj.acquire(timeout=TIMEOUT)
        obj.release()
    elif kind in ("Queue", "JoinableQueue"):
        obj.put("after")
        got = [obj.get(timeout=TIMEOUT) for _ in range(obj.qsize())]
        assert got[-1] == "after"
    elif kind == "Condition":
        with obj:
            assert obj.wait(0.01) is False
    else:
        obj.set()
        assert obj.wait(TIMEOUT)
    if kind in ("Semaphore", "Condition", "Event"):
        assert obj.statistics().recoveries == 0
    if kind == "Condition":
        assert obj._lock.statistics().recoveries == 0  # its lock: none left to a dead owner
        # Every wait registered was notified or cancelled: none left behind by an
        # interrupt (it would take a later notification, or wake a waiter spuriously).
        f = obj._mon.f
        assert (f.total - f.wakeup, f.wakeup - f.woken) == (0, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_interrupt_storm_leaves_no_lock_held(kind: str) -> None:
    _storm(kind, STORM)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_long_interrupt_storm(kind: str) -> None:
    _storm(kind, STORM * 10)


# The release storm: the victim holds RELEASED of SEM_UNITS units and gives them
# back with one release(RELEASED), the only call an interrupt may land in; the
# contender takes and gives back one unit at a time. The victim aims each
# interrupt at its release: a timer (SIGALRM) set just before the call, to go off
# within AIM seconds (release(3) takes some microseconds; later ones are ignored).
SEM_UNITS = 4
RELEASED = 3
RELEASE_ROUNDS = 3000
AIM = 40e-6


def _held_by_me(sem: Any) -> int:
    return int(sem._mon.my_slot().held)  # (only this process changes it here)


def release_victim(sem: Any, rounds: int, seed: int) -> dict[str, Any]:
    """``rounds`` times: take RELEASED units (not interrupted), release them all
    in one call (interrupted); count how each interrupted release ended."""
    ended = {"all": 0, "none": 0, "partly": 0}
    armed = [False]
    rng = random.Random(seed)

    def interrupt(signum: int, frame: Any) -> None:
        if armed[0]:
            raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, interrupt)
    for _ in range(rounds):
        for _ in range(RELEASED - _held_by_me(sem)):
            if not sem.acquire(timeout=TIMEOUT):
                raise AssertionError("a unit never came back")
        signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, AIM))
        try:
            armed[0] = True
            sem.release(RELEASED)
            armed[0] = False
        except KeyboardInterrupt:
            armed[0] = False
            held = _held_by_me(sem)
            ended["all" if held == 0 else "none" if held == RELEASED else "partly"] += 1
        signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    leaked = sem._mon.mutex.owner_tid() == threading.get_native_id()
    left = _held_by_me(sem)
    if left:
        sem.release(left)
    return {"leaked": leaked, **ended}


def release_contender(sem: Any, stop: Any) -> int:
    rounds = 0
    while not stop.value:
        if sem.acquire(timeout=0.01):
            sem.release()
        rounds += 1
    return rounds


def _release_storm(kind: str, rounds: int) -> None:
    ctx = corral.get_context("fork")
    sem = getattr(corral, kind)(SEM_UNITS)
    stop = corral.RawValue("i", 0)
    c = ctx.Process(target=release_contender, args=(sem, stop))
    v = ctx.Process(target=release_victim, args=(sem, rounds, rounds))
    c.start()
    v.start()
    try:
        got = v.result(timeout=TIMEOUT)
        stop.value = 1
        assert c.result(timeout=TIMEOUT) > 0
    finally:
        stop.value = 1
        for p in (v, c):
            p.join(TIMEOUT)
            if p.exitcode is None:
                p.kill()
                p.join(TIMEOUT)
    assert got["leaked"] is False  # the internal mutex
    assert got["partly"] == 0  # all n units or none
    assert got["all"] + got["none"] >= rounds // 20  # the interrupts reached release()
    # Nothing lost, nothing made up: every unit is back, and none was added.
    assert sem.get_value() == SEM_UNITS
    assert sem._mon.f.total == SEM_UNITS
    assert sem.statistics().holders == ()
    assert sem.statistics().recoveries == 0


@pytest.mark.parametrize("kind", ["Semaphore", "BoundedSemaphore"])
def test_release_storm_gives_back_all_units_or_none(kind: str) -> None:
    _release_storm(kind, RELEASE_ROUNDS)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["Semaphore", "BoundedSemaphore"])
def test_long_release_storm(kind: str) -> None:
    _release_storm(kind, RELEASE_ROUNDS * 10)


# One interrupt at a known place: right after the monitor's mutex is let go, once
# the caller has counted itself as a waiter (the n-th unlock of the call). The
# count must be taken back (else statistics() shows waiters that are gone, and
# every release wakes for nobody), and a Condition's registration cancelled.
WAITER_ROWS = [
    ("Lock", 1),  # the slow path counts the waiter, then lets the monitor go
    ("Event", 1),
    ("Semaphore", 1),  # Monitor.wait counts, then lets its mutex go
    ("Condition", 1),  # after the registration
    ("Condition", 2),  # in Monitor.wait
]


def _interrupt_after_unlock(mon: Any, nth: int) -> tuple[list[int], Any]:
    real = mon.unlock
    calls = [0]

    def unlock() -> int:
        rc: int = real()
        calls[0] += 1
        if calls[0] == nth:
            raise KeyboardInterrupt
        return rc

    mon.unlock = unlock
    return calls, real


def _wait_on(kind: str, obj: Any) -> None:
    if kind == "Lock":
        obj.acquire(timeout=TIMEOUT)  # held by this thread: it waits
    elif kind == "Event":
        obj.wait(TIMEOUT)
    elif kind == "Semaphore":
        obj.acquire(timeout=TIMEOUT)
    else:
        with obj:
            obj.wait(TIMEOUT)


@pytest.mark.parametrize(("kind", "nth"), WAITER_ROWS)
def test_interrupt_after_the_monitor_unlock_takes_the_waiter_back(kind: str, nth: int) -> None:
    obj = getattr(corral, kind)(0) if kind == "Semaphore" else getattr(corral, kind)()
    if kind == "Lock":
        assert obj.acquire(timeout=TIMEOUT)
    mon = obj._mon
    calls, real_unlock = _interrupt_after_unlock(mon, nth)
    with pytest.raises(KeyboardInterrupt):
        _wait_on(kind, obj)
    assert calls[0] >= nth  # it landed where meant
    mon.unlock = real_unlock
    if kind == "Lock":
        obj.release()
    assert not mon.held()
    assert mon.header.nwaiters == 0
    assert mon.my_slot().waiters == 0
    if kind == "Condition":
        f = mon.f
        assert (f.total - f.wakeup, f.wakeup - f.woken) == (0, 0)
        assert not obj._lock.locked()
    assert obj.statistics().waiters == 0
