"""ProcessPoolExecutor as a drop-in for concurrent.futures' (issue 12): the stdlib
executor's contract where corral keeps it, each pinned here under every start method.

- a failing initializer breaks the executor: BrokenProcessPool, never CancelledError;
- pickling and unpickling errors and exits, each way, end in what the stdlib raises
  (or a subclass), and the executor goes on (the table below); never a hang;
- shutdown: no hang after a task that failed to pickle; work submitted before the
  interpreter exits is completed; submit afterwards raises RuntimeError;
- an executor garbage-collected without shutdown finishes its work;
- references: a map's results are not kept alive by the executor;
- max_tasks_per_child: spawn by default, refused under fork;
- the private attributes the stdlib's users read (_processes, _broken, ...).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import time
import weakref
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

import corral
from corral._core import _linux
from tests import dropin_targets as t

from .conftest import wait_until
from .leaks import describe

TIMEOUT = 30.0
# A fault row, from submit to a finished shutdown: far above what it takes (well
# under a second per worker start), far below "hung".
ROW_BOUND = 20.0
ROOT = Path(__file__).resolve().parent.parent


def test_a_stdlib_context_is_accepted(start_method: str) -> None:
    with corral.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(start_method)) as ex:
        assert ex._mp_context.get_start_method() == start_method
        assert ex.submit(t.mul, 6, 7).result(TIMEOUT) == 42


def test_a_failing_initializer_breaks_the_executor(ctx: corral.CorralContext) -> None:
    ex = corral.ProcessPoolExecutor(2, ctx, t.init_fail)
    try:
        try:
            futures = [ex.submit(t.mul, i, 2) for i in range(5)]
        except BrokenProcessPool:
            futures = []  # broken already: submit said so
        for f in futures:
            exc = f.exception(TIMEOUT)
            assert isinstance(exc, BrokenProcessPool), exc  # not CancelledError
            assert isinstance(exc, corral.BrokenPool)
            assert "error in initializer" in str(exc)
        assert wait_until(lambda: bool(ex._broken), TIMEOUT)
        with pytest.raises(BrokenProcessPool):
            ex.submit(t.mul, 1, 2)
    finally:
        ex.shutdown(wait=True)


_TE, _UE, _PE = corral.TransferError, pickle.UnpicklingError, pickle.PicklingError


def test_a_failing_initializer_is_logged_in_the_worker(ctx: corral.CorralContext) -> None:
    """As the stdlib's executor: "Exception in initializer:" with the traceback, on the
    worker's "concurrent.futures" logger."""
    q: Any = corral.Queue()
    ex = corral.ProcessPoolExecutor(1, ctx, t.init_fail_logging, (q,))
    try:
        # (Under spawn and forkserver the first task starts the worker, as the stdlib's.)
        with pytest.raises(BrokenProcessPool):
            ex.submit(t.identity, 1).result(TIMEOUT)
        assert wait_until(lambda: bool(ex._broken), TIMEOUT)
        message = q.get(timeout=TIMEOUT).getMessage()
        assert message.startswith("Exception in initializer:")
        assert "ValueError: error in initializer" in message
    finally:
        ex.shutdown(wait=True)


# (row, function, argument, what the future raises, its __cause__'s type or None)
FAULTS: list[tuple[str, Any, Any, type[BaseException], type[BaseException] | None]] = [
    ("error at task pickle", t.identity, t.ErrorAtPickle(), _PE, None),
    ("exit at task pickle", t.identity, t.ExitAtPickle(), SystemExit, None),
    ("error at task unpickle", t.identity, t.ErrorAtUnpickle(), _TE, _UE),
    ("exit at task unpickle", t.identity, t.ExitAtUnpickle(), _TE, SystemExit),
    ("crash at task unpickle", t.identity, t.CrashAtUnpickle(), corral.WorkerCrashed, None),
    ("error at result pickle", t.return_instance, t.ErrorAtPickle, _PE, None),
    ("exit at result pickle", t.return_instance, t.ExitAtPickle, SystemExit, None),
    ("error at result unpickle", t.return_instance, t.ErrorAtUnpickle, _TE, _UE),
    ("exit at result unpickle", t.return_instance, t.ExitAtUnpickle, _TE, SystemExit),
]  # fmt: skip


