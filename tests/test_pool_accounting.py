"""Per-item accounting: a finished item never runs again, whatever the chunking.

The fault table: each row makes one item (``BAD``) misbehave (kill its own worker,
fail to pickle, ...), and each row runs with chunksize 1, 4 and automatic. Every
item records each run of itself in a file, so the tests assert how many times each
item ran, what each item returned or raised, and what ``statistics()`` says.
"""

from __future__ import annotations

import collections
import itertools
import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

import corral
from corral._pool import _engine
from tests import pool_targets as t
from tests.test_pool import collect

TIMEOUT = 60.0
N, BAD = 12, 5

KILLS = {"exit": None, "sigkill": signal.SIGKILL, "segfault": signal.SIGSEGV}
# row -> (exception type of BAD's outcome, how many times BAD runs)
ROWS: dict[str, tuple[type[BaseException], int]] = {
    "sigkill": (corral.WorkerCrashed, 1),
    "segfault": (corral.WorkerCrashed, 1),
    "exit": (corral.WorkerCrashed, 1),
    "raise": (ValueError, 1),
    "arg_pickle": (TypeError, 0),
    "arg_unpickle": (RuntimeError, 0),
    "result_pickle": (TypeError, 1),
    "result_unpickle": (RuntimeError, 1),
    "timeout": (corral.TaskTimeout, 1),
}


def runs(path: Path) -> collections.Counter[int]:
    if not path.exists():
        return collections.Counter()
    return collections.Counter(int(line) for line in path.read_text().split())


def items(how: str, path: Path) -> list[tuple[int, int, str, str, Any]]:
    def payload(x: int) -> Any:
        if x != BAD:
            return None
        if how == "arg_pickle":
            return threading.Lock()
        if how == "arg_unpickle":
            return t.BadUnpickle()
        return None

    return [(x, BAD, how, str(path), payload(x)) for x in range(N)]


@pytest.mark.parametrize("chunksize", [1, 4, None], ids=["chunk1", "chunk4", "auto"])
@pytest.mark.parametrize("how", list(ROWS))
def test_fault_table(
    ctx: corral.CorralContext, tmp_path: Path, how: str, chunksize: int | None
) -> None:
    path = tmp_path / "runs"
    expected_error, bad_runs = ROWS[how]
    timeout = 1.0 if how == "timeout" else None
    t0 = time.monotonic()
    with corral.Pool(2, context=ctx, task_timeout=timeout) as pool:
        out = collect(pool.imap(t.counted, items(how, path), chunksize))
        stats = pool.statistics()
    took = time.monotonic() - t0
    ran = runs(path)

    # The misbehaving item: its own error, and run once (or never, if it never
    # reached a worker).
    err = out[BAD]
    assert isinstance(err, expected_error), (how, err)
    assert isinstance(err, corral.WorkerCrashed) == (how in KILLS)
    assert ran[BAD] == bad_runs, (how, ran)
    if isinstance(err, corral.WorkerCrashed):
        assert isinstance(err, BrokenProcessPool)
        assert err.attempts == 1
        if KILLS[how] is None:
            assert err.exitcode == 3
        else:
            assert err.signal == KILLS[how]
        assert stats.workers_restarted >= 1
    # Every other item: run exactly once, and its own result.
    for x in range(N):
        if x == BAD:
            continue
        assert ran[x] == 1, (how, x, ran)
        if how == "result_unpickle" and chunksize != 1:
            # Outcomes committed together fail together when the parent can't
            # unpickle them; never re-run, though (asserted above).
            assert out[x] == x * 2 or isinstance(out[x], RuntimeError), (x, out[x])
        else:
            assert out[x] == x * 2, (how, x, out[x])
    assert stats.tasks_retried == 0
    assert stats.tasks_in_flight == 0
    assert took < TIMEOUT


