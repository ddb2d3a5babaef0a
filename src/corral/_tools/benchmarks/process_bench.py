"""Process benchmarks: start+join latency, reaping latency, subtree teardown after SIGKILL.

    corral bench --only process          # quick
    corral bench --only process --full   # more repeats

Start+join: corral and multiprocessing each run in a fresh interpreter of their
own, which imports only the library it measures (``_START_JOIN``), alternately, and
each figure is the median of all their rounds. In one process, the stdlib's fork
children paid corral's at-fork hooks and a bigger address space to copy: 1.84 ms
against 1.63 ms without corral imported, on a quiet box. The other rows run here,
corral only, and each is the median of several runs.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import statistics
import subprocess
import sys
import time

import corral
from corral._core import _linux
from corral._tools._bench import Row
from corral._tools._demo import _targets, _watch

# Run as ``python -c _START_JOIN LIB METHOD N ROUNDS``: prints ROUNDS figures, each
# the mean ms of N start+joins. From -c, so that no spawned child imports a main
# module; a corral child imports corral, as a real program's would.
_START_JOIN = """
import sys, time
lib, method, n, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if lib == "corral":
    import corral as mod
else:
    import multiprocessing as mod

def start_join_ms(ctx, n):
    t0 = time.perf_counter()
    for _ in range(n):
        p = ctx.Process(target=int)
        p.start()
        p.join()
        p.close()
    return (time.perf_counter() - t0) / n * 1000

if __name__ == "__main__":
    ctx = mod.get_context(method)
    # Warm up (imports, forkserver, lifeline, reaper), and let corral's supervisor,
    # spawned at the first start, finish starting (some 30 ms of CPU) before timing.
    start_join_ms(ctx, n)
    time.sleep(0.2)
    print(" ".join(str(start_join_ms(ctx, n)) for _ in range(rounds)))
"""


def _start_join_apart(lib: str, method: str, n: int, rounds: int) -> list[float]:
    """``rounds`` figures of ``n`` start+joins each, from a fresh interpreter that
    imports only ``lib`` ("corral" or "multiprocessing")."""
    out = subprocess.run(
        [sys.executable, "-c", _START_JOIN, lib, method, str(n), str(rounds)],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    return [float(x) for x in out.split()]


def _reap_ms() -> float:
    """From a child's exit to its reaping, with nobody joining."""
    p = corral.Process(target=int)
    p.start()
    assert p.pid is not None
    fd = os.pidfd_open(p.pid)
    select.select([fd], [], [], 30)
    exited = time.perf_counter()
    while _linux.proc_state(p.pid) == "Z":
        time.sleep(0.0002)
    took = time.perf_counter() - exited
    os.close(fd)
    p.join()
    return took * 1000


def _teardown_after_sigkill(lib: str, limit: float) -> tuple[float | None, int]:
    """SIGKILL a parent with a child, a subprocess, a fork and a setsid() child below it.

    Returns (ms until all four are gone or None, how many were still alive after ``limit``).
    """
    parent, pids = _targets.start_parent(lib)
    pidfds = _watch.pin(list(_linux.descendants_of(parent.pid)))
    t0 = time.perf_counter()
    parent.kill()
    parent.wait()
    assert parent.stdout is not None
    parent.stdout.close()
    alive, _ = _watch.wait_dead({p: fd for p, fd in pidfds.items() if p in pids}, limit)
    took = (time.perf_counter() - t0) * 1000
    survivors = len(alive)
    _watch.kill_reap_close(pidfds)
    return (None if survivors else took), survivors


# The fork storm of the tree-kill row: 2**(depth+1) - 1 = 1,023 lasting processes,
# each forking short-lived children without pause (about 2,000 members in all).
STORM_DEPTH = 9


