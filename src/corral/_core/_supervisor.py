"""The supervisor: a small process outside the children's subtrees that ends them
when their parent dies, whatever the children did to themselves.

    parent (this module)                         supervisor (_sweep.py, stdlib only)
    ────────────────────                         ───────────────────────────────────
    first register(): socketpair(SEQPACKET),
      posix_spawn(python -I -S _sweep.py) ──►    fd 0: its end of the socket
      (not waited for: messages queue)
    each start: register(pid, pidfd)
      one sendmsg: pid + pidfd (SCM_RIGHTS) ──►  epoll: pin it; forget it at its exit
    the parent dies, however: EOF ─────────────► freeze every registered child's
                                                 subtree in rounds, SIGKILL, exit
    clean exit (util finalizer, after the
      stdlib joined the children): close our
      end, wait for the supervisor, reap it

The parent's end is close-on-exec and closed in every fork child first thing
(``_forkstate``: /dev/null under its number, for the socket object to close on
first use there), so only the parent's death (or its clean exit) closes it. The
supervisor is in a process group of its own and blocks the job-control and
termination signals, so a Ctrl-C or a ``kill`` of the parent's group leaves it to
do its work at the EOF.

Why from outside: the lifeline (``_lifeline``) is code inside the child. A child
that exec()s another program, closes its fds, blocks every signal or is stopped
never runs it. The supervisor needs nothing from the child: a pidfd, /proc, and
SIGSTOP and SIGKILL, which can be neither blocked nor caught.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import time
import warnings
from multiprocessing import util

from . import _forkstate, _native, _sweep

__all__ = ["close", "ensure_started", "kill_subtree", "pid", "register"]

_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sweep.py")

# Signals the supervisor never acts on: its only way out is the parent's EOF (or
# SIGKILL). Blocked rather than ignored, so that they are never delivered between
# its exec and its first line of Python.
_BLOCKED = frozenset(
    {
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGTSTP,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGALRM,
    }
)

# How long a start waits for room in the supervisor's socket (it reads the
# registrations every BATCH_DELAY) before it gives up registering that child.
REGISTER_WAIT = 0.5

# How long a clean exit waits for the supervisor to go before leaving it (to PID 1
# or the nearest subreaper). It has nothing left to kill then, so it goes in
# milliseconds; the bound is for a supervisor stuck or stopped by someone.
EXIT_WAIT = 1.0

# How long kill_subtree waits for the supervisor to acknowledge a kill request (it
# reads requests at once, or after its BATCH_DELAY of 50 ms); longer covers a more
# starved supervisor, shorter bounds what a paused one costs each kill(): unanswered,
# the caller kills the subtree itself (and so may the supervisor, later: harmless).
ACK_WAIT = 0.5
# After a request went unacknowledged, kills skip the supervisor for this long, so a
# pool's terminate() of many workers pays ACK_WAIT once, not once a worker.
UNRESPONSIVE_BACKOFF = 5.0

_send_pidfd = getattr(_native.speedups, "send_pidfd", None)

_lock = _forkstate.SUPERVISOR_LOCK  # (held across os.fork())
_sock: socket.socket | None = None
_pid = 0
_pidfd = -1
_stalled = False  # the last registration found the socket full
_unresponsive_until = 0.0  # kill requests skip the supervisor until then
_generation = _forkstate.generation()  # the fork generation this state belongs to


def pid() -> int:
    """This process's supervisor, or 0 if it has none (yet)."""
    with _lock:
        _fresh()
        return _pid


def ensure_started() -> int:
    """Start this process's supervisor now if it has none; its pid. (``register``
    does this on its own: this is for owners that want it started early, such as a
    test session, so that it belongs to them rather than to their first test.)"""
    with _lock:
        _fresh()
        if _sock is None:
            _start()
        return _pid


