"""corral.Pool as a drop-in for multiprocessing.pool.Pool (issue 12), under every start
method: what the stdlib's users and CPython's suite rely on, and where corral differs
on purpose (an input that raises: corral raises at its exact position).
"""

from __future__ import annotations

import gc
import multiprocessing.pool
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest

import corral
from tests import dropin_targets as t

TIMEOUT = 30.0


def test_a_running_pool_collected_unclosed_warns(ctx: corral.CorralContext) -> None:
    pools = [corral.Pool(1, context=ctx)]
    assert pools[0].apply(t.mul, (6, 7)) == 42
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        _drop(pools)


def _drop(holder: list[Any]) -> None:
    holder.clear()
    gc.collect()


def _drain(it: Any) -> tuple[list[Any], BaseException | None]:
    """Everything ``it`` yields, then what it raised (None at its end)."""
    got: list[Any] = []
    try:
        while True:
            got.append(it.next(TIMEOUT))
    except StopIteration:
        return got, None
    except Exception as exc:
        return got, exc


@pytest.mark.parametrize("end", ["close", "terminate", "with"])
def test_a_closed_or_terminated_pool_does_not_warn(ctx: corral.CorralContext, end: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        if end == "with":
            with corral.Pool(1, context=ctx) as pool:
                pool.apply(t.mul, (1, 2))
        else:
            pool = corral.Pool(1, context=ctx)
            getattr(pool, end)()
            pool.join(TIMEOUT)
        assert pool._state in (multiprocessing.pool.CLOSE, multiprocessing.pool.TERMINATE)
        del pool
        gc.collect()  # a warning would raise here


def test_an_executor_collected_unclosed_does_not_warn(ctx: corral.CorralContext) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        ex = corral.ProcessPoolExecutor(1, mp_context=ctx)
        thread = ex._executor_manager_thread
        assert ex.submit(t.mul, 2, 3).result(TIMEOUT) == 6
        del ex
        gc.collect()
    thread.join(TIMEOUT)
    assert not thread.is_alive()


def test_private_views_of_the_workers(ctx: corral.CorralContext) -> None:
    with corral.Pool(3, context=ctx) as pool:
        assert len(pool._pool) == 3
        assert all(p.is_alive() for p in pool._pool)
    with corral.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        pids = {ex.submit(t.getpid).result(TIMEOUT) for _ in range(4)}
        assert pids <= set(ex._processes)
        # Under fork every worker starts at once; else one, reused (as the stdlib's).
        assert len(ex._processes) == (2 if ctx.get_start_method() == "fork" else 1)


def test_executor_workers_start_on_demand_and_idle_ones_are_reused(
    ctx: corral.CorralContext, tmp_path: Path
) -> None:
    """As the stdlib's executor: under spawn and forkserver a task starts a worker only
    when no idle one can take it, up to max_workers; under fork all start at once."""
    on_demand = ctx.get_start_method() != "fork"
    gate = str(tmp_path / "gate")
    with corral.ProcessPoolExecutor(4, mp_context=ctx) as ex:
        assert len(ex._processes) == (0 if on_demand else 4)
        for x in range(3):
            assert ex.submit(t.identity, x).result(TIMEOUT) == x
        assert len(ex._processes) == (1 if on_demand else 4)  # one idle worker, reused
        blocked = [ex.submit(t.wait_for_path, gate, TIMEOUT) for _ in range(3)]
        assert len(ex._processes) == (3 if on_demand else 4)  # started by the submits
        open(gate, "w").close()
        assert all(f.result(TIMEOUT) for f in blocked)
        assert len(ex._processes) <= 4
        assert list(ex.map(abs, range(-8, 0))) == list(range(8, 0, -1))


class _Stall:
    """An argument whose pickling (in the pool's scheduler thread, as the task is
    sent to a worker) says so and waits for the test; it arrives as 0."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __reduce__(self) -> tuple[Any, ...]:
        self.entered.set()
        self.release.wait(TIMEOUT)
        return (int, ())


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_task_being_sent_to_the_idle_worker_keeps_it_from_the_next_submit(
    method: str, tmp_path: Path
) -> None:
    """On demand, a submit starts a worker unless an idle one can take its task. The
    one idle worker, while a task is being pickled and sent to it, can't: the next
    task gets a worker of its own and finishes while the first still runs (it used
    to wait behind it, the worker seen idle and the task being sent seen nowhere)."""
    ctx = corral.get_context(method)
    gate = str(tmp_path / "gate")
    stall = _Stall()
    with corral.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert ex.submit(t.mul, 6, 7).result(TIMEOUT) == 42  # one worker, idle again
        first = ex.submit(t.wait_for_path_carrying, gate, TIMEOUT, stall)
        try:
            assert stall.entered.wait(TIMEOUT)  # being sent to the idle worker
            second = ex.submit(t.mul, 2, 3)
        finally:
            stall.release.set()
        assert second.result(TIMEOUT) == 6
        assert not first.done()
        open(gate, "w").close()
        assert first.result(TIMEOUT) is True
        assert len(ex._processes) == 2


@pytest.mark.parametrize("chunksize", [None, 1, 2, 4])
@pytest.mark.parametrize("at", [0, 3, 7])
def test_an_input_that_raises_raises_at_its_position(
    ctx: corral.CorralContext, chunksize: int | None, at: int
) -> None:
    """Every item read before the failure is delivered, then the input's exception.

    (The stdlib's imap with a chunksize drops the items of the chunk it was
    building: a deliberate difference, listed in the README.)"""
    with corral.Pool(2, context=ctx) as pool:
        got, exc = _drain(pool.imap(t.identity, t.raise_at(20, at), chunksize))
        assert got == list(range(at))
        assert isinstance(exc, KeyError)
        assert exc.args == (at,)
        got, exc = _drain(pool.imap_unordered(t.identity, t.raise_at(20, at), chunksize))
        assert sorted(got) == list(range(at))
        assert isinstance(exc, KeyError)
        with pytest.raises(KeyError, match=str(at)):
            pool.map(t.identity, t.raise_at(20, at), chunksize)
        assert pool.apply(t.mul, (6, 7)) == 42  # the pool goes on
