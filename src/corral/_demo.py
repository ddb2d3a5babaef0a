"""Compatibility alias: the demo moved to ``corral._tools._demo``.

Kept for code that imports ``corral._demo._targets`` / ``_watch`` by their old
name (the pool's benchmark and tests); new code imports ``corral._tools._demo``.
"""

from __future__ import annotations

from ._tools._demo import Report as Report
from ._tools._demo import _targets as _targets
from ._tools._demo import _watch as _watch
from ._tools._demo import all_scenarios as all_scenarios
