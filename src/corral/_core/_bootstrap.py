"""What runs first and last inside every corral child.

    setup()      subreaper on; lifeline armed (parent death -> die_with_parent)
    ... the stdlib's BaseProcess._bootstrap: run(), then join/terminate its children ...
    teardown()   SIGKILL and reap every descendant still running

``die_with_parent`` runs in the child's main thread, from the lifeline signal: it
ends the child's whole subtree, then the child itself.
"""

from __future__ import annotations

import os
import signal

from . import _lifeline, _linux, _tree
from ._fdpass import FdHandle

__all__ = ["setup", "teardown"]


def _die_with_parent() -> None:
    try:
        _tree.kill_own_descendants()
    finally:
        os.kill(os.getpid(), signal.SIGKILL)


def setup(lifeline: FdHandle) -> None:
    # First, so that anything orphaned below us from now on comes back to us.
    _linux.set_child_subreaper(True)
    _lifeline.arm(lifeline, _die_with_parent)


def teardown() -> None:
    _tree.kill_own_descendants()
