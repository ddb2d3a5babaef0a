"""The reaper: corral's children never linger as zombies, and nobody else's are touched.

One daemon thread per process, started on demand and gone when it has nothing to
watch. It polls a set of file descriptors (pidfds of children, or the forkserver's
status socket) plus a wake pipe, and runs the callback registered for each fd
that becomes readable. The callbacks reap *by pidfd* (``waitid(P_PIDFD, ...)``), so
an exit status is only ever collected for a process corral started, never with
``waitpid(-1)``: ``subprocess.Popen`` keeps its own.

    Process.start() --watch(pidfd, cb)--> [wake pipe] --> reaper thread
                                                           poll(pidfds)
    child exits --> pidfd readable ------------------------> cb(): waitid(P_PIDFD)

After a fork the child starts with an empty reaper: the thread does not exist
there, and the parent's children are not the child's to reap.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable

__all__ = ["close_watched", "watch"]

# How long the thread waits with nothing to watch before it exits. Longer saves a
# thread start on the next Process.start() (about 0.1-1 ms on a busy 2-core box);
# shorter gives the thread back sooner.
IDLE_LINGER = 0.2


class _Reaper:
    def __init__(self) -> None:
        # Re-entrant: a garbage-collected launcher's finalizer calls close_watched(),
        # and garbage collection can run inside any allocation made under the lock.
        self._lock = threading.RLock()
        self._watched: dict[int, Callable[[], bool]] = {}
        self._to_close: list[int] = []
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1

    def watch(self, fd: int, callback: Callable[[], bool]) -> None:
        with self._lock:
            self._watched[fd] = callback
            if self._thread is None:
                self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
                self._thread = threading.Thread(target=self._run, name="corral-reaper", daemon=True)
                self._thread.start()
            else:
                self._wake()

    def close_watched(self, fd: int) -> None:
        with self._lock:
            if self._watched.pop(fd, None) is None or self._thread is None:
                os.close(fd)
                return
            # The thread may be inside poll() on this fd: let it close the fd after
            # poll returns, so the number cannot be reused under its feet.
            self._to_close.append(fd)
            self._wake()

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
                    os.close(self._wake_r)
                    os.close(self._wake_w)
                    self._wake_r = self._wake_w = -1
                    self._thread = None
                    return
                fds = list(self._watched)
                wake_r = self._wake_r
            poller = select.poll()
            poller.register(wake_r, select.POLLIN)
            for fd in fds:
                poller.register(fd, select.POLLIN)
            events = poller.poll(None if fds else IDLE_LINGER * 1000)
            idle = not events
            for fd, _ in events:
                if fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                    continue
                with self._lock:
                    callback = self._watched.get(fd)
                if callback is None:
                    continue
                try:
                    done = callback()
                except Exception:  # never let one child's trouble stop reaping
                    import traceback

                    traceback.print_exc()
                    done = True
                if done:
                    with self._lock:
                        if self._watched.get(fd) is callback:
                            del self._watched[fd]

    def _reset_after_fork(self) -> None:
        self._lock = threading.RLock()
        self._watched.clear()
        self._to_close.clear()
        self._thread = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1


_reaper = _Reaper()
# Hold the lock across fork, so the child never sees the state half-changed (a
# wake pipe closed but still recorded, say).
os.register_at_fork(
    before=lambda: _reaper._lock.acquire(),
    after_in_parent=lambda: _reaper._lock.release(),
    after_in_child=_reaper._reset_after_fork,
)


def watch(fd: int, callback: Callable[[], bool]) -> None:
    """Call ``callback()`` from the reaper thread whenever ``fd`` is readable, until it
    returns True. Close the fd with :func:`close_watched`, never directly.
    """
    _reaper.watch(fd, callback)


def close_watched(fd: int) -> None:
    """Stop watching ``fd`` (if watched) and close it, without racing the reaper."""
    _reaper.close_watched(fd)
