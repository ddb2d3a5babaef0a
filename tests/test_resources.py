"""Resources per object: at most one fd per Lock, Value or Array.

Each row runs in a fresh interpreter whose fd limit is 1,024 (the common default
of ``ulimit -n``), makes a thousand objects of one kind, keeps them all, uses
each, and hands one to a child. The stdlib makes a thousand of each there too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TIMEOUT = 120.0

SCRIPT = textwrap.dedent(
    """
    import os, resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    import corral

    def bump(obj):
        with obj.get_lock():
            obj.value += 1

    def make(kind):
        if kind == "Lock":
            return corral.Lock()
        if kind == "RLock":
            return corral.RLock()
        if kind == "Value":
            return corral.Value("i", 0)
        return corral.Array("d", 4)

    if __name__ == "__main__":
        kind, n = sys.argv[1], int(sys.argv[2])
        before = len(os.listdir("/proc/self/fd"))
        objs = [make(kind) for _ in range(n)]
        for obj in objs:
            lock = obj if kind in ("Lock", "RLock") else obj.get_lock()
            assert lock.acquire(timeout=5)
            lock.release()
        per_object = (len(os.listdir("/proc/self/fd")) - before) / n
        if kind == "Value":
            p = corral.get_context("fork").Process(target=bump, args=(objs[-1],))
            p.start()
            p.join(60)
            assert p.exitcode == 0, p.exitcode
            assert objs[-1].value == 1
        print(per_object)
    """
)


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Value", "Array"])
def test_a_thousand_objects_under_an_fd_limit_of_1024(kind: str, tmp_path: Path) -> None:
    script = os.path.join(str(tmp_path), "many.py")
    with open(script, "w") as f:
        f.write(SCRIPT)
    out = subprocess.run(
        [sys.executable, script, kind, "1000"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) <= 1.0
