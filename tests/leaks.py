"""What the ``_no_leaks`` fixture checks, as a class a test can drive directly.

A test's own resources, and nothing else on the machine:

- processes: every descendant of the test process (children, and theirs: a
  forkserver child is the server's child, not ours), zombies included;
- threads of the test process;
- file descriptors of the test process;
- shared memory that corral made: memfd mappings named ``corral-*`` in the test
  process (a mapping outlives its fd), and /dev/shm entries whose name starts with
  corral's prefix. Other programs' entries (``sem.mp-*`` of a multiprocessing
  program running next to the suite, ``sem.loky-*``...) are theirs, not ours;
- blocks of corral's shared arenas (``_core._arena``) that the test process
  allocated: a lock or value the test leaked may sit in an arena that an older,
  legitimately long-lived object keeps open, where no fd or mapping count sees it.
  Like is compared with like: fds and mappings catch a leaked arena, the count of
  blocks in use catches a leaked object inside a shared one. Arenas are never kept
  once empty, so an arena that outlives a test does so because an object in it
  does, and that object was there before the test began.

``LeakCheck()`` takes the snapshot; ``finish()`` waits up to ``grace`` seconds for
the test's leftovers to go away by themselves, kills and reaps the processes that
did not, and returns what leaked, one line per kind.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import time
from collections.abc import Callable

from corral._core import _linux
from corral._core._arena import blocks_in_use
from corral._core._shm import NAME_PREFIX

# How long a test's processes, threads and fds get to go away by themselves after
# the test body ends. corral reaps within 100 ms; the slack is for loaded CI boxes.
LEAK_GRACE = 3.0

SHM_DIR = "/dev/shm"
# Processes that a longer-lived fixture owns (a dask cluster's scheduler and workers,
# which a nanny may restart during a test): each function returns their pids now.
# They are the fixture's to check, not a test's leak; their children are the test's.
OWNED_BY_FIXTURES: list[Callable[[], set[int]]] = []
# How a memfd that corral made shows in /proc/<pid>/maps and /proc/<pid>/fd.
MEMFD_PREFIX = f"/memfd:{NAME_PREFIX}"


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return its last value.

    For conditions that have no event to wait on (the state of another process in
    /proc). Never used to give another process "time to get ready".
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(interval)


def descendants() -> set[int]:
    return set(_linux.descendants_of(os.getpid()))


def fds() -> frozenset[tuple[int, str]]:
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            out.add((int(name), os.readlink(f"/proc/self/fd/{name}")))
        except FileNotFoundError:  # the fd listdir itself used
            continue
    return frozenset(out)


def threads() -> frozenset[int]:
    return frozenset(t.ident for t in threading.enumerate() if t.ident is not None)


def corral_memfd_maps() -> frozenset[tuple[str, str]]:
    """(inode, name) of every corral memfd mapped into this process."""
    out = set()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith(MEMFD_PREFIX):
                out.add((parts[4], parts[5].rstrip("\n")))
    return frozenset(out)


# The prefix of the /dev/shm entries that tests of this check make on purpose,
# followed by the pid of the test process that made it: another xdist worker's
# check must not take one for its own test's leak (it did, once, in CI).
SELF_TEST_PREFIX = f"{NAME_PREFIX}leak-self-test-"


def corral_shm_entries() -> frozenset[str]:
    """/dev/shm entries that corral made (by their name); never anybody else's, nor
    another test process's deliberate ones (``SELF_TEST_PREFIX``)."""
    ours = f"{SELF_TEST_PREFIX}{os.getpid()}-"
    return frozenset(
        n
        for n in os.listdir(SHM_DIR)
        if n.startswith(NAME_PREFIX) and (not n.startswith(SELF_TEST_PREFIX) or n.startswith(ours))
    )


