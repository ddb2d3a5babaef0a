"""The ring's shared parts: mapping, mutex, waiting, and repair after a death.

``RingBase`` holds what every operation needs (see ``_ringgrow``, ``_ringsingle``
and ``_ringbatch`` for the operations, ``_ring`` for the whole): the mappings and
their views, the robust mutex (taken with corral's one spin policy, repaired after
a dead holder), the futex words and waiter table (sleep, wake, sweep the dead), the
liveness of claims and reservations, and the lap jump that keeps an emptying ring
on warm pages. Layout and rules: ``_ringlayout``.

Two mappings of the one memfd::

    _shm (made with the ring, never remapped)   the header: mutex, futex words, and
        [header | first data area]              every header view (_q, _i, _hm)
    _mm  (the data area as big as ``geo`` says)  frames; remapped when the ring grew
        [header | data area of ``size`` bytes]  (``_sync``), the old one closed

The header's address never changes, so the mutex, the futex words and the C fast
path's lock stay where they were; only frame offsets move to the new mapping.
Every holder of the mutex compares ``geo`` with its ``size`` first (``_lock``, and
the inlined hot paths) and catches up (``_sync``) if another process grew the ring.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Callable
from typing import Any

from . import _linux
from ._futex import futex_wait, futex_wake
from ._later import later, pending
from ._ringlayout import (
    ALIGN,
    CONST,
    COUNTER,
    DATA,
    FRAME,
    I_CLAIM,
    I_DONE_SEQ,
    I_GET_SEQ,
    I_PUT_SEQ,
    I_RESERVE,
    I_SLOT_KIND,
    I_SLOT_PID,
    I_SLOT_START,
    INITIAL_BYTES,
    MAGIC,
    NO_FAST_PATH,
    OFF_CONST,
    OFF_DONE_SEQ,
    OFF_GEO,
    OFF_GET_SEQ,
    OFF_MUTEX,
    OFF_PUT_SEQ,
    OFF_SLOT_PID,
    OFF_SLOT_START,
    PAD,
    PAGE,
    POLL_ROUNDS,
    Q_BASE,
    Q_CLAIM_START,
    Q_COUNT,
    Q_GEO,
    Q_HEAD,
    Q_RESERVE_START,
    Q_TAIL,
    RETAIN_BYTES,
    SLOTS,
    STALE,
    U64,
    UNBOUNDED,
    WAIT_SLICE,
    WAKE_ALL,
    ZERO_WAKES_MAX,
    speedups,
)
from ._robust import INCONSISTENT, NOWAIT_GRACE, RobustMutex, init_mutex, timeout_until
from ._shm import SharedMemory, map_fd

__all__ = ["RingBase", "deadline_of", "lock_timeout", "map_data", "move"]

_sched_yield = os.sched_yield
_memmove = ctypes.memmove
_is_alive = _linux.is_alive
# A test hook (see _ring.set_hook): "sleep:counted", a waiter counted, no slot yet.
_hook: Callable[[str], None] | None = None
_self_identity = _linux.self_identity


def deadline_of(block: bool, timeout: float | None) -> float | None:
    return None if not block or timeout is None else time.monotonic() + timeout


def map_data(fd: int, size: int) -> tuple[memoryview, int]:
    """Map the header and a data area of ``size`` bytes of the ring's memfd: a
    byte view of the mapping, and the address of its data area.

    libc's mmap, not Python's: ``mmap.mmap`` keeps a duplicate of the fd for the
    mapping's life, and a queue is to hold one fd however often it grew. The
    mapping goes when the view and every slice of it are gone."""
    array = map_fd(fd, DATA + size)
    return memoryview(array).cast("B"), ctypes.addressof(array) + DATA


def move(address: int, dst: int, src: int, n: int) -> None:
    """Move ``n`` bytes from offset ``src`` to offset ``dst`` (the ranges may
    overlap) in the mapping at ``address``: an mmap's ``move``."""
    if n > 0:
        _memmove(address + dst, address + src, n)


