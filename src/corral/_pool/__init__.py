"""corral.Pool: a worker pool that loses one task to a crash, never the pool.

    user threads                scheduler thread (one per pool)             workers
    ------------                -------------------------------             -------
    Pool / PoolView / Executor
    map/apply/submit/imap
      _jobs.Job: items + sink  -> jobs (FIFO) -> chunk -> frame --socket--> _worker
      (imap pulls its input        per worker: the chunks it holds,          run items,
       lazily, window-bounded)     in order (the first one is running)       commit outcomes
                                   poll(wake, sockets, sentinels, deadline) <--socket--
      results / futures  <------   commits -> job.deliver
                                   death: items accounted one by one
                                   deadline or cancel: worker tree killed

- ``_options``: the pool's options, one frozen record, and per-call refinements.
- ``_wire``: framed pickles on a socketpair; big buffers beside them in a memfd.
- ``_worker``: the worker loop, its running word and its commits.
- ``_jobs``: one call's items and where their outcomes go (map, imap, submit).
- ``_engine``: worker slots, scheduling, deaths, deadlines, retries.
- ``_front``: ``Pool`` and its per-call views; ``_progress``: a bar per call.
- ``_cluster``: ``cluster=``, the same jobs run as dask tasks (a chunk each) by a
  pool kept on each node (``_cluster_node``); ``_cluster_connect`` resolves and
  checks what ``cluster=`` names; ``_cluster_pickle`` refuses host-bound objects.
"""

from ._engine import PoolStatistics
from ._front import Pool, PoolView
from ._jobs import ApplyResult, AsyncResult, CorralFuture, IMapIterator, MapResult
from ._options import CallOptions, PoolOptions
from ._wire import OOB_MIN_BYTES

__all__ = [
    "OOB_MIN_BYTES",
    "ApplyResult",
    "AsyncResult",
    "CallOptions",
    "CorralFuture",
    "IMapIterator",
    "MapResult",
    "Pool",
    "PoolOptions",
    "PoolStatistics",
    "PoolView",
]
