"""The cluster engine: the same jobs as the local engine, run as dask tasks.

    fronts (any thread)       scheduler thread                      dask workers
    -------------------       ----------------                      ------------
    add_job / add_items  -->  jobs (FIFO) -> chunk of items
                              payload (cloudpickle, host-bound
                              objects refused)  --client.submit-->  _cluster_node.run_chunk
                                                                    (a corral.Pool kept per
                                                                    node runs the items)
                              inbox <--done callback-- outcomes per item
                              inbox <--dask event----- reports while it runs
                              deliver to the job, in its order
                              dask worker died: resubmit, uncharged
    cancel / terminate  -->   stop variable (job ids, or all) <--polled by run_chunk--
                              client.run(release): node pools ended

Why a front of its own rather than a slot in ``Engine``: the local engine's loop is
built on poll() over sockets, pidfds and running words that a remote node does not
have, while dask reports by future callbacks. Both engines drive the same ``Job``
classes through the same calls (``take``, ``deliver``, ``abort``, ``cut_input``...),
so ``map``/``imap``/ordering/progress/cancel and the fronts are shared, and the
local hot path is untouched. What differs is what a "slot" is: here, a dask task
holding one chunk; its items are accounted for by the node's own corral.Pool.

A running chunk reports its outcomes as they come, at most once per report
interval (a dask event), and they are delivered at once; its final result repeats
them, and only the ones past what was reported are delivered. After its dask
worker's death the items not reported yet are resubmitted under a new key (so
dask's ``KilledWorker`` charges nothing), naming the dead chunk among their
``ancestors`` and preferring its host: the node there takes the outcomes the dead
chunk journaled (``_cluster_journal``) and runs only the others. No item is
delivered twice, and none that finished runs again.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import pickle
import queue
import threading
import traceback
import uuid
import weakref
from typing import Any

from .._exceptions import CorralError, TaskTimeout
from .._remote import decode_error
from .._workercrash import WorkerCrashed
from ._cluster_connect import ClusterConnection, connect
from ._cluster_node import forget_reports, release, run_chunk
from ._cluster_pickle import dumps
from ._engine import PoolStatistics, _mark_unpickling
from ._enginebase import EngineBase
from ._jobs import Job
from ._options import PoolOptions

__all__ = ["ClusterEngine"]

# How long one automatically sized chunk should run on a node. A dask task costs
# milliseconds of scheduling, so a chunk must run far longer than that; shorter
# chunks balance the load better and lose less to a dask worker's death.
TARGET_CHUNK_SECONDS = 0.5
# Automatic chunks: the first size, the growth per measured chunk, the largest.
FIRST_CHUNK = 16
CHUNK_GROWTH = 8
MAX_CHUNK = 1000
# Near the end of a known input, chunks shrink (so no node idles behind another's
# long last chunk), but not below this much measured work: each chunk costs a dask
# round trip and a start on its node, which a chunk of a few items would not pay
# for; a node may idle this long at the very end instead.
MIN_TAIL_SECONDS = 0.05
# Dask tasks in flight per unit of concurrency: a second one waits on the node while
# the first's result travels back, so the node never idles between chunks.
TASKS_PER_SLOT = 2
# A chunk whose dask workers died this many times in a row fails its items with a
# CorralError, rather than being resubmitted forever (a task that kills its node).
MAX_RESUBMITS = 5
# The scheduler keeps every topic's recent events for clients that ask later; the
# running chunks' reports are dropped there after this many (one round trip each
# time): the bound on the memory they hold on the scheduler.
FORGET_REPORTS_EVERY = 256
# A running chunk reports its outcomes to us at most once per report interval
# (``_cluster_node``). What finished within the interval before its dask worker's
# death may run again, so shorter is better; but every report is a message the
# scheduler relays, one per interval per running chunk. The interval is the running
# chunks (one per unit of concurrency) over REPORTS_PER_SECOND, the scheduler's
# share of reports, within [REPORT_MIN, REPORT_MAX]: 5 ms on a small cluster (close
# to a local pool's commit), 50 ms from 50 threads up.
REPORTS_PER_SECOND = 1000
REPORT_MIN = 0.005
REPORT_MAX = 0.05


def report_interval(processes: int) -> float:
    """How often each of ``processes`` running chunks may report (see above)."""
    return min(REPORT_MAX, max(REPORT_MIN, processes / REPORTS_PER_SECOND))


class RemoteChunk:
    """Items ``start``.. of one job, sent to the cluster as one dask task."""

    __slots__ = (
        "ancestors",
        "done",
        "future",
        "host",
        "items",
        "job",
        "key",
        "resubmits",
        "retried",
        "start",
    )

    def __init__(self, job: Job, start: int, items: list[Any]):
        self.job = job
        self.start = start
        self.items = items
        self.done = 0  # items 0..done-1 delivered (reported while the chunk ran)
        self.resubmits = 0
        self.retried = 0  # retries on the node counted so far (reports carry them)
        self.future: Any = None
        self.key = ""
        # The keys of the dead chunks whose rest this is (their journals hold outcomes
        # of items here), and the host the last of them ran on, if it reported.
        self.ancestors: tuple[str, ...] = ()
        self.host: str | None = None

    def part(self, at: int, size: int) -> RemoteChunk:
        """Items ``at``..``at + size - 1`` of this chunk, with its deaths, ancestors
        and host."""
        part = RemoteChunk(self.job, self.start + at, self.items[at : at + size])
        part.resubmits = self.resubmits
        part.ancestors = self.ancestors
        part.host = self.host
        return part


class Progress:
    """A running chunk's report of the outcomes it has so far (``first`` on)."""

    __slots__ = ("first", "host", "key", "payload")

    def __init__(self, key: str, first: int, payload: bytes, host: str):
        self.host = host
        self.key = key
        self.first = first
        self.payload = payload


