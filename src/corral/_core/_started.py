"""The children this process has started and not yet collected, by start number.

    Process.start ── child_starting() ──► count += 1; running.add(count)
    the child's exit collected ── child_gone(n) ──► running.discard(n)
                                                    on_gone() (the arena, if loaded)

A block of shared memory that this process frees may still be used by a child
started after the block was made (given as an argument, or inherited by fork), so
the arena (``_arena``) holds such a block until every such child has gone: it
stamps each block with ``count`` when made, and compares with ``running``.

Kept apart from the arena so that a program that only starts processes never loads
it: the arena brings ctypes with libffi and mmap, some 20 more memory areas and
200 KB that every later fork copies and every fork child tears down.

``state().lock`` guards ``count`` and ``running`` here and all of the arena's
state (one lock: a free in the arena reads ``running``). Reentrant: the garbage
collector may free a block while this thread is inside the arena's ``allocate()``.
A fork child has started nothing yet: it gets a state of its own on first use
(``_forkstate.PerFork``), with a lock no thread of the parent can be holding.
"""

from __future__ import annotations

import threading

from ._forkstate import PerFork

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["State", "child_gone", "child_starting", "newest", "on_gone", "state"]


class State:
    """This process's start numbers (one per fork generation: ``state()``)."""

    __slots__ = ("count", "lock", "running")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.count = 0  # children this process started so far
        self.running: set[int] = set()  # start numbers of the children not yet collected


_state = PerFork(State)
state = _state.get

# Called (``state().lock`` held) after each child_gone(): set by the arena when it loads.
on_gone: Callable[[], None] | None = None


def child_starting() -> int:
    """A child is about to start: its start number, for ``child_gone``."""
    st = state()
    with st.lock:
        st.count += 1
        st.running.add(st.count)
        return st.count


def child_gone(number: int) -> None:
    """The child started as ``number`` has exited (or failed to start)."""
    st = state()
    with st.lock:
        st.running.discard(number)
        if on_gone is not None:
            on_gone()


def newest() -> int:
    """(``state().lock`` held.) The start number of the newest child still running, or 0."""
    return max(state().running, default=0)
