"""A user's program on ``cluster="local"``, run as a script by the test, then killed.

    python cluster_local_parent.py WORKDIR

It runs a map on a corral-owned local dask cluster, starts two items that each
start a ``sleep`` grandchild and block, prints READY with the pids of the cluster's
host, the items and their grandchildren, and waits to be SIGKILLed (or, given a
line on stdin, leaves its ``with`` block and exits).
"""

from __future__ import annotations

import functools
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = ROOT  # the dask workers import tests.cluster_targets

import corral  # noqa: E402  (after the sys.path line above)
from tests import cluster_targets as targets  # noqa: E402

# The local cluster's start (dask imported by three programs) and the items' start.
READY_TIMEOUT = 60.0


def main() -> None:
    where = sys.argv[1]
    with corral.Pool(cluster="local") as pool:
        # One dask worker per core, all counted: the default concurrency.
        assert pool._processes == len(os.sched_getaffinity(0)), pool._processes
        assert pool.map(targets.square, range(10)) == [x * x for x in range(10)]
        blocked = functools.partial(targets.block_with_grandchild, where=where)
        pool.map_async(blocked, range(2), chunksize=1)
        deadline = time.monotonic() + READY_TIMEOUT
        while len(targets.markers(where, "running-")) < 2:
            if time.monotonic() > deadline:
                raise SystemExit("the items did not start")
            time.sleep(0.05)  # polling files another node writes: nothing to wait on
        host = pool._engine.conn.host  # type: ignore[attr-defined]
        pids = [host.proc.pid]
        pids += [p for m in targets.markers(where, "running-") for p in m[:2]]
        print("READY", *pids, flush=True)
        sys.stdin.readline()  # until the test kills us, or says to leave the block


if __name__ == "__main__":
    main()
