"""``corral.sharedctypes``: :mod:`multiprocessing.sharedctypes` with corral's shared
values (``copy`` and ``synchronized`` are the stdlib's)."""

from __future__ import annotations

from multiprocessing.sharedctypes import copy, synchronized

from ._sharedctypes import Array, RawArray, RawValue, Value

__all__ = ["Array", "RawArray", "RawValue", "Value", "copy", "synchronized"]
