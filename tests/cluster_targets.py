"""Task functions for the cluster tests: importable on the dask workers (their
PYTHONPATH holds the repository), and leaving evidence in files, since a node's
processes can't hand anything else to the test."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

FOREVER = 300.0


def square(x: int) -> int:
    return x * x


def identity(x: object) -> object:
    return x


def add(x: int, y: int) -> int:
    return x + y


def inverse(x: int) -> float:
    return 1 / x


_tag = ""


def set_tag(tag: str) -> None:
    """A pool initializer: runs once in each of the node pool's workers."""
    global _tag
    _tag = tag


def tagged(x: int) -> str:
    return f"{_tag}-{x}"


def counted(x: int, where: str) -> int:
    """Record one run of item ``x`` (a line in its own file), then return x * x."""
    with open(os.path.join(where, f"ran-{x}"), "a") as f:
        f.write(f"{os.getpid()}\n")
    return x * x


def slow_counted_on_node(x: int, where: str) -> int:
    """``counted_on_node`` after 20 ms of work: slower than a report interval, so
    the node reports each outcome as soon as it has it."""
    time.sleep(0.02)  # the item's work, not a wait for anything
    return counted_on_node(x, where)


def counted_carrying(x: int, where: str, cargo: object) -> int:
    """``counted``; ``cargo`` only travels with the function."""
    return counted(x, where)


def counted_then_lock_on_1(x: int, where: str) -> Any:
    """``counted``, then a result that can't be pickled for item 1."""
    value = counted(x, where)
    return threading.Lock() if x == 1 else value


class _ExitOnUnpickle:
    """Pickles fine; unpickling it raises SystemExit, in whatever process does it."""

    def __reduce__(self) -> Any:
        return (sys.exit, (3,))


def slow_counted_then_exit_on_unpickle_on_1(x: int, where: str) -> Any:
    """``counted`` after 20 ms of work (so that the node's pool commits each outcome
    alone), then, for item 1, a result whose unpickling raises SystemExit."""
    time.sleep(0.02)  # the item's work, not a wait for anything
    value = counted(x, where)
    return _ExitOnUnpickle() if x == 1 else value


class _UnpicklableError(Exception):
    def __init__(self, a: int, b: int):  # its args don't round-trip through pickle
        super().__init__(f"{a}/{b}")


def counted_then_raise_unpicklable_on_1(x: int, where: str) -> int:
    """``counted``, then, for item 1, an exception that can't be unpickled."""
    value = counted(x, where)
    if x == 1:
        raise _UnpicklableError(1, 2)
    return value


def slow_counted_big_from_3(x: int, where: str) -> bytes:
    """``counted`` after 20 ms of work; items from 3 on return 1 MiB, the others 8
    bytes."""
    time.sleep(0.02)  # the item's work, not a wait for anything
    counted(x, where)
    return bytes([x % 256]) * (1 << 20 if x >= 3 else 8)


