"""corral.ProcessPoolExecutor and corral.map, on the pool's engine."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import signal
from pathlib import Path

import pytest

import corral
from corral._pool._engine import PREFETCH
from tests import pool_targets as t

TIMEOUT = 30.0


def test_executor_submit_map_shutdown(ctx: corral.CorralContext) -> None:
    with corral.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        assert ex.submit(t.add, 1, 2).result(TIMEOUT) == 3
        assert list(ex.map(t.add, range(5), range(5), timeout=TIMEOUT)) == [0, 2, 4, 6, 8]
        assert list(ex.map(t.double, range(10), chunksize=3)) == [x * 2 for x in range(10)]
        futures = [ex.submit(t.double, x) for x in range(20)]
        done, _ = concurrent.futures.wait(futures, TIMEOUT)
        assert sorted(f.result() for f in done) == [x * 2 for x in range(20)]
        it = ex.map(t.fail_if_odd, range(4))
        assert next(it) == 0
        with pytest.raises(ValueError, match="odd item 1"):
            next(it)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(t.double, 1)


def test_executor_map_timeout(ctx: corral.CorralContext) -> None:
    q = corral.Queue()
    with corral.ProcessPoolExecutor(1, ctx, t.set_channel, (q,)) as ex:
        it = ex.map(t.block_on, [0], [0], timeout=0.2)
        with pytest.raises(TimeoutError):
            next(it)
        ex._pool.terminate()


def test_executor_survives_a_killed_worker(ctx: corral.CorralContext) -> None:
    q = corral.Queue()
    with corral.ProcessPoolExecutor(2, ctx, t.set_channel, (q,)) as ex:
        victim = ex.submit(t.block_on, 1, 1)
        pid, _ = q.get(timeout=TIMEOUT)
        os.kill(pid, signal.SIGKILL)
        exc = victim.exception(TIMEOUT)
        assert isinstance(exc, corral.WorkerCrashed)
        assert isinstance(exc, concurrent.futures.process.BrokenProcessPool)
        assert ex.submit(t.double, 21).result(TIMEOUT) == 42  # not broken
        assert ex.statistics().workers_restarted == 1


def test_executor_cancel_futures_on_shutdown(ctx: corral.CorralContext) -> None:
    q = corral.Queue()
    ex = corral.ProcessPoolExecutor(1, ctx, t.set_channel, (q,))
    try:
        running = ex.submit(t.block_on, 0, 0)
        q.get(timeout=TIMEOUT)
        queued = [ex.submit(t.double, x) for x in range(5)]
        ex.shutdown(wait=False, cancel_futures=True)
        # All but what was already prefetched to the busy worker (as the stdlib's
        # call queue, those are running and can't be cancelled).
        cancelled = sum(f.cancelled() for f in queued)
        assert cancelled >= len(queued) - PREFETCH
        assert all(f.cancelled() for f in queued[PREFETCH:])
    finally:
        ex._pool.terminate()
    assert isinstance(running.exception(TIMEOUT), corral.CorralError)


def test_asyncio_run_in_executor(ctx: corral.CorralContext) -> None:
    async def main(ex: concurrent.futures.Executor) -> list[int]:
        loop = asyncio.get_running_loop()
        return list(
            await asyncio.gather(*(loop.run_in_executor(ex, t.double, x) for x in range(5)))
        )

    with corral.ProcessPoolExecutor(2, ctx) as ex:
        assert asyncio.run(main(ex)) == [0, 2, 4, 6, 8]


def test_corral_map(ctx: corral.CorralContext) -> None:
    assert list(corral.map(t.double, range(100), workers=2, context=ctx)) == [
        x * 2 for x in range(100)
    ]
    unordered = corral.map(t.double, range(100), workers=2, ordered=False, context=ctx)
    assert sorted(unordered) == [x * 2 for x in range(100)]
    # An infinite input, abandoned half-way: the pool is torn down on close().
    it = corral.map(t.double, itertools.count(), workers=2, context=ctx)
    assert [next(it) for _ in range(100)] == [x * 2 for x in range(100)]
    it.close()


def test_corral_map_retries_a_crash(ctx: corral.CorralContext, tmp_path: Path) -> None:
    items = [(x, 7, str(tmp_path / "m")) for x in range(50)]
    out = list(corral.map(t.die_on_item_once, items, workers=2, context=ctx, retries=1))
    assert out == [x * 2 for x in range(50)]


def test_executor_map_consumed_after_shutdown(ctx: corral.CorralContext) -> None:
    with corral.ProcessPoolExecutor(2, ctx) as ex:
        results = ex.map(t.double, iter(range(20_000)))
    assert list(results) == [x * 2 for x in range(20_000)]