def lock_timeout(block: bool, deadline: float | None) -> float | None:
    """How long an operation may wait for the busy mutex: until its ``deadline``
    (None: for good) when it blocks, ``NOWAIT_GRACE`` when it does not. A paused
    peer holding the mutex thus never holds a caller past its deadline."""
    return timeout_until(deadline) if block else NOWAIT_GRACE


class RingBase:
    """The mapping, the mutex and the waiting; the operations are in subclasses."""

    def __init__(
        self,
        capacity: int | None,
        maxsize: int = 0,
        *,
        acks: bool = False,
        _shm: SharedMemory | None = None,
    ):
        # capacity: the bound on bytes held (None: memory's), in whole pages, so
        # that the data area can be handed back page by page.
        capacity = UNBOUNDED if capacity is None else max(PAGE, -(-capacity // PAGE) * PAGE)
        self.capacity = capacity
        self.maxsize = maxsize
        self.acks = acks  # count messages got until ack() (see Ring.ack)
        initial = min(INITIAL_BYTES, capacity)
        self.max_size = capacity  # the data area doubles from ``initial`` up to this
        if _shm is None:
            _shm = SharedMemory(DATA + initial, what="queue")
            init_mutex(_shm.address + OFF_MUTEX)
            CONST.pack_into(_shm.buf, OFF_CONST, MAGIC, capacity, maxsize)
            U64.pack_into(_shm.buf, OFF_GEO, initial)  # (nobody else sees it yet)
        self._shm = _shm
        # The first mapping: the header's, for good (its slices are bytes: one
        # copy, no intermediate view).
        self._hm = _shm.buf
        self._header = _shm.buf[:DATA]
        self._q = self._header.cast("Q")
        self._i = self._header.cast("I")
        addr = _shm.address
        self._mutex = RobustMutex(addr + OFF_MUTEX)
        self._owner = self._mutex.owner  # (see "Interrupts" below)
        self._unlock_raw = self._mutex.unlock_raw
        self._put_seq = addr + OFF_PUT_SEQ
        self._get_seq = addr + OFF_GET_SEQ
        self._done_seq = addr + OFF_DONE_SEQ
        self._zero_wakes = 0
        first = _shm.size - DATA
        self._first = first
        room = min(first, capacity)
        retain = min(RETAIN_BYTES, first)
        # The one place that decides between the C fast path and the Python path.
        # ``try_put(bytes) -> int``, ``try_get(block) -> bytes | int``,
        # ``try_put_many(list[bytes]) -> int`` and ``try_get_many(max_items,
        # block) -> list[bytes] | int`` are the C calls when the extension is built,
        # else stand-ins that answer FAST_SLOW; an int answer goes, as ``after``,
        # to put / get / put_many_flat / get_many_raw, which finish the job. The
        # callers (corral.Queue) thus pay no Python call on the C path. (A put and
        # a get that tried C themselves would cost a Python call each: measured,
        # about 70 ns per put+get pair, 10% of a 64-byte Queue.put + Queue.get
        # round trip of 0.66 us in one process.)
        self.fast: Any = (
            NO_FAST_PATH
            if speedups is None
            else speedups.Ops(addr, addr + DATA, first, room, 0, retain, maxsize, acks)
        )
        self.try_put = self.fast.put
        self.try_get = self.fast.get
        self.try_put_many = self.fast.put_many
        self.try_get_many = self.fast.get_many
        # The data area's geometry in this process (set by _use): its size, its
        # origin (position p is at offset (p - origin) % size), the room a put may
        # fill, the retained pages and its mapping (a byte view). The hot paths have
        # it in one tuple, _hot (with maxsize, the header's u64 view and the mutex).
        self.size, self.origin, self.room, self.retain = first, 0, room, retain
        self._mm = self._hm
        # The mappings claims of this process copy from right now (with the mutex
        # let go), and the mappings replaced since, released once no copy is left.
        self._copies: list[memoryview] = []
        self._retired: list[memoryview] = []
        self._hot = (first, 0, room, retain, maxsize, self._hm, self._q, self._mutex)
        self._use(self._hm, addr + DATA, first)
        if self._q[Q_GEO] != first:  # grown before this process attached
            try:
                self._lock()  # (catches up)
            finally:
                if self._owner.value == INCONSISTENT:
                    self._settle()
                self._unlock_raw()

    # -- geometry --------------------------------------------------------------------

    def _use(self, mm: memoryview, data: int, size: int) -> None:
        """Use ``mm`` (data area at address ``data``) of ``size`` bytes from now on,
        with the header's origin (``base``); close the mapping it replaces, unless a
        claim of this process is copying out of it (then once none is). Nothing
        else holds a view of it: geometry is read only with the mutex held and
        after ``_sync``."""
        old = self._mm
        origin = self._q[Q_BASE] % size
        retain = min(RETAIN_BYTES, size)
        room = min(size, self.capacity)
        # In this order: an interrupt before ``size`` leaves it behind ``geo``, one
        # before ``_hot`` leaves that behind (see _sync), and the next holder of the
        # mutex does it all again.
        self.fast.remap(data, size, room, origin, retain)
        self._mm = mm
        self.origin, self.room, self.retain = origin, room, retain
        self.size = size
        self._hot = (size, origin, room, retain, self.maxsize, mm, self._q, self._mutex)
        if old is not mm and old is not self._hm:
            self._retired.append(old)
        if not self._copies:
            self._close_retired()

    def _copy_done(self, mapping: memoryview) -> None:
        """A claim's copy out of ``mapping`` is over. (Found by identity: ``==``
        would compare two mappings' bytes.)"""
        for i, held in enumerate(self._copies):
            if held is mapping:
                del self._copies[i]
                return

    def _close_retired(self) -> None:
        while self._retired:
            # (A slice of it still alive, which cannot happen, would only defer the
            # unmapping: see map_data.)
            self._retired.pop().release()

    def _sync(self) -> None:
        """With the mutex held, ``geo`` differing from ``size``: catch up with the
        header. Map the grown data area; recount ``count`` if a C repair left it
        STALE (it saw the geometry change under a dead holder and could not walk
        the frames). MemoryError if this process cannot map the area."""
        geo = self._q[Q_GEO]
        size = geo & ~STALE
        if size != self.size or self._hot[0] != size:
            if size == self._first:
                mm, data = self._hm, self._shm.address + DATA
            else:
                try:
                    mm, data = map_data(self._shm.fd, size)
                except OSError as exc:
                    raise MemoryError(f"cannot map a queue of {size} bytes: {exc}") from exc
            self._use(mm, data, size)
        if geo & STALE:
            self._recount()
            self._q[Q_GEO] = size

    def off(self, pos: int) -> int:
        """The offset of position ``pos`` in the data area."""
        return (pos - self.origin) % self.size

    def close(self) -> None:
        """Unmap and close this process's view. Nobody in this process may use it after.

        If bookkeeping is still owed to the ring (``_later``: a peer paused with the
        mutex held past a caller's deadline), the unmapping waits for it."""
        if self._shm.fd < 0:
            return
        if pending(self._shm):
            later(self._shm, self._unmap)  # (after the jobs queued before it)
            return
        self._unmap()

    def _unmap(self) -> None:
        if self._shm.fd < 0:
            return
        self.fast.detach()  # later fast calls return FAST_SLOW, never touch memory
        self._close_retired()
        if self._mm is not self._hm:
            self._mm.release()
        self._q.release()
        self._i.release()
        self._header.release()
        self._shm.close()

    @property
    def fd(self) -> int:
        return self._shm.fd

    # -- the mutex -------------------------------------------------------------------

    # Interrupts (KeyboardInterrupt, or any exception a signal handler raises) may
    # land at any point where CPython checks for signals: after every call, at the
    # start of every Python function. So every holding of the mutex is written
    #
    #     try:
    #         take it (_lock, or try_acquire/_lock_slow + repair)
    #         ...
    #     finally:
    #         if self._owner.value == INCONSISTENT: self._settle()
    #         self._unlock_raw()
    #
    # An interrupt after the mutex was taken is inside the ``try``; the unlock is a
    # C-level call that runs no Python frame first (``RobustMutex.unlock_raw``), and
    # answers EPERM, harmlessly, when the mutex was not taken. A dead holder's mutex
    # stays inconsistent until the repair is done (``consistent=False``), so an
    # interrupt between EOWNERDEAD and the end of the repair is seen in the
    # ``finally``, which repairs before unlocking (``_settle``).

    def _lock(self, timeout: float | None = None) -> bool:
        """Take the mutex, repairing after a dead holder. False if ``timeout`` passed.
        Call it inside the ``try`` whose ``finally`` unlocks (see above)."""
        m = self._mutex
        if not m.try_acquire(False) and not self._lock_slow(timeout):
            return False
        if m.owner_died:
            self._repair()
        if self._q[Q_GEO] != self.size:
            self._sync()
        return True

    def _lock_slow(self, timeout: float | None) -> bool:
        """Take the busy mutex: spin (_robust.SPIN), then sleep. The caller checks
        ``owner_died`` (and repairs: the mutex is left inconsistent until then)."""
        return self._mutex.spin_acquire(timeout, False)

    def _settle(self) -> None:
        """In a ``finally``: the mutex is still inconsistent, so an interrupt landed
        between a dead holder's EOWNERDEAD and the end of the repair. If this thread
        holds it, repair now, before the unlock (which would otherwise make it
        unrecoverable)."""
        if self._mutex.held():
            self._repair()

    def _lock_or_later(self, job: Callable[[], None], deadline: float | None = None) -> bool:
        """Run ``job`` with the mutex held: now if the mutex can be had by
        ``deadline`` (or within NOWAIT_GRACE, whichever is later), else in the
        background as soon as it can (``_later``). True if it ran now."""
        grace = NOWAIT_GRACE
        if deadline is not None:
            grace = max(grace, deadline - time.monotonic())
        ran = False
        try:
            if self._lock(grace):
                job()
                ran = True
        finally:
            if self._owner.value == INCONSISTENT:
                self._settle()
            self._unlock_raw()
        if ran:
            return True

        def locked_job() -> None:
            try:
                self._lock()
                job()
            finally:
                if self._owner.value == INCONSISTENT:
                    self._settle()
                self._unlock_raw()

        later(self._shm, locked_job)
        return False

    def _unlock(self) -> None:
        """(Only where no interrupt can matter: a Python frame runs before the unlock.)"""
        rc = self._mutex.unlock_errno()
        if rc:
            self._unlock_failed(rc)

    @staticmethod
    def _unlock_failed(rc: int) -> None:
        # EPERM: an interrupted re-lock in _sleep left the mutex not ours, and
        # whatever interrupted it is being raised. Anything else is a bug to see.
        if rc != errno.EPERM:
            raise OSError(rc, f"pthread_mutex_unlock: {os.strerror(rc)}")

    # -- repair ----------------------------------------------------------------------

    def _repair(self) -> None:
        """With the mutex held, after its previous holder died holding it.

        ``head`` and ``tail`` are the truth (each was published by one store), and
        so is ``geo`` (a growth's commit); ``count`` is recounted from the frames
        between them. Costs one step per queued message, once per death under the
        mutex. (C: repair(), which does the same walk, or marks ``geo`` STALE if
        the geometry changed, and leaves the claim, reservation and waiter checks
        below to the Python paths that meet them.)
        """
        geo = self._q[Q_GEO]
        if geo & ~STALE != self.size:
            try:
                self._sync()  # (recounts too, if STALE)
            except MemoryError:
                # This process cannot map the grown area: leave the recount to one
                # that can (as C does), and the mutex usable.
                self._q[Q_GEO] = geo | STALE
                self._wake_everyone()
                self._mutex.make_consistent()
                raise
        elif geo & STALE:
            self._q[Q_GEO] = self.size
        self._recount()
        self._claim_alive()
        self._reserved()
        self._sweep_waiters()
        # A wake-up meant for (or owed by) the dead holder may be lost: wake everyone.
        self._wake_everyone()
        self._mutex.make_consistent()  # last: until here, an interrupt repairs again

    def _recount(self) -> None:
        """With the mutex held and this process's geometry current: set ``count``
        from the frames between ``head`` and ``tail`` (fixing ``head > tail``, a
        death between the two stores of a lap jump)."""
        mm, q = self._mm, self._q
        cap, base = self.size, self.origin
        head, tail = q[Q_HEAD], q[Q_TAIL]
        if head > tail:  # died between the two stores of a lap jump
            q[Q_TAIL] = tail = head
        count = 0
        pos = head
        while pos < tail:
            off = (pos - base) % cap
            flen, _plen, nbufs = FRAME.unpack_from(mm, DATA + off)
            if flen <= 0 or flen % ALIGN or off + flen > cap or pos + flen > tail:
                # Cannot happen if the protocol holds; never loop or read wild.
                q[Q_HEAD] = tail
                count = 0
                break
            if nbufs != PAD:
                count += 1
            pos += flen
        q[Q_COUNT] = count

    def _claim_alive(self) -> bool:
        """With the mutex held: whether a live process holds the claim (a dead one's
        claim is dropped here)."""
        claim = self._i[I_CLAIM]
        if not claim:
            return False
        if _is_alive(claim, self._q[Q_CLAIM_START]):  # (a recycled pid has another start)
            return True
        self._i[I_CLAIM] = 0
        return False

    def _reserved(self) -> bool:
        """With the mutex held: whether a live putter holds a reservation (a dead
        one's is dropped here: its frame lies past ``tail``, never published)."""
        owner = self._i[I_RESERVE]
        if not owner:
            return False
        if owner == _self_identity()[0] or _is_alive(owner, self._q[Q_RESERVE_START]):
            # (Our own pid: another thread of this process is copying.)
            return True
        self._i[I_RESERVE] = 0
        return False

    # -- waiting ---------------------------------------------------------------------

    def _sweep_waiters(self) -> None:
        """With the mutex held: forget waiters whose process is gone, and set the
        waiter counts from the slots left (``_recount_waiters``). Run after a
        holder died, and when wake-ups keep finding nobody."""
        i = self._i
        pids = SLOTS.unpack_from(self._mm, OFF_SLOT_PID)
        starts = SLOTS.unpack_from(self._mm, OFF_SLOT_START)
        for n, pid in enumerate(pids):
            if pid and not _is_alive(pid, starts[n]):
                counter = COUNTER.get(i[I_SLOT_KIND + n])
                if counter is not None:
                    i[counter] = max(0, i[counter] - 1)
                i[I_SLOT_PID + n] = 0
        self._recount_waiters()

    def _recount_waiters(self) -> None:
        """With the mutex held, the dead swept: set each waiter count from the
        slots. A holder killed inside ``_sleep`` between counting itself and taking
        its slot left a count that no slot accounts for, and no sweep of slots
        would take back. (A waiter that found no slot free, past MAX_WAITERS at
        once, goes uncounted until it leaves: a wake-up may then miss it, never its
        next WAIT_SLICE.)"""
        i = self._i
        pids = SLOTS.unpack_from(self._mm, OFF_SLOT_PID)
        counts = dict.fromkeys(COUNTER.values(), 0)
        for n, pid in enumerate(pids):
            counter = COUNTER.get(i[I_SLOT_KIND + n]) if pid else None
            if counter is not None:
                counts[counter] += 1
        for counter, number in counts.items():
            i[counter] = number

    def _sweep(self) -> None:
        # Housekeeping: skipped (and done by a later sweep) if the mutex is busy.
        try:
            if self._lock(NOWAIT_GRACE):
                self._sweep_waiters()
        finally:
            if self._owner.value == INCONSISTENT:
                self._settle()
            self._unlock_raw()

    def _bump(self, index: int) -> None:
        i = self._i
        i[index] = (i[index] + 1) & 0xFFFFFFFF

    def _wake(self, address: int, n: int, waiting: int) -> None:
        if futex_wake(address, n) == 0 and waiting:
            # Counted waiters that nobody could wake: usually one between its unlock
            # and its sleep, but a SIGKILLed waiter stays counted and would cost
            # every later call a wake-up. Sweep now and then.
            self._zero_wakes += 1
            if self._zero_wakes >= ZERO_WAKES_MAX:
                self._zero_wakes = 0
                self._sweep()

    def _wake_everyone(self) -> None:
        for index in (I_PUT_SEQ, I_GET_SEQ, I_DONE_SEQ):
            self._bump(index)
        for address in (self._put_seq, self._get_seq, self._done_seq):
            futex_wake(address, WAKE_ALL)

    def _sleep(self, kind: int, seq_index: int, deadline: float | None) -> bool:
        """With the mutex held: register as a waiter, sleep until the futex word
        changes (or a slice or the deadline passes), re-lock. True with the mutex
        held again; False if ``deadline`` passed while a peer held the mutex (then
        it is *not* held, and un-registering is left to ``_later``). Exceptions pass
        through after the re-lock."""
        i = self._i
        counter = COUNTER[kind]
        i[counter] += 1
        if _hook is not None:
            _hook("sleep:counted")
        pid, start = _self_identity()
        pids = SLOTS.unpack_from(self._mm, OFF_SLOT_PID)
        try:
            slot = pids.index(0)
        except ValueError:
            slot = -1
        else:
            i[I_SLOT_KIND + slot] = kind
            i[I_SLOT_START + slot] = start & 0xFFFFFFFF
            i[I_SLOT_PID + slot] = pid  # last: the slot is taken once its pid is set
        seq = i[seq_index]
        self._unlock_raw()  # (C-level: no interrupt before it)

        def unregister() -> None:
            i[counter] = max(0, i[counter] - 1)
            if slot >= 0 and i[I_SLOT_PID + slot] == pid:
                i[I_SLOT_PID + slot] = 0

        relocked = False
        try:
            timeout = WAIT_SLICE
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
            if timeout > 0:
                futex_wait(self._shm.address + 4 * seq_index, seq, timeout)
        finally:
            if self._lock(timeout_until(deadline)):
                relocked = True
                unregister()
            else:
                self._lock_or_later(unregister)
        return relocked

    def _poll(self, deadline: float | None) -> bool:
        """With the mutex held: let it go and watch ``count`` for a short while (no
        lock: a racy read, only a hint), yielding the CPU between looks, then take
        the mutex again by ``deadline``. True with the mutex held again (the caller
        must read the state again); False if it could not be had in time."""
        q = self._q
        self._unlock_raw()
        try:
            for _ in range(POLL_ROUNDS):
                if q[Q_COUNT]:
                    break
                _sched_yield()
        finally:
            relocked = self._lock(timeout_until(deadline))
        return relocked

    # -- laps ------------------------------------------------------------------------

    def _consumed_to(self, end: int, tail: int) -> None:
        """With the mutex held: everything before ``end`` was got (the consuming
        store). If that emptied the ring, head and tail both go to the next lap, so
        the next put reuses warm pages; not while a putter holds a reservation,
        whose frame goes at ``tail``. (C: get_finish.)"""
        if end == tail and (end - self.origin) % self.size and not self._i[I_RESERVE]:
            self._jump(end)
        else:
            self._q[Q_HEAD] = end

    def _jump(self, pos: int) -> int:
        """With the mutex held and the ring empty: move head and tail to the next lap.
        (Never while a putter holds a reservation: its frame goes at ``tail``.)"""
        new = pos + self.size - (pos - self.origin) % self.size
        self._q[Q_HEAD] = new  # head > tail until the next store; _repair knows
        self._q[Q_TAIL] = new
        return new
