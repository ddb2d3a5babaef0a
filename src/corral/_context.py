"""Contexts: the same corral objects, bound to one start method.

``corral.get_context("spawn")`` returns a :class:`CorralContext`. Its ``Process``
starts children with that method; every other attribute is corral's own object
when corral has one (Queue, Lock, ...), and the stdlib context's otherwise.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext

from . import _process

# typing costs a few ms at import, and every spawned child imports this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from multiprocessing.managers import SyncManager
    from typing import Any

__all__ = ["CorralContext", "Manager", "get_context"]


class CorralContext:
    """A start method plus corral's objects, like :class:`multiprocessing.context.BaseContext`."""

    __module__ = "corral"

    def __init__(self, method: str):
        self._method = method
        self._mp: BaseContext = multiprocessing.get_context(method)
        self.Process: type[_process.Process] = _process.process_class_for(method)

    if TYPE_CHECKING:  # the queues keep their (generic) types through a context
        from ._queue import JoinableQueue as JoinableQueue
        from ._queue import Queue as Queue
        from ._queue import SimpleQueue as SimpleQueue

    def get_start_method(self, allow_none: bool = False) -> str:
        return self._method

    def get_context(self, method: str | None = None) -> CorralContext:
        return self if method is None else get_context(method)

    # Objects that start processes are bound to this context, as the stdlib's are.
    def Pool(self, *args: Any, **kwargs: Any) -> Any:
        import corral

        kwargs.setdefault("context", self)
        return corral.Pool(*args, **kwargs)

    def ProcessPoolExecutor(self, *args: Any, **kwargs: Any) -> Any:
        import corral

        kwargs.setdefault("mp_context", self)
        return corral.ProcessPoolExecutor(*args, **kwargs)

    def Pipeline(self, *args: Any, **kwargs: Any) -> Any:
        import corral

        kwargs.setdefault("context", self)
        return corral.Pipeline(*args, **kwargs)

    def map(self, *args: Any, **kwargs: Any) -> Any:
        import corral

        kwargs.setdefault("context", self)
        return corral.map(*args, **kwargs)

    def Manager(self) -> SyncManager:
        """A started :class:`multiprocessing.managers.SyncManager` whose server is a
        corral Process of this context: it dies with this process (and is handed to
        its supervisor), as every corral child does."""
        from multiprocessing.managers import SyncManager

        manager = SyncManager(ctx=self)  # type: ignore[arg-type]  # (duck-typed: Process, Pipe)
        manager.start()
        return manager

    def __getattr__(self, name: str) -> Any:
        import corral

        native = getattr(corral, name, None)
        if native is not None and getattr(native, "__module__", "").startswith("corral"):
            return native
        return getattr(self._mp, name)

    def __repr__(self) -> str:
        return f"<CorralContext {self._method!r}>"


_contexts: dict[str, CorralContext] = {}


def get_context(method: str | None = None) -> CorralContext:
    """Return a context for ``method`` ("fork", "forkserver" or "spawn").

    With no argument, the context of the current default start method
    (:func:`multiprocessing.get_start_method`).
    """
    if method is None:
        method = multiprocessing.get_start_method()
    if method not in multiprocessing.get_all_start_methods():
        raise ValueError(f"cannot find context for {method!r}")
    try:
        return _contexts[method]
    except KeyError:
        return _contexts.setdefault(method, CorralContext(method))


get_context.__module__ = "corral"


def Manager() -> SyncManager:
    """Like :func:`multiprocessing.Manager`, with the server started as a corral
    Process (default start method): it never outlives this process."""
    return get_context().Manager()


Manager.__module__ = "corral"
