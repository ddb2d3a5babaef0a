"""Hostile children for the no-orphan fault table (tests/test_orphans.py).

Module-level, so that spawn and forkserver can pickle them. Each ``row`` target
first makes a grandchild (a raw fork) that turns hostile the same way, reports
both pids on ``conn``, then turns hostile itself, in a way that no code inside it
can ever react to its parent's death again.
"""

from __future__ import annotations

import os
import signal
import time
from multiprocessing.connection import Connection

FOREVER = 300.0
SLEEP = "/bin/sleep"


def _exec_sleep() -> None:
    os.execv(SLEEP, [SLEEP, str(int(FOREVER))])


def _exec_shell() -> None:
    # A shell that starts children of its own, after the exec: nothing of corral
    # (or Python) is left anywhere below.
    sleep = f"{SLEEP} {int(FOREVER)}"
    os.execv("/bin/sh", ["/bin/sh", "-c", f"{sleep} & {sleep} & wait"])


def _close_fds() -> None:
    os.closerange(3, 65536)
    time.sleep(FOREVER)


def _block_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    time.sleep(FOREVER)


def _stop() -> None:
    os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(FOREVER)


HOSTILE = {
    "exec": _exec_sleep,
    "exec-shell": _exec_shell,
    "closed-fds": _close_fds,
    "blocked-signals": _block_signals,
    "stopped": _stop,
}


def hostile(row: str, conn: Connection) -> None:
    """Fork a grandchild, report both pids, then both turn hostile as ``row`` says."""
    turn = HOSTILE[row]
    grandchild = os.fork()
    if grandchild == 0:
        try:
            turn()
        finally:
            os._exit(1)
    conn.send([os.getpid(), grandchild])
    conn.close()
    turn()


def _storm_node(depth: int) -> None:
    """Fork two lasting children (down to ``depth`` levels), then fork short-lived
    ones as fast as possible, forever."""
    for _ in range(2 if depth > 0 else 0):
        if os.fork() == 0:
            try:
                _storm_node(depth - 1)
            finally:
                os._exit(1)
    while True:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)


def storm(depth: int, conn: Connection) -> None:
    """A fork storm: 2**(depth+1) - 1 lasting processes (this one included), each
    forking short-lived children without pause."""
    conn.send([os.getpid()])
    conn.close()
    _storm_node(depth)
