"""corral's synchronisation primitives and shared values.

Three groups:

- behaviour shared with the stdlib, run against both ``corral`` and
  ``multiprocessing`` (the reference);
- the same objects across processes, under fork, forkserver and spawn;
- the guarantees: a holder or party is SIGKILLed, and the test asserts the
  recovery (or the clean error) and how fast it came.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import types
import warnings
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import corral
from corral._core._robust import MUTEX_SIZE, RobustMutex, checked_unlock, exit_calling, init_mutex
from corral._sync_lock import _not_owner_raiser, _PyLockBase
from tests.conftest import wait_until

# Generous bound on "recovers within 100 ms" for loaded test machines; the
# benchmark measures the real figure.
RECOVERY_BOUND = 1.5
# How long a child may take to start and report readiness (spawn is slow).
START_TIMEOUT = 30.0


def _kill(p: corral.Process) -> float:
    """SIGKILL ``p``; return the time it was sent."""
    assert p.pid is not None
    os.kill(p.pid, signal.SIGKILL)
    return time.monotonic()


def _died(lock: corral.Lock) -> bool:
    # A call, so that the type checker does not narrow the attribute between holdings.
    return lock.owner_died


def _finish(*procs: corral.Process) -> None:
    for p in procs:
        if p.exitcode is None:
            p.kill()
        p.join(10)
        assert p.exitcode is not None


# --------------------------------------------------------------- stdlib parity


# The stdlib keeps its shared-ctypes heap arenas (two fds each) open for the life
# of the process: make one large enough for every reference test now, at
# collection, so that no test is blamed for it. Freed, it stays (under 4 MiB).
multiprocessing.RawArray("b", 1 << 20)


@pytest.fixture(params=["corral", "multiprocessing"])
def impl(request: pytest.FixtureRequest) -> types.ModuleType:
    return corral if request.param == "corral" else multiprocessing


def test_lock_basics(impl: Any) -> None:
    lock = impl.Lock()
    assert lock.acquire()
    assert lock.acquire(False) is False
    t0 = time.monotonic()
    assert lock.acquire(timeout=0.1) is False
    assert time.monotonic() - t0 >= 0.09
    lock.release()
    with lock:
        assert lock.acquire(block=False) is False
    assert lock.acquire(timeout=0)
    lock.release()


def test_rlock_basics(impl: Any) -> None:
    lock = impl.RLock()
    assert lock.acquire()
    assert lock.acquire()
    lock.release()
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(lock.acquire(timeout=0.05)))
    t.start()
    t.join(10)
    assert got == [False]
    lock.release()

    def acquire_release() -> None:
        got.append(lock.acquire(timeout=5))
        lock.release()

    t = threading.Thread(target=acquire_release)
    t.start()
    t.join(10)
    assert got == [False, True]


def test_semaphore_basics(impl: Any) -> None:
    sem = impl.Semaphore(2)
    assert sem.acquire()
    assert sem.acquire()
    assert sem.acquire(timeout=0.05) is False
    sem.release()
    sem.release()
    sem.release()  # an unbounded semaphore may go past its initial value
    assert sem.get_value() == 3


def test_bounded_semaphore_basics(impl: Any) -> None:
    sem = impl.BoundedSemaphore(1)
    assert sem.acquire()
    sem.release()
    with pytest.raises(ValueError, match="too many"):
        sem.release()


def test_event_basics(impl: Any) -> None:
    ev = impl.Event()
    assert not ev.is_set()
    t0 = time.monotonic()
    assert ev.wait(0.1) is False
    assert time.monotonic() - t0 >= 0.09
    ev.set()
    assert ev.is_set()
    assert ev.wait(0) is True
    ev.clear()
    assert not ev.is_set()


def test_condition_basics(impl: Any) -> None:
    cond = impl.Condition()
    # threading raises RuntimeError (corral too); multiprocessing asserts.
    not_owned = RuntimeError if impl is corral else AssertionError
    with pytest.raises(not_owned):
        cond.notify()
    with pytest.raises(not_owned):
        cond.wait(0.01)
    with cond:
        assert cond.wait(0.05) is False
        assert cond.wait_for(lambda: 42, timeout=0.05) == 42
    flag: list[int] = []

    def notifier() -> None:
        with cond:
            flag.append(1)
            cond.notify_all()

    with cond:
        t = threading.Thread(target=notifier)
        t.start()
        assert cond.wait_for(lambda: flag, timeout=10)
    t.join(10)


def test_condition_notify_wakes_at_most_n() -> None:
    cond = corral.Condition()
    results: list[bool] = []

    def waiter() -> None:
        with cond:
            results.append(cond.wait(2.0))

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    # No event says "a thread is now blocked in wait()": poll the shared counter.
    assert wait_until(lambda: cond.statistics().waiters == 3, 10)
    with cond:
        cond.notify(2)
    for t in threads:
        t.join(10)
    assert sorted(results) == [False, True, True]


def test_barrier_basics(impl: Any) -> None:
    hits: list[int] = []
    barrier = impl.Barrier(3, action=lambda: hits.append(1), timeout=10)
    out: list[int] = []
    threads = [threading.Thread(target=lambda: out.append(barrier.wait())) for _ in range(2)]
    for t in threads:
        t.start()
    out.append(barrier.wait())
    for t in threads:
        t.join(10)
    assert sorted(out) == [0, 1, 2]
    assert hits == [1]
    assert barrier.parties == 3
    assert barrier.n_waiting == 0


def test_barrier_timeout_breaks_it(impl: Any) -> None:
    barrier = impl.Barrier(2)
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(0.1)
    assert barrier.broken
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(1)
    barrier.reset()
    assert not barrier.broken
    barrier.abort()
    assert barrier.broken


def test_value_and_array(impl: Any) -> None:
    v = impl.Value("i", 7)
    with v.get_lock():
        v.value += 1
    assert v.value == 8
    a = impl.Array("d", [1.0, 2.0, 3.0])
    a[1] = 5.0
    assert a[:] == [1.0, 5.0, 3.0]
    raw = impl.RawArray("i", 4)
    assert list(raw) == [0, 0, 0, 0]
    assert impl.RawValue("q", 3).value == 3
    assert impl.Value("i", 1, lock=False).value == 1


# -------------------------------------------------------------- corral-specific


def test_public_names() -> None:
    for name in ("Lock", "RLock", "Semaphore", "BoundedSemaphore", "Event", "Condition", "Barrier"):
        cls = getattr(corral, name)
        assert cls.__module__ == "corral"
        assert getattr(corral.get_context("spawn"), name) is cls
    for name in ("Value", "Array", "RawValue", "RawArray"):
        assert getattr(corral, name).__module__ == "corral"
    assert isinstance(corral.Value("i").get_lock(), corral.RLock)
    lock = corral.Lock()
    assert corral.Value("i", lock=lock).get_lock() is lock


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_release_by_a_non_owner_raises(kind: str) -> None:
    lock = getattr(corral, kind)()
    with pytest.raises(RuntimeError):
        lock.release()  # nobody holds it
    lock.acquire()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            lock.release()
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert not t.is_alive()
    assert len(errors) == 1
    if kind == "Lock":
        assert lock.locked()  # still ours
    lock.release()


def test_thread_exit_while_holding_is_owner_death() -> None:
    lock = corral.Lock()
    t = threading.Thread(target=lock.acquire)
    t.start()
    t.join(10)
    with pytest.warns(corral.OwnerDiedWarning):
        assert lock.acquire(timeout=5)
    assert _died(lock)
    lock.release()
    assert lock.acquire(timeout=5)
    assert not _died(lock)
    lock.release()
    assert lock.statistics().recoveries == 1


@pytest.mark.parametrize("how", ["acquire", "with"])
def test_owner_death_warning_points_at_the_caller(how: str) -> None:
    """Through the C fast path and the Python one alike, the warning names the line
    that acquired the lock."""
    lock = corral.Lock()
    t = threading.Thread(target=lock.acquire)
    t.start()
    t.join(10)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        if how == "acquire":
            assert lock.acquire()
            lock.release()
        else:
            with lock:
                pass
    assert [w.category for w in record] == [corral.OwnerDiedWarning]
    assert record[0].filename == __file__
    assert lock.acquire(timeout=5)
    lock.release()


def test_acquire_checks_its_arguments() -> None:
    lock = corral.Lock()
    with pytest.raises(TypeError):
        lock.acquire(True, 1.0, 3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        lock.acquire(blok=True)  # type: ignore[call-arg]
    assert not lock.locked()  # a refused call took nothing
    assert lock.acquire(block=True, timeout=1.0)
    assert not lock.acquire(block=False)
    assert not lock.acquire(timeout=0.01)
    with pytest.raises(TypeError):
        lock.release(1)  # type: ignore[call-arg]
    lock.release()
    assert not lock.locked()


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Condition"])
def test_exit_and_release_read_from_the_class_work(kind: str) -> None:
    # contextlib.ExitStack calls type(cm).__exit__(cm, ...); on the pure path
    # release and __exit__ are descriptors that give C callables (see _CMethod).
    obj = getattr(corral, kind)()
    lock = obj._lock if kind == "Condition" else obj
    with contextlib.ExitStack() as stack:
        stack.enter_context(obj)
        assert lock._is_owned()
    assert not lock._is_owned()
    assert lock.acquire(timeout=1.0)
    type(lock).release(lock)
    assert not lock._is_owned()
    with pytest.raises(RuntimeError, match="does not hold"):
        type(lock).release(lock)


def test_exit_calling_drops_the_exception_details() -> None:
    calls: list[tuple[Any, ...]] = []
    exit_ = exit_calling(lambda *args: calls.append(args))
    err = ValueError("in the body")
    assert exit_(ValueError, err, None) is None  # None: the exception is not swallowed
    assert exit_(None, None, None) is None
    assert calls == [(), ()]


class _Bound:
    """What ``_PyLockBase._bind`` binds to: the mutex's address as a c_void_p."""

    _release: Any
    _exit: Any

    def __init__(self, address: int):
        self._m = ctypes.c_void_p(address)


