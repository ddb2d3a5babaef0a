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


def test_bench_reports_missing_benchmark() -> None:
    done = corral_cli("bench", "--only", "no-such")
    assert done.returncode == 2
    assert "nothing matches" in done.stderr