@pytest.mark.parametrize(
    ("row", "fn", "arg", "raised", "cause"), FAULTS, ids=[f[0] for f in FAULTS]
)
def test_fault_table(
    ctx: corral.CorralContext,
    row: str,
    fn: Any,
    arg: Any,
    raised: type[BaseException],
    cause: type[BaseException] | None,
) -> None:
    begin = time.monotonic()
    ex = corral.ProcessPoolExecutor(2, mp_context=ctx)
    try:
        exc = ex.submit(fn, arg).exception(TIMEOUT)
        assert isinstance(exc, raised), (row, exc)
        if raised is corral.TransferError or raised is corral.WorkerCrashed:
            assert isinstance(exc, BrokenProcessPool)  # what the stdlib raises there
        if cause is not None:
            assert isinstance(exc.__cause__, cause), (row, exc.__cause__)
        # Only that task failed: the executor goes on.
        assert ex.submit(t.mul, 6, 7).result(TIMEOUT) == 42
        assert not ex._broken
    finally:
        ex.shutdown(wait=True)
    assert not ex._executor_manager_thread.is_alive()
    assert time.monotonic() - begin < ROW_BOUND


def test_a_pool_finishes_a_task_that_kills_its_worker_while_unpickling(
    ctx: corral.CorralContext,
) -> None:
    # Before, the chunk counted as never started and was re-queued for ever.
    with corral.Pool(2, context=ctx) as pool:
        bad = pool.apply_async(t.identity, (t.CrashAtUnpickle(),))
        good = pool.map_async(t.mul, [(i, 2) for i in range(4)])  # type: ignore[arg-type]
        with pytest.raises(corral.WorkerCrashed, match="SIGSEGV"):
            bad.get(TIMEOUT)
        with pytest.raises(TypeError):  # mul takes two arguments: map passes one
            good.get(TIMEOUT)
        assert pool.apply(t.mul, (6, 7)) == 42


def test_shutdown_does_not_hang_after_a_task_that_failed_to_pickle(
    ctx: corral.CorralContext,
) -> None:
    ex = corral.ProcessPoolExecutor(2, mp_context=ctx)
    assert ex.submit(t.mul, 1, 2).result(TIMEOUT) == 2
    thread = ex._executor_manager_thread
    f = ex.submit(t.identity, t.ErrorAtPickle())
    ex.shutdown(wait=False)
    with pytest.raises(pickle.PicklingError):
        f.result(TIMEOUT)
    thread.join(TIMEOUT)
    assert not thread.is_alive()


def test_pool_close_join_after_a_task_that_failed_to_pickle(ctx: corral.CorralContext) -> None:
    pool = corral.Pool(1, context=ctx)
    r = pool.apply_async(t.identity, (t.ErrorAtPickle(),))
    pool.close()
    pool.join(TIMEOUT)
    assert pool._engine.done.is_set()
    with pytest.raises(pickle.PicklingError):
        r.get(0)


def test_submit_after_shutdown_raises_runtime_error(ctx: corral.CorralContext) -> None:
    ex = corral.ProcessPoolExecutor(1, mp_context=ctx)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures"):
        ex.submit(t.mul, 1, 2)
    ex2 = corral.ProcessPoolExecutor(1, mp_context=ctx)
    ex2._pool.terminate()  # as a Ctrl-C or the exit hook would
    with pytest.raises(RuntimeError, match="cannot schedule new futures"):
        ex2.submit(t.mul, 1, 2)
    ex2.shutdown()


EXIT_SCRIPT = """
import atexit, sys
import corral
from tests import dropin_targets as t

@atexit.register
def late():
    try:
        ex.submit(t.mul, 1, 2)
    except RuntimeError as exc:
        print("late:", exc, flush=True)

if __name__ == "__main__":
    ex = corral.ProcessPoolExecutor(2, mp_context=sys.argv[1])
    ex.submit(t.print_after, 0.5, "apple")
"""


