"""The optional C extension, ``_speedups.c``, or None.

Built by ``setup.py`` when a C compiler is present; corral behaves the same without
it, on pure-Python paths. ``CORRAL_PURE_PYTHON=1`` in the environment leaves it out
(read at import, so in spawned children too); tests use that to cover both paths.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["speedups"]


def _load() -> ModuleType | None:
    if os.environ.get("CORRAL_PURE_PYTHON"):
        return None
    try:
        return importlib.import_module(f"{__package__}._speedups")
    except ImportError:
        return None


speedups = _load()
