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

from corral._tools._demo import _targets

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


def storm(depth: int, conn: Connection) -> None:
    """A fork storm (corral's benchmark's): 2**(depth+1) - 1 lasting processes."""
    _targets.fork_storm(depth, conn)


def replace_supervisor(method: str) -> tuple[int, int, bool]:
    """In a corral child: start a child, SIGKILL this process's supervisor, start
    another child. Returns (the old supervisor, the new one, whether the old one
    was reaped here)."""
    import select

    import corral
    from corral._core import _supervisor

    ctx = corral.get_context(method)
    first = ctx.Process(target=int)
    first.start()
    first.join(60)
    old = _supervisor.pid()
    fd = os.pidfd_open(old)
    try:
        os.kill(old, signal.SIGKILL)  # (our child, not reaped yet: not recycled)
        if not select.select([fd], [], [], 60)[0]:
            raise TimeoutError("the supervisor did not die within 60 s")
        second = ctx.Process(target=int)
        second.start()
        new = _supervisor.pid()
        second.join(60)
        try:
            os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            reaped = True
        else:
            reaped = False
    finally:
        os.close(fd)
    return old, new, reaped
