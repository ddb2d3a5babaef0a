"""Resources per object: a thousand sync objects or values cost a handful of fds.

Each row runs in a fresh interpreter whose fd limit is 1,024 (the common default
of ``ulimit -n``), makes a thousand objects of one kind (or a thousand Values and a
thousand Locks together), keeps them all, uses each, and hands them all to a child
started by the row's start method, which uses each too. The stdlib makes a
thousand of each there too. Small objects share arenas (``_core._arena``): the
parent's fd count grows by one per arena, and the child holds each arena once,
however many objects came from it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from corral._core import _linux

from .leaks import wait_until

TIMEOUT = 120.0
# Most fds a thousand objects may take: one per arena (a page per lock, 255 pages
# per arena; a Value takes two). The stdlib's objects take none, corral's took one
# or two each before arenas.
MAX_FDS_PER_OBJECT = 0.02

SCRIPT = textwrap.dedent(
    """
    import os, resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    import corral

    MAKE = {
        "Lock": corral.Lock,
        "RLock": corral.RLock,
        "Semaphore": corral.Semaphore,
        "BoundedSemaphore": corral.BoundedSemaphore,
        "Event": corral.Event,
        "Condition": corral.Condition,
        "Barrier": lambda: corral.Barrier(1),
        "Value": lambda: corral.Value("i", 0),
        "Array": lambda: corral.Array("d", 4),
    }

    def use(obj):
        if isinstance(obj, corral.Event):
            obj.set()
        elif isinstance(obj, corral.Condition):
            with obj:
                obj.notify_all()
        elif isinstance(obj, corral.Barrier):
            obj.wait(timeout=5)
        elif hasattr(obj, "get_lock"):
            with obj.get_lock():
                if hasattr(obj, "value"):
                    obj.value += 1
                else:
                    obj[0] += 1
        else:
            assert obj.acquire(timeout=5)
            obj.release()

    def arena_fds():
        out = []
        for name in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{name}").startswith("/memfd:corral-arena"):
                    out.append(os.stat(f"/proc/self/fd/{name}").st_ino)
            except FileNotFoundError:
                pass
        return out

    def child(objs):
        for obj in objs:
            use(obj)
        inodes = arena_fds()
        assert len(inodes) == len(set(inodes)), f"an arena held twice: {sorted(inodes)}"

    if __name__ == "__main__":
        kinds, method, n = sys.argv[1].split("+"), sys.argv[2], int(sys.argv[3])
        before = len(os.listdir("/proc/self/fd"))
        objs = [MAKE[kind]() for kind in kinds for _ in range(n)]
        for obj in objs:
            use(obj)
        per_object = (len(os.listdir("/proc/self/fd")) - before) / len(objs)
        p = corral.get_context(method).Process(target=child, args=(objs,))
        p.start()
        p.join(60)
        assert p.exitcode == 0, p.exitcode
        for obj in objs:
            if hasattr(obj, "get_lock"):
                assert (obj.value if hasattr(obj, "value") else obj[0]) == 2
            elif isinstance(obj, corral.Event):
                assert obj.is_set()
        print(per_object)
    """
)

KINDS = [
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Event",
    "Condition",
    "Barrier",
    "Value",
    "Array",
    "Value+Lock",
]


@pytest.mark.parametrize("kinds", KINDS)
def test_a_thousand_objects_under_an_fd_limit_of_1024(
    kinds: str, start_method: str, tmp_path: Path
) -> None:
    before = set(_linux.descendants_of(os.getpid()))
    script = os.path.join(str(tmp_path), "many.py")
    with open(script, "w") as f:
        f.write(SCRIPT)
    out = subprocess.run(
        [sys.executable, script, kinds, start_method, "1000"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    _reap_orphaned_helpers(before)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) <= MAX_FDS_PER_OBJECT


def _reap_orphaned_helpers(before: set[int]) -> None:
    """The script's stdlib helpers (its forkserver, the resource tracker) outlive it
    by a moment and are orphaned to this subreaper: reap them once they exit."""
    orphans = set(_linux.descendants_of(os.getpid())) - before

    def gone() -> bool:
        for pid in orphans & set(_linux.children_of(os.getpid())):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    orphans.discard(pid)
        return not orphans

    assert wait_until(gone, TIMEOUT), orphans
