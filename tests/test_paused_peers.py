"""A peer paused (SIGSTOP) while it holds a shared object's internal mutex.

A paused holder is not a dead one: its mutex is never taken over. But nobody else
waits past their deadline on it. The fault table: for each object and each
internal mutex it has, a child takes that mutex and stops itself, and then

- a waiter that was already asleep in a timed call when the peer paused returns
  within its timeout (plus ``SLACK``, for a loaded machine);
- every call with ``block=False`` or a timeout returns within it, and
  ``qsize``/``empty``/``full``/``statistics`` and the like answer at once;
- asyncio's ``aget``/``aput`` keep the event loop turning;
- after SIGCONT the object works as before, and the bookkeeping the timed-out
  callers owed (``_core._later``) has been done.

Runs under fork, forkserver and spawn; CI runs this file a second time with
``CORRAL_PURE_PYTHON=1`` for the pure-Python paths.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import pytest

import corral
from corral._core import _later, _linux
from corral._core._robust import RobustMutex
from tests.conftest import wait_until

# The timeout given to every timed call while the peer is paused.
TIMEOUT = 0.25
# How long the waiter that is already asleep when the peer pauses waits in all.
ASLEEP_TIMEOUT = 1.5
# Allowed on top of a timeout: a loaded 2-core machine deschedules for a while.
SLACK = 1.5
# How long a child may take to start (spawn is slow) or to stop itself.
START_TIMEOUT = 30.0

# (object kind, which internal mutex the paused peer holds)
ROWS = [
    ("Queue", "ring"),
    ("JoinableQueue", "ring"),
    ("SimpleQueue", "ring"),
    ("Lock", "monitor"),
    ("RLock", "monitor"),
    ("Semaphore", "monitor"),
    ("BoundedSemaphore", "monitor"),
    ("Event", "monitor"),
    ("Condition", "monitor"),
    ("Condition", "lock monitor"),
    ("Barrier", "monitor"),
    ("Value", "lock monitor"),
]


def _make(ctx: corral.CorralContext, kind: str) -> Any:
    if kind == "Barrier":
        return ctx.Barrier(2)
    if kind == "Value":
        return ctx.Value("i", 0)
    if kind in ("Semaphore", "BoundedSemaphore"):
        return getattr(ctx, kind)(0)
    return getattr(ctx, kind)()


def _internal_mutex(obj: Any, where: str) -> RobustMutex:
    if where == "ring":
        mutex: RobustMutex = obj._ring._mutex
    elif where == "monitor":
        mutex = obj._mon.mutex
    elif isinstance(obj, corral.Condition):
        mutex = obj._lock._mon.mutex
    else:
        mutex = obj.get_lock()._mon.mutex
    return mutex


def hold_and_stop(obj: Any, where: str, conn: Connection) -> None:
    """Take the object's internal mutex when told to, stop, and let it go when continued."""
    mutex = _internal_mutex(obj, where)
    conn.send("ready")
    if not conn.poll(START_TIMEOUT):
        return
    conn.recv()
    mutex.acquire()
    os.kill(os.getpid(), signal.SIGSTOP)
    mutex.release()


class Timed:
    """Calls made while the peer is paused: what each returned or raised, and how
    long it took, against the most it may take."""

    def __init__(self) -> None:
        self.slow: list[str] = []

    def call(self, name: str, fn: Callable[[], object], most: float) -> object:
        t0 = time.monotonic()
        try:
            out: object = fn()
        except Exception as exc:
            out = exc
        took = time.monotonic() - t0
        if took > most + SLACK:
            self.slow.append(f"{name} took {took:.2f} s (timeout {most})")
        return out


def _asleep_call(kind: str, obj: Any) -> Callable[[], object]:
    """A timed call that sleeps (the object has nothing to give), for a waiter
    already asleep when the peer pauses."""
    if kind in ("Queue", "JoinableQueue", "SimpleQueue"):
        return lambda: obj.get(timeout=ASLEEP_TIMEOUT)
    if kind in ("Lock", "RLock"):
        return lambda: obj.acquire(timeout=ASLEEP_TIMEOUT)  # the test holds it
    if kind in ("Semaphore", "BoundedSemaphore"):
        return lambda: obj.acquire(timeout=ASLEEP_TIMEOUT)
    if kind == "Event":
        return lambda: obj.wait(ASLEEP_TIMEOUT)
    if kind == "Condition":

        def cond_wait() -> object:
            with obj:
                return obj.wait(ASLEEP_TIMEOUT)

        return cond_wait
    if kind == "Barrier":
        return lambda: obj.wait(ASLEEP_TIMEOUT)
    lock = obj.get_lock()  # Value: the test holds its lock
    return lambda: lock.acquire(timeout=ASLEEP_TIMEOUT)