def register(child_pid: int, child_pidfd: int) -> None:
    """Have the supervisor end ``child_pid``'s subtree if this process dies first.

    One ``sendmsg``; the supervisor is started on the first call. The pidfd is
    passed (SCM_RIGHTS), so a recycled pid can never be mistaken for the child.
    """
    if child_pidfd < 0:
        return
    with _lock:
        _fresh()
        for attempt in (1, 2):
            sock = _sock if _sock is not None else _start()
            try:
                _send(sock, child_pid, child_pidfd)
                return
            except (BrokenPipeError, ConnectionResetError):
                # It died (someone SIGKILLed it; EPIPE, or ECONNRESET when it left
                # messages unread): reap it and start another. The
                # children registered with it are left with their lifelines only.
                _forget()
                if attempt == 2:
                    raise


def kill_subtree(
    child_pid: int,
    child_pidfd: int,
    timeout: float,
    members: list[tuple[int, int]] | None = None,
) -> bool:
    """Have the supervisor SIGKILL ``child_pid``'s whole subtree (kill rounds, in
    its own session) and wait up to ``timeout`` for it to say it is done. False if
    there is no supervisor, it could not be asked, or it did not answer in time:
    the caller then does the work itself.

    ``members``: a list to append the subtree's members to, as (pid, pidfd) of our
    own (the child excepted), for a subreaper caller to reap as they come back to
    it; the caller closes those fds, whatever the return.

    Why: a subtree in the caller's session (a fork storm) shares the caller's CPU
    share (its autogroup), so a kill run here waits its turn among a thousand
    runnable processes: seconds, where the supervisor takes a fraction of one.
    """
    global _unresponsive_until
    if child_pidfd < 0 or time.monotonic() < _unresponsive_until:
        return False
    done, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        tag = _sweep.KILL if members is None else _sweep.KILL_RETURN
        message = [child_pid.to_bytes(4, "little") + tag]
        fds = [
            (
                socket.SOL_SOCKET,
                socket.SCM_RIGHTS,
                child_pidfd.to_bytes(4, sys.byteorder) + theirs.fileno().to_bytes(4, sys.byteorder),
            )
        ]
        with _lock:
            _fresh()
            sock = _sock
            if sock is None:
                return False
            try:
                sock.sendmsg(message, fds, socket.MSG_DONTWAIT)
            except OSError:  # full (paused?), or gone: not worth a wait here
                return False
        theirs.close()
        poller = select.poll()
        poller.register(done.fileno(), select.POLLIN)
        now = time.monotonic()
        deadline, acked = now + timeout, False
        while poller.poll(
            max(0.0, (deadline if acked else min(deadline, now + ACK_WAIT)) - time.monotonic())
            * 1000
        ):
            data = _take_members(done, members)
            if not data:
                return True  # "done" closed: the subtree is gone (the caller checks)
            acked = True
        if not acked:  # paused or starved: don't ask again for a while
            _unresponsive_until = time.monotonic() + UNRESPONSIVE_BACKOFF
        return False
    finally:
        theirs.close()
        done.close()


def _take_members(done: socket.socket, members: list[tuple[int, int]] | None) -> bytes:
    """Read one message from ``done``: the acknowledgement, or members (kept in
    ``members``); b"" at EOF."""
    size = _sweep.GIVE_BACK_BATCH * 4
    data, ancillary, _flags, _addr = done.recvmsg(
        size, socket.CMSG_SPACE(size), socket.MSG_CMSG_CLOEXEC
    )
    fds = _sweep.received_fds(ancillary)
    if data == _sweep.ACK or members is None:
        for fd in fds:  # (none is ever sent with these)
            os.close(fd)
        return data
    pids = [int.from_bytes(data[k : k + 4], "little") for k in range(0, len(data), 4)]
    # (The first fds only, if ours ran out, RLIMIT_NOFILE: the rest are not reaped here.)
    members += zip(pids, fds, strict=False)
    return data


def _send_registration(sock: socket.socket, child_pid: int, child_pidfd: int) -> None:
    """One non-blocking sendmsg: the pid (4 bytes, little-endian), the pidfd as
    SCM_RIGHTS. In C where the extension is built: it runs right after every fork,
    where each object made here costs a copy-on-write fault (about 20 in Python)."""
    if _send_pidfd is not None:
        _send_pidfd(sock.fileno(), child_pid, child_pidfd)
        return
    message = [child_pid.to_bytes(4, "little")]
    fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, child_pidfd.to_bytes(4, sys.byteorder))]
    sock.sendmsg(message, fds, socket.MSG_DONTWAIT)


