"""The node side of a cluster pool: what one dask task runs, in a dask worker.

    client (ClusterEngine)                      dask worker process (this module)
    ----------------------                      ---------------------------------
    submit(run_chunk, payload) --dask-->         run_chunk: unpickle (token, job, fn, items..)
                                                   outcomes the ancestors journaled here
                                                   the corral.Pool kept for ``token`` here
                                                   imap over the other items, each outcome
                                                   journaled on the host as it ends
    stop variable (job ids, or all) <--poll--      every STOP_POLL s: stopped? cancel imap
    <--dask event (key, first, outcomes)--       new outcomes, at most every report interval
    <--dask-- ("done", outcomes, seconds) or ("stopped",)
    client.run(release, token) ---------->       terminate the pool kept for ``token``

The items run in a ``corral.Pool`` kept per (client-side pool, dask worker process),
so every guarantee of the local pool holds on the node: ``task_timeout`` kills the
item's whole tree, ``retries`` re-runs only the item that crashed, and an item that
kills its own process costs one attempt of that item, never the dask worker (the
pool's workers are corral children of the dask worker, not the dask worker itself).

The kept pool ends when the client-side pool ends (``release``), when a terminate
is signalled through the stop variable, when it has been idle for
``KEPT_IDLE_SECONDS``, and, whatever happens, with its dask worker: corral's
lifeline kills a pool's workers and their subtrees when their parent dies.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import pickle
import threading
import time
from typing import Any

from .._core import _linux
from .._remote import dumps, encode_error

# The node side is a user of corral's public Pool, as the Executor and the Pipeline
# are: it takes it from the package (the front, in turn, picks the cluster engine).
from . import Pool
from . import _cluster_journal as _journal
from ._worker import MODE_MAP

__all__ = ["forget_reports", "ran_before", "release", "run_chunk"]

# How often a running chunk asks the scheduler whether it was stopped. The promise
# is a stop within 1 s on every node; each poll is one round trip to the scheduler.
STOP_POLL = 0.2
# A running chunk reports its outcomes to the client (a dask event) at once after a
# quiet spell, a stream of fast ones in batches, at most once per report interval:
# the client sets it by the cluster's size (``_cluster.report_interval``).
# A report goes through the scheduler, which keeps the latest ones (up to
# ``_cluster.FORGET_REPORTS_EVERY``) in memory: it carries at most this much of
# pickled outcomes. What does not fit (a large result) goes with the chunk's
# result, by dask's gather, which keeps nothing on the scheduler. Larger lets more
# of a dask worker's outcomes survive the death of its whole host (the journal
# keeps them otherwise); smaller holds less memory on the scheduler.
REPORT_MAX_BYTES = 64 * 1024
# A kept pool that no chunk used for this long is ended by the next chunk run on
# the node (its client went away without releasing it, say).
KEPT_IDLE_SECONDS = 300.0
# How often a node pool started ahead of its chunks looks whether it has been idle
# that long (one lock and a clock read per check).
IDLE_CHECK = 10.0
# Start method of the pools on the nodes: a dask worker runs an event loop and a
# thread pool, so fork is unsafe there; forkserver would leave a server process
# per dask worker behind. spawn costs a pool start of ~0.2 s, once per pool.
NODE_START_METHOD = "spawn"

# Tokens released on this node, newest last: a chunk that dask started after its
# pool's release (client.cancel does not reach a task already queued on a worker)
# must not start the pool again. Bounded; the oldest are forgotten.
RELEASED_REMEMBERED = 1024
# The scheduler notes every chunk key that started (``ran_before``) and prunes the
# keys it has forgotten once the notes reach this size, then twice what is left:
# smaller prunes more often (a pass over the notes), larger holds more memory.
STARTED_PRUNE_MIN = 4096


class _Kept:
    """A pool kept on this node for one client-side pool."""

    __slots__ = ("active", "pool", "used")

    def __init__(self, pool: Pool, now: float):
        self.pool = pool
        self.used = now  # when a chunk last started or ended on it
        self.active = 0  # chunks running on it now: never idle while > 0

    def idle_for(self, now: float) -> float:
        return 0.0 if self.active else now - self.used


_kept: dict[str, _Kept] = {}  # by token
_released: collections.OrderedDict[str, None] = collections.OrderedDict()
_kept_lock = threading.Lock()


def _pool_for(token: str, options: dict[str, Any], nthreads: int | None = None) -> _Kept | None:
    """The pool kept for ``token``, started if need be; None if it was released.

    ``nthreads``: the dask worker's threads (looked up when called from a task)."""
    now = time.monotonic()
    stale: list[Pool] = []
    started = False
    with _kept_lock:
        if token in _released:
            return None
        for key, other in list(_kept.items()):
            if key != token and other.idle_for(now) > KEPT_IDLE_SECONDS:
                stale.append(other.pool)
                del _kept[key]
        kept = _kept.get(token)
        if kept is None or kept.pool._engine.state != "run" or kept.pool._engine.broken:
            if kept is not None:
                stale.append(kept.pool)
            kept = _kept[token] = _Kept(_new_pool(options, nthreads), now)
            started = True
        kept.used = now
    for old in stale:
        old.terminate()
    if started:  # (files, outside the lock)
        _journal.sweep_stale(keep=token)
    return kept


