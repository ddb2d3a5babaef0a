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
- the **data area** (from offset ``DATA``): ``capacity`` bytes of frames. ``head``
  and ``tail`` are byte *positions* that only grow; a position's offset in the
  area is ``position % capacity``. A frame never wraps: when it does not fit
  before the end of the lap (or would leave the retained pages while there is room
  at the start), a pad frame fills the rest of the lap. When a get empties the
  ring, both positions jump to the start of the next lap, so a ring that keeps
  emptying reuses the same warm pages.

Frame (native, 16-byte aligned)::

    u64 frame length | u32 pickle length | u32 buffer count (PAD: 0xFFFFFFFF)
    u64 length of each out-of-band buffer ...
    in-band bytes (the pickle), then each buffer, each 16-byte aligned

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

Death: a holder SIGKILLed under the mutex leaves it marked; the next holder sees
``owner_died`` and calls ``_repair()``, which trusts only ``head`` and ``tail`` and
recomputes ``count`` by walking the frames between them. A put that died before
its ``tail`` store left nothing visible; a get that died before its ``head`` store
left its message in place. See docs/design.md, "Queues", for the whole argument,
memory ordering included.
"""

from __future__ import annotations

import errno
import mmap
import os
import platform
import queue
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from . import _linux, _native
from ._futex import futex_wait, futex_wake
from ._monitor import is_alive, proc_start_time
from ._robust import MUTEX_SIZE, RobustMutex, init_mutex
from ._shm import SharedMemory

__all__ = [
    "DEFAULT_CAPACITY",
    "Message",
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

# -- tunables -------------------------------------------------------------------

# Bytes of frames a ring holds when the user gives no ``capacity_bytes``. Only
# touched pages cost memory, so this is a bound, not an allocation.
DEFAULT_CAPACITY = 64 * 1024 * 1024

# Pages at the start of the data area that are never given back. Larger: a stream
# of big messages keeps reusing warm pages (no page faults, no hole punching);
# smaller: an idle queue that once carried big messages keeps less memory.
RETAIN_BYTES = 64 * 1024 * 1024

# Longest single futex sleep. Shorter: Ctrl-C, and a wake-up lost to a process
# killed just after being woken, are noticed sooner; longer: fewer idle wake-ups.
WAIT_SLICE = 0.1

# How many times a busy mutex is tried again before sleeping on it. A holder keeps
# it for well under a microsecond on small messages, while a futex sleep and
# wake-up cost several. (Measured here: retrying the trylock beats first reading
# the lock word, and both beat sleeping at once by about 40%.)
LOCK_SPIN = 32

# How many times a getter that found the ring empty looks again (yielding the CPU
# in between) before it sleeps on the futex. Sleeping costs the putter a
# futex_wake and the getter a scheduler round trip; looking costs CPU that another
# process might have used.
POLL_ROUNDS = 20

# A getter copies a message with buffers of at least this many bytes out with the
# mutex let go (see Ring.get), so that puts proceed meanwhile. Smaller: more
# overlap; larger: fewer extra lock round trips.
CLAIM_BYTES = 1024 * 1024

# Largest batch that put_many frames outside the mutex and get_many copies out in
# one piece (to parse outside the mutex). Larger: fewer, longer copies under the
# mutex; the blob is also a transient second copy in the process.
BLOB_MAX = 1024 * 1024

# Large buffers are copied in chunks of this size (a test hook runs in between).
COPY_CHUNK = 8 * 1024 * 1024

# -- layout -----------------------------------------------------------------------

PAGE = os.sysconf("SC_PAGE_SIZE")
ALIGN = 16
PAD = 0xFFFFFFFF
MAGIC = 0x636F7272616C5131  # "corralQ1"
MAX_WAITERS = 256  # waiter slots; more waiters still work, but can't be swept if they die

# sizeof(pthread_mutex_t) in glibc: 40 on x86-64, 48 on aarch64.
_MUTEX_BYTES = 40 if platform.machine().lower() in ("x86_64", "amd64") else 48

OFF_MUTEX = 0
OFF_HEAD = _MUTEX_BYTES  # u64 position of the first unconsumed frame
OFF_TAIL = OFF_HEAD + 8  # u64 position one past the last published frame
OFF_COUNT = OFF_HEAD + 16  # u64 messages between head and tail
OFF_TAKEN = 72  # u64 messages got but not yet task_done()
OFF_GETTERS = 80  # u32 getters asleep (or about to be)
OFF_PUTTERS = 84  # u32 putters asleep
OFF_JOINERS = 88  # u32 joiners asleep
OFF_SHUT = 92  # u32 0: open, 1: shut down, 2: shut down immediately
OFF_CLAIM = 96  # u32 pid of the getter copying out the message at head, or 0
OFF_RESERVE = 100  # u32 pid of the putter copying a message in at tail, or 0
OFF_CLAIM_START = 112  # u64 start time of the claim's process (pids get reused)
OFF_RESERVE_START = 120  # u64 start time of the reservation's process
OFF_PUT_SEQ = 128  # u32 futex: bumped when messages are published and getters wait
OFF_GET_SEQ = 192  # u32 futex: bumped when room is made and putters wait
OFF_DONE_SEQ = 256  # u32 futex: bumped when the last task is done and joiners wait
OFF_CONST = 320  # u64 magic, capacity, maxsize
OFF_SLOT_PID = 512  # u32[MAX_WAITERS] pid of each waiter
OFF_SLOT_KIND = OFF_SLOT_PID + 4 * MAX_WAITERS  # u32[MAX_WAITERS] which counter it holds
DATA = max(PAGE, 4096)
assert OFF_COUNT + 8 <= OFF_TAKEN
assert OFF_RESERVE_START + 8 <= OFF_PUT_SEQ
assert OFF_SLOT_KIND + 4 * MAX_WAITERS <= DATA
assert MUTEX_SIZE >= _MUTEX_BYTES

# Indexes for the u64 ('Q') and u32 ('I') views of the header.
Q_HEAD, Q_TAIL, Q_COUNT, Q_TAKEN = OFF_HEAD // 8, OFF_TAIL // 8, OFF_COUNT // 8, OFF_TAKEN // 8
I_GETTERS, I_PUTTERS, I_JOINERS = OFF_GETTERS // 4, OFF_PUTTERS // 4, OFF_JOINERS // 4
I_SHUT, I_CLAIM, I_RESERVE = OFF_SHUT // 4, OFF_CLAIM // 4, OFF_RESERVE // 4
Q_CLAIM_START, Q_RESERVE_START = OFF_CLAIM_START // 8, OFF_RESERVE_START // 8
I_PUT_SEQ, I_GET_SEQ, I_DONE_SEQ = OFF_PUT_SEQ // 4, OFF_GET_SEQ // 4, OFF_DONE_SEQ // 4
I_SLOT_PID, I_SLOT_KIND = OFF_SLOT_PID // 4, OFF_SLOT_KIND // 4

# Reads only (any number of fields in one call); see the module docstring.
_STATE = struct.Struct(f"@QQQ{OFF_TAKEN - OFF_COUNT - 8}xQIIII")  # head .. shut
_GET_STATE = struct.Struct(f"@QQQ{OFF_TAKEN - OFF_COUNT - 8}xQIIIII")  # head .. claim
_CONST = struct.Struct("@QQQ")
_FRAME = struct.Struct("@QII")
_SLOTS = struct.Struct(f"@{MAX_WAITERS}I")
FRAME_HEADER = _FRAME.size
assert FRAME_HEADER == 16  # spelled out in the hot paths
_state_from = _STATE.unpack_from
_get_state_from = _GET_STATE.unpack_from
_frame_from = _FRAME.unpack_from
_frame_into = _FRAME.pack_into
_U64_FROM = struct.Struct("@Q").unpack_from
_ZPAD = [bytes(n) for n in range(ALIGN)]

_GETTER, _PUTTER, _JOINER = 1, 2, 3
_COUNTER = {_GETTER: I_GETTERS, _PUTTER: I_PUTTERS, _JOINER: I_JOINERS}
WAKE_ALL = 0x7FFFFFFF

# One message as the ring sees it: in-band bytes, plus out-of-band buffers (or None).
Message = tuple[bytes, Sequence[memoryview] | None]
# What a get returns: bytes, or (bytes, [bytearray, ...]) when there were buffers.
Received = bytes | tuple[bytes, list[bytearray]]

# Test hook: called with a point name inside put and get ("put:copy" between
# chunks of a large buffer, "put:publish" just before the publishing store,
# "get:copied" just before the consuming store), so that tests can SIGKILL a
# process at an exact point. None in normal use.
_hook: Callable[[str], None] | None = None

_pid = os.getpid()
_sched_yield = os.sched_yield


# The C fast path (``_speedups.c``, see ``_native``), unless its idea of the header
# layout differs from ours.
_speedups = _native.speedups
if _speedups is not None and _speedups.OFF_HEAD != OFF_HEAD:  # pragma: no cover
    _speedups = None
# What the fast calls return when they did not finish the job (see _speedups.c).
FAST_SLOW, FAST_SWEEP, FAST_EMPTY = 1, 2, 3
if _speedups is not None:
    assert (FAST_SLOW, FAST_SWEEP, FAST_EMPTY) == (
        _speedups.SLOW,
        _speedups.SWEEP,
        _speedups.EMPTY,
    )


def set_hook(hook: Callable[[str], None] | None) -> None:
    """Install the test hook (see ``_hook``) in this process. The C fast path has no
    hook points, so it is turned off while a hook is installed."""
    global _hook
    _hook = hook
    if _speedups is not None:
        _speedups.set_enabled(hook is None)


_start_time: int | None = None  # this process's, from /proc, read when first needed


def _my_start() -> int:
    global _start_time
    if _start_time is None:
        _start_time = proc_start_time(_pid) or 0
    return _start_time


def _after_fork() -> None:
    global _pid, _start_time
    _pid = os.getpid()
    _start_time = None


os.register_at_fork(after_in_child=_after_fork)


class RingShutDown(Exception):
    """Internal: the ring was shut down (the queue layer raises corral.ShutDown)."""


class TooLarge(ValueError):
    """Internal: a message can never fit (the queue layer raises MessageTooLarge)."""

    def __init__(self, size: int, capacity: int):
        super().__init__(f"a message of {size} bytes can never fit in {capacity} bytes")
        self.size = size
        self.capacity = capacity


@dataclass(frozen=True)
class RingStatistics:
    items: int
    bytes: int
    capacity: int
    maxsize: int
    getters_waiting: int
    putters_waiting: int
    joiners_waiting: int
    unfinished: int
    shutdown: bool


def _align(n: int) -> int:
    return (n + ALIGN - 1) & -ALIGN


def frame_size(head_len: int, buf_lens: Sequence[int] = ()) -> int:
    """Bytes a message takes in the ring, frame header and padding included."""
    if not buf_lens:
        return _align(FRAME_HEADER + head_len)
    size = _align(FRAME_HEADER + 8 * len(buf_lens) + head_len)
    for n in buf_lens:
        size += _align(n)
    return size


def _alive(pid: int) -> bool:
    return _linux.proc_state(pid) not in (None, "Z", "X")


def _deadline(block: bool, timeout: float | None) -> float | None:
    return None if not block or timeout is None else time.monotonic() + timeout


class Ring:
    """The shared ring. Every method is safe to call from any thread of any process
    that received the ring (as a ``Process`` argument, or by fork).
    """

    def __init__(
        self,
        capacity: int,
        maxsize: int = 0,
        *,
        joinable: bool = False,
        _shm: SharedMemory | None = None,
    ):
        # Whole pages, so that the data area can be handed back page by page.
        capacity = max(PAGE, -(-capacity // PAGE) * PAGE)
        self.capacity = capacity
        self.maxsize = maxsize
        self.joinable = joinable
        if _shm is None:
            _shm = SharedMemory(DATA + capacity, what="queue")
            init_mutex(_shm.address + OFF_MUTEX)
            _CONST.pack_into(_shm.buf, OFF_CONST, MAGIC, capacity, maxsize)
        self._shm = _shm
        # The mmap itself: its slices are bytes (one copy, no intermediate view).
        self._mm = cast(mmap.mmap, _shm.buf.obj)
        self._header = _shm.buf[:DATA]
        self._q = self._header.cast("Q")
        self._i = self._header.cast("I")
        addr = _shm.address
        self._mutex = RobustMutex(addr + OFF_MUTEX)
        self._put_seq = addr + OFF_PUT_SEQ
        self._get_seq = addr + OFF_GET_SEQ
        self._done_seq = addr + OFF_DONE_SEQ
        self._zero_wakes = 0
        self.retain = min(RETAIN_BYTES, capacity)
        # The C fast path for this ring, or None: ``fast.put(bytes) -> int`` and
        # ``fast.get(block) -> bytes | int``; any int but 0 from ``put`` and any int
        # from ``get`` goes to ``put_after_fast`` / ``get_after_fast``.
        self.fast: Any = (
            None
            if _speedups is None
            else _speedups.Ops(addr, DATA, capacity, self.retain, maxsize, joinable)
        )
        # What the hot paths need, in one attribute.
        self._hot = (capacity, self.retain, maxsize, self._mm, self._q, self._mutex)

    def __reduce__(self) -> tuple[object, ...]:
        return (_attach, (self._shm, self.capacity, self.maxsize, self.joinable))

    def close(self) -> None:
        """Unmap and close this process's view. Nobody in this process may use it after."""
        if self._shm.fd < 0:
            return
        if self.fast is not None:
            self.fast.detach()  # later fast calls return FAST_SLOW, never touch memory
        self._q.release()
        self._i.release()
        self._header.release()
        self._shm.close()

    @property
    def fd(self) -> int:
        return self._shm.fd

    # -- locking -------------------------------------------------------------------

    def _lock(self, timeout: float | None = None) -> bool:
        """Take the mutex, repairing after a dead holder. False if ``timeout`` passed."""
        m = self._mutex
        if not m.try_acquire() and not self._lock_slow(timeout):
            return False
        if m.owner_died:
            self._repair()
        return True

    def _lock_slow(self, timeout: float | None) -> bool:
        """Take the busy mutex (the caller checks ``owner_died``)."""
        try_acquire = self._mutex.try_acquire
        for _ in range(LOCK_SPIN):
            if try_acquire():
                return True
        return self._mutex.acquire(timeout)

    def _unlock(self) -> None:
        rc = self._mutex.unlock_errno()
        if rc:
            self._unlock_failed(rc)

    @staticmethod
    def _unlock_failed(rc: int) -> None:
        # EPERM: an interrupted re-lock in _sleep left the mutex not ours, and
        # whatever interrupted it is being raised. Anything else is a bug to see.
        if rc != errno.EPERM:
            raise OSError(rc, f"pthread_mutex_unlock: {os.strerror(rc)}")

    def _repair(self) -> None:
        """With the mutex held, after its previous holder died holding it.

        ``head`` and ``tail`` are the truth (each was published by one store);
        ``count`` is recomputed from the frames between them. Costs one step per
        queued message, once per death under the mutex.
        """
        mm, q = self._mm, self._q
        cap = self.capacity
        head, tail = q[Q_HEAD], q[Q_TAIL]
        if head > tail:  # died between the two stores of a lap jump
            q[Q_TAIL] = tail = head
        count = 0
        pos = head
        while pos < tail:
            off = pos % cap
            flen, _plen, nbufs = _FRAME.unpack_from(mm, DATA + off)
            if flen <= 0 or flen % ALIGN or off + flen > cap or pos + flen > tail:
                # Cannot happen if the protocol holds; never loop or read wild.
                q[Q_HEAD] = tail
                count = 0
                break
            if nbufs != PAD:
                count += 1
            pos += flen
        q[Q_COUNT] = count
        self._claim_alive()
        self._reserved()
        self._sweep_waiters()
        # A wake-up meant for (or owed by) the dead holder may be lost: wake everyone.
        self._wake_everyone()

    def _sweep_waiters(self) -> None:
        """With the mutex held: forget waiters whose process is gone."""
        i = self._i
        pids = _SLOTS.unpack_from(self._mm, OFF_SLOT_PID)
        for n, pid in enumerate(pids):
            if pid and not _alive(pid):
                counter = _COUNTER.get(i[I_SLOT_KIND + n])
                if counter is not None:
                    i[counter] = max(0, i[counter] - 1)
                i[I_SLOT_PID + n] = 0

    def _bump(self, index: int) -> None:
        i = self._i
        i[index] = (i[index] + 1) & 0xFFFFFFFF

    def _wake(self, address: int, n: int, waiting: int) -> None:
        if futex_wake(address, n) == 0 and waiting:
            # Counted waiters that nobody could wake: usually one between its unlock
            # and its sleep, but a SIGKILLed waiter stays counted and would cost
            # every later call a wake-up. Sweep now and then.
            self._zero_wakes += 1
            if self._zero_wakes >= 64:
                self._zero_wakes = 0
                self._sweep()

    def _wake_everyone(self) -> None:
        for index in (I_PUT_SEQ, I_GET_SEQ, I_DONE_SEQ):
            self._bump(index)
        for address in (self._put_seq, self._get_seq, self._done_seq):
            futex_wake(address, WAKE_ALL)

    def _sleep(self, kind: int, seq_index: int, deadline: float | None) -> None:
        """With the mutex held: register as a waiter, sleep until the futex word
        changes (or a slice or the deadline passes), re-lock. Returns with the mutex
        held, whatever happens; exceptions pass through after the re-lock."""
        i = self._i
        counter = _COUNTER[kind]
        i[counter] += 1
        pids = _SLOTS.unpack_from(self._mm, OFF_SLOT_PID)
        try:
            slot = pids.index(0)
        except ValueError:
            slot = -1
        else:
            i[I_SLOT_KIND + slot] = kind
            i[I_SLOT_PID + slot] = _pid
        seq = i[seq_index]
        self._unlock()
        try:
            timeout = WAIT_SLICE
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
            if timeout > 0:
                futex_wait(self._shm.address + 4 * seq_index, seq, timeout)
        finally:
            self._lock()
            i[counter] = max(0, i[counter] - 1)
            if slot >= 0 and i[I_SLOT_PID + slot] == _pid:
                i[I_SLOT_PID + slot] = 0

    def _poll(self) -> bool:
        """With the mutex held: let it go and watch ``count`` for a short while (no
        lock: a racy read, only a hint), yielding the CPU between looks. Returns
        with the mutex held (the caller must read the state again); True if
        something seemed to arrive."""
        q = self._q
        self._unlock()
        try:
            for _ in range(POLL_ROUNDS):
                if q[Q_COUNT]:
                    return True
                _sched_yield()
            return False
        finally:
            self._lock()

    # -- after the C fast path ---------------------------------------------------------

    def _sweep(self) -> None:
        self._lock()
        try:
            self._sweep_waiters()
        finally:
            self._unlock()

    def put_after_fast(
        self, rc: int, head: bytes, block: bool = True, timeout: float | None = None
    ) -> None:
        """Finish a put that ``fast.put(head)`` answered with ``rc`` (not 0)."""
        if rc == FAST_SWEEP:  # the message is in; waiters keep being absent
            self._sweep()
            return
        self.put(head, None, block, timeout)

    def get_after_fast(self, rc: int, block: bool = True, timeout: float | None = None) -> Received:
        """Finish a get that ``fast.get(block)`` answered with ``rc``."""
        if rc == FAST_EMPTY and not block:
            raise queue.Empty  # seen under the mutex: exact
        # (EMPTY: the C call has already polled; go to sleep without polling again.)
        return self.get(block, timeout, poll=rc != FAST_EMPTY)

    def put_many_after_fast(
        self, rc: int, messages: list[bytes], block: bool = True, timeout: float | None = None
    ) -> None:
        """Finish a ``put_many`` that ``fast.put_many(messages)`` answered with ``rc``."""
        if rc == FAST_SWEEP:
            self._sweep()
            return
        self.put_many_flat(messages, block, timeout)

    def get_many_after_fast(
        self, rc: int, max_items: int, block: bool = True, timeout: float | None = None
    ) -> bytes | list[Received]:
        """Finish a ``get_many_raw`` that ``fast.get_many`` answered with ``rc``."""
        if rc == FAST_EMPTY and not block:
            raise queue.Empty
        return self.get_many_raw(max_items, block, timeout, poll=rc != FAST_EMPTY)

    # -- put -------------------------------------------------------------------------

    def put(
        self,
        head: bytes,
        bufs: Sequence[memoryview] | None,
        block: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Publish one message: nothing of it is visible before the ``tail`` store.

        Raises queue.Full, RingShutDown, or TooLarge (nothing written).
        """
        n = len(head)
        # (31 + n) & -16: FRAME_HEADER + n, 16-byte aligned
        size = frame_size(n, [b.nbytes for b in bufs]) if bufs else (31 + n) & -16
        cap, retain, maxsize, mm, q, m = self._hot
        if size > cap:
            raise TooLarge(size, cap)
        if bufs and size >= CLAIM_BYTES:
            self._put_reserved(head, bufs, size, block, timeout)
            return
        if not m.try_acquire() and not self._lock_slow(timeout if block else None):
            raise queue.Full
        try:
            if m.owner_died:
                self._repair()
            head_pos, tail, count, _taken, gw, _pw, _jw, shut = _state_from(mm, OFF_HEAD)
            off = tail % cap
            if (
                shut
                or self._i[I_RESERVE]
                or off + size > retain
                or tail + size - head_pos > cap
                or (maxsize and count >= maxsize)
            ):
                tail, off, count, gw = self._room(size, block, timeout)
            base = DATA + off
            if bufs:
                _frame_into(mm, base, size, n, len(bufs))
                self._write_bufs(base, head, bufs)
            else:
                _frame_into(mm, base, size, n, 0)
                mm[base + 16 : base + 16 + n] = head
            if _hook is not None:
                _hook("put:publish")
            q[Q_TAIL] = tail + size  # publish
            q[Q_COUNT] = count + 1
            if gw:
                self._bump(I_PUT_SEQ)
        finally:
            rc = m.unlock_errno()
            if rc:
                self._unlock_failed(rc)
        if gw:
            self._wake(self._put_seq, 1, gw)

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
        if not self._lock(timeout if block else None):
            raise queue.Full
        try:
            old_tail = self._q[Q_TAIL]
            tail, off, _count, _gw = self._room(size, block, timeout)
            if tail != old_tail:
                self._q[Q_TAIL] = tail  # a pad frame, on its own: nothing to get
            base = DATA + off
            _frame_into(self._mm, base, size, len(head), len(bufs))
            self._q[Q_RESERVE_START] = _my_start()
            self._i[I_RESERVE] = _pid  # (tail stays put until it is let go)
        finally:
            self._unlock()
        try:
            self._write_bufs(base, head, bufs)
        except BaseException:
            self._lock()
            try:
                if self._i[I_RESERVE] == _pid:
                    self._i[I_RESERVE] = 0
                    self._bump(I_GET_SEQ)
            finally:
                self._unlock()
            futex_wake(self._get_seq, WAKE_ALL)
            raise
        self._lock()
        try:
            q, i = self._q, self._i
            if i[I_RESERVE] != _pid or q[Q_TAIL] != tail:
                raise RingShutDown  # dropped by shutdown(immediate=True)
            if _hook is not None:
                _hook("put:publish")
            q[Q_TAIL] = tail + size  # publish
            q[Q_COUNT] += 1
            i[I_RESERVE] = 0
            gw, pw = i[I_GETTERS], i[I_PUTTERS]
            if gw:
                self._bump(I_PUT_SEQ)
            if pw:
                self._bump(I_GET_SEQ)
        finally:
            self._unlock()
        if gw:
            self._wake(self._put_seq, 1, gw)
        if pw:
            self._wake(self._get_seq, WAKE_ALL, pw)

    def _room(
        self,
        size: int,
        block: bool,
        timeout: float | None,
    ) -> tuple[int, int, int, int]:
        """With the mutex held: wait until a frame of ``size`` bytes fits (and one
        more message is allowed), write a pad frame if it must start a new lap, and
        return (tail, offset to write at, count, getters waiting)."""
        mm = self._mm
        cap = self.capacity
        maxsize = self.maxsize
        deadline = _deadline(block, timeout)
        while True:
            head, tail, count, _t, gw, _pw, _jw, shut = _STATE.unpack_from(mm, OFF_HEAD)
            if shut:
                raise RingShutDown
            if self._reserved():
                # A putter is copying a large message in at tail: nothing else may
                # be written until it publishes (or is found dead).
                if not block or (deadline is not None and time.monotonic() >= deadline):
                    raise queue.Full
                self._sleep(_PUTTER, I_GET_SEQ, deadline)
                continue
            off = tail % cap
            if head == tail and off:  # empty (after a repair): start a lap
                tail = self._jump(tail)
                head, off = tail, 0
            pad = off + size > cap or self._wrap_early(head, tail, off, size)
            end = tail + cap - off + size if pad else tail + size
            if end - head <= cap and (not maxsize or count < maxsize):
                if pad:
                    _FRAME.pack_into(mm, DATA + off, cap - off, 0, PAD)
                    tail += cap - off
                    off = 0
                return tail, off, count, gw
            if not block or (deadline is not None and time.monotonic() >= deadline):
                raise queue.Full
            self._sleep(_PUTTER, I_GET_SEQ, deadline)

    def _wrap_early(self, head: int, tail: int, off: int, size: int) -> bool:
        """Whether to start the next lap before the end of this one: when the frame
        would reach past the retained pages and fits before ``head`` in the next lap.
        A backlog then cycles through warm pages instead of faulting in new ones."""
        cap = self.capacity
        return (
            off + size > self.retain
            and off > 0
            and head // cap == tail // cap
            and size <= head % cap
        )

    def _consumed_to(self, end: int, tail: int) -> None:
        """With the mutex held: everything before ``end`` was got (the consuming
        store). If that emptied the ring, head and tail both go to the next lap, so
        the next put reuses warm pages; not while a putter holds a reservation,
        whose frame goes at ``tail``."""
        if end == tail and end % self.capacity and not self._i[I_RESERVE]:
            self._jump(end)
        else:
            self._q[Q_HEAD] = end

    def _jump(self, pos: int) -> int:
        """With the mutex held and the ring empty: move head and tail to the next lap.
        (Never while a putter holds a reservation: its frame goes at ``tail``.)"""
        new = pos + self.capacity - pos % self.capacity
        self._q[Q_HEAD] = new  # head > tail until the next store; _repair knows
        self._q[Q_TAIL] = new
        return new

    def _write_bufs(self, base: int, head: bytes, bufs: Sequence[memoryview]) -> None:
        mm = self._mm
        n = len(bufs)
        lens = [b.nbytes for b in bufs]
        struct.pack_into(f"@{n}Q", mm, base + FRAME_HEADER, *lens)
        pos = base + FRAME_HEADER + 8 * n
        mm[pos : pos + len(head)] = head
        pos = base + _align(FRAME_HEADER + 8 * n + len(head))
        for b, length in zip(bufs, lens, strict=True):
            if length <= COPY_CHUNK:
                mm[pos : pos + length] = b
            else:
                for start in range(0, length, COPY_CHUNK):
                    stop = min(length, start + COPY_CHUNK)
                    mm[pos + start : pos + stop] = b[start:stop]
                    if _hook is not None:
                        _hook("put:copy")
            pos += _align(length)

    def put_many(
        self, messages: Sequence[Message], block: bool = True, timeout: float | None = None
    ) -> int:
        """Publish messages in order, as many per lock hold (and per publishing
        store) as fit. Returns how many were put; raises queue.Full (some may have
        been put: see ``put_count``), RingShutDown, or TooLarge (nothing put).
        """
        cap = self.capacity
        sizes = []
        for head, bufs in messages:
            size = (
                frame_size(len(head), [b.nbytes for b in bufs])
                if bufs
                else (FRAME_HEADER + 15 + len(head)) & -ALIGN
            )
            if size > cap:
                raise TooLarge(size, cap)
            sizes.append(size)
        deadline = _deadline(block, timeout)
        mm, q = self._mm, self._q
        total = len(messages)
        done = 0
        maxsize = self.maxsize
        retain = self.retain
        frame_pack = _FRAME.pack_into
        while done < total:
            if not self._lock(None if deadline is None else max(0.0, deadline - time.monotonic())):
                raise _full(done)
            start = done
            gw = 0
            try:
                head_pos, tail, count, _taken, gw, _pw, _jw, shut = _STATE.unpack_from(mm, OFF_HEAD)
                while done < total:
                    if shut:
                        raise RingShutDown
                    if done == start and self._reserved():
                        # See _room. (Checked again after every sleep below: the
                        # mutex is let go there, and a reservation may be made.)
                        if not block or (deadline is not None and time.monotonic() >= deadline):
                            raise _full(done)
                        self._sleep(_PUTTER, I_GET_SEQ, deadline)
                        head_pos, tail, count, _taken, gw, _pw, _jw, shut = _STATE.unpack_from(
                            mm, OFF_HEAD
                        )
                        continue
                    size = sizes[done]
                    off = tail % cap
                    if head_pos == tail and off:  # empty (after a repair)
                        tail = self._jump(tail)
                        head_pos, off = tail, 0
                    pad = off + size > cap or (
                        off + size > retain and self._wrap_early(head_pos, tail, off, size)
                    )
                    end = tail + cap - off + size if pad else tail + size
                    if end - head_pos > cap or (maxsize and count >= maxsize):
                        if done > start:
                            break  # publish what we have, then wait
                        if not block or (deadline is not None and time.monotonic() >= deadline):
                            raise _full(done)
                        self._sleep(_PUTTER, I_GET_SEQ, deadline)
                        head_pos, tail, count, _taken, gw, _pw, _jw, shut = _STATE.unpack_from(
                            mm, OFF_HEAD
                        )
                        continue
                    if pad:
                        frame_pack(mm, DATA + off, cap - off, 0, PAD)
                        tail += cap - off
                        off = 0
                    base = DATA + off
                    head, bufs = messages[done]
                    if bufs:
                        frame_pack(mm, base, size, len(head), len(bufs))
                        self._write_bufs(base, head, bufs)
                    else:
                        frame_pack(mm, base, size, len(head), 0)
                        mm[base + FRAME_HEADER : base + FRAME_HEADER + len(head)] = head
                    tail += size
                    count += 1
                    done += 1
                if done > start:
                    if _hook is not None:
                        _hook("put:publish")
                    q[Q_TAIL] = tail  # publish the whole batch
                    q[Q_COUNT] = count
                    if gw:
                        self._bump(I_PUT_SEQ)
            finally:
                self._unlock()
            if gw:
                self._wake(self._put_seq, done - start, gw)
        return done

    def put_many_flat(
        self, messages: list[bytes], block: bool = True, timeout: float | None = None
    ) -> int:
        """``put_many`` of messages without out-of-band buffers."""
        if self._put_blob(messages, block, timeout):
            return len(messages)
        return self.put_many([(m, None) for m in messages], block, timeout)

    def _put_blob(self, messages: list[bytes], block: bool, timeout: float | None) -> bool:
        """The common case of ``put_many``: small messages without buffers. Frames
        them into one blob *outside* the mutex, then, if it fits where the ring is
        now, publishes it with one copy and one ``tail`` store. False: nothing was
        put, use the general path."""
        parts: list[bytes] = []
        extend = parts.extend
        framing: dict[int, tuple[bytes, bytes, int]] = {}  # by length: header, pad, size
        total = 0
        for head in messages:
            n = len(head)
            frame = framing.get(n)
            if frame is None:
                size = (FRAME_HEADER + 15 + n) & -ALIGN
                frame = framing[n] = (_FRAME.pack(size, n, 0), _ZPAD[size - FRAME_HEADER - n], size)
            extend((frame[0], head, frame[1]))
            total += frame[2]
            if total > BLOB_MAX:
                return False
        if not total:
            return False
        blob = b"".join(parts)
        cap = self.capacity
        m = self._mutex
        if not m.try_acquire() and not self._lock_slow(timeout if block else None):
            return False
        gw = 0
        try:
            if m.owner_died:
                self._repair()
            mm = self._mm
            head_pos, tail, count, _taken, gw, _pw, _jw, shut = _STATE.unpack_from(mm, OFF_HEAD)
            off = tail % cap
            k = len(messages)
            if (
                shut
                or self._i[I_RESERVE]
                or off + total > self.retain
                or tail + total - head_pos > cap
                or (head_pos == tail and off)
                or (self.maxsize and count + k > self.maxsize)
            ):
                gw = 0
                return False
            mm[DATA + off : DATA + off + total] = blob
            if _hook is not None:
                _hook("put:publish")
            q = self._q
            q[Q_TAIL] = tail + total  # publish the whole batch
            q[Q_COUNT] = count + k
            if gw:
                self._bump(I_PUT_SEQ)
        finally:
            rc = m.unlock_errno()
            if rc:
                self._unlock_failed(rc)
        if gw:
            self._wake(self._put_seq, k, gw)
        return True

    # -- get -------------------------------------------------------------------------

    def get(
        self, block: bool = True, timeout: float | None = None, *, poll: bool = True
    ) -> Received:
        """Take the oldest message. Raises queue.Empty or RingShutDown (shut down, empty).

        A large message with buffers is *claimed* instead: the getter records its pid,
        copies the message out with the mutex let go (puts go on meanwhile), then
        consumes it. Other getters wait for the claim; a claim whose process died
        is dropped and the message stays, whole, for the next getter.
        """
        cap, retain, _maxsize, mm, q, m = self._hot
        if not m.try_acquire() and not self._lock_slow(timeout if block else None):
            raise queue.Empty
        claimed = False
        try:
            if m.owner_died:
                self._repair()
            head, tail, count, taken, _gw, pw, _jw, _shut, claim = _get_state_from(mm, OFF_HEAD)
            if not count or claim:
                head, tail, count, taken, pw = self._items(block, timeout, poll)
            start = head
            off = head % cap
            flen, plen, nbufs = _frame_from(mm, DATA + off)
            if nbufs == PAD:
                head += flen
                off = 0
                flen, plen, nbufs = _frame_from(mm, DATA)
            base = DATA + off
            out: Received
            if nbufs and flen >= CLAIM_BYTES:
                self._q[Q_CLAIM_START] = _my_start()
                self._i[I_CLAIM] = _pid
                claimed = True
            else:
                if nbufs:
                    out = self._read_bufs(base, plen, nbufs)
                else:
                    out = mm[base + 16 : base + 16 + plen]  # after the FRAME_HEADER
                if _hook is not None:
                    _hook("get:copied")
                # (what _consume does, inlined: this is the hot path)
                end = head + flen  # (what _consumed_to does, inlined)
                if end == tail and end % cap and not self._i[I_RESERVE]:
                    self._jump(end)  # emptied: the next put reuses warm pages
                else:
                    q[Q_HEAD] = end  # consumed
                q[Q_COUNT] = count - 1
                if self.joinable:
                    q[Q_TAKEN] = taken + 1
                if pw:
                    self._bump(I_GET_SEQ)
                if off + flen > retain:
                    self._give_back(start, end, tail)
        finally:
            rc = m.unlock_errno()
            if rc:
                self._unlock_failed(rc)
        if claimed:
            return self._get_claimed(start, head + flen, base, plen, nbufs)
        if pw:
            self._wake(self._get_seq, WAKE_ALL, pw)
        return out

    def _consume(self, start: int, end: int, tail: int, count: int, taken: int, pw: int) -> None:
        """With the mutex held: the message in ``[start, end)`` was got."""
        cap = self.capacity
        q = self._q
        self._consumed_to(end, tail)
        q[Q_COUNT] = count - 1
        if self.joinable:
            q[Q_TAKEN] = taken + 1
        if pw:
            self._bump(I_GET_SEQ)
        if (end - 1) % cap >= self.retain:
            self._give_back(start, end, tail)

    def _get_claimed(self, start: int, end: int, base: int, plen: int, nbufs: int) -> Received:
        """Copy out the message claimed at ``start`` without the mutex, then consume it."""
        try:
            out = self._read_bufs(base, plen, nbufs)
            if _hook is not None:
                _hook("get:copied")
        except BaseException:
            self._lock()
            try:
                if self._i[I_CLAIM] == _pid:
                    self._i[I_CLAIM] = 0
                    self._bump(I_PUT_SEQ)
            finally:
                self._unlock()
            futex_wake(self._put_seq, WAKE_ALL)
            raise
        self._lock()
        try:
            head, tail, count, taken, gw, pw, _jw, _shut, claim = _GET_STATE.unpack_from(
                self._mm, OFF_HEAD
            )
            if claim == _pid:
                if head == start and count:  # (not dropped by shutdown(immediate))
                    self._consume(start, end, tail, count, taken, pw)
                self._i[I_CLAIM] = 0
                if gw:
                    self._bump(I_PUT_SEQ)  # the claim is gone: waiting getters, look
        finally:
            self._unlock()
        if gw:
            self._wake(self._put_seq, WAKE_ALL, gw)
        if pw:
            self._wake(self._get_seq, WAKE_ALL, pw)
        return out

    def _claim_alive(self) -> bool:
        """With the mutex held: whether a live process holds the claim (a dead one's
        claim is dropped here)."""
        claim = self._i[I_CLAIM]
        if not claim:
            return False
        if is_alive(claim, self._q[Q_CLAIM_START]):  # (a recycled pid has another start)
            return True
        self._i[I_CLAIM] = 0
        return False

    def _reserved(self) -> bool:
        """With the mutex held: whether a live putter holds a reservation (a dead
        one's is dropped here: its frame lies past ``tail``, never published)."""
        owner = self._i[I_RESERVE]
        if not owner:
            return False
        if owner == _pid or is_alive(owner, self._q[Q_RESERVE_START]):
            # (Our own pid: another thread of this process is copying.)
            return True
        self._i[I_RESERVE] = 0
        return False

    def _items(
        self, block: bool, timeout: float | None, poll: bool = True
    ) -> tuple[int, int, int, int, int]:
        """With the mutex held: wait until there is a message and no live claim on
        it; return (head, tail, count, taken, putters waiting)."""
        mm = self._mm
        deadline = _deadline(block, timeout)
        spin = block and poll and POLL_ROUNDS > 0
        while True:
            head, tail, count, taken, _gw, pw, _jw, shut = _STATE.unpack_from(mm, OFF_HEAD)
            claimed = count and self._claim_alive()
            if count and not claimed:
                return head, tail, count, taken, pw
            if shut and not count:
                raise RingShutDown
            if not block or (deadline is not None and time.monotonic() >= deadline):
                raise queue.Empty
            if spin and not claimed:
                spin = False
                self._poll()
                continue  # the mutex was let go: look at the state again
            self._sleep(_GETTER, I_PUT_SEQ, deadline)

    def _read_bufs(self, base: int, plen: int, nbufs: int) -> tuple[bytes, list[bytearray]]:
        mm = self._mm
        lens = struct.unpack_from(f"@{nbufs}Q", mm, base + FRAME_HEADER)
        pos = base + FRAME_HEADER + 8 * nbufs
        head = mm[pos : pos + plen]
        pos = base + _align(FRAME_HEADER + 8 * nbufs + plen)
        view = self._shm.buf
        out = []
        for length in lens:
            out.append(bytearray(view[pos : pos + length]))
            pos += _align(length)
        return head, out

    def get_many(
        self, max_items: int, block: bool = True, timeout: float | None = None
    ) -> list[Received]:
        """Take between 1 and ``max_items`` messages in one lock hold (and one
        consuming store)."""
        got = self.get_many_raw(max_items, block, timeout)
        return _parse(got) if isinstance(got, bytes) else got

    def get_many_raw(
        self, max_items: int, block: bool = True, timeout: float | None = None, *, poll: bool = True
    ) -> bytes | list[Received]:
        """``get_many``, but a small batch comes back as the blob of its frames,
        to be read with ``decode_blob`` (or ``_parse``) by the caller."""
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        m = self._mutex
        if not m.try_acquire() and not self._lock_slow(timeout if block else None):
            raise queue.Empty
        out: list[Received] = []
        append = out.append
        frame_unpack = _FRAME.unpack_from
        try:
            if m.owner_died:
                self._repair()
            mm = self._mm
            cap = self.capacity
            head, tail, count, taken, _gw, pw, _jw, _shut, claim = _GET_STATE.unpack_from(
                mm, OFF_HEAD
            )
            if not count or claim:
                head, tail, count, taken, pw = self._items(block, timeout, poll)
            n = min(count, max_items)
            start = head
            give_back = False
            blob = b""
            end = self._blob_end(head, tail, count, n)
            if end:
                # Small and in one lap: one copy now; the frames are parsed after
                # the mutex is let go.
                off = head % cap
                blob = mm[DATA + off : DATA + off + (end - head)]
                give_back = off + (end - head) > self.retain
                head = end
            else:
                retain = self.retain
                for _ in range(n):
                    off = head % cap
                    flen, plen, nbufs = frame_unpack(mm, DATA + off)
                    if nbufs == PAD:
                        head += flen
                        off = 0
                        flen, plen, nbufs = frame_unpack(mm, DATA)
                    base = DATA + off
                    if nbufs:
                        append(self._read_bufs(base, plen, nbufs))
                    else:
                        append(mm[base + FRAME_HEADER : base + FRAME_HEADER + plen])
                    head += flen
                    if off + flen > retain:
                        give_back = True
            if _hook is not None:
                _hook("get:copied")
            q = self._q
            self._consumed_to(head, tail)  # all at once
            q[Q_COUNT] = count - n
            if self.joinable:
                q[Q_TAKEN] = taken + n
            if pw:
                self._bump(I_GET_SEQ)
            if give_back:
                self._give_back(start, head, tail)
        finally:
            rc = m.unlock_errno()
            if rc:
                self._unlock_failed(rc)
        if pw:
            self._wake(self._get_seq, WAKE_ALL, pw)
        return blob if blob else out

    def _blob_end(self, head: int, tail: int, count: int, n: int) -> int:
        """With the mutex held: the end of the first ``n`` frames if they can be
        taken as one small blob (in one lap, at most BLOB_MAX bytes), else 0."""
        cap = self.capacity
        if n == count and tail % cap:
            # All of them, and tail inside the lap of head: no pad can lie between.
            # (With tail at a lap's end there may be a pad there, published on its
            # own by a reservation that starts the next lap: walk instead.)
            if head // cap == tail // cap and tail - head <= BLOB_MAX:
                return tail
            return 0
        mm = self._mm
        unpack = _U64_FROM
        lap_start = head - head % cap
        at = DATA + head % cap  # walking in the mapping, within this lap
        limit = DATA + min(cap, head % cap + BLOB_MAX)
        for _ in range(n):
            at += unpack(mm, at)[0]
            if at >= limit:
                # Too big, or the lap ended: a pad (which runs to the end of a lap)
                # or a frame ending exactly there. Either way, the general path.
                return 0
        return lap_start + at - DATA

    def _give_back(self, old: int, new: int, tail: int) -> None:
        """With the mutex held, after consuming ``[old, new)`` (``tail`` as it was
        before): return its pages beyond ``retain`` to the kernel, except any that
        the next lap already uses."""
        cap = self.capacity
        reserved = self._i[I_RESERVE] != 0
        # Emptied, and no putter is writing a reserved frame at tail: the rest of
        # the lap is free too.
        emptied = new == tail and not reserved
        lap_of_tail = tail // cap
        # Where the live data of tail's lap ends: at tail, or past the frame a
        # putter is writing there (it never wraps), which must keep its pages.
        live_end = tail % cap
        if reserved:
            live_end += _U64_FROM(self._mm, DATA + live_end)[0]
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

    # -- state -----------------------------------------------------------------------

    def _read_state(self) -> tuple[int, ...]:
        self._lock()
        try:
            return _STATE.unpack_from(self._mm, OFF_HEAD)
        finally:
            self._unlock()

    def qsize(self) -> int:
        return int(self._read_state()[2])

    def full(self) -> bool:
        head, tail, count = self._read_state()[:3]
        if self.maxsize and count >= self.maxsize:
            return True
        return bool(tail - head > self.capacity - 2 * ALIGN)

    def statistics(self) -> RingStatistics:
        head, tail, count, taken, gw, pw, jw, shut = self._read_state()
        return RingStatistics(
            items=count,
            bytes=tail - head,
            capacity=self.capacity,
            maxsize=self.maxsize,
            getters_waiting=gw,
            putters_waiting=pw,
            joiners_waiting=jw,
            unfinished=count + taken if self.joinable else 0,
            shutdown=bool(shut),
        )

    def shutdown(self, immediate: bool = False) -> None:
        """Refuse new puts; with ``immediate``, drop every queued message too."""
        q, i = self._q, self._i
        self._lock()
        try:
            if immediate and q[Q_COUNT]:
                tail = q[Q_TAIL]
                self._jump(tail if tail % self.capacity else tail - 1)
                q[Q_COUNT] = 0
                if self.capacity > self.retain:
                    self._shm.release(DATA + self.retain, self.capacity - self.retain)
            if immediate:
                i[I_RESERVE] = 0  # its putter finds it gone, and drops its message
            i[I_SHUT] = max(i[I_SHUT], 2 if immediate else 1)
            self._wake_everyone()
        finally:
            self._unlock()

    # -- tasks (JoinableQueue) ---------------------------------------------------------

    def task_done(self) -> None:
        q, i = self._q, self._i
        self._lock()
        try:
            taken = q[Q_TAKEN]
            if taken <= 0:
                raise ValueError("task_done() called more times than there were items")
            q[Q_TAKEN] = taken - 1
            wake = bool(i[I_JOINERS]) and taken == 1 and q[Q_COUNT] == 0
            if wake:
                self._bump(I_DONE_SEQ)
        finally:
            self._unlock()
        if wake:
            futex_wake(self._done_seq, WAKE_ALL)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every message put has been got and marked done. False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        q = self._q
        self._lock()
        try:
            while q[Q_COUNT] + q[Q_TAKEN]:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                self._sleep(_JOINER, I_DONE_SEQ, deadline)
            return True
        finally:
            self._unlock()

    def wait(self, size: int, timeout: float) -> None:
        """Sleep up to ``timeout`` until a get (``size`` 0) or a put of a frame of
        ``size`` bytes might succeed, or the ring is shut down. Takes nothing: for
        callers (asyncio) that must never consume from a thread they may abandon."""
        deadline = time.monotonic() + timeout
        mm = self._mm
        cap = self.capacity
        self._lock()
        try:
            head, tail, count, _t, _gw, _pw, _jw, shut = _STATE.unpack_from(mm, OFF_HEAD)
            if shut:
                return
            if not size:
                if not count or self._claim_alive():
                    self._sleep(_GETTER, I_PUT_SEQ, deadline)
                return
            off = 0 if head == tail else tail % cap
            end = tail + size if off + size <= cap else tail + cap - off + size
            if end - head > cap or (self.maxsize and count >= self.maxsize):
                self._sleep(_PUTTER, I_GET_SEQ, deadline)
        finally:
            self._unlock()


def decode_blob(blob: bytes, loads: Callable[[bytes], object]) -> list[object] | None:
    """Apply ``loads`` to each message of a blob from ``get_many_raw``, in order.

    None if a message has out-of-band buffers (use ``_parse``). Exceptions from
    ``loads`` pass through; the caller can start again from ``_parse(blob)``.
    """
    out: list[object] = []
    append = out.append
    unpack = _FRAME.unpack_from
    pos = 0
    end = len(blob)
    while pos < end:
        flen, plen, nbufs = unpack(blob, pos)
        if nbufs:
            return None
        append(loads(blob[pos + FRAME_HEADER : pos + FRAME_HEADER + plen]))
        pos += flen
    return out


def _parse(blob: bytes) -> list[Received]:
    """The messages in a blob of whole frames copied out of the ring (no pads)."""
    out: list[Received] = []
    append = out.append
    unpack = _FRAME.unpack_from
    pos = 0
    end = len(blob)
    while pos < end:
        flen, plen, nbufs = unpack(blob, pos)
        if nbufs:
            lens = struct.unpack_from(f"@{nbufs}Q", blob, pos + FRAME_HEADER)
            at = pos + FRAME_HEADER + 8 * nbufs
            head = blob[at : at + plen]
            at = pos + _align(FRAME_HEADER + 8 * nbufs + plen)
            view = memoryview(blob)
            bufs = []
            for length in lens:
                bufs.append(bytearray(view[at : at + length]))
                at += _align(length)
            append((head, bufs))
        else:
            append(blob[pos + FRAME_HEADER : pos + FRAME_HEADER + plen])
        pos += flen
    return out


parse_blob = _parse


def _full(done: int) -> queue.Full:
    exc = queue.Full(f"the queue stayed full; {done} of the messages were put")
    exc.put_count = done  # type: ignore[attr-defined]
    return exc


def _attach(shm: SharedMemory, capacity: int, maxsize: int, joinable: bool) -> Ring:
    (magic,) = struct.unpack_from("@Q", shm.buf, OFF_CONST)
    if magic != MAGIC:
        raise ValueError("not a corral queue")
    return Ring(capacity, maxsize, joinable=joinable, _shm=shm)
