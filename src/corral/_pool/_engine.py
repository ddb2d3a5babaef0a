"""The engine: worker slots, and the scheduler thread that feeds them.

    fronts (any thread)        scheduler thread                           worker slots
    -------------------        ----------------                           ------------
    add_job / add_items  --->  jobs (FIFO) -> chunk -> frame -> outbox --> run chunk, commit
    wake (a pipe)              poll(wake, channels, sentinels, deadline) <-- outcomes
                               commits -> job.deliver; size the next chunks
                               death -> account for every item it held (_on_death)
                               deadline / cancel -> kill the worker's tree

Nothing on the scheduler's path blocks on a worker: channels are non-blocking
(``_wire.Channel``), so a paused, slow or stuck worker only ever delays itself,
and deadlines are checked on every turn of the loop.

A *slot* is what runs chunks and can die. ``LocalWorker`` (a corral.Process with a
socketpair and a running word) is the one kind here; the engine uses only what
``WorkerSlot`` declares.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import multiprocessing
import multiprocessing.connection
import os
import select
import socket
import threading
import time
import traceback
import weakref
from dataclasses import dataclass
from multiprocessing import util
from typing import Any

from .._core._fdpass import FdHandle
from .._core._linux import proc_state
from .._core._shm import SharedMemory
from .._exceptions import CorralError, TaskTimeout, _describe_status
from .._process import Process
from .._remote import decode_error
from .._workercrash import BrokenPool, WorkerCrashed
from . import _segments
from ._enginebase import EngineBase
from ._jobs import Job
from ._log import LogReader, new_log
from ._options import PoolOptions
from ._segments import Segments
from ._wire import GONE, STOP, Channel, Frame, ItemSlice, decode, encode, pack_items
from ._worker import DECODING, RETURNED, WorkerSetup, worker_main

__all__ = ["Engine", "PoolStatistics"]

# Chunks a worker may hold beyond the one it is running. One keeps the worker busy
# while its previous result travels back; more would only unbalance the load.
PREFETCH = 1
# A prefetched chunk must be small: a big one would wait in a busy worker's socket
# while an idle worker could have run it.
PREFETCH_MAX_BYTES = 32 * 1024
# Nothing is prefetched behind a chunk that has been running longer than this (a
# few automatic chunks' worth): the wait behind it could be long.
PREFETCH_STALE = 0.1
# terminate(): how long busy workers get to act on SIGTERM (their teardown kills and
# reaps what they started) before they and their subtrees are SIGKILLed. Ctrl-C
# promises the parent's KeyboardInterrupt within 1 s, so this stays well below.
TERMINATE_GRACE = 0.5
# close()+join(): how long idle workers get to exit once told to stop. A stopped
# (SIGSTOPped) worker is killed at once rather than waited for.
CLOSE_GRACE = 30.0
# How often the shutdown loop looks for stopped workers.
STOPPED_CHECK = 0.05
# A worker that dies before it ever became ready this many times in a row breaks the
# pool (an import error under spawn, say), rather than being restarted forever.
MAX_EARLY_DEATHS = 3
# 64-bit words between two workers' running words: 8 puts each on a cache line of
# its own (64 bytes on x86-64 and most aarch64). A worker stores its word twice per
# item; two words on one line make the line travel between their cores at every
# store (false sharing). Larger costs only memory: 64 bytes a worker.
WORD_STRIDE = 8


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of a pool: see :meth:`corral.Pool.statistics`."""

    workers: int
    workers_alive: int
    workers_restarted: int
    tasks_in_flight: int
    tasks_completed: int
    tasks_retried: int

    __module__ = "corral"


class Chunk:
    """Items of one job sent to one worker together."""

    __slots__ = (
        "delivered",
        "frame",
        "indices",
        "items",
        "job",
        "seconds",
        "seq",
        "start",
        "started_at",
    )

    def __init__(
        self, job: Job, start: int, items: list[Any] | ItemSlice, indices: list[int] | None
    ):
        self.job = job
        self.start = start
        self.items = items
        self.indices = indices  # None: start, start+1, ...; else a lone re-run
        self.frame: Frame | None = None
        self.seq = 0
        self.started_at = 0.0
        self.delivered = 0  # items whose outcome arrived
        self.seconds = 0.0

    def index(self, i: int) -> int:
        """The job's index of this chunk's item ``i``."""
        return self.indices[i] if self.indices is not None else self.start + i


class WorkerSlot:
    """What runs chunks and can die: the engine's view of a worker.

    A slot holds the chunks sent to it, in the order it runs them; the first is the
    one running. It reports through the engine: ``ready``, commits, and its death
    (with what it was running then).
    """

    index: int
    chunks: collections.deque[Chunk]
    ready: bool
    retiring: bool
    kill_reason: str | None
    sent: int


class LocalWorker(WorkerSlot):
    """A worker process on this machine."""

    def __init__(self, index: int, proc: Process, channel: Channel, log: FdHandle):
        self.index = index
        self.proc = proc
        self.channel = channel
        self.log = log
        self.chunks: collections.deque[Chunk] = collections.deque()
        self.ready = False
        self.retiring = False
        self.kill_reason: str | None = None  # why the engine killed it, if it did
        self.sent = 0  # items handed to it, for maxtasksperchild
        self.init_started: float | None = None  # when its initializer began
        self.init_error: BaseException | None = None  # its initializer raised this
        self.pending_commit: tuple[Any, ...] | None = None  # a count, awaiting values

    def kill(self, reason: str) -> None:
        """SIGKILL the worker and its subtree (Process.kill freezes and kills the tree)."""
        if self.kill_reason is None:
            self.kill_reason = reason
        with contextlib.suppress(Exception):
            self.proc.kill()

    def stopped(self) -> bool:
        """Is the worker paused (SIGSTOP, a debugger)? It can't act on anything then."""
        pid = self.proc.pid
        return pid is not None and proc_state(pid) in ("T", "t")


_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


