"""What runs first and last inside every corral child.

    setup()      subreaper on; lifeline armed (parent death -> die_with_parent)
    ... the stdlib's BaseProcess._bootstrap: run(), then join/terminate its children ...
    teardown()   SIGKILL and reap every descendant still running

``die_with_parent`` runs in the child's main thread, from the lifeline signal: it
ends the child's whole subtree, then the child itself.

Every object the child touches after a fork costs it a copy-on-write page fault
(the reference count is written), and the child's start-to-exit path is what a
``join()`` waits for; so where the C extension is built, ``setup`` is one C call
after the handler is installed (``_speedups.c``: ``child_setup``), and the pure
path (``_lifeline.arm``) does the same steps in Python.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # (no stub; the C half of signal)
import os
import signal

from . import _lifeline, _linux, _native, _tree
from ._fdpass import FdHandle

__all__ = ["setup", "teardown"]

_child_setup = getattr(_native.speedups, "child_setup", None)
_SIGNAL = _lifeline.LIFELINE_SIGNAL
_has_children = getattr(_native.speedups, "has_children", None)


def _die_with_parent(signum: int = 0, frame: object = None) -> None:
    """The lifeline's signal handler: the parent is gone, so is our subtree, so are we."""
    try:
        _tree.kill_own_descendants()
    finally:
        os.kill(os.getpid(), signal.SIGKILL)


def setup(lifeline: FdHandle) -> int:
    """Subreaper on, then the lifeline armed: consumes ``lifeline``; main thread
    only. Returns the armed lifeline's fd (EOF once the parent is gone)."""
    if _child_setup is None:
        # First, so that anything orphaned below us from now on comes back to us.
        _linux.set_child_subreaper(True)
        _lifeline.arm(lifeline, _die_with_parent)
        fd = _lifeline.armed_fd()
        assert fd is not None
        return fd
    # The handler first (_signal.signal: see _lifeline.arm), then one C call that
    # sets the subreaper flag, arms the lifeline, records it (``_forkstate``) and
    # checks for EOF, as arm() does.
    _signal.signal(_SIGNAL, _die_with_parent)
    armed: int
    armed, parent_gone = _child_setup(lifeline.fd, _SIGNAL)
    lifeline.fd = -1  # (closed by child_setup)
    if parent_gone:
        _die_with_parent()
    return armed


def teardown() -> None:
    """SIGKILL and reap whatever still runs below us (we are a subreaper, so every
    orphan of our subtree is our child by now)."""
    # The common answer, "no children", without the ChildProcessError of the pure
    # path (its objects cost a fresh fork child copy-on-write faults).
    if _has_children is None or _has_children():
        _tree.kill_own_descendants()
