"""Fixtures shared by the whole suite.

- ``start_method`` / ``ctx``: every test that takes them runs under fork, forkserver
  and spawn.
- ``_no_leaks`` (autouse): fails a test that leaves behind a process, a zombie, a
  thread, a file descriptor, or shared memory that corral made (see ``leaks.py``:
  only the test's own resources are looked at, never the machine's). Leftover
  processes are killed and reaped so that one leaky test can't poison the next.

The test process makes itself a child subreaper, so that descendants orphaned by a
test come back to it and /proc stays honest about them (PID 1 on these machines
does not reap zombies).
"""

from __future__ import annotations

import multiprocessing.forkserver
import sys
from collections.abc import Iterator

import pytest

import corral
from corral import _process
from corral._core import _lifeline, _linux, _reaper, _supervisor

from . import leaks
from .leaks import LeakCheck
from .leaks import wait_until as wait_until

START_METHODS = ("fork", "forkserver", "spawn")
# The reaper thread's idle linger in the tests (``_reaper.IDLE_LINGER``).
TEST_REAPER_LINGER = 0.02


def pytest_configure(config: pytest.Config) -> None:
    _linux.set_child_subreaper(True)
    # Long-lived helpers belong to the session, not to the first test that happens
    # to start them: the stdlib's forkserver, and corral's per-process lifeline pipe
    # (made once, on the first start(), and kept for the life of the process), and
    # the /dev/null reader that fork children take as their stdin (the same).
    multiprocessing.forkserver.ensure_running()
    _lifeline.child_end()
    _process._prepare_stdin()  # (the /dev/null reader for fork children, kept too)
    # corral's supervisor of this process (started on the first start(), kept for
    # the life of the process) is the session's too; only the current one, so a
    # supervisor a test leaves behind (say, after making this one restart) is a leak.
    _supervisor.ensure_started()
    leaks.OWNED_BY_FIXTURES.append(_current_supervisor)
    # The reaper thread lingers when idle (a thread start saved on the next start(),
    # a speed trade-off only), and every test's leak check waits for it to end: at
    # the default 0.2-0.4 s, that wait was a third of the suite's time.
    _reaper.IDLE_LINGER = TEST_REAPER_LINGER


def _current_supervisor() -> set[int]:
    pid = _supervisor.pid()
    return {pid} if pid else set()


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    method: str = request.param
    return method


@pytest.fixture
def ctx(start_method: str) -> corral.CorralContext:
    return corral.get_context(start_method)


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    check = LeakCheck()
    yield
    # corral.map keeps its pools for the next call, until interpreter exit; a test
    # is a shorter life, so its kept pools end with it.
    executor = sys.modules.get("corral._executor")
    if executor is not None:
        executor._close_kept()
    problems = check.finish()
    if problems:
        pytest.fail("test leaked resources:\n  " + "\n  ".join(problems), pytrace=False)
