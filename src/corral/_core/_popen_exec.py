"""The launchers of the start methods that exec or go through a server: spawn and
forkserver, over the stdlib's. Loaded only when one of them is used
(``_launch.popen_class_for``): the stdlib modules they build on map a dozen more
libraries into the process, and each fork of it copies and tears them down.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
from multiprocessing import forkserver as _mp_forkserver
from multiprocessing import popen_forkserver, popen_spawn_posix, util

from ._errors import ChildDiedAtStart
from ._popen import LOST_STATUS, CorralPopen, _readable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["ForkServerPopen", "SpawnPopen", "popen_class_for"]


class SpawnPopen(CorralPopen, popen_spawn_posix.Popen):
    def __init__(self, process_obj: Any):
        self._corral_before_launch()
        popen_spawn_posix.Popen.__init__(self, process_obj)
        self._corral_after_launch()

    def _launch(self, process_obj: Any) -> None:
        """The stdlib's spawn launch, with one change: the child's ends of the two
        pipes are closed as soon as the child exists, *before* its start data is
        written. The stdlib closes them after, so a child that died while the data
        (a large argument, say) was written left the write blocked for good on a
        pipe this process still had a reader for, and the child a zombie. Here the
        write fails with EPIPE instead: the child is killed if need be, reaped, and
        ``start()`` raises ``ChildDiedAtStart``."""
        from multiprocessing import context, reduction, resource_tracker, spawn

        mp_util: Any = util  # (the stubs lack some of what it has)
        fds: list[int] = self._fds  # type: ignore[attr-defined]
        tracker_fd: int = resource_tracker.getfd()  # type: ignore[assignment]
        fds.append(tracker_fd)
        data = io.BytesIO()
        context.set_spawning_popen(self)
        try:
            reduction.dump(spawn.get_preparation_data(process_obj._name), data)
            reduction.dump(process_obj, data)
        finally:
            context.set_spawning_popen(None)
        parent_r, child_w = os.pipe()
        try:
            child_r, parent_w = os.pipe()
        except BaseException:
            os.close(parent_r)
            os.close(child_w)
            raise
        try:
            cmd = spawn.get_command_line(tracker_fd=tracker_fd, pipe_handle=child_r)
            fds.extend([child_r, child_w])
            self.pid = mp_util.spawnv_passfds(spawn.get_executable(), cmd, fds)
        except BaseException:
            mp_util.close_fds(parent_r, parent_w)
            raise
        finally:
            os.close(child_r)
            os.close(child_w)
        self.sentinel = parent_r
        self.finalizer = util.Finalize(self, mp_util.close_fds, (parent_r, parent_w))
        try:
            view = data.getbuffer()
            while view:
                view = view[os.write(parent_w, view) :]
        except BrokenPipeError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)  # (it closed the pipe without dying)
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            self.finalizer()
            raise ChildDiedAtStart(self.pid, self.returncode) from None


class ForkServerPopen(CorralPopen, popen_forkserver.Popen):
    """The forkserver reaps; its status socket (the sentinel) carries the exit code."""

    def __init__(self, process_obj: Any):
        self._corral_before_launch()
        popen_forkserver.Popen.__init__(self, process_obj)
        self._corral_after_launch()

    def _open_pidfd(self) -> int:
        """A pidfd on the child, or -1 if it is already gone.

        The server forks and reaps, so the child may have exited and been reaped by
        the time we learn its pid. Once its status is on the socket, a pidfd opened
        now could name a recycled pid: it is dropped, and signals become no-ops, as
        for any finished child. (A pid recycled between the server's reap and its
        status write, a matter of microseconds, is the one window left.)
        """
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return -1
        if _readable(self.sentinel, 0):
            os.close(fd)
            return -1
        return fd

    def _corral_set_sentinel(self) -> None:
        pass  # the status socket is the only thing that tells a forkserver child's exit

    def _new_watch_fd(self) -> int:
        # A duplicate, so that the stdlib may close its sentinel whenever it likes.
        return os.dup(self.sentinel)

    def _collect(self, block: bool) -> int | None:
        """The exit code the server wrote on the status socket, or None if none yet.

        As the stdlib's ``poll``, less two things: it does not store ``returncode``
        (``poll()`` does, after the exit callbacks ran), and it asks the socket with
        one poll object rather than ``connection.wait``'s selector (a join's page
        faults, after the fork)."""
        if not _readable(self.sentinel, None if block else 0):
            return None
        try:
            code: int = _mp_forkserver.read_signed(self.sentinel)
        except (OSError, EOFError):
            return LOST_STATUS  # (the server itself was killed, as the stdlib says)
        return code


def _preload_corral_in_forkserver() -> None:
    """Have the stdlib's forkserver import corral once, before it forks anything.

    Otherwise every forkserver child imports corral anew to unpickle its process
    object, which costs tens of milliseconds per start. Only the list is extended;
    a server already running keeps what it has.
    """
    server = getattr(_mp_forkserver, "_forkserver", None)
    modules = getattr(server, "_preload_modules", None)
    if server is not None and isinstance(modules, list) and "corral" not in modules:
        server.set_forkserver_preload([*modules, "corral"])


_preload_corral_in_forkserver()

_POPENS: dict[str, type[CorralPopen]] = {
    "spawn": SpawnPopen,
    "forkserver": ForkServerPopen,
}


def popen_class_for(method: str) -> type[CorralPopen]:
    return _POPENS[method]
