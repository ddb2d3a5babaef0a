"""What a ``cluster=`` argument names: a connected, checked dask client.

    cluster=                      connect()
    --------                      ---------
    "auto"                        CORRAL_CLUSTER if set, else None (run on this machine)
    "tcp://host:8786"             Client(address), owned: closed with the pool
    a distributed.Client          used as is, never closed by corral
    a Cluster (LocalCluster...)   Client(cluster), owned
    "local"                       a scheduler and workers on loopback, started as
                                  processes of a corral.Process (the host below), so
                                  corral's lifeline ends them all if this process dies

Every connection is checked before the pool takes work: the scheduler answers
within ``CONNECT_TIMEOUT`` (never a hang), and the client, scheduler and workers
run the same versions of the packages that pickles depend on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

__all__ = ["ClusterConnection", "connect", "require_distributed", "resolve_auto"]

INSTALL_HINT = "cluster= needs dask.distributed: pip install 'corral[distributed]'"
# How long connecting to a scheduler, or waiting for a first worker, may take before
# the call fails. Long enough for a scheduler across a busy network; a refused or
# unreachable address fails within it, never hangs.
CONNECT_TIMEOUT = 10.0
# cluster="local": how long the scheduler and its workers get to come up (imports of
# dask on a loaded 2-core box take seconds), and to exit when the pool ends before
# they are killed with their subtree.
LOCAL_START_TIMEOUT = 60.0
LOCAL_STOP_GRACE = 3.0
# Packages whose versions must agree between client, scheduler and workers: a pickle
# made by one version may not load, or may mean something else, in another.
CHECKED_PACKAGES = ("corral", "cloudpickle", "dask", "distributed", "msgpack")


def require_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return distributed


def resolve_auto(cluster: Any) -> Any:
    """``"auto"``: the CORRAL_CLUSTER address if it is set, else None (this machine)."""
    if isinstance(cluster, str) and cluster == "auto":
        return os.environ.get("CORRAL_CLUSTER") or None
    return cluster


class ClusterConnection:
    """A client, and what corral must close with the pool (its own client, a host)."""

    def __init__(self, client: Any, owned: bool, host: LocalHost | None = None):
        self.client = client
        self.owned = owned
        self.host = host

    def total_threads(self) -> int:
        return sum(self.client.nthreads().values())

    def close(self) -> None:
        if self.owned:
            with contextlib.suppress(Exception):
                self.client.close(timeout=LOCAL_STOP_GRACE)
        if self.host is not None:
            self.host.stop()


def connect(cluster: Any) -> ClusterConnection:
    """Connect to what ``cluster`` names; check that it answers and its versions."""
    distributed = require_distributed()
    host = None
    if isinstance(cluster, distributed.Client):
        conn = ClusterConnection(cluster, owned=False)
    elif isinstance(cluster, str) and cluster == "local":
        host = LocalHost.start()
        try:
            conn = ClusterConnection(_client(distributed, host.address), owned=True, host=host)
        except BaseException:
            host.stop()
            raise
    elif isinstance(cluster, str) or hasattr(cluster, "scheduler_address"):
        conn = ClusterConnection(_client(distributed, cluster), owned=True)
    else:
        raise TypeError(
            "cluster= takes a scheduler address, a distributed.Client, a dask Cluster, "
            f"'local' or 'auto', not {cluster!r}"
        )
    try:
        if host is not None:  # every core's worker: the pool's concurrency counts them
            conn.client.wait_for_workers(host.n_workers, timeout=LOCAL_START_TIMEOUT)
        elif not conn.client.nthreads():
            conn.client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
        check_versions(conn.client)
    except BaseException:
        conn.close()
        raise
    return conn


def _client(distributed: Any, target: Any) -> Any:
    try:
        if isinstance(target, str):
            _probe(target)
        return distributed.Client(target, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        exc.add_note(f"corral: no dask scheduler answered at {target!r} within {CONNECT_TIMEOUT} s")
        raise


def _probe(address: str) -> None:
    """Fail fast on a tcp:// address where nothing listens, before dask's Client:
    one that can't connect leaves its event-loop thread running, and warns later."""
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp"):
        return  # tls, ucx, inproc...: dask's own connect and timeout
    host, _, port = rest.rpartition(":")
    if not port.isdigit():
        return
    with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), CONNECT_TIMEOUT):
        pass


