"""cluster=: the same Pool, Executor, corral.map and Pipeline on a real dask cluster.

Every test runs against separate ``dask scheduler`` and ``dask worker`` programs on
loopback (``dask_cluster.DaskCluster``, one per module); the per-test leak check
still sees every corral process the test made on the nodes, since the nodes are
this test process's descendants.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import itertools
import os
import signal
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "distributed", reason="cluster= needs dask.distributed: pip install 'corral[distributed]'"
)

import corral
from corral._core import _linux

from . import cluster_targets as targets
from . import pool_targets
from .dask_cluster import DaskCluster
from .leaks import wait_until

pytestmark = pytest.mark.cluster

# Results of any call here come within this; a hang fails the test, not the suite.
CALL_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def dask(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    cluster = DaskCluster(tmp_path_factory.mktemp("dask"))
    yield cluster
    problems = cluster.stop()
    assert not problems, problems


@pytest.fixture(autouse=True)
def _fixture_client_idle(dask: DaskCluster) -> Iterator[None]:
    yield  # torn down before the leak check: dask's pooled sockets are not a leak
    dask.close_idle_connections()


def test_pool_map_imap_apply_on_the_cluster(dask: DaskCluster) -> None:
    events: collections.Counter[str] = collections.Counter()

    def on_event(kind: str, n: int) -> None:
        events[kind] += n

    with corral.Pool(cluster=dask.address, on_event=on_event) as pool:
        assert pool._processes == 2  # the cluster's threads, by default
        assert pool.map(targets.square, range(500)) == [x * x for x in range(500)]
        assert pool.starmap(targets.add, [(1, 2), (3, 4)]) == [3, 7]
        assert list(pool.imap(targets.square, iter(range(50)))) == [x * x for x in range(50)]
        unordered = pool.imap_unordered(targets.square, range(50), chunksize=7)
        assert sorted(unordered) == [x * x for x in range(50)]
        assert pool.apply_async(targets.add, (2, 3)).get(CALL_TIMEOUT) == 5
        nodes = set(pool.map(targets.node_pid, range(200), chunksize=10))
        stats = pool.statistics()
    assert nodes <= set(dask.worker_pids())
    assert stats.tasks_completed == 500 + 2 + 50 + 50 + 1 + 200
    assert stats.workers_alive == 2
    assert events["completed"] == events["submitted"] == stats.tasks_completed
    assert events["failed"] == events["retried"] == events["worker_died"] == 0


def test_a_list_shortened_while_the_call_runs_fails_it(dask: DaskCluster, tmp_path: Path) -> None:
    """As on a local pool (test_pool_borrowed): the call's list is read in place, and
    one cut while the call runs fails it with an error saying so; the pool goes on."""
    fn = functools.partial(pool_targets.gated, where=str(tmp_path))
    items = list(range(20))
    with corral.Pool(cluster=dask.address) as pool:
        res = pool.map_async(fn, items, chunksize=1)
        assert wait_until(lambda: any(tmp_path.glob("started-*")), CALL_TIMEOUT)
        del items[2:]
        (tmp_path / "go").touch()
        with pytest.raises(corral.CorralError, match="shortened from 20 to 2 items"):
            res.get(CALL_TIMEOUT)
        assert pool.map(targets.square, range(5)) == [0, 1, 4, 9, 16]


def test_a_repeated_call_skips_the_chunk_ramp(dask: DaskCluster) -> None:
    """A call starts with chunks of 16 items, growing at most 8-fold per measurement (a
    dask round trip each); the next call of the same function on the pool starts one
    growth step below the size the last one reached, as a local pool's calls do."""
    from corral._pool import _cluster

    with corral.Pool(cluster=dask.address) as pool:
        engine: Any = pool._engine
        sizes: list[int] = []
        learned: list[int] = []  # what the pool had learned of the function, at each
        submit = engine._submit

        def recorded(chunk: Any) -> None:
            sizes.append(len(chunk.items))
            learned.append(engine.learned_chunk(chunk.job.fn))
            submit(chunk)

        engine._submit = recorded
        assert pool.map(targets.square, range(3000)) == [x * x for x in range(3000)]
        first_call, sizes[:], learned[:] = list(sizes), [], []
        assert pool.map(targets.square, range(3000)) == [x * x for x in range(3000)]
        second_call, second_learned, sizes[:] = list(sizes), learned[0], []
        assert pool.map(targets.identity, range(100)) == list(range(100))
    assert first_call[0] == _cluster.FIRST_CHUNK, first_call
    # (The learned size is what the measurements reached: near the end of a call,
    # chunks are cut below it.)
    assert second_learned > _cluster.FIRST_CHUNK * _cluster.CHUNK_GROWTH, second_learned
    assert second_call[0] == second_learned // _cluster.CHUNK_GROWTH, (second_learned, second_call)
    assert sizes[0] == _cluster.FIRST_CHUNK, sizes  # another function: from the start