@pytest.mark.parametrize("chunksize", [1, 4, None], ids=["chunk1", "chunk4", "auto"])
@pytest.mark.parametrize("how", list(KILLS))
def test_retries_charge_only_the_running_item(
    ctx: corral.CorralContext, tmp_path: Path, how: str, chunksize: int | None
) -> None:
    path = tmp_path / "runs"
    with corral.Pool(2, context=ctx, retries=2) as pool:
        out = collect(pool.imap(t.counted, items(how, path), chunksize))
        stats = pool.statistics()
    ran = runs(path)
    assert isinstance(out[BAD], corral.WorkerCrashed)
    assert out[BAD].attempts == 3
    assert ran[BAD] == 3
    assert all(ran[x] == 1 and out[x] == x * 2 for x in range(N) if x != BAD), ran
    assert stats.tasks_retried == 2
    assert stats.workers_restarted >= 3


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
@pytest.mark.parametrize("chunksize", [N, None], ids=["one_chunk", "auto"])
def test_a_worker_killed_from_outside_mid_chunk(
    ctx: corral.CorralContext, tmp_path: Path, signum: int, chunksize: int | None
) -> None:
    """Finished neighbours are delivered and never re-run; later ones run once."""
    path = tmp_path / "runs"
    q = corral.Queue()
    with corral.Pool(1, t.set_channel, (q,), context=ctx) as pool:
        it = pool.imap(t.counted_block, [(x, BAD, str(path)) for x in range(N)], chunksize)
        out: list[Any] = []
        consumer = threading.Thread(target=lambda: out.extend(collect(it)))
        consumer.start()  # imap reads its input as it is consumed
        pid, item = q.get(timeout=TIMEOUT)  # BAD is running
        assert item == BAD
        os.kill(pid, signum)
        consumer.join(TIMEOUT)
        assert not consumer.is_alive()
    ran = runs(path)
    assert isinstance(out[BAD], corral.WorkerCrashed)
    assert out[BAD].pid == pid
    if signum == signal.SIGKILL:
        assert out[BAD].signal == signum
    else:  # a worker unwinds on SIGTERM (its teardown ends what it started)
        assert out[BAD].exitcode == 128 + signum
    assert ran[BAD] == 1
    assert all(ran[x] == 1 and out[x] == x * 2 for x in range(N) if x != BAD), (ran, out)


@pytest.mark.parametrize("kind", t.RESULT_KINDS)
def test_fast_items_finished_before_a_death_are_delivered(
    ctx: corral.CorralContext, tmp_path: Path, kind: str
) -> None:
    """Items of a few µs, in one chunk, then the worker dies: what finished is kept.

    Such items are committed in groups of hundreds; the ones that finished since the
    last commit come back from the outcome log, each exactly once, whatever its
    result's type. Only the running item fails.
    """
    n, bad = 400, 301
    path = tmp_path / "runs"
    with corral.Pool(1, context=ctx) as pool:
        out = collect(pool.imap(t.fast_result, [(x, bad, kind, str(path)) for x in range(n)], n))
    ran = runs(path)
    assert isinstance(out[bad], corral.WorkerCrashed)
    assert ran[bad] == 1
    assert len(out) == n
    for x in range(n):
        if x == bad:
            continue
        assert ran[x] == 1, (x, ran[x])
        if kind == "unpicklable" and x == 3:
            assert isinstance(out[x], TypeError), out[x]
        else:
            assert out[x] == t.result_of(kind, x), (x, out[x])


@pytest.mark.parametrize("chunksize", [1, 4, None], ids=["chunk1", "chunk4", "auto"])
def test_an_item_that_returned_is_not_rerun_when_its_worker_dies_delivering_it(
    ctx: corral.CorralContext, tmp_path: Path, chunksize: int | None
) -> None:
    """The worker dies after the item returned, while logging or committing its result.

    The item had finished: even with retries left, it is reported, not run again.
    """
    path = tmp_path / "runs"
    with corral.Pool(2, context=ctx, retries=2) as pool:
        out = collect(pool.imap(t.counted, items("die_delivering", path), chunksize))
        stats = pool.statistics()
    ran = runs(path)
    assert ran[BAD] == 1, ran
    assert isinstance(out[BAD], corral.WorkerCrashed)
    assert "it had finished" in str(out[BAD])
    assert out[BAD].signal == signal.SIGKILL
    assert all(ran[x] == 1 and out[x] == x * 2 for x in range(N) if x != BAD), (ran, out)
    assert stats.tasks_retried == 0


PURE_SCENARIO = """
import collections, sys
import corral
from corral._pool import _worker
from tests import pool_targets as t
from tests.test_pool import collect
assert _worker._map_logged is None and _worker._map_tracked is None, "not the pure path"
n, bad, path = 400, 301, sys.argv[1]
with corral.Pool(1, context=sys.argv[2]) as pool:
    out = collect(pool.imap(t.fast_result, [(x, bad, "tuple", path) for x in range(n)], n))
ran = collections.Counter(int(line) for line in open(path).read().split())
assert isinstance(out[bad], corral.WorkerCrashed), out[bad]
assert all(ran[x] == 1 for x in range(n)), ran
assert all(out[x] == t.result_of("tuple", x) for x in range(n) if x != bad)
print("ok")
"""


