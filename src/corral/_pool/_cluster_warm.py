"""Start a cluster pool's node pools before their first chunk, on every dask worker.

    client: ClusterEngine.__init__ -- register_plugin(NodePoolStarter) --> scheduler
                                                        |  setup(worker): on every dask
                                                        v  worker now, and on each one
    dask worker: a thread starts the kept corral.Pool     that joins later (a nanny's
                 for the token (_cluster_node._pool_for)  replacement after a death)
    client: _stop_nodes -- unregister_worker_plugin --> no pool on workers to come

Without it, a node's pool starts with the first chunk that reaches it, and that
chunk waits for it (a spawn start: 0.2 s on an idle box, more on a busy one). Most
of all after a dask worker dies: its replacement joins while the survivors carry the
work, and every second its pool is not ready is lost. Starting the pool in a thread
of the worker, as soon as the worker is set up, hides that.

A separate module because it subclasses dask's ``WorkerPlugin`` (``register_plugin``
dispatches on the class), and ``distributed`` is imported only where a cluster is
used.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from . import _cluster_node

__all__ = ["NodePoolStarter", "plugin_name"]


def plugin_name(token: str) -> str:
    return f"corral-start-{token}"


class NodePoolStarter(WorkerPlugin):
    """Starts the pool kept for ``token`` on each dask worker as it is set up."""

    idempotent = False

    def __init__(self, token: str, options: bytes):
        self.token = token
        self.options = options  # the node pool's options, pickled as chunks are

    def setup(self, worker: Any) -> None:
        # dask waits for setup on every worker: return at once, start in a thread.
        threading.Thread(
            target=_start,
            args=(self.token, self.options, worker.state.nthreads),
            name=f"corral-start-pool-{self.token[:8]}",
            daemon=True,
        ).start()


def _start(token: str, options: bytes, nthreads: int) -> None:
    # A failure here only means the first chunk starts the pool, as it would have;
    # that chunk reports the error, if any, where its caller sees it.
    with contextlib.suppress(Exception):
        _cluster_node.start_kept_pool(token, pickle.loads(options), nthreads)
