"""A pool's options, as one frozen record; and the per-call ones that refine them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from typing import Any

from .._context import CorralContext, get_context
from ._progress import ProgressArg

__all__ = ["CallOptions", "PoolOptions"]


@dataclass(frozen=True, kw_only=True)
class PoolOptions:
    """Everything a pool is made with. Built (and checked) by :meth:`make`."""

    processes: int
    context: CorralContext
    initializer: Callable[..., object] | None = None
    initargs: tuple[Any, ...] = ()
    maxtasksperchild: int | None = None
    retries: int = 0
    task_timeout: float | None = None
    initializer_timeout: float | None = None
    max_memory_per_child: int | None = None
    on_event: Callable[[str, int], object] | None = None
    progress: ProgressArg = field(default=False)
    # Start workers as work arrives (up to ``processes``), reusing idle ones first,
    # instead of all at once: the stdlib executor's way under spawn and forkserver.
    start_on_demand: bool = False

    @classmethod
    def make(
        cls,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: CorralContext | BaseContext | str | None = None,
        *,
        retries: int = 0,
        task_timeout: float | None = None,
        initializer_timeout: float | None = None,
        max_memory_per_child: int | None = None,
        on_event: Callable[[str, int], object] | None = None,
        progress: ProgressArg = False,
        start_on_demand: bool = False,
    ) -> PoolOptions:
        if processes is None:
            processes = len(os.sched_getaffinity(0)) or 1
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        _check_retries(retries)
        _check_timeout("task_timeout", task_timeout)
        _check_timeout("initializer_timeout", initializer_timeout)
        if not isinstance(context, CorralContext):
            # A stdlib context (multiprocessing.get_context("spawn")) means its method.
            if isinstance(context, BaseContext):
                context = context.get_start_method()
            context = get_context(context)
        return cls(
            processes=processes,
            context=context,
            initializer=initializer,
            initargs=tuple(initargs),
            maxtasksperchild=maxtasksperchild,
            retries=retries,
            task_timeout=task_timeout,
            initializer_timeout=initializer_timeout,
            max_memory_per_child=max_memory_per_child,
            on_event=on_event,
            progress=progress,
            start_on_demand=start_on_demand,
        )

    @property
    def init_deadline(self) -> float | None:
        """How long a worker's initializer may run (its start before it is not counted)."""
        return self.initializer_timeout or self.task_timeout


@dataclass(frozen=True)
class CallOptions:
    """Options of one call, refining the pool's: see :meth:`corral.Pool.with_options`.

    The tighter of the pool's and the call's ``task_timeout`` applies; ``retries``
    replaces the pool's.
    """

    task_timeout: float | None = None
    retries: int | None = None

    def __post_init__(self) -> None:
        _check_timeout("task_timeout", self.task_timeout)
        if self.retries is not None:
            _check_retries(self.retries)

    def resolve(self, pool: PoolOptions) -> tuple[float | None, int]:
        """(timeout, retries) for a call on a pool with options ``pool``."""
        timeouts = [t for t in (pool.task_timeout, self.task_timeout) if t is not None]
        retries = pool.retries if self.retries is None else self.retries
        return (min(timeouts) if timeouts else None), retries


def _check_retries(retries: int) -> None:
    if not isinstance(retries, int) or retries < 0:
        raise ValueError("retries must be an int >= 0")


def _check_timeout(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be > 0 or None")
