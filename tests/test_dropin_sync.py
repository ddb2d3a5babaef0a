"""Locks and conditions as drop-ins (issue 12): the reprs in the stdlib's format, and
the Condition's counters that CPython's suite reads (``_sleeping_count``,
``_woken_count``, ``_wait_semaphore``) with the stdlib's meaning, checked through
the scenarios of its test_notify / test_notify_all, under every start method.
"""

from __future__ import annotations

import re

import corral
from tests import dropin_targets as t

from .conftest import wait_until

TIMEOUT = 30.0


def _sleepers(cond: corral.Condition) -> int:
    return cond._sleeping_count.get_value() - cond._woken_count.get_value()


def _invariant(cond: corral.Condition) -> None:
    """The stdlib suite's check_invariant: only true with nobody waiting."""
    assert _sleepers(cond) == 0
    assert cond._wait_semaphore.get_value() == 0


def test_condition_counters_through_notify_and_notify_all(ctx: corral.CorralContext) -> None:
    cond = corral.Condition()
    sleeping, woken = corral.Semaphore(0), corral.Semaphore(0)
    _invariant(cond)
    procs = [
        ctx.Process(target=t.condition_sleeper, args=(cond, sleeping, woken, TIMEOUT))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            assert sleeping.acquire(timeout=TIMEOUT)
        # Released just before wait(): registered a moment later, under the lock.
        assert wait_until(lambda: _sleepers(cond) == 3, TIMEOUT)
        assert cond._wait_semaphore.get_value() == 0

        with cond:
            cond.notify()
        assert woken.acquire(timeout=TIMEOUT)
        assert wait_until(lambda: _sleepers(cond) == 2, TIMEOUT)
        assert cond._wait_semaphore.get_value() == 0  # taken by exactly one waiter
        assert cond._woken_count.get_value() == 1

        with cond:
            cond.notify_all()
        for _ in range(2):
            assert woken.acquire(timeout=TIMEOUT)
        for p in procs:
            p.join(TIMEOUT)
            assert p.exitcode == 0
        _invariant(cond)
        assert cond._sleeping_count.get_value() == 3
    finally:
        for p in procs:
            p.kill()
            p.join(TIMEOUT)


def test_condition_counters_after_a_timed_out_wait() -> None:
    cond = corral.Condition()
    with cond:
        assert cond.wait(0.01) is False
        _invariant(cond)
        cond.notify()  # nobody waits: nothing is given
    _invariant(cond)
    assert (cond._sleeping_count.get_value(), cond._woken_count.get_value()) == (1, 1)


def test_reprs_in_the_stdlibs_format() -> None:
    event = corral.Event()
    assert re.fullmatch(r"<Event at 0x[0-9a-f]+ unset>", repr(event))
    event.set()
    assert re.fullmatch(r"<Event at 0x[0-9a-f]+ set>", repr(event))
    assert repr(corral.Semaphore(2)) == "<Semaphore(value=2)>"
    assert repr(corral.BoundedSemaphore(1)) == "<BoundedSemaphore(value=1)>"
