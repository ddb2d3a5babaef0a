"""Module-level targets for demo scenarios (spawn and forkserver must import them)."""

from __future__ import annotations

import os
import subprocess
import time
from multiprocessing.connection import Connection

FOREVER = 300.0

_KEEP: list[subprocess.Popen[bytes]] = []


def spawn_descendants() -> list[int]:
    """Start three descendants that outlive the caller unless someone ends them:
    a subprocess, a raw os.fork() child, and a child that called setsid().
    Returns their pids.
    """
    sub = subprocess.Popen(["sleep", str(FOREVER)])
    _KEEP.append(sub)  # no Popen.__del__ warning: whoever ends the tree reaps it
    pids = [sub.pid]
    for setsid in (False, True):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the forked child
            try:
                os.close(r)
                if setsid:
                    os.setsid()
                os.write(w, b"x")
                os.close(w)
                time.sleep(FOREVER)
            finally:
                os._exit(0)
        os.close(w)
        os.read(r, 1)  # set up (and, if asked, in its own session)
        os.close(r)
        pids.append(pid)
    return pids


def descendants_then_wait(conn: Connection) -> None:
    """Start descendants, send their pids, then block until killed."""
    conn.send(spawn_descendants())
    time.sleep(FOREVER)


def exit_now() -> None:
    pass


def start_child_from_daemon(lib: str, conn: Connection) -> None:
    """From a daemonic child, try to start a child with ``lib`` ("corral" or the stdlib)."""
    import multiprocessing

    import corral

    process_class = corral.Process if lib == "corral" else multiprocessing.Process
    try:
        p = process_class(target=exit_now)
        p.start()
        p.join(30)
        conn.send(f"started a child (exit code {p.exitcode})")
    except AssertionError as exc:
        conn.send(f"AssertionError: {exc}")