def test_pure_path_exit_gives_unlock_the_mutex_alone() -> None:
    # Built whichever base the Lock uses here: the pure path's __exit__ and release.
    buf = ctypes.create_string_buffer(MUTEX_SIZE)
    address = ctypes.addressof(buf)
    init_mutex(address)
    mutex = RobustMutex(address)
    bound = _Bound(address)
    _PyLockBase._bind(bound, address)  # type: ignore[arg-type]
    unlock = checked_unlock(_not_owner_raiser("Lock"))
    assert mutex.acquire(timeout=1.0)
    with pytest.raises(TypeError):  # the unlock takes the mutex and nothing else
        unlock(bound._m, None, None, None)
    assert mutex.held()
    err = ValueError("in the body")
    assert bound._exit(ValueError, err, None) is None
    assert not mutex.held()
    with pytest.raises(RuntimeError, match="does not hold"):
        bound._exit(None, None, None)
    assert mutex.acquire(timeout=1.0)
    bound._release()
    assert not mutex.held()


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Condition"])
def test_with_releases_when_the_body_raises(kind: str) -> None:
    obj = getattr(corral, kind)()
    lock = obj._lock if kind == "Condition" else obj

    def body() -> None:
        with obj:
            assert lock._is_owned()
            raise ValueError("body")

    with pytest.raises(ValueError, match="body"):
        body()
    assert not lock._is_owned()
    assert not lock.locked()
    with obj:  # and it works again
        assert lock._is_owned()
    assert not lock.locked()


