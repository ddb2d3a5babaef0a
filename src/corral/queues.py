"""``corral.queues``: :mod:`multiprocessing.queues` with corral's queues.

``Empty`` and ``Full`` are :mod:`queue`'s, as there.
"""

from __future__ import annotations

from queue import Empty, Full

from ._queue import JoinableQueue, Queue, SimpleQueue

__all__ = ["Empty", "Full", "JoinableQueue", "Queue", "SimpleQueue"]
