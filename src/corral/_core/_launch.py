"""Which launcher starts a child, by start method: fork's (``_popen``) at once;
spawn's and forkserver's (``_popen_exec``) loaded on first use, since the stdlib
modules they build on pull in ``connection``, ``tempfile``, ``shutil`` (bz2, lzma,
zlib) and ``random``, and every library mapped into a process makes each fork of it
dearer (the "start+join" process benchmark).
"""

from __future__ import annotations

import sys

from ._popen import CorralPopen, ForkPopen

__all__ = ["popen_class_for"]


def popen_class_for(method: str) -> type[CorralPopen]:
    if method == "fork":
        return ForkPopen
    if method in ("spawn", "forkserver"):
        from . import _popen_exec

        return _popen_exec.popen_class_for(method)
    raise ValueError(f"unsupported start method {method!r}")


if "multiprocessing.forkserver" in sys.modules:
    # A stdlib forkserver may be started before corral's first forkserver start:
    # have it preload corral too (``_popen_exec._preload_corral_in_forkserver``).
    from . import _popen_exec  # noqa: F401
