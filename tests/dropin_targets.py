"""Tasks and objects for the drop-in tests: module-level, so spawn workers unpickle them.

The ``*AtPickle`` / ``*AtUnpickle`` objects fail one way each when pickled or
unpickled (the rows of CPython's ExecutorDeadlockTest, as a table of ours).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import sys
import time
from collections.abc import Iterator
from typing import Any


def mul(x: int, y: int) -> int:
    return x * y


def identity(x: Any) -> Any:
    return x


def return_instance(cls: type) -> Any:
    return cls()


def init_fail() -> None:
    raise ValueError("error in initializer")


def _exit() -> None:
    sys.exit(1)


def _crash() -> None:
    ctypes.string_at(0)  # SIGSEGV


def _raise_unpickling() -> None:
    raise pickle.UnpicklingError("error in unpickle")


class ErrorAtPickle:
    def __reduce__(self) -> Any:
        raise pickle.PicklingError("error in pickle")


class ExitAtPickle:
    def __reduce__(self) -> Any:
        _exit()


class ErrorAtUnpickle:
    def __reduce__(self) -> Any:
        return _raise_unpickling, ()


class ExitAtUnpickle:
    def __reduce__(self) -> Any:
        return _exit, ()


class CrashAtUnpickle:
    def __reduce__(self) -> Any:
        return _crash, ()


class Payload:
    """A result whose lifetime a test watches with a weakref."""

    def __init__(self, n: int = 0) -> None:
        self.n = n


def make_payload(n: int) -> Payload:
    return Payload(n)


def getpid(_: object = None) -> int:
    return os.getpid()


def print_after(seconds: float, text: str) -> None:
    """A task that is still running when the submitting program's main thread ends
    (the sleep is the task's own duration, not a synchronisation)."""
    import time

    time.sleep(seconds)
    print(text, flush=True)


def raise_at(n: int, at: int) -> Iterator[int]:
    """A generator of ``range(n)`` that raises ``KeyError(at)`` instead of yielding ``at``."""
    for i in range(n):
        if i == at:
            raise KeyError(at)
        yield i


def init_fail_logging(q: Any) -> None:
    """A failing initializer whose worker's "concurrent.futures" log goes to ``q``."""
    import logging
    from logging.handlers import QueueHandler

    logger = logging.getLogger("concurrent.futures")
    logger.addHandler(QueueHandler(q))
    logger.propagate = False
    raise ValueError("error in initializer")


def condition_sleeper(cond: Any, sleeping: Any, woken: Any, timeout: float) -> None:
    """Wait on ``cond``; ``sleeping`` is released just before, ``woken`` just after."""
    with cond:
        sleeping.release()
        cond.wait(timeout)
        woken.release()


def manager_child(d: Any, items: Any, q: Any, lock: Any) -> None:
    """Uses a Manager's proxies from a corral child."""
    with lock:
        d["pid"] = os.getpid()
        items.append("child")
    q.put("hello")


def manager_put(item: tuple[Any, int]) -> int:
    q, i = item
    q.put(i * 2)
    return i


def manager_append(items: Any, value: str) -> int:
    items.append(value)
    return len(items)


def wait_for_path(path: str, timeout: float) -> bool:
    """Keep a worker busy until ``path`` exists (True), or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def wait_for_path_carrying(path: str, timeout: float, cargo: object) -> bool:
    """``wait_for_path``, with ``cargo`` along (an argument that acts while pickled)."""
    return wait_for_path(path, timeout)