def test_refuses_pickling_outside_start() -> None:
    for obj in (corral.Lock(), corral.Semaphore(), corral.Event(), corral.Barrier(2)):
        with pytest.raises(corral.SharingError):
            pickle.dumps(obj)


@pytest.mark.parametrize(
    "name",
    [
        "_rebuild_lock",
        "_rebuild_semaphore",
        "_rebuild_event",
        "_rebuild_condition",
        "_rebuild_barrier",
    ],
)
def test_rebuild_functions_are_named_in_corral_synchronize(name: str) -> None:
    # Pickles made before the primitives moved into _sync_*.py name them there.
    import corral._synchronize

    func = getattr(corral._synchronize, name)
    old_pickle = f"ccorral._synchronize\n{name}\n.".encode()  # protocol 0: a global
    assert pickle.loads(old_pickle) is func
    assert b"corral._synchronize" in pickle.dumps(func)  # new pickles too


def test_exceptions_pickle() -> None:
    err = pickle.loads(pickle.dumps(corral.OwnerDiedError("corral.Lock")))
    assert isinstance(err, corral.OwnerDiedError)
    assert isinstance(err, corral.CorralError)
    assert isinstance(err, RuntimeError)
    assert err.what == "corral.Lock"
    warning = pickle.loads(pickle.dumps(corral.OwnerDiedWarning("corral.RLock")))
    assert isinstance(warning, RuntimeWarning)
    assert "corral.RLock" in str(warning)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="on_owner_death"):
        corral.Lock(on_owner_death="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="initial value"):
        corral.Semaphore(-1)
    with pytest.raises(ValueError, match="parties"):
        corral.Barrier(0)
    with pytest.raises(TypeError):
        corral.Condition(threading.Lock())  # type: ignore[arg-type]


# ------------------------------------------------------- across processes: helpers


def _increment(lock: corral.Lock, counter: Any, n: int) -> None:
    for _ in range(n):
        with lock:
            counter.value += 1


def _increment_value(value: Any, n: int) -> None:
    for _ in range(n):
        with value.get_lock():
            value.value += 1


def _hold(lock: corral.Lock, ready: corral.Event, stop: corral.Event, times: int = 1) -> None:
    for _ in range(times):
        assert lock.acquire(timeout=10)
    ready.set()
    stop.wait(60)  # killed long before


def _release_foreign(lock: corral.Lock) -> str:
    try:
        lock.release()
    except RuntimeError:
        return "RuntimeError"
    return "released"


def _take_units(sem: corral.Semaphore, n: int, ready: corral.Event, stop: corral.Event) -> None:
    for _ in range(n):
        assert sem.acquire(timeout=10)
    ready.set()
    stop.wait(60)


def _set_event(ev: corral.Event) -> None:
    ev.set()


def _wait_condition(cond: corral.Condition, flag: Any) -> bool:
    with cond:
        return bool(cond.wait_for(lambda: flag.value == 1, timeout=20))


def _hold_condition_lock(
    cond: corral.Condition, ready: corral.Event, stop: corral.Event, started: Any = None
) -> None:
    if started is not None:
        started.set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cond.acquire(timeout=20)
    ready.set()
    stop.wait(60)


def _barrier_party(barrier: corral.Barrier) -> int | str:
    try:
        return barrier.wait(20)
    except threading.BrokenBarrierError:
        return "broken"


def _barrier_victim(barrier: corral.Barrier, ready: corral.Event, stop: corral.Event) -> None:
    ready.set()
    stop.wait(60)


# --------------------------------------------------------- across processes: tests


def test_lock_excludes_across_processes(ctx: corral.CorralContext) -> None:
    lock = corral.Lock()
    counter = corral.RawValue("i", 0)
    procs = [ctx.Process(target=_increment, args=(lock, counter, 300)) for _ in range(3)]
    for p in procs:
        p.start()
    _increment(lock, counter, 300)
    for p in procs:
        p.result(timeout=60)
    _finish(*procs)
    assert counter.value == 1200


def test_value_get_lock_across_processes(ctx: corral.CorralContext) -> None:
    value = corral.Value("q", 0)
    procs = [ctx.Process(target=_increment_value, args=(value, 300)) for _ in range(2)]
    for p in procs:
        p.start()
    _increment_value(value, 300)
    for p in procs:
        p.result(timeout=60)
    _finish(*procs)
    assert value.value == 900


def test_lock_release_by_other_process_raises(ctx: corral.CorralContext) -> None:
    lock = corral.Lock()
    lock.acquire()
    p = ctx.Process(target=_release_foreign, args=(lock,))
    p.start()
    try:
        assert p.result(timeout=START_TIMEOUT) == "RuntimeError"
        assert lock.locked()
    finally:
        _finish(p)
        lock.release()


def test_statistics_across_processes(ctx: corral.CorralContext) -> None:
    lock, ready, stop = corral.Lock(), corral.Event(), corral.Event()
    p = ctx.Process(target=_hold, args=(lock, ready, stop))
    p.start()
    try:
        assert ready.wait(START_TIMEOUT)
        stats = lock.statistics()
        assert stats.owner_pid == p.pid
        assert stats.recoveries == 0
        waiter = threading.Thread(target=lambda: lock.acquire(timeout=0.5))
        waiter.start()
        # A shared counter of another thread, not /proc, but there is no event to
        # wait on for "a thread is now blocked".
        assert wait_until(lambda: lock.statistics().waiters == 1, 10)
        waiter.join(10)
        assert lock.statistics().waiters == 0
        stop.set()
        p.result(timeout=10)
    finally:
        _finish(p)


# ------------------------------------------------------------ guarantees (faults)


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_lock_recovers_from_sigkilled_owner(ctx: corral.CorralContext, kind: str) -> None:
    lock: corral.Lock = getattr(corral, kind)()
    ready, stop = corral.Event(), corral.Event()
    p = ctx.Process(target=_hold, args=(lock, ready, stop, 2 if kind == "RLock" else 1))
    p.start()
    try:
        assert ready.wait(START_TIMEOUT)
        assert lock.acquire(timeout=0.05) is False
        killed_at = _kill(p)
        with pytest.warns(corral.OwnerDiedWarning, match="died while holding it"):
            assert lock.acquire(timeout=10)
        assert time.monotonic() - killed_at < RECOVERY_BOUND
        assert _died(lock)
        assert lock.statistics().recoveries == 1
        lock.release()
        assert not lock.locked()
        # Usable as ever, and the next holding is a normal one.
        assert lock.acquire(timeout=1)
        assert not _died(lock)
        lock.release()
    finally:
        _finish(p)


def test_lock_raise_mode_holds_the_lock(ctx: corral.CorralContext) -> None:
    lock = corral.Lock(on_owner_death="raise")
    ready, stop = corral.Event(), corral.Event()
    p = ctx.Process(target=_hold, args=(lock, ready, stop))
    p.start()
    try:
        assert ready.wait(START_TIMEOUT)
        killed_at = _kill(p)
        with pytest.raises(corral.OwnerDiedError):
            lock.acquire(timeout=10)
        assert time.monotonic() - killed_at < RECOVERY_BOUND
        # Raised with the lock held by the caller: repair, then release.
        assert lock.locked()
        assert lock._is_owned()
        assert lock.owner_died
        lock.release()
        with lock:
            assert not lock.owner_died
    finally:
        _finish(p)


def test_lock_waiter_process_recovers(ctx: corral.CorralContext) -> None:
    """The waiter is another process, already blocked when the owner dies."""
    lock = corral.Lock(on_owner_death="raise")
    ready, stop = corral.Event(), corral.Event()
    holder = ctx.Process(target=_hold, args=(lock, ready, stop))
    holder.start()
    try:
        assert ready.wait(START_TIMEOUT)
        waiter = ctx.Process(target=_acquire_report, args=(lock,))
        waiter.start()
        assert wait_until(lambda: lock.statistics().waiters == 1, START_TIMEOUT)
        killed_at = _kill(holder)
        kind, acquired_at = waiter.result(timeout=10)
        assert kind == "OwnerDiedError"
        assert acquired_at - killed_at < RECOVERY_BOUND
    finally:
        _finish(holder)
        _finish(*[p for p in corral.active_children() if isinstance(p, corral.Process)])


def _acquire_report(lock: corral.Lock) -> tuple[str, float]:
    try:
        lock.acquire(timeout=30)
    except corral.OwnerDiedError:
        at = time.monotonic()  # CLOCK_MONOTONIC is system-wide
        lock.release()
        return "OwnerDiedError", at
    at = time.monotonic()
    lock.release()
    return "plain", at


def test_semaphore_returns_units_of_dead_holder(ctx: corral.CorralContext) -> None:
    sem = corral.Semaphore(3)
    ready, stop = corral.Event(), corral.Event()
    p = ctx.Process(target=_take_units, args=(sem, 2, ready, stop))
    p.start()
    try:
        assert ready.wait(START_TIMEOUT)
        assert sem.acquire(timeout=1)
        assert sem.acquire(timeout=0.05) is False
        stats = sem.statistics()
        assert dict(stats.holders)[p.pid] == 2  # type: ignore[index]
        killed_at = _kill(p)
        assert sem.acquire(timeout=10)
        assert time.monotonic() - killed_at < RECOVERY_BOUND
        assert sem.acquire(timeout=1)  # both units came back
        assert sem.acquire(timeout=0.1) is False
        stats = sem.statistics()
        assert stats.recoveries == 1
        assert stats.holders == ((os.getpid(), 3),)
        sem.release(3)
        assert sem.get_value() == 3
    finally:
        _finish(p)


def test_bounded_semaphore_never_exceeds_bound(ctx: corral.CorralContext) -> None:
    sem = corral.BoundedSemaphore(2)
    ready, stop = corral.Event(), corral.Event()
    p = ctx.Process(target=_take_units, args=(sem, 1, ready, stop))
    p.start()
    try:
        assert ready.wait(START_TIMEOUT)
        assert sem.acquire(timeout=1)
        sem.release()  # our own unit
        sem.release()  # the child's unit, released on its behalf
        with pytest.raises(ValueError, match="too many"):
            sem.release()
        _kill(p)
        p.join(10)
        # The dead child's unit was already given back: nothing more returns.
        assert sem.acquire(timeout=1)
        assert sem.acquire(timeout=1)
        assert sem.acquire(timeout=0.2) is False  # long enough to reap the dead
        sem.release(2)
        assert sem.get_value() == 2
        with pytest.raises(ValueError, match="too many"):
            sem.release()
    finally:
        _finish(p)


def test_event_across_processes(ctx: corral.CorralContext) -> None:
    ev = corral.Event()
    p = ctx.Process(target=_set_event, args=(ev,))
    p.start()
    try:
        assert ev.wait(START_TIMEOUT)
    finally:
        p.result(timeout=10)
        _finish(p)


def test_event_waiter_honours_timeout_when_setter_dies(ctx: corral.CorralContext) -> None:
    ev, ready, stop = corral.Event(), corral.Event(), corral.Event()
    p = ctx.Process(target=_barrier_victim, args=(None, ready, stop))
    p.start()
    try:
        assert ready.wait(START_TIMEOUT)
        _kill(p)
        t0 = time.monotonic()
        assert ev.wait(0.3) is False
        assert 0.29 <= time.monotonic() - t0 < 0.3 + RECOVERY_BOUND
    finally:
        _finish(p)


def test_condition_across_processes(ctx: corral.CorralContext) -> None:
    cond = corral.Condition()
    flag = corral.RawValue("i", 0)
    p = ctx.Process(target=_wait_condition, args=(cond, flag))
    p.start()
    try:
        with cond:
            flag.value = 1
            cond.notify_all()
        assert p.result(timeout=START_TIMEOUT) is True
    finally:
        _finish(p)


def test_condition_waiter_honours_timeout_when_notifier_dies(ctx: corral.CorralContext) -> None:
    cond = corral.Condition(corral.Lock())
    ready, stop, started = corral.Event(), corral.Event(), corral.Event()
    p = ctx.Process(target=_hold_condition_lock, args=(cond, ready, stop, started))

    def killer() -> None:
        if ready.wait(START_TIMEOUT):
            _kill(p)

    with cond:
        p.start()  # it can take the lock only once wait() below has released it
        # Its start (slow on a busy machine) must not eat the waiter's second.
        assert started.wait(START_TIMEOUT)
        t = threading.Thread(target=killer)
        t.start()
        t0 = time.monotonic()
        with pytest.warns(corral.OwnerDiedWarning):
            assert cond.wait(timeout=1.0) is False
        elapsed = time.monotonic() - t0
        assert cond._lock.owner_died  # re-acquired from the dead notifier
    t.join(START_TIMEOUT)
    _finish(p)
    assert 0.99 <= elapsed < 1.0 + RECOVERY_BOUND + START_TIMEOUT


def test_barrier_across_processes(ctx: corral.CorralContext) -> None:
    barrier = corral.Barrier(3, timeout=START_TIMEOUT)
    procs = [ctx.Process(target=_barrier_party, args=(barrier,)) for _ in range(2)]
    for p in procs:
        p.start()
    mine = barrier.wait()
    got = {p.result(timeout=START_TIMEOUT) for p in procs} | {mine}
    _finish(*procs)
    assert got == {0, 1, 2}


def test_barrier_breaks_when_a_party_dies(ctx: corral.CorralContext) -> None:
    barrier = corral.Barrier(3)
    ready, stop = corral.Event(), corral.Event()
    victim = ctx.Process(target=_barrier_victim, args=(barrier, ready, stop))
    other = ctx.Process(target=_barrier_party, args=(barrier,))
    victim.start()
    other.start()

    def killer() -> None:
        if ready.wait(START_TIMEOUT):
            killed.append(_kill(victim))

    killed: list[float] = []
    t = threading.Thread(target=killer)
    t.start()
    try:
        with pytest.raises(threading.BrokenBarrierError):
            barrier.wait(START_TIMEOUT)
        broke_at = time.monotonic()
        t.join(START_TIMEOUT)
        assert broke_at - killed[0] < RECOVERY_BOUND
        assert other.result(timeout=START_TIMEOUT) == "broken"
        assert barrier.broken
        assert barrier.statistics().recoveries == 1
    finally:
        t.join(START_TIMEOUT)
        _finish(victim, other)


def test_barrier_not_broken_by_clean_exit(ctx: corral.CorralContext) -> None:
    barrier = corral.Barrier(2, timeout=START_TIMEOUT)
    first = ctx.Process(target=_barrier_party, args=(barrier,))
    first.start()
    assert barrier.wait() in (0, 1)
    assert first.result(timeout=START_TIMEOUT) in (0, 1)
    _finish(first)
    # The first child is gone, cleanly: a new pair still meets.
    second = ctx.Process(target=_barrier_party, args=(barrier,))
    second.start()
    assert barrier.wait() in (0, 1)
    assert second.result(timeout=START_TIMEOUT) in (0, 1)
    _finish(second)
    assert not barrier.broken


def _barrier_leaver(barrier: corral.Barrier, how: str) -> None:
    """Wait until the test process waits at the barrier, then leave without arriving."""
    deadline = time.monotonic() + START_TIMEOUT
    while barrier.n_waiting < 1:  # (a lock-free read; bounded)
        if time.monotonic() > deadline:
            return
        time.sleep(0.005)
    if how == "exception":
        raise ValueError("left the barrier by an exception")
    if how == "sys.exit":
        sys.exit(3)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("how", ["exception", "sys.exit", "SIGKILL"])
def test_barrier_breaks_when_a_party_leaves(ctx: corral.CorralContext, how: str) -> None:
    """A party that leaves while others wait, however it leaves, breaks the barrier:
    the others get BrokenBarrierError at once, not at their timeout."""
    barrier = corral.Barrier(2)
    p = ctx.Process(target=_barrier_leaver, args=(barrier, how))
    p.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(threading.BrokenBarrierError):
            barrier.wait(START_TIMEOUT)
        assert time.monotonic() - t0 < START_TIMEOUT / 2
        p.join(START_TIMEOUT)
        assert p.exitcode is not None
        assert p.exitcode != 0
        assert barrier.broken
    finally:
        _finish(p)


# A process may also die inside an object's own bookkeeping, holding the internal
# state mutex half-way through an update. One row per primitive.


def _die_inside(obj: Any, kind: str, ready: corral.Event, stop: corral.Event) -> None:
    mon = obj._mon
    mon.lock()
    if kind in ("Semaphore", "BoundedSemaphore"):
        mon.my_slot().held += 1  # took a unit, killed before updating the value
    elif kind == "Condition":
        mon.f.total += 1  # registered a wait, killed before recording it
    elif kind == "Barrier":
        mon.fields().count += 1  # arrived, killed before waiting
    ready.set()
    stop.wait(60)


def _make_obj(kind: str) -> Any:
    if kind == "Barrier":
        return corral.Barrier(2)
    return getattr(corral, kind)()


@pytest.mark.parametrize("kind", ["Semaphore", "BoundedSemaphore", "Event", "Condition", "Barrier"])
def test_death_inside_bookkeeping(ctx: corral.CorralContext, kind: str) -> None:
    obj = _make_obj(kind)
    ready, stop = corral.Event(), corral.Event()
    p = ctx.Process(target=_die_inside, args=(obj, kind, ready, stop))
    p.start()
    try:
        assert ready.wait(START_TIMEOUT)
        killed_at = _kill(p)
        p.join(10)
        if kind in ("Semaphore", "BoundedSemaphore"):
            assert obj.acquire(timeout=5)  # the half-taken unit is not lost
            assert time.monotonic() - killed_at < RECOVERY_BOUND
            assert obj.get_value() == 0
            obj.release()
            assert obj.get_value() == 1
        elif kind == "Event":
            assert obj.wait(0.01) is False
            obj.set()
            assert obj.wait(1)
        elif kind == "Condition":
            with obj:
                obj.notify()  # spent on the dead waiter at most: nobody else waits
                assert obj.wait(0.2) is False
        else:
            # A party died inside the barrier: it is broken, not hanging.
            with pytest.raises(threading.BrokenBarrierError):
                obj.wait(5)
            assert time.monotonic() - killed_at < RECOVERY_BOUND
            obj.reset()
            assert not obj.broken
        assert obj.statistics().recoveries >= 1
    finally:
        _finish(p)


# Model-based: a BoundedSemaphore against a counter, while children that hold
# units are killed or exit at random. Units of a vanished holder come back; the
# value never exceeds the bound.

BOUND = 3


def _hold_units(
    sem: corral.BoundedSemaphore, n: int, ready: corral.Event, stop: corral.Event
) -> None:
    for _ in range(n):
        assert sem.acquire(timeout=10)
    ready.set()
    stop.wait(60)  # then exits cleanly, still holding: the units go back at exit


class SemaphoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ctx = corral.get_context("fork")
        self.sem = corral.BoundedSemaphore(BOUND)
        self.mine = 0
        self.children: list[tuple[corral.Process, corral.Event, int]] = []

    def available(self) -> int:
        return BOUND - self.mine - sum(n for _, _, n in self.children)

    @rule()
    def acquire(self) -> None:
        if self.available() > 0:
            # Units of vanished holders come back within a wait slice or two.
            assert self.sem.acquire(timeout=5)
            self.mine += 1
        else:
            assert self.sem.acquire(timeout=0.06) is False

    @precondition(lambda self: self.mine > 0)
    @rule()
    def release(self) -> None:
        self.sem.release()
        self.mine -= 1

    @rule(n=st.integers(1, 2))
    def child_takes(self, n: int) -> None:
        if self.available() < n:
            return
        ready, stop = corral.Event(), corral.Event()
        p = self.ctx.Process(target=_hold_units, args=(self.sem, n, ready, stop))
        p.start()
        assert ready.wait(START_TIMEOUT)
        self.children.append((p, stop, n))

    @precondition(lambda self: self.children)
    @rule(data=st.data(), how=st.sampled_from(["SIGKILL", "exit"]))
    def child_goes(self, data: st.DataObject, how: str) -> None:
        i = data.draw(st.integers(0, len(self.children) - 1))
        p, stop, _ = self.children.pop(i)
        if how == "SIGKILL":
            _kill(p)
        else:
            stop.set()
        p.join(10)
        assert p.exitcode is not None

    @invariant()
    def never_above_bound(self) -> None:
        value = self.sem.get_value()
        assert 0 <= value <= BOUND
        # Dead holders not reaped yet can only make the value lower than the model;
        # once they are reaped (as a waiter would), it is exact.
        assert value <= self.available()
        mon = self.sem._mon
        mon.lock()
        mon.reap()
        mon.unlock()
        assert self.sem.get_value() == self.available()

    def teardown(self) -> None:
        for p, _, _ in self.children:
            p.kill()
            p.join(10)


SemaphoreMachine.TestCase.settings = settings(max_examples=8, stateful_step_count=8, deadline=None)
test_semaphore_model = SemaphoreMachine.TestCase


# Ctrl-C reaches a thread blocked in any of them: every wait is sliced.


def _block_until_interrupted(obj: Any, kind: str) -> str:
    try:
        if kind == "Event":
            obj.wait()
        else:
            obj.acquire()
    except KeyboardInterrupt:
        return "interrupted"
    return "acquired"


@pytest.mark.parametrize("kind", ["Lock", "Semaphore", "Event"])
def test_ctrl_c_interrupts_a_blocked_wait(kind: str) -> None:
    obj = corral.Semaphore(0) if kind == "Semaphore" else getattr(corral, kind)()
    if kind == "Lock":
        obj.acquire()
    p = corral.get_context("fork").Process(target=_block_until_interrupted, args=(obj, kind))
    p.start()
    try:
        assert wait_until(lambda: obj.statistics().waiters == 1, START_TIMEOUT)
        assert p.pid is not None
        os.kill(p.pid, signal.SIGINT)
        assert p.result(timeout=RECOVERY_BOUND) == "interrupted"
    finally:
        _finish(p)
        if kind == "Lock":
            obj.release()


def _add_both(ours: Any, theirs: Any) -> None:
    ours.value += 1
    theirs.value += 1


def test_stdlib_and_corral_values_coexist(ctx: corral.CorralContext) -> None:
    # Both register a pickling reducer for the same ctypes type; each object must
    # still travel by its own mechanism, whichever registered last.
    ours = corral.RawValue("i", 1)
    theirs = multiprocessing.RawValue("i", 10)
    ours_again = corral.RawValue("i", 100)
    p = ctx.Process(target=_add_both, args=(ours_again, theirs))
    q = ctx.Process(target=_add_both, args=(ours, theirs))
    for proc in (p, q):
        proc.start()
        proc.result(timeout=START_TIMEOUT)
    _finish(p, q)
    assert (ours.value, ours_again.value, theirs.value) == (2, 101, 12)