def _send(sock: socket.socket, child_pid: int, child_pidfd: int) -> None:
    """sendmsg, waiting at most ``REGISTER_WAIT`` for room: a supervisor that is
    paused (SIGSTOP) or starved must not make ``start()`` hang. Past the wait the
    registration is dropped, once with a warning: that child has its lifeline only.
    """
    global _stalled
    try:
        _send_registration(sock, child_pid, child_pidfd)
        if _stalled:
            _stalled = False
        return
    except BlockingIOError:
        pass
    if not _stalled:  # (once stalled, don't wait again until a send gets through)
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLOUT)
        if poller.poll(REGISTER_WAIT * 1000):
            with contextlib.suppress(BlockingIOError):
                _send_registration(sock, child_pid, child_pidfd)
                return
        _stalled = True
        warnings.warn(
            f"corral's supervisor (pid {_pid}) has not read its registrations for "
            f"{REGISTER_WAIT} s (paused?); children started meanwhile rely on their "
            "lifelines only",
            RuntimeWarning,
            stacklevel=5,
        )


def _start() -> socket.socket:
    """Spawn the supervisor (not waiting for it) and return our end of its socket."""
    global _sock, _pid, _pidfd
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if theirs.fileno() == 0:  # (fd 0 was closed here): dup2(0, 0) would keep CLOEXEC
        moved = os.dup(theirs.fileno())
        theirs.close()
        theirs = socket.socket(fileno=moved)
    try:
        child = os.posix_spawn(
            sys.executable,
            [sys.executable, "-I", "-S", _SCRIPT],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, theirs.fileno(), 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            ],
            setsid=True,
            setsigmask=_BLOCKED,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    _sock, _pid = ours, child
    _forkstate.set_fd(_forkstate.SUPERVISOR_SOCKET, ours.fileno())
    _pidfd = os.pidfd_open(child)
    _forkstate.set_fd(_forkstate.SUPERVISOR_PIDFD, _pidfd)
    util.Finalize(None, close, exitpriority=_EXIT_PRIORITY)
    return ours


# Below the stdlib's own at-exit work (priority 0 finalizers, then joining the
# children): the supervisor is let go only once the children are joined.
_EXIT_PRIORITY = -100


def close(timeout: float = EXIT_WAIT) -> None:
    """Let the supervisor go (EOF), wait up to ``timeout`` for it to exit, reap it."""
    global _sock
    with _lock:
        _fresh()
        if _sock is None:
            return
        _forkstate.set_fd(_forkstate.SUPERVISOR_SOCKET, -1)
        _sock.close()
        _sock = None
        poller = select.poll()  # (not select(): the pidfd may be past fd 1024)
        poller.register(_pidfd, select.POLLIN)
        poller.poll(timeout * 1000)
        _forget()


def _forget() -> None:
    """Reap the supervisor if it has exited, and drop it."""
    global _sock, _pid, _pidfd, _stalled, _unresponsive_until
    _forkstate.set_fd(_forkstate.SUPERVISOR_SOCKET, -1)
    _forkstate.set_fd(_forkstate.SUPERVISOR_PIDFD, -1)
    if _sock is not None:
        _sock.close()
    if _pidfd >= 0:
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PIDFD, _pidfd, os.WEXITED | os.WNOHANG)
        os.close(_pidfd)
    _sock, _pid, _pidfd = None, 0, -1
    _stalled = False
    _unresponsive_until = 0.0


def _fresh() -> None:
    """(``_lock`` held.) In a fork child, on first use: drop the parent's supervisor.

    A fork child must not keep its parent's supervisor alive, nor reap it: the fork
    closed the pidfd and put /dev/null under the socket's number (``_forkstate``);
    the child gets a supervisor of its own when it starts children.
    """
    global _sock, _pid, _pidfd, _stalled, _unresponsive_until, _generation
    generation = _forkstate.generation()
    if generation == _generation:
        return
    _generation = generation
    if _sock is not None:
        _forkstate.let_go(_sock)
    _sock, _pid, _pidfd = None, 0, -1
    _stalled = False
    _unresponsive_until = 0.0