def _end_when_idle(token: str) -> None:
    """Terminate the pool kept for ``token`` once no chunk used it for
    ``KEPT_IDLE_SECONDS`` (its client went away without releasing it); return when
    it is gone, however it went."""
    while True:
        with _kept_lock:
            kept = _kept.get(token)
            if kept is None:
                return
            idle = kept.idle_for(time.monotonic())
            if idle > KEPT_IDLE_SECONDS:
                del _kept[token]
                break
        time.sleep(max(IDLE_CHECK, KEPT_IDLE_SECONDS - idle))
    kept.pool.terminate()


def start_kept_pool(token: str, options: dict[str, Any], nthreads: int) -> None:
    """Start the pool kept for ``token`` now, before a chunk needs it, and end it once
    idle (a dask worker plugin's thread, ``_cluster_warm``: a pool started for a
    client that never sends a chunk here must not stay for good)."""
    if _pool_for(token, options, nthreads) is not None:
        _end_when_idle(token)


def _new_pool(options: dict[str, Any], nthreads: int | None) -> Pool:

    # Orphans of a pool worker's tree killed at a timeout or a cancel come back to
    # this dask worker, which corral's kill then reaps; otherwise they would go to
    # PID 1, which on many hosts (containers) reaps nothing. The trade-off: orphans
    # of other dask tasks come back here too, and stay zombies once they exit.
    _linux.set_child_subreaper(True)
    if nthreads is None:
        from distributed import get_worker

        nthreads = get_worker().state.nthreads
    return Pool(nthreads, context=NODE_START_METHOD, **options)


def release(token: str) -> int:
    """End the pool kept for ``token`` on this node (run by ``client.run``)."""
    with _kept_lock:
        entry = _kept.pop(token, None)
        _released[token] = None
        while len(_released) > RELEASED_REMEMBERED:
            _released.popitem(last=False)
    if entry is not None:
        entry.pool.terminate()
    # After the pool's workers are gone: none of them can make the directory again.
    _journal.release(token)
    return 0 if entry is None else 1


def _stopped(variable: Any, job_id: int) -> tuple[bool, bool]:
    """(this job is stopped, every job of the pool is) as the client last said."""
    try:
        ids, everything = variable.get(timeout=STOP_POLL)
    except Exception:  # unset (a race at the pool's start) or the scheduler is busy
        return False, False
    return everything or job_id in ids, everything


def run_chunk(payload: bytes) -> bytes:
    """Run one chunk of items; return its per-item outcomes, pickled.

    Returns ``("done", [(ok, value or error record)...], seconds, retried)``,
    ``("stopped",)`` when the client stopped the job (or the pool) meanwhile,
    ``("undecodable", error record)`` without running anything when an item can't
    be unpickled here, or
    ``("rerun",)`` without running anything when dask runs the task again after its
    worker died: the client then submits only the items it has no report of, naming
    the dead chunk among their ``ancestors``, whose journaled outcomes
    (``_cluster_journal``) are taken as they are rather than run again.
    """
    try:
        (
            token,
            job_id,
            key,
            fn,
            mode,
            blob,
            start,
            ancestors,
            timeout,
            retries,
            options,
            interval,
        ) = pickle.loads(payload)
    except BaseException as exc:  # the function's: every item's (a SystemExit too)
        raise RuntimeError(
            f"corral: the chunk could not be unpickled on the node: {exc!r}"
        ) from exc
    if _rerun(key):
        return pickle.dumps(("rerun",))
    try:
        items = pickle.loads(blob)
    except BaseException as exc:  # the client halves the chunk until the item is alone
        return pickle.dumps(("undecodable", encode_error(exc)))
    kept = _pool_for(token, options)
    if kept is None:
        return pickle.dumps(("stopped",))
    with _kept_lock:
        kept.active += 1
    try:
        chunk = _Chunk(token, job_id, key, fn, mode, items, start, ancestors)
        return _run_items(kept.pool, chunk, timeout, retries, interval)
    finally:
        with _kept_lock:
            kept.active -= 1
            kept.used = time.monotonic()


