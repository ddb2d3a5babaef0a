"""One message at a time: ``put`` and ``get``, and their large-message forms.

    put(head, bufs)                                    get()
      frame written past ``tail``  (invisible)           frame at ``head`` copied out
      tail = end of frame          (one store: publish)   head = next frame (one store)
      count += 1                   (repairable)          count -= 1        (repairable)
      bump put_seq, futex_wake if getters wait            bump get_seq, wake putters

A put of a frame with at least ``CLAIM_BYTES`` of buffers *reserves* it at ``tail``
and copies with the mutex let go (``_put_reserved``); a get of one *claims* it at
``head`` and copies it out with the mutex let go (``_get_claimed``). See ``_ring``
for the whole protocol.
"""

from __future__ import annotations

import queue
import struct
import time
from collections.abc import Callable, Sequence

from . import _linux
from ._errors import RingShutDown, TooLarge
from ._futex import futex_wake
from ._ringbase import deadline_of, lock_timeout
from ._ringgrow import GrowOps
from ._ringlayout import (
    CLAIM_BYTES,
    COPY_CHUNK,
    DATA,
    FAST_EMPTY,
    FAST_SWEEP,
    FRAME,
    FRAME_HEADER,
    GET_STATE,
    GETTER,
    I_CLAIM,
    I_GET_SEQ,
    I_GETTERS,
    I_PUT_SEQ,
    I_PUTTERS,
    I_RESERVE,
    OFF_HEAD,
    PAD,
    PAGE,
    POLL_ROUNDS,
    PUTTER,
    Q_CLAIM_START,
    Q_COUNT,
    Q_GEO,
    Q_RESERVE_START,
    Q_TAIL,
    Q_TAKEN,
    STATE,
    U64,
    WAKE_ALL,
    Received,
    align,
    fits_plain,
    frame_size,
    place,
    read_frame_bufs,
)
from ._robust import INCONSISTENT, NOWAIT_GRACE, timeout_until

__all__ = ["SingleOps"]

# Test hook (see _ring.set_hook, which sets it here). None in normal use.
_hook: Callable[[str], None] | None = None

_state_from = STATE.unpack_from
_get_state_from = GET_STATE.unpack_from
_frame_from = FRAME.unpack_from
_frame_into = FRAME.pack_into
_self_identity = _linux.self_identity


def _finish_timeout(block: bool, deadline: float | None) -> float | None:
    """How long a large put or get may wait to re-take the mutex after its copy:
    until its deadline, but at least NOWAIT_GRACE (the copy took its time)."""
    if not block:
        return NOWAIT_GRACE
    left = timeout_until(deadline)
    return None if left is None else max(left, NOWAIT_GRACE)


