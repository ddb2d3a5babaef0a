"""CPython's ``test_concurrent_futures`` process-pool classes, with corral substituted.

Importing this module imports the suite (from the interpreter, or fetched: see
``_obtain``), makes ``concurrent.futures.ProcessPoolExecutor`` corral's in this
process and in the scripts the suite runs in fresh interpreters, and exposes the
classes of the start method named by ``CORRAL_CPYTHON_START_METHOD``:
Initializer, FailingInitializer, ProcessPoolShutdown, Wait, AsCompleted,
ProcessPoolExecutor and ExecutorDeadlock.
"""

from __future__ import annotations

import importlib
import os
import unittest
from typing import Any

from . import substitute

substitute.extend_test_package()
substitute.lower_timeouts()

_suite: Any = importlib.import_module("test.test_concurrent_futures")

_MIXINS = {
    "fork": _suite.ProcessPoolForkMixin,
    "forkserver": _suite.ProcessPoolForkserverMixin,
    "spawn": _suite.ProcessPoolSpawnMixin,
}


def _substitute() -> None:
    import corral

    substitute.install_executor()
    for mixin in _MIXINS.values():
        mixin.executor_type = corral.ProcessPoolExecutor


def _with_prologue() -> None:
    """Scripts the suite runs in a fresh interpreter get ``substitute.prologue()`` first."""
    original = _suite.assert_python_ok

    def assert_python_ok(*args: Any, **env: Any) -> Any:
        if len(args) == 2 and args[0] == "-c":
            args = ("-c", substitute.prologue() + args[1])
        return original(*args, **env)

    _suite.assert_python_ok = assert_python_ok


if not substitute.baseline():
    _substitute()
_with_prologue()

_mixin = _MIXINS[os.environ[substitute.METHOD_VARIABLE]]
for _name, _value in vars(_suite).items():
    is_test = isinstance(_value, type) and issubclass(_value, unittest.TestCase)
    if is_test and issubclass(_value, _mixin):
        globals()[_name] = _value

setUpModule = _suite.setUpModule
