"""Module-level targets for demo scenarios (spawn and forkserver must import them)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
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


def die_once(item: tuple[int, tuple[int, ...], str]) -> int:
    """One ms of work on ``(x, victims, marker_dir)``, returning ``x * 2``; on a victim
    item, SIGKILL this worker, the first time only (a marker file remembers).
    """
    x, victims, marker_dir = item
    if x in victims:
        try:
            fd = os.open(os.path.join(marker_dir, str(x)), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.001)
    return x * 2


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


# A parent for the orphan scenarios: run with sys.executable -c PARENT LIB.
PARENT = """
import sys, time
sys.path[:0] = {path!r}
lib = sys.argv[1]
if lib == "corral":
    import corral as mp
else:
    import multiprocessing as mp
from corral._tools._demo import _targets
if __name__ == "__main__":
    r, w = mp.Pipe(duplex=False)
    p = mp.Process(target=_targets.descendants_then_wait, args=(w,))
    p.start()
    print(p.pid, *r.recv(), flush=True)
    time.sleep(_targets.FOREVER)
"""


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


def fork_storm(depth: int, conn: Connection) -> None:
    """A fork storm: 2**(depth+1) - 1 lasting processes (this one included), each
    forking short-lived children without pause. Sends this pid first."""
    conn.send([os.getpid()])
    conn.close()
    _storm_node(depth)


STORM_PARENT = """
import sys, time
sys.path[:0] = {path!r}
import corral
from corral._tools._demo import _targets
if __name__ == "__main__":
    r, w = corral.Pipe(duplex=False)
    p = corral.Process(target=_targets.fork_storm, args=({depth}, w))
    p.start()
    print(*r.recv(), flush=True)
    time.sleep(_targets.FOREVER)
"""


def start_storm_parent(depth: int) -> tuple[subprocess.Popen[bytes], int]:
    """Start a corral parent whose child is a ``fork_storm`` of ``depth``; returns the
    parent and the storm's root pid (its lasting processes may not all exist yet).

    The parent runs in a session of its own, as a program started from its own
    shell would: the kernel shares the CPU between sessions first (autogroups), so
    a watcher in the storm's session waits behind its thousand members to see each
    exit, and measured the teardown up to 0.8 s late."""
    code = STORM_PARENT.format(path=sys.path, depth=depth)
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    assert parent.stdout is not None
    ready, _, _ = select.select([parent.stdout], [], [], 60)
    if not ready:
        parent.kill()
        raise TimeoutError("the storm's parent did not start it within 60 s")
    return parent, int(parent.stdout.readline())


def start_parent(lib: str) -> tuple[subprocess.Popen[bytes], list[int]]:
    """Start a parent (``lib``: "corral" or "multiprocessing") with one child that has
    a subprocess, a raw fork and a setsid() child below it. Returns the parent and the
    pids of those four."""
    code = PARENT.format(path=sys.path)
    parent = subprocess.Popen([sys.executable, "-c", code, lib], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    ready, _, _ = select.select([parent.stdout], [], [], 60)
    if not ready:
        parent.kill()
        raise TimeoutError(f"the {lib} parent did not start its children within 60 s")
    return parent, [int(x) for x in parent.stdout.readline().split()]


def int_with_stderr_to(path: str, text: str) -> int:
    """``int(text)``, with the child's stderr (where multiprocessing prints a target's
    traceback) going to ``path``, for the demo to show it labelled."""
    sys.stderr = open(path, "w", buffering=1)  # noqa: SIM115  (the child's, until it exits)
    return int(text)
