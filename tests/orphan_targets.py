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

from corral._tools._demo import _targets, _watch

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


def _stay_python() -> None:
    time.sleep(FOREVER)


HOSTILE = {
    "exec": _exec_sleep,
    "exec-above-python": _exec_sleep,
    "exec-shell": _exec_shell,
    "closed-fds": _close_fds,
    "blocked-signals": _block_signals,
    "stopped": _stop,
}


# Rows whose grandchild does something else than the child: in "exec-above-python"
# the grandchild, a raw fork, stays in Python (and so keeps whatever it inherited
# from the corral child at the fork) while the child exec()s.
GRANDCHILD = {"exec-above-python": _stay_python}


def hostile(row: str, conn: Connection) -> None:
    """Fork a grandchild, report both pids, then both turn hostile as ``row`` says."""
    turn = HOSTILE[row]
    grandchild = os.fork()
    if grandchild == 0:
        try:
            GRANDCHILD.get(row, turn)()
        finally:
            os._exit(1)
    conn.send([os.getpid(), grandchild])
    conn.close()
    turn()


def storm(depth: int, conn: Connection) -> None:
    """A fork storm (corral's benchmark's): 2**(depth+1) - 1 lasting processes."""
    _targets.fork_storm(depth, conn)


def replace_supervisor(method: str) -> tuple[int, int, bool]:
    """In a corral child: start this process's supervisor, SIGKILL it, start a
    child. Returns (the old supervisor, the new one, whether the old one
    was reaped here)."""
    import select

    import corral
    from corral._core import _supervisor

    ctx = corral.get_context(method)
    old = _supervisor.ensure_started()
    if old <= 0:  # (never signal pid 0: that is our whole process group)
        raise RuntimeError(f"no supervisor: {old}")
    fd = os.pidfd_open(old)
    try:
        os.kill(old, signal.SIGKILL)  # (our child, not reaped yet: not recycled)
        if not select.select([fd], [], [], 60)[0]:
            raise TimeoutError("the supervisor did not die within 60 s")
        # (A child that lives until told: under forkserver one that exits at once
        # may be gone before its pidfd is opened, and is then not registered.)
        go = ctx.Event()
        second = ctx.Process(target=go.wait, args=(60,))
        second.start()
        new = _supervisor.pid()
        go.set()
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


def starts_with_a_paused_supervisor(method: str, n: int) -> tuple[int, float, int, bool]:
    """In a corral child: SIGSTOP this process's supervisor, then start and join ``n``
    children, more than its socket (shrunk to the kernel's minimum) holds. Returns
    (RuntimeWarnings raised, the longest start in seconds, those children still
    present in /proc, whether a start after SIGCONT registered again without a
    warning)."""
    import socket
    import time
    import warnings

    import corral
    from corral._core import _linux, _supervisor

    ctx = corral.get_context(method)
    sup = _supervisor.ensure_started()
    if sup <= 0:  # (never signal pid 0: that is our whole process group)
        raise RuntimeError(f"no supervisor: {sup}")
    sock = _supervisor._sock
    assert sock is not None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # (the minimum: a few)
    longest = 0.0
    pids: list[int] = []
    os.kill(sup, signal.SIGSTOP)
    # (stopped, not only signalled: on a busy box it may wait for a CPU to stop)
    deadline = time.monotonic() + 60
    while _linux.proc_state(sup) != "T" and time.monotonic() < deadline:
        time.sleep(0.001)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(n):
                t0 = time.monotonic()
                p = ctx.Process(target=int)
                p.start()
                longest = max(longest, time.monotonic() - t0)
                p.join(60)
                pids.append(p.pid or 0)
    finally:
        os.kill(sup, signal.SIGCONT)
    stalls = sum(issubclass(w.category, RuntimeWarning) for w in caught)
    # Once it reads again, registrations get through: the next start waits for room
    # (the supervisor drains the backlog within its batch delay) and does not warn.
    with warnings.catch_warnings(record=True) as after:
        warnings.simplefilter("always")
        p = ctx.Process(target=int)
        p.start()
        p.join(60)
    resumed = not [w for w in after if issubclass(w.category, RuntimeWarning)]
    left = [c for c in pids if _linux.proc_state(c) is not None]  # (not even a zombie)
    return stalls, longest, len(left), resumed