class _Chunk:
    """What a chunk runs: items ``start``.. of job ``job_id`` of the pool ``token``."""

    __slots__ = ("ancestors", "fn", "items", "job_id", "key", "mode", "start", "token")

    def __init__(
        self,
        token: str,
        job_id: int,
        key: str,
        fn: Any,
        mode: int,
        items: list[Any],
        start: int,
        ancestors: tuple[str, ...],
    ):
        self.token = token
        self.job_id = job_id
        self.key = key
        self.fn = fn
        self.mode = mode
        self.items = items
        self.start = start
        self.ancestors = ancestors


def _run_items(
    pool: Pool, chunk: _Chunk, timeout: float | None, retries: int | None, interval: float
) -> bytes:
    import distributed

    token, key, start = chunk.token, chunk.key, chunk.start
    variable_class: Any = distributed.Variable
    variable = variable_class(f"corral-stop-{token}")
    retried_before = pool.statistics().tasks_retried
    started = time.monotonic()
    worker: Any = distributed.get_worker()
    who = _journal.owner()
    with contextlib.suppress(Exception):
        _journal.sweep(token, who, worker.state.tasks)
    prefix = _journal.prefix(token, key, who)
    # Outcomes journaled by the dead chunks this one replaces: delivered as they are.
    known = _journal.recall(token, chunk.ancestors, start, start + len(chunk.items))
    if prefix is not None and known:  # kept with this chunk's own, should it die too
        with contextlib.suppress(Exception):  # (else only the ancestors' files hold them)
            recalled = [_journal.encode(i, ok, dumps(v)) for i, (ok, v) in known.items()]
            _journal.append(f"{prefix}.node", recalled)
    todo = [(start + i, x) for i, x in enumerate(chunk.items) if start + i not in known]
    if prefix is None:  # no journal on this node: the items as they are
        fn: Any = chunk.fn
        mode = chunk.mode
        todo = [x for _, x in todo]
    else:
        fn, mode = _journal.Journaled(chunk.fn, chunk.mode, prefix), MODE_MAP
    view = pool.with_options(task_timeout=timeout, retries=retries)
    # The node pool commits outcomes to us about once per report interval: they leave
    # this node no more often than that, and a commit costs this process a wake-up
    # (every 2 ms by default: some 10 % of a stream of 1 ms items' throughput).
    it = view._imap(fn, todo, None, mode, True, None, False, None, commit_seconds=interval)
    outcomes: list[tuple[bool, Any]] = []
    reported = 0
    # Outcomes a report may try, once one had to be cut to REPORT_MAX_BYTES: twice
    # what the last one carried, so that a backlog is not pickled again and again.
    most: int | None = None
    next_poll = started + STOP_POLL
    next_report = started  # the first outcome is reported at once
    while True:
        while start + len(outcomes) in known:
            outcomes.append(known.pop(start + len(outcomes)))
        now = time.monotonic()
        due = min(next_poll, next_report) if len(outcomes) > reported else next_poll
        try:
            outcomes.append((True, it.next(max(0.0, due - now))))
        except StopIteration:
            break
        except multiprocessing.TimeoutError:
            pass
        except BaseException as exc:  # (a SystemExit that a result raised unpickling too)
            if pool._engine.state != "run":  # released or terminated meanwhile
                return pickle.dumps(("stopped",))
            record = encode_error(exc)
            outcomes.append((False, record))
            if prefix is not None:  # a timeout or a crash: the pool's, not the item's
                index = start + len(outcomes) - 1
                _journal.append(f"{prefix}.node", [_journal.encode(index, False, dumps(record))])
        now = time.monotonic()
        if now >= next_report and len(outcomes) > reported:
            retried = pool.statistics().tasks_retried - retried_before
            sent, cut = _report(worker, token, key, reported, outcomes, retried, most)
            if sent:
                reported += sent
                next_report = now + interval
                if cut or most is not None:
                    most = 2 * sent
            else:  # the next outcome is too large for the scheduler: the rest of the
                next_report = float("inf")  # chunk goes with its result
        if now >= next_poll:
            stopped, everything = _stopped(variable, chunk.job_id)
            if stopped:
                it.cancel()
                if everything:
                    release(token)
                return pickle.dumps(("stopped",))
            next_poll = time.monotonic() + STOP_POLL
    while start + len(outcomes) in known:  # the last items were journaled ones
        outcomes.append(known.pop(start + len(outcomes)))
    seconds = time.monotonic() - started
    retried = pool.statistics().tasks_retried - retried_before
    return _encode_outcomes(outcomes, seconds, retried)


