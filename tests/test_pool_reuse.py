"""corral.map keeps a pool per (workers, start method, options) across calls.

Which pool served a call is told by the pids of the workers that ran it
(``worker_pid``). One call may not reach every worker (a fast one can take all the
items), so "the same pool" is asserted as: calls that share a pool together never
show more pids than it has workers.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import corral
from corral import _executor
from corral._core import _linux
from tests import pool_targets as t
from tests.conftest import wait_until

TIMEOUT = 30.0
N = 40


def pids_of(**options: Any) -> set[int]:
    """The workers that ran a corral.map call with these options."""
    return set(corral.map(t.worker_pid, range(N), chunksize=1, **options))


def runs(path: Path) -> collections.Counter[int]:
    if not path.exists():
        return collections.Counter()
    return collections.Counter(int(line) for line in path.read_text().split())


def test_the_same_options_reuse_the_same_workers(ctx: corral.CorralContext) -> None:
    t0 = time.monotonic()
    seen = pids_of(workers=2, context=ctx)
    first_took = time.monotonic() - t0
    later: list[float] = []
    for _ in range(5):
        t0 = time.monotonic()
        seen |= pids_of(workers=2, context=ctx)
        later.append(time.monotonic() - t0)
    assert len(seen) <= 2, seen
    # Starting workers is what the first call paid for, and the later ones don't.
    assert sorted(later)[2] < first_took / 2, (first_took, later)


def test_other_options_get_another_pool(ctx: corral.CorralContext) -> None:
    base = pids_of(workers=2, context=ctx)
    retrying = pids_of(workers=2, context=ctx, retries=1)
    single = pids_of(workers=1, context=ctx)
    assert not retrying & base
    assert not single & (base | retrying)
    # Each pool is still kept, and serves its own options again.
    assert len(base | pids_of(workers=2, context=ctx)) <= 2
    assert len(retrying | pids_of(workers=2, context=ctx, retries=1)) <= 2
    assert single == pids_of(workers=1, context=ctx)


def test_abandoning_a_call_stops_its_tasks_but_keeps_the_pool(
    ctx: corral.CorralContext, tmp_path: Path
) -> None:
    path = tmp_path / "runs"
    before = pids_of(workers=2, context=ctx)
    items = [(x, 0.02, str(path)) for x in range(500)]
    it = corral.map(t.counted_sleep, items, workers=2, context=ctx, chunksize=1)
    assert [next(it) for _ in range(3)] == [0, 2, 4]
    it.close()
    # The same workers serve the next call: the pool was not terminated ...
    assert len(before | pids_of(workers=2, context=ctx)) <= 2
    # ... and the abandoned call's remaining tasks never ran (only its small
    # window of prefetched ones), nor run later. A prefetched task may still be
    # waiting on a worker that the call above did not need (it can run on one): the
    # count is taken once nothing of the pool's is in flight.
    pool = _executor._kept_pool(2, {"context": ctx})  # (the pool that served both)
    assert pool.statistics().tasks_completed > 0  # (not a new one: the wait would be moot)
    assert wait_until(lambda: pool.statistics().tasks_in_flight == 0, TIMEOUT)
    ran = sum(runs(path).values())
    assert ran < 30, ran
    assert len(before | pids_of(workers=2, context=ctx)) <= 2
    assert sum(runs(path).values()) == ran
    assert all(n == 1 for n in runs(path).values())


def _blocked_in_condition_wait(frame: FrameType | None) -> bool:
    while frame is not None:
        code = frame.f_code
        if code.co_filename == threading.__file__ and code.co_name == "wait":
            return True
        frame = frame.f_back
    return False


def _ctrl_c_when_waiting(main: int, q: corral.Queue, pids: list[int]) -> None:
    pid, _ = q.get(timeout=TIMEOUT)  # a task runs
    pids.append(pid)
    # Polls another thread's stack: nothing signals "now blocked waiting for results".
    while not _blocked_in_condition_wait(sys._current_frames().get(main)):
        time.sleep(0.001)
    signal.pthread_kill(main, signal.SIGINT)


def test_after_a_ctrl_c_the_next_call_gets_new_workers(ctx: corral.CorralContext) -> None:
    q = corral.Queue()
    options: dict[str, Any] = {
        "workers": 2,
        "context": ctx,
        "initializer": t.set_channel,
        "initargs": (q,),
    }
    before = pids_of(**options)
    interrupted: list[int] = []
    interrupter = threading.Thread(
        target=_ctrl_c_when_waiting, args=(threading.get_ident(), q, interrupted)
    )
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            list(corral.map(t.block_always, [1, 2, 3], **options))
    finally:
        interrupter.join(TIMEOUT)
    # The Ctrl-C ended the kept pool: its workers are gone ...
    for pid in before:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            assert select.select([fd], [], [], TIMEOUT)[0], f"worker {pid} survived"
        finally:
            os.close(fd)
    # ... and the next call with the same options works, on new workers.
    after = pids_of(**options)
    assert after
    assert not after & before


def test_a_broken_kept_pool_is_replaced(ctx: corral.CorralContext, tmp_path: Path) -> None:
    options: dict[str, Any] = {
        "workers": 1,
        "context": ctx,
        "initializer": t.init_fail_once,
        "initargs": (str(tmp_path / "failed"),),
    }
    with pytest.raises(corral.CorralError, match="initializer"):
        pids_of(**options)
    assert len(pids_of(**options)) == 1


# The hang below happens in some runs only (a race at the child's exit), so several
# children run at once, and one bad exit among them fails the test.
CHILDREN = 6


def _children_using_corral_map(
    ctx: corral.CorralContext,
) -> tuple[list[int], list[int | None], list[int]]:
    """Start CHILDREN children that each call corral.map and return; (pids of those
    that never exited, every exit code, processes they left running). Everything they
    left is killed and reaped here, so that a failing assertion can't leave it to the
    leak check."""
    me = os.getpid()
    before = set(_linux.children_of(me))
    children = [ctx.Process(target=t.corral_map_pids, args=("fork",)) for _ in range(CHILDREN)]
    for child in children:
        child.start()
    deadline = time.monotonic() + TIMEOUT / 2
    try:
        for child in children:
            child.join(max(0.0, deadline - time.monotonic()))
        hung = [child.pid for child in children if child.exitcode is None and child.pid]
        codes = [child.exitcode for child in children]
        mine = {child.pid for child in children}

        def left_running() -> list[int]:
            new = set(_linux.children_of(me)) - before - mine
            return sorted(pid for pid in new if _linux.proc_state(pid) not in ("Z", None))

        # Workers of an exited child's pool, orphaned to us (a subreaper), still running.
        wait_until(lambda: not left_running(), 3.0)
        left = left_running()
    finally:
        for child in children:
            if child.exitcode is None:
                child.kill()
            child.join(TIMEOUT)
            child.close()
        # Workers of the children's pools, orphaned to us (a subreaper) when they exited.
        for pid in set(_linux.children_of(me)) - before:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return hung, codes, left


def test_corral_map_in_a_child_process_exits_cleanly(
    ctx: corral.CorralContext, capfd: pytest.CaptureFixture[str]
) -> None:
    hung, codes, left = _children_using_corral_map(ctx)
    err = capfd.readouterr().err
    assert not hung, f"children that never exited: {hung}\n{err}"
    assert not left, f"workers that outlived their child: {left}"
    assert codes == [0] * CHILDREN, f"{codes}\n{err}"
    assert "Traceback" not in err, err