def kill_a_storm(method: str, depth: int) -> list[int]:
    """In a corral child (a subreaper, so its kill() freezes the subtree in-process,
    in the storm's own session: the slow case): start a storm of ``depth`` as a
    corral child, kill() it, join it. Returns the pids of the storm's processes
    still running ``STRAGGLER_HORIZON`` later (escaped members come back here, the
    nearest subreaper; a short-lived one forked in the last instant exits by itself
    within it, a lasting one never), after killing and reaping everything left."""
    import corral
    from corral._core import _linux, _supervisor

    from . import leaks

    ctx = corral.get_context(method)
    # (A first start brings up this process's helpers, none of them the storm's:
    # its supervisor, and a forkserver and resource tracker under forkserver.)
    warm_up = ctx.Process(target=int)
    warm_up.start()
    warm_up.join(60)
    me = os.getpid()
    helpers = set(_linux.descendants_of(me))

    def running() -> list[int]:
        return [
            p
            for p in _linux.descendants_of(me)
            if p not in helpers
            and p != _supervisor.pid()
            and _linux.proc_state(p) not in (None, "Z")
        ]

    r, w = ctx.Pipe(duplex=False)
    storm_child = ctx.Process(target=storm, args=(depth, w))
    storm_child.start()
    w.close()
    if not r.poll(60):
        raise TimeoutError("the storm did not start within 60 s")
    root = r.recv()[0]
    lasting = (1 << (depth + 1)) - 1
    deadline = time.monotonic() + 60
    while len(list(_linux.descendants_of(root))) < lasting - 1 and time.monotonic() < deadline:
        time.sleep(0.01)  # (polled until the storm has grown, bounded)
    storm_child.kill()
    storm_child.join(60)
    pidfds = _watch.pin(running())
    left, _ = _watch.wait_dead(pidfds, STRAGGLER_HORIZON)
    _watch.kill_reap_close(pidfds)
    leaks.kill_and_reap(set(running()))  # (any born after the pinning)
    return left


# How long a storm's process found running right after its kill() is given to exit
# by itself (a short-lived one, forked as the kill began, exits at once).
STRAGGLER_HORIZON = 5.0


def sleepers(n: int, conn: Connection) -> None:
    """Start ``n`` ``sleep`` grandchildren, send their pids, then sleep."""
    import subprocess

    kids = [subprocess.Popen(["sleep", "300"]).pid for _ in range(n)]
    conn.send(kids)
    conn.close()
    time.sleep(FOREVER)


def kill_from_a_subreaper(method: str) -> tuple[list[int], list[int], list[int], list[int]]:
    """In a corral child (so a subreaper): kill() a child that has 3 ``sleep``
    grandchildren. Returns (the pids the supervisor gave back, the grandchildren,
    those still running, those left as zombies), the last two looked at once the
    child is joined and, for zombies, for up to 10 s."""
    import corral
    from corral._core import _linux, _supervisor

    from . import leaks

    ctx = corral.get_context(method)
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=sleepers, args=(3, w))
    p.start()
    w.close()
    if not r.poll(60):
        raise TimeoutError("the grandchildren did not start within 60 s")
    grandchildren: list[int] = r.recv()
    given: list[int] = []
    real = _supervisor.kill_subtree

    def spy(*args: object) -> bool:
        done = real(*args)  # type: ignore[arg-type]
        members = args[3] if len(args) > 3 else None
        given.extend(pid for pid, _ in members or [])  # type: ignore[attr-defined]
        return done

    _supervisor.kill_subtree = spy  # type: ignore[assignment]
    try:
        p.kill()
    finally:
        _supervisor.kill_subtree = real
    p.join(60)
    me = os.getpid()

    def zombies() -> list[int]:
        mine = _linux.children_of(me)
        return [x for x in grandchildren if x in mine and _linux.proc_state(x) == "Z"]

    running = [x for x in grandchildren if _linux.proc_state(x) not in (None, "Z")]
    leaks.wait_until(lambda: not zombies(), 10.0)
    return given, grandchildren, running, zombies()
