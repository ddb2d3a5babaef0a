"""Find CPython's own test modules for the running interpreter, or fetch them.

    interpreter's Lib/test  --has it-->  used as is
            | lacks it (some builds ship without test_concurrent_futures)
            v
    cache (~/.cache/corral/cpython-tests/3.11/)  --has it-->  used
            | empty
            v
    apt-get download libpython3.11-testsuite; dpkg-deb -x; copy the module out

The cache is a directory to put first on ``sys.path``: it holds a package ``test``
whose ``__init__`` adds the interpreter's own ``Lib/test`` to its ``__path__``, so
``test.support`` is the interpreter's and ``test.test_concurrent_futures`` the
fetched one, in the runner and in every child it starts (spawned children get the
parent's ``sys.path``).

Debian's package has the same minor version (its name says so) but may have another
patch release than the interpreter (3.11.2 for a 3.11.7 interpreter, say): the
modules of one minor series test the same API, so that is accepted and said
(``Source.note``); another minor version never is. No root is needed: ``apt-get
download`` and ``dpkg-deb -x`` write into a temporary directory.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Source", "Unavailable", "find"]

# Fetching the package: one download of about 3.4 MB; a slow mirror fails the run
# rather than hanging it.
FETCH_TIMEOUT = 300.0


class Unavailable(Exception):
    """The module is neither shipped with the interpreter nor obtainable."""


@dataclass(frozen=True)
class Source:
    """Where a test module comes from."""

    name: str  # "test_concurrent_futures"
    directory: Path  # the sys.path entry holding test/<name>.py (or test/<name>/)
    origin: str  # "interpreter" or the Debian package's file name
    version: str  # the CPython release the module comes from
    shipped: bool  # True when it is the interpreter's own

    @property
    def note(self) -> str:
        running = "{}.{}.{}".format(*sys.version_info[:3])
        if self.shipped:
            return f"{self.name}: the interpreter's own ({running})"
        skew = "" if self.version == running else f"; the interpreter is {running}"
        return f"{self.name}: from {self.origin} (CPython {self.version}{skew})"


def _minor() -> str:
    return "{}.{}".format(*sys.version_info[:2])


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "corral" / "cpython-tests" / _minor()


def find(name: str) -> Source:
    """The directory holding test module ``name`` for this interpreter."""
    if name == "test_concurrent_futures" and sys.version_info >= (3, 12):
        # 3.12 split it into a package (test_concurrent_futures/test_*.py, the mixins
        # in .util); _cf_suite knows 3.11's single module only.
        raise Unavailable(f"{name}: the 3.12+ package layout is not supported yet")
    spec = importlib.util.find_spec(f"test.{name}")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin)
        directory = path.parent.parent if path.name == "__init__.py" else path.parent
        running = "{}.{}.{}".format(*sys.version_info[:3])
        return Source(name, directory, "interpreter", running, True)
    cache = cache_root()
    if not _has(cache, name):
        _fetch_debian(cache)
    if not _has(cache, name):
        raise Unavailable(f"{name}: not in the interpreter's Lib/test nor in {cache}")
    origin = (cache / "SOURCE").read_text().strip()
    match = re.search(r"_(\d+\.\d+\.\d+)", origin)
    return Source(name, cache, origin, match.group(1) if match else "?", False)


def _has(directory: Path, name: str) -> bool:
    package = directory / "test"
    return (package / f"{name}.py").is_file() or (package / name / "__init__.py").is_file()


# The shim package's __init__: the interpreter's Lib/test joins its __path__.
SHIM = """\
# Written by corral's tests/cpython/_obtain.py: test modules fetched from Debian,
# alongside the interpreter's own Lib/test (test.support and the rest).
import os as _os
import sysconfig as _sysconfig

__path__.append(_os.path.join(_sysconfig.get_paths()["stdlib"], "test"))
"""


def _fetch_debian(cache: Path) -> None:
    package = f"libpython{_minor()}-testsuite"
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise Unavailable(f"no apt-get/dpkg-deb here to fetch Debian's {package}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:
        work = Path(tmp)
        _run(["apt-get", "download", package], work)
        debs = sorted(work.glob("*.deb"))
        if not debs:
            raise Unavailable(f"apt-get download {package} gave no .deb")
        _run(["dpkg-deb", "-x", str(debs[0]), "x"], work)
        found = work / "x" / "usr" / "lib" / f"python{_minor()}" / "test"
        staged = work / "staged"
        (staged / "test").mkdir(parents=True)
        (staged / "test" / "__init__.py").write_text(SHIM)
        for name in ("test_concurrent_futures", "_test_multiprocessing"):
            if (found / f"{name}.py").is_file():
                shutil.copy2(found / f"{name}.py", staged / "test")
            elif (found / name).is_dir():
                shutil.copytree(found / name, staged / "test" / name)
        (staged / "SOURCE").write_text(debs[0].name + "\n")
        try:
            staged.rename(cache)  # atomic: a concurrent fetch keeps whichever came first
        except OSError:
            if not (cache / "SOURCE").is_file():
                raise


def _run(argv: list[str], cwd: Path) -> None:
    try:
        done = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=FETCH_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"{' '.join(argv)}: no answer in {FETCH_TIMEOUT:.0f} s") from exc
    if done.returncode != 0:
        raise Unavailable(f"{' '.join(argv)} failed: {done.stderr.strip()[-500:]}")
