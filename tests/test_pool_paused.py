"""A paused worker (SIGSTOP: not dead, not reading, not writing) stalls nothing but itself.

Each test pauses a worker in one state: idle, then sent a large argument it can't
read; or half-way through writing a large result. The pool's timeout, terminate()
and close()+join() must act anyway, and leave no process behind (a paused worker is
SIGKILLed). A worker is known to be paused when /proc says so ("T"), and known to
be gone when its pidfd says so.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

import corral
from corral._core._linux import proc_state
from tests import pool_targets as t
from tests.conftest import wait_until

TIMEOUT = 30.0
# A 50 MiB argument: far more than a socket buffer, so a paused reader leaves most
# of it unsent. A 64 MiB result: the same the other way.
BIG_ARG = 50 * 1024 * 1024
BIG_RESULT = 64 * 1024 * 1024
TASK_TIMEOUT = 2.0
# The bound for terminate()/close()+join() is 1 s; the slack is for CI.
SHUTDOWN_BOUND = 1.5


def gone(pidfd: int, timeout: float) -> bool:
    return bool(select.select([pidfd], [], [], timeout)[0])


@contextlib.contextmanager
def pinned(pid: int) -> Iterator[int]:
    """A pidfd for ``pid``; on the way out, a process still there is resumed (SIGCONT),
    so that a failing test can't leave a paused worker for the leak check to trip on."""
    fd = os.pidfd_open(pid)
    try:
        yield fd
    finally:
        if not gone(fd, 0):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGCONT)
        os.close(fd)


def pause(fd: int, pid: int) -> None:
    signal.pidfd_send_signal(fd, signal.SIGSTOP)
    assert wait_until(lambda: proc_state(pid) in ("T", "t"), TIMEOUT), proc_state(pid)


def idle_worker(pool: corral.Pool) -> int:
    pid: int = pool.apply(t.worker_pid, (0,))
    return pid


def test_paused_idle_worker_sent_a_large_argument_is_replaced(ctx: corral.CorralContext) -> None:
    """The deadline fires although the worker never reads its task; the task had not
    started, so (per-item accounting) it is re-queued uncharged and runs elsewhere."""
    with corral.Pool(1, context=ctx) as pool:
        pid = idle_worker(pool)
        with pinned(pid) as fd:
            pause(fd, pid)
            t0 = time.monotonic()
            res = pool.apply_async(t.length, (b"a" * BIG_ARG,), task_timeout=TASK_TIMEOUT)
            assert res.get(TIMEOUT) == BIG_ARG
            took = time.monotonic() - t0
            assert TASK_TIMEOUT * 0.9 < took < TASK_TIMEOUT + 4, f"took {took:.2f} s"
            assert gone(fd, TIMEOUT), "the paused worker is still there"
        stats = pool.statistics()
        assert stats.workers_restarted == 1
        assert stats.tasks_retried == 0
        # A task that does run too long on the replacement still times out.
        with pytest.raises(corral.TaskTimeout):
            pool.apply(t.sleep_for, (t.FOREVER,), task_timeout=TASK_TIMEOUT)


def _paused_mid_send(ctx: corral.CorralContext) -> tuple[object, float, bool, int]:
    """A worker pauses half-way through writing its 64 MiB result, under a timeout.

    Returns (the task's outcome, seconds to it, whether the worker is gone, workers
    restarted). An attempt in which the task ended before its worker paused (its
    deadline passed first on a starved machine, or its watcher thread never caught
    the write) shows nothing, and is made again, up to 3 times.
    """
    for _ in range(3):
        attempt = _try_paused_mid_send(ctx)
        if attempt is not None:
            return attempt
    pytest.fail("the worker never paused while sending its result, in 3 attempts")


def _try_paused_mid_send(ctx: corral.CorralContext) -> tuple[object, float, bool, int] | None:
    # (The queue stays in this frame, so that a failing assertion's traceback does
    # not keep its memory alive past the test.)
    q = corral.Queue()
    with corral.Pool(1, t.set_channel, (q,), context=ctx) as pool:
        idle_worker(pool)
        t0 = time.monotonic()
        res = pool.apply_async(
            t.big_result_stopped_mid_send, (BIG_RESULT,), task_timeout=TASK_TIMEOUT
        )
        deadline = t0 + TIMEOUT
        while True:  # the worker's announcement, or the task's end without one
            with contextlib.suppress(queue.Empty):
                pid, what = q.get(timeout=0.05)
                break
            if res.ready():
                return None
            assert time.monotonic() < deadline, "the task neither paused nor ended"
        assert what == "sending"
        with pinned(pid) as fd:
            assert wait_until(lambda: proc_state(pid) in ("T", "t"), TIMEOUT)
            res.wait(TIMEOUT)
            took = time.monotonic() - t0
            outcome = res._value if res.ready() else None
            dead = gone(fd, TIMEOUT)
        assert pool.apply(t.double, (4,)) == 8
        return outcome, took, dead, pool.statistics().workers_restarted


