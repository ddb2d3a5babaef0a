"""A robust monitor: state in one page of shared memory, guarded by a robust
mutex, with futex waiting and per-process accounting that survives SIGKILL.

    page (a 4096 B block of a shared arena, page aligned)
    +---------+---------------------------------+---------------+------------------+
    | mutex   | header: seq nwaiters recoveries | user area     | process slots    |
    | 0..64   | 64..128                         | 128..256      | 256..4096        |
    +---------+---------------------------------+---------------+------------------+

- **mutex**: a robust pthread mutex (``_robust``). Every read or write of the
  header, the user area or the slots happens while holding it, so its
  acquire/release barriers order all shared state; no other atomics are needed.
- **seq**: a futex word. Whoever changes state that waiters care about bumps it
  under the mutex and, after unlocking, wakes the waiters if ``nwaiters`` said
  there were any. A waiter reads ``seq`` under the mutex, unlocks, and sleeps
  only if ``seq`` still holds that value (the kernel checks), so no wake-up is
  lost between the unlock and the sleep.
- **slots**: one per process that uses the object: ``(pid, start time)``
  identifies the process without pid-reuse races (the start time comes from
  ``/proc/<pid>/stat``); ``held`` and ``mark`` are for the layer above
  (semaphore units held, barrier arrival); ``waiters`` counts its waiting threads.
  Only the owning process writes its slot, except the reaper below. The page
  holds 120; when all belong to live processes, the slots double, the new ones
  in a *growth area* in the same memfd, past the mapped arena (``_arena``
  reserves ``GROWTH_RESERVE`` bytes of sparse file for it at the first growth;
  ``nslots`` in the header says how many slots there are; each process maps the
  area again, larger, when it next takes the mutex). So only memory bounds how
  many processes use one object.

The page (and a Value's bytes after it) is a block of a shared arena
(``_arena``): a thousand monitors cost a handful of fds, not a thousand.

Death: a process killed while holding the mutex is detected by glibc (the next
``lock`` returns EOWNERDEAD); ``lock()`` then reaps dead slots and calls
``repair()`` so the layer can rebuild derived fields. A process killed while
*not* holding it (a semaphore holder sleeping, a barrier party waiting) is found
by ``reap()``, which waiters call when a wait slice ends without news (at most
once per ``REAP_INTERVAL_NS`` among them all, ``reap_due()``):
every slot whose process is gone is handed to ``on_dead_slot()`` and cleared.

Each field update is one aligned store, and layers order their stores so that a
death between two of them leaves state that ``repair()`` can rebuild from the
slots (for example a semaphore's value is recomputed as total - sum(held)).

Interrupts (KeyboardInterrupt, any exception a signal handler raises) may land
wherever CPython checks for signals: after every call, at the start of every
Python function. Every holding is therefore written ``try: <take the mutex>;
... finally: mon.unlock()``: an interrupt after the mutex was taken is inside the
``try``, and ``unlock`` is a C-level call that runs no Python frame first (it
answers EPERM, harmlessly, when the mutex was not taken). One window stays on
this pure-Python monitor: an interrupt in the instructions between a dead
holder's EOWNERDEAD and the end of ``_recover()`` lets the mutex go with the
derived fields not yet rebuilt (the next reap rebuilds slots; a semaphore's
value is recomputed at the next death).

A process that exits cleanly gives its slots back at exit (``detach()``, run by
``multiprocessing.util``'s exit hook in corral children and at interpreter exit
in the main process); only processes that vanished are treated as dead.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing import util as _mp_util

from ._arena import Block, allocate
from ._errors import LockTimeout
from ._futex import futex_wait, futex_wake
from ._later import later
from ._linux import is_alive, pid_of_tid, proc_start_time
from ._linux import self_identity as _self_identity
from ._robust import MUTEX_SIZE, NOWAIT_GRACE, WAIT_SLICE, RobustMutex, init_mutex
from ._shm import map_fd

__all__ = [
    "PAGE",
    "USER_OFFSET",
    "USER_SIZE",
    "Monitor",
    "Slot",
    # (re-exported from _linux, where the /proc helpers live)
    "is_alive",
    "pid_of_tid",
    "proc_start_time",
]

PAGE = 4096
HEADER_OFFSET = MUTEX_SIZE
USER_OFFSET = 128
USER_SIZE = 128
SLOTS_OFFSET = 256


class _Header(ctypes.Structure):
    _fields_ = (
        ("seq", ctypes.c_uint32),
        ("nwaiters", ctypes.c_uint32),
        ("recoveries", ctypes.c_uint32),
        ("nslots", ctypes.c_uint32),
        ("last_reap", ctypes.c_uint64),  # CLOCK_MONOTONIC ns of the last reap_due()
        ("growth_at", ctypes.c_uint64),  # file offset of the growth area
    )


class Slot(ctypes.Structure):
    _fields_ = (
        ("pid", ctypes.c_int32),
        ("waiters", ctypes.c_uint32),
        ("held", ctypes.c_int64),
        ("start", ctypes.c_uint64),
        ("mark", ctypes.c_uint64),
    )


NSLOTS = (PAGE - SLOTS_OFFSET) // ctypes.sizeof(Slot)  # slots in the page: 120

# How often, at most, waiters look for vanished processes among the slots (reading
# /proc for each): a dead holder's units come back, or a barrier breaks, within
# about this long. Shorter: faster recovery; longer: less work for a big crowd of
# waiters, which share it (one of them reaps per interval, not each per slice).
REAP_INTERVAL_NS = 50_000_000

# When every slot belongs to a live process, the slots are multiplied by this
# (the new ones in a growth area of the same memfd, mapped by each process when
# it next takes the mutex). Larger: fewer growths for a big crowd; smaller: less
# memory for a crowd that stops just past a size. Only memory bounds the count.
GROWTH_FACTOR = 2

# File space reserved, once, for a monitor's growth area (sparse: only the slots
# in use take memory). It holds 2**23 slots, more than twice the most processes
# Linux can run (pid_max is at most 2**22), so the doubling never outgrows it.
GROWTH_RESERVE = 1 << 28


def _growth_bytes(total: int) -> int:
    """Bytes of the growth area (whole pages) for ``total`` slots in all."""
    return -(-(total - NSLOTS) * ctypes.sizeof(Slot) // PAGE) * PAGE


def _close(shm: Block, growth: list[ctypes.Array[ctypes.c_char]]) -> None:
    growth.clear()  # (each mapping is unmapped as its array goes: see map_fd)
    shm.close()


# -- the monitor


class Monitor:
    """One shared page: robust mutex, futex sequence word, process slots.

    Layers subclass it to override ``repair()`` and ``on_dead_slot()``; they read
    and write their own fields at ``user_address`` while holding ``lock()``.
    """

    eager_attach = False  # take a slot as soon as a process holds the object
    # Let the mutex go: a C-level callable (``RobustMutex.unlock_raw``), so that no
    # Python frame, and so no signal handler's exception, runs before the unlock;
    # it answers EPERM, harmlessly, when this thread does not hold the mutex.
    unlock: Callable[[], int]

    def __init__(self, shm: Block | None = None, *, data_bytes: int = 0, what: str = ""):
        """``data_bytes``: room for the layer's own data after the page, at
        ``data_address`` (a Value's bytes beside its lock: one block)."""
        create = shm is None
        if shm is None:
            shm = allocate(PAGE + data_bytes, what or type(self).__name__)
        self.shm = shm
        base = shm.address
        self.mutex = RobustMutex(base)
        # unlock(): C-level, answers EPERM (harmless) when the mutex is not ours.
        self.unlock = self.mutex.unlock_raw
        self.header = _Header.from_address(base + HEADER_OFFSET)
        self.seq_address = base + HEADER_OFFSET
        self.user_address = base + USER_OFFSET
        # Every slot, the page's and those of the growth area (see _sync_slots).
        self._page_slots = list((Slot * NSLOTS).from_address(base + SLOTS_OFFSET))
        self.slots: list[Slot] = self._page_slots
        self._growth: list[ctypes.Array[ctypes.c_char]] = []
        self._slot_pid = 0
        self._slot_index = -1
        self.data_address = base + PAGE
        if create:
            init_mutex(base)
            self.header.nslots = NSLOTS  # (growth_at: 0 until the first growth)
        # Close the memfd and unmap when this monitor is garbage; the ctypes views
        # above never outlive it (they are only reachable through it).
        # Not at interpreter exit, though: detach() still needs the page then, and
        # the kernel frees everything at exit anyway.
        weakref.finalize(self, _close, shm, self._growth).atexit = False
        if self.eager_attach:
            _eager.add(self)
            self.attach()

    # -- the mutex
    def lock(self) -> bool:
        """Take the state mutex. Returns True when the previous holder had died
        (the state has then been repaired already)."""
        m = self.mutex
        m.acquire()
        self._sync_slots()
        if m.owner_died:
            self._recover()
            return True
        return False

    def _recover(self) -> None:
        """With the mutex just taken from a dead holder: reap, recount, repair."""
        self.header.recoveries += 1
        self.reap()
        self.header.nwaiters = sum(s.waiters for s in self.slots if s.pid)
        self.repair()

    def try_lock(self, timeout: float | None) -> bool:
        """``lock()``, giving up after ``timeout`` seconds (None: never; 0: only if
        free now) while a live peer holds the mutex. True if it is now held."""
        m = self.mutex
        if not m.acquire(timeout):
            return False
        self._sync_slots()
        if m.owner_died:
            self._recover()
        return True

    def apply(self, job: Callable[[], None], timeout: float | None = None) -> bool:
        """Run ``job`` with the mutex held: now, if it can be had within ``timeout``
        (at least NOWAIT_GRACE), else in the background as soon as it can
        (``_later``), so that a paused peer never holds the caller. True if now."""
        wait = NOWAIT_GRACE if timeout is None else max(timeout, NOWAIT_GRACE)
        ran = False
        try:  # (see "Interrupts" in the class docstring)
            if self.try_lock(wait):
                job()
                ran = True
        finally:
            self.unlock()
        if ran:
            return True

        def locked_job() -> None:
            try:
                self.lock()
                job()
            finally:
                self.unlock()
            self.wake_all()

        later(self.shm, locked_job)
        return False

    def held(self) -> bool:
        """Whether this thread holds the mutex (glibc keeps the owner's TID in it)."""
        return self.mutex.owner_tid() == threading.get_native_id()

    # -- hooks for layers
    def repair(self) -> None:
        """Rebuild derived fields after a holder died mid-update (lock held)."""

    def on_dead_slot(self, slot: Slot) -> None:
        """A process using the object is gone; ``slot`` still has its values (lock held)."""

    def on_detach(self, slot: Slot) -> None:
        """This process exits cleanly and gives ``slot`` back (lock held)."""

    # -- slots
    def my_slot(self) -> Slot:
        """This process's slot, allocated on first use (lock held)."""
        pid, start = _self_identity()
        if self._slot_pid == pid:
            s = self.slots[self._slot_index]
            if s.pid == pid and s.start == start:
                return s
        free = -1
        for i, s in enumerate(self.slots):
            if s.pid == pid and s.start == start:
                return self._remember(pid, i)
            if free < 0 and s.pid == 0:
                free = i
        if free < 0:
            self.reap()
            free = next((i for i, s in enumerate(self.slots) if s.pid == 0), -1)
            if free < 0:
                free = len(self.slots)
                self._grow()
        s = self.slots[free]
        s.held = 0
        s.waiters = 0
        s.mark = 0
        s.start = start
        s.pid = pid  # last: the slot is claimed once its pid is set
        _register_exit_hook()
        _attached.add(self)
        return self._remember(pid, free)

    def _grow(self) -> None:
        """(Lock held.) Every slot is a live process's: double the slots. The new
        ones live in the growth area, past the page, in the same memfd."""
        total = len(self.slots) * GROWTH_FACTOR
        if _growth_bytes(total) > GROWTH_RESERVE:  # pragma: no cover (> pid_max)
            raise RuntimeError(f"more than {len(self.slots)} live processes on one object")
        if self.header.growth_at == 0:
            self.header.growth_at = self.shm.reserve(GROWTH_RESERVE)
        self.header.nslots = total  # (after the file grew: others map what it says)
        self._sync_slots()

    def _sync_slots(self) -> None:
        """(Lock held.) Map the slots another process added (``header.nslots``).

        The growth area (from ``growth_at``, past the arena's mapped part) is mapped
        again, larger, each time it grew; earlier mappings stay until the monitor
        goes, so a slot view taken before never dangles (every mapping shows the
        same pages)."""
        total = self.header.nslots
        if total == len(self.slots) or total <= NSLOTS:
            return
        extra = total - NSLOTS
        # libc's mmap: Python's would keep a duplicate of the arena's fd per growth.
        mapping = map_fd(self.shm.fd, _growth_bytes(total), self.header.growth_at)
        self._growth.append(mapping)
        grown = (Slot * extra).from_address(ctypes.addressof(mapping))
        self.slots = [*self._page_slots, *grown]

    def _remember(self, pid: int, index: int) -> Slot:
        self._slot_pid = pid
        self._slot_index = index
        return self.slots[index]

    def reap(self) -> int:
        """Hand every slot of a vanished process to ``on_dead_slot`` and clear it
        (lock held). Returns how many were found."""
        me, my_start = _self_identity()
        found = 0
        for s in self.slots:
            if s.pid == 0 or (s.pid == me and s.start == my_start) or is_alive(s.pid, s.start):
                continue
            found += 1
            self.on_dead_slot(s)
            self.header.nwaiters = max(0, self.header.nwaiters - s.waiters)
            s.held = 0
            s.waiters = 0
            s.mark = 0
            s.pid = 0
        return found

    def reap_due(self) -> int:
        """``reap()`` for waiters whose slice ended without news: at most once per
        ``REAP_INTERVAL`` among all of them (lock held), so that a crowd of waiters
        does not read /proc for every slot every slice. Returns how many were found."""
        now = time.monotonic_ns()  # (CLOCK_MONOTONIC: one clock for every process)
        if now - self.header.last_reap < REAP_INTERVAL_NS:
            return 0
        self.header.last_reap = now
        return self.reap()

    def live_slots(self) -> list[Slot]:
        """Slots of processes still running (lock held; reads /proc)."""
        return [s for s in self.slots if s.pid and is_alive(s.pid, s.start)]

    def attach(self) -> None:
        try:
            self.lock()
            self.my_slot()
        finally:
            self.unlock()

    def detach(self) -> None:
        """Give this process's slot back (at clean exit)."""
        pid, start = _self_identity()
        if self._slot_pid != pid:
            return
        try:
            if not self.try_lock(1.0):
                return
            s = self.slots[self._slot_index]
            if s.pid == pid and s.start == start:
                self.on_detach(s)
                s.held = 0
                s.waiters = 0
                s.pid = 0
                self.bump()
            self._slot_pid = 0
        finally:
            self.unlock()
        self.wake_all()

    # -- waiting
    def bump(self) -> None:
        """Record a change waiters care about (lock held); then call ``wake``."""
        self.header.seq = (self.header.seq + 1) & 0xFFFFFFFF

    def has_waiters(self) -> bool:
        return bool(self.header.nwaiters != 0)

    def wake(self, n: int) -> None:
        """After unlocking: wake up to ``n`` waiters (skip it when ``has_waiters``
        was False under the lock)."""
        futex_wake(self.seq_address, n)

    def wake_all(self) -> None:
        futex_wake(self.seq_address, 0x7FFFFFFF)

    def wait(self, timeout: float) -> tuple[bool, bool]:
        """Sleep for a change (lock held on entry and on return).

        Sleeps at most ``min(timeout, WAIT_SLICE)``, then takes the mutex again
        within what is left of ``timeout`` (``math.inf``: however long it takes).
        Returns ``(woken, died)``: ``woken`` is False when the slice ended without
        news (callers then ``reap()`` to look for dead peers); ``died`` is True
        when relocking found a dead holder (state repaired). Raises
        ``LockTimeout``, with the mutex *not* held, when a peer held it past the
        deadline (un-registering is then left to ``_later``).
        """
        deadline = time.monotonic() + timeout
        s = self.my_slot()
        h = self.header

        def unregister() -> None:
            # (One step: no call between the two stores, where an interrupt could land.)
            mine, total = s.waiters - 1, h.nwaiters - 1
            s.waiters = mine if mine > 0 else 0
            h.nwaiters = total if total > 0 else 0

        died = relocked = False
        s.waiters += 1
        h.nwaiters += 1
        seq = h.seq
        try:  # (the unlock inside: an interrupt right after it still unregisters)
            self.unlock()
            woken = futex_wait(self.seq_address, seq, min(timeout, WAIT_SLICE))
        finally:
            left = None if timeout == math.inf else max(0.0, deadline - time.monotonic())
            if self.mutex.acquire(left):
                relocked = True
                self._sync_slots()
                died = self.mutex.owner_died
                if died:
                    self._recover()
                unregister()
            else:
                self.apply(unregister)
        if not relocked:
            raise LockTimeout
        return woken, died

    def statistics_fields(self) -> tuple[int, int, list[Slot]]:
        """(waiters, recoveries, live slots): under the lock if it is free, else
        read without it (racy, never torn), so a paused holder delays no one."""
        try:
            self.try_lock(0)  # (not held: read without it; unlock then answers EPERM)
            live = self.live_slots()
            waiters = sum(s.waiters for s in live)
            # Copies: the caller reads them after the lock is gone.
            return waiters, self.header.recoveries, [_copy_slot(s) for s in live]
        finally:
            self.unlock()


def _copy_slot(s: Slot) -> Slot:
    c = Slot()
    ctypes.pointer(c)[0] = s
    return c


# Monitors this process took a slot in, to give back at clean exit.
_attached: weakref.WeakSet[Monitor] = weakref.WeakSet()
# Monitors that every process holding them must attach to (barriers), so that a
# forked child is a known party before it does anything.
_eager: weakref.WeakSet[Monitor] = weakref.WeakSet()
_hook: _mp_util.Finalize | None = None


def _detach_all() -> None:
    for mon in list(_attached):
        # The exit path: never let this mask the real exit.
        with contextlib.suppress(Exception):
            mon.detach()


def _register_exit_hook() -> None:
    global _hook
    # Runs in corral children (multiprocessing's _bootstrap calls the exit
    # function) and at interpreter exit in the main process; not after SIGKILL or
    # os._exit(), and then the slots are reaped as dead. A Finalize belongs to the
    # process that made it, and a child's _bootstrap clears the registry, so it is
    # made again when needed.
    if _hook is None or getattr(_hook, "_pid", None) != os.getpid() or not _hook.still_active():
        _hook = _mp_util.Finalize(None, _detach_all, exitpriority=20)


class _Anchor:
    """Something for multiprocessing's after-fork registry to hold weakly."""


_ANCHOR = _Anchor()


def _on_child_bootstrap(_: object) -> None:
    # A child's _bootstrap cleared the finalizers registered while its arguments
    # were unpickled (spawn, forkserver) or inherited (fork): register ours again.
    if len(_attached):
        _register_exit_hook()


_mp_util.register_after_fork(_ANCHOR, _on_child_bootstrap)


def _after_fork_in_child() -> None:
    for mon in list(_eager):
        try:
            if mon.try_lock(1.0):
                mon.my_slot()
        except Exception:  # pragma: no cover - best effort
            pass
        finally:
            mon.unlock()


os.register_at_fork(after_in_child=_after_fork_in_child)
