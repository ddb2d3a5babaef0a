"""``python -m tests.executor_sigint_parent METHOD WHAT``: a parent for the Executor Ctrl-C tests.

Starts ``with corral.ProcessPoolExecutor(2) as ex:`` and submits tasks that each
start a grandchild and block. Once both workers are busy it prints ``READY`` with
every worker and grandchild pid, while the main thread waits, as ``WHAT`` says:

- ``result``: in ``ex.submit(...).result()``;
- ``as_completed``: in a loop over ``concurrent.futures.as_completed``;
- ``shutdown``: in leaving the ``with`` block (``shutdown(wait=True)``), work queued.

The test then sends one SIGINT.
"""

from __future__ import annotations

import concurrent.futures
import sys
import threading

import corral
from tests import pool_targets as t


def main(method: str, what: str) -> None:
    q = corral.Queue()

    def report() -> None:
        pids = []
        for _ in range(2):
            pid, _item, grandchild = q.get(timeout=60)
            pids += [pid, grandchild]
        print("READY", *pids, flush=True)

    threading.Thread(target=report, daemon=True).start()
    with corral.ProcessPoolExecutor(2, method, t.set_channel, (q,)) as ex:
        futures = [ex.submit(t.block_with_grandchild_always, x) for x in range(6)]
        if what == "result":
            futures[0].result()
        elif what == "as_completed":
            for future in concurrent.futures.as_completed(futures):
                future.result()
    # "shutdown": the with block waits for the queued work here.


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
