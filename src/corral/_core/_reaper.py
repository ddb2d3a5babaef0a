"""The reaper: corral's children never linger as zombies, and nobody else's are touched.

One daemon thread per process, started on demand and gone when it has nothing to
watch. It waits (epoll) on a set of file descriptors (pidfds of children, or the
forkserver's status socket) plus a wake pipe, and runs the callback registered for each fd
that becomes readable. The callbacks reap *by pidfd* (``waitid(P_PIDFD, ...)``), so
an exit status is only ever collected for a process corral started, never with
``waitpid(-1)``: ``subprocess.Popen`` keeps its own.

    Process.start() --watch(pidfd, cb)--> epoll set <-- reaper thread: epoll_wait
    child exits --> pidfd readable ----------------------> cb(): waitid(P_PIDFD)

A new fd joins the epoll set without waking the thread. An fd is out of the set
while its callback runs, and is closed by the thread itself if someone asks for it
to be closed meanwhile (the wake pipe tells the thread).

After a fork the child starts with an empty reaper: the thread does not exist
there, and the parent's children are not the child's to reap. The fork closes the
wake pipe and puts /dev/null under the epoll's number (``_forkstate``); the rest
of the parent's state is dropped on the child's first use.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable

from . import _forkstate

__all__ = ["close_watched", "unwatch", "watch"]

# How long the thread waits with nothing to watch, and no new fd to watch, before
# it exits; also its longest single wait. Longer saves a thread start on the next
# Process.start() (about 0.1-1 ms on a busy 2-core box, and more when the new
# thread is slow to be scheduled) and idle wake-ups; shorter gives the thread back
# sooner.
IDLE_LINGER = 0.2


class _Reaper:
    def __init__(self) -> None:
        # Re-entrant: a garbage-collected launcher's finalizer calls close_watched(),
        # and garbage collection can run inside any allocation made under the lock.
        # Held across os.fork() (_forkstate), so that a fork child never finds the
        # state half changed (a wake pipe closed but still recorded).
        self._lock = _forkstate.REAPER_LOCK
        self._generation = _forkstate.generation()  # the fork generation of this state
        self._watched: dict[int, Callable[[], bool]] = {}
        self._to_close: list[int] = []
        self._running = -1  # the fd whose callback the thread is running, or -1
        # watch() calls so far: a slice in which some fd was watched is not idle,
        # even if nothing is watched at its end (a start+join loop unwatches each
        # child while it joins it), so the thread is not ended and started anew.
        self._watches = 0
        self._thread: threading.Thread | None = None
        self._epoll: select.epoll | None = None
        self._wake_r = self._wake_w = -1

    def watch(self, fd: int, callback: Callable[[], bool]) -> None:
        # An epoll set can be changed while another thread waits on it, so a new fd
        # needs no wake-up of the thread: a wake-up costs the starting thread a GIL
        # hand-off (about 0.4 ms of a 4 ms fork start+join on a busy 2-core box).
        with self._lock:
            self._fresh()
            self._watched[fd] = callback
            self._watches += 1
            if self._thread is None:
                self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
                _forkstate.set_fd(_forkstate.REAPER_WAKE_READ, self._wake_r)
                _forkstate.set_fd(_forkstate.REAPER_WAKE_WRITE, self._wake_w)
                self._epoll = select.epoll()
                _forkstate.set_fd(_forkstate.REAPER_EPOLL, self._epoll.fileno())
                self._epoll.register(self._wake_r, select.EPOLLIN)
                self._epoll.register(fd, select.EPOLLIN)
                self._thread = threading.Thread(target=self._run, name="corral-reaper", daemon=True)
                self._thread.start()
            else:
                assert self._epoll is not None
                self._epoll.register(fd, select.EPOLLIN)

    def unwatch(self, fd: int) -> Callable[[], bool] | None:
        """Stop watching ``fd``, leaving it open: its callback, to :meth:`watch` it again
        with; None if it was not watched or the thread is running its callback now."""
        with self._lock:
            self._fresh()
            if self._running == fd:
                return None
            callback = self._watched.pop(fd, None)
            if callback is not None:
                self._unregister(fd)
            return callback

    def close_watched(self, fd: int) -> None:
        with self._lock:
            self._fresh()
            if self._watched.pop(fd, None) is None or self._thread is None:
                os.close(fd)
                return
            self._unregister(fd)
            if self._running != fd:
                os.close(fd)  # the thread holds no reference to it: gone from the set
                return
            # The thread is running this fd's callback: let it close the fd when the
            # callback returns, so the number cannot be reused under its feet.
            self._to_close.append(fd)
            self._wake()

    def _unregister(self, fd: int) -> None:
        # (With the lock held.) Before the fd is closed: a closed fd whose open file
        # is still referenced elsewhere (a dup) would stay in the epoll set.
        if self._epoll is not None:
            try:  # noqa: SIM105 (contextlib.suppress costs every join objects, after the fork)
                self._epoll.unregister(fd)
            except OSError:
                pass

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe: already awake
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        idle = False
        while True:
            with self._lock:
                for fd in self._to_close:
                    os.close(fd)
                self._to_close.clear()
                if not self._watched and idle:
                    assert self._epoll is not None
                    for slot in (
                        _forkstate.REAPER_EPOLL,
                        _forkstate.REAPER_WAKE_READ,
                        _forkstate.REAPER_WAKE_WRITE,
                    ):
                        _forkstate.set_fd(slot, -1)
                    self._epoll.close()
                    os.close(self._wake_r)
                    os.close(self._wake_w)
                    self._epoll = None
                    self._wake_r = self._wake_w = -1
                    self._thread = None
                    return
                epoll = self._epoll
                wake_r = self._wake_r
                watches = self._watches
                # Never without a timeout: a thread whose last fd was closed from
                # outside finds out within a slice, with no wake-up (which would cost
                # the closing thread a GIL hand-off).
                timeout = IDLE_LINGER
            assert epoll is not None
            events = epoll.poll(timeout)
            with self._lock:
                idle = not events and not self._watched and self._watches == watches
            for fd, _ in events:
                if fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                    continue
                self._dispatch(fd)

    def _dispatch(self, fd: int) -> None:
        """Run the callback of ``fd``, out of the epoll set meanwhile (a callback
        may close fds, its own included); back in the set if it is not done."""
        with self._lock:
            callback = self._watched.get(fd)
            if callback is None:
                return
            self._unregister(fd)
            self._running = fd
        try:
            done = callback()
        except Exception:  # never let one child's trouble stop reaping
            import traceback

            traceback.print_exc()
            done = True
        with self._lock:
            self._running = -1
            if self._watched.get(fd) is not callback:
                return  # closed (or closed and watched anew) meanwhile
            if done:
                del self._watched[fd]
            else:
                assert self._epoll is not None
                self._epoll.register(fd, select.EPOLLIN)

    def _fresh(self) -> None:
        """(The lock held.) In a fork child, on first use: start empty. The thread
        does not exist here; the fork closed the wake pipe and put /dev/null under
        the epoll's number, which is closed here (``_forkstate``)."""
        generation = _forkstate.generation()
        if generation == self._generation:
            return
        self._generation = generation
        self._watched.clear()
        self._to_close.clear()
        self._running = -1
        self._thread = None
        if self._epoll is not None:
            _forkstate.let_go(self._epoll)
            self._epoll = None
        self._wake_r = self._wake_w = -1


_reaper = _Reaper()


def watch(fd: int, callback: Callable[[], bool]) -> None:
    """Call ``callback()`` from the reaper thread whenever ``fd`` is readable, until it
    returns True. Close the fd with :func:`close_watched`, never directly.
    """
    _reaper.watch(fd, callback)


def unwatch(fd: int) -> Callable[[], bool] | None:
    """Stop watching ``fd`` for now (see ``_Reaper.unwatch``); ``watch`` it again after."""
    return _reaper.unwatch(fd)


def close_watched(fd: int) -> None:
    """Stop watching ``fd`` (if watched) and close it, without racing the reaper."""
    _reaper.close_watched(fd)
