"""``corral.shared_memory`` *is* :mod:`multiprocessing.shared_memory`
(corral has no shared_memory of its own), so that ``import corral.shared_memory`` works where
a program did ``import multiprocessing.shared_memory``.
"""

from __future__ import annotations

import multiprocessing.shared_memory as _module
import sys
from multiprocessing.shared_memory import *  # noqa: F403  (what type checkers see)

sys.modules[__name__] = _module
