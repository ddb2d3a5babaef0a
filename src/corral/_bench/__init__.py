"""Compatibility alias: the benchmark harness moved to ``corral._tools._bench``.

Kept for benchmark files that import ``corral._bench.Row`` by its old name (the
pool's); new code imports ``corral._tools._bench``.
"""

from __future__ import annotations

from .._tools._bench import Row as Row
from .._tools._bench import _format as _format
from .._tools._bench import median as median
from .._tools._bench import timed as timed
