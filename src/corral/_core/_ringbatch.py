"""Many messages per lock hold: ``put_many`` and ``get_many``.

- ``put_many_flat`` (messages without buffers, the common case) frames a small
  batch into one blob *outside* the mutex, then publishes it with one copy and one
  ``tail`` store (``_put_blob``); otherwise ``put_many`` writes as many frames per
  lock hold as fit, publishing each run with one ``tail`` store.
- ``get_many_raw`` takes up to ``max_items`` messages in one lock hold and one
  consuming store; a small run within one lap is copied out as one blob, parsed
  after the mutex is let go (``_ringlayout.decode_blob``/``parse_blob``).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Sequence

from ._errors import RingShutDown, TooLarge
from ._ringbase import deadline_of, lock_timeout
from ._ringlayout import (
    ALIGN,
    BLOB_MAX,
    DATA,
    FAST_EMPTY,
    FAST_SWEEP,
    FRAME,
    FRAME_HEADER,
    GET_STATE,
    I_GET_SEQ,
    I_PUT_SEQ,
    I_RESERVE,
    OFF_HEAD,
    PAD,
    PUTTER,
    Q_COUNT,
    Q_GEO,
    Q_TAIL,
    Q_TAKEN,
    STATE,
    U64,
    WAKE_ALL,
    Message,
    Received,
    fits_plain,
    frame_size,
    parse_blob,
    place,
)
from ._ringsingle import SingleOps
from ._robust import INCONSISTENT

__all__ = ["BatchOps", "full_after"]

# Test hook (see _ring.set_hook, which sets it here). None in normal use.
_hook: Callable[[str], None] | None = None

# Zero bytes to pad a frame of each length to ALIGN.
_ZPAD = [bytes(n) for n in range(ALIGN)]


def full_after(done: int) -> queue.Full:
    exc = queue.Full(f"the queue stayed full; {done} of the messages were put")
    exc.put_count = done  # type: ignore[attr-defined]
    return exc


class BatchOps(SingleOps):
    # -- put_many --------------------------------------------------------------------

    def put_many(
        self, messages: Sequence[Message], block: bool = True, timeout: float | None = None
    ) -> int:
        """Publish messages in order, as many per lock hold (and per publishing
        store) as fit. Returns how many were put; raises queue.Full (some may have
        been put: see ``put_count``), RingShutDown, or TooLarge (nothing put).
        """
        cap = self.capacity
        sizes = [
            frame_size(len(h), [b.nbytes for b in bufs] if bufs else ()) for h, bufs in messages
        ]
        for size in sizes:
            if size > cap:
                raise TooLarge(size, cap)
        deadline = deadline_of(block, timeout)
        done = 0
        while done < len(messages):
            if not self._lock(lock_timeout(block, deadline)):
                raise full_after(done)
            start = done
            getters = 0
            try:
                done, getters = self._put_run(messages, sizes, done, block, deadline)
            finally:
                if self._owner.value == INCONSISTENT:
                    self._settle()
                self._unlock_raw()
            if getters:
                self._wake(self._put_seq, done - start, getters)
        return done

    def _put_run(
        self,
        messages: Sequence[Message],
        sizes: list[int],
        done: int,
        block: bool,
        deadline: float | None,
    ) -> tuple[int, int]:
        """With the mutex held: write messages from ``done`` on while they fit (waiting
        for room only before the first), publish them with one ``tail`` store, and
        return (messages done, getters to wake)."""
        q, hm, maxsize = self._q, self._hm, self.maxsize
        start = done
        while True:
            head_pos, tail, count, _, getters, _, _, shut = STATE.unpack_from(hm, OFF_HEAD)
            if shut:
                raise RingShutDown
            if not self._reserved():  # (see _room; checked again after each sleep)
                mm, cap, origin, room = self._mm, self.size, self.origin, self.room
                if head_pos == tail and (tail - origin) % cap:  # empty (after a repair)
                    head_pos = tail = self._jump(tail)
                while done < len(messages):
                    end, pad = place(
                        head_pos - origin, tail - origin, sizes[done], cap, self.retain
                    )
                    end += origin
                    if end - head_pos > room or (maxsize and count >= maxsize):
                        break
                    if pad:
                        off = (tail - origin) % cap
                        FRAME.pack_into(mm, DATA + off, cap - off, 0, PAD)
                    head, bufs = messages[done]
                    off = (end - sizes[done] - origin) % cap
                    self._write_frame(DATA + off, sizes[done], head, bufs)
                    tail = end
                    count += 1
                    done += 1
                if done > start:
                    if _hook is not None:
                        _hook("put:publish")
                    q[Q_TAIL] = tail  # publish the whole run
                    q[Q_COUNT] = count
                    if getters:
                        self._bump(I_PUT_SEQ)
                    return done, getters
                allowed = not maxsize or count < maxsize
                if allowed and self._grow(head_pos, tail, sizes[done]):
                    continue  # grown: look again, in the new geometry
            if not block or (deadline is not None and time.monotonic() >= deadline):
                raise full_after(done)
            if not self._sleep(PUTTER, I_GET_SEQ, deadline):
                raise full_after(done)

    def put_many_flat(
        self,
        messages: list[bytes],
        block: bool = True,
        timeout: float | None = None,
        after: int = 1,
    ) -> int:
        """``put_many`` of messages without out-of-band buffers. ``after``: what
        ``try_put_many(messages)`` answered (FAST_SLOW if not tried)."""
        if after == FAST_SWEEP:  # all in; waiters keep being absent
            self._sweep()
            return len(messages)
        deadline = deadline_of(block, timeout)
        if self._put_blob(messages, block, deadline):
            return len(messages)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self.put_many([(m, None) for m in messages], block, left)

    def _put_blob(self, messages: list[bytes], block: bool, deadline: float | None) -> bool:
        """The common case of ``put_many``: small messages without buffers. Frames
        them into one blob *outside* the mutex, then, if it fits where the ring is
        now (``fits_plain``), publishes it with one copy and one ``tail`` store.
        False: nothing was put, use the general path. Raises queue.Full (nothing
        put) if the mutex could not be had by ``deadline``."""
        parts: list[bytes] = []
        extend = parts.extend
        framing: dict[int, tuple[bytes, bytes, int]] = {}  # by length: header, pad, size
        total = 0
        for head in messages:
            n = len(head)
            frame = framing.get(n)
            if frame is None:
                size = frame_size(n)
                frame = framing[n] = (FRAME.pack(size, n, 0), _ZPAD[size - FRAME_HEADER - n], size)
            extend((frame[0], head, frame[1]))
            total += frame[2]
            if total > BLOB_MAX:
                return False
        if not total:
            return False
        blob = b"".join(parts)
        k = len(messages)
        m = self._mutex
        getters = 0
        try:  # (taking the mutex inside: see RingBase, "Interrupts")
            if not m.try_acquire(False) and not self._lock_slow(lock_timeout(block, deadline)):
                raise full_after(0)
            if m.owner_died:
                self._repair()
            if self._q[Q_GEO] != self.size:  # grown by another process: catch up
                self._sync()
            mm, cap, origin = self._mm, self.size, self.origin
            head_pos, tail, count, _, getters, _, _, shut = STATE.unpack_from(mm, OFF_HEAD)
            if (
                shut
                or self._i[I_RESERVE]
                or not fits_plain(
                    head_pos - origin,
                    tail - origin,
                    count,
                    total,
                    k,
                    cap,
                    self.room,
                    self.retain,
                    self.maxsize,
                )
            ):
                getters = 0
                return False
            off = (tail - origin) % cap
            mm[DATA + off : DATA + off + total] = blob
            if _hook is not None:
                _hook("put:publish")
            q = self._q
            q[Q_TAIL] = tail + total  # publish the whole batch
            q[Q_COUNT] = count + k
            if getters:
                self._bump(I_PUT_SEQ)
        finally:
            if m.owner.value == INCONSISTENT:
                self._settle()
            m.unlock_raw()
        if getters:
            self._wake(self._put_seq, k, getters)
        return True

    # -- get_many --------------------------------------------------------------------

    def get_many(
        self, max_items: int, block: bool = True, timeout: float | None = None
    ) -> list[Received]:
        """Take between 1 and ``max_items`` messages in one lock hold (and one
        consuming store)."""
        got = self.get_many_raw(max_items, block, timeout)
        return parse_blob(got) if isinstance(got, bytes) else got

    def get_many_raw(
        self, max_items: int, block: bool = True, timeout: float | None = None, after: int = 1
    ) -> bytes | list[Received]:
        """``get_many``, but a small batch comes back as the blob of its frames,
        to be read with ``decode_blob`` (or ``parse_blob``) by the caller.
        ``after``: what ``try_get_many`` answered (FAST_SLOW if not tried)."""
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        if after == FAST_EMPTY and not block:
            raise queue.Empty  # seen under the mutex: exact
        m = self._mutex
        deadline = deadline_of(block, timeout)
        try:  # (taking the mutex inside: see RingBase, "Interrupts")
            if not m.try_acquire(False) and not self._lock_slow(lock_timeout(block, deadline)):
                raise queue.Empty
            if m.owner_died:
                self._repair()
            if self._q[Q_GEO] != self.size:  # grown by another process: catch up
                self._sync()
            head, tail, count, taken, _, putters, _, _, claim = GET_STATE.unpack_from(
                self._hm, OFF_HEAD
            )
            if not count or claim:
                head, tail, count, taken, putters = self._items(
                    block, deadline, after != FAST_EMPTY
                )
            n = min(count, max_items)
            got, end, give_back = self._copy_out(head, tail, count, n)
            if _hook is not None:
                _hook("get:copied")
            q = self._q
            self._consumed_to(end, tail)  # all at once
            q[Q_COUNT] = count - n
            if self.acks:
                q[Q_TAKEN] = taken + n
            if putters:
                self._bump(I_GET_SEQ)
            if give_back:
                self._give_back(head, end, tail)
        finally:
            if m.owner.value == INCONSISTENT:
                self._settle()
            m.unlock_raw()
        if putters:
            self._wake(self._get_seq, WAKE_ALL, putters)
        return got

    def _copy_out(
        self, head: int, tail: int, count: int, n: int
    ) -> tuple[bytes | list[Received], int, bool]:
        """With the mutex held: copy out the ``n`` messages at ``head``. Returns (a
        blob of their frames, or the messages; where they end; whether pages past
        the retained ones were read, to give back)."""
        mm, cap, retain, origin = self._mm, self.size, self.retain, self.origin
        end = self._blob_end(head, tail, count, n)
        if end:
            # Small and in one lap: one copy now; the frames are parsed after the
            # mutex is let go.
            off = (head - origin) % cap
            blob = mm[DATA + off : DATA + off + (end - head)].tobytes()
            return blob, end, off + (end - head) > retain
        out: list[Received] = []
        give_back = False
        for _ in range(n):
            off = (head - origin) % cap
            flen, plen, nbufs = FRAME.unpack_from(mm, DATA + off)
            if nbufs == PAD:
                head += flen
                off = 0
                flen, plen, nbufs = FRAME.unpack_from(mm, DATA)
            base = DATA + off
            if nbufs:
                out.append(self._read_bufs(base, plen, nbufs))
            else:
                out.append(mm[base + FRAME_HEADER : base + FRAME_HEADER + plen].tobytes())
            head += flen
            if off + flen > retain:
                give_back = True
        return out, head, give_back

    def _blob_end(self, head: int, tail: int, count: int, n: int) -> int:
        """With the mutex held: the end of the first ``n`` frames if they can be
        taken as one small blob (in one lap, at most BLOB_MAX bytes), else 0."""
        cap, origin = self.size, self.origin
        if n == count and (tail - origin) % cap:
            # All of them, and tail inside the lap of head: no pad can lie between.
            # (With tail at a lap's end there may be a pad there, published on its
            # own by a reservation that starts the next lap: walk instead.)
            if (head - origin) // cap == (tail - origin) // cap and tail - head <= BLOB_MAX:
                return tail
            return 0
        mm = self._mm
        unpack = U64.unpack_from
        off = (head - origin) % cap
        lap_start = head - off
        at = DATA + off  # walking in the mapping, within this lap
        limit = DATA + min(cap, off + BLOB_MAX)
        for _ in range(n):
            at += unpack(mm, at)[0]
            if at >= limit:
                # Too big, or the lap ended: a pad (which runs to the end of a lap)
                # or a frame ending exactly there. Either way, the general path.
                return 0
        return lap_start + at - DATA
