"""Two pool scenarios: a pipeline whose workers are killed at random, and a map whose
worker is killed mid-task.

producer-consumer: a two-stage ``corral.Pipeline``; a thread SIGKILLs random stage
workers while it runs. Every item still comes out, exactly once.

crash-recovery: ``corral.map`` and ``multiprocessing.Pool.map`` over the same tasks,
one of which SIGKILLs its own worker. corral re-runs it and returns every result;
the stdlib's map never returns (it runs under a timeout, then is terminated).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import signal
import tempfile
import threading
import time
from typing import Any

from ... import _executor, _pipeline
from ..._core import _linux, _supervisor
from . import Report, _targets, scenario

ITEMS = 2000
KILLS = 5
STDLIB_PATIENCE = 5.0  # seconds the stdlib map gets before it is called stuck


def _parse(x: int) -> int:
    time.sleep(0.0005)
    return x * 3


def _score(x: int) -> int:
    time.sleep(0.0005)
    return x + 1


def _killer(stop: threading.Event, killed: list[int]) -> None:
    rng = random.Random(5)
    while len(killed) < KILLS and not stop.wait(0.15):
        # (Not the supervisor: it is no worker, and it guards them all.)
        workers = [p for p in _linux.children_of(os.getpid()) if p != _supervisor.pid()]
        if workers:
            victim = rng.choice(workers)
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)


@scenario(
    "producer-consumer",
    "a two-stage corral.Pipeline with workers SIGKILLed at random delivers every item once",
)
def producer_consumer(ns: argparse.Namespace, report: Report) -> None:
    pipeline = (
        _pipeline.Pipeline(range(ITEMS), capacity=256, context="fork")
        .stage(_parse, workers=2, retries=3)
        .stage(_score, workers=2, retries=3)
    )
    stop = threading.Event()
    killed: list[int] = []
    killer = threading.Thread(target=_killer, args=(stop, killed), daemon=True)
    t0 = time.monotonic()
    killer.start()
    try:
        out = list(pipeline)
    finally:
        stop.set()
        killer.join(5)
    took = time.monotonic() - t0
    expected = [x * 3 + 1 for x in range(ITEMS)]
    report.note(f"{len(killed)} stage workers SIGKILLed during the run")
    report.check(
        "every item delivered exactly once, in order",
        out == expected,
        f"{len(out)} of {ITEMS} in {took:.2f} s",
    )
    report.check("no item was skipped or failed", not pipeline.errors, f"{len(pipeline.errors)}")


def _stdlib_map(items: list[Any]) -> str:
    pool = multiprocessing.get_context("fork").Pool(2)
    box: list[Any] = []
    thread = threading.Thread(
        target=lambda: box.append(pool.map(_targets.die_once, items)), daemon=True
    )
    thread.start()
    thread.join(STDLIB_PATIENCE)
    pool.terminate()
    pool.join()
    if box:
        return f"returned {len(box[0])} results"
    return f"map() had not returned after {STDLIB_PATIENCE:g} s (hung; terminated)"


@scenario(
    "crash-recovery",
    "a worker SIGKILLed mid-task: corral.map re-runs the task, multiprocessing.Pool hangs",
)
def crash_recovery(ns: argparse.Namespace, report: Report) -> None:
    n = 1000
    with tempfile.TemporaryDirectory() as tmp:
        items = [(x, (n // 2,), tmp) for x in range(n)]
        t0 = time.monotonic()
        out = list(_executor.map(_targets.die_once, items, workers=2, retries=1, context="fork"))
        took = time.monotonic() - t0
        report.check(
            "corral.map returns every result after the kill",
            out == [x * 2 for x in range(n)],
            f"{len(out)} of {n} in {took:.2f} s",
        )
        stdlib_markers = os.path.join(tmp, "stdlib")  # its own first kill
        os.mkdir(stdlib_markers)
        stdlib = _stdlib_map([(x, (n // 2,), stdlib_markers) for x in range(n)])
    report.note(f"multiprocessing.Pool.map: {stdlib}")