def test_the_pure_python_worker_loop_keeps_finished_items_too(
    start_method: str, tmp_path: Path
) -> None:
    """Without the C extension, the Python loop logs every outcome the same way."""
    import subprocess
    import sys

    from tests import leaks

    env = dict(os.environ, CORRAL_PURE_PYTHON="1")
    before = leaks.descendants()
    proc = subprocess.run(
        [sys.executable, "-c", PURE_SCENARIO, str(tmp_path / "runs"), start_method],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    # The child interpreter's forkserver outlives it by a moment, and comes back to
    # us (a subreaper) to be reaped: it is the interpreter's, not a leak of ours.
    leaks.kill_and_reap(leaks.descendants() - before)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.parametrize("commit_seconds", [None, 10.0], ids=["default", "far-apart"])
def test_a_job_that_commits_far_apart_keeps_what_finished_when_its_worker_dies(
    ctx: corral.CorralContext, tmp_path: Path, commit_seconds: float | None
) -> None:
    """A cluster node's chunk commits about once per report interval
    (``_imap(commit_seconds=)``), not every 2 ms: then what finished since the last
    commit is all in the outcome log when the worker dies, and is still delivered
    once, never re-run."""
    n, bad = 60, 45
    path = tmp_path / "runs"
    q = corral.Queue()
    with corral.Pool(1, t.set_channel, (q,), context=ctx) as pool:
        engine: Any = pool._engine
        commits: list[int] = []
        commit = engine._commit

        def counted(w: Any, values: list[Any], *args: Any) -> None:
            commits.append(len(values))
            commit(w, values, *args)

        engine._commit = counted
        it = pool._imap(
            t.counted_block, [(x, bad, str(path)) for x in range(n)], n, 0, True,
            None, False, None, commit_seconds=commit_seconds,
        )  # fmt: skip
        out: list[Any] = []
        consumer = threading.Thread(target=lambda: out.extend(collect(it)))
        consumer.start()
        pid, item = q.get(timeout=TIMEOUT)
        assert item == bad
        before_death = sum(commits)
        os.kill(pid, signal.SIGKILL)
        consumer.join(TIMEOUT)
        assert not consumer.is_alive()
    # The first item of a chunk is committed alone (it measures the items); then
    # items of 0.2 ms go about 10 to a commit by default, and none far apart.
    if commit_seconds is None:
        assert 1 < before_death <= bad, commits
    else:
        assert before_death <= 1, commits  # the rest came from the log
    ran = runs(path)
    assert isinstance(out[bad], corral.WorkerCrashed)
    assert all(ran[x] == 1 and out[x] == x * 2 for x in range(n) if x != bad), (ran, out)
    assert ran[bad] == 1


def test_each_workers_running_word_has_a_cache_line_of_its_own(
    ctx: corral.CorralContext,
) -> None:
    """A worker stores its running word twice per item: two workers' words on one
    cache line (64 bytes) would bounce the line between their cores at every store
    (false sharing: the trivial map's workers spent 16% of their time on it)."""
    with corral.Pool(3, context=ctx) as pool:
        assert pool.map(abs, range(-30, 0)) == list(range(30, 0, -1))
        engine: Any = pool._engine
        offsets = sorted(w.index * _engine.WORD_STRIDE * 8 for w in engine.workers)
        assert len(offsets) == 3
        assert all(offset % 64 == 0 for offset in offsets)
        assert all(b - a >= 64 for a, b in itertools.pairwise(offsets))
        assert engine.words.size >= offsets[-1] + 8


# A map's chunks read their items from the caller's list (``_wire.ItemSlice``), not
# from a copy: re-queued items (a death, an argument that can't be pickled) must be
# read back from it right, and none of them run twice.
MAP_ROWS: dict[str, tuple[type[BaseException], int]] = {
    "sigkill": (corral.WorkerCrashed, 2),  # with retries=1: run twice, died twice
    "arg_pickle": (TypeError, 0),
}


@pytest.mark.parametrize("chunksize", [4, None], ids=["chunk4", "auto"])
@pytest.mark.parametrize("how", list(MAP_ROWS))
def test_a_map_requeues_from_the_callers_list(
    ctx: corral.CorralContext, tmp_path: Path, how: str, chunksize: int | None
) -> None:
    path = tmp_path / "runs"
    expected_error, bad_runs = MAP_ROWS[how]
    with corral.Pool(2, context=ctx, retries=1) as pool:
        res = pool.map_async(t.counted, items(how, path), chunksize)
        with pytest.raises(expected_error):
            res.get(TIMEOUT)
    ran = runs(path)
    assert ran[BAD] == bad_runs
    assert all(n == 1 for x, n in ran.items() if x != BAD), ran
    assert set(ran) <= set(range(N))