def describe(pids: list[int]) -> list[str]:
    """``pid (comm)`` for each pid, so a failure names what it found."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                comm = f.read().split(b")")[0].split(b"(", 1)[1].decode()
        except (OSError, IndexError):
            comm = "?"
        out.append(f"{pid} ({comm})")
    return out


def describe_fully(pids: list[int]) -> list[str]:
    """For each pid: comm, state, parent, pending and blocked signals, where it
    sleeps in the kernel and its command line, so that a process found where it
    should not be can be understood from the failure's message alone."""
    out = []
    for pid in pids:
        fields: dict[str, str] = {}
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    fields[key] = value.strip()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{pid}/wchan") as f:
                wchan = f.read().strip()
        except OSError as exc:
            out.append(f"{pid}: {exc.__class__.__name__}")
            continue
        parts = [f"{k}={fields.get(k, '?')}" for k in ("Name", "State", "PPid")]
        parts += [f"{k}={fields.get(k, '?')}" for k in ("ShdPnd", "SigPnd", "SigBlk")]
        out.append(f"{pid}: {' '.join(parts)} wchan={wchan} cmd={cmdline[:160]!r}")
    return out


def kill_and_reap(pids: set[int]) -> None:
    """SIGKILL ``pids`` and their descendants, then reap those that are (or, their
    parent gone, become) children of this process, a subreaper."""
    victims = set(pids)
    for pid in pids:
        victims.update(_linux.descendants_of(pid))
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def reap() -> bool:
        for pid in victims & set(_linux.children_of(os.getpid())):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        return not victims & descendants()

    wait_until(reap, LEAK_GRACE)


class LeakCheck:
    """A snapshot of the test process's resources, taken at construction."""

    def __init__(self) -> None:
        self.descendants = descendants()
        self.fds = fds()
        self.threads = threads()
        self.maps = corral_memfd_maps()
        self.shm = corral_shm_entries()
        self.blocks = blocks_in_use()

    def finish(self, grace: float = LEAK_GRACE) -> list[str]:
        """What the test left behind (empty if nothing), after waiting up to
        ``grace`` seconds for it to go. Leftover processes are killed and reaped,
        so that one leaky test can't poison the next."""
        problems: list[str] = []
        problems += self._processes(grace)
        problems += self._threads(grace)
        problems += self._fds_and_maps(grace)
        shm = corral_shm_entries() - self.shm
        if shm:
            problems.append(f"/dev/shm entries corral left behind: {sorted(shm)}")
        return problems

    def _processes(self, grace: float) -> list[str]:
        def new() -> set[int]:
            owned: set[int] = set()
            for owned_now in OWNED_BY_FIXTURES:
                owned |= owned_now()
            return descendants() - self.descendants - owned

        if wait_until(lambda: not new(), grace):
            return []
        leaked = new()
        states = {pid: _linux.proc_state(pid) for pid in leaked}
        zombies = describe(sorted(p for p, s in states.items() if s == "Z"))
        alive = describe(sorted(p for p, s in states.items() if s not in ("Z", None)))
        kill_and_reap(leaked)
        out = []
        if zombies:
            out.append(f"zombie processes nobody reaped: {zombies}")
        if alive:
            out.append(f"processes still running: {alive}")
        return out

    def _threads(self, grace: float) -> list[str]:
        def new() -> set[int]:
            return set(threads() - self.threads)

        if wait_until(lambda: not new(), grace):
            return []
        names = [t.name for t in threading.enumerate() if t.ident in new()]
        return [f"threads left running: {names}"]

    def _fds_and_maps(self, grace: float) -> list[str]:
        def no_new_fds() -> bool:
            return not fds() - self.fds

        def no_new_maps() -> bool:
            return not corral_memfd_maps() - self.maps

        def blocks_back() -> bool:
            return blocks_in_use() <= self.blocks

        out = []
        if not _settles(no_new_fds, grace):
            out.append(f"file descriptors left open: {sorted(fds() - self.fds)}")
        if not _settles(no_new_maps, grace):
            out.append(f"corral memfds left mapped: {sorted(corral_memfd_maps() - self.maps)}")
        if not _settles(blocks_back, grace):
            leaked = blocks_in_use() - self.blocks
            out.append(f"corral arena blocks left allocated (objects still alive): {leaked}")
        return out


def _settles(done: Callable[[], bool], grace: float) -> bool:
    """Whether ``done()`` holds now or, collecting garbage before each look (a cycle
    of the test's objects may hold what it made), within ``grace`` seconds. A full
    collection costs 30-70 ms in a test process: only when the plain look fails."""
    if done():
        return True

    def collected_and_done() -> bool:
        gc.collect()
        return done()

    return wait_until(collected_and_done, grace, interval=0.05)