class ClusterEngine(EngineBase):
    """Drives jobs on a dask cluster; the fronts use it as they use ``Engine``."""

    def __init__(self, options: PoolOptions, cluster: Any, processes: int | None):
        super().__init__(options)
        self.conn: ClusterConnection = connect(cluster)
        try:
            self.processes = processes or self.conn.total_threads() or 1
            self.token = uuid.uuid4().hex
            self.variable = _variable(self.conn.client, self.token)
            self.variable.set(([], False))
            self._start_node_pools()
            self.topic = f"corral-{self.token}"
            self.conn.client.subscribe_topic(self.topic, self._on_progress_event)
        except BaseException:
            self.conn.close()
            raise
        self.completed = self.retried = self.resubmitted = self.reports = 0
        self.flying: dict[str, RemoteChunk] = {}  # by dask key
        self.inbox: queue.SimpleQueue[RemoteChunk | Progress | None] = queue.SimpleQueue()
        self.job_ids: weakref.WeakKeyDictionary[Job, int] = weakref.WeakKeyDictionary()
        self.job_seq = itertools.count(1)
        self.stopped_jobs: set[int] = set()  # ids of the jobs the user cancelled
        self.seq = itertools.count(1)
        self.chunk_size: weakref.WeakKeyDictionary[Job, int] = weakref.WeakKeyDictionary()
        self.per_item: weakref.WeakKeyDictionary[Job, float] = weakref.WeakKeyDictionary()
        self.thread = threading.Thread(
            target=self._run, name=f"corral-cluster-scheduler-{id(self):x}", daemon=True
        )
        self.thread.start()
        _engines.add(self)
        _at_exit_once()

    # -- API for the fronts (any thread), as Engine's --

    def wake(self) -> None:
        self.inbox.put(None)

    def statistics(self) -> PoolStatistics:
        """As Engine's; ``workers_alive`` counts the cluster's threads, and
        ``workers_restarted`` the chunks run again after a dask worker died."""
        try:
            alive = self.conn.total_threads()
        except Exception:  # the scheduler is gone
            alive = 0
        return PoolStatistics(
            workers=self.processes,
            workers_alive=alive,
            workers_restarted=self.resubmitted,
            tasks_in_flight=sum(len(c.items) - c.done for c in list(self.flying.values())),
            tasks_completed=self.completed,
            tasks_retried=self.retried,
        )

    # -- The scheduler thread --

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug here must not leave callers hanging
            self.broken = exc
            traceback.print_exc()
        finally:
            self._abort_all(CorralError("the pool was terminated before this task finished"))
            self._stop_nodes()
            self.conn.close()
            # Hold no job after the end: a job's error may hold the caller's frames,
            # and the pool's finalizer holds this engine.
            while not self.inbox.empty():
                self.inbox.get_nowait()
            self.stopped_jobs.clear()
            self.done.set()

    def _loop(self) -> None:
        while True:
            if self.state == "terminate" or self.broken is not None:
                return
            if self.state == "close" and not self._busy():
                return
            self._dispatch()
            self._stop_cancelled()
            msg = self.inbox.get()
            while msg is not None or not self.inbox.empty():
                if isinstance(msg, Progress):
                    self._on_progress(msg)
                elif msg is not None:
                    self._on_done(msg)
                try:
                    msg = self.inbox.get_nowait()
                except queue.Empty:
                    break

    def _in_flight(self) -> bool:
        return bool(self.flying)

    # Handing out work.

    def _dispatch(self) -> None:
        limit = TASKS_PER_SLOT * self.processes
        while len(self.flying) < limit:
            chunk = self._next_chunk()
            if chunk is None:
                return
            self._submit(chunk)

    def _next_chunk(self) -> RemoteChunk | None:
        failed = None
        with self.lock:
            while self.jobs and (
                self.jobs[0].stopped or (not self.jobs[0].has_work() and self.jobs[0].input_done)
            ):
                self.jobs.popleft()
            for job in self.jobs:
                if job.has_work() and job.start_chunk():
                    start, items = job.take(self._size(job))
                    if job.failure is None:
                        return RemoteChunk(job, start, items)
                    failed = job  # (the caller shortened the list it lent)
                    break
        if failed is not None:
            failure = failed.take_failure()
            if failure is not None:
                failed.abort(failure)
            return self._next_chunk()
        return None

    def _size(self, job: Job) -> int:
        if job.fixed_chunksize is not None:
            return job.fixed_chunksize
        size = self._current_size(job)
        if job.input_done:  # all items known: chunks shrink as the end nears, so no
            # slot idles while another runs a long last chunk (guided self-scheduling)
            left = job.known_end() - job.cursor
            per_item = self.per_item.get(job)
            floor = int(MIN_TAIL_SECONDS / per_item) if per_item else 1
            size = min(size, max(1, floor, -(-left // (2 * self.processes))))
        job.chunk = size  # an imap's window follows the chunk size (see IMapJob.window)
        return size

    def _resubmit_size(self, chunk: RemoteChunk) -> int:
        """The parts a dead worker's rest is resubmitted in: as the tail is cut (a
        share of it per unit of concurrency, not below MIN_TAIL_SECONDS of work).
        The survivors take most of them while the dead worker's replacement starts;
        the replacement's first part, slow while its node pool starts, is small."""
        if chunk.job.fixed_chunksize is not None:
            return len(chunk.items)  # the caller's chunks, as asked
        per_item = self.per_item.get(chunk.job)
        floor = int(MIN_TAIL_SECONDS / per_item) if per_item else 1
        return max(1, floor, -(-len(chunk.items) // (2 * self.processes)))

    def _measured(self, job: Job, n: int, seconds: float) -> None:
        if job.fixed_chunksize is not None or n <= 0:
            return
        current = self._current_size(job)
        if n < current // 2:
            return
        per_item = seconds / n
        self.per_item[job] = per_item
        ideal = TARGET_CHUNK_SECONDS / per_item if per_item > 0 else MAX_CHUNK
        size = self.chunk_size[job] = int(max(1, min(ideal, current * CHUNK_GROWTH, MAX_CHUNK)))
        self.learn_chunk(job.fn, size)

    def _current_size(self, job: Job) -> int:
        """The job's automatic chunk size: measured, or else one growth step below the
        size the last call of the same function reached on this pool (as the local
        engine's ``Job``: a repeated call skips most of the ramp, a round trip per
        step), and FIRST_CHUNK at least."""
        size = self.chunk_size.get(job)
        if size is None:
            size = self.chunk_size[job] = max(
                FIRST_CHUNK, self.learned_chunk(job.fn) // CHUNK_GROWTH
            )
        return size

    def _job_id(self, job: Job) -> int:
        job_id = self.job_ids.get(job)
        if job_id is None:
            job_id = self.job_ids[job] = next(self.job_seq)
        return job_id

    def _submit(self, chunk: RemoteChunk) -> None:
        job = chunk.job
        node_options = self._node_options()
        # The whole token: dask takes two submits of one key for one task, so two
        # pools whose keys met (a 32-bit prefix could) would share results.
        chunk.key = f"corral-{job.name[:40]}-{self.token}-{next(self.seq)}"
        try:
            # The items pickled apart: a node that can't unpickle one of them says
            # so (``_undecodable``), rather than failing the whole chunk.
            items = dumps(chunk.items)
            payload = dumps(
                (
                    self.token,
                    self._job_id(job),
                    chunk.key,
                    job.fn,
                    job.mode,
                    items,
                    chunk.start,
                    chunk.ancestors,
                    job.timeout,
                    job.retries,
                    node_options,
                    report_interval(self.processes),
                )
            )
        except Exception as exc:
            self._pickling_failed(chunk, exc)
            return
        client = self.conn.client
        # The rest of a dead chunk prefers its host, where the chunk's journal holds
        # what finished there; elsewhere only if that host has no worker left. (On
        # many hosts, the survivors there carry the rest, up to a chunk's work.)
        where: dict[str, Any] = {}
        if chunk.ancestors and chunk.host is not None:
            where = {"workers": [chunk.host], "allow_other_workers": True}
        future = client.submit(run_chunk, payload, key=chunk.key, pure=False, retries=0, **where)
        chunk.future = future
        self.flying[chunk.key] = chunk
        future.add_done_callback(lambda _f, c=chunk: self.inbox.put(c))

    def _start_node_pools(self) -> None:
        """Have every dask worker, and each one that joins later, start its pool now
        rather than at its first chunk (``_cluster_warm``)."""
        from ._cluster_warm import NodePoolStarter, plugin_name

        try:
            options = dumps(self._node_options())
        except Exception:  # an initializer that can't be pickled: its chunks will say
            return
        plugin = NodePoolStarter(self.token, options)
        # Only a head start: if a worker can't take the plugin, its pool starts
        # with its first chunk, and that chunk reports what is wrong.
        with contextlib.suppress(Exception):
            self.conn.client.register_plugin(plugin, name=plugin_name(self.token))

    def _node_options(self) -> dict[str, Any]:
        """The options of the pools kept on the nodes."""
        opts = self.options
        return {
            "initializer": opts.initializer,
            "initargs": opts.initargs,
            "maxtasksperchild": opts.maxtasksperchild,
            "max_memory_per_child": opts.max_memory_per_child,
            "initializer_timeout": opts.initializer_timeout,
        }

    def _pickling_failed(self, chunk: RemoteChunk, exc: Exception) -> None:
        """Find the item(s) that can't be pickled; fail them alone, send the rest."""
        job = chunk.job
        try:
            dumps(job.fn)
        except Exception as fn_exc:
            self._fail_all(chunk, fn_exc)
            return
        if len(chunk.items) == 1:
            exc.add_note(
                f"corral: raised while pickling {job.describe(chunk.start, chunk.items[0])}"
            )
            self._finish(chunk, 0, [None], {0: exc})
            return
        for i in range(len(chunk.items)):
            self._submit(chunk.part(i, 1))

    # Outcomes coming back.

    def _on_progress_event(self, event: tuple[float, Any]) -> None:
        """(The client's event loop) a running chunk reported outcomes: queue them."""
        key, first, payload, host = event[1]
        self.inbox.put(Progress(key, first, payload, host))

    def _on_progress(self, progress: Progress) -> None:
        self.reports += 1
        if self.reports % FORGET_REPORTS_EVERY == 0:
            with contextlib.suppress(Exception):
                self.conn.client.run_on_scheduler(forget_reports, topic=self.topic)
        chunk = self.flying.get(progress.key)
        if chunk is None or (chunk.job.stopped and chunk.job.kill_running):
            return  # finished (its result covers these) or stopped meanwhile
        chunk.host = progress.host
        skip = chunk.done - progress.first
        if skip < 0:
            return  # a report went missing: the chunk's result covers the gap
        try:
            _, records, _, retried = pickle.loads(progress.payload)
        except BaseException:
            return  # the chunk's result carries them too, or fails them
        self._count_retries(chunk, retried)
        self._deliver_records(chunk, records[skip:])

    def _on_done(self, chunk: RemoteChunk) -> None:
        if self.flying.pop(chunk.key, None) is None:
            return
        job = chunk.job
        future = chunk.future
        if job.stopped and job.kill_running:
            return
        status = future.status
        if status == "finished":
            try:
                outcome = pickle.loads(future.result())
            except BaseException as exc:
                exc.add_note("corral: raised while unpickling the chunk's results")
                self._fail_all(chunk, exc)
                return
            if outcome[0] == "rerun":  # dask re-ran it after a death: refused
                self._resubmit(chunk, None)
            elif outcome[0] == "undecodable":
                self._undecodable(chunk, outcome[1])
            else:
                self._deliver(chunk, outcome)
            return
        error: BaseException | None = future.exception() if status == "error" else None
        if error is not None and not _is_worker_loss(error):
            self._fail_all(chunk, error)
            return
        self._resubmit(chunk, error)

    def _undecodable(self, chunk: RemoteChunk, record: Any) -> None:
        """The node could not unpickle an item of the chunk, and ran none of them:
        submit each half again, until the item is alone, and fail it alone (as one
        machine's pool does); the others run. ``record`` is the node's error."""
        n = len(chunk.items)
        if n > 1:
            half = -(-n // 2)
            self._submit(chunk.part(0, half))
            self._submit(chunk.part(half, n - half))
            return
        err = decode_error(record, "unpickling the task")
        err.add_note(
            "corral: raised on a cluster node while unpickling "
            + chunk.job.describe(chunk.start, chunk.items[0])
        )
        _mark_unpickling(err)
        self._finish(chunk, 0, [None], {0: err})

    def _resubmit(self, chunk: RemoteChunk, error: BaseException | None) -> None:
        """The chunk's dask worker died (``KilledWorker``, a lost task, or a re-run
        that the node refused): run the rest of it again, uncharged, under a new key.
        What it had reported is delivered already."""
        job = chunk.job
        if self.state == "terminate" or job.stopped:
            return
        if chunk.done >= len(chunk.items):
            return  # every outcome was reported before the result was lost: none left
        rest = chunk.part(chunk.done, len(chunk.items) - chunk.done)
        rest.ancestors = (*chunk.ancestors, chunk.key)  # its journal holds what finished
        chunk = rest
        chunk.resubmits += 1
        self.resubmitted += 1
        self.event("worker_died", 1)
        if chunk.resubmits > MAX_RESUBMITS:
            given_up = CorralError(
                f"the dask workers running {job.describe(chunk.start, chunk.items[0])} "
                f"and the {len(chunk.items) - 1} items after it died {chunk.resubmits} "
                f"times in a row (the last error: {error!r})"
            )
            self._fail_all(chunk, given_up)
            return
        for part in _split(chunk, self._resubmit_size(chunk)):
            self._submit(part)

    def _fail_all(self, chunk: RemoteChunk, exc: BaseException) -> None:
        """Every item of the chunk not delivered yet fails with ``exc``."""
        n = len(chunk.items) - chunk.done
        self._finish(chunk, chunk.done, [None] * n, dict.fromkeys(range(n), exc))

    def _deliver(self, chunk: RemoteChunk, outcome: tuple[Any, ...]) -> None:
        if outcome[0] == "stopped":
            return  # the job or the pool was stopped meanwhile
        _, records, seconds, retried = outcome
        self._count_retries(chunk, retried)
        self._measured(chunk.job, len(records), seconds)
        self._deliver_records(chunk, records[chunk.done :])

    def _count_retries(self, chunk: RemoteChunk, retried: int) -> None:
        """The node's retries of the chunk's items so far; counted before the
        outcomes they led to are delivered, as on one machine."""
        new = retried - chunk.retried
        if new > 0:
            chunk.retried = retried
            self.retried += new
            self.event("retried", new)

    def _deliver_records(self, chunk: RemoteChunk, records: list[tuple[bool, Any]]) -> None:
        """Outcomes of the chunk's items ``done``.. (as the node encoded them)."""
        at = chunk.done
        values: list[Any] = []
        errors: dict[int, BaseException] = {}
        for i, (ok, value) in enumerate(records):
            if ok:
                values.append(value)
            else:
                item = chunk.items[at + i]
                what = chunk.job.describe(chunk.start + at + i, item)
                errors[i] = _as_ours(decode_error(value, what), what, item)
                values.append(None)
        chunk.done += len(records)
        if records:
            self._finish(chunk, at, values, errors)

    def _finish(
        self, chunk: RemoteChunk, at: int, values: list[Any], errors: dict[int, BaseException]
    ) -> None:
        """Outcomes of the chunk's items ``at``.. reach their job."""
        self.completed += len(values)
        if errors:
            self.event("failed", len(errors))
        self.event("completed", len(values))
        chunk.job.deliver(chunk.start + at, values, errors)

    # Stopping.

    def _stop_cancelled(self) -> None:
        """Jobs cancelled by the user: tell the nodes, and drop their queued tasks.

        The stop variable lists every job cancelled so far, not only those with a
        chunk in flight here: dask's cancel ends our future at once, while its task
        runs on until its node next polls the variable.
        """
        newly = [
            c
            for c in self.flying.values()
            if c.job.kill_running and self._job_id(c.job) not in self.stopped_jobs
        ]
        if not newly:
            return
        self.stopped_jobs.update(self._job_id(c.job) for c in newly)
        with contextlib.suppress(Exception):
            # msgpack-able: a list, not a set
            self.variable.set((sorted(self.stopped_jobs), False))
        with contextlib.suppress(Exception):
            self.conn.client.cancel([c.future for c in newly])

    def _stop_nodes(self) -> None:
        """Stop every running chunk and end the pools on the nodes."""
        from ._cluster_warm import plugin_name

        futures = [c.future for c in self.flying.values()]
        self.flying.clear()
        with contextlib.suppress(Exception):  # (first: no new worker starts a pool)
            self.conn.client.unregister_worker_plugin(plugin_name(self.token))
        with contextlib.suppress(Exception):
            self.conn.client.unsubscribe_topic(self.topic)
        with contextlib.suppress(Exception):
            self.conn.client.run_on_scheduler(forget_reports, topic=self.topic)
        with contextlib.suppress(Exception):
            self.variable.set(([], True))
        with contextlib.suppress(Exception):
            self.conn.client.cancel(futures)
        with contextlib.suppress(Exception):
            self.conn.client.run(release, self.token, on_error="ignore")
        with contextlib.suppress(Exception):
            self.variable.delete()

    def _abort_all(self, exc: BaseException) -> None:
        if self.broken is not None:
            exc = self._broken_error()
        with self.lock:
            jobs = [j for j in self.jobs if j.has_work() or not j.input_done]
            self.jobs.clear()
        jobs += [c.job for c in self.flying.values()]
        seen: set[int] = set()
        for job in jobs:
            if id(job) not in seen and not job.stopped:
                seen.add(id(job))
                job.abort(exc)


def _split(chunk: RemoteChunk, size: int) -> list[RemoteChunk]:
    """A resubmitted rest, in parts of ``size``: dask's queue hands them to
    whichever node is free, rather than one long chunk to whichever node it
    landed on. Each part keeps the chunk's count of deaths."""
    return [chunk.part(at, size) for at in range(0, len(chunk.items), size)]


def _as_ours(err: BaseException, what: str, item: Any) -> BaseException:
    """An error the node's pool made (a timeout, a crash) names the item as the node
    saw it (its place in the chunk): name it as the caller's call does, and tag the
    item for a pipeline's StageError, as the local engine does."""
    if isinstance(err, TaskTimeout):
        ours: BaseException = TaskTimeout(err.timeout, what)
    elif isinstance(err, WorkerCrashed):
        ours = WorkerCrashed(err.exitcode, err.pid, what, err.attempts)
    else:
        return err
    ours.__cause__ = err.__cause__
    vars(ours)["_corral_item"] = item
    return ours


_engines: weakref.WeakSet[ClusterEngine] = weakref.WeakSet()
_at_exit_registered = False


def _at_exit_once() -> None:
    """Terminate cluster pools at exit, before dask's own exit handlers (which close
    the clients) run: atexit runs the last registered first, and this is registered
    after dask.distributed was imported."""
    global _at_exit_registered
    if not _at_exit_registered:
        _at_exit_registered = True
        atexit.register(_terminate_all)


def _terminate_all() -> None:
    for engine in list(_engines):
        with contextlib.suppress(Exception):
            engine.terminate()


def _variable(client: Any, token: str) -> Any:
    import distributed

    variable_class: Any = distributed.Variable
    return variable_class(f"corral-stop-{token}", client=client)


def _is_worker_loss(exc: BaseException | None) -> bool:
    """Did dask give up on the task because its workers died (not because it raised)?"""
    from distributed.scheduler import KilledWorker

    return isinstance(exc, KilledWorker) or type(exc).__name__ in (
        "CommClosedError",
        "FutureCancelledError",
    )
