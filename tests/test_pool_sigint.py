"""Clean Ctrl-C: one SIGINT to a parent blocked in ``Pool.map`` or a pipeline ends everything."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral._demo import _watch
from tests import helpers

TIMEOUT = 60.0
# Guarantee 3: KeyboardInterrupt in the parent within 1 s of one SIGINT.
SIGINT_BOUND = 1.0
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("what", ["map", "pipeline"])
def test_one_sigint_ends_the_parent_and_its_subtree(start_method: str, what: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-m", "tests.pool_targets", "sigint", start_method, what],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert parent.stdout is not None
    assert parent.stderr is not None
    pidfds: dict[int, int] = {}
    try:
        reported, pidfds = helpers.ready_and_pinned(parent)
        t0 = time.monotonic()
        parent.send_signal(signal.SIGINT)
        parent.wait(TIMEOUT)
        took = time.monotonic() - t0
        stderr = parent.stderr.read().decode()
        assert "KeyboardInterrupt" in stderr, stderr
        assert took < SIGINT_BOUND, f"the parent took {took:.3f} s to exit"
        # Every worker and grandchild is gone (forkserver's own server is not ours).
        mine = {pid: fd for pid, fd in pidfds.items() if pid in reported}
        survivors, _ = _watch.wait_dead(mine, SIGINT_BOUND)
        assert not survivors, f"still alive after the parent exited: {survivors}"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(TIMEOUT)
        parent.stdout.close()
        parent.stderr.close()
        _watch.kill_reap_close(pidfds)