def _asleep(kind: str, obj: Any) -> bool:
    """Whether the waiter thread is registered as asleep in the object."""
    if kind in ("Queue", "JoinableQueue", "SimpleQueue"):
        return bool(obj.statistics().getters_waiting == 1)
    if kind == "Barrier":
        return bool(obj.n_waiting == 1)
    target = obj.get_lock() if kind == "Value" else obj
    return bool(target.statistics().waiters == 1)


def _calls_while_paused(kind: str, obj: Any, t: Timed) -> list[tuple[str, object, object]]:
    """(call, answer, expected answer or an exception type) for every call that
    must return at once or within TIMEOUT while the peer is paused."""
    out: list[tuple[str, object, object]] = []

    def check(name: str, fn: Callable[[], object], expected: object, most: float = 0.0) -> None:
        out.append((name, t.call(name, fn, most), expected))

    if kind in ("Queue", "JoinableQueue", "SimpleQueue"):
        check("get_nowait", obj.get_nowait, queue.Empty)
        check("get(timeout)", lambda: obj.get(timeout=TIMEOUT), queue.Empty, TIMEOUT)
        check("qsize", obj.qsize, 0)
        check("empty", obj.empty, True)
        check("full", obj.full, False)
        check("statistics.items", lambda: obj.statistics().items, 0)
        if kind != "SimpleQueue":
            check("put_nowait", lambda: obj.put_nowait(1), queue.Full)
            check("put(timeout)", lambda: obj.put(1, timeout=TIMEOUT), queue.Full, TIMEOUT)
            check("put_many(timeout)", lambda: obj.put_many([1, 2], timeout=TIMEOUT), queue.Full)
            check("get_many(block=False)", lambda: obj.get_many(5, block=False), queue.Empty)
            check("aget(timeout)", lambda: _loop_keeps_turning(obj.aget(TIMEOUT)), queue.Empty)
            check("aput(timeout)", lambda: _loop_keeps_turning(obj.aput(1, TIMEOUT)), queue.Full)
        if kind == "JoinableQueue":
            check("join(timeout)", lambda: obj.join(TIMEOUT), None, TIMEOUT)
    elif kind in ("Lock", "RLock"):
        check("acquire(timeout)", lambda: obj.acquire(timeout=TIMEOUT), False, TIMEOUT)
        check("acquire(False)", lambda: obj.acquire(False), False)
        check("locked", obj.locked, True)
        check("statistics", lambda: obj.statistics().waiters >= 0, True)
    elif kind in ("Semaphore", "BoundedSemaphore"):
        check("acquire(False)", lambda: obj.acquire(False), False)
        check("acquire(timeout)", lambda: obj.acquire(timeout=TIMEOUT), False, TIMEOUT)
        check("get_value", obj.get_value, 0)
        check("statistics.value", lambda: obj.statistics().value, 0)
    elif kind == "Event":
        check("wait(timeout)", lambda: obj.wait(TIMEOUT), False, TIMEOUT)
        check("is_set", obj.is_set, False)
        check("statistics.value", lambda: obj.statistics().value, 0)
    elif kind == "Condition":

        def cond_wait() -> object:
            with obj:
                return obj.wait(TIMEOUT)

        check("wait(timeout)", cond_wait, False, TIMEOUT)
        check("wait_for(timeout)", lambda: _cond_wait_for(obj), False, TIMEOUT)
        check("statistics", lambda: obj.statistics().waiters >= 0, True)
    elif kind == "Barrier":
        check("parties", lambda: obj.parties, 2)
        check("statistics", lambda: obj.statistics().recoveries, 0)
    else:
        lock = obj.get_lock()
        check("get_lock().acquire(timeout)", lambda: lock.acquire(timeout=TIMEOUT), False, TIMEOUT)
        check("get_lock().acquire(False)", lambda: lock.acquire(False), False)
        check("get_lock().statistics", lambda: lock.statistics().waiters >= 0, True)
    return out