class PickleCounted:
    """10 KB of data that notes each time it is pickled, in whatever process: a
    line with its index in ``where/pickled`` (one small O_APPEND write)."""

    def __init__(self, index: int, where: str):
        self.index = index
        self.where = where
        self.data = bytes(10_000)

    def __reduce__(self) -> Any:
        fd = os.open(os.path.join(self.where, "pickled"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{self.index}\n".encode())
        finally:
            os.close(fd)
        return (_rebuilt, (self.index, self.where, self.data))


def _rebuilt(index: int, where: str, data: bytes) -> PickleCounted:
    value = PickleCounted(index, where)
    value.data = data
    return value


def pickle_counted(x: int, where: str) -> PickleCounted:
    return PickleCounted(x, where)


def times_pickled(where: str, n: int) -> list[int]:
    """How many times each of the values 0..n-1 of ``pickle_counted`` was pickled."""
    counts = [0] * n
    with open(os.path.join(where, "pickled")) as f:
        for line in f:
            counts[int(line)] += 1
    return counts


def counted_on_node(x: int, where: str) -> int:
    """``counted``, after writing the dask worker that runs the item (the pool
    worker's parent) to ``where/node``."""
    Path(where, "node").write_text(str(os.getppid()))
    return counted(x, where)


def runs(where: str, n: int) -> list[int]:
    """How many times each of items 0..n-1 ran, as ``counted`` recorded it."""
    out = []
    for x in range(n):
        try:
            out.append(len(Path(where, f"ran-{x}").read_text().splitlines()))
        except FileNotFoundError:
            out.append(0)
    return out


def crash(how: str) -> None:
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "exit":
        os._exit(3)
    elif how == "segfault":
        ctypes.string_at(0)


def crash_on(x: int, bad: int, how: str, where: str) -> int:
    """Item ``bad`` kills its own process (as ``how`` says), every time it runs."""
    counted(x, where)
    if x == bad:
        crash(how)
    return x * x


def block_with_grandchild(x: int, where: str) -> int:
    """Start a ``sleep`` grandchild, report both pids (and the dask worker's, our
    pool's parent) in a file, then block forever."""
    child = subprocess.Popen(["sleep", str(FOREVER)])
    marker = Path(where, f"running-{x}-{os.getpid()}")
    marker.write_text(f"{os.getpid()} {child.pid} {os.getppid()}")
    time.sleep(FOREVER)  # killed by the test's stop, never waited out
    return x


def block_once(x: int, at: int, where: str) -> int:
    """Item ``at`` blocks the first time it runs (until its dask worker is killed),
    after writing the dask worker's pid; every item's runs are counted. Each item
    takes 5 ms, so the node's pool hears of each as it ends (items faster than
    ``_worker.COMMIT_SECONDS`` are committed in batches)."""
    time.sleep(0.005)  # the item's work, not a wait for anything
    counted(x, where)
    marker = Path(where, "blocked")
    if x == at and not marker.exists():
        marker.write_text(str(os.getppid()))  # the dask worker: our pool's parent
        time.sleep(FOREVER)  # its dask worker is SIGKILLed by the test
    return x * x


def node_pid(x: int) -> int:
    """The dask worker process running the item (its pool worker's parent)."""
    return os.getppid()


def pids_alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` that are still running (zombies count as gone)."""
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def markers(where: str, prefix: str) -> list[list[int]]:
    """The pid lines of every marker file named ``prefix*`` in ``where``."""
    out = []
    for path in sorted(Path(where).glob(prefix + "*")):
        text = path.read_text()
        if text:
            out.append([int(p) for p in text.split()])
    return out


def sleep_on(x: int, bad: int, where: str) -> int:
    """Item ``bad`` blocks every time it runs (until its timeout kills it); every
    item's runs are counted."""
    counted(x, where)
    if x == bad:
        time.sleep(FOREVER)  # killed at its task_timeout, never waited out
    return x * x


def kill_node(x: int, where: str) -> int:
    """Count the run, then SIGKILL the dask worker running the item (our pool's
    parent): a task that takes its node down, every time it runs."""
    counted(x, where)
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(FOREVER)  # dies with its dask worker (corral's lifeline)
    return x


def kept_pool_workers(token: str) -> int:
    """On a dask worker (``client.run``): the live workers of the corral pool this
    node keeps for the client-side pool ``token`` (0: none is kept)."""
    from corral._pool import _cluster_node

    with _cluster_node._kept_lock:
        kept = _cluster_node._kept.get(token)
    return 0 if kept is None else kept.pool.statistics().workers_alive


def worker_plugin_names(dask_scheduler: object) -> list[str]:
    """On the scheduler (``run_on_scheduler``): the worker plugins new workers get."""
    return sorted(dask_scheduler.worker_plugins)  # type: ignore[attr-defined]


def time_out_then_block_once(x: int, slow: int, at: int, where: str) -> int:
    """Item ``slow`` blocks every time it runs (until its task_timeout kills it);
    item ``at`` blocks the first time (until its dask worker is SIGKILLed), as
    ``block_once``. Every item's runs are counted."""
    if x == slow:
        counted(x, where)
        time.sleep(FOREVER)  # killed at its task_timeout, never waited out
    return block_once(x, at, where)


def journal_files(token: str) -> list[str]:
    """On a dask worker (``client.run``): the files of pool ``token``'s journal on
    this host."""
    from corral._pool import _cluster_journal

    base = _cluster_journal.base_dir()
    try:
        return sorted(os.listdir(os.path.join(str(base), token)))
    except FileNotFoundError:
        return []


def block_once_then_wait(x: int, at: int, where: str, go: str) -> int:
    """As ``block_once``; run again, item ``at`` says so in a file ("rerun") and
    waits until the test writes to the FIFO ``go``."""
    if x == at and Path(where, "blocked").exists():
        Path(where, "rerun").write_text(str(os.getpid()))
        with open(go) as fifo:  # blocks until the test opens it to write
            fifo.read()
    return block_once(x, at, where)


def notes_around_unknown_starts(dask_scheduler: Any, held: str, n: int) -> list[object]:
    """On the scheduler: note a start of ``held`` (a key it holds), then of ``n``
    keys it does not hold, then of ``held`` again; return whether the first and
    the last call saw a re-run, and how many keys are noted at the end."""
    from corral._pool._cluster_node import ran_before

    first = ran_before(dask_scheduler, held)
    for i in range(n):
        ran_before(dask_scheduler, f"corral-notes-test-{i}")
    again = ran_before(dask_scheduler, held)
    return [first, again, len(dask_scheduler._corral_started.keys)]


def report_sizes(dask_scheduler: Any, topic: str) -> list[int]:
    """On the scheduler: the size of each report payload it keeps for ``topic``."""
    topic_ = dask_scheduler._broker._topics.get(topic)
    return [] if topic_ is None else [len(msg[2]) for _, msg in topic_.events]


def corral_restrictions(dask_scheduler: Any) -> dict[str, tuple[list[str], bool]]:
    """On the scheduler: the host restrictions of corral's tasks, and whether they
    are loose (the task may run elsewhere if those hosts have no worker)."""
    return {
        str(key): (sorted(ts.host_restrictions or ()), bool(ts.loose_restrictions))
        for key, ts in dask_scheduler.tasks.items()
        if str(key).startswith("corral-")
    }
