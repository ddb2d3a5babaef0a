"""A parent for the no-orphan fault table (tests/test_orphans.py), run as a script.

    python orphan_fault_parent.py METHOD ROW [ARG [--starve=CPU]]

ROW is one of ``orphan_targets.HOSTILE`` (one hostile corral child with a hostile
grandchild), ``storm`` (ARG: the storm's depth) or ``manager`` (a corral.Manager()).
It prints ``READY pid...`` (the pids the test must see die) and waits to be killed.
With ``--starve=CPU``, every thread of this parent first moves to that CPU alone,
at the idle scheduling policy, and its main thread spins there, where busy
processes on that CPU keep it from running (and so from exiting, once SIGKILLed)
for seconds.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import corral
from tests import helpers, orphan_targets


def main() -> None:
    method, row = sys.argv[1], sys.argv[2]
    ctx = corral.get_context(method)
    if row == "manager":
        manager = ctx.Manager()
        shared = manager.list([1, 2, 3])  # the server serves
        assert shared[2] == 3
        server = manager._process  # type: ignore[attr-defined]
        assert isinstance(server, corral.Process)
        print("READY", server.pid, flush=True)
        helpers.sleep_forever()
    r, w = multiprocessing.Pipe(duplex=False)
    if row == "storm":
        child = ctx.Process(target=orphan_targets.storm, args=(int(sys.argv[3]), w))
    else:
        child = ctx.Process(target=orphan_targets.hostile, args=(row, w))
    child.start()
    w.close()
    if not r.poll(60):
        raise TimeoutError("the child did not report within 60 s")
    reported = r.recv()
    starving = False
    for arg in sys.argv[4:]:
        if arg.startswith("--starve="):
            _starve(int(arg.split("=")[1]))
            starving = True
    print("READY", *reported, flush=True)
    if starving:
        # Runnable rather than asleep: a sleeper woken by the SIGKILL may be placed
        # ahead of the busy processes (the lag it kept while asleep, under EEVDF)
        # and run at once; a runnable idle-policy task waits its turn, seconds away.
        while True:
            pass
    helpers.sleep_forever()


def _starve(cpu: int) -> None:
    for tid in map(int, os.listdir("/proc/self/task")):
        os.sched_setaffinity(tid, {cpu})
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))


if __name__ == "__main__":
    main()
