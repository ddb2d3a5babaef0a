"""The private core's futex and robust-mutex wrappers, across processes."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

import corral
from corral._core._futex import futex_wait, futex_wake, load_u32, store_u32
from corral._core._robust import MUTEX_SIZE, MutexError, RobustMutex, init_mutex
from corral._core._shm import SharedMemory

READY = MUTEX_SIZE  # a futex word after the mutex: the child's "I hold it" flag
STOP = MUTEX_SIZE + 4


@pytest.fixture
def shm() -> Iterator[SharedMemory]:
    mem = SharedMemory(4096, what="test")
    yield mem
    mem.close()


def _wait_word(address: int, value: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while load_u32(address) != value:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        futex_wait(address, load_u32(address), min(left, 0.05))
    return True


def _died(m: RobustMutex) -> bool:
    # A call, so that the type checker does not narrow the attribute between holdings.
    return m.owner_died


# -- futex


def test_futex_wait_times_out(shm: SharedMemory) -> None:
    t0 = time.monotonic()
    assert futex_wait(shm.address, 0, 0.05) is False
    assert 0.04 <= time.monotonic() - t0 < 1.0


def test_futex_wait_returns_at_once_when_value_differs(shm: SharedMemory) -> None:
    store_u32(shm.address, 7)
    t0 = time.monotonic()
    assert futex_wait(shm.address, 6, 5.0) is True
    assert time.monotonic() - t0 < 1.0


def test_futex_wake_without_waiters(shm: SharedMemory) -> None:
    assert futex_wake(shm.address, 1) == 0


def _store_and_wake(mem: SharedMemory) -> None:
    store_u32(mem.address, 1)
    futex_wake(mem.address, 1)


def test_futex_woken_by_other_process(ctx: corral.CorralContext, shm: SharedMemory) -> None:
    p = ctx.Process(target=_store_and_wake, args=(shm,))
    p.start()
    try:
        assert _wait_word(shm.address, 1, 10.0)
    finally:
        p.result(timeout=10)
        p.join(10)


def test_futex_woken_by_thread(shm: SharedMemory) -> None:
    t = threading.Thread(target=_store_and_wake, args=(shm,))
    t.start()
    assert _wait_word(shm.address, 1, 10.0)
    t.join(10)


# -- robust mutex


def test_mutex_basic(shm: SharedMemory) -> None:
    init_mutex(shm.address)
    m = RobustMutex(shm.address)
    assert m.acquire()
    assert m.owner_tid() == threading.get_native_id()
    assert not _died(m)
    assert m.try_acquire() is False  # not recursive: a second lock would block
    t0 = time.monotonic()
    assert m.acquire(timeout=0.1) is False
    assert 0.09 <= time.monotonic() - t0 < 1.0
    m.release()
    assert m.owner_tid() == 0
    assert m.try_acquire()
    m.release()


def test_mutex_release_by_other_thread_is_refused(shm: SharedMemory) -> None:
    init_mutex(shm.address)
    m = RobustMutex(shm.address)
    assert m.acquire()
    errors: list[MutexError] = []

    def other() -> None:
        try:
            m.release()
        except MutexError as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert len(errors) == 1
    assert errors[0].errno == errno.EPERM
    m.release()
    with pytest.raises(MutexError):
        m.release()


def test_mutex_recursive(shm: SharedMemory) -> None:
    init_mutex(shm.address, recursive=True)
    m = RobustMutex(shm.address)
    assert m.acquire()
    assert m.acquire()
    m.release()
    assert m.owner_tid() == threading.get_native_id()
    m.release()
    assert m.owner_tid() == 0


def test_mutex_thread_exit_counts_as_owner_death(shm: SharedMemory) -> None:
    init_mutex(shm.address)
    m = RobustMutex(shm.address)
    t = threading.Thread(target=m.acquire)
    t.start()
    t.join(10)
    assert m.acquire(timeout=2.0)
    assert _died(m)
    m.release()
    assert m.acquire(timeout=2.0)
    assert not _died(m)
    m.release()


def _hold_forever(mem: SharedMemory) -> None:
    m = RobustMutex(mem.address)
    assert m.acquire(timeout=10)
    store_u32(mem.address + READY, 1)
    futex_wake(mem.address + READY, 1)
    while True:  # until SIGKILLed
        futex_wait(mem.address + STOP, 0, 1.0)


def test_mutex_recovers_from_sigkilled_owner(ctx: corral.CorralContext, shm: SharedMemory) -> None:
    init_mutex(shm.address)
    p = ctx.Process(target=_hold_forever, args=(shm,))
    p.start()
    try:
        assert _wait_word(shm.address + READY, 1, 30.0)
        m = RobustMutex(shm.address)
        assert m.try_acquire() is False
        os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
        t0 = time.monotonic()
        assert m.acquire(timeout=5.0)
        elapsed = time.monotonic() - t0
        assert _died(m)
        assert elapsed < 1.0
        m.release()
        assert m.acquire(timeout=1.0)
        assert not _died(m)
        m.release()
    finally:
        p.kill()
        p.join(10)