def _calls_after_the_waiter(kind: str, obj: Any, t: Timed) -> list[tuple[str, object, object]]:
    """Calls that would wake the asleep waiter: made once it has returned, with
    the peer still paused."""
    out: list[tuple[str, object, object]] = []
    if kind == "Event":
        for name, fn, expected, most in [
            ("set", obj.set, None, 0.0),
            ("is_set after set", obj.is_set, True, 0.0),
            ("wait after set", lambda: obj.wait(TIMEOUT), True, TIMEOUT),
            ("clear", obj.clear, None, 0.0),
            ("is_set after clear", obj.is_set, False, 0.0),
        ]:
            out.append((name, t.call(name, fn, most), expected))
    return out


def _cond_wait_for(cond: corral.Condition) -> object:
    with cond:
        return cond.wait_for(lambda: False, TIMEOUT)


def _loop_keeps_turning(coro: Any) -> object:
    """Run ``coro`` next to a ticker; raise if the loop ever stalled for long."""

    async def main() -> object:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def tick() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.ensure_future(tick())
        try:
            return await asyncio.wait_for(coro, TIMEOUT + SLACK)
        finally:
            stop.set()
            await ticker
            if max(gaps, default=0.0) > SLACK:
                raise AssertionError(f"the event loop stalled for {max(gaps):.2f} s")

    return asyncio.run(main())


def _matches(answer: object, expected: object) -> bool:
    if isinstance(expected, type) and issubclass(expected, BaseException):
        return isinstance(answer, expected)
    return answer == expected


def _works_after(kind: str, obj: Any) -> None:
    """After SIGCONT: the object works, and owed bookkeeping was done."""
    if kind in ("Queue", "JoinableQueue", "SimpleQueue"):
        obj.put("after")
        assert obj.get(timeout=START_TIMEOUT) == "after"
        if kind == "JoinableQueue":
            obj.task_done()
            obj.join(START_TIMEOUT)
        assert wait_until(lambda: obj.statistics().getters_waiting == 0, START_TIMEOUT)
        assert wait_until(lambda: obj.statistics().putters_waiting == 0, START_TIMEOUT)
        assert obj.qsize() == 0
    elif kind in ("Lock", "RLock"):
        assert obj.acquire(timeout=START_TIMEOUT)
        obj.release()
        assert wait_until(lambda: obj.statistics().waiters == 0, START_TIMEOUT)
    elif kind in ("Semaphore", "BoundedSemaphore"):
        if kind == "Semaphore":
            obj.release()
            assert obj.acquire(timeout=START_TIMEOUT)
        assert wait_until(lambda: obj.statistics().waiters == 0, START_TIMEOUT)
    elif kind == "Event":
        obj.set()
        assert obj.wait(START_TIMEOUT)
        assert wait_until(lambda: obj.statistics().waiters == 0, START_TIMEOUT)
    elif kind == "Condition":
        assert wait_until(lambda: obj.statistics().waiters == 0, START_TIMEOUT)
        _notify_round_trip(obj)
    elif kind == "Barrier":
        # The timed-out waiter broke it (as a timeout does), once it could; every
        # timed-out call owed that, and the last may run late: wait for them all,
        # or one would break the barrier again after the reset below.
        assert wait_until(lambda: obj.broken, START_TIMEOUT)
        assert wait_until(lambda: _later.pending(obj._mon.shm) == 0, START_TIMEOUT)
        obj.reset()
        _barrier_round_trip(obj)
    else:
        with obj.get_lock():
            obj.value += 1
        assert obj.value == 1
        assert wait_until(lambda: obj.get_lock().statistics().waiters == 0, START_TIMEOUT)


def _notify_round_trip(cond: corral.Condition) -> None:
    got: list[bool] = []

    def waiter() -> None:
        with cond:
            got.append(cond.wait(START_TIMEOUT))

    th = threading.Thread(target=waiter)
    th.start()
    assert wait_until(lambda: cond.statistics().waiters == 1, START_TIMEOUT)
    with cond:
        cond.notify()
    th.join(START_TIMEOUT)
    assert got == [True]


def _barrier_round_trip(barrier: corral.Barrier) -> None:
    got: list[int] = []
    th = threading.Thread(target=lambda: got.append(barrier.wait(START_TIMEOUT)))
    th.start()
    mine = barrier.wait(START_TIMEOUT)
    th.join(START_TIMEOUT)
    assert sorted([mine, *got]) == [0, 1]


class _LockKeeper:
    """A thread that holds a corral lock until told to let it go."""

    def __init__(self, lock: corral.Lock):
        self._held = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(lock,))
        self._thread.start()
        assert self._held.wait(START_TIMEOUT)

    def _run(self, lock: corral.Lock) -> None:
        with lock:
            self._held.set()
            self._done.wait(START_TIMEOUT * 4)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(START_TIMEOUT)
        assert not self._thread.is_alive()


