"""Large buffers go through shared-memory segments that are reused, never shared wrongly.

Arguments and results of at least ``OOB_MIN_BYTES`` travel in segments that their
sender keeps and reuses once the receiver has dropped what it built on them
(``_pool/_segments.py``). These tests pin what reuse must never break: a result the
caller still holds never changes, a worker's changes to its argument never reach the
caller, results outlive the pool and a dead worker, and segments really are reused.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from typing import Any

import pytest

import corral
from corral._pool import OOB_MIN_BYTES, _segments
from tests import pool_targets as t

np = pytest.importorskip("numpy")

N = OOB_MIN_BYTES // 8 * 2  # float64s: 2 MiB, well out of band
TIMEOUT = 30.0


def test_a_held_result_never_changes_when_segments_are_reused(
    ctx: corral.CorralContext,
) -> None:
    with corral.Pool(2, context=ctx) as pool:
        held = pool.map(t.filled, [(N, 1.0), (N, 2.0)], chunksize=1)
        for round_ in range(3):  # more results of the same size: reuse, if anything
            later = pool.map(t.filled, [(N, 10.0 + round_)] * 4, chunksize=1)
            assert all(float(a.min()) == float(a.max()) == 10.0 + round_ for a in later)
            del later
            gc.collect()
        assert float(held[0].min()) == float(held[0].max()) == 1.0
        assert float(held[1].min()) == float(held[1].max()) == 2.0


def test_segments_are_reused_across_calls(ctx: corral.CorralContext) -> None:
    data = [np.full(N, float(i)) for i in range(4)]
    with corral.Pool(2, context=ctx) as pool:
        segments = pool._engine.segments  # the parent's, for arguments
        for _ in range(2):  # let every worker see the sizes once
            out = pool.map(t.add_one, data, chunksize=1)
        del out
        gc.collect()
        made = segments.created
        for i in range(5):
            out = pool.map(t.add_one, data, chunksize=1)
            assert [float(a[0]) for a in out] == [1.0 + j for j in range(4)], i
            del out
            gc.collect()
        # Made afresh, 20 would be new. A worker frees an argument's segment just
        # after the commit of its result, so now and then the next chunk is sent
        # before that arrives, and takes one more.
        assert segments.created - made <= len(data), "argument segments were made afresh"
        assert segments.idle_bytes > 0


def test_a_worker_changing_its_argument_leaves_the_callers_alone(
    ctx: corral.CorralContext,
) -> None:
    data = np.zeros(N)
    with corral.Pool(1, context=ctx) as pool:
        out = [pool.apply(t.bump_in_place, (data,)) for _ in range(3)]
    assert float(data.max()) == 0.0
    assert all(float(a.min()) == 1.0 for a in out)


def test_results_outlive_the_pool_and_stay_writable(ctx: corral.CorralContext) -> None:
    with corral.Pool(2, context=ctx) as pool:
        out = pool.map(t.filled, [(N, 3.0)] * 3, chunksize=1)
    assert _pool_buffer_fds(os.getpid()) == 0  # held results cost no fd (the stdlib's don't)
    out[0][:] = 7.0  # the caller's to change, now that the workers are gone
    assert float(out[0].min()) == 7.0
    assert float(out[1].min()) == float(out[2].max()) == 3.0


def test_a_dead_workers_segments_come_back(ctx: corral.CorralContext) -> None:
    """A worker killed while holding an argument's segment: the parent reuses it."""
    with corral.Pool(1, context=ctx, retries=0) as pool:
        pid = pool.apply(os.getpid)
        first = pool.apply_async(t.add_one, (np.zeros(N),))
        assert float(first.get(60)[0]) == 1.0
        segments = pool._engine.segments
        killed = pool.apply_async(_kill_self_with, (np.zeros(N), signal.SIGKILL))
        with pytest.raises(corral.WorkerCrashed):
            killed.get(60)
        assert pool.apply(os.getpid) != pid
        assert segments.lent() == 0  # what the dead worker held is back
        assert float(pool.apply(t.add_one, (np.zeros(N),))[0]) == 1.0


def _kill_self_with(a: Any, signum: int) -> None:
    os.kill(os.getpid(), signum)


def _pool_buffer_fds(pid: int) -> int:
    """How many of ``pid``'s fds are pool buffer segments."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        count += "corral-pool-buffers" in target
    return count


def _within(seconds: float, condition: Any) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)  # polling a condition, with a deadline
    return True


def test_idle_segments_are_given_back(
    ctx: corral.CorralContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle shared memory goes back to the system, in the parent and in the workers.

    (The workers see the shorter idle time under fork only, where they inherit it.)
    """
    monkeypatch.setattr(_segments, "IDLE_SECONDS", 0.2)
    with corral.Pool(1, context=ctx) as pool:
        pid = pool.apply(os.getpid)
        out = pool.map(t.add_one, [np.zeros(N), np.ones(N)], chunksize=1)
        assert float(out[1][0]) == 2.0
        segments = pool._engine.segments
        assert _within(TIMEOUT, lambda: segments.lent() == 0)  # the worker freed them
        assert _within(TIMEOUT, lambda: segments.idle_bytes == 0)  # and they expired
        # (closed just after they leave the cache) the results hold mappings, no fds
        assert _within(TIMEOUT, lambda: _pool_buffer_fds(os.getpid()) == 0)
        held = _pool_buffer_fds(pid)
        assert held >= 1  # the worker's segments, lent for the results we hold
        del out
        gc.collect()
        if ctx.get_start_method() == "fork":
            assert _within(TIMEOUT, lambda: _pool_buffer_fds(pid) == 0)
        assert pool.apply(os.getpid) == pid  # the same worker, still fine


def test_a_dropped_result_frees_its_segment_without_the_garbage_collector(
    ctx: corral.CorralContext,
) -> None:
    """No reference cycle holds a result: dropping it is enough for its worker to reuse
    its segment, so a loop of maps makes no new segments once warm."""
    data = [np.full(N, 1.0), np.full(N, 2.0)]
    with corral.Pool(1, context=ctx) as pool:
        pid = pool.apply(os.getpid)
        gc.disable()
        try:
            for _ in range(3):  # warm: the worker has made what a call needs
                out = pool.map(t.add_one, data, chunksize=1)
                del out
            warm = _pool_buffer_fds(pid)
            for i in range(5):
                out = pool.map(t.add_one, data, chunksize=1)
                assert [float(a[0]) for a in out] == [2.0, 3.0], i
                del out
            assert _pool_buffer_fds(pid) == warm
        finally:
            gc.enable()
