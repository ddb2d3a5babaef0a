"""The corral command: demo scenarios exit 0 with PASS lines; bench finds its files."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corral._core import _linux

from . import leaks

TIMEOUT = 120


def corral_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``corral *args``; fail if any process it started outlives it.

    A process that dies with (just after) the command comes back to this test
    process, a subreaper, and is reaped here: in a shell, PID 1 would. One still
    running after ``LEAK_GRACE`` is an orphan, and fails the call."""
    before = set(_linux.children_of(os.getpid()))
    done = subprocess.run(
        [sys.executable, "-m", "corral", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )

    def came_back() -> set[int]:
        return set(_linux.children_of(os.getpid())) - before

    def alive() -> set[int]:
        return {p for p in came_back() if _linux.proc_state(p) not in (None, "Z")}

    def settled() -> bool:
        for pid in came_back():
            if _linux.proc_state(pid) == "Z":
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
        return not came_back()

    leaks.wait_until(settled, leaks.LEAK_GRACE)
    orphans = sorted(alive())
    assert not orphans, f"outlived `corral {' '.join(args)}`: {leaks.describe(orphans)}"
    return done


@pytest.mark.parametrize("name", ["zombies", "orphans", "tree-kill", "daemon-children", "result"])
def test_process_demo_scenarios_pass(name: str) -> None:
    done = corral_cli("demo", name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout
    assert "FAIL" not in done.stdout
    assert done.stdout.rstrip().endswith("0 failed")


def test_demo_lists_scenarios() -> None:
    done = corral_cli("demo", "--help")
    assert done.returncode == 0
    for name in ("zombies", "orphans", "tree-kill", "daemon-children", "result"):
        assert name in done.stdout


def test_bench_only_lists_its_choices() -> None:
    done = corral_cli("bench", "--only", "no-such")
    assert done.returncode == 2
    assert "invalid choice: 'no-such'" in done.stderr
    for name in ("distributed", "process", "queue", "sync", "pool"):
        assert name in done.stderr
    done = corral_cli("bench", "--help")
    assert done.returncode == 0
    assert "{distributed,pool,process,queue,sync}" in done.stdout


def test_version() -> None:
    import corral

    done = corral_cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"corral {corral.__version__}"


@pytest.mark.slow
def test_bench_after_a_plain_install(tmp_path: Path) -> None:
    """``pip install .`` (not editable) ships the benchmarks: ``corral bench`` finds
    them from any directory."""
    root = Path(__file__).resolve().parent.parent
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=TIMEOUT)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(root)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert pip.returncode == 0, pip.stderr
    code = "from corral._tools import _bench; print(_bench.available())"
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    assert done.stdout.strip() == "['pool', 'process', 'queue', 'sync']"
    done = subprocess.run(
        [str(venv / "bin" / "corral"), "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    assert done.stdout.startswith("corral ")


def test_result_demo_labels_the_childs_traceback() -> None:
    """The child's own traceback (printed by multiprocessing's bootstrap) is shown as
    labelled demo output, never raw between two PASS lines."""
    done = corral_cli("demo", "result")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    assert "(the child printed, as multiprocessing children do:)" in done.stdout
    traceback_lines = [line for line in done.stdout.splitlines() if "Traceback" in line]
    assert traceback_lines
    assert all(line.lstrip().startswith("| ") for line in traceback_lines)


@pytest.mark.skipif(
    importlib.util.find_spec("distributed") is None,
    reason="needs dask.distributed: pip install 'corral[distributed]'",
)
def test_cluster_demo_passes() -> None:
    done = corral_cli("demo", "cluster")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASS") == 4
    assert "PASS  no item that had finished ran again" in done.stdout
    assert "still running (dask cannot stop it)" in done.stdout
    assert done.stdout.rstrip().endswith("0 failed")
