"""cluster= before any work: the missing extra, "auto", and addresses that answer
nobody. These need no running cluster (the unreachable one needs dask.distributed)."""

from __future__ import annotations

import importlib.util
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import corral
from corral._pool import _cluster_connect
from corral._tools._demo import _watch

from . import helpers

HAS_DISTRIBUTED = importlib.util.find_spec("distributed") is not None
needs_distributed = pytest.mark.skipif(
    not HAS_DISTRIBUTED, reason="needs dask.distributed: pip install 'corral[distributed]'"
)


def test_without_the_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    with pytest.raises(ImportError, match=r"pip install 'corral\[distributed\]'"):
        corral.Pool(cluster="tcp://127.0.0.1:1")


def test_auto_without_corral_cluster_runs_on_this_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CORRAL_CLUSTER", raising=False)
    monkeypatch.setitem(sys.modules, "distributed", None)  # never even imported
    with corral.Pool(2, cluster="auto") as pool:
        assert type(pool._engine).__name__ == "Engine"
        assert pool.map(abs, [-1, -2]) == [1, 2]


@needs_distributed
def test_a_cluster_of_the_wrong_kind_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="cluster= takes"):
        corral.Pool(cluster=42)


@needs_distributed
def test_an_unreachable_address_fails_within_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_cluster_connect, "CONNECT_TIMEOUT", 2.0)
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises((OSError, TimeoutError)) as info:
        corral.Pool(cluster=f"tcp://127.0.0.1:{port}")
    took = time.monotonic() - started
    assert "no dask scheduler answered" in "".join(getattr(info.value, "__notes__", []))
    assert took < 2.0 + 3.0, f"took {took:.1f} s"  # the timeout, plus dask's own slack


LOCAL_PARENT = Path(__file__).with_name("cluster_local_parent.py")
# The promise: nothing of a cluster="local" survives 5 s after its owner's
# SIGKILL: no scheduler, worker, task process or grandchild. A clean exit too.
LOCAL_ORPHAN_BOUND = 5.0


@needs_distributed
@pytest.mark.parametrize("how", ["SIGKILL", "close"])
def test_a_local_cluster_dies_with_its_owner(tmp_path: Path, how: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, str(LOCAL_PARENT), str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert parent.stdin is not None
    assert parent.stdout is not None
    pidfds: dict[int, int] = {}
    try:
        reported, pidfds = helpers.ready_and_pinned(parent)
        assert len(reported) == 5  # the host, and two items with a grandchild each
        if how == "SIGKILL":
            parent.kill()
            assert parent.wait(LOCAL_ORPHAN_BOUND) == -signal.SIGKILL
        else:  # leaves its with-block: the pool terminates, and stops the cluster
            parent.stdin.write(b"go\n")
            parent.stdin.flush()
            assert parent.wait(LOCAL_ORPHAN_BOUND) == 0
        survivors, _ = _watch.wait_dead(pidfds, LOCAL_ORPHAN_BOUND)
        assert not survivors, f"alive {LOCAL_ORPHAN_BOUND} s after the owner died: {survivors}"
        assert len(pidfds) >= 5 + 3  # the scheduler and worker programs too
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(LOCAL_ORPHAN_BOUND)
        parent.stdin.close()
        parent.stdout.close()
        _watch.kill_reap_close(pidfds)


@needs_distributed
@pytest.mark.parametrize(
    ("processes", "interval"), [(1, 0.005), (2, 0.005), (5, 0.005), (32, 0.032), (500, 0.05)]
)
def test_the_report_interval_follows_the_cluster_size(processes: int, interval: float) -> None:
    # What finished within one interval before a dask worker's death may run
    # again: a small cluster reports every 5 ms (near a local pool's commit); a
    # large one less often, so that the scheduler relays at most
    # REPORTS_PER_SECOND reports, up to 50 ms (one interval per running chunk).
    from corral._pool import _cluster

    assert _cluster.report_interval(processes) == pytest.approx(interval)
    assert processes / _cluster.report_interval(processes) <= max(
        _cluster.REPORTS_PER_SECOND, processes / _cluster.REPORT_MAX
    )
