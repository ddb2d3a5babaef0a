"""``corral.context``: :mod:`multiprocessing.context` with corral's contexts.

``get_context`` returns a :class:`corral.CorralContext`; the stdlib's exceptions
and ``BaseContext`` (which ``mp_context=`` also accepts) are the stdlib's.
"""

from __future__ import annotations

from multiprocessing.context import (
    AuthenticationError,
    BaseContext,
    BufferTooShort,
    ProcessError,
    TimeoutError,
)

from ._context import CorralContext, get_context
from ._process import Process

__all__ = [
    "AuthenticationError",
    "BaseContext",
    "BufferTooShort",
    "CorralContext",
    "Process",
    "ProcessError",
    "TimeoutError",
    "get_context",
]
