"""The leak check (``leaks.py``, run after every test by ``_no_leaks``) looks at the
test's own resources only: another program's shared memory appearing meanwhile
never fails a test, and a real leak by corral always does.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

import corral
from corral._core._arena import BIG
from corral._core._shm import NAME_PREFIX

from .leaks import SELF_TEST_PREFIX, SHM_DIR, LeakCheck

TIMEOUT = 30.0
# Enough for a leak check that has nothing to wait for; a leak is reported after it.
GRACE = 0.3


@contextlib.contextmanager
def _removed_at_end(path: str) -> Iterator[str]:
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@pytest.mark.parametrize("prefix", ["mp-", "loky-"])
def test_another_programs_semaphore_is_not_a_leak(prefix: str) -> None:
    name = f"{prefix}corral-test-{uuid.uuid4().hex[:8]}"
    # Another program makes a named POSIX semaphore, as multiprocessing.Lock and
    # loky do, and leaves it in /dev/shm (unlink=False), while our test runs.
    program = (
        "import _multiprocessing, sys; _multiprocessing.SemLock(1, 1, 1, '/' + sys.argv[1], False)"
    )
    check = LeakCheck()
    with _removed_at_end(f"{SHM_DIR}/sem.{name}") as path:
        subprocess.run([sys.executable, "-c", program, name], check=True, timeout=TIMEOUT)
        assert os.path.exists(path)
        assert check.finish(GRACE) == []


def test_a_corral_entry_in_dev_shm_is_a_leak() -> None:
    check = LeakCheck()
    path = f"{SHM_DIR}/{SELF_TEST_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with _removed_at_end(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        problems = check.finish(GRACE)
    assert len(problems) == 1
    assert "/dev/shm entries corral left behind" in problems[0]
    assert os.path.basename(path) in problems[0]


def test_a_queue_kept_open_is_a_leak() -> None:
    check = LeakCheck()
    q = corral.Queue()
    problems = check.finish(GRACE)
    q.put(1)  # (and keeps q alive until here)
    assert q.get(timeout=TIMEOUT) == 1
    text = "\n".join(problems)
    assert "file descriptors left open" in text
    assert f"/memfd:{NAME_PREFIX}queue" in text
    assert "corral memfds left mapped" in text


def _older_locks_with_room() -> list[corral.Lock]:
    """Locks made before a check, which keep their arenas open through it,
    legitimately, with a free page in one of them: the next lock fits in an arena
    already open (no new fd, no new mapping)."""
    older = [corral.Lock()]
    while True:
        spare = corral.Lock()
        if spare._mon.shm.arena is older[-1]._mon.shm.arena:
            return older  # (spare's page is free again once it is gone)
        older.append(spare)  # (older[-1] took its arena's last page)


def test_a_lock_kept_alive_in_an_older_arena_is_a_leak() -> None:
    older = _older_locks_with_room()
    check = LeakCheck()
    leaked = corral.Lock()
    problems = check.finish(GRACE)
    assert leaked._mon.shm.fd in {fd for fd, _ in check.fds}
    assert problems == ["corral arena blocks left allocated (objects still alive): 1"]
    assert older


def test_an_arena_that_an_older_object_keeps_open_is_no_leak() -> None:
    older = _older_locks_with_room()
    check = LeakCheck()
    lock, value = corral.Lock(), corral.Value("i", 1)
    with value.get_lock(), lock:
        value.value += 1
    del lock, value
    assert check.finish(GRACE) == []
    for lock in older:  # (their arenas were left open and usable)
        assert lock.acquire(timeout=TIMEOUT)
        lock.release()


def test_a_big_array_kept_alive_is_a_leak_of_its_own_arena() -> None:
    check = LeakCheck()
    array = corral.RawArray("b", BIG)  # (an arena of its own)
    problems = check.finish(GRACE)
    array[0] = 1
    text = "\n".join(problems)
    assert "file descriptors left open" in text
    assert f"/memfd:{NAME_PREFIX}arena" in text
    assert "corral memfds left mapped" in text
    assert "corral arena blocks left allocated (objects still alive): 1" in text


def test_a_child_left_running_is_a_leak(ctx: corral.CorralContext) -> None:
    check = LeakCheck()
    p = ctx.Process(target=time.sleep, args=(TIMEOUT,))
    p.start()
    problems = check.finish(GRACE)  # kills and reaps what it found
    p.join(TIMEOUT)
    assert p.exitcode is not None
    assert problems[0].startswith("processes still running")
    assert str(p.pid) in problems[0]
    # (and the handles of the process object, alive until the end of the test)
    assert all(line.startswith("file descriptors left open") for line in problems[1:])


def test_another_test_process_s_deliberate_entry_is_not_this_test_s_leak() -> None:
    """An entry a leak-check self-test in another process (an xdist worker) made on
    purpose, while this test ran, is not this test's."""
    check = LeakCheck()
    other = os.getppid()  # (any pid but ours)
    path = f"{SHM_DIR}/{SELF_TEST_PREFIX}{other}-{uuid.uuid4().hex[:8]}"
    with _removed_at_end(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        assert check.finish(GRACE) == []