def _stopped(pid: int) -> bool:
    return _linux.proc_state(pid) == "T"


@pytest.mark.parametrize(("kind", "where"), ROWS, ids=[f"{k}-{w}" for k, w in ROWS])
def test_a_paused_peer_delays_nobody_past_their_deadline(
    ctx: corral.CorralContext, kind: str, where: str
) -> None:
    obj = _make(ctx, kind)
    user_lock = obj if kind in ("Lock", "RLock") else obj.get_lock() if kind == "Value" else None
    keeper = _LockKeeper(user_lock) if user_lock is not None else None  # the waiter sleeps
    parent, child = ctx.Pipe()
    holder = ctx.Process(target=hold_and_stop, args=(obj, where, child))
    holder.start()
    child.close()
    asleep_answer: list[object] = []
    asleep_done: list[float] = []
    try:
        assert parent.poll(START_TIMEOUT)
        assert parent.recv() == "ready"
        # A waiter goes to sleep in a timed call first...
        call = _asleep_call(kind, obj)
        t0 = time.monotonic()

        def asleep() -> None:
            try:
                asleep_answer.append(call())
            except Exception as exc:
                asleep_answer.append(exc)
            asleep_done.append(time.monotonic())

        waiter = threading.Thread(target=asleep)
        waiter.start()
        assert wait_until(lambda: _asleep(kind, obj), START_TIMEOUT)
        # ... then the peer takes the internal mutex and stops.
        parent.send("go")
        assert holder.pid is not None
        assert wait_until(lambda: _stopped(holder.pid or 0), START_TIMEOUT)
        paused_at = time.monotonic()
        t = Timed()
        answers = _calls_while_paused(kind, obj, t)
        waiter.join(ASLEEP_TIMEOUT + SLACK + START_TIMEOUT)
        assert not waiter.is_alive()
        answers += _calls_after_the_waiter(kind, obj, t)
        assert t.slow == []
        wrong = [(n, a, e) for n, a, e in answers if not _matches(a, e)]
        assert wrong == []
        # The waiter was asleep when the peer paused, and returned on time.
        assert asleep_done
        assert paused_at < asleep_done[0]
        assert asleep_done[0] - t0 <= ASLEEP_TIMEOUT + SLACK
        assert len(asleep_answer) == 1
        answer = asleep_answer[0]
        if kind in ("Queue", "JoinableQueue", "SimpleQueue"):
            assert isinstance(answer, queue.Empty)
        elif kind == "Barrier":
            assert isinstance(answer, threading.BrokenBarrierError)
        else:
            assert answer is False
    finally:
        if holder.pid is not None:
            os.kill(holder.pid, signal.SIGCONT)
        holder.join(START_TIMEOUT)
        if holder.exitcode is None:
            holder.kill()
            holder.join(START_TIMEOUT)
        parent.close()
        if keeper is not None:
            keeper.stop()
    assert holder.exitcode == 0
    _works_after(kind, obj)
    shm = obj._ring._shm if where == "ring" else None
    if shm is not None:
        assert wait_until(lambda: _later.pending(shm) == 0, START_TIMEOUT)


def test_a_ring_closed_with_bookkeeping_owed_is_unmapped_after_it() -> None:
    """Bookkeeping handed to ``_later`` while the ring's mutex is held elsewhere
    runs before the ring is unmapped, however early the ring is closed."""
    q = corral.Queue()
    ring = q._ring
    held, release = threading.Event(), threading.Event()

    def holder() -> None:  # another thread holds the mutex, as a paused peer would
        ring._mutex.acquire()
        held.set()
        release.wait(START_TIMEOUT)
        ring._mutex.release()

    th = threading.Thread(target=holder)
    th.start()
    assert held.wait(START_TIMEOUT)
    ran: list[int] = []
    assert ring._lock_or_later(lambda: ran.append(ring._q[0] >= 0)) is False
    ring.close()
    assert ring.fd >= 0  # not yet: a job for it is still owed
    release.set()
    th.join(START_TIMEOUT)
    assert wait_until(lambda: ring.fd < 0, START_TIMEOUT)
    assert ran == [1]
    # The job that unmapped the ring leaves the queue right after it returns.
    assert wait_until(lambda: _later.pending(ring._shm) == 0, START_TIMEOUT)
