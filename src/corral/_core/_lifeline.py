"""The lifeline: how a child learns, at once, that the process that started it died.

Parent side: one pipe per process, made when it starts its first corral child.
The parent keeps the write end (close-on-exec, and closed in every fork child
first thing: ``_forkstate``), so the write end is closed exactly when the parent
dies, however it dies. Every child receives the read end.

Child side: the child reopens the read end through /proc/self/fd, which gives it an
open file description of its own (fcntl ownership is per description, and the
inherited one is shared with its siblings). It then arms signal-driven I/O on it:
O_ASYNC, F_SETOWN_EX to its main thread and F_SETSIG to ``LIFELINE_SIGNAL``. When the last
write end closes, the kernel sends that signal (pipe_release -> kill_fasync). The
child arms first and checks for POLLHUP second, so a parent that died before the
child was armed is noticed too. (``arm`` is the pure path; where the C extension is
built, ``_bootstrap.setup`` does the same in one call, ``_speedups.child_setup``,
which records the armed fd itself.)

Why not PR_SET_PDEATHSIG: it fires when the *thread* that forked the child exits,
so a child started from a short-lived thread would be killed early, and under
forkserver the forking thread belongs to the server, not to the parent. The
lifeline belongs to the parent *process*, whatever its threads do.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # (no stub; the C half of signal)
import fcntl
import os
import select
import signal
import struct
import threading
from collections.abc import Callable

from . import _forkstate
from ._fdpass import FdHandle
from ._linux import F_OWNER_TID, F_SETOWN_EX, F_SETSIG

__all__ = ["LIFELINE_SIGNAL", "arm", "armed_fd", "child_end"]

# A real-time signal nothing else in the stdlib uses. Real-time signals queue and
# are never merged with user signals such as SIGUSR1.
LIFELINE_SIGNAL: int = signal.SIGRTMIN + 6

_lock = _forkstate.LIFELINE_LOCK  # (held across os.fork())
_read_handle: FdHandle | None = None
_generation = _forkstate.generation()  # the fork generation this state belongs to


def child_end() -> FdHandle:
    """The read end to give to a new child, creating the pipe on first use."""
    global _read_handle
    with _lock:
        _fresh()
        if _read_handle is None:
            # The write end is ours for life, and known only to the fork state: a
            # fork child closes it first thing.
            r, w = os.pipe2(os.O_CLOEXEC)
            _read_handle = FdHandle(r, "lifeline")
            _forkstate.set_fd(_forkstate.LIFELINE_WRITE, w)
        return _read_handle


def _fresh() -> None:
    """(``_lock`` held.) In a fork child, on first use: drop the parent's pipe. The
    fork closed its write end (``_forkstate``): a forked child must not keep its
    parent's lifeline alive. The read end stays open: a corral child about to be
    bootstrapped still needs it."""
    global _read_handle, _generation
    generation = _forkstate.generation()
    if generation != _generation:
        _generation = generation
        _read_handle = None


# A child's armed lifeline is kept by ``_forkstate`` (slot ARMED), which a fork of
# that child needs at once: the forking process's armed lifeline stays open in the
# fork child, under the same number, as its parent_process() sentinel (a raw
# os.fork() child inherits it, as it inherits the stdlib's sentinel pipe). But not
# the same open file description: that one carries O_ASYNC with the forking
# process as its owner, and the kernel signals the owner when the write end closes
# for as long as *anyone* holds the description. Were the fork child to keep it,
# the parent's death would send LIFELINE_SIGNAL to the forking process even after
# it exec()ed another program (where the signal's default action kills it at
# once), and its children, the fork child included, would be re-parented out of the
# supervisor's reach before it swept them (tests/test_orphans.py,
# "exec-above-python"). So the fork puts a description of the child's own under
# that number, without O_ASYNC; a corral child bootstrapped there closes it once
# armed (``_forkstate.set_armed``, or ``child_setup`` in C).


def armed_fd() -> int | None:
    """This child's armed lifeline: readable (EOF) once the parent is gone."""
    return _forkstate.armed()


def arm(handle: FdHandle, handler: Callable[[int, object], None]) -> None:
    """In a child: call the signal handler ``handler`` (in the main thread) when the
    parent dies. Consumes ``handle``. Must be called from the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("the lifeline must be armed from the main thread")
    # _signal.signal: signal.signal's enum wrapping of the old handler costs about
    # 0.1 ms in a fresh fork child (copy-on-write faults), on every start.
    _signal.signal(LIFELINE_SIGNAL, handler)
    fd = os.open(f"/proc/self/fd/{handle.fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    handle.close()
    # Direct the signal at the main thread (F_OWNER_TID), not at the process: a
    # process-directed signal may land on any thread (the reaper, say), and CPython
    # runs handlers only in the main thread, which would sleep on unaware.
    fcntl.fcntl(fd, F_SETOWN_EX, struct.pack("ii", F_OWNER_TID, threading.get_native_id()))
    fcntl.fcntl(fd, F_SETSIG, LIFELINE_SIGNAL)
    fcntl.fcntl(fd, fcntl.F_SETFL, os.O_NONBLOCK | os.O_ASYNC)
    _forkstate.set_armed(fd)
    # Armed first, checked second: a parent that died before we were armed is seen
    # here (EOF: nobody ever writes to the lifeline, so readable means EOF), one that
    # dies later raises the signal. (select, not a read: the BlockingIOError of a
    # read costs a fresh child about 30 us more, on every start.)
    if select.select([fd], [], [], 0)[0]:
        handler(LIFELINE_SIGNAL, None)
