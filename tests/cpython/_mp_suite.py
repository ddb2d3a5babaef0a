"""CPython's ``_test_multiprocessing`` "processes" classes, with corral substituted.

Importing this module installs the test classes (``WithProcessesTestQueue``, ...) in
it for the start method named by ``CORRAL_CPYTHON_START_METHOD``, after pointing the
suite's ``ProcessesMixin`` at corral's objects. Spawned and forkserver children
unpickle the test classes by this module's name, so they import it too, and get
the same substitution. ``CORRAL_CPYTHON_BASELINE=1`` leaves the stdlib in place (to
check the suite itself against the interpreter).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import corral

from . import substitute

substitute.extend_test_package()
substitute.lower_timeouts()

_suite: Any = importlib.import_module("test._test_multiprocessing")

# The names ProcessesMixin takes from multiprocessing, and whether the mixin holds
# them as staticmethods (functions and factories) or as they are (classes).
_AS_IS = ("Process",)
_STATIC = (
    "current_process",
    "parent_process",
    "active_children",
    "Pool",
    "Pipe",
    "Queue",
    "JoinableQueue",
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Barrier",
    "Value",
    "Array",
    "RawValue",
    "RawArray",
)


def _substitute() -> None:
    mixin: Any = _suite.ProcessesMixin
    for name in _AS_IS:
        setattr(mixin, name, getattr(corral, name))
    for name in _STATIC:
        setattr(mixin, name, staticmethod(getattr(corral, name)))


if not substitute.baseline():
    _substitute()
_suite.install_tests_in_module_dict(
    globals(), os.environ[substitute.METHOD_VARIABLE], only_type="processes"
)