def _reap_stdlib_helpers(before: set[int]) -> list[str]:
    """The script's leftovers are the stdlib's helpers (its forkserver, the resource
    tracker), orphaned to this subreaper: each exits at EOF by itself. Reap them;
    return the names of those that were there."""
    orphans = set(_linux.descendants_of(os.getpid())) - before
    names = describe(sorted(orphans))

    def gone() -> bool:
        for pid in orphans & set(_linux.children_of(os.getpid())):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    orphans.discard(pid)
        return not orphans

    assert wait_until(gone, TIMEOUT), describe(sorted(orphans))
    return names


def test_work_submitted_before_exit_is_completed(start_method: str) -> None:
    before = set(_linux.descendants_of(os.getpid()))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(EXIT_SCRIPT), start_method],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "apple",
        "late: cannot schedule new futures after interpreter shutdown",
    ], done.stderr
    assert done.stderr == ""
    # No worker outlived the program (a corral worker's name starts "corral worker").
    leftovers = _reap_stdlib_helpers(before)
    assert not [name for name in leftovers if "corral" in name], leftovers


def test_an_executor_collected_without_shutdown_finishes_its_work(
    ctx: corral.CorralContext,
) -> None:
    ex = corral.ProcessPoolExecutor(2, mp_context=ctx)
    results = ex.map(abs, range(-5, 5))
    thread = ex._executor_manager_thread
    processes = list(ex._processes.values())
    assert len(processes) == 2
    del ex
    gc.collect()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert list(results) == [abs(x) for x in range(-5, 5)]


def test_workers_exit_promptly_while_another_executor_lives(ctx: corral.CorralContext) -> None:
    """The exit hook that completes an executor's work must not run, in a forked
    worker, for the copies of its parent's executors (it waited on them for ever)."""
    other = corral.ProcessPoolExecutor(2, mp_context=ctx)
    try:
        with corral.ProcessPoolExecutor(2, mp_context=ctx) as ex:
            processes = list(ex._processes.values())
            assert list(ex.map(abs, range(-3, 3))) == [3, 2, 1, 0, 1, 2]
        for p in processes:
            p.join(TIMEOUT)
            assert p.exitcode == 0  # told to stop, it stopped (not killed after a grace)
    finally:
        other.shutdown()


def test_map_results_are_not_kept_alive(ctx: corral.CorralContext) -> None:
    with corral.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        seen = 0
        for obj in ex.map(t.make_payload, range(10)):
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert ref() is None
            seen += 1
        assert seen == 10


def test_max_tasks_per_child_means_spawn_and_refuses_fork(start_method: str) -> None:
    if start_method == "fork":
        with pytest.raises(ValueError, match="incompatible with the 'fork'"):
            corral.ProcessPoolExecutor(1, mp_context=start_method, max_tasks_per_child=2)
        return
    with corral.ProcessPoolExecutor(1, max_tasks_per_child=2) as ex:
        assert ex._mp_context.get_start_method() == "spawn"
    with corral.ProcessPoolExecutor(1, mp_context=start_method, max_tasks_per_child=2) as ex:
        pids = [ex.submit(t.getpid).result(TIMEOUT) for _ in range(4)]
    assert pids[0] == pids[1] != pids[2] == pids[3]


def test_remote_traceback_is_the_stdlibs_too(ctx: corral.CorralContext) -> None:
    import multiprocessing.pool

    with corral.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        exc = ex.submit(t.init_fail).exception(TIMEOUT)
    with (
        corral.Pool(1, context=ctx) as pool,
        pytest.raises(ValueError, match="initializer") as info,
    ):
        pool.apply(t.init_fail)
    for error in (exc, info.value):
        assert isinstance(error, ValueError)
        cause = error.__cause__
        assert isinstance(cause, corral.RemoteTraceback)
        assert isinstance(cause, multiprocessing.pool.RemoteTraceback)  # type: ignore[attr-defined]
        assert isinstance(cause, concurrent.futures.process._RemoteTraceback)
        assert 'raise ValueError("error in initializer")' in cause.tb
