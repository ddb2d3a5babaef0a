"""A parent process for the no-orphan tests, run as a script by the test.

    python orphan_parent.py METHOD HOW [--thread]

It starts one corral child (with the given start method) that starts a subprocess,
a raw fork and a setsid() child, plus a nested corral grandchild; it prints READY
with every pid, then dies as HOW says once the test writes a line to its stdin:

- exception: raise from the main module;
- exit:      os._exit(1);
- wait:      block, and let the test send SIGTERM or SIGKILL.

With --thread, the corral child is started from a thread that exits at once.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from multiprocessing.connection import Connection

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import corral
from tests import helpers


def child_main(method: str, conn: Connection) -> None:
    grandchild = corral.get_context(method).Process(target=helpers.sleep_forever, daemon=True)
    grandchild.start()
    conn.send([grandchild.pid, *helpers.spawn_descendants()])
    helpers.sleep_forever()


def main() -> None:
    method, how = sys.argv[1], sys.argv[2]
    from_thread = "--thread" in sys.argv
    r, w = multiprocessing.Pipe(duplex=False)
    child = corral.get_context(method).Process(target=child_main, args=(method, w))
    if from_thread:
        t = threading.Thread(target=child.start)
        t.start()
        t.join()
    else:
        child.start()
    w.close()
    if not r.poll(60):
        raise TimeoutError("the child did not report its descendants within 60 s")
    descendants = r.recv()
    print("READY", child.pid, *descendants, flush=True)
    sys.stdin.readline()
    if how == "exception":
        raise RuntimeError("the parent crashed")
    if how == "exit":
        os._exit(1)
    helpers.sleep_forever()


if __name__ == "__main__":
    main()
