"""``corral.dummy`` *is* :mod:`multiprocessing.dummy`
(corral has no dummy of its own), so that ``import corral.dummy`` works where
a program did ``import multiprocessing.dummy``.
"""

from __future__ import annotations

import multiprocessing.dummy as _module
import sys
from multiprocessing.dummy import *  # noqa: F403  (what type checkers see)

sys.modules[__name__] = _module