def test_worker_paused_while_sending_a_large_result_times_out(ctx: corral.CorralContext) -> None:
    outcome, took, dead, restarted = _paused_mid_send(ctx)
    assert dead, "the paused worker is still there"
    assert took < TASK_TIMEOUT + 4, f"took {took:.2f} s"
    assert restarted == 1
    assert isinstance(outcome, corral.TaskTimeout), repr(outcome)


@pytest.mark.parametrize("state", ["idle", "receiving", "sending"])
def test_terminate_with_a_paused_worker(ctx: corral.CorralContext, state: str) -> None:
    q = corral.Queue()
    pool = corral.Pool(2, t.set_channel, (q,), context=ctx)
    res: corral.AsyncResult[Any] | None = None
    try:
        pid = idle_worker(pool)
        if state == "sending":
            res = pool.apply_async(t.big_result_stopped_mid_send, (BIG_RESULT,))
            pid, _ = q.get(timeout=TIMEOUT)
        with pinned(pid) as fd:
            if state == "sending":
                assert wait_until(lambda: proc_state(pid) in ("T", "t"), TIMEOUT)
            else:
                pause(fd, pid)
            if state == "receiving":
                # Two workers, one paused: enough large tasks that the paused one gets one.
                res = pool.map_async(t.length, [b"c" * BIG_ARG] * 4, chunksize=1)
            t0 = time.monotonic()
            pool.terminate()
            took = time.monotonic() - t0
            assert took < SHUTDOWN_BOUND, f"terminate() took {took:.2f} s"
            assert gone(fd, SHUTDOWN_BOUND), "the paused worker survived terminate()"
            if res is not None:
                with pytest.raises(corral.CorralError):
                    res.get(TIMEOUT)
    finally:
        pool.terminate()
    pool.join(TIMEOUT)


def test_close_join_with_a_paused_idle_worker(ctx: corral.CorralContext) -> None:
    pool = corral.Pool(2, context=ctx)
    try:
        assert pool.map(t.double, range(10)) == [x * 2 for x in range(10)]
        pid = idle_worker(pool)
        with pinned(pid) as fd:
            pause(fd, pid)
            t0 = time.monotonic()
            pool.close()
            pool.join(TIMEOUT)
            took = time.monotonic() - t0
            assert took < SHUTDOWN_BOUND, f"close()+join() took {took:.2f} s"
            assert gone(fd, SHUTDOWN_BOUND), "the paused worker survived close()+join()"
    finally:
        pool.terminate()


def test_terminate_with_the_supervisor_paused_too(ctx: corral.CorralContext) -> None:
    """A paused worker is SIGKILLed with its subtree, a kill that goes to this
    process's supervisor (``Process.kill``). With the supervisor paused as well, the
    request goes unacknowledged: the kill costs ACK_WAIT, not SUPERVISOR_KILL_WAIT
    (5 s), before this process does it itself."""
    from corral._core import _supervisor

    pool = corral.Pool(2, context=ctx)
    supervisor = _supervisor.ensure_started()
    try:
        pid = idle_worker(pool)
        with pinned(pid) as fd, pinned(supervisor) as supervisor_fd:
            pause(fd, pid)
            pause(supervisor_fd, supervisor)
            t0 = time.monotonic()
            pool.terminate()
            took = time.monotonic() - t0
            assert took < SHUTDOWN_BOUND + _supervisor.ACK_WAIT, f"terminate() took {took:.2f} s"
            assert gone(fd, SHUTDOWN_BOUND), "the paused worker survived terminate()"
            signal.pidfd_send_signal(supervisor_fd, signal.SIGCONT)
    finally:
        _supervisor._unresponsive_until = 0.0  # (it is not paused any more)
        pool.terminate()
    pool.join(TIMEOUT)