class Engine(EngineBase):
    """Worker slots plus the scheduler thread; shared by every front."""

    def __init__(self, options: PoolOptions):
        super().__init__(options)
        self.processes = options.processes
        self.stash: collections.deque[Chunk] = collections.deque()  # encoded, unsent
        self.workers: list[LocalWorker] = []
        self.segments = Segments()  # shared memory for large arguments, reused
        # Errors as concurrent.futures users expect them (set by ProcessPoolExecutor).
        self.stdlib_errors = False
        self.early_deaths = 0
        self.restarted = 0
        self.completed = 0
        self.retried = 0
        self.seq = itertools.count(1)
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # One running word per slot: (chunk seq << 32) | items of it started; each
        # on a cache line of its own (``WORD_STRIDE``).
        self.words = SharedMemory(8 * WORD_STRIDE * self.processes, what="pool running words")
        self.running = self.words.buf.cast("q")
        self._free_indices = collections.deque(range(self.processes))  # slots not in use
        self._starting = 0  # workers being started for add_job, outside the lock
        # The chunk the scheduler thread took (from a job or the stash) and has not
        # yet put in a worker's ``chunks`` or back in the stash, set and cleared under
        # the lock with the move: ``_wants_worker`` always sees it somewhere (while it
        # was encoded and sent, its task seemed to run nowhere, the worker about to
        # run it seemed idle, and a submit then started no worker for its own task),
        # and so does ``_abort_all`` if the scheduler fails meanwhile.
        self._held: Chunk | None = None
        if not options.start_on_demand:
            for _ in range(self.processes):
                self.workers.append(self._start_worker(self._free_indices.popleft()))
        # multiprocessing's exit handler joins (and terminates) child processes; in a
        # process started by multiprocessing or corral it runs instead of atexit.
        # This runs first, so the pool stops its own workers, in order.
        self._at_exit = util.Finalize(
            None, _terminate_ref, args=(weakref.ref(self),), exitpriority=100
        )
        self.thread = threading.Thread(
            target=self._run, name=f"corral-pool-scheduler-{id(self):x}", daemon=True
        )
        self.thread.start()
        _engines.add(self)

    # -- API for the fronts (any thread) --

    def wake(self) -> None:
        with self._wake_lock:  # never write to the fd number once it was closed
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.write(self._wake_w, b"x")

    def _on_new_work(self) -> None:
        self._grow_on_demand()

    def _grow_on_demand(self) -> None:
        """With ``start_on_demand``: more workers while the work waiting wants them."""
        while self.options.start_on_demand:
            with self.lock:
                start = self.state != "terminate" and self._wants_worker()
                if start:
                    self._starting += 1
            if not start:
                return
            self._start_on_demand()

    def _wants_worker(self) -> bool:
        """(Lock held.) On demand: is there more waiting work than idle workers?

        A worker counts as idle while it holds no chunk, ready or still starting; a
        single task waits for one worker, any other job (a map, whose input may not
        be read yet) for as many as there are.
        """
        if len(self.workers) + self._starting >= self.processes or not self._free_indices:
            return False
        idle = self._starting + sum(
            1 for w in self.workers if not w.chunks and not w.retiring and w.kill_reason is None
        )
        # (A stashed chunk waits for an idle worker; a held one is about to take one.)
        jobs = sum(
            1 if not j.prefetchable else self.processes
            for j in self.jobs
            if j.has_work() or not (j.input_done or j.stopped)
        )
        waiting = (self._held is not None) + len(self.stash) + jobs
        return idle < waiting

    def _start_on_demand(self) -> None:
        """Start one more worker, in the caller's thread (as the stdlib's submit does)."""
        try:
            with self.lock:
                index = self._free_indices.popleft()
            try:
                worker = self._start_worker(index)
            except BaseException:
                with self.lock:
                    self._free_indices.appendleft(index)
                raise
            with self.lock:
                self.workers.append(worker)
                self.workers.sort(key=lambda x: x.index)
        finally:
            with self.lock:
                self._starting -= 1

    def statistics(self) -> PoolStatistics:
        with self.lock:
            workers = list(self.workers)
        return PoolStatistics(
            workers=self.processes,
            workers_alive=sum(1 for w in workers if _is_alive(w)),
            workers_restarted=self.restarted,
            tasks_in_flight=sum(len(c.items) - c.delivered for w in workers for c in w.chunks),
            tasks_completed=self.completed,
            tasks_retried=self.retried,
        )

    # -- The scheduler thread --

    def _start_worker(self, index: int) -> LocalWorker:
        parent_end, child_end = multiprocessing.Pipe(duplex=True)
        opts = self.options
        self.running[index * WORD_STRIDE] = 0
        log = new_log()
        setup = WorkerSetup(
            opts.initializer,
            opts.initargs,
            opts.maxtasksperchild,
            opts.max_memory_per_child,
            f"corral worker {index + 1}/{self.processes}",
            self.words,
            index * WORD_STRIDE,
            log,
        )
        proc = opts.context.Process(
            target=worker_main,
            args=(child_end, setup),
            name=f"corral-pool-worker-{index + 1}",
            daemon=True,
        )
        try:
            proc.start()
        except BaseException:
            log.close()
            raise
        finally:
            child_end.close()
        sock = socket.socket(fileno=os.dup(parent_end.fileno()))
        parent_end.close()
        return LocalWorker(index, proc, Channel(sock, self.segments), log)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug here must not leave callers hanging
            self.broken = exc
            traceback.print_exc()
            # Its frames' locals (this engine, a worker) would keep the workers'
            # files open through a cycle until the garbage collector runs; the
            # traceback itself stays, for the callers' errors.
            traceback.clear_frames(exc.__traceback__)
        finally:
            self._abort_all(CorralError("the pool was terminated before this task finished"))
            self._shutdown_workers(kill=True)
            with self._wake_lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1
            self.running.release()
            self.words.close()
            self.segments.close()
            self._at_exit.cancel()
            self.done.set()

    def _loop(self) -> None:
        while True:
            if self.state == "terminate" or self.broken is not None:
                return
            self._dispatch()
            self._kill_cancelled()
            # After the dispatch: a task that fails to pickle is finished inside it,
            # and may have been the last work of a closed pool (nothing would wake
            # the poll below then).
            if self.state == "close" and not self._busy():
                self._shutdown_workers(kill=False)
                return
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            fds: dict[int, tuple[LocalWorker, bool]] = {}
            for w in self.workers:
                if not w.channel.eof:
                    events = select.POLLIN | (select.POLLOUT if w.channel.wants_write else 0)
                    poller.register(w.channel.fileno(), events)
                    fds[w.channel.fileno()] = (w, False)
                poller.register(w.proc.sentinel, select.POLLIN)
                fds[w.proc.sentinel] = (w, True)
            timeout = self._next_deadline()
            ready = poller.poll(None if timeout is None else max(0, int(timeout * 1000) + 1))
            dead: list[LocalWorker] = []
            for fd, events in ready:
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    continue
                w, is_sentinel = fds[fd]
                if is_sentinel:
                    dead.append(w)
                    continue
                if events & select.POLLOUT:
                    w.channel.flush()
                if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    self._handle(w, w.channel.receive())
            for w in dead:
                if w in self.workers:
                    self._on_death(w)
            self._check_deadlines()
            self.segments.trim()
            for w in self.workers:
                w.channel.send_freed()

    def _in_flight(self) -> bool:
        return bool(self.stash) or any(w.chunks for w in self.workers)

    # Handing out work.

    def _dispatch(self) -> None:
        # Idle workers first: a chunk must never wait behind a running one while a
        # worker is idle. Then one more chunk each, for workers that will want it soon.
        for prefetch in (False, True):
            for w in self.workers:
                if w.chunks if not prefetch else not w.chunks:
                    continue
                self._feed(w)

    def _feed(self, w: LocalWorker) -> None:
        """Send ``w`` chunks while it has room for them."""
        maxtasks = self.options.maxtasksperchild
        while (
            w.ready
            and not w.retiring
            and w.kill_reason is None
            and not w.channel.broken
            and len(w.chunks) < self._slots(w)
            and (maxtasks is None or w.sent < maxtasks)
        ):
            chunk = self._next_chunk(w)
            if chunk is None:
                break
            assert chunk.frame is not None
            if w.chunks and (
                len(chunk.frame.data) > PREFETCH_MAX_BYTES or not chunk.job.prefetchable
            ):
                with self.lock:
                    self.stash.appendleft(chunk)  # for the next idle worker
                    self._held = None
                break
            if not chunk.job.start_chunk():
                chunk.frame.discard()
                self._held = None
                continue
            w.channel.send(chunk.frame)
            chunk.frame = None
            w.sent += len(chunk.items)
            if not w.chunks:
                chunk.started_at = time.monotonic()
            with self.lock:
                w.chunks.append(chunk)
                self._held = None

    def _slots(self, w: LocalWorker) -> int:
        if not w.chunks:
            return 1
        head = w.chunks[0]
        # A chunk with a deadline runs alone: its clock starts when it is sent. And
        # nothing is queued behind a chunk that has run long already: it might run
        # much longer, and what waits behind it can't be taken back.
        if head.job.timeout is not None or time.monotonic() - head.started_at > PREFETCH_STALE:
            return 1
        return 1 + PREFETCH

    def _next_chunk(self, w: LocalWorker) -> Chunk | None:
        maxtasks = self.options.maxtasksperchild
        while self.stash:
            with self.lock:
                chunk = self.stash.popleft()
                self._held = chunk
            if chunk.job.stopped:
                if chunk.frame is not None:
                    chunk.frame.discard()
                self._held = None
                continue
            if maxtasks is not None and len(chunk.items) > maxtasks - w.sent:
                if chunk.frame is not None:
                    chunk.frame.discard()
                self._requeue(chunk, range(len(chunk.items)))
                self._held = None
                continue
            if w.chunks and chunk.job.timeout is not None:
                with self.lock:
                    self.stash.appendleft(chunk)
                    self._held = None
                return None
            return chunk
        while True:
            with self.lock:
                self._drop_finished_jobs()
                job = next((j for j in self.jobs if j.has_work()), None)
                if job is None:
                    return None
                if w.chunks and job.timeout is not None:
                    return None  # it needs an idle worker
                if job.solo:
                    index, item = job.solo.popleft()
                    chunk = Chunk(job, index, [item], [index])
                else:
                    n = job.next_size()
                    if maxtasks is not None:
                        n = min(n, maxtasks - w.sent)
                    start, items = job.take_slice(n)
                    chunk = Chunk(job, start, items, None)
                self._held = chunk
            if job.failure is not None:  # (the caller shortened the list it lent)
                self._held = None
                self._end_failed(job)
                continue
            if self._encode(chunk):
                return chunk
            self._held = None  # (failed alone, or its items re-queued)

    def _drop_finished_jobs(self) -> None:
        while self.jobs and (
            self.jobs[0].stopped or (not self.jobs[0].has_work() and self.jobs[0].input_done)
        ):
            self.jobs.popleft()

    def _encode(self, chunk: Chunk) -> bool:
        """Pickle the chunk; on failure split it, or fail the lone item. True if sendable."""
        job = chunk.job
        chunk.seq = next(self.seq)
        try:
            # Items that are plain scalars travel as dump_scalars' bytes (_wire): in
            # a few ns an item rather than a Pickler's 20.
            items = pack_items(chunk.items)
            chunk.frame = encode(
                (chunk.seq, job.mode, job.fn, items, job.commit_every, job.commit_seconds),
                self.segments,
            )
            return True
        except BaseException as exc:  # SystemExit from a __reduce__ too: that task's error
            if job.shortened():  # (as the chunk was read: not the items' fault)
                self._end_failed(job)
            elif len(chunk.items) > 1:
                self._requeue(chunk, range(len(chunk.items)))
            else:
                exc.add_note(
                    f"corral: raised while pickling {job.describe(chunk.start, chunk.items[0])}"
                )
                self._finish(chunk, 0, [None], {0: exc})
            return False

    def _end_failed(self, job: Job) -> None:
        """End a job that failed by itself (``Job.shortened``) with its error."""
        failure = job.take_failure()
        if failure is not None:
            job.abort(failure)

    def _requeue(self, chunk: Chunk, positions: range) -> None:
        """Queue some of a chunk's items to run one by one, ahead of new work; uncharged."""
        job = chunk.job
        if job.stopped or not positions:
            return
        # Read before the check: a list cut meanwhile (by the caller's thread) reads
        # GONE, even if it has grown back since.
        again = [(chunk.index(i), chunk.items[i]) for i in positions]
        if job.shortened(any(item is GONE for _, item in again)):
            self._end_failed(job)  # the items to run again are gone from the list
            return
        with self.lock:
            job.solo.extendleft(reversed(again))
            if job not in self.jobs:
                self.jobs.appendleft(job)

    # Outcomes coming back.

    def _handle(self, w: LocalWorker, frames: list[Any]) -> None:
        for body, nbuf, fd in frames:
            if w.pending_commit is not None and not nbuf and self._commit_stored(w, body):
                continue
            try:
                msg = decode(body, nbuf, fd, w.channel)
            except BaseException as exc:  # SystemExit from a __reduce__ too
                if w.pending_commit is not None:  # values that can't be unpickled here
                    _, count, _, seconds, final, retiring = w.pending_commit
                    w.pending_commit = None
                    exc.add_note("corral: raised while unpickling the task's result")
                    _mark_unpickling(exc)
                    failed: dict[int, BaseException] = dict.fromkeys(range(count), exc)
                    self._commit(w, [None] * count, failed, seconds, final, retiring)
                    continue
                raise
            if w.pending_commit is not None:
                _, count, records, seconds, final, retiring = w.pending_commit
                w.pending_commit = None
                chunk = w.chunks[0]
                decoded = {}
                for i, record in records.items():
                    at = chunk.delivered + i
                    what = chunk.job.describe(chunk.index(at), chunk.items[at])
                    decoded[i] = decode_error(record, what)
                self._commit(w, msg, decoded, seconds, final, retiring)
                continue
            kind = msg[0]
            if kind == "r":
                w.pending_commit = msg
            elif kind == "initializing":
                w.init_started = time.monotonic()
            elif kind == "ready":
                w.ready = True
                self.early_deaths = 0
            elif kind == "init":
                # The pool breaks when this worker has exited (it does at once), so
                # that what its initializer logged or put has been flushed by then.
                err = decode_error(msg[1], "the pool's initializer")
                w.init_error = BrokenPool(f"the pool's initializer raised {err!r}")
                w.init_error.__cause__ = err
            elif kind == "bad":
                chunk = w.chunks.popleft()
                self._next_head(w)
                if len(chunk.items) > 1:
                    self._requeue(chunk, range(len(chunk.items)))
                else:
                    err = decode_error(msg[1], "unpickling the task")
                    err.add_note(
                        "corral: raised in the worker while unpickling "
                        + chunk.job.describe(chunk.start, chunk.items[0])
                    )
                    _mark_unpickling(err)
                    self._finish(chunk, 0, [None], {0: err})

    def _commit(
        self,
        w: LocalWorker,
        values: list[Any],
        errors: dict[int, BaseException],
        seconds: float,
        final: bool = False,
        retiring: bool = False,
    ) -> None:
        chunk, at = self._committed(w, len(values), seconds, final, retiring)
        self._finish(chunk, at, values, errors)

    def _commit_stored(self, w: LocalWorker, body: memoryview) -> bool:
        """The values of the pending commit, put where they go still pickled, if
        its job can (``Job.store_pickled``); False to unpickle them as usual."""
        assert w.pending_commit is not None
        _, count, records, seconds, final, retiring = w.pending_commit
        chunk = w.chunks[0]
        if (
            records
            or chunk.indices is not None
            or not chunk.job.store_pickled(chunk.start + chunk.delivered, count, body)
        ):
            return False
        w.pending_commit = None
        chunk, _ = self._committed(w, count, seconds, final, retiring)
        self.completed += count
        self.event("completed", count)
        chunk.job.deliver_stored(count)
        return True

    def _committed(
        self, w: LocalWorker, count: int, seconds: float, final: bool, retiring: bool
    ) -> tuple[Chunk, int]:
        """``count`` more outcomes of ``w``'s head chunk: (the chunk, the first's position)."""
        chunk = w.chunks[0]
        at = chunk.delivered
        chunk.delivered += count
        chunk.seconds += seconds
        if final:
            w.chunks.popleft()
            w.retiring = w.retiring or retiring
            chunk.job.measured(chunk.delivered, chunk.seconds)
            self._next_head(w)
        return chunk, at

    def _next_head(self, w: LocalWorker) -> None:
        if w.chunks:
            w.chunks[0].started_at = time.monotonic()

    def _finish(
        self, chunk: Chunk, at: int, values: list[Any], errors: dict[int, BaseException]
    ) -> None:
        """Outcomes of ``chunk``'s items ``at``.. reach their job."""
        self.completed += len(values)
        if errors:
            self.event("failed", len(errors))
        self.event("completed", len(values))
        if chunk.indices is not None or len(values) == 1:
            for i, value in enumerate(values):
                err = {0: errors[i]} if i in errors else {}
                chunk.job.deliver(chunk.index(at + i), [value], err)
        else:
            chunk.job.deliver(chunk.start + at, values, errors)

    # Deaths, deadlines and cancels.

    def _on_death(self, w: LocalWorker) -> None:
        """Account for every item the dead worker held, then replace it."""
        self._handle(w, w.channel.drain())  # what it sent before dying
        w.proc.join(5)
        exitcode, pid = w.proc.exitcode, w.proc.pid
        word = self.running[w.index * WORD_STRIDE]
        decoding = word == DECODING  # it died unpickling its head chunk
        run_seq, started = word >> 32, word & (RETURNED - 1)
        returned = bool(word & RETURNED)  # the last item started had returned
        chunks = list(w.chunks)
        w.chunks.clear()
        w.channel.close()
        w.proc.close()
        log_seq, log_first, records = LogReader.read(w.log)
        w.log.close()
        if w.init_error is not None and self.broken is None:
            self.broken = w.init_error
        if not w.ready:
            if w.kill_reason == "init":
                self.broken = BrokenPool(
                    f"the pool's initializer did not finish within {self.options.init_deadline} s"
                )
            elif not chunks:
                self.early_deaths += 1
                if self.early_deaths >= MAX_EARLY_DEATHS and self.broken is None:
                    self.broken = BrokenPool(
                        f"{MAX_EARLY_DEATHS} workers in a row died before they were ready "
                        f"(the last one {_describe_status(exitcode)})"
                    )
        if not w.retiring and w.kill_reason is None and w.ready:
            self.event("worker_died", 1)
        with self.lock:
            self.workers.remove(w)
        if self.state != "terminate" and self.broken is None:
            replacement = self._start_worker(w.index)
            with self.lock:
                self.workers.append(replacement)
                self.workers.sort(key=lambda x: x.index)
            self.restarted += 1
        # A count whose values never came: those items finished; the log may have them.
        pending = w.pending_commit[1] if w.pending_commit is not None else 0
        for n, chunk in enumerate(chunks):
            if chunk.job.stopped:
                continue
            if decoding and n == 0:
                self._decode_death(w, chunk, exitcode, pid)
                continue
            if chunk.seq != run_seq:  # never started
                self._requeue(chunk, range(chunk.delivered, len(chunk.items)))
                continue
            logged = (
                {log_first + k: rec for k, rec in enumerate(records)}
                if chunk.seq == log_seq
                else {}
            )
            finished = chunk.delivered + (pending if n == 0 else 0)
            for pos in range(chunk.delivered, started):
                if pos in logged:
                    self._deliver_logged(chunk, pos, *logged[pos])
                elif pos < finished or pos < started - 1 or returned:
                    self._lost(w, chunk, pos, exitcode, pid)
                else:  # the item it was running
                    self._charge_running(w, chunk, pos, exitcode, pid)
            self._requeue(chunk, range(started, len(chunk.items)))

    def _decode_death(
        self, w: LocalWorker, chunk: Chunk, exitcode: int | None, pid: int | None
    ) -> None:
        """The worker died unpickling ``chunk``: split it to find the item, or charge it."""
        left = range(chunk.delivered, len(chunk.items))
        if len(left) > 1:
            self._requeue(chunk, left)  # each alone: the next death names the item
        else:
            self._charge_running(w, chunk, chunk.delivered, exitcode, pid, "unpickling it")

    def _deliver_logged(self, chunk: Chunk, i: int, ok: bool, obj: Any) -> None:
        """An outcome the dead worker had logged but not committed."""
        if ok:
            self._finish(chunk, i, [obj], {})
            return
        if not isinstance(obj, BaseException):
            obj = decode_error(obj, chunk.job.describe(chunk.index(i), chunk.items[i]))
        self._finish(chunk, i, [None], {0: obj})

    def _lost(
        self, w: LocalWorker, chunk: Chunk, i: int, exitcode: int | None, pid: int | None
    ) -> None:
        """An item that finished, whose outcome died with its worker: never re-run."""
        job = chunk.job
        what = job.describe(chunk.index(i), chunk.items[i])
        err: BaseException
        if w.kill_reason == "timeout" and job.timeout is not None:
            # Killed at its deadline while its result was still on the way.
            err = TaskTimeout(job.timeout, what + " (it had finished; its result was late)")
        else:
            err = WorkerCrashed(exitcode, pid, what + " (it had finished; its result was lost)")
        _tag(err, chunk.items[i])
        self._finish(chunk, i, [None], {0: err})

    def _charge_running(
        self,
        w: LocalWorker,
        chunk: Chunk,
        i: int,
        exitcode: int | None,
        pid: int | None,
        doing: str = "",
    ) -> None:
        """The item that was running when its worker died: one attempt spent."""
        reason = w.kill_reason
        if reason in ("cancel", "terminate"):
            return
        job = chunk.job
        index = chunk.index(i)
        attempts = job.tries.get(index, 0) + 1
        job.tries[index] = attempts
        if attempts <= job.retries and not job.stopped:
            self.retried += 1
            self.event("retried", 1)
            self._requeue(chunk, range(i, i + 1))
            return
        what = job.describe(index, chunk.items[i])
        err: BaseException
        if reason == "timeout":
            assert job.timeout is not None
            err = TaskTimeout(job.timeout, what)
        else:
            err = WorkerCrashed(exitcode, pid, what, attempts)
            if doing:
                err.add_note(f"corral: the worker died {doing}")
        _tag(err, chunk.items[i])
        self._finish(chunk, i, [None], {0: err})

    def _next_deadline(self) -> float | None:
        now = time.monotonic()
        deadlines = [d for w in self.workers if (d := self._deadline(w)) is not None]
        if (trim := self.segments.next_trim()) is not None:
            deadlines.append(trim)  # idle shared memory to give back
        if any(w.channel.holding for w in self.workers):  # results the caller may drop
            deadlines.append(now + _segments.IDLE_SECONDS)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def _deadline(self, w: LocalWorker) -> float | None:
        if w.kill_reason is not None:
            return None
        if not w.ready:
            init = self.options.init_deadline
            if init is None or w.init_started is None:
                return None
            return w.init_started + init
        if w.chunks and w.chunks[0].job.timeout is not None:
            head = w.chunks[0]
            return head.started_at + head.job.timeout  # type: ignore[operator]
        return None

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for w in self.workers:
            deadline = self._deadline(w)
            if deadline is not None and now >= deadline:
                w.kill("init" if not w.ready else "timeout")

    def _kill_cancelled(self) -> None:
        for w in self.workers:
            if w.chunks and w.chunks[0].job.kill_running and w.kill_reason is None:
                w.kill("cancel")

    # Shutting down.

    def _shutdown_workers(self, kill: bool) -> None:
        """Stop every worker: idle ones by message, busy ones (if ``kill``) by SIGTERM.

        Both let the worker's own teardown kill and reap whatever it started; what is
        still alive after the grace period, or is paused, is SIGKILLed with its
        subtree. Never blocks on a worker's socket.
        """
        for w in self.workers:
            if w.stopped():
                w.kill("terminate")
            elif not w.chunks or not kill:
                w.channel.send(STOP)
            else:
                w.kill_reason = w.kill_reason or "terminate"
                with contextlib.suppress(Exception):
                    w.proc.terminate()
        deadline = time.monotonic() + (TERMINATE_GRACE if kill else CLOSE_GRACE)
        alive = [w for w in self.workers if w.proc.exitcode is None]
        while alive:
            left = deadline - time.monotonic()
            if left <= 0:
                for w in alive:
                    w.kill("terminate")
                break
            for w in alive:
                w.channel.flush()
                if w.stopped():
                    w.kill("terminate")
            multiprocessing.connection.wait(
                [w.proc.sentinel for w in alive], min(left, STOPPED_CHECK)
            )
            alive = [w for w in alive if w.proc.exitcode is None]
        for w in self.workers:
            with contextlib.suppress(ValueError):
                w.proc.join()
            w.channel.close()
            w.log.close()
            # Not closed: a caller may still join() it (the executor's _processes, as
            # the stdlib's); its fds go with the object, dropped just below.
        with self.lock:
            self.workers = []

    def _abort_all(self, exc: BaseException) -> None:
        if self.broken is not None:
            exc = self._broken_error()
        with self.lock:
            self._drop_finished_jobs()
            jobs = list(self.jobs)
            self.jobs.clear()
        seen = set()
        held = [self._held] if self._held is not None else []
        for chunk in itertools.chain(held, self.stash, *(w.chunks for w in self.workers)):
            jobs.append(chunk.job)
            if chunk.frame is not None:
                chunk.frame.discard()
        for job in jobs:
            if id(job) not in seen:
                seen.add(id(job))
                job.abort(exc)
        self.stash.clear()


def _is_alive(w: LocalWorker) -> bool:
    try:
        return w.proc.is_alive()
    except ValueError:  # closed by the scheduler a moment ago: it died
        return False


def _tag(err: BaseException, item: Any) -> None:
    """Name the item an engine-made error is about (a pipeline's StageError reads it)."""
    vars(err)["_corral_item"] = item


def _mark_unpickling(err: BaseException) -> None:
    """An error unpickling a task or a result: an executor's future reports it as a
    ``TransferError`` (a BrokenProcessPool), as the stdlib's users expect."""
    vars(err)["_corral_unpickling"] = True


def _terminate_ref(ref: weakref.ref[Engine]) -> None:
    engine = ref()
    if engine is not None:
        engine.terminate()


def _terminate_all_at_exit() -> None:
    for engine in list(_engines):
        with contextlib.suppress(Exception):
            engine.terminate()


import atexit  # noqa: E402

atexit.register(_terminate_all_at_exit)
# A forked child (a worker, or the user's own fork) owns none of its parent's pools.
os.register_at_fork(after_in_child=_engines.clear)
