"""``corral.pool``: :mod:`multiprocessing.pool` with corral's Pool.

For programs that ``import multiprocessing.pool``: ``corral.pool.Pool`` is
:class:`corral.Pool`; ``ThreadPool`` is the stdlib's.
"""

from __future__ import annotations

from multiprocessing.pool import ThreadPool

from ._pool import ApplyResult, AsyncResult, IMapIterator, MapResult, Pool
from ._pool._front import CLOSE, RUN, TERMINATE
from ._workercrash import RemoteTraceback

__all__ = [
    "CLOSE",
    "RUN",
    "TERMINATE",
    "ApplyResult",
    "AsyncResult",
    "IMapIterator",
    "MapResult",
    "Pool",
    "RemoteTraceback",
    "ThreadPool",
]
