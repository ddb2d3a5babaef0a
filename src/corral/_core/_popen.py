"""Launchers, one per start method, built on the stdlib's.

The stdlib's launchers (``multiprocessing.popen_*``) do the starting; these
subclasses change what happens around it:

- a pidfd is opened on the child at once, so signals can never hit a recycled pid;
- the reaper watches the child and collects its exit status within milliseconds,
  through that pidfd only;
- ``terminate()`` and ``kill()`` freeze and signal the child's whole subtree;
- ``poll()`` and ``wait()`` are safe to call from any thread, concurrently with the
  reaper: exactly one of them collects the status.

Under fork and spawn the child is ours, and ``waitid(P_PIDFD)`` reaps it. Under
forkserver the server forks, reaps and reports the status over its socket (the
stdlib's sentinel), so corral reads that socket instead; the pidfd is still used for
signals.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from multiprocessing import popen_fork

from . import _linux, _reaper, _supervisor, _tree

_is_finalizing = sys.is_finalizing  # (bound now: a module's globals may be gone at exit)

# typing costs a few ms at import, and every spawned child imports this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["CorralPopen", "ForkPopen"]


# The exit code reported when the status was collected by someone else.
LOST_STATUS = 255


def _decode(info: Any) -> int:
    if info.si_code == os.CLD_EXITED:
        return int(info.si_status)
    return -int(info.si_status)


class CorralPopen:
    """Mixin over a stdlib launcher. ``pid`` and ``returncode`` as in the stdlib."""

    pid: int
    returncode: int | None
    sentinel: int
    _pidfd: int
    _watch_fd: int
    _reap_lock: threading.RLock
    _exit_callbacks: list[Callable[[], None]]
    _owner: int  # the pid of the process that started the child

    if TYPE_CHECKING:

        def __init__(self, process_obj: Any) -> None: ...

    def _corral_before_launch(self) -> None:
        """What needs no child yet, made before the fork: after it, every page the
        parent writes is copied (the child still shares it), while the child runs."""
        self._reap_lock = threading.RLock()  # (re-entrant: exit callbacks run under it)
        self._exit_callbacks = []
        self._pidfd = self._watch_fd = -1
        self._owner = os.getpid()

    def _corral_after_launch(self) -> None:
        self._pidfd = self._open_pidfd()
        _register(self.pid, self._pidfd)
        self._corral_set_sentinel()
        watch_fd = self._watch_fd = self._new_watch_fd()
        # A weak reference: what keeps a launcher alive until its child is collected
        # is its Process (in _process._children), never the reaper, so that the
        # launcher goes with the Process after join(). Its fds are closed by close(),
        # or by __del__ (no util.Finalize: one costs about 30 us here, after the fork).
        _reaper.watch(watch_fd, functools.partial(_reap_weakly, weakref.ref(self)))

    def _corral_close_fds(self) -> None:
        """Close the pidfd and the watched fd, once."""
        watch_fd, pidfd = self._watch_fd, self._pidfd
        self._watch_fd = self._pidfd = -1
        if watch_fd >= 0:
            _reaper.close_watched(watch_fd)
        if pidfd >= 0 and pidfd != watch_fd:
            os.close(pidfd)

    def __del__(self) -> None:
        # Only in the process that opened them: in a fork child, the numbers may
        # name other files by now (as a util.Finalize, whose registry the stdlib
        # clears in its children, would not run there either). Nor while the
        # interpreter finalizes: the reaper, a daemon thread, is frozen by then,
        # maybe holding its lock, which close_watched() would wait on for good (the
        # exit hung in about 1 of 50 runs); the fds go with the process anyway.
        if getattr(self, "_owner", 0) == os.getpid() and not _is_finalizing():
            self._corral_close_fds()

    # -- hooks for subclasses
    def _open_pidfd(self) -> int:
        """A pidfd on the child (ours: it cannot have been reaped yet)."""
        return os.pidfd_open(self.pid)

    def _corral_set_sentinel(self) -> None:
        # The stdlib's sentinel is a pipe that any descendant inheriting its write
        # end keeps open; a pidfd is readable exactly when the child has exited.
        self.sentinel = self._pidfd

    def _new_watch_fd(self) -> int:
        """The fd the reaper polls; readable once the child has exited."""
        return self._pidfd

    def _collect(self, block: bool) -> int | None:
        try:
            info = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | (0 if block else os.WNOHANG))
        except ChildProcessError:
            # Someone else collected the status: a waitpid(-1) elsewhere in the
            # program, or our own last-gasp cleanup in a dying child. The stdlib's
            # forkserver launcher reports a lost status the same way.
            return LOST_STATUS
        return None if info is None else _decode(info)

    # -- shared
    def _reaper_callback(self) -> bool:
        return self.poll() is not None

    def add_exit_callback(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` once, in whichever thread collects the exit status."""
        with self._reap_lock:
            if self.returncode is None:
                self._exit_callbacks.append(callback)
                return
        callback()

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        """The exit code, or None if the child runs (``flag=0``: wait until it exits).

        A wait happens on the sentinel, never under the reap lock, so that nothing
        else (``terminate()`` from another thread, say) waits behind a join().
        """
        if self._owner != os.getpid():
            # A fork child's copy of its parent's launcher: the child is not ours
            # to wait for or reap (its pidfd may even be closed here, by a program
            # that closed every fd), as the stdlib's waitpid() there finds no child.
            return self.returncode
        while True:
            if (code := self.returncode) is not None:
                return code
            if flag == 0:
                _readable(self.sentinel, None)
            with self._reap_lock:
                code = self.returncode
                if code is not None:  # collected by another thread while we waited
                    return code
                code = self._collect(block=False)
                if code is None:
                    if flag == 0:
                        continue  # (the sentinel woke us early: wait again)
                    return None
                # The exit callbacks run before returncode is set, under the lock: so
                # a poll() or join() in another thread returns only once they are done
                # (and the reaper has let go of this launcher).
                callbacks, self._exit_callbacks = self._exit_callbacks, []
                try:
                    for cb in callbacks:
                        cb()
                finally:
                    self.returncode = code
            return code

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is not None:
            return self.returncode
        # While a thread waits for the child, the reaper needs no wake-up for it: that
        # would only make the two contend for the GIL and the reap lock (about 0.3 ms
        # of a 2 ms fork start+join; the "start+join" process benchmark). (The watched
        # fd is the pidfd, or a forkserver child's copy of its status socket, which
        # the poll here does not read.)
        callback = _reaper.unwatch(self._watch_fd) if self._watch_fd >= 0 else None
        try:
            if timeout is None:
                return self.poll(0)
            if not _readable(self.sentinel, timeout):
                return None
            return self.poll()
        finally:
            if callback is not None and self.returncode is None:  # not collected
                _reaper.watch(self._watch_fd, callback)

    def _send_signal(self, sig: int) -> None:
        if self.poll() is not None or self._pidfd < 0:
            return
        if sig == signal.SIGKILL:
            handed = self._kill_by_supervisor()
            members = handed if handed is not None else _tree.kill_subtree(self.pid, self._pidfd)
        else:
            members = _tree.freeze_subtree(self.pid, self._pidfd)
            _tree.signal_members([(self.pid, self._pidfd), *members], sig)
        if sig == signal.SIGKILL and members:
            # kill() returns once the subtree is gone, not merely signalled: a caller
            # that checks right after (a pool's terminate(), a test) sees no survivor.
            _tree.wait_dead([fd for _, fd in members], KILL_WAIT)
        if members and _linux.is_child_subreaper():
            # We are a subreaper, so the members come back to us as their parents
            # die: reap them once they are all dead, or they would stay zombies.
            _reap_when_all_dead(members, (self.pid, os.dup(self._pidfd)))
        else:
            _tree.close_members(members)

    def _kill_by_supervisor(self) -> list[_tree.Member] | None:
        """Hand the kill to this process's supervisor, which runs it in a session
        of its own (``_supervisor.kill_subtree``); None if it did not end the child.
        Else the members, for a subreaper caller (the members come back to it as
        zombies, and only a caller that knows them can reap them: see below), or []."""
        members: list[_tree.Member] | None = [] if _linux.is_child_subreaper() else None
        done = _supervisor.kill_subtree(self.pid, self._pidfd, SUPERVISOR_KILL_WAIT, members)
        if done and _tree.wait_dead([self._pidfd], 0):
            return members or []
        _tree.close_members(members or [])  # (the walk here opens its own)
        return None

    def terminate(self) -> None:
        self._send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self._send_signal(signal.SIGKILL)

    def close(self) -> None:
        super().close()  # type: ignore[misc]
        with self._reap_lock:
            self._corral_close_fds()


