"""corral.Pool: the stdlib API, under every start method, plus its fault guarantees."""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
import pickle
import select
import signal
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

import corral
from corral._core._native import speedups
from corral._pool import _jobs
from tests import pool_targets as t

from .leaks import wait_until

TIMEOUT = 30.0


def make_pool(ctx: corral.CorralContext, n: int = 2, **kw: Any) -> corral.Pool:
    return corral.Pool(n, context=ctx, **kw)


def channel_pool(
    ctx: corral.CorralContext, n: int = 2, **kw: Any
) -> tuple[corral.Pool, corral.Queue]:
    q = corral.Queue()
    return corral.Pool(n, t.set_channel, (q,), context=ctx, **kw), q


def collect(it: Iterator[Any]) -> list[Any]:
    """Every item of a pool iterator: a value, or the exception raised at that position."""
    out: list[Any] = []
    while True:
        try:
            out.append(it.next(TIMEOUT))  # type: ignore[attr-defined]
        except StopIteration:
            return out
        except Exception as exc:
            out.append(exc)


def pidfd_dead(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


# --- The stdlib API ---------------------------------------------------------------------


def test_map_apply_starmap(ctx: corral.CorralContext) -> None:
    with make_pool(ctx) as pool:
        assert pool.map(t.double, range(100)) == [x * 2 for x in range(100)]
        assert pool.map(t.double, []) == []
        assert pool.map(t.double, range(10), chunksize=3) == [x * 2 for x in range(10)]
        assert pool.apply(t.add, (1, 2)) == 3
        assert pool.apply(t.kwargs_echo, (1,), {"k": 2}) == ((1,), {"k": 2})
        assert pool.starmap(t.add, [(1, 2), (3, 4)]) == [3, 7]
        assert pool.starmap_async(t.add, [(1, 1)]).get(TIMEOUT) == [2]
        assert list(pool.imap(t.double, range(50))) == [x * 2 for x in range(50)]
        assert sorted(pool.imap_unordered(t.double, range(50))) == [x * 2 for x in range(50)]
        assert list(pool.imap(t.double, range(7), chunksize=2)) == [x * 2 for x in range(7)]


def test_map_reads_the_callers_list_and_leaves_it_as_it_was() -> None:
    # The list is used as it is, not copied; handing items out must not trim it.
    items = list(range(30_000))
    with corral.Pool(2) as pool:
        assert pool.map(t.double, items) == [x * 2 for x in items]
        assert pool.starmap(t.add, [(x, 1) for x in items[:5000]]) == items[1:5001]
    assert items == list(range(30_000))


def test_a_function_s_chunk_size_is_remembered_for_its_next_call() -> None:
    with corral.Pool(2) as pool:
        engine = pool._engine
        assert engine.learned_chunk(t.double) == 1
        pool.map(t.double, range(30_000))
        grown = engine.learned_chunk(t.double)
        assert grown > 1  # trivial items: the chunks grew
        job = corral._pool._jobs.MapJob(
            engine,
            t.double,
            0,
            [1],
            None,
            corral._pool._jobs.MapResult(None, None),
            False,
            None,
            0,
            None,
        )
        assert job.chunk == max(1, grown // corral._pool._jobs.CHUNK_GROWTH)
        assert engine.learned_chunk(abs) == 1  # a builtin: not remembered, no error
        assert pool.map(abs, range(-3, 0)) == [3, 2, 1]
        assert engine.learned_chunk(t.add) == 1  # per function


def test_async_result_semantics(ctx: corral.CorralContext) -> None:
    got: list[Any] = []
    errors: list[BaseException] = []
    pool, q = channel_pool(ctx, 1)
    with pool:
        blocked = pool.apply_async(t.block_on, (1, 1))
        assert q.get(timeout=TIMEOUT)[1] == 1
        assert not blocked.ready()
        with pytest.raises(ValueError, match="not ready"):
            blocked.successful()
        with pytest.raises(multiprocessing.TimeoutError):
            blocked.get(0.01)
        pool.terminate()
    with make_pool(ctx, 1) as pool:
        ok = pool.map_async(t.double, [1, 2], callback=got.append)
        bad = pool.apply_async(t.fail_on, (1, 1), error_callback=errors.append)
        assert ok.get(TIMEOUT) == [2, 4]
        bad.wait(TIMEOUT)
        assert bad.ready()
        assert not bad.successful()
        with pytest.raises(ValueError, match="bad item 1"):
            bad.get(0)
        assert ok.successful()
    assert got == [[2, 4]]
    assert isinstance(errors[0], ValueError)


def test_map_raises_first_error(ctx: corral.CorralContext) -> None:
    with make_pool(ctx) as pool, pytest.raises(ValueError, match="odd item"):
        pool.map(t.fail_if_odd, range(10))


def test_submit_returns_a_future(ctx: corral.CorralContext) -> None:
    with make_pool(ctx) as pool:
        fut = pool.submit(t.kwargs_echo, 1, 2, a=3)
        assert isinstance(fut, Future)
        assert fut.result(TIMEOUT) == ((1, 2), {"a": 3})
        bad = pool.submit(t.fail_on, 2, 2)
        assert isinstance(bad.exception(TIMEOUT), ValueError)


def test_close_join_and_state_errors(ctx: corral.CorralContext) -> None:
    pool = make_pool(ctx)
    res = pool.map_async(t.double, range(20))
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match="not running"):
        pool.apply_async(t.double, (1,))
    pool.join(TIMEOUT)
    assert res.get(0) == [x * 2 for x in range(20)]  # close() lets submitted work finish
    with pytest.raises(NotImplementedError):
        pickle.dumps(pool)


def test_initializer_runs_in_every_worker(ctx: corral.CorralContext) -> None:
    with corral.Pool(2, t.init_set, (42,), context=ctx) as pool:
        assert set(pool.map(t.get_initialized, range(10))) == {42}


def test_failing_initializer_breaks_the_pool_clearly(ctx: corral.CorralContext) -> None:
    # Raised by the submission if the worker already failed, else by the result.
    with (
        corral.Pool(1, t.init_fail, context=ctx) as pool,
        pytest.raises(corral.CorralError, match="initializer refuses"),
    ):
        pool.map_async(t.double, range(3)).get(TIMEOUT)


# --- Errors keep their story --------------------------------------------------------------


def test_task_exception_has_remote_traceback(ctx: corral.CorralContext) -> None:
    with make_pool(ctx) as pool:
        with pytest.raises(ValueError, match="bad item 3") as info:
            pool.apply(t.fail_on, (3, 3))
        cause = info.value.__cause__
        assert isinstance(cause, corral.RemoteTraceback)
        assert "fail_on" in str(cause)


def test_unpicklable_argument_result_exception_fail_alone(ctx: corral.CorralContext) -> None:
    with make_pool(ctx) as pool:
        # argument: the whole chunk can't be pickled; only the culprit fails
        items: list[Any] = [0, 1, t.BadUnpickle(), 3]
        out = collect(pool.imap(t.identity, items))
        assert out[0] == 0 and out[1] == 1 and out[3] == 3  # noqa: PT018
        # the worker's own error, with its type kept and the task named
        assert isinstance(out[2], RuntimeError)
        assert "refusing to be unpickled" in str(out[2])
        assert any("while unpickling task 2" in n for n in out[2].__notes__)
        import threading

        out = collect(pool.imap(t.identity, [0, threading.Lock(), 2]))
        assert out[0] == 0 and out[2] == 2  # noqa: PT018
        assert isinstance(out[1], TypeError)
        # result
        out = collect(pool.imap(t.return_lock, range(3)))
        assert out[0] == 0 and out[2] == 2  # noqa: PT018
        assert isinstance(out[1], TypeError)  # what pickling raised, type kept
        assert any("while pickling the task's result" in n for n in out[1].__notes__)
        # exception that does not unpickle
        out = collect(pool.imap(t.raise_unpicklable, range(3)))
        assert out[0] == 0 and out[2] == 2  # noqa: PT018
        assert isinstance(out[1], corral.CorralError)
        assert "UnpicklableError" in str(out[1])
        assert isinstance(out[1].__cause__, corral.RemoteTraceback)
        # and the pool still works
        assert pool.apply(t.double, (5,)) == 10


def test_lambdas_and_closures(ctx: corral.CorralContext) -> None:
    offset = 10
    with make_pool(ctx) as pool:
        assert pool.map(lambda x: x + offset, range(5)) == [10, 11, 12, 13, 14]
        assert pool.submit(lambda: offset * 2).result(TIMEOUT) == 20


def test_pool_inside_a_worker(ctx: corral.CorralContext, start_method: str) -> None:
    with make_pool(ctx) as pool:
        assert pool.apply(t.nested_pool, (start_method, 5)) == [0, 2, 4, 6, 8]


# --- A crash costs one task, not the pool ------------------------------------------------


def _die_on_items(n: int, bad: int, how: str) -> list[tuple[int, int, str]]:
    return [(x, bad, how) for x in range(n)]


@pytest.mark.parametrize("how", ["exit", "sigkill", "segfault"])
def test_self_inflicted_crash_fails_only_its_task(ctx: corral.CorralContext, how: str) -> None:
    n, bad = 200, 57
    t0 = time.monotonic()
    with make_pool(ctx) as pool:
        res = [pool.apply_async(t.die_on, item) for item in _die_on_items(n, bad, how)]
        mapped = collect(pool.imap(t.die_on_item, _die_on_items(n, bad, how)))
        outcomes: list[Any] = []
        for r in res:
            r.wait(TIMEOUT)
            outcomes.append(r.get(0) if r.successful() else r._value)
        stats = pool.statistics()
    took = time.monotonic() - t0
    # apply_async: one task per chunk, so every other task is delivered.
    assert [r for i, r in enumerate(outcomes) if i != bad] == [x * 2 for x in range(n) if x != bad]
    # imap: items after the crash never started, and are run again; items before
    # it finished, and are delivered, or (those that finished less than a commit
    # window before the crash) reported lost, never run again.
    for i, r in enumerate(mapped):
        if i == bad:
            continue
        if i > bad or not isinstance(r, corral.WorkerCrashed):
            assert r == i * 2, (i, r)
        else:
            assert "its result was lost" in str(r), (i, r)
    for results in (outcomes, mapped):
        err = results[bad]
        assert isinstance(err, corral.WorkerCrashed)
        assert isinstance(err, BrokenProcessPool)
        assert err.pid is not None
        if how == "exit":
            assert err.exitcode == 3
        else:
            assert err.signal == (signal.SIGKILL if how == "sigkill" else signal.SIGSEGV)
        assert f"{bad}" in str(err)
    assert stats.workers_restarted >= 2
    assert took < TIMEOUT


def test_killed_worker_task_is_retried(ctx: corral.CorralContext, tmp_path: Path) -> None:
    """SIGKILL a worker mid-task from outside: the task is retried, nothing is lost."""
    n, bad = 300, 123
    marker = str(tmp_path / "ran-once")
    pool, q = channel_pool(ctx, retries=1)
    with pool:
        res = pool.starmap_async(t.block_once, [(x, bad, marker) for x in range(n)])
        pid, item = q.get(timeout=TIMEOUT)
        assert item == bad
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        assert res.get(TIMEOUT) == [x * 2 for x in range(n)]
        took = time.monotonic() - killed_at
        stats = pool.statistics()
    assert stats.workers_restarted == 1
    assert stats.tasks_retried <= 1  # 0 when it shared a chunk: split and re-run, not charged
    assert took < 10


def test_killed_worker_without_retries_raises_worker_crashed(ctx: corral.CorralContext) -> None:
    pool, q = channel_pool(ctx)
    with pool:
        futures = [pool.submit(t.block_on, x, 4) for x in range(10)]
        pid, _ = q.get(timeout=TIMEOUT)
        os.kill(pid, signal.SIGKILL)
        exc = futures[4].exception(TIMEOUT)
        assert isinstance(exc, corral.WorkerCrashed)
        assert exc.pid == pid
        assert exc.signal == signal.SIGKILL
        assert [f.result(TIMEOUT) for i, f in enumerate(futures) if i != 4] == [
            x * 2 for x in range(10) if x != 4
        ]
        assert pool.apply(t.double, (1,)) == 2


def test_crash_is_reported_after_retries(ctx: corral.CorralContext) -> None:
    with make_pool(ctx, retries=2) as pool:
        fut = pool.submit(t.die_on, 1, 1, "exit")
        exc = fut.exception(TIMEOUT)
        assert isinstance(exc, corral.WorkerCrashed)
        assert exc.attempts == 3
        assert pool.statistics().tasks_retried == 2


# --- Timeouts stop the task ----------------------------------------------------------------


def test_task_timeout_kills_the_worker_tree(ctx: corral.CorralContext) -> None:
    pool, q = channel_pool(ctx, task_timeout=1.0)
    with pool:
        res = [pool.apply_async(t.block_with_grandchild, (x, 2)) for x in range(6)]
        pid, _, grandchild = q.get(timeout=TIMEOUT)
        fds = [os.pidfd_open(pid), os.pidfd_open(grandchild)]
        try:
            t0 = time.monotonic()
            res[2].wait(TIMEOUT)
            took = time.monotonic() - t0
            with pytest.raises(corral.TaskTimeout) as info:
                res[2].get(0)
            assert isinstance(info.value, TimeoutError)
            assert took < 3
            assert all(pidfd_dead(fd, 5) for fd in fds)
        finally:
            for fd in fds:
                os.close(fd)
        assert [r.get(TIMEOUT) for i, r in enumerate(res) if i != 2] == [0, 2, 6, 8, 10]
        assert pool.apply(t.double, (4,)) == 8


def test_timed_out_task_is_retried(ctx: corral.CorralContext, tmp_path: Path) -> None:
    pool, q = channel_pool(ctx, task_timeout=0.5, retries=1)
    with pool:
        res = pool.apply_async(t.block_once, (1, 1, str(tmp_path / "m")))
        q.get(timeout=TIMEOUT)
        assert res.get(TIMEOUT) == 2


# --- Bounded memory ------------------------------------------------------------------------


def test_imap_pulls_lazily_from_an_infinite_generator(ctx: corral.CorralContext) -> None:
    pulled = 0

    def counting() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    with make_pool(ctx) as pool:
        it = pool.imap(t.double, counting())
        got = [next(it) for _ in range(5000)]
        assert got == [x * 2 for x in range(5000)]
        bound = 5000 + 2 * 4 * 4096  # consumed + the window at its largest
        assert pulled <= bound
        unordered = pool.imap_unordered(t.double, itertools.count())
        assert len([next(unordered) for _ in range(1000)]) == 1000


def test_imap_input_error_is_raised_in_place(ctx: corral.CorralContext) -> None:
    def broken() -> Iterator[int]:
        yield 1
        yield 2
        raise RuntimeError("input broke")

    with make_pool(ctx) as pool:
        it = pool.imap(t.double, broken())
        assert next(it) == 2
        assert next(it) == 4
        with pytest.raises(RuntimeError, match="input broke"):
            next(it)


# --- Lifecycle ---------------------------------------------------------------------------


def test_maxtasksperchild_recycles_workers(ctx: corral.CorralContext) -> None:
    with corral.Pool(1, maxtasksperchild=2, context=ctx) as pool:
        pids = pool.map(t.worker_pid, range(6))
        assert len(set(pids)) == 3
        assert [pids.count(p) for p in dict.fromkeys(pids)] == [2, 2, 2]


def test_max_memory_per_child_recycles_after_the_task(ctx: corral.CorralContext) -> None:
    with make_pool(ctx, 1, max_memory_per_child=30 * 1024 * 1024) as pool:
        first = pool.apply(t.rss_hog, (0,))
        second = pool.apply(t.worker_pid, (0,))
        assert first != second
        assert pool.statistics().workers_restarted >= 1


def test_events_hook(ctx: corral.CorralContext) -> None:
    events: list[tuple[str, int]] = []
    with make_pool(ctx, on_event=lambda kind, n: events.append((kind, n))) as pool:
        pool.map(t.double, range(100))
    assert sum(n for k, n in events if k == "submitted") == 100
    assert sum(n for k, n in events if k == "completed") == 100


def test_terminate_fails_unfinished_results(ctx: corral.CorralContext) -> None:
    pool, q = channel_pool(ctx, 1)
    res = pool.apply_async(t.block_on, (0, 0))
    q.get(timeout=TIMEOUT)
    pool.terminate()
    pool.join(TIMEOUT)
    with pytest.raises(corral.CorralError, match="terminated"):
        res.get(TIMEOUT)


def test_a_scheduler_failing_while_it_sends_a_task_fails_that_task(
    ctx: corral.CorralContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the scheduler thread fails every caller and hangs none: the task it
    was sending when it failed too (taken from its job, in no worker's list yet)."""
    from corral._pool import _wire

    send = _wire.Channel.send
    failed: list[bool] = []

    def fail_once(self: Any, frame: Any) -> Any:
        if not failed:
            failed.append(True)
            raise RuntimeError("a scheduler bug, made by the test")
        return send(self, frame)

    with corral.Pool(1, context=ctx) as pool:
        assert pool.apply(t.double, (1,)) == 2  # the worker is up and idle
        monkeypatch.setattr(_wire.Channel, "send", fail_once)
        res = pool.apply_async(t.double, (2,))
        with pytest.raises(corral.CorralError):  # (a hang: multiprocessing's TimeoutError)
            res.get(TIMEOUT)
    assert failed


def test_all_names_exported() -> None:
    for name in ("Pool", "WorkerCrashed", "TaskTimeout", "AsyncResult", "PoolStatistics"):
        assert name in corral.__all__
        assert getattr(corral, name).__module__ == "corral"
    for exc in (corral.WorkerCrashed(-9, 12, "task 3 of f", 2), corral.TaskTimeout(1.5, "task 1")):
        back = pickle.loads(pickle.dumps(exc))
        assert str(back) == str(exc)
        assert isinstance(back, corral.CorralError)


def test_workers_are_named_in_ps(ctx: corral.CorralContext) -> None:
    pytest.importorskip("setproctitle")
    with make_pool(ctx, 2) as pool:
        pids = set(pool.map(t.worker_pid, range(50), chunksize=1))
        for pid in pids:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert f.read().split(b"\0")[0].decode().startswith("corral worker ")


def test_progress_bar_only_when_forced_off_a_terminal(
    ctx: corral.CorralContext, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tqdm")
    with make_pool(ctx, 1, progress=True) as pool:
        pool.map(t.double, range(10))
    assert capsys.readouterr().err == ""  # stderr is not a terminal here
    with make_pool(ctx, 1, progress="force") as pool:
        pool.map(t.double, range(10))
    assert "10/10" in capsys.readouterr().err


class _Sized:
    """A sized input that is neither a list nor a tuple (as a range is)."""

    def __init__(self, items: list[Any]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)


@pytest.mark.parametrize("kind", [list, tuple, _Sized])
def test_imap_of_a_sized_input_runs_before_it_is_iterated(
    ctx: corral.CorralContext, tmp_path: Path, kind: Any
) -> None:
    """As the stdlib's imap: the items run while the caller does something else."""
    path = str(tmp_path / "ran")
    calls = kind([(x, -1, "", path, None) for x in range(20)])
    with make_pool(ctx) as pool:
        it = pool.imap(t.counted, calls)
        assert wait_until(lambda: _lines(path) == 20, TIMEOUT)  # none asked for yet
        assert list(it) == [x * 2 for x in range(20)]


def _lines(path: str) -> int:
    try:
        return len(Path(path).read_text().splitlines())
    except FileNotFoundError:
        return 0


def test_close_join_completes_an_unconsumed_imap_of_a_sized_input(
    ctx: corral.CorralContext,
) -> None:
    """As with the stdlib's eager imap: close()+join() finish it; iterate afterwards."""
    pool = make_pool(ctx)
    it = pool.imap(t.double, range(50_000))
    first = next(it)
    pool.close()
    pool.join(TIMEOUT)
    assert [first, *it] == [x * 2 for x in range(50_000)]


def test_close_stops_pulling_from_a_generator(ctx: corral.CorralContext) -> None:
    """An endless generator, abandoned or not, can't hold up close()+join()."""
    pulled = itertools.count()
    pool = make_pool(ctx)
    it = pool.imap(t.double, (next(pulled) for _ in itertools.count()))
    first = [next(it) for _ in range(10)]
    t0 = time.monotonic()
    pool.close()
    pool.join(TIMEOUT)
    assert time.monotonic() - t0 < TIMEOUT / 2
    assert first == [x * 2 for x in range(10)]
    rest: list[int] = []
    with pytest.raises(corral.CorralError, match="closed before this imap had read"):
        rest.extend(it)
    # What was read before the close was run, in order; nothing more was read.
    assert rest == [x * 2 for x in range(10, 10 + len(rest))]
    assert next(pulled) == 10 + len(rest)


def test_large_arrays_travel_out_of_band(ctx: corral.CorralContext) -> None:
    np = pytest.importorskip("numpy")
    from corral._pool import OOB_MIN_BYTES

    arrays = [np.full(OOB_MIN_BYTES // 8 * 3, float(i)) for i in range(4)]
    with make_pool(ctx) as pool:
        out = pool.map(t.add_one, arrays)
        assert [float(a[0]) for a in out] == [1.0, 2.0, 3.0, 4.0]
        assert all(a.shape == arrays[0].shape and a.flags.writeable for a in out)
        out[0][0] = 42.0  # the parent's copy-on-write mapping is its own
        mixed = pool.map(t.add_one, [arrays[0], 1, np.arange(3)])
        assert mixed[1] == 2
        assert list(mixed[2]) == [1, 2, 3]


def test_a_raw_fork_child_exits_without_touching_the_parents_pool() -> None:
    """A child of os.fork() inherits a copy of the pool's objects, not its workers:
    its exit must neither hang on them nor stop them."""
    with corral.Pool(2, context="fork") as pool:
        assert pool.map(t.double, range(3)) == [0, 2, 4]
        pid = os.fork()
        if pid == 0:  # the child: a normal interpreter exit runs the exit hooks
            os._exit(0 if _exit_hooks_return() else 1)
        fd = os.pidfd_open(pid)
        try:
            assert pidfd_dead(fd, TIMEOUT), "the fork child hung at exit"
        finally:
            os.close(fd)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert pool.map(t.double, range(3)) == [0, 2, 4]  # the pool still works


def _exit_hooks_return() -> bool:
    import atexit
    import multiprocessing.util
    import weakref

    atexit._run_exitfuncs()  # weakref.finalize's and corral.map's hooks
    weakref.finalize._exitfunc()  # type: ignore[attr-defined]
    multiprocessing.util._exit_function()  # type: ignore[attr-defined]
    return True


def test_a_result_that_exits_when_unpickled_fails_alone(ctx: corral.CorralContext) -> None:
    with make_pool(ctx) as pool:
        it = pool.imap(t.return_exit_on_unpickle, range(3), chunksize=1)
        assert it.next(TIMEOUT) == 0
        with pytest.raises(SystemExit):  # item 1's outcome, raised in its place
            it.next(TIMEOUT)
        assert it.next(TIMEOUT) == 2
        assert pool.apply(t.double, (4,)) == 8  # the scheduler is alive


# --- The imap iterator's buffer, in C and in Python ----------------------------------

_BUFFERED_BASES = [pytest.param(_jobs._PyBufferedIter, id="python")]
if speedups is not None:
    _BUFFERED_BASES.append(pytest.param(speedups.BufferedIter, id="c"))


class _Box:
    """A value that can be weakly referenced."""

    def __init__(self, n: int):
        self.n = n


def _fed(base: Any, batches: list[list[Any]]) -> Any:
    class Fed(base):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self._failure = _jobs._Failure
            self.refills = 0

        def _refill(self) -> None:
            self.refills += 1
            if not batches:
                raise StopIteration
            self._items.extend(batches.pop(0))

    return Fed()


@pytest.mark.parametrize("base", _BUFFERED_BASES)
def test_buffered_iter_hands_out_in_order_raises_failures_in_place_and_ends(base: Any) -> None:
    boom = ValueError("item 2")
    it = _fed(base, [[0, 1], [_jobs._Failure(boom), 3], [4]])
    assert iter(it) is it
    assert [next(it), next(it)] == [0, 1]
    with pytest.raises(ValueError, match="item 2") as info:
        next(it)
    assert info.value is boom
    assert list(it) == [3, 4]  # it goes on after a failure, as the stdlib's imap
    assert it.refills == 4  # three batches, then the end
    with pytest.raises(StopIteration):
        next(it)


@pytest.mark.parametrize("base", _BUFFERED_BASES)
def test_buffered_iter_keeps_no_value_it_handed_out(base: Any) -> None:
    boxes = [_Box(i) for i in range(3)]
    refs = [weakref.ref(b) for b in boxes]
    it = _fed(base, [boxes])
    del boxes
    first = next(it)
    assert first.n == 0
    del first
    assert refs[0]() is None  # the buffer let go of it
    assert refs[1]() is not None  # still waiting in the buffer
    # A cycle through the iterator is collected (the C type takes part in the GC).
    it.cycle = it
    ref = weakref.ref(it)
    del it
    gc.collect()
    assert ref() is None
    assert refs[2]() is None


@pytest.mark.parametrize("base", _BUFFERED_BASES)
def test_buffered_iter_refills_again_when_a_refill_left_nothing(base: Any) -> None:
    # (Another thread reading the same iterator may have taken what a refill brought.)
    it = _fed(base, [[], [7]])
    assert list(it) == [7]
    assert it.refills == 3


def test_imap_read_by_two_threads_hands_out_every_value_once() -> None:
    with corral.Pool(2) as pool:
        it = pool.imap(t.double, range(20_000))
        got: list[list[int]] = [[], []]

        def read(out: list[int]) -> None:
            out.extend(it)

        threads = [threading.Thread(target=read, args=(got[i],)) for i in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(TIMEOUT)
        assert not any(th.is_alive() for th in threads)
        assert sorted(got[0] + got[1]) == [x * 2 for x in range(20_000)]


def test_imap_next_with_timeout_and_a_for_loop_share_one_order() -> None:
    with corral.Pool(2) as pool:
        it = pool.imap(t.double, range(2000))
        head = [it.next(TIMEOUT) for _ in range(5)]
        rest = []
        for i, x in enumerate(it):
            rest.append(x)
            if i % 500 == 0:
                rest.append(it.next(TIMEOUT))
        assert head + rest == [x * 2 for x in range(2000)]
