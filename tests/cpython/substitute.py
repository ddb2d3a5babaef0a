"""What the runner changes in CPython's suites, in one place.

- ``lower_timeouts``: the suites' waits are bounded by ``test.support.SHORT_TIMEOUT``
  (30 s) and ``LONG_TIMEOUT`` (5 min), sized for slow buildbots. A test that passes
  waits far less; one that would hang should fail fast here, so both are lowered
  before the suites are imported.
- ``prologue``: the code that puts corral in place of the stdlib, prepended to the
  scripts some tests run in a fresh interpreter (``assert_python_ok``).
- ``extend_test_package``: a test module fetched from Debian (see ``_obtain``) is
  made importable as ``test.<name>``, in this process and in its children.
  ``lower_timeouts`` imports ``test``, so it comes after.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

__all__ = [
    "BASELINE_VARIABLE",
    "METHOD_VARIABLE",
    "PATH_VARIABLE",
    "baseline",
    "extend_test_package",
    "lower_timeouts",
    "prologue",
]

METHOD_VARIABLE = "CORRAL_CPYTHON_START_METHOD"
BASELINE_VARIABLE = "CORRAL_CPYTHON_BASELINE"
PATH_VARIABLE = "CORRAL_CPYTHON_TEST_PATH"

# A test that passes waits a few seconds at most; the per-test watchdog of the
# runner (run_suite.TEST_TIMEOUT) sits above these.
SHORT_TIMEOUT = 10.0
LONG_TIMEOUT = 15.0


def baseline() -> bool:
    return os.environ.get(BASELINE_VARIABLE) == "1"


def lower_timeouts() -> None:
    support: Any = importlib.import_module("test.support")
    support.SHORT_TIMEOUT = min(support.SHORT_TIMEOUT, SHORT_TIMEOUT)
    support.LONG_TIMEOUT = min(support.LONG_TIMEOUT, LONG_TIMEOUT)


def extend_test_package() -> None:
    """Make fetched modules importable as ``test.<name>`` (no-op if none were needed).

    Must run before anything imports ``test``: the directory goes first on
    ``sys.path`` (see ``_obtain``), and children inherit it.
    """
    extra = os.environ.get(PATH_VARIABLE)
    if extra and extra not in sys.path:
        if "test" in sys.modules:
            raise RuntimeError("extend_test_package() after `import test`")
        sys.path.insert(0, extra)


def install_executor() -> None:
    """``concurrent.futures.ProcessPoolExecutor`` becomes corral's, in this process."""
    import concurrent.futures

    import corral

    setattr(concurrent.futures, "ProcessPoolExecutor", corral.ProcessPoolExecutor)  # noqa: B010


def prologue() -> str:
    """Source to run first in a fresh interpreter started by a test."""
    lines = [
        "import os as _os, sys as _sys",
        f"_os.environ.setdefault({PATH_VARIABLE!r}, {os.environ.get(PATH_VARIABLE, '')!r})",
        f"_sys.path.insert(0, {_root()!r})",
        "from tests.cpython import substitute as _s",
        "_s.extend_test_package()",
    ]
    if not baseline():
        lines.append("_s.install_executor()")
    return "\n".join(lines) + "\n"


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
