"""The C fast path's hand-off hint (``_speedups.c``, "The hand-off hint").

A waiter that has to spin for a busy Lock raises a flag beside the lock word; a
release() that sees it watches the word for a moment so the waiter takes the lock
instead of the releaser re-taking it at once (the barging that let one busy process
keep a Lock for good). These tests pin the flag's life: zero on a new lock, raised
by a waiter, dropped by a release that nobody followed (a spinner that gave up or
died costs one release at most), and untouched where the lock is not let go. The
rate it buys is a benchmark figure ("contended hand-offs", ``corral bench --only
sync``), not asserted here.
"""

from __future__ import annotations

import ctypes

import pytest

import corral
from corral._core import _robust
from corral._core._native import speedups

from .conftest import wait_until

TIMEOUT = 30.0

pytestmark = pytest.mark.skipif(
    speedups is None,
    reason="the hint is the C fast path's (off: CORRAL_PURE_PYTHON=1, or not built)",
)


def _hint(lock: corral.Lock) -> ctypes.c_uint32:
    return ctypes.c_uint32.from_address(lock._mutex.address + _robust.HINT_OFFSET)


def _take_and_report(lock: corral.Lock, got: corral.Event) -> bool:
    taken = lock.acquire()  # spins, raises the hint, then sleeps in the kernel
    got.set()
    lock.release()
    return taken


@pytest.mark.parametrize("kind", [corral.Lock, corral.RLock])
def test_a_new_lock_has_no_hint_raised(kind: type[corral.Lock]) -> None:
    lock = kind()
    assert _hint(lock).value == 0
    lock.acquire()
    lock.release()
    assert _hint(lock).value == 0, "an uncontended pair raised the hint"


def test_a_waiter_raises_the_hint_and_gets_the_lock_at_the_release(
    ctx: corral.CorralContext,
) -> None:
    lock, got = ctx.Lock(), ctx.Event()
    assert lock.acquire(timeout=TIMEOUT)
    child = ctx.Process(target=_take_and_report, args=(lock, got))
    child.start()
    try:
        assert wait_until(lambda: _hint(lock).value == 1, TIMEOUT), "the waiter raised no hint"
        assert not got.is_set()
        lock.release()
        assert got.wait(TIMEOUT), "the waiter never got the lock"
        assert child.result(timeout=TIMEOUT) is True
    finally:
        child.join(TIMEOUT)
        if child.is_alive():
            child.kill()
            child.join(TIMEOUT)
    assert child.exitcode == 0


@pytest.mark.parametrize("kind", [corral.Lock, corral.RLock])
def test_a_stale_hint_costs_one_release(kind: type[corral.Lock]) -> None:
    # (As a spinner that gave up, or was SIGKILLed while spinning, leaves it.)
    lock = kind()
    hint = _hint(lock)
    lock.acquire()
    hint.value = 1
    lock.release()  # watches the word for SPIN pauses: nobody comes
    assert hint.value == 0, "a release that nobody followed left the hint raised"


def test_an_inner_rlock_release_leaves_the_hint_alone() -> None:
    # An inner release lets nothing go (the thread still owns the lock), so it
    # must neither wait for a hand-off nor drop the waiter's flag.
    lock = corral.RLock()
    hint = _hint(lock)
    lock.acquire()
    lock.acquire()
    hint.value = 1
    lock.release()
    assert hint.value == 1
    lock.release()
    assert hint.value == 0