def _rerun(key: str) -> bool:
    """Is dask running this task again after a dask worker died?

    dask computes a task again, whole, when its worker dies while running it
    (up to ``allowed-failures`` times), and also when the worker dies after it
    finished, holding the only copy of its result. Either way items that finished
    (and were reported, or journaled) would run again; the client knows better
    what is left. One round trip to the scheduler per chunk.
    """
    from distributed import get_client

    try:
        client: Any = get_client()
        return bool(client.run_on_scheduler(ran_before, key=key))
    except Exception:  # can't tell: run it (outcomes are still delivered once)
        return False


def ran_before(dask_scheduler: Any, key: str) -> bool:
    """On the scheduler: has ``key`` started before? Notes that it has now.

    A task whose worker died while running it counts as ``suspicious``; one whose
    result was lost with its worker after it ended does not, so every start is
    noted here. Keys the scheduler has forgotten (their futures were released)
    are dropped whenever the notes have doubled since the last such pruning:
    they stay the size of the tasks the scheduler holds, amortised O(1) a call.
    """
    task = dask_scheduler.tasks.get(key)
    if task is not None and task.suspicious:
        return True
    notes: _StartNotes | None = getattr(dask_scheduler, "_corral_started", None)
    if notes is None:
        notes = dask_scheduler._corral_started = _StartNotes()
    if key in notes.keys:
        return True
    notes.keys.add(key)
    if len(notes.keys) >= notes.prune_at:
        notes.keys.intersection_update(dask_scheduler.tasks)
        notes.prune_at = max(STARTED_PRUNE_MIN, 2 * len(notes.keys))
    return False


class _StartNotes:
    """The chunk keys started on this scheduler (its ``_corral_started``)."""

    __slots__ = ("keys", "prune_at")

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.prune_at = STARTED_PRUNE_MIN


def _report(
    worker: Any,
    token: str,
    key: str,
    reported: int,
    outcomes: list[tuple[bool, Any]],
    retried: int,
    most: int | None,
) -> tuple[int, bool]:
    """Send the outcomes after ``reported`` (and the retries so far) to the client
    now, through the scheduler (a dask event): if this dask worker dies before the
    chunk ends, the client has them, and runs again only the items after them.
    Each report names this worker's host: should it die, the client prefers that
    host for the chunk's rest, since the chunk's journal is there.

    A report holds the new outcomes from the first on, at most ``most`` of them
    (None: all), and no more than fit in ``REPORT_MAX_BYTES`` pickled (halved
    until they do). Returns how many it sent (0: not even the first fits), and
    whether it had to halve."""
    end = len(outcomes) if most is None else min(len(outcomes), reported + most)
    if end <= reported:
        return 0, False
    from distributed.comm.addressing import get_address_host

    cut = False
    while True:
        payload = _encode_outcomes(outcomes[reported:end], 0.0, retried)  # ("done", records..)
        if len(payload) <= REPORT_MAX_BYTES:
            break
        cut = True
        end = reported + (end - reported) // 2
        if end == reported:
            return 0, True
    host = get_address_host(worker.address)
    worker.log_event(f"corral-{token}", (key, reported, payload, host))
    return end - reported, cut


def forget_reports(dask_scheduler: Any, topic: str) -> None:
    """On the scheduler (``client.run_on_scheduler``): drop the reports it keeps for
    ``topic``. dask keeps the last thousands of events of every topic, for clients
    that ask later; a pool's reports are read as they come, and would only hold
    memory there."""
    broker = getattr(dask_scheduler, "_broker", None)
    with contextlib.suppress(Exception):
        broker.truncate(topic)  # type: ignore[union-attr]
        broker._topics.pop(topic, None)  # type: ignore[union-attr]


def _encode_outcomes(outcomes: list[tuple[bool, Any]], seconds: float, retried: int) -> bytes:
    """Pickle the outcomes; a value that can't be pickled fails its own item only.
    (BaseException: a SystemExit escaping a dask task closes its dask worker.)"""
    try:
        return dumps(("done", outcomes, seconds, retried))
    except BaseException:
        pass
    safe: list[tuple[bool, Any]] = []
    for ok, value in outcomes:
        if ok:
            try:
                dumps(value)
            except BaseException as exc:
                exc.add_note("corral: raised while pickling the task's result on the node")
                ok, value = False, encode_error(exc)
        safe.append((ok, value))
    with contextlib.suppress(Exception):
        return dumps(("done", safe, seconds, retried))
    raise RuntimeError("corral: the chunk's outcomes could not be pickled")
