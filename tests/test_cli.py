"""The corral command: demo scenarios exit 0 with PASS lines; bench finds its files."""

from __future__ import annotations

import subprocess
import sys

import pytest

TIMEOUT = 120


def corral_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


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
    for name in ("process", "queue", "sync", "pool"):
        assert name in done.stderr
    done = corral_cli("bench", "--help")
    assert done.returncode == 0
    assert "{pool,process,queue,sync}" in done.stdout


def test_version() -> None:
    import corral

    done = corral_cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"corral {corral.__version__}"
