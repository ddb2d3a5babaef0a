"""A multi-producer, multi-consumer ring of byte messages in shared memory.

    put(head, bufs)                                    get()
      frame written past ``tail``  (invisible)           frame at ``head`` copied out
      tail = end of frame          (one store: publish)   head = next frame (one store)
      count += 1                   (repairable)          count -= 1        (repairable)
      bump put_seq, futex_wake if getters wait            bump get_seq, wake putters
    all of it under one robust mutex (but see "Large messages" below)

The pieces:

- the **header page** (offset 0): a robust process-shared mutex with ``head``,
  ``tail`` and ``count`` in the rest of its cache line (a holder touches one line),
  then the rarely written state (``taken``, waiter counts, shutdown flag), three
  futex words on lines of their own (``put_seq``: "something was put",
  ``get_seq``: "room was made", ``done_seq``: "all tasks done"), the constants,
  and a table of waiter pids;
- the **data area** (from offset ``DATA``): ``size`` bytes of frames, ``size``
  starting small and doubling when a put needs room, up to what ``capacity``
  allows (``_ringgrow``). ``head`` and ``tail`` are byte *positions* that only
  grow; a position's offset in the area is ``(position - base) % size``. A frame
  never wraps: when it does not fit before the end of the lap (or would leave the
  retained pages while there is room at the start), a pad frame fills the rest of
  the lap. When a get empties the ring, both positions jump to the start of the
  next lap, so a ring that keeps emptying reuses the same warm pages.

The frame format and the header's fields are drawn in ``_ringlayout``, the one
place that defines them (the C fast path checks its own copy against it).

Stores that publish go through ``memoryview`` items (``self._q[i] = v``), which
CPython writes with one ``memcpy`` of the item's size: one aligned store, never
torn. ``struct.pack_into`` is not used for them, because it first zeroes the whole
struct and then writes the fields, and a process killed in between would leave
zeros behind. It is fine for frames, which nobody reads before they are published.

Large messages: a get of a frame with at least ``CLAIM_BYTES`` of buffers records
its pid in ``claim``, copies the frame out with the mutex let go (puts go on), then
consumes it; a claim whose process is dead is dropped, leaving the message whole.
A put of such a frame *reserves* it at ``tail`` (its pid in ``reserve``; nothing
moves ``tail`` while a reservation is held), copies the buffers in with the mutex
let go (gets go on; other puts wait), then publishes; a reservation whose process
is dead is dropped, and as ``tail`` never moved, nothing of it was visible.
Small batches: ``put_many`` frames them into one blob before taking the mutex, and
``get_many`` copies them out in one piece and parses them after letting it go.

Where each part lives:

- ``_ringlayout``: layout, frame format, ``frame_size``, ``fits_plain`` /
  ``place`` (does a frame fit at ``tail``, and must a pad start a lap), tunables,
  the check of the C extension's constants;
- ``_ringbase.RingBase``: mappings, mutex (one spin policy), repair, waiting;
- ``_ringgrow.GrowOps``: growing the data area;
- ``_ringsingle.SingleOps``: ``put`` and ``get``, reservations and claims;
- ``_ringbatch.BatchOps``: ``put_many``/``put_many_flat`` and ``get_many``;
- here, ``Ring``: state, shutdown, task accounting, and the test hook.

Death: a holder SIGKILLed under the mutex leaves it marked; the next holder sees
``owner_died`` and calls ``_repair()``, which trusts only ``head`` and ``tail`` and
recomputes ``count`` by walking the frames between them. A put that died before
its ``tail`` store left nothing visible; a get that died before its ``head`` store
left its message in place. See docs/design.md, "Queues", for the whole argument,
memory ordering included.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import _ringbase, _ringbatch, _ringgrow, _ringlayout, _ringsingle
from ._errors import NothingToAck, RingShutDown, TooLarge
from ._futex import futex_wake
from ._ringbatch import BatchOps
from ._ringlayout import (
    ALIGN,
    CLAIM_BYTES,
    COPY_CHUNK,
    DATA,
    FAST_DONE,
    FAST_EMPTY,
    FAST_SLOW,
    FAST_SWEEP,
    FRAME,
    FRAME_HEADER,
    GETTER,
    I_CLAIM,
    I_DONE_SEQ,
    I_GET_SEQ,
    I_GETTERS,
    I_JOINERS,
    I_PUT_SEQ,
    I_PUTTERS,
    I_RESERVE,
    I_SHUT,
    INITIAL_BYTES,
    JOINER,
    MAGIC,
    OFF_CONST,
    OFF_HEAD,
    PAGE,
    PUTTER,
    Q_BASE,
    Q_CLAIM_START,
    Q_COUNT,
    Q_GEO,
    Q_HEAD,
    Q_RESERVE_START,
    Q_TAIL,
    Q_TAKEN,
    RETAIN_BYTES,
    STALE,
    STATE,
    UNBOUNDED,
    WAKE_ALL,
    Message,
    Received,
    decode_blob,
    frame_size,
    parse_blob,
    place,
)
from ._robust import INCONSISTENT
from ._shm import SharedMemory

__all__ = [
    "ALIGN",
    "CLAIM_BYTES",
    "COPY_CHUNK",
    "DATA",
    "FAST_DONE",
    "FAST_EMPTY",
    "FAST_SLOW",
    "FAST_SWEEP",
    "FRAME_HEADER",
    "INITIAL_BYTES",
    "I_CLAIM",
    "I_RESERVE",
    "PAGE",
    "Q_BASE",
    "Q_CLAIM_START",
    "Q_GEO",
    "Q_HEAD",
    "Q_RESERVE_START",
    "Q_TAIL",
    "RETAIN_BYTES",
    "UNBOUNDED",
    "Message",
    "NothingToAck",
    "Received",
    "Ring",
    "RingShutDown",
    "RingStatistics",
    "TooLarge",
    "decode_blob",
    "frame_size",
    "parse_blob",
    "set_hook",
]

# For tests that write frames by hand.
_FRAME = FRAME
# The C extension, or None (checked against _ringlayout at import).
_speedups = _ringlayout.speedups


def set_hook(hook: Callable[[str], None] | None) -> None:
    """Install a test hook in this process: called with a point name inside put and
    get ("put:copy" between chunks of a large buffer, "put:publish" just before the
    publishing store, "get:copied" just before the consuming store, "grow:moved"
    after a growth moved frames, just before its ``base`` and ``geo`` stores,
    "grow:committed" just after them, "sleep:counted" when a waiter has counted
    itself, before it takes a slot), so that tests can SIGKILL a process at an
    exact point. The C fast path has no hook points, so it is turned off while a
    hook is installed."""
    _ringbase._hook = hook
    _ringsingle._hook = hook
    _ringbatch._hook = hook
    _ringgrow._hook = hook
    if _speedups is not None:
        _speedups.set_enabled(hook is None)


@dataclass(frozen=True)
class RingStatistics:
    items: int
    bytes: int
    capacity: int  # the bound on bytes held (UNBOUNDED: none but memory)
    size: int  # bytes of the data area now
    maxsize: int
    getters_waiting: int
    putters_waiting: int
    joiners_waiting: int
    unacked: int  # messages put and not yet acknowledged (acks rings), else 0
    shutdown: bool


class Ring(BatchOps):
    """The shared ring. Every method is safe to call from any thread of any process
    that received the ring (as a ``Process`` argument, or by fork).
    """

    def __reduce__(self) -> tuple[object, ...]:
        return (_attach, (self._shm, self.capacity, self.maxsize, self.acks))

    # -- state -----------------------------------------------------------------------

    def _read_state(self) -> tuple[int, ...]:
        """The header's state. Under the mutex if it is free (a dead holder's
        mutex is free, and repaired first), so the answer is exact; if a live peer
        holds it, read *without* it rather than wait, so that a peer paused with
        the mutex held delays nobody's ``qsize()`` or ``statistics()``. Each field
        is then one aligned load (a memoryview item), never torn, though the
        fields are not one snapshot."""
        try:
            if self._lock(0):
                return STATE.unpack_from(self._hm, OFF_HEAD)
        finally:
            if self._owner.value == INCONSISTENT:
                self._settle()
            self._unlock_raw()
        q, i = self._q, self._i
        return (
            q[Q_HEAD],
            q[Q_TAIL],
            q[Q_COUNT],
            q[Q_TAKEN],
            i[I_GETTERS],
            i[I_PUTTERS],
            i[I_JOINERS],
            i[I_SHUT],
        )

    def qsize(self) -> int:
        return int(self._read_state()[2])

    def full(self) -> bool:
        head, tail, count = self._read_state()[:3]
        if self.maxsize and count >= self.maxsize:
            return True
        return bool(tail - head > self.capacity - 2 * ALIGN)

    def statistics(self) -> RingStatistics:
        head, tail, count, taken, getters, putters, joiners, shut = self._read_state()
        return RingStatistics(
            items=count,
            bytes=tail - head,
            capacity=self.capacity,
            size=self.size,
            maxsize=self.maxsize,
            getters_waiting=getters,
            putters_waiting=putters,
            joiners_waiting=joiners,
            unacked=count + taken if self.acks else 0,
            shutdown=bool(shut),
        )

    def shutdown(self, immediate: bool = False) -> None:
        """Refuse new puts; with ``immediate``, drop every queued message too."""
        q, i = self._q, self._i
        try:
            self._lock()
            if immediate and q[Q_COUNT]:
                tail = q[Q_TAIL]
                self._jump(tail if self.off(tail) else tail - 1)
                q[Q_COUNT] = 0
                if self.size > self.retain:
                    self._shm.release(DATA + self.retain, self.size - self.retain)
            if immediate:
                i[I_RESERVE] = 0  # its putter finds it gone, and drops its message
            i[I_SHUT] = max(i[I_SHUT], 2 if immediate else 1)
            self._wake_everyone()
        finally:
            if self._owner.value == INCONSISTENT:
                self._settle()
            self._unlock_raw()

    def wait(self, size: int, timeout: float) -> None:
        """Sleep up to ``timeout`` until a get (``size`` 0) or a put of a frame of
        ``size`` bytes might succeed, or the ring is shut down. Takes nothing: for
        callers (asyncio) that must never consume from a thread they may abandon.
        Returns within ``timeout`` even while a paused peer holds the mutex."""
        deadline = time.monotonic() + timeout
        try:
            if not self._lock(timeout):
                return
            head, tail, count, _, _, _, _, shut = STATE.unpack_from(self._hm, OFF_HEAD)
            if shut:
                return
            if not size:
                if not count or self._claim_alive():
                    self._sleep(GETTER, I_PUT_SEQ, deadline)
                return
            cap, origin = self.size, self.origin
            if head == tail and self.off(tail):  # empty: a put starts a lap
                head = tail = tail + cap - self.off(tail)  # (where the put would start)
            end, _pad = place(head - origin, tail - origin, size, cap, self.retain)
            full = end + origin - head > self.room and not self._growable(head, tail, size)
            if full or (self.maxsize and count >= self.maxsize):
                self._sleep(PUTTER, I_GET_SEQ, deadline)
        finally:
            if self._owner.value == INCONSISTENT:
                self._settle()
            self._unlock_raw()

    # -- acknowledgements (a ring made with acks=True) --------------------------------
    #
    # Such a ring also counts the messages got and not yet acknowledged, in the same
    # lock hold as the get (so that "nothing put is unacknowledged" never reads true
    # in between). The queue layer builds JoinableQueue's task_done/join on these.

    def ack(self) -> None:
        """Acknowledge one message got earlier. NothingToAck if none is pending."""
        q, i = self._q, self._i
        try:
            self._lock()
            taken = q[Q_TAKEN]
            if taken <= 0:
                raise NothingToAck
            q[Q_TAKEN] = taken - 1
            wake = bool(i[I_JOINERS]) and taken == 1 and q[Q_COUNT] == 0
            if wake:
                self._bump(I_DONE_SEQ)
        finally:
            if self._owner.value == INCONSISTENT:
                self._settle()
            self._unlock_raw()
        if wake:
            futex_wake(self._done_seq, WAKE_ALL)

    def wait_acked(self, timeout: float | None = None) -> bool:
        """Wait until every message put has been got and acknowledged. False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        q = self._q
        if not q[Q_COUNT] + q[Q_TAKEN] and not q[Q_GEO] & STALE:
            # (Aligned loads: nothing in flight, without the mutex. Unless a C repair
            # left count to be recounted: then under the mutex, which recounts.)
            return True
        try:
            if not self._lock(timeout):
                return False
            while q[Q_COUNT] + q[Q_TAKEN]:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                if not self._sleep(JOINER, I_DONE_SEQ, deadline):
                    return False  # a peer held the mutex past the deadline
            return True
        finally:
            if self._owner.value == INCONSISTENT:
                self._settle()
            self._unlock_raw()


def _attach(shm: SharedMemory, capacity: int | None, maxsize: int, acks: bool) -> Ring:
    (magic,) = struct.unpack_from("@Q", shm.buf, OFF_CONST)
    if magic != MAGIC:
        raise ValueError("not a corral ring")
    return Ring(capacity, maxsize, acks=acks, _shm=shm)