def test_two_pools_whose_tokens_share_a_prefix_keep_their_own_results(
    dask: DaskCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # dask takes two submits of one key for one task: two pools' chunk keys must
    # differ however their tokens begin, or one pool gets the other's results.
    import uuid

    from corral._pool import _cluster

    def uuid4() -> uuid.UUID:
        return uuid.UUID("c0ffee00" + os.urandom(12).hex())

    monkeypatch.setattr(_cluster, "uuid", types.SimpleNamespace(uuid4=uuid4))
    with corral.Pool(cluster=dask.address) as a, corral.Pool(cluster=dask.address) as b:
        token_a, token_b = a._engine.token, b._engine.token  # type: ignore[attr-defined]
        assert token_a[:8] == token_b[:8]
        assert token_a != token_b
        first = a.map_async(targets.square, range(10), chunksize=5)
        second = b.map_async(targets.square, range(100, 110), chunksize=5)
        assert first.get(CALL_TIMEOUT) == [x * x for x in range(10)]
        assert second.get(CALL_TIMEOUT) == [x * x for x in range(100, 110)]


def _each(it: Any) -> list[Any]:
    """Every item of a pool iterator: a value, or the exception raised in its place."""
    out: list[Any] = []
    while True:
        try:
            out.append(it.next(CALL_TIMEOUT))
        except StopIteration:
            return out
        except BaseException as exc:  # (SystemExit from a result's unpickling too)
            out.append(exc)


# An error while pickling or unpickling, each way, fails its own item only (as on one
# machine), whatever its chunk; every other item runs once, and the pool goes on.
# Rows: (where it fails, the items' function, the items, the item that fails, what
# it raises, a fragment of its message or of a note it carries).
_PICKLING_ROWS: dict[str, tuple[Any, list[Any], int, type[BaseException], str]] = {
    "argument-pickle": (
        targets.counted,
        [0, 1, threading.Lock(), 3],
        2,
        TypeError,
        "while pickling task 2",
    ),
    "argument-unpickle-on-the-node": (
        targets.counted,
        [0, 1, pool_targets.BadUnpickle(), 3, 4],
        2,
        RuntimeError,
        "on a cluster node while unpickling task 2",
    ),
    "argument-exits-unpickling-on-the-node": (
        targets.counted,
        [0, 1, 2, pool_targets.ExitOnUnpickle()],
        3,
        SystemExit,
        "on a cluster node while unpickling task 3",
    ),
    "result-pickle-on-the-node": (
        targets.counted_then_lock_on_1,
        [0, 1, 2, 3],
        1,
        TypeError,
        "while pickling the task's result",
    ),
    "result-unpickle-on-the-node": (  # by the node's pool, in the dask worker
        targets.slow_counted_then_exit_on_unpickle_on_1,
        [0, 1, 2, 3],
        1,
        SystemExit,
        "while unpickling the task's result",
    ),
    "exception-unpickle-here": (
        targets.counted_then_raise_unpicklable_on_1,
        [0, 1, 2, 3],
        1,
        corral.CorralError,
        "_UnpicklableError",
    ),
}


@pytest.mark.parametrize("row", list(_PICKLING_ROWS))
def test_a_pickling_error_each_way_fails_its_item_alone(
    dask: DaskCluster, tmp_path: Path, row: str
) -> None:
    fn, items, bad, raised, note = _PICKLING_ROWS[row]
    where = str(tmp_path)
    n = len(items)
    with corral.Pool(cluster=dask.address) as pool:
        out = _each(pool.imap(functools.partial(fn, where=where), items, chunksize=n))
        assert pool.apply_async(targets.square, (5,)).get(CALL_TIMEOUT) == 25  # the pool goes on
    assert [o for x, o in enumerate(out) if x != bad] == [x * x for x in range(n) if x != bad]
    err = out[bad]
    assert isinstance(err, raised), err
    assert note in str(err) or any(note in line for line in getattr(err, "__notes__", [])), err
    ran = 0 if row.startswith("argument") else 1
    assert targets.runs(where, n) == [ran if x == bad else 1 for x in range(n)]


def test_a_function_that_exits_unpickling_on_the_node_fails_its_items_clearly(
    dask: DaskCluster, tmp_path: Path
) -> None:
    # The function travels with each chunk: if the node can't rebuild it (here its
    # unpickling raises SystemExit), every item fails with that error, once; the
    # dask worker lives on, and so does the pool.
    where = str(tmp_path)
    fn = functools.partial(
        targets.counted_carrying, where=where, cargo=pool_targets.ExitOnUnpickle()
    )
    with corral.Pool(cluster=dask.address) as pool:
        out = _each(pool.imap(fn, range(4), chunksize=4))
        assert pool.apply_async(targets.square, (5,)).get(CALL_TIMEOUT) == 25
        stats = pool.statistics()
    assert all(isinstance(o, RuntimeError) for o in out), out
    assert all("could not be unpickled on the node" in str(o) for o in out), out
    assert stats.workers_restarted == 0
    assert targets.runs(where, 4) == [0, 0, 0, 0]


def test_a_lambda_runs_on_the_cluster(dask: DaskCluster) -> None:
    # cloudpickle is a dependency of dask.distributed: lambdas always travel.
    with corral.Pool(cluster=dask.client) as pool:
        assert pool.map(lambda x: x + 1, range(10)) == list(range(1, 11))


def test_executor_corral_map_and_pipeline_take_cluster(dask: DaskCluster) -> None:
    with corral.ProcessPoolExecutor(max_workers=2, cluster=dask.client) as ex:
        futures = [ex.submit(targets.add, i, i) for i in range(5)]
        done = [f.result(CALL_TIMEOUT) for f in futures]
        mapped = list(ex.map(targets.add, range(5), range(5), timeout=CALL_TIMEOUT))
    assert done == mapped == [2 * i for i in range(5)]
    assert list(corral.map(targets.square, range(20), cluster=dask.address)) == [
        x * x for x in range(20)
    ]
    pipeline = corral.Pipeline(range(30)).stage(targets.square, cluster=dask.client, workers=2)
    assert pipeline.run() == [x * x for x in range(30)]
    skipping = corral.Pipeline(range(-3, 4)).stage(
        targets.inverse, cluster=dask.client, workers=2, on_error="skip"
    )
    assert skipping.run() == [-1 / 3, -1 / 2, -1.0, 1.0, 1 / 2, 1 / 3]
    assert [(e.stage, e.item) for e in skipping.errors] == [("inverse", 0)]


def test_a_cluster_object_and_an_initializer(dask: DaskCluster) -> None:
    # What a dask Cluster (LocalCluster, SpecCluster...) offers the Client.
    from distributed.core import Status

    cluster = types.SimpleNamespace(scheduler_address=dask.address, status=Status.running)
    with corral.Pool(cluster=cluster, initializer=targets.set_tag, initargs=("node",)) as pool:
        assert pool.map(targets.tagged, range(6), chunksize=2) == [f"node-{x}" for x in range(6)]


def test_a_real_local_cluster_object(dask: DaskCluster) -> None:
    # A distributed.LocalCluster as cluster=: corral makes its own client for it,
    # closes that client with the pool, and leaves the user's cluster running.
    import logging

    from distributed import LocalCluster
    from distributed.core import Status

    with LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as cluster:
        with corral.Pool(cluster=cluster) as pool:
            assert pool._processes == 1  # the cluster's threads
            assert pool.map(targets.square, range(50)) == [x * x for x in range(50)]
            nodes = set(pool.map(targets.node_pid, range(10), chunksize=5))
        assert cluster.status == Status.running
        (worker,) = cluster.workers.values()
        assert nodes == {worker.process.pid}  # ran on its worker, not on the fixture's


def _bar_states(buf: Any) -> list[str]:
    """The states of the one progress bar drawn into ``buf``."""
    (line,) = [line for line in buf.getvalue().split("\n") if line.strip()]
    return [s.strip() for s in line.split("\r") if s.strip()]


@pytest.mark.parametrize("method", ["map", "imap", "imap_unordered"])
def test_a_progress_bar_counts_every_item_once(dask: DaskCluster, method: str) -> None:
    pytest.importorskip("tqdm")
    import io
    import re

    buf = io.StringIO()
    n = 300
    with corral.Pool(cluster=dask.address) as pool:
        if method == "map":
            out = pool.map(targets.square, range(n), progress={"file": buf})
        else:
            it = getattr(pool, method)(
                targets.square, iter(range(n)), total=n, progress={"file": buf}
            )
            out = sorted(it)
    assert out == [x * x for x in range(n)]
    states = _bar_states(buf)
    counts = [tuple(map(int, m.groups())) for s in states for m in re.finditer(r"(\d+)/(\d+)", s)]
    assert {total for _, total in counts} == {n}, states
    assert max(done for done, _ in counts) == n, states  # never past the total
    assert f"{n}/{n}" in states[-1], states[-1]


# --- Guarantee 1: a crash costs one item, never the dask worker --------------------


@pytest.mark.parametrize("how", ["sigkill", "exit", "segfault"])
@pytest.mark.parametrize("retries", [0, 2])
def test_an_item_that_kills_its_process_costs_one_item(
    dask: DaskCluster, tmp_path: Path, how: str, retries: int
) -> None:
    workers_before = dask.worker_pids()
    fn = functools.partial(targets.crash_on, bad=7, how=how, where=str(tmp_path))
    with corral.Pool(cluster=dask.address, retries=retries) as pool:
        it = pool.imap(fn, range(40), chunksize=20)
        got: list[object] = []
        for _ in range(40):
            try:
                got.append(it.next(CALL_TIMEOUT))
            except corral.WorkerCrashed as exc:
                got.append(exc)
        stats = pool.statistics()
    assert got[:7] + got[8:] == [x * x for x in range(40) if x != 7]
    assert isinstance(got[7], corral.WorkerCrashed)
    assert got[7].attempts == retries + 1
    ran = targets.runs(str(tmp_path), 40)
    assert ran[7] == retries + 1
    assert ran[:7] + ran[8:] == [1] * 39  # no neighbour ran twice
    assert stats.tasks_retried == retries
    assert stats.workers_restarted == 0  # no chunk was re-run: dask was not charged
    assert dask.worker_pids() == workers_before  # the dask workers were not charged


# --- Guarantee 3: task_timeout kills the item's tree on the node ------------------


def test_task_timeout_kills_the_items_tree_on_the_node(dask: DaskCluster, tmp_path: Path) -> None:
    fn = functools.partial(targets.block_with_grandchild, where=str(tmp_path))
    with corral.Pool(cluster=dask.address, task_timeout=1) as pool:
        with pytest.raises(corral.TaskTimeout):
            pool.apply(fn, (1,))
        (pids,) = targets.markers(str(tmp_path), "running-")
        item_pid, grandchild = pids[0], pids[1]
        assert wait_until(lambda: not targets.pids_alive([item_pid, grandchild]), 5.0)
        assert pool.map_async(targets.square, range(4)).get(CALL_TIMEOUT) == [
            0,
            1,
            4,
            9,
        ]  # the pool goes on


# Where the timeout is set (the pool, or the call) x retries: a timed-out item is
# run again on its node up to ``retries`` times, then fails with TaskTimeout; its
# neighbours run once.
@pytest.mark.parametrize("set_on", ["pool", "call"])
@pytest.mark.parametrize("retries", [0, 1])
def test_task_timeout_per_call_and_retried(
    dask: DaskCluster, tmp_path: Path, set_on: str, retries: int
) -> None:
    timeout = 0.5
    fn = functools.partial(targets.sleep_on, bad=3, where=str(tmp_path))
    on_pool = timeout if set_on == "pool" else None
    on_call = timeout if set_on == "call" else None
    with corral.Pool(cluster=dask.address, retries=retries, task_timeout=on_pool) as pool:
        it = pool.imap(fn, range(8), chunksize=4, task_timeout=on_call)
        got: list[object] = []
        for _ in range(8):
            try:
                got.append(it.next(CALL_TIMEOUT))
            except corral.TaskTimeout as exc:
                got.append(exc)
        stats = pool.statistics()
    assert got[:3] + got[4:] == [x * x for x in range(8) if x != 3]
    assert isinstance(got[3], corral.TaskTimeout)
    assert got[3].timeout == timeout
    assert "3" in str(got[3])  # names the item as the caller's call does
    assert targets.runs(str(tmp_path), 8) == [retries + 1 if x == 3 else 1 for x in range(8)]
    assert stats.tasks_retried == retries
    assert stats.workers_restarted == 0


# --- Guarantee 2: a dask worker SIGKILLed mid-chunk -----------------------------


def _set_allowed_failures(dask_scheduler: Any, n: int) -> int:
    """On the scheduler: set its allowed-failures, return the old value."""
    old: int = dask_scheduler.allowed_failures
    dask_scheduler.allowed_failures = n
    return old


# allowed-failures 0: dask fails the chunk with KilledWorker at once; 3 (dask's
# default): dask runs the task again itself, which the node refuses ("rerun").
# corral resubmits the unreported rest either way.
@pytest.mark.parametrize("allowed_failures", [0, 3])
def test_a_dask_worker_killed_mid_chunk_loses_nothing(
    dask: DaskCluster, tmp_path: Path, allowed_failures: int
) -> None:
    old = dask.client.run_on_scheduler(_set_allowed_failures, n=allowed_failures)
    try:
        _killed_mid_chunk(dask, tmp_path)
    finally:
        dask.client.run_on_scheduler(_set_allowed_failures, n=old)


def _killed_mid_chunk(dask: DaskCluster, tmp_path: Path) -> None:
    n, at = 120, 45
    where = str(tmp_path)
    fn = functools.partial(targets.block_once, at=at, where=where)
    with corral.Pool(cluster=dask.address) as pool:
        it = pool.imap(fn, range(n), chunksize=30)
        # Items 30..44 of the chunk 30..59 finished before item 45 blocked; they
        # reached us while that chunk still ran (its reports), so we can read them.
        first = [it.next(CALL_TIMEOUT) for _ in range(at)]
        marker = tmp_path / "blocked"
        assert wait_until(lambda: marker.exists() and marker.read_text() != "", CALL_TIMEOUT)
        victim = int(marker.read_text())
        assert victim in dask.worker_pids()
        assert dask.kill_worker(victim) == []  # its corral processes died with it
        rest = [it.next(CALL_TIMEOUT) for _ in range(n - at)]
        with pytest.raises(StopIteration):
            it.next(CALL_TIMEOUT)
        stats = pool.statistics()
        topic = pool._engine.topic  # type: ignore[attr-defined]
        assert dask.client.get_events(topic)  # the running chunks' reports
    assert dask.client.get_events(topic) == ()  # dropped on the scheduler at the end
    assert first + rest == [x * x for x in range(n)]  # correct, in order, each once
    ran = targets.runs(where, n)
    # Only the item running when its dask worker died ran again, uncharged: the
    # finished items of its chunk had been reported, those after it had not started.
    assert ran == [2 if x == at else 1 for x in range(n)]
    assert stats.workers_restarted >= 1  # corral resubmitted the rest: no item failed
    dask.wait_for_workers()
    assert victim not in dask.worker_pids()


def _kept_everywhere(dask: DaskCluster, token: str) -> list[int]:
    return list(dask.client.run(targets.kept_pool_workers, token).values())


def _kill_and_replace(dask: DaskCluster) -> None:
    """SIGKILL one dask worker; return once the scheduler knows its replacement."""
    victim = dask.worker_pids()[0]
    assert dask.kill_worker(victim) == []

    def replaced() -> bool:
        try:
            pids = dask.worker_pids()
        except OSError:  # the scheduler has not noticed the death yet
            return False
        return victim not in pids and len(pids) == 2

    assert wait_until(replaced, CALL_TIMEOUT)


def test_node_pools_start_ahead_of_their_chunks_even_on_a_replacement(
    dask: DaskCluster,
) -> None:
    # Each dask worker starts its pool when the client-side pool is made, and a
    # nanny's replacement when it joins, not when a chunk first reaches it: after a
    # death the replacement is ready to share the work sooner.
    with corral.Pool(cluster=dask.address) as pool:
        token = pool._engine.token  # type: ignore[attr-defined]
        plugins = dask.client.run_on_scheduler(targets.worker_plugin_names)
        assert [p for p in plugins if token in p] == [f"corral-start-{token}"]
        assert wait_until(lambda: all(_kept_everywhere(dask, token)), CALL_TIMEOUT)
        _kill_and_replace(dask)
        # No chunk was ever sent: the replacement started its pool on joining.
        assert wait_until(lambda: all(_kept_everywhere(dask, token)), CALL_TIMEOUT)
        assert pool.map(targets.square, range(50)) == [x * x for x in range(50)]
    # Ended on every node with the pool; a worker that joins now starts none.
    plugins = dask.client.run_on_scheduler(targets.worker_plugin_names)
    assert [p for p in plugins if token in p] == []
    assert _kept_everywhere(dask, token) == [0, 0]
    _kill_and_replace(dask)
    assert _kept_everywhere(dask, token) == [0, 0]


# Chunks of 30 as asked (the rest resubmitted whole), or sized by corral (the
# rest resubmitted in parts cut as the tail is); reports at the usual interval, or
# none but the first while the chunk runs (all it finished is in its journal only).
@pytest.mark.parametrize(
    ("chunksize", "n", "at", "report"),
    [(30, 90, 45, None), (None, 400, 300, None), (30, 90, 45, 60.0), (None, 400, 300, 60.0)],
)
def test_a_dask_worker_killed_at_once_runs_no_finished_item_again(
    dask: DaskCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    chunksize: int | None,
    n: int,
    at: int,
    report: float | None,
) -> None:
    # "A finished item never runs again", across a dask worker's death: the worker
    # is killed as soon as item ``at`` blocks, without waiting for the items before
    # it to reach us. Those that finished on the node are in its journal (on this
    # host); the chunk's rest runs here again, and takes their outcomes from it.
    from corral._pool import _cluster, _cluster_journal

    if report is not None:
        monkeypatch.setattr(_cluster, "REPORT_MIN", report)
        monkeypatch.setattr(_cluster, "REPORT_MAX", report)
    where = str(tmp_path)
    fn = functools.partial(targets.block_once, at=at, where=where)
    events: collections.Counter[str] = collections.Counter()

    def on_event(kind: str, count: int) -> None:
        events[kind] += count

    with corral.Pool(cluster=dask.address, on_event=on_event) as pool:
        token = pool._engine.token  # type: ignore[attr-defined]
        result = pool.map_async(fn, range(n), chunksize=chunksize)
        marker = tmp_path / "blocked"
        assert wait_until(lambda: marker.exists() and marker.read_text() != "", CALL_TIMEOUT)
        victim = int(marker.read_text())
        flying = list(pool._engine.flying.values())  # type: ignore[attr-defined]
        (killed,) = [c for c in flying if c.start <= at < c.start + len(c.items)]
        unreported = at - (killed.start + killed.done)
        assert dask.kill_worker(victim) == []
        out = result.get(CALL_TIMEOUT)
        stats = pool.statistics()
    assert out == [x * x for x in range(n)]
    assert events["completed"] == n  # each delivered once
    # Only the item running when its dask worker died ran again, uncharged.
    assert targets.runs(where, n) == [2 if x == at else 1 for x in range(n)]
    assert stats.workers_restarted >= 1
    assert stats.tasks_retried == 0
    if report is not None and chunksize is not None:
        # The journal, not the reports, kept these: items 31..44 of the chunk from 30
        # (its first outcome is reported at once). Sized chunks may start anywhere,
        # even at the blocked item, so they make no such promise.
        assert unreported >= at - 31
    # The pool's journal went with it, on every node's host.
    base = _cluster_journal.base_dir()
    assert base is not None
    assert not os.path.exists(os.path.join(base, token))
    dask.wait_for_workers()


# Held after the first outcome (the rest only in the node's journal), or after the
# last (every outcome reported, nothing left to run).
@pytest.mark.parametrize("held_after", ["first", "all"])
def test_a_finished_chunk_whose_result_died_with_its_worker_runs_nothing_again(
    dask: DaskCluster, tmp_path: Path, held_after: str
) -> None:
    # A chunk ends on its dask worker, which is SIGKILLed before we fetch the
    # chunk's result. dask then computes the task again elsewhere, whole, and does
    # not count it as a death while running (``suspicious``): the node must still
    # know it for a second run, and refuse it. The chunk's rest is then taken from
    # the journal on this host, and nothing runs again.
    where = str(tmp_path)
    n = 30 if held_after == "first" else 6
    slow = held_after == "all"  # each outcome reported as soon as it ends
    fn = functools.partial(
        targets.slow_counted_on_node if slow else targets.counted_on_node, where=where
    )
    seen = 0
    held, go = threading.Event(), threading.Event()

    def on_event(kind: str, count: int) -> None:  # (the engine's thread)
        nonlocal seen
        if kind == "completed" and not held.is_set():
            seen += count
            if held_after == "first" or seen == n:
                held.set()
                go.wait(CALL_TIMEOUT)  # hold the engine: the result is not fetched

    with corral.Pool(cluster=dask.address, on_event=on_event) as pool:
        result = pool.map_async(fn, range(n), chunksize=n)
        try:
            assert held.wait(CALL_TIMEOUT)
            assert wait_until(lambda: targets.runs(where, n) == [1] * n, CALL_TIMEOUT)
            (chunk,) = pool._engine.flying.values()  # type: ignore[attr-defined]
            assert wait_until(lambda: chunk.future.status == "finished", CALL_TIMEOUT)
            assert dask.kill_worker(int((tmp_path / "node").read_text())) == []
        finally:
            go.set()
        assert result.get(CALL_TIMEOUT) == [x * x for x in range(n)]
        # The pool still works after it.
        assert pool.map_async(targets.square, range(4)).get(CALL_TIMEOUT) == [0, 1, 4, 9]
        stats = pool.statistics()
    assert targets.runs(where, n) == [1] * n
    assert stats.tasks_retried == 0
    dask.wait_for_workers()


def test_large_outcomes_go_with_the_result_not_through_the_scheduler(
    dask: DaskCluster, tmp_path: Path
) -> None:
    # Reports go through the scheduler, which keeps the latest ones: they carry
    # small outcomes only. From the first outcome too large for a report on, the
    # chunk's outcomes come with its result (dask's gather); all arrive once.
    from corral._pool._cluster_node import REPORT_MAX_BYTES

    where = str(tmp_path)
    n = 8
    fn = functools.partial(targets.slow_counted_big_from_3, where=where)
    with corral.Pool(cluster=dask.address) as pool:
        token = pool._engine.token  # type: ignore[attr-defined]
        out = pool.map_async(fn, range(n), chunksize=n).get(CALL_TIMEOUT)
        sizes = dask.client.run_on_scheduler(targets.report_sizes, topic=f"corral-{token}")
    assert [len(v) for v in out] == [8 if x < 3 else 1 << 20 for x in range(n)]
    assert all(v == bytes([x]) * len(v) for x, v in enumerate(out))
    assert sizes  # the small outcomes were reported
    assert max(sizes) <= REPORT_MAX_BYTES
    assert targets.runs(where, n) == [1] * n


def test_a_backlog_of_outcomes_is_not_pickled_again_for_every_report(
    dask: DaskCluster, tmp_path: Path
) -> None:
    # Fast items with 10 KB results outrun the 64 KiB reports: once a report had to
    # be cut, the next ones try at most twice what the last one carried, rather
    # than pickling the whole backlog again each time (a chunk of 8,000 such items
    # took 11.8 s that way, 0.5 s without reports' bound).
    where = str(tmp_path)
    n = 2000
    with corral.Pool(cluster=dask.address) as pool:
        fn = functools.partial(targets.pickle_counted, where=where)
        out = pool.map_async(fn, range(n), chunksize=n).get(CALL_TIMEOUT)
    assert [v.index for v in out] == list(range(n))
    counts = targets.times_pickled(where, n)
    # Each value: its commit and its journal record in the node's pool, the
    # chunk's result, and its report with a few halvings (measured: at most 8 a
    # value, 4.1 on average; 271 and 172 with the backlog pickled every time).
    assert max(counts) <= 16, max(counts)
    assert sum(counts) <= 8 * n, sum(counts)


def test_the_schedulers_notes_of_started_chunks_stay_bounded(dask: DaskCluster) -> None:
    # Every chunk start is noted on the scheduler, to refuse a second run. Keys it
    # no longer holds are pruned, so a long-lived scheduler's notes don't grow;
    # a key it still holds stays noted through any number of prunings.
    from corral._pool._cluster_node import STARTED_PRUNE_MIN

    held = dask.client.submit(targets.square, 3, key="corral-notes-held", pure=False)
    try:
        assert held.result(CALL_TIMEOUT) == 9
        first, again, noted = dask.client.run_on_scheduler(
            targets.notes_around_unknown_starts, held=held.key, n=3 * STARTED_PRUNE_MIN
        )
    finally:
        held.release()
    assert (first, again) == (False, True)
    assert noted < STARTED_PRUNE_MIN


def test_a_dead_chunks_rest_prefers_its_host_where_its_journal_is(
    dask: DaskCluster, tmp_path: Path
) -> None:
    # The rest of a dead chunk is submitted restricted to the host it ran on, loosely
    # (it goes elsewhere only if that host has no worker left): only there can the
    # node read what the dead chunk journaled.
    where = str(tmp_path)
    go = tmp_path / "go"
    os.mkfifo(go)
    n, at = 60, 45
    fn = functools.partial(targets.block_once_then_wait, at=at, where=where, go=str(go))
    with corral.Pool(cluster=dask.address) as pool:
        result = pool.map_async(fn, range(n), chunksize=30)
        marker = tmp_path / "blocked"
        assert wait_until(lambda: marker.exists() and marker.read_text() != "", CALL_TIMEOUT)
        assert dask.kill_worker(int(marker.read_text())) == []
        assert wait_until((tmp_path / "rerun").exists, CALL_TIMEOUT)
        restrictions = dask.client.run_on_scheduler(targets.corral_restrictions)
        writer: list[int] = []

        def opened() -> bool:  # (ENXIO until the item has the FIFO open to read)
            with contextlib.suppress(OSError):
                writer.append(os.open(go, os.O_WRONLY | os.O_NONBLOCK))
            return bool(writer)

        assert wait_until(opened, CALL_TIMEOUT)
        os.write(writer[0], b"go")
        os.close(writer[0])
        assert result.get(CALL_TIMEOUT) == [x * x for x in range(n)]
    assert (["127.0.0.1"], True) in restrictions.values(), restrictions
    assert targets.runs(where, n) == [2 if x == at else 1 for x in range(n)]
    dask.wait_for_workers()


def test_a_timed_out_item_is_journaled_and_not_run_again_after_its_node_dies(
    dask: DaskCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Item 5 times out on the node (the node's pool kills it: a failure the item did
    # not raise itself, journaled by the dask worker), then item 10 blocks and its
    # dask worker is SIGKILLed before reporting either: the rest runs again, and
    # item 5 fails with its TaskTimeout without a second run.
    from corral._pool import _cluster

    monkeypatch.setattr(_cluster, "REPORT_MIN", 60.0)
    monkeypatch.setattr(_cluster, "REPORT_MAX", 60.0)
    where = str(tmp_path)
    n, slow, at = 30, 5, 10
    fn = functools.partial(targets.time_out_then_block_once, slow=slow, at=at, where=where)
    # (item 10 must not time out before the test kills its node: a wide margin)
    with corral.Pool(cluster=dask.address, task_timeout=3, retries=0) as pool:
        it = pool.imap(fn, range(n), chunksize=n)
        marker = tmp_path / "blocked"
        assert wait_until(lambda: marker.exists() and marker.read_text() != "", CALL_TIMEOUT)
        assert dask.kill_worker(int(marker.read_text())) == []
        outcomes: list[object] = []
        for _ in range(n):
            try:
                outcomes.append(it.next(CALL_TIMEOUT))
            except corral.TaskTimeout as exc:
                outcomes.append(exc)
        with pytest.raises(StopIteration):
            it.next(CALL_TIMEOUT)
    assert isinstance(outcomes[slow], corral.TaskTimeout)
    assert [o for x, o in enumerate(outcomes) if x != slow] == [
        x * x for x in range(n) if x != slow
    ]
    assert targets.runs(where, n) == [2 if x == at else 1 for x in range(n)]
    dask.wait_for_workers()


def test_a_node_removes_the_journal_of_chunks_whose_outcomes_we_have(
    dask: DaskCluster,
) -> None:
    # A dask worker removes its journal files of the chunks it no longer holds, at
    # each chunk's start: a long-lived pool's journal stays the size of the chunks
    # in flight, not of every chunk it ever ran.
    chunks = 8
    with corral.Pool(cluster=dask.address) as pool:
        token = pool._engine.token  # type: ignore[attr-defined]
        most = 0
        for _ in range(6):
            assert pool.map(targets.square, range(chunks * 10), chunksize=10) == [
                x * x for x in range(chunks * 10)
            ]
            files = [f for fs in dask.client.run(targets.journal_files, token).values() for f in fs]
            most = max(most, len(set(files)))
        assert 0 < most <= 2 * chunks
    left = dask.client.run(targets.journal_files, token)
    assert len(left) == 2
    assert all(files == [] for files in left.values())


def test_a_task_that_kills_every_node_it_runs_on_is_given_up(
    dask: DaskCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each dask worker death costs a nanny restart (seconds): one resubmit only.
    from corral._pool import _cluster

    monkeypatch.setattr(_cluster, "MAX_RESUBMITS", 1)
    before = set(_linux.children_of(os.getpid()))
    killer = functools.partial(targets.kill_node, where=str(tmp_path))
    with corral.Pool(cluster=dask.address, retries=3) as pool:
        doomed = pool.apply_async(killer, (7,))
        with pytest.raises(corral.CorralError, match="died 2 times in a row") as info:
            doomed.get(CALL_TIMEOUT)
        assert not isinstance(info.value, corral.WorkerCrashed)  # not an item's crash
        stats = pool.statistics()
        assert dask.reap_orphans(before) == []
        dask.wait_for_workers()
        assert pool.map_async(targets.square, range(4)).get(CALL_TIMEOUT) == [
            0,
            1,
            4,
            9,
        ]  # the pool goes on
    # Run once, then once per resubmit; the node pool's retries never saw a crash.
    assert targets.runs(str(tmp_path), 8)[7] == 2
    assert stats.workers_restarted == 2
    assert stats.tasks_retried == 0


# --- Guarantee 4: stopping reaches every node within 1 s ----------------------------

STOP_BOUND = 1.0


def _both_running(where: Path) -> list[int]:
    """Wait until an item runs on each node; the pids of the items and grandchildren."""
    ran: list[list[int]] = []

    def both() -> bool:
        ran[:] = targets.markers(str(where), "running-")
        return len({pids[2] for pids in ran}) == 2

    assert wait_until(both, CALL_TIMEOUT)
    return [p for pids in ran for p in pids[:2]]


@pytest.mark.parametrize("how", ["cancel", "terminate", "ctrl-c"])
def test_stopping_reaches_every_node(dask: DaskCluster, tmp_path: Path, how: str) -> None:
    fn = functools.partial(targets.block_with_grandchild, where=str(tmp_path))
    workers_before = dask.worker_pids()
    pool = corral.Pool(cluster=dask.address)
    pids: list[int] = []
    stopped_at: list[float] = []
    try:
        if how == "ctrl-c":
            main = threading.get_ident()

            def interrupt() -> None:
                pids.extend(_both_running(tmp_path))
                stopped_at.append(time.monotonic())
                signal.pthread_kill(main, signal.SIGINT)

            helper = threading.Thread(target=interrupt)
            helper.start()
            try:
                with pytest.raises(KeyboardInterrupt):
                    pool.map(fn, range(4), chunksize=1)
            finally:
                helper.join(CALL_TIMEOUT)
        else:
            running = pool.map_async(fn, range(4), chunksize=1)
            pids.extend(_both_running(tmp_path))
            stopped_at.append(time.monotonic())
            if how == "cancel":
                running.cancel()
            else:
                pool.terminate()
        left = STOP_BOUND - (time.monotonic() - stopped_at[0])
        assert wait_until(lambda: not targets.pids_alive(pids), left), (
            f"still running {STOP_BOUND} s after {how}: {targets.pids_alive(pids)}"
        )
        if how == "cancel":
            with pytest.raises(concurrent.futures.CancelledError):
                running.get(CALL_TIMEOUT)
    finally:
        pool.terminate()
    assert dask.worker_pids() == workers_before  # the dask workers stay up


def test_cluster_auto_reads_corral_cluster(
    dask: DaskCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_CLUSTER", dask.address)
    with corral.Pool(cluster="auto") as pool:
        assert set(pool.map(targets.node_pid, range(100), chunksize=10)) <= set(dask.worker_pids())


# --- Guarantee 6: backpressure ----------------------------------------------------


def test_imap_over_an_infinite_generator_pulls_a_bounded_number(dask: DaskCluster) -> None:
    pulled = itertools.count()

    def source() -> Iterator[int]:
        for x in itertools.count():
            next(pulled)
            yield x

    with corral.Pool(cluster=dask.address) as pool:
        it = pool.imap(targets.square, source())
        got = [it.next(CALL_TIMEOUT) for _ in range(3000)]
        seen = next(pulled)
        it.close()
    assert got == [x * x for x in range(3000)]
    # The window: a few chunks per unit of concurrency (at most 1,000 items each).
    assert seen <= 3000 + 4 * 2 * 1000


# --- Guarantee 7: bad input gets a clear error at the call -------------------------


@pytest.mark.parametrize(
    "make",
    [
        corral.Queue,
        corral.Lock,
        lambda: corral.Value("i", 0),
        lambda: corral.Array("i", 3),
        corral.Event,
    ],
    ids=["Queue", "Lock", "Value", "Array", "Event"],
)
def test_a_host_bound_object_is_refused(dask: DaskCluster, make: object) -> None:
    obj = make()  # type: ignore[operator]
    with corral.Pool(cluster=dask.address) as pool:
        with pytest.raises(corral.SharingError, match="cluster"):
            pool.map(targets.square, [1, obj, 3])
        with pytest.raises(corral.SharingError, match="cluster"):
            pool.apply(functools.partial(targets.add, obj), (1,))


def test_a_corral_process_or_pool_is_refused(dask: DaskCluster) -> None:
    proc = corral.Process(target=targets.square, args=(1,))
    with corral.Pool(cluster=dask.address) as pool:
        with pytest.raises(corral.SharingError, match="Process"):
            pool.apply(targets.identity, (proc,))
        with pytest.raises(corral.SharingError, match="Pool"):
            pool.apply(targets.identity, (pool,))


# dask itself only warns, at connect time, then lets the work go on.
@pytest.mark.filterwarnings("ignore:Mismatched versions found")
def test_mismatched_versions_fail_at_the_call(
    dask: DaskCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    import distributed.versions

    real = distributed.versions.get_versions

    def older_client(packages: object = None) -> dict[str, dict[str, object]]:
        versions = real(packages)  # type: ignore[arg-type]
        versions["packages"]["corral"] = "0.0.1"
        return versions

    monkeypatch.setattr(distributed.versions, "get_versions", older_client)
    with pytest.raises(ValueError, match=r"corral: client: 0\.0\.1"):
        corral.Pool(cluster=dask.address)