def _storm_teardown(limit: float) -> tuple[float | None, int, float]:
    """SIGKILL a corral parent whose child is a 1,023-process fork storm.

    Returns (ms until every pinned member of the subtree is gone, or None; how many
    were still alive after ``limit``; ms until the parent itself had exited).
    Members born after the pinning are killed too (the supervisor's rounds), and
    reaped here with the rest.

    The parent's own exit is timed apart: SIGKILLed, it must still be scheduled to
    exit, among the storm's members, which share its session and so its CPU share
    (autogroup); nothing in it or below it can act before that.
    """
    me = os.getpid()
    before = set(_linux.children_of(me))
    parent, root = _targets.start_storm_parent(STORM_DEPTH)
    lasting = (1 << (STORM_DEPTH + 1)) - 1
    deadline = time.monotonic() + 120
    while len(list(_linux.descendants_of(root))) < lasting - 1:
        if time.monotonic() > deadline:
            raise TimeoutError("the fork storm did not grow within 120 s")
        time.sleep(0.01)
    pidfds = _watch.pin([parent.pid, *_linux.descendants_of(parent.pid)])
    exits: dict[int, float] = {}
    t0 = time.perf_counter()
    parent.kill()
    alive, _ = _watch.wait_dead(pidfds, limit, exits)
    took = (time.perf_counter() - t0) * 1000
    parent_exit = exits.get(parent.pid, limit) * 1000
    parent.wait()
    assert parent.stdout is not None
    parent.stdout.close()
    _watch.kill_reap_close(pidfds)
    for pid in set(_linux.children_of(me)) - before:  # what came back to us
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # (our child: its pid cannot be recycled)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return (None if alive else took), len(alive), parent_exit


def run(quick: bool) -> list[Row]:
    _linux.set_child_subreaper(True)  # orphans come back here to be counted and reaped
    repeats = 3 if quick else 7
    # A start+join is a few ms on a shared machine: a neighbour's burst moves one
    # round by 20-30 %, so the ratio is the median of many short rounds, taken in
    # alternate interpreters (a block of rounds each).
    blocks, block_rounds = (4, 3) if quick else (8, 4)
    counts = (
        {"fork": 30, "forkserver": 15, "spawn": 4}
        if quick
        else {"fork": 100, "forkserver": 40, "spawn": 10}
    )
    rows: list[Row] = []
    for method, n in counts.items():
        mp_runs, co_runs = [], []
        for _ in range(blocks):
            mp_runs += _start_join_apart("multiprocessing", method, n, block_rounds)
            co_runs += _start_join_apart("corral", method, n, block_rounds)
        base = statistics.median(mp_runs)
        rows.append(
            Row(
                f"start+join, {method}", "multiprocessing", base, "ms", base, higher_is_better=False
            )
        )
        rows.append(
            Row(
                f"start+join, {method}",
                "corral",
                statistics.median(co_runs),
                "ms",
                base,
                higher_is_better=False,
                note="goal: corral/mp <= 1.2; each in its own interpreter",
            )
        )

    reap = statistics.median(_reap_ms() for _ in range(repeats * 3))
    rows.append(Row("exit to reaped, no join()", "corral", reap, "ms", note="goal: <= 100 ms"))

    limit = 1.0
    co = [_teardown_after_sigkill("corral", limit) for _ in range(repeats)]
    mp = [_teardown_after_sigkill("multiprocessing", limit) for _ in range(repeats)]
    co_ms = [t for t, _ in co if t is not None]
    rows.append(
        Row(
            "parent SIGKILL to subtree gone",
            "corral",
            statistics.median(co_ms) if len(co_ms) == len(co) else None,
            "ms",
            note=f"goal: <= 1000 ms, aim 100; survivors after {limit:g} s: "
            f"{max(s for _, s in co)} of 4",
        )
    )
    storm = [_storm_teardown(30.0) for _ in range(3 if quick else 7)]
    storm_ms = [t for t, _, _ in storm if t is not None]
    rows.append(
        Row(
            "parent SIGKILL to 1,023-process fork storm gone",
            "corral",
            statistics.median(storm_ms) if len(storm_ms) == len(storm) else None,
            "ms",
            note=f"2 cores; median of {len(storm)} runs (ms, the parent's own exit in "
            "brackets: "
            + ", ".join(f"{'hung' if t is None else f'{t:.0f}'} [{p:.0f}]" for t, _, p in storm)
            + f"); survivors after 30 s: {max(s for _, s, _ in storm)}",
        )
    )
    rows.append(
        Row(
            "parent SIGKILL to subtree gone",
            "multiprocessing",
            None,
            "ms",
            note=f"never: {statistics.median(s for _, s in mp):g} of 4 still alive "
            f"after {limit:g} s",
        )
    )
    return rows
