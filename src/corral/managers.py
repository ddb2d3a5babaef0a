"""``corral.managers`` *is* :mod:`multiprocessing.managers`
(corral has no managers of its own), so that ``import corral.managers`` works where
a program did ``import multiprocessing.managers``.
"""

from __future__ import annotations

import multiprocessing.managers as _module
import sys
from multiprocessing.managers import *  # noqa: F403  (what type checkers see)

sys.modules[__name__] = _module
