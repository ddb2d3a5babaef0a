"""The cluster scenario (when dask.distributed is installed): ``Pool(cluster="local")``
with a dask worker SIGKILLed mid-chunk and an item that overruns ``task_timeout``,
next to what plain ``client.map`` does in the same situations.

    corral.Pool(cluster="local")  -> scheduler + 2 workers on loopback, owned by corral
      map over 300 items: item 40 sleeps past task_timeout, item 200 blocks until
      the demo SIGKILLs its dask worker
    client.submit on the same cluster (allowed-failures 0, so dask's charging shows):
      a task "cancelled" while it runs: it runs on
      a worker SIGKILLed with tasks queued on it: tasks that never started fail too
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import Report, scenario

ITEMS = 300
SLOW_ITEM = 40
KILL_AT = 200
TIMEOUT = 2.0
# How long any step may wait before the demo calls it stuck (the cluster's start
# on a loaded 2-core machine takes several seconds).
PATIENCE = 60.0
FOREVER = 300.0


def work(x: int, where: str) -> int:
    """Item SLOW_ITEM overruns the timeout (with a grandchild); item KILL_AT blocks,
    the first time, until the demo kills its dask worker. Each run is counted."""
    fd = os.open(os.path.join(where, "runs"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)
    if x == SLOW_ITEM:
        child = subprocess.Popen(["sleep", str(FOREVER)])
        Path(where, "slow").write_text(str(child.pid))
        time.sleep(FOREVER)
    marker = Path(where, "blocked")
    if x == KILL_AT and not marker.exists():
        marker.write_text(str(os.getppid()))  # the dask worker: our pool's parent
        time.sleep(FOREVER)
    return x * 2


def dask_task(seconds: float, where: str, name: str) -> int:
    """A plain dask task: a ``sleep`` child it waits for, its pid in a file."""
    child = subprocess.Popen(["sleep", str(seconds)])
    Path(where, name).write_text(str(child.pid))
    return child.wait()


def _wait_file(path: Path) -> str:
    deadline = time.monotonic() + PATIENCE
    while not (path.exists() and path.read_text()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} never appeared")
        time.sleep(0.02)  # another node writes it: nothing to wait on
    return path.read_text()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _corral_side(report: Report, pool: Any, where: str) -> None:
    import functools

    killer_done: list[int] = []

    def killer() -> None:
        victim = int(_wait_file(Path(where, "blocked")))
        os.kill(victim, signal.SIGKILL)
        killer_done.append(victim)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    t0 = time.monotonic()
    it = pool.imap(functools.partial(work, where=where), range(ITEMS), chunksize=25)
    got: list[Any] = []
    for _ in range(ITEMS):
        try:
            got.append(it.next(PATIENCE))
        except Exception as exc:
            got.append(exc)
    took = time.monotonic() - t0
    thread.join(PATIENCE)
    grandchild = int(_wait_file(Path(where, "slow")))
    ok = all(got[x] == x * 2 for x in range(ITEMS) if x != SLOW_ITEM)
    report.note(f"dask worker {killer_done} SIGKILLed mid-chunk; the map took {took:.1f} s")
    report.check(
        "every other item correct, in order, each delivered once", ok and len(got) == ITEMS
    )
    runs = Path(where, "runs").read_text().split()
    twice = sorted({int(x) for x in runs if runs.count(x) > 1})
    report.check(
        "no item that had finished ran again (only the one running when its worker died)",
        twice == [KILL_AT] and len(runs) == ITEMS + 1,
        f"ran more than once: {twice}",
    )
    report.check(
        f"the item that overran task_timeout={TIMEOUT:g} raised TaskTimeout",
        type(got[SLOW_ITEM]).__name__ == "TaskTimeout",
        repr(got[SLOW_ITEM])[:80],
    )
    report.check("its sleep grandchild on the node was killed", not _alive(grandchild))


def _dask_side(report: Report, client: Any, where: str) -> None:
    running = client.submit(dask_task, FOREVER, where, "cancelled", pure=False)
    pid = int(_wait_file(Path(where, "cancelled")))
    running.cancel()
    stopped = not _alive(pid)
    report.note(
        "client.map: a running task whose future was cancelled "
        + ("stopped" if stopped else "is still running (dask cannot stop it)")
    )
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)  # let that task end
    victim = sorted(client.scheduler_info()["workers"])[0]
    futures = [
        client.submit(dask_task, FOREVER, where, f"queued-{i}", workers=[victim], pure=False)
        for i in range(3)
    ]
    _wait_file(Path(where, "queued-0"))
    (victim_pid,) = client.run(os.getpid, workers=[victim]).values()
    os.kill(victim_pid, signal.SIGKILL)  # a loopback cluster: the worker is ours
    deadline = time.monotonic() + PATIENCE
    while any(f.status == "pending" for f in futures) and time.monotonic() < deadline:
        time.sleep(0.05)  # dask's futures: polled, as wait() needs a default client
    failed = [f for f in futures if f.status == "error"]
    never_started = [i for i in range(3) if not Path(where, f"queued-{i}").exists()]
    report.note(
        f"client.map: one worker SIGKILLed with 3 tasks on it: {len(failed)} failed with "
        f"KilledWorker, {len(never_started)} of which had never started"
    )


@scenario(
    "cluster",
    "Pool(cluster='local'): a dask worker killed mid-chunk and a task overrunning its "
    "timeout, next to plain client.map",
)
def cluster(ns: argparse.Namespace, report: Report) -> None:
    # dask's harshest setting, so that its charging of innocent tasks shows (and no
    # killed task is re-run forever); corral resubmits its own chunks either way.
    # The scheduler that corral starts reads it from the environment.
    key = "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"
    saved = os.environ.get(key)
    os.environ[key] = "0"
    try:
        _run(report)
    finally:
        if saved is None:
            del os.environ[key]
        else:
            os.environ[key] = saved


def _run(report: Report) -> None:
    from ... import _pool

    with tempfile.TemporaryDirectory() as where:
        t0 = time.monotonic()
        with _pool.Pool(cluster="local", task_timeout=TIMEOUT) as pool:
            up = time.monotonic() - t0
            report.note(f"a local scheduler and {pool._processes} workers up in {up:.1f} s")
            _corral_side(report, pool, where)
            _dask_side(report, pool._engine.conn.client, where)  # type: ignore[attr-defined]


if importlib.util.find_spec("distributed") is None:  # the extra is not installed
    from . import _registry

    _registry.pop("cluster", None)
