"""Clean Ctrl-C: one SIGINT to a parent blocked in ``Pool.map`` or a pipeline ends everything."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral._core import _linux
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
        line = helpers.read_line(parent.stdout.fileno(), TIMEOUT)
        assert line.startswith("READY"), line
        reported = [int(x) for x in line.split()[1:]]
        subtree = list(_linux.descendants_of(parent.pid))
        assert set(reported) <= set(subtree), (reported, subtree)
        for pid in subtree:
            with contextlib.suppress(ProcessLookupError):
                pidfds[pid] = os.pidfd_open(pid)
        t0 = time.monotonic()
        parent.send_signal(signal.SIGINT)
        parent.wait(TIMEOUT)
        took = time.monotonic() - t0
        stderr = parent.stderr.read().decode()
        assert "KeyboardInterrupt" in stderr, stderr
        assert took < SIGINT_BOUND, f"the parent took {took:.3f} s to exit"
        # Every worker and grandchild is gone (forkserver's own server is not ours).
        pending = {pid: fd for pid, fd in pidfds.items() if pid in reported}
        deadline = time.monotonic() + SIGINT_BOUND
        while pending and time.monotonic() < deadline:
            ready, _, _ = select.select(list(pending.values()), [], [], deadline - time.monotonic())
            pending = {pid: fd for pid, fd in pending.items() if fd not in ready}
        assert not pending, f"still alive after the parent exited: {sorted(pending)}"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(TIMEOUT)
        parent.stdout.close()
        parent.stderr.close()
        for fd in pidfds.values():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        for fd in pidfds.values():
            select.select([fd], [], [], 5)
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
            os.close(fd)
