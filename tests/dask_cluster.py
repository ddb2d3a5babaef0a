"""A real dask cluster on loopback for the cluster tests: ``dask scheduler`` plus
``dask worker --nworkers 2 --nthreads 1``, started as separate programs.

    test process (subreaper)
      ├── dask scheduler            --scheduler-file, port 0, no dashboard
      └── dask worker (2 nannies)
            ├── resource tracker
            ├── dask worker process 1 ── the test's corral pool workers (must go)
            └── dask worker process 2 ── ...

``DaskCluster`` is module-scoped by the tests (starting one costs seconds). Its
scheduler, worker programs, their nanny-started worker processes and their
multiprocessing helpers belong to the fixture: ``leaks.OWNED_BY_FIXTURES`` tells the
per-test leak check so, and everything below them (the test's corral pools and
their tasks' children) is still each test's to clean up. ``stop()`` proves that
none of the cluster's processes, nor any descendant, is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from corral._core import _linux

from . import leaks

ROOT = Path(__file__).resolve().parent.parent
# Starting a scheduler and two workers imports dask three times: seconds on a
# loaded 2-core box. Generous, since a slow start is not what is tested here.
START_TIMEOUT = 60.0
# How long the programs get to exit after SIGTERM before their trees are killed.
STOP_GRACE = 10.0
N_WORKERS = 2
# How a corral supervisor shows in /proc/PID/cmdline (``_core/_supervisor.py``).
_SUPERVISOR = "corral/_core/_sweep.py"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class DaskCluster:
    """A scheduler (dask's defaults: allowed-failures 3) and two single-threaded dask
    workers, as separate programs."""

    def __init__(self, tmp: Path):
        self.scheduler_file = tmp / "scheduler.json"
        env = dict(os.environ, PYTHONPATH=str(ROOT), DASK_DISTRIBUTED__LOGGING__DISTRIBUTED="error")

        common = ["--host", "127.0.0.1", "--no-dashboard"]
        common += ["--scheduler-file", str(self.scheduler_file)]
        self.log = open(tmp / "cluster.log", "wb")  # noqa: SIM115
        self.scheduler = self._start(
            ["distributed.cli.dask_scheduler", "--port", "0", *common], env
        )
        self.workers = self._start(
            [
                "distributed.cli.dask_worker",
                *common,
                "--nworkers",
                str(N_WORKERS),
                "--nthreads",
                "1",
            ],
            env,
        )
        self.client: Any = None
        leaks.OWNED_BY_FIXTURES.append(self.owned)
        try:
            self._connect()
        except BaseException:
            self.stop()
            raise

    def _start(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def _connect(self) -> None:
        import dask
        import distributed

        client_class: Any = distributed.Client

        deadline = time.monotonic() + START_TIMEOUT
        while not self.scheduler_file.exists() or not self.scheduler_file.read_text():
            if time.monotonic() > deadline or self.scheduler.poll() is not None:
                raise RuntimeError("the dask scheduler did not start:\n" + self.log_tail())
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.scheduler.wait(0.05)  # a wait on the process, not a bare sleep
        self.address = json.loads(self.scheduler_file.read_text())["address"]
        # No periodic scheduler-info refresh: it would reopen a pooled connection
        # that close_idle_connections() closed, in the middle of the next test.
        with dask.config.set({"distributed.client.scheduler-info-interval": "1h"}):
            self.client = client_class(self.address, timeout=START_TIMEOUT, set_as_default=False)
        self.client.wait_for_workers(N_WORKERS, timeout=START_TIMEOUT)
        # dask starts a thread for future callbacks on first use, and keeps it for
        # the life of the process; the fixture's client keeps a pooled connection
        # for client.run: the session's, not the first test's.
        self.worker_pids()
        done = threading.Event()
        self.client.submit(os.getpid, pure=False).add_done_callback(lambda _: done.set())
        assert done.wait(START_TIMEOUT)
        # A scheduler in this process (a LocalCluster's) starts dask's one offload
        # thread, which also lives as long as the process: the session's too.
        from distributed.utils import _offload_executor

        _offload_executor.submit(os.getpid).result(START_TIMEOUT)

    def log_tail(self) -> str:
        self.log.flush()
        with open(self.log.name, errors="replace") as f:
            return "".join(f.readlines()[-30:])

    def worker_pids(self) -> list[int]:
        """The dask worker processes (the nannies' children), as the scheduler knows them."""
        return sorted(self.client.run(os.getpid).values())

    def owned(self) -> set[int]:
        """The cluster's own processes now: programs, worker processes, helpers."""
        pids = {self.scheduler.pid, self.workers.pid}
        for program in (self.scheduler.pid, self.workers.pid):
            pids.update(_linux.children_of(program))
        for pid in list(pids):
            for child in _linux.children_of(pid):
                # A dask worker's corral supervisor is the worker's, as long-lived
                # (started with the first node pool on it, ending with the worker).
                if "resource_tracker" in _cmdline(child) or _SUPERVISOR in _cmdline(child):
                    pids.add(child)
        return pids

    def close_idle_connections(self) -> None:
        """Close the fixture client's pooled, idle connections (to the scheduler and
        to workers it fetched results from): dask's, kept for reuse, not a test's."""

        async def collect() -> None:
            self.client.rpc.collect()

        self.client.sync(collect)

    def kill_worker(self, pid: int) -> list[int]:
        """SIGKILL a dask worker process; return the pids of its subtree (its corral
        pools) that did not die with it within LEAK_GRACE (empty: all died).

        They die by corral's supervisor (which may sweep as soon as it sees the
        worker's SIGKILL pending, before the worker has exited) or its lifeline, and
        come back to this test process (a subreaper) as zombies once the worker has
        exited; they are reaped here. On a real node they go to PID 1, and the
        nanny reaps the worker itself.
        """
        subtree = set(_linux.descendants_of(pid))
        os.kill(pid, signal.SIGKILL)

        def gone() -> bool:
            _reap_dead(subtree)
            return all(_linux.proc_state(p) is None for p in subtree)

        leaks.wait_until(gone, leaks.LEAK_GRACE)
        return sorted(p for p in subtree if _linux.proc_state(p) not in (None, "Z"))

    def reap_orphans(self, before: set[int]) -> list[int]:
        """After a dask worker died on its own (an item killed it): wait until the
        corral processes it held, which come back to this test process (a
        subreaper) once the worker has exited, are dead, and reap them. ``before``:
        this process's children before the death. Returns the pids still alive
        after LEAK_GRACE."""
        owned = {self.scheduler.pid, self.workers.pid}

        def orphans() -> set[int]:
            return set(_linux.children_of(os.getpid())) - before - owned

        def alive() -> set[int]:
            return {p for p in orphans() if _linux.proc_state(p) not in (None, "Z")}

        def settled() -> bool:
            _reap_dead(orphans())
            # (A zombie still in the workers' tree is a dead worker's, not yet
            # come back to us, or one the nanny has yet to reap.)
            tree = _linux.descendants_of(self.workers.pid)
            return not alive() and all(_linux.proc_state(p) != "Z" for p in tree)

        leaks.wait_until(settled, leaks.LEAK_GRACE)
        return sorted(alive())

    def wait_for_workers(self) -> None:
        """After a worker was killed: wait until its nanny's replacement joined."""
        self.client.wait_for_workers(N_WORKERS, timeout=START_TIMEOUT)

    def stop(self) -> list[str]:
        """Stop everything; return what was left (nothing, or the failure to report)."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close(timeout=5)
        everything = self.owned() | {
            d for p in (self.scheduler.pid, self.workers.pid) for d in _linux.descendants_of(p)
        }
        for proc in (self.workers, self.scheduler):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                leaks.kill_and_reap({proc.pid})
                proc.wait(STOP_GRACE)
        leaks.OWNED_BY_FIXTURES.remove(self.owned)
        self.log.close()

        def left() -> set[int]:
            for pid in everything & set(_linux.children_of(os.getpid())):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)  # orphans that came back to us, exited
            return everything & leaks.descendants()

        leaks.wait_until(lambda: not left(), leaks.LEAK_GRACE)
        leftover = left()
        if leftover:
            described = leaks.describe(sorted(leftover))
            leaks.kill_and_reap(leftover)
            return [f"cluster processes left after stop: {described}"]
        return []


def _reap_dead(pids: set[int]) -> None:
    """Reap those of ``pids`` that are zombie children of this process."""
    for pid in pids & set(_linux.children_of(os.getpid())):
        if _linux.proc_state(pid) == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
