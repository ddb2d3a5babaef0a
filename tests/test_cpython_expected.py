"""tests/cpython/expected.toml, the list of expected differences with CPython's own
suites, stays honest: every entry has a reason and names a test of ours that exists.
(The suites themselves run from .ci/run: python -m tests.cpython.run_suite.)"""

from __future__ import annotations

import re
from pathlib import Path

from tests.cpython import run_suite

ROOT = Path(__file__).resolve().parent.parent


def test_every_difference_has_a_reason_and_a_test_of_ours() -> None:
    diffs = run_suite.load_expected(run_suite.EXPECTED)
    assert diffs
    for d in diffs:
        assert d.test.split(".")[0] in ("mp", "cf", "*"), d.test
        assert len(d.reason) > 40, d.test
        assert set(d.methods) <= {"fork", "forkserver", "spawn"}, d.test
        if d.outcome == "flaky":
            continue  # a known bug: its reason says where the fix belongs
        path, _, name = d.ours.split(",")[0].strip("` ").partition("::")
        source = (ROOT / path).read_text()
        if name:
            assert re.search(rf"^def {re.escape(name)}\(", source, re.M), d.ours


def test_ids_are_neutral_of_the_start_method() -> None:
    class WithProcessesTestQueue:
        _testMethodName = "test_put"

    class ProcessPoolSpawnExecutorDeadlockTest:
        _testMethodName = "test_exit_at_task_unpickle"

    assert run_suite.neutral_id(WithProcessesTestQueue(), "mp") == "mp.TestQueue.test_put"
    assert (
        run_suite.neutral_id(ProcessPoolSpawnExecutorDeadlockTest(), "cf")
        == "cf.ExecutorDeadlockTest.test_exit_at_task_unpickle"
    )
