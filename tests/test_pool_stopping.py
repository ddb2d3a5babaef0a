"""Stopping tasks: cancel of running tasks, per-call timeouts, stuck initializers, odd errors.

Tasks that must be stopped mid-run announce themselves on a channel queue
(``pool_targets.set_channel``), so each test knows a task runs before it acts, and
pins the worker and its grandchild with pidfds to know they are gone.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest

import corral
from tests import pool_targets as t
from tests.conftest import wait_until

TIMEOUT = 30.0
# How long the tests allow for a killed tree to be gone and a cancel to be seen.
STOP_BOUND = 5.0
# The per-call timeout the timeout tests use, and the slack allowed above it
# (killing, reaping and replacing a worker on a loaded 2-core box).
CALL_TIMEOUT = 1.0
SLACK = 3.0
# How long a trivial task may take on an idle worker before it counts as held up.
IDLE_BOUND = 2.0


def runs(path: Path) -> collections.Counter[int]:
    if not path.exists():
        return collections.Counter()
    return collections.Counter(int(line) for line in path.read_text().split())


def pidfds(*pids: int) -> list[int]:
    return [os.pidfd_open(pid) for pid in pids]


def all_dead(fds: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pending = list(fds)
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select(pending, [], [], left)
        pending = [fd for fd in pending if fd not in ready]
    return True


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def warm(pool: corral.Pool) -> None:
    """Wait until the workers are up, so that start-up time is not counted in timeouts."""
    assert pool.map(t.double, range(4), chunksize=1) == [0, 2, 4, 6]


# --- cancel() of a running task ------------------------------------------------------------


class _Front:
    """A pool or an executor, seen through what the cancel test needs."""

    def __init__(self, kind: str, ctx: corral.CorralContext, q: corral.Queue):
        self.pool: corral.Pool | None = None
        self.ex: corral.ProcessPoolExecutor | None = None
        if kind == "pool":
            self.pool = corral.Pool(2, t.set_channel, (q,), context=ctx, retries=2)
        else:
            self.ex = corral.ProcessPoolExecutor(2, ctx, t.set_channel, (q,), retries=2)

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        assert self.ex is not None
        return self.ex.submit(fn, *args)

    def statistics(self) -> corral.PoolStatistics:
        if self.pool is not None:
            return self.pool.statistics()
        assert self.ex is not None
        return self.ex.statistics()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
        if self.ex is not None:
            self.ex.shutdown(wait=True)


@pytest.mark.parametrize("kind", ["pool", "executor"])
def test_cancel_stops_a_running_submitted_task(
    ctx: corral.CorralContext, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "runs"
    q = corral.Queue()
    front = _Front(kind, ctx, q)
    fds: list[int] = []
    try:
        fut = front.submit(t.counted_block_with_grandchild, (1, str(path)))
        pid, item, grandchild = q.get(timeout=TIMEOUT)
        assert item == 1
        fds = pidfds(pid, grandchild)
        assert fut.running()

        assert fut.cancel() is True
        assert fut.cancelled()
        assert fut.done()
        with pytest.raises(CancelledError):
            fut.result(TIMEOUT)
        # The worker and its subtree are gone, not just forgotten.
        assert all_dead(fds, STOP_BOUND), "the cancelled task's worker tree is still alive"

        # A replacement worker runs later tasks; the cancelled task is not re-run.
        later = [front.submit(t.worker_pid, x) for x in range(20)]
        pids = {f.result(TIMEOUT) for f in later}
        assert pid not in pids
        stats = front.statistics()
        assert stats.workers_restarted == 1
        assert stats.workers_alive == 2
        assert stats.tasks_retried == 0
        assert runs(path)[1] == 1
    finally:
        front.close()
        close_all(fds)


def test_cancel_of_a_finished_or_pending_future(ctx: corral.CorralContext) -> None:
    q = corral.Queue()
    with corral.Pool(1, t.set_channel, (q,), context=ctx) as pool:
        done = pool.submit(t.double, 2)
        assert done.result(TIMEOUT) == 4
        assert done.cancel() is False
        blocker = pool.submit(t.block_on, 0, 0)
        q.get(timeout=TIMEOUT)
        queued = [pool.submit(t.double, x) for x in range(4)]
        # The last ones can't have been prefetched: they are pending, and cancel as usual.
        assert queued[-1].cancel() is True
        assert blocker.cancel() is True
        assert [f.result(TIMEOUT) for f in queued[:-1]] == [0, 2, 4]
        # (A killed worker is replaced asynchronously, by the scheduler.)
        assert wait_until(lambda: pool.statistics().workers_restarted == 1, TIMEOUT), (
            pool.statistics()
        )


def test_cancel_a_running_apply_async(ctx: corral.CorralContext) -> None:
    q = corral.Queue()
    with corral.Pool(2, t.set_channel, (q,), context=ctx) as pool:
        res = pool.apply_async(t.block_with_grandchild, (1, 1))
        pid, _, grandchild = q.get(timeout=TIMEOUT)
        fds = pidfds(pid, grandchild)
        try:
            t0 = time.monotonic()
            assert res.cancel() is True
            with pytest.raises(CancelledError):
                res.get(STOP_BOUND)
            assert time.monotonic() - t0 < 1.0
            assert res.ready()
            assert not res.successful()
            assert all_dead(fds, STOP_BOUND)
        finally:
            close_all(fds)
        assert res.cancel() is False  # it has finished, cancelled
        assert pool.apply(t.double, (21,)) == 42
        # (A killed worker is replaced asynchronously, by the scheduler.)
        assert wait_until(lambda: pool.statistics().workers_restarted == 1, TIMEOUT), (
            pool.statistics()
        )


def test_cancel_a_running_map_async(ctx: corral.CorralContext) -> None:
    q = corral.Queue()
    with corral.Pool(2, t.set_channel, (q,), context=ctx) as pool:
        res = pool.map_async(t.block_with_grandchild_always, range(6), chunksize=1)
        running = [q.get(timeout=TIMEOUT) for _ in range(2)]  # both workers busy
        fds = pidfds(*(pid for pid, _, _ in running), *(gc for _, _, gc in running))
        try:
            t0 = time.monotonic()
            assert res.cancel() is True
            with pytest.raises(CancelledError):
                res.get(STOP_BOUND)
            assert time.monotonic() - t0 < 1.0
            assert all_dead(fds, STOP_BOUND)
        finally:
            close_all(fds)
        # Nothing more of the cancelled map ran: the next task is the next to announce.
        assert pool.apply(t.pid_after_announce, (99,)) not in {pid for pid, _, _ in running}
        assert q.get(timeout=TIMEOUT)[1] == 99
        # (A killed worker is replaced asynchronously, by the scheduler.)
        assert wait_until(lambda: pool.statistics().workers_restarted == 2, TIMEOUT), (
            pool.statistics()
        )


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_cancel_a_running_imap(ctx: corral.CorralContext, method: str) -> None:
    q = corral.Queue()
    with corral.Pool(2, t.set_channel, (q,), context=ctx) as pool:
        it = getattr(pool, method)(t.block_with_grandchild_always, range(6), chunksize=1)
        outcome: list[BaseException] = []

        def consume() -> None:
            try:
                while True:
                    it.next(TIMEOUT)
            except BaseException as exc:
                outcome.append(exc)

        consumer = threading.Thread(target=consume)
        consumer.start()  # imap pulls its input as it is consumed
        try:
            running = [q.get(timeout=TIMEOUT) for _ in range(2)]
            fds = pidfds(*(pid for pid, _, _ in running), *(gc for _, _, gc in running))
            try:
                it.cancel()
                consumer.join(STOP_BOUND)
                assert not consumer.is_alive()
                assert len(outcome) == 1
                assert isinstance(outcome[0], CancelledError), outcome
                assert all_dead(fds, STOP_BOUND)
            finally:
                close_all(fds)
            assert pool.apply(t.pid_after_announce, (99,)) not in {p for p, _, _ in running}
            assert q.get(timeout=TIMEOUT)[1] == 99
        finally:
            pool.terminate()
            consumer.join(TIMEOUT)


# --- A timeout per call ----------------------------------------------------------------------


def _blocking_call(pool: corral.Pool, method: str, timeout: float | None) -> Any:
    """Run one task that blocks forever, through ``method``, with a per-call timeout."""
    fn = t.sleep_for
    if method == "map":
        return pool.map(fn, [t.FOREVER], task_timeout=timeout)
    if method == "starmap":
        return pool.starmap(fn, [(t.FOREVER,)], task_timeout=timeout)
    if method in ("imap", "imap_unordered"):
        it = getattr(pool, method)(fn, [t.FOREVER], task_timeout=timeout)
        return it.next(TIMEOUT)
    if method == "apply_async":
        return pool.apply_async(fn, (t.FOREVER,), task_timeout=timeout).get(TIMEOUT)
    raise AssertionError(method)


def _timed_out(pool: corral.Pool, method: str, timeout: float | None, expect: float) -> None:
    t0 = time.monotonic()
    with pytest.raises(corral.TaskTimeout) as info:
        _blocking_call(pool, method, timeout)
    took = time.monotonic() - t0
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == expect
    assert expect * 0.9 < took < expect + SLACK, f"stopped after {took:.2f} s"


@pytest.mark.parametrize("method", ["map", "imap", "imap_unordered", "starmap", "apply_async"])
def test_per_call_task_timeout(ctx: corral.CorralContext, method: str) -> None:
    with corral.Pool(2, context=ctx) as pool:
        warm(pool)
        _timed_out(pool, method, CALL_TIMEOUT, CALL_TIMEOUT)
        # The pool lives on, with no timeout for calls that don't ask for one.
        assert pool.map(t.sleep_for, [0.01, 0.01]) == [0.01, 0.01]
        # (A killed worker is replaced asynchronously, by the scheduler.)
        assert wait_until(lambda: pool.statistics().workers_restarted == 1, TIMEOUT), (
            pool.statistics()
        )


def test_corral_map_per_call_task_timeout(ctx: corral.CorralContext) -> None:
    warm_pids = set(corral.map(t.worker_pid, range(4), workers=2, context=ctx))
    assert warm_pids
    t0 = time.monotonic()
    with pytest.raises(corral.TaskTimeout) as info:
        list(corral.map(t.sleep_for, [t.FOREVER], workers=2, context=ctx, task_timeout=1.0))
    took = time.monotonic() - t0
    assert info.value.timeout == CALL_TIMEOUT
    assert CALL_TIMEOUT * 0.9 < took < CALL_TIMEOUT + SLACK, f"stopped after {took:.2f} s"
    # The kept pool goes on, with no timeout for the next call.
    assert list(corral.map(t.sleep_for, [0.01], workers=2, context=ctx)) == [0.01]


@pytest.mark.parametrize(
    ("pool_timeout", "call_timeout"), [(CALL_TIMEOUT, 30.0), (30.0, CALL_TIMEOUT)]
)
def test_the_tighter_timeout_wins(
    ctx: corral.CorralContext, pool_timeout: float, call_timeout: float
) -> None:
    with corral.Pool(2, context=ctx, task_timeout=pool_timeout) as pool:
        warm(pool)
        _timed_out(pool, "map", call_timeout, CALL_TIMEOUT)
        _timed_out(pool, "apply_async", call_timeout, CALL_TIMEOUT)


def test_with_options_submit_timeout_and_retries(ctx: corral.CorralContext, tmp_path: Path) -> None:
    with corral.Pool(2, context=ctx, task_timeout=30.0) as pool:
        warm(pool)
        view = pool.with_options(task_timeout=CALL_TIMEOUT, retries=1)
        assert view.submit(t.add, 1, 2).result(TIMEOUT) == 3

        # Timed out twice: one retry, then TaskTimeout.
        path = tmp_path / "timeout-runs"
        t0 = time.monotonic()
        fut = view.submit(t.counted, (1, 1, "timeout", str(path), None))
        exc = fut.exception(TIMEOUT)
        took = time.monotonic() - t0
        assert isinstance(exc, corral.TaskTimeout), exc
        assert exc.timeout == CALL_TIMEOUT
        assert runs(path) == {1: 2}
        assert 2 * CALL_TIMEOUT * 0.9 < took < 2 * CALL_TIMEOUT + 2 * SLACK

        # Crashes count the same way: retries=2 is three runs.
        path = tmp_path / "crash-runs"
        fut = pool.with_options(retries=2).submit(t.counted, (2, 2, "exit", str(path), None))
        crashed = fut.exception(TIMEOUT)
        assert isinstance(crashed, corral.WorkerCrashed), crashed
        assert crashed.attempts == 3
        assert runs(path) == {2: 3}
        # The pool's own options are untouched by its views.
        path = tmp_path / "pool-runs"
        fut = pool.submit(t.counted, (3, 3, "exit", str(path), None))
        assert isinstance(fut.exception(TIMEOUT), corral.WorkerCrashed)
        assert runs(path) == {3: 1}
        assert pool.statistics().tasks_retried == 3


# --- A stuck initializer, odd exceptions -------------------------------------------------------


@pytest.mark.parametrize("option", ["task_timeout", "initializer_timeout"])
def test_an_initializer_that_never_returns_fails_clearly(
    ctx: corral.CorralContext, option: str
) -> None:
    t0 = time.monotonic()
    options: dict[str, Any] = {option: 1.0}
    pool = corral.Pool(1, t.init_forever, context=ctx, **options)
    try:
        with pytest.raises(corral.CorralError, match="initializer"):
            pool.apply(t.double, (1,))
        assert time.monotonic() - t0 < 1.0 + SLACK
    finally:
        pool.terminate()
    pool.join(TIMEOUT)


def test_an_exception_that_cannot_be_described_is_not_a_crash(
    ctx: corral.CorralContext, tmp_path: Path
) -> None:
    path = tmp_path / "runs"
    with corral.Pool(2, context=ctx, retries=2) as pool:
        warm(pool)
        fut = pool.submit(t.raise_bad_str, (1, str(path)))
        exc = fut.exception(TIMEOUT)
        assert type(exc) is t.BadStrError
        assert not isinstance(exc, corral.WorkerCrashed)
        res = pool.apply_async(t.raise_bad_str, ((2, str(path)),))
        res.wait(TIMEOUT)
        assert not res.successful()
        assert type(res._value) is t.BadStrError
        stats = pool.statistics()
    assert runs(path) == {1: 1, 2: 1}
    assert stats.workers_restarted == 0
    assert stats.tasks_retried == 0


def test_an_exception_that_cannot_be_pickled_fails_its_task_once(
    ctx: corral.CorralContext, tmp_path: Path
) -> None:
    path = tmp_path / "runs"
    with corral.Pool(2, context=ctx, retries=2) as pool:
        warm(pool)
        exc = pool.submit(t.raise_unpicklable_counted, (1, str(path))).exception(TIMEOUT)
        assert isinstance(exc, corral.CorralError), exc
        assert not isinstance(exc, corral.WorkerCrashed)
        assert "UnpicklableError" in str(exc)
        stats = pool.statistics()
    assert runs(path) == {1: 1}
    assert stats.workers_restarted == 0
    assert stats.tasks_retried == 0


def test_system_exit_in_a_task_is_the_tasks_exception(ctx: corral.CorralContext) -> None:
    with corral.Pool(1, context=ctx, retries=1) as pool:
        warm(pool)
        with pytest.raises(SystemExit) as info:
            pool.apply(t.raise_system_exit, (3,))
        assert info.value.code == 3
        exc = pool.submit(t.raise_system_exit, 4).exception(TIMEOUT)
        assert type(exc) is SystemExit
        assert exc.code == 4
        assert pool.map(t.double, [1, 2]) == [2, 4]  # the same worker goes on
        stats = pool.statistics()
    assert stats.workers_restarted == 0
    assert stats.tasks_retried == 0


# --- Lambdas, with and without cloudpickle -------------------------------------------------------


def test_lambda_with_cloudpickle(ctx: corral.CorralContext) -> None:
    pytest.importorskip("cloudpickle")
    with corral.Pool(2, context=ctx) as pool:
        assert pool.map(lambda x: x + 1, [1, 2, 3]) == [2, 3, 4]
        assert pool.submit(lambda: 5).result(TIMEOUT) == 5


def _notes(exc: BaseException) -> str:
    return "\n".join([str(exc), *getattr(exc, "__notes__", [])])


def test_lambda_without_cloudpickle_names_the_extra(
    ctx: corral.CorralContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    hint = "pip install 'corral[pool]'"
    with corral.Pool(2, context=ctx) as pool:
        warm(pool)
        # The parent pickles every task: without cloudpickle there, lambdas can't go.
        monkeypatch.setitem(sys.modules, "cloudpickle", None)
        with pytest.raises(Exception) as info:  # noqa: PT011 - the type is pickle's
            pool.map(lambda x: x + 1, [1, 2, 3])
        assert hint in _notes(info.value), _notes(info.value)
        exc = pool.submit(lambda: 5).exception(TIMEOUT)
        assert exc is not None
        assert hint in _notes(exc), _notes(exc)
        with pytest.raises(Exception) as info:  # noqa: PT011
            pool.apply(lambda: 5)
        assert hint in _notes(info.value), _notes(info.value)
        assert pool.map(t.double, [1]) == [2]  # the pool is fine


# --- One long task holds up nothing else ---------------------------------------------------------


def _quick_task_beside_a_blocked_one(ctx: corral.CorralContext, how: str) -> object:
    """Block one of two workers, then run a trivial task: its result, or None if it
    did not come within IDLE_BOUND. (The queue stays in this frame, so that a failing
    assertion's traceback does not keep its memory alive past the test.)"""
    q = corral.Queue()
    with corral.Pool(2, t.set_channel, (q,), context=ctx) as pool:
        warm(pool)
        blocker = pool.apply_async(t.block_on, (0, 0))
        q.get(timeout=TIMEOUT)  # running; the other worker is idle
        if how == "apply_async":
            quick = pool.apply_async(t.double, (21,))
            quick.wait(IDLE_BOUND)
            outcome = quick.get(0) if quick.ready() else None
        else:
            fut = pool.submit(t.double, 21)
            done, _ = concurrent.futures.wait([fut], IDLE_BOUND)
            outcome = fut.result(0) if done else None
        assert not blocker.ready()
        return outcome


@pytest.mark.parametrize("how", ["apply_async", "submit"])
def test_a_task_never_waits_behind_a_running_one_while_a_worker_is_idle(
    ctx: corral.CorralContext, how: str
) -> None:
    outcome = _quick_task_beside_a_blocked_one(ctx, how)
    assert outcome == 42, "the quick task waited behind the blocked one"


# --- A task cancelled before it started never starts ------------------------------------------


def _cancel_behind_a_busy_task(ctx: corral.CorralContext, tmp_path: Path) -> tuple[bool, int]:
    """One worker, busy; a second task waits (perhaps prefetched to it) and is
    cancelled; then the first finishes. Returns (what cancel() said, how many times
    the second task ran). The first task's result is large, so that the worker is
    free to start the next task well before the parent has read it all."""
    path = tmp_path / "runs"
    release = tmp_path / "release"
    q = corral.Queue()
    with corral.Pool(1, t.set_channel, (q,), context=ctx) as pool:
        first = pool.submit(t.wait_for_release_big, str(release))
        q.get(timeout=TIMEOUT)  # the first task runs: the worker is busy
        second = pool.submit(t.counted, (2, -1, "ok", str(path), None))
        # Handed to the busy worker (prefetched) or not: either way it has not started.
        wait_until(second.running, IDLE_BOUND)
        cancelled = second.cancel()
        release.touch()
        assert len(first.result(TIMEOUT)) == 32 * 1024 * 1024
        assert pool.apply(t.double, (1,)) == 2  # whatever the worker held has run by now
        if not cancelled:
            assert second.result(TIMEOUT) == 4
    return cancelled, runs(path)[2]


def test_a_task_cancelled_before_it_started_never_runs(
    ctx: corral.CorralContext, tmp_path: Path
) -> None:
    cancelled, ran = _cancel_behind_a_busy_task(ctx, tmp_path)
    assert cancelled
    assert ran == 0, "the cancelled task ran"


TBLIB_SCENARIO = """
import sys
import distributed  # registers tblib's reducers for every exception class
import corral
from tests import pool_targets as t
with corral.Pool(1, context=sys.argv[1]) as pool:
    try:
        pool.apply(t.raise_system_exit, (3,))
    except SystemExit as exc:
        assert exc.code == 3, exc.code
    else:
        raise AssertionError("no SystemExit")
print("ok")
"""


def test_errors_keep_their_attributes_after_dask_is_imported(
    start_method: str, tmp_path: Path
) -> None:
    """dask.distributed replaces exception pickling (tblib), which loses ``.code``."""
    pytest.importorskip("distributed")
    import subprocess
    import sys

    from tests import leaks

    before = leaks.descendants()
    proc = subprocess.run(
        [sys.executable, "-c", TBLIB_SCENARIO, start_method],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    leaks.kill_and_reap(leaks.descendants() - before)  # its forkserver, a moment late
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("ok")
