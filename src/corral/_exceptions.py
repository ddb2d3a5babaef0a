"""Every exception corral raises, in one place.

The tree::

    CorralError                      root of everything corral raises
    └── ProcessDied                  a child ended without producing a result

Each class also inherits the stdlib exception that a user of ``multiprocessing``
would already catch, where one fits. Every exception here survives pickling,
because exceptions cross process boundaries.
"""

from __future__ import annotations

import signal as _signal
from typing import Any

__all__ = ["CorralError", "ProcessDied", "RemoteTraceback"]


class CorralError(Exception):
    """Root of all corral exceptions.

    Catch this to handle anything corral raises on its own account. Exceptions
    raised by *your* code in a child are re-raised with their own type instead.
    """

    __module__ = "corral"


def _describe_status(exitcode: int | None) -> str:
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            name = _signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"exited with code {exitcode}"


class ProcessDied(CorralError):
    """A child process ended without delivering a result.

    Raised by :meth:`corral.Process.result` when the child was killed by a signal,
    called ``os._exit()``, or exited through ``SystemExit`` with a non-zero code.

    Attributes:
        exitcode: the child's exit code as ``multiprocessing`` reports it (negative
            signal number when a signal killed it).
        signal: the :class:`signal.Signals` that killed the child, or ``None``.
        pid: the child's process id, or ``None`` if unknown.
    """

    __module__ = "corral"

    def __init__(self, exitcode: int | None, pid: int | None = None, name: str | None = None):
        self.exitcode = exitcode
        self.pid = pid
        self.name = name
        self.signal: _signal.Signals | None = None
        if exitcode is not None and exitcode < 0:
            try:
                self.signal = _signal.Signals(-exitcode)
            except ValueError:
                self.signal = None
        who = f"process {name or '?'} (pid {pid})" if pid is not None else f"process {name or '?'}"
        super().__init__(f"{who} {_describe_status(exitcode)} without returning a result")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.exitcode, self.pid, self.name))


class RemoteTraceback(Exception):
    """The traceback of an exception raised in another process.

    It is attached as ``__cause__`` of the re-raised exception, so the child's
    stack is printed below the parent's, as :mod:`concurrent.futures` does.
    """

    __module__ = "corral"

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb
