"""``corral.process``: :mod:`multiprocessing.process` with corral's Process.

``BaseProcess``, ``current_process``, ``active_children`` and ``parent_process`` are
the stdlib's: corral's Process is a ``BaseProcess``, so they see corral's children.
"""

from __future__ import annotations

from multiprocessing.process import BaseProcess, active_children, current_process, parent_process

from ._process import Process

__all__ = ["BaseProcess", "Process", "active_children", "current_process", "parent_process"]
