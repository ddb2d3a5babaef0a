"""One Ctrl-C for the Executor: a real SIGINT to a child interpreter blocked in
``ProcessPoolExecutor`` ends it, every worker and every grandchild, at once and quietly.

The child (``tests/executor_sigint_parent.py``) reports the pids of its workers and
of a grandchild each started once both are busy; the test pins them all with pidfds
before it sends the signal, so that it can tell they are gone. One worker may be
paused (SIGSTOP) first: it can act on nothing, and must be gone all the same; that
case is checked for ``Pool.map`` too.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import pytest

import corral
from corral._demo import _watch
from tests import helpers
from tests import pool_targets as t

TIMEOUT = 60.0
# The promise: KeyboardInterrupt in the parent within 1 s of one SIGINT, and
# its whole subtree gone.
SIGINT_BOUND = 1.0
ROOT = Path(__file__).resolve().parent.parent


def _one_sigint(
    method: str, what: str, paused: bool, module: str = "tests.executor_sigint_parent"
) -> tuple[float, int, str, list[int]]:
    """Run the child, SIGINT it once it is READY; (seconds to exit, returncode, stderr,
    reported pids still alive SIGINT_BOUND after it exited)."""
    argv = [method, what] if module == "tests.executor_sigint_parent" else ["sigint", method, what]
    child = subprocess.Popen(
        [sys.executable, "-m", module, *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    assert child.stderr is not None
    pidfds: dict[int, int] = {}
    try:
        reported, pidfds = helpers.ready_and_pinned(child)
        if paused:  # one worker paused too: it can act on nothing, and must go anyway
            signal.pidfd_send_signal(pidfds[reported[0]], signal.SIGSTOP)
        t0 = time.monotonic()
        child.send_signal(signal.SIGINT)
        child.wait(TIMEOUT)
        took = time.monotonic() - t0
        stderr = child.stderr.read().decode()
        mine = {pid: fd for pid, fd in pidfds.items() if pid in reported}
        survivors, _ = _watch.wait_dead(mine, SIGINT_BOUND)
        return took, child.returncode, stderr, survivors
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(TIMEOUT)
        child.stdout.close()
        child.stderr.close()
        for fd in pidfds.values():  # a paused survivor must be able to die
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGCONT)
        _watch.kill_reap_close(pidfds)


@pytest.mark.parametrize("paused", [False, True], ids=["running", "one_paused"])
@pytest.mark.parametrize("what", ["result", "as_completed"])
def test_one_sigint_ends_the_executor_and_its_subtree(
    start_method: str, what: str, paused: bool
) -> None:
    took, returncode, stderr, survivors = _one_sigint(start_method, what, paused)
    assert not survivors, f"still alive after the child exited: {survivors}\n{stderr}"
    assert took < SIGINT_BOUND, f"the child took {took:.3f} s to exit\n{stderr}"
    assert returncode != 0
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    assert stderr.count("Traceback (most recent call last)") == 1, stderr
    assert "Exception ignored" not in stderr, stderr
    assert "atexit" not in stderr, stderr
    assert "During handling of the above exception" not in stderr, stderr


def test_one_sigint_ends_pool_map_with_a_paused_worker(start_method: str) -> None:
    """The same for ``Pool.map`` (tests/test_pool_sigint.py's child), one worker paused."""
    took, returncode, stderr, survivors = _one_sigint(
        start_method, "map", True, module="tests.pool_targets"
    )
    assert not survivors, f"still alive after the child exited: {survivors}\n{stderr}"
    assert took < SIGINT_BOUND, f"the child took {took:.3f} s to exit\n{stderr}"
    assert returncode != 0
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    assert stderr.count("Traceback (most recent call last)") == 1, stderr
    assert "Exception ignored" not in stderr, stderr


# --- Ctrl-C while leaving the with block: shutdown(wait=True) interrupted ---------------------
#
# The same scenario as above with WHAT=shutdown fails only now and then (the child's
# exit races the pool's scheduler thread: "Exception ignored in atexit callback ...
# process object is closed"), so it is pinned down here, in-process and
# deterministically: the SIGINT lands while the main thread is blocked in
# shutdown()'s wait, and the workers' tasks ignore SIGTERM, so that only a finished
# terminate() can have ended them.


def _in_thread_join(frame: FrameType | None) -> bool:
    """Is this stack blocked in a threading wait (Thread.join, Event.wait) under
    the executor's shutdown()?"""
    waiting = False
    while frame is not None:
        code = frame.f_code
        if code.co_filename == threading.__file__ and code.co_name in (
            "join",
            "_wait_for_tstate_lock",
            "wait",
        ):
            waiting = True
        if waiting and code.co_name == "shutdown":
            return True
        frame = frame.f_back
    return False


def _interrupt_when_joining(main: int) -> None:
    # Polls another thread's stack: nothing signals "now blocked in join".
    while not _in_thread_join(sys._current_frames().get(main)):
        time.sleep(0.001)
    signal.pthread_kill(main, signal.SIGINT)


def _interrupted_shutdown(ctx: corral.CorralContext) -> tuple[bool, list[int], float]:
    """(KeyboardInterrupt came out of shutdown(), pids alive right then, seconds)."""
    q = corral.Queue()
    ex = corral.ProcessPoolExecutor(2, ctx, t.set_channel, (q,))
    pidfds: dict[int, int] = {}
    try:
        for x in range(4):
            ex.submit(t.block_ignoring_sigterm, x)
        running = [q.get(timeout=TIMEOUT) for _ in range(2)]
        pidfds = _watch.pin([pid for pid, _, _ in running] + [gc for _, _, gc in running])
        interrupter = threading.Thread(
            target=_interrupt_when_joining, args=(threading.get_ident(),), daemon=True
        )
        interrupter.start()
        interrupted = False
        t0 = time.monotonic()
        try:
            ex.shutdown(wait=True)
        except KeyboardInterrupt:
            interrupted = True
        took = time.monotonic() - t0
        survivors, _ = _watch.wait_dead(pidfds, 0)
        interrupter.join(TIMEOUT)
        return interrupted, survivors, took
    finally:
        ex._pool.terminate()
        _watch.kill_reap_close(pidfds)


def test_interrupted_shutdown_has_ended_every_worker_when_it_raises(
    ctx: corral.CorralContext,
) -> None:
    interrupted, survivors, took = _interrupted_shutdown(ctx)
    assert interrupted
    assert took < SIGINT_BOUND + 1, f"shutdown() took {took:.2f} s to raise"
    assert not survivors, f"alive when shutdown() raised KeyboardInterrupt: {survivors}"