def check_versions(client: Any) -> None:
    """Raise ValueError if client, scheduler and workers disagree on a checked package."""
    versions = client.get_versions(packages=["corral"])
    where = {"client": versions["client"], "scheduler": versions["scheduler"]}
    where.update(versions["workers"])
    lines = []
    for package in (*CHECKED_PACKAGES, "python"):
        seen = {}
        for name, info in where.items():
            packages = info.get("packages", {}) if isinstance(info, dict) else {}
            version = packages.get(package, "MISSING")
            if package == "python" and isinstance(version, str):
                version = ".".join(version.split(".")[:2])
            seen[name] = version
        if len(set(seen.values())) > 1:
            shown = ", ".join(f"{name}: {v}" for name, v in seen.items())
            lines.append(f"  {package}: {shown}")
    if lines:
        raise ValueError(
            "corral: the client, scheduler and workers of this cluster run different "
            "versions, and pickles would not travel safely between them:\n" + "\n".join(lines)
        )


class LocalHost:
    """``cluster="local"``: a dask scheduler and workers, owned by a corral.Process.

    The host process starts ``dask scheduler`` and ``dask worker`` on loopback and
    waits. corral's lifeline kills the host and its whole subtree when this process
    dies, however it dies; :meth:`stop` ends them when the pool ends.
    """

    def __init__(self, proc: Any, directory: str, address: str, n_workers: int = 1):
        self.proc = proc
        self.directory = directory
        self.address = address
        self.n_workers = n_workers

    @classmethod
    def start(cls, n_workers: int | None = None) -> LocalHost:
        from .._context import get_context

        n_workers = n_workers or len(os.sched_getaffinity(0)) or 1
        directory = tempfile.mkdtemp(prefix="corral-cluster-")
        scheduler_file = os.path.join(directory, "scheduler.json")
        # fork: the host only starts programs, and needs nothing from __main__.
        proc = get_context("fork").Process(
            target=_host_main, args=(directory, n_workers), name="corral-cluster-host"
        )
        proc.start()
        host = cls(proc, directory, "", n_workers)
        try:
            host.address = host._wait_for_address(scheduler_file)
        except BaseException:  # a failed start, or a Ctrl-C while waiting
            host.stop()
            raise
        return host

    def _wait_for_address(self, scheduler_file: str) -> str:
        deadline = time.monotonic() + LOCAL_START_TIMEOUT
        while True:
            address = _read_address(scheduler_file)
            if address is not None:
                return address
            if not self.proc.is_alive() or time.monotonic() > deadline:
                log = _tail(os.path.join(self.directory, "cluster.log"))
                raise RuntimeError(f"corral: the local dask cluster did not start:\n{log}")
            self.proc.join(0.05)  # wait on the host, not a bare sleep

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.terminate()
            self.proc.join(LOCAL_STOP_GRACE)
            if self.proc.exitcode is None:
                self.proc.kill()  # the host and its whole subtree
                self.proc.join()
        shutil.rmtree(self.directory, ignore_errors=True)


def _read_address(path: str) -> str | None:
    import json

    try:
        with open(path) as f:
            address: str = json.load(f)["address"]
        return address
    except (OSError, ValueError, KeyError):
        return None  # not written yet, or half written


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-20:])
    except OSError:
        return "(no log)"


def _host_main(directory: str, n_workers: int) -> None:
    """In the host process: run a scheduler and workers until told to stop."""
    scheduler_file = os.path.join(directory, "scheduler.json")
    log = open(os.path.join(directory, "cluster.log"), "ab")  # noqa: SIM115
    common = ["--host", "127.0.0.1", "--no-dashboard", "--scheduler-file", scheduler_file]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", "0", *common],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    ]

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    workers = ["--nworkers", str(n_workers), "--nthreads", "1"]
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", *common, *workers],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )
        procs[0].wait()  # the scheduler runs until we are told to stop
    finally:
        for p in reversed(procs):
            with contextlib.suppress(Exception):
                p.terminate()
        deadline = time.monotonic() + LOCAL_STOP_GRACE
        for p in reversed(procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
        # Whatever is left (a worker mid-restart ignores SIGTERM at times) is killed
        # by corral's teardown of this process, with its whole subtree.
        log.close()