def _readable(fd: int, timeout: float | None) -> bool:
    """Whether ``fd`` is readable (or hung up) within ``timeout`` seconds (None: no
    limit; negative: none). One poll object: ``multiprocessing.connection.wait``
    builds a selector and its keys in Python, whose objects cost page faults after a
    fork (the "start+join" process benchmark); ``select`` cannot take fds past 1024."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    # A negative timeout is no wait, as for connection.wait (join(-1)); poll()
    # would take it for no limit.
    return bool(poller.poll(None if timeout is None else max(timeout, 0.0) * 1000))


def _register(pid: int, pidfd: int) -> None:
    """Hand the child to this process's supervisor (guarantee 2, from outside).

    The child is running by now, so a failure here must not make start() raise:
    it is reported, and the child keeps its lifeline (code inside it) only.
    """
    try:
        _supervisor.register(pid, pidfd)
    except OSError as exc:
        import warnings

        warnings.warn(
            f"corral could not hand child {pid} to its supervisor ({exc}); if this "
            "process dies, only the child's own lifeline will end its subtree",
            RuntimeWarning,
            stacklevel=4,
        )


def _reap_when_all_dead(members: list[_tree.Member], root: _tree.Member) -> None:
    """Have the reaper collect ``members`` once every one of them, and the subtree's
    root, has exited.

    Only once all are dead is every re-parenting to us done (a member whose parent is
    the root comes back to us only when the root dies); then each member is reaped by
    its pidfd, and one that is not our child (its parent outside the subtree) is left
    to its parent. The root is the launcher's to reap; its pidfd here is a duplicate.
    """
    members = [m for m in members if m[1] >= 0]  # (one signalled by pid: not watched)
    watched = [*members, root]
    remaining = {fd for _, fd in watched}
    lock = threading.Lock()

    def on_exit(fd: int) -> bool:
        with lock:
            remaining.discard(fd)
            if remaining:
                return True
        for _, member_fd in members:
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PIDFD, member_fd, os.WEXITED | os.WNOHANG)
        _tree.close_members(watched)
        return True

    for _, fd in watched:
        _reaper.watch(fd, lambda fd=fd: on_exit(fd))  # type: ignore[misc]


# How long kill() waits for the SIGKILLed members of a child's subtree to be gone
# (they go in microseconds, unless stuck in the kernel): its bound on a stuck one.
KILL_WAIT = 1.0
# How long kill() waits for the supervisor to report a subtree gone before it does
# the work itself. Its kill takes milliseconds, or about a second for a storm of a
# thousand (the kernel's exit work); longer covers a busier box, shorter bounds
# what a paused supervisor (SIGSTOP) costs a kill().
SUPERVISOR_KILL_WAIT = 5.0


def _reap_weakly(ref: weakref.ref[CorralPopen]) -> bool:
    """The reaper's callback for a launcher: True once its child is collected (or
    the launcher is gone)."""
    popen = ref()
    return True if popen is None else popen._reaper_callback()


class ForkPopen(CorralPopen, popen_fork.Popen):
    def __init__(self, process_obj: Any):
        self._corral_before_launch()
        popen_fork.Popen.__init__(self, process_obj)
        self._corral_after_launch()

    def _launch(self, process_obj: Any) -> None:
        """The stdlib's fork launch without its sentinel pipe: the pidfd is the
        sentinel here, and the child's "is my parent alive?" fd
        (``parent_process().sentinel``) is its armed lifeline, which reads EOF at the
        parent's death just as the stdlib's pipe does (``Process._bootstrap``). That
        saves two pipes, their closes and a ``util.Finalize`` per start, and their
        page faults after the fork."""
        code = 1
        self.pid = os.fork()
        if self.pid == 0:
            try:
                code = process_obj._bootstrap(parent_sentinel=None)
            finally:
                os._exit(code)
