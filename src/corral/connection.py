"""``corral.connection`` *is* :mod:`multiprocessing.connection`
(corral has no connection of its own), so that ``import corral.connection`` works where
a program did ``import multiprocessing.connection``.
"""

from __future__ import annotations

import multiprocessing.connection as _module
import sys
from multiprocessing.connection import *  # noqa: F403  (what type checkers see)

sys.modules[__name__] = _module