class SingleOps(GrowOps):
    # -- put -------------------------------------------------------------------------

    def put(
        self,
        head: bytes,
        bufs: Sequence[memoryview] | None,
        block: bool = True,
        timeout: float | None = None,
        after: int = 1,
    ) -> None:
        """Publish one message: nothing of it is visible before the ``tail`` store.
        ``after``: what ``try_put(head)`` answered (FAST_SLOW if not tried).

        Raises queue.Full, RingShutDown, or TooLarge (nothing written).
        """
        if after == FAST_SWEEP:  # the message is in; waiters keep being absent
            self._sweep()
            return
        n = len(head)
        size = frame_size(n, [b.nbytes for b in bufs]) if bufs else frame_size(n)
        cap, origin, room, retain, maxsize, mm, q, m = self._hot
        if size > self.capacity:
            raise TooLarge(size, self.capacity)
        if bufs and size >= CLAIM_BYTES:
            self._put_reserved(head, bufs, size, block, timeout)
            return
        deadline: float | None = -1.0  # (computed off the fast path only: one clock read less)
        try:  # (taking the mutex inside: see RingBase, "Interrupts")
            if not m.try_acquire(False):
                deadline = deadline_of(block, timeout)
                if not self._lock_slow(lock_timeout(block, deadline)):
                    raise queue.Full
            if m.owner_died:
                self._repair()
            if q[Q_GEO] != cap:  # grown by another process (or STALE): catch up
                self._sync()
                cap, origin, room, retain, maxsize, mm, q, m = self._hot
            head_pos, tail, count, _, getters, _, _, shut = _state_from(mm, OFF_HEAD)
            if (
                shut
                or self._i[I_RESERVE]
                or not fits_plain(
                    head_pos - origin, tail - origin, count, size, 1, cap, room, retain, maxsize
                )
            ):
                if deadline == -1.0:
                    deadline = deadline_of(block, timeout)
                tail, off, count, getters = self._room(size, block, deadline)
            else:
                off = (tail - origin) % cap
            self._write_frame(DATA + off, size, head, bufs)
            if _hook is not None:
                _hook("put:publish")
            q[Q_TAIL] = tail + size  # publish
            q[Q_COUNT] = count + 1
            if getters:
                self._bump(I_PUT_SEQ)
        finally:
            if m.owner.value == INCONSISTENT:
                self._settle()
            m.unlock_raw()
        if getters:
            self._wake(self._put_seq, 1, getters)

    def _put_reserved(
        self,
        head: bytes,
        bufs: Sequence[memoryview],
        size: int,
        block: bool,
        timeout: float | None,
    ) -> None:
        """``put`` of a large message: reserve its frame at ``tail`` under the mutex,
        copy the buffers in with the mutex let go (gets go on meanwhile), then
        publish under the mutex. Other puts wait for the reservation; one whose
        putter died is dropped, and nothing of it was ever visible."""
        pid, start = _self_identity()
        deadline = deadline_of(block, timeout)
        try:
            if not self._lock(lock_timeout(block, deadline)):
                raise queue.Full
            old_tail = self._q[Q_TAIL]
            tail, off, _count, _getters = self._room(size, block, deadline)
            if tail != old_tail:
                self._q[Q_TAIL] = tail  # a pad frame, on its own: nothing to get
            base = DATA + off
            _frame_into(self._mm, base, size, len(head), len(bufs))  # (see _room)
            self._q[Q_RESERVE_START] = start
            self._i[I_RESERVE] = pid  # (tail stays put until it is let go)
        finally:
            if self._owner.value == INCONSISTENT:
                self._settle()
            self._unlock_raw()
        try:
            self._write_bufs(base, head, bufs)
        except BaseException:
            self._let_go(I_RESERVE, pid, I_GET_SEQ, self._get_seq)
            raise
        if not self._lock(_finish_timeout(block, deadline)):
            # A peer holds the mutex past our deadline: the message is not put.
            self._let_go(I_RESERVE, pid, I_GET_SEQ, self._get_seq)
            raise queue.Full
        try:
            q, i = self._q, self._i
            if i[I_RESERVE] != pid or q[Q_TAIL] != tail:
                raise RingShutDown  # dropped by shutdown(immediate=True)
            if _hook is not None:
                _hook("put:publish")
            q[Q_TAIL] = tail + size  # publish
            q[Q_COUNT] += 1
            i[I_RESERVE] = 0
            getters, putters = i[I_GETTERS], i[I_PUTTERS]
            if getters:
                self._bump(I_PUT_SEQ)
            if putters:
                self._bump(I_GET_SEQ)
        finally:
            if self._owner.value == INCONSISTENT:
                self._settle()
            self._unlock_raw()
        if getters:
            self._wake(self._put_seq, 1, getters)
        if putters:
            self._wake(self._get_seq, WAKE_ALL, putters)

    def _let_go(self, index: int, pid: int, seq_index: int, seq_address: int) -> None:
        """Drop this process's claim or reservation (the word at ``index``) after
        its copy failed (or its deadline passed), and wake whoever waits for it.
        With the mutex busy past NOWAIT_GRACE, in the background (``_later``)."""

        def drop() -> None:
            if self._i[index] == pid:
                self._i[index] = 0
                self._bump(seq_index)
                self._bump(I_GET_SEQ)  # (a put may wait for no claim, to grow)

        if self._lock_or_later(drop):
            futex_wake(seq_address, WAKE_ALL)
            futex_wake(self._get_seq, WAKE_ALL)

    def _room(self, size: int, block: bool, deadline: float | None) -> tuple[int, int, int, int]:
        """With the mutex held: wait (until ``deadline``) until a frame of ``size``
        bytes fits (and one more message is allowed), growing the data area if the
        capacity allows, write a pad frame if it must start a new lap, and return
        (tail, offset to write at, count, getters waiting). Raises queue.Full (the
        mutex may then be let go: see _sleep). The geometry may have changed on
        return: read ``_mm`` again."""
        hm = self._hm
        maxsize = self.maxsize
        while True:
            head, tail, count, _, getters, _, _, shut = _state_from(hm, OFF_HEAD)
            if shut:
                raise RingShutDown
            if not self._reserved():
                # (A putter copying a large message in at tail: nothing else may be
                # written until it publishes, or is found dead.)
                cap, origin = self.size, self.origin
                if head == tail and (tail - origin) % cap:  # empty (after a repair)
                    head = tail = self._jump(tail)
                end, pad = place(head - origin, tail - origin, size, cap, self.retain)
                allowed = not maxsize or count < maxsize
                if end + origin - head <= self.room and allowed:
                    off = (tail - origin) % cap
                    if pad:
                        _frame_into(self._mm, DATA + off, cap - off, 0, PAD)
                        tail += cap - off
                        off = 0
                    return tail, off, count, getters
                if allowed and self._grow(head, tail, size):
                    continue  # grown: look again, in the new geometry
            if not block or (deadline is not None and time.monotonic() >= deadline):
                raise queue.Full
            if not self._sleep(PUTTER, I_GET_SEQ, deadline):
                raise queue.Full

    def _write_frame(
        self, base: int, size: int, head: bytes, bufs: Sequence[memoryview] | None
    ) -> None:
        """Write a whole frame at ``base`` (invisible until ``tail`` moves past it)."""
        if bufs:
            _frame_into(self._mm, base, size, len(head), len(bufs))
            self._write_bufs(base, head, bufs)
        else:
            _frame_into(self._mm, base, size, len(head), 0)
            self._mm[base + FRAME_HEADER : base + FRAME_HEADER + len(head)] = head

    def _write_bufs(self, base: int, head: bytes, bufs: Sequence[memoryview]) -> None:
        mm = self._mm
        n = len(bufs)
        lens = [b.nbytes for b in bufs]
        struct.pack_into(f"@{n}Q", mm, base + FRAME_HEADER, *lens)
        pos = base + FRAME_HEADER + 8 * n
        mm[pos : pos + len(head)] = head
        pos = base + align(FRAME_HEADER + 8 * n + len(head))
        for b, length in zip(bufs, lens, strict=True):
            if length <= COPY_CHUNK:
                mm[pos : pos + length] = b
            else:
                for start in range(0, length, COPY_CHUNK):
                    stop = min(length, start + COPY_CHUNK)
                    mm[pos + start : pos + stop] = b[start:stop]
                    if _hook is not None:
                        _hook("put:copy")
            pos += align(length)

    # -- get -------------------------------------------------------------------------

    def get(self, block: bool = True, timeout: float | None = None, after: int = 1) -> Received:
        """Take the oldest message. Raises queue.Empty or RingShutDown (shut down, empty).
        ``after``: what ``try_get(block)`` answered (FAST_SLOW if not tried).

        A large message with buffers is *claimed* instead: the getter records its pid,
        copies the message out with the mutex let go (puts go on meanwhile), then
        consumes it. Other getters wait for the claim; a claim whose process died
        is dropped and the message stays, whole, for the next getter.

        The consuming part of ``_consume`` is written out here: this is the pure-
        Python hot path of ``corral bench --only queue`` (64 B put/get).
        """
        if after == FAST_EMPTY and not block:
            raise queue.Empty  # seen under the mutex: exact
        cap, origin, _room, retain, _maxsize, mm, q, m = self._hot
        deadline: float | None = -1.0  # (computed off the fast path only: one clock read less)
        claimed = False
        try:  # (taking the mutex inside: see RingBase, "Interrupts")
            if not m.try_acquire(False):
                deadline = deadline_of(block, timeout)
                if not self._lock_slow(lock_timeout(block, deadline)):
                    raise queue.Empty
            if m.owner_died:
                self._repair()
            if q[Q_GEO] != cap:  # grown by another process (or STALE): catch up
                self._sync()
                cap, origin, _room, retain, _maxsize, mm, q, m = self._hot
            head, tail, count, taken, _, putters, _, _, claim = _get_state_from(mm, OFF_HEAD)
            if not count or claim:
                # (FAST_EMPTY: the C call has polled already; sleep without polling.)
                if deadline == -1.0:
                    deadline = deadline_of(block, timeout)
                head, tail, count, taken, putters = self._items(
                    block, deadline, after != FAST_EMPTY
                )
                cap, origin, _room, retain, _maxsize, mm, q, m = self._hot  # (may have grown)
            start = head
            off = (head - origin) % cap
            flen, plen, nbufs = _frame_from(mm, DATA + off)
            if nbufs == PAD:
                head += flen
                off = 0
                flen, plen, nbufs = _frame_from(mm, DATA)
            base = DATA + off
            out: Received
            if nbufs and flen >= CLAIM_BYTES:
                pid, pstart = _self_identity()
                q[Q_CLAIM_START] = pstart
                self._i[I_CLAIM] = pid
                claimed = True
                copy = mm
                self._copies.append(copy)  # (keeps the mapping open: see _use)
            else:
                if nbufs:
                    out = self._read_bufs(base, plen, nbufs)
                else:
                    out = mm[base + FRAME_HEADER : base + FRAME_HEADER + plen].tobytes()
                if _hook is not None:
                    _hook("get:copied")
                end = head + flen
                self._consumed_to(end, tail)
                q[Q_COUNT] = count - 1
                if self.acks:
                    q[Q_TAKEN] = taken + 1
                if putters:
                    self._bump(I_GET_SEQ)
                if off + flen > retain:
                    self._give_back(start, end, tail)
        finally:
            if m.owner.value == INCONSISTENT:
                self._settle()
            m.unlock_raw()
        if claimed:
            if deadline == -1.0:
                deadline = deadline_of(block, timeout)
            return self._get_claimed(copy, start, head + flen, base, plen, nbufs, block, deadline)
        if putters:
            self._wake(self._get_seq, WAKE_ALL, putters)
        return out

    def _consume(
        self, start: int, end: int, tail: int, count: int, taken: int, putters: int
    ) -> None:
        """With the mutex held: the message in ``[start, end)`` was got."""
        q = self._q
        self._consumed_to(end, tail)
        q[Q_COUNT] = count - 1
        if self.acks:
            q[Q_TAKEN] = taken + 1
        if putters:
            self._bump(I_GET_SEQ)
        if (end - 1 - self.origin) % self.size >= self.retain:
            self._give_back(start, end, tail)

    def _get_claimed(
        self,
        copy: memoryview,
        start: int,
        end: int,
        base: int,
        plen: int,
        nbufs: int,
        block: bool,
        deadline: float | None,
    ) -> Received:
        """Copy out the message claimed at ``start`` without the mutex, from the
        mapping ``copy`` (the ring may grow meanwhile, without moving it), then
        consume it. If a peer holds the mutex past ``deadline``, the claim is let
        go (the message stays, whole, for the next getter) and queue.Empty is
        raised."""
        pid = _self_identity()[0]
        try:
            out = read_frame_bufs(copy, base, plen, nbufs)
            if _hook is not None:
                _hook("get:copied")
        except BaseException:
            self._copy_done(copy)
            self._let_go(I_CLAIM, pid, I_PUT_SEQ, self._put_seq)
            raise
        self._copy_done(copy)
        if not self._lock(_finish_timeout(block, deadline)):
            self._let_go(I_CLAIM, pid, I_PUT_SEQ, self._put_seq)
            raise queue.Empty
        try:
            head, tail, count, taken, getters, putters, _, _, claim = _get_state_from(
                self._mm, OFF_HEAD
            )
            if claim == pid:
                if head == start and count:  # (not dropped by shutdown(immediate))
                    self._consume(start, end, tail, count, taken, putters)
                self._i[I_CLAIM] = 0
                if getters:
                    self._bump(I_PUT_SEQ)  # the claim is gone: waiting getters, look
        finally:
            if self._owner.value == INCONSISTENT:
                self._settle()
            self._unlock_raw()
        if getters:
            self._wake(self._put_seq, WAKE_ALL, getters)
        if putters:
            self._wake(self._get_seq, WAKE_ALL, putters)
        return out

    def _items(
        self, block: bool, deadline: float | None, poll: bool = True
    ) -> tuple[int, int, int, int, int]:
        """With the mutex held: wait (until ``deadline``) until there is a message
        and no live claim on it; return (head, tail, count, taken, putters
        waiting). Raises queue.Empty (the mutex may then be let go: see _sleep)."""
        hm = self._hm
        spin = block and poll and POLL_ROUNDS > 0
        while True:
            head, tail, count, taken, _, putters, _, shut = _state_from(hm, OFF_HEAD)
            claimed = count and self._claim_alive()
            if count and not claimed:
                return head, tail, count, taken, putters
            if shut and not count:
                raise RingShutDown
            if not block or (deadline is not None and time.monotonic() >= deadline):
                raise queue.Empty
            if spin and not claimed:
                spin = False
                if not self._poll(deadline):
                    raise queue.Empty
                continue  # the mutex was let go: look at the state again
            if not self._sleep(GETTER, I_PUT_SEQ, deadline):
                raise queue.Empty

    def _read_bufs(self, base: int, plen: int, nbufs: int) -> tuple[bytes, list[bytearray]]:
        return read_frame_bufs(self._mm, base, plen, nbufs)

    def _give_back(self, old: int, new: int, tail: int) -> None:
        """With the mutex held, after consuming ``[old, new)`` (``tail`` as it was
        before): return its pages beyond ``retain`` to the kernel, except any that
        the next lap already uses."""
        cap = self.size
        # (Relative to the origin from here on: offsets are then ``pos % cap``.)
        old -= self.origin
        new -= self.origin
        tail -= self.origin
        reserved = self._i[I_RESERVE] != 0
        # Emptied, and no putter is writing a reserved frame at tail: the rest of
        # the lap is free too.
        emptied = new == tail and not reserved
        lap_of_tail = tail // cap
        # Where the live data of tail's lap ends: at tail, or past the frame a
        # putter is writing there (it never wraps), which must keep its pages.
        live_end = tail % cap
        if reserved:
            live_end += U64.unpack_from(self._mm, DATA + live_end)[0]
        pos = old
        while pos < new:
            lap = pos // cap
            seg_end = min(new, (lap + 1) * cap)
            lo = (pos % cap) // PAGE * PAGE
            hi = cap if seg_end == (lap + 1) * cap or emptied else seg_end % cap // PAGE * PAGE
            if lap_of_tail > lap and not emptied:
                # The next lap's live data starts at offset 0: keep its pages.
                lo = max(lo, -(-live_end // PAGE) * PAGE)
            lo = max(lo, self.retain)
            if hi > lo:
                self._shm.release(DATA + lo, hi - lo)
            pos = seg_end
