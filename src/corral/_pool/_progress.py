"""Progress bars: one per call (``map``, ``imap``, ``corral.map``, a pipeline run).

``progress=`` takes ``True`` (a bar when stderr is a terminal), ``"force"`` (a bar
always), ``False``, or a dict of tqdm options (``desc``, ``unit``, ``position``,
``total``, ...; ``"force": True`` in it draws the bar off a terminal too). The total
is ``len()`` of the input where it has one, else ``total=``; without either the bar
shows a count and a rate.

To print while a bar is up, use ``tqdm.tqdm.write(...)`` or, for logging,
``tqdm.contrib.logging.logging_redirect_tqdm()``: both clear the bar, print, and
draw it again.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["Progress", "ProgressArg"]

ProgressArg = bool | str | Mapping[str, Any]


class Progress:
    """A tqdm bar that any thread may update."""

    def __init__(self, bar: Any):
        self.bar = bar
        self.lock = threading.Lock()
        self.closed = False

    @staticmethod
    def make(progress: ProgressArg, total: int | None, desc: str) -> Progress | None:
        if not progress:
            return None
        options = dict(progress) if isinstance(progress, Mapping) else {}
        force = progress == "force" or bool(options.pop("force", False))
        if not force and not sys.stderr.isatty() and "file" not in options:
            return None
        try:
            tqdm = importlib.import_module("tqdm").tqdm
        except ImportError as exc:
            raise ImportError("progress bars need tqdm: pip install 'corral[pool]'") from exc
        options.setdefault("total", total)
        options.setdefault("desc", desc)
        options.setdefault("unit", "task")
        options.setdefault("file", sys.stderr)
        options.setdefault("dynamic_ncols", True)
        # No monitor thread: tqdm keeps it per class, and it would outlive the call.
        bar_class = type("CorralProgress", (tqdm,), {"monitor_interval": 0})
        return Progress(bar_class(**options))

    def update(self, n: int) -> None:
        with self.lock:
            if not self.closed:
                self.bar.update(n)

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                self.bar.close()


def total_of(iterable: object, total: int | None) -> int | None:
    """The bar's total: ``total`` if given, else ``len(iterable)`` where it has one."""
    if total is not None:
        return total
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None
