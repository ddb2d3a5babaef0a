"""Handing a file descriptor to a child when it starts, under every start method.

- fork: the child inherits the descriptor with the same number; nothing is pickled.
- spawn and forkserver: the process object is pickled while the launcher is
  "spawning". ``FdHandle.__reduce__`` then asks the launcher to pass the descriptor
  along (``DupFd``): spawn lists it in the fds kept across exec, forkserver sends it
  over its unix socket with SCM_RIGHTS. The child rebuilds an ``FdHandle`` around the
  descriptor it received, made close-on-exec (it arrives inheritable).

Pickling an ``FdHandle`` at any other time (say, putting it in a queue) is refused
with a clear error, as the stdlib does for its own locks and pipes.
"""

from __future__ import annotations

import os
from multiprocessing import context as _mp_context
from multiprocessing import reduction as _mp_reduction

from ._errors import SharingError

__all__ = ["FdHandle", "SharingError"]


# typing costs a few ms at import, and every spawned child imports this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    class _DupFd(Protocol):
        def detach(self) -> int: ...


class FdHandle:
    """Owns one file descriptor, and knows how to reach a child at start."""

    __slots__ = ("__weakref__", "fd", "what")

    def __init__(self, fd: int, what: str = "object"):
        self.fd = fd
        self.what = what

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def __reduce__(self) -> tuple[Any, ...]:
        popen = _mp_context.get_spawning_popen()
        if popen is None:
            raise SharingError(
                f"a corral {self.what} can only be passed to a child process as an "
                "argument when the child starts (Process(args=...)); it cannot be "
                "pickled or sent through a queue or pipe later"
            )
        if self.fd < 0:
            raise ValueError(f"this corral {self.what} is closed")
        dup = _mp_reduction.DupFd(self.fd)  # (registers the fd with the launcher)
        if getattr(popen, "method", None) == "spawn":
            # Spawn keeps the fd's number across exec (pass_fds), and the stdlib's
            # DupFd only carries it: send the number, so that the child need not
            # import multiprocessing.popen_spawn_posix to unpickle it (0.5 ms).
            return (_rebuild_number, (dup.detach(), self.what))
        return (_rebuild, (dup, self.what))

    def __repr__(self) -> str:
        return f"<FdHandle fd={self.fd} for {self.what}>"


def _rebuild(dupfd: _DupFd, what: str) -> FdHandle:
    return _rebuild_number(dupfd.detach(), what)


def _rebuild_number(fd: int, what: str) -> FdHandle:
    # The fd arrives inheritable (spawn keeps it across exec with pass_fds; one
    # received with SCM_RIGHTS has no close-on-exec): made close-on-exec here, as
    # fork children inherit it, so that a child that exec()s another program does
    # not hand it corral's shared memory, or keep a result memfd alive.
    os.set_inheritable(fd, False)
    return FdHandle(fd, what)
