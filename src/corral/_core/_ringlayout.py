"""The ring's layout and protocol rules, each defined once.

Everything that ``_speedups.c`` must agree with lives here: the header fields,
the frame format, the frame size, whether frames fit at ``tail``, and the codes
the C calls answer with. The C extension exports each of its constants and this
module checks them all, name by name, at import (``check_native``): a C build that
disagrees is refused, never used.

Header page (offset 0; u64 and u32 fields, native byte order)::

    0    robust mutex (pthread_mutex_t: 40 B on x86-64, 48 B on aarch64)
    H    head, tail, count          (H = sizeof(pthread_mutex_t): one cache line
                                     with the mutex, so a holder touches one line)
    72   taken                      u64 messages got but not yet acknowledged (ack)
    80   getters putters joiners    u32 each: threads asleep (or about to be)
    92   shut                       u32 0 open, 1 shut down, 2 shut down immediately
    96   claim reserve              u32 pids: a getter copying out at head, a putter
                                    copying in at tail (large messages), or 0
    104  geo                        u64 bytes the data area has now (it grows), plus
                                    1 while ``count`` must be recounted (STALE)
    112  claim_start reserve_start  u64 start times of those processes
    128  put_seq  192 get_seq  256 done_seq   u32 futex words, a line each
    320  magic capacity maxsize     u64 constants (capacity: the bound on bytes held)
    344  base                       u64 a position at offset 0 of the data area
    512  waiter table               u32 pid, u32 kind, u32 start (low 32 bits) of
                                    each of MAX_WAITERS sleepers
    DATA frames

A position's offset in the data area is ``(pos - base) % size`` (``size`` from
``geo``). The area starts small (``INITIAL_BYTES``) and doubles, under the mutex,
when a put needs room and ``capacity`` allows (``_ringgrow``).

Frame (native, 16-byte aligned; ``frame_size`` gives its length)::

    u64 frame length | u32 pickle length | u32 buffer count (PAD: 0xFFFFFFFF)
    u64 length of each out-of-band buffer ...
    in-band bytes (the pickle), then each buffer, each 16-byte aligned
"""

from __future__ import annotations

import os
import platform
import struct
from collections.abc import Callable, Sequence

from . import _native
from ._robust import FUTEX_TID_MASK, HINT_OFFSET, MUTEX_SIZE, SPIN

__all__ = [
    "DATA",
    "FAST_DONE",
    "FAST_EMPTY",
    "FAST_SLOW",
    "FAST_SWEEP",
    "FRAME_HEADER",
    "Message",
    "Received",
    "check_native",
    "decode_blob",
    "fits_plain",
    "frame_size",
    "parse_blob",
    "place",
    "speedups",
]

# -- tunables -------------------------------------------------------------------

# The bound on bytes held of a ring made without one: none but memory, as the
# stdlib's Queue. (A number, so that every check stays one comparison.)
UNBOUNDED = 1 << 60

# Bytes of the data area a new ring maps (or its capacity, if smaller); it doubles
# when a put needs more. Larger: fewer growths, and a backlog of small messages
# wraps less often (a pad frame sends the C fast path to Python); smaller: less
# address space per queue (200 queues map 200 MiB; only touched pages cost memory).
INITIAL_BYTES = 1024 * 1024

# Pages at the start of the data area that are never given back. Larger: a stream
# of big messages keeps reusing warm pages (no page faults, no hole punching);
# smaller: an idle queue that once carried big messages keeps less memory.
RETAIN_BYTES = 64 * 1024 * 1024

# Longest single futex sleep. Shorter: Ctrl-C, and a wake-up lost to a process
# killed just after being woken, are noticed sooner; longer: fewer idle wake-ups.
WAIT_SLICE = 0.1

# How many times a getter that found the ring empty looks again (yielding the CPU
# in between) before it sleeps on the futex. Sleeping costs the putter a
# futex_wake and the getter a scheduler round trip; looking costs CPU that another
# process might have used. (Spinning on a busy *mutex* is _robust.SPIN.)
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

# Wake-ups that found nobody, although waiters were counted, before the waiter
# table is swept for dead waiters. A SIGKILLed waiter stays counted and costs
# every later call a futex_wake syscall until swept; a sweep reads /proc.
ZERO_WAKES_MAX = 64

# -- layout -----------------------------------------------------------------------

PAGE = os.sysconf("SC_PAGE_SIZE")
ALIGN = 16
PAD = 0xFFFFFFFF
MAGIC = 0x636F7272616C5132  # "corralQ2"
STALE = 1  # in geo: a C repair found the geometry changed and left count to Python
MAX_WAITERS = 256  # waiter slots; more waiters still work, but can't be swept if they die
WAKE_ALL = 0x7FFFFFFF

# sizeof(pthread_mutex_t) in glibc: 40 on x86-64, 48 on aarch64.
_MUTEX_BYTES = 40 if platform.machine().lower() in ("x86_64", "amd64") else 48

OFF_MUTEX = 0
OFF_HEAD = _MUTEX_BYTES  # u64 position of the first unconsumed frame
OFF_TAIL = OFF_HEAD + 8  # u64 position one past the last published frame
OFF_COUNT = OFF_HEAD + 16  # u64 messages between head and tail
OFF_TAKEN = 72  # u64 messages got but not yet acknowledged (Ring.ack), if counted
OFF_GETTERS = 80  # u32 getters asleep (or about to be)
OFF_PUTTERS = 84  # u32 putters asleep
OFF_JOINERS = 88  # u32 joiners asleep
OFF_SHUT = 92  # u32 0: open, 1: shut down, 2: shut down immediately
OFF_CLAIM = 96  # u32 pid of the getter copying out the message at head, or 0
OFF_RESERVE = 100  # u32 pid of the putter copying a message in at tail, or 0
OFF_GEO = 104  # u64 size of the data area now, | STALE while count must be recounted
OFF_CLAIM_START = 112  # u64 start time of the claim's process (pids get reused)
OFF_RESERVE_START = 120  # u64 start time of the reservation's process
OFF_PUT_SEQ = 128  # u32 futex: bumped when messages are published and getters wait
OFF_GET_SEQ = 192  # u32 futex: bumped when room is made and putters wait
OFF_DONE_SEQ = 256  # u32 futex: bumped when the last task is done and joiners wait
OFF_CONST = 320  # u64 magic, capacity, maxsize
OFF_BASE = 344  # u64 a position whose offset in the data area is 0 (mod its size)
OFF_SLOT_PID = 512  # u32[MAX_WAITERS] pid of each waiter
OFF_SLOT_KIND = OFF_SLOT_PID + 4 * MAX_WAITERS  # u32[MAX_WAITERS] which counter it holds
OFF_SLOT_START = OFF_SLOT_KIND + 4 * MAX_WAITERS  # u32[MAX_WAITERS] its start time, low bits
DATA = max(PAGE, 4096)
FRAME_HEADER = 16
assert OFF_COUNT + 8 <= OFF_TAKEN
assert OFF_RESERVE_START + 8 <= OFF_PUT_SEQ
assert OFF_RESERVE + 4 <= OFF_GEO
assert OFF_GEO + 8 <= OFF_CLAIM_START
assert OFF_CONST + 24 <= OFF_BASE
assert OFF_BASE + 8 <= OFF_SLOT_PID
assert OFF_SLOT_START + 4 * MAX_WAITERS <= DATA
assert MUTEX_SIZE >= _MUTEX_BYTES
assert _MUTEX_BYTES <= HINT_OFFSET  # (a Lock's hand-off hint: after the mutex...)
assert HINT_OFFSET + 4 <= MUTEX_SIZE  # (...and within its reservation)

# Indexes for the u64 ('Q') and u32 ('I') views of the header.
Q_HEAD, Q_TAIL, Q_COUNT, Q_TAKEN = OFF_HEAD // 8, OFF_TAIL // 8, OFF_COUNT // 8, OFF_TAKEN // 8
I_GETTERS, I_PUTTERS, I_JOINERS = OFF_GETTERS // 4, OFF_PUTTERS // 4, OFF_JOINERS // 4
I_SHUT, I_CLAIM, I_RESERVE = OFF_SHUT // 4, OFF_CLAIM // 4, OFF_RESERVE // 4
Q_CLAIM_START, Q_RESERVE_START = OFF_CLAIM_START // 8, OFF_RESERVE_START // 8
Q_GEO, Q_BASE = OFF_GEO // 8, OFF_BASE // 8
I_PUT_SEQ, I_GET_SEQ, I_DONE_SEQ = OFF_PUT_SEQ // 4, OFF_GET_SEQ // 4, OFF_DONE_SEQ // 4
I_SLOT_PID, I_SLOT_KIND = OFF_SLOT_PID // 4, OFF_SLOT_KIND // 4
I_SLOT_START = OFF_SLOT_START // 4

# The header fields from head to shut (STATE) or to claim (GET_STATE), in one
# read. Reads only: see _ring.py on why publishing stores never use pack_into.
STATE = struct.Struct(f"@QQQ{OFF_TAKEN - OFF_COUNT - 8}xQIIII")
GET_STATE = struct.Struct(f"@QQQ{OFF_TAKEN - OFF_COUNT - 8}xQIIIII")
CONST = struct.Struct("@QQQ")
FRAME = struct.Struct("@QII")  # frame length, pickle length, buffer count (or PAD)
SLOTS = struct.Struct(f"@{MAX_WAITERS}I")
U64 = struct.Struct("@Q")
assert FRAME.size == FRAME_HEADER

# Waiter kinds, and the counter each one holds.
GETTER, PUTTER, JOINER = 1, 2, 3
COUNTER = {GETTER: I_GETTERS, PUTTER: I_PUTTERS, JOINER: I_JOINERS}

# What the fast calls (C, or their pure-Python stand-ins) answer when they did
# not finish the job; the ring's put/get/put_many_flat/get_many_raw take it as
# ``after`` and finish.
FAST_DONE = 0  # done (put)
FAST_SLOW = 1  # nothing done, mutex free: the Python path does it all
FAST_SWEEP = 2  # done, but wake-ups keep finding nobody: sweep dead waiters
FAST_EMPTY = 3  # get: seen empty (not shut down) under the mutex, polled already

# One message as the ring sees it: in-band bytes, plus out-of-band buffers (or None).
Message = tuple[bytes, Sequence[memoryview] | None]
# What a get returns: bytes, or (bytes, [bytearray, ...]) when there were buffers.
Received = bytes | tuple[bytes, list[bytearray]]


# -- rules ------------------------------------------------------------------------


def align(n: int) -> int:
    return (n + ALIGN - 1) & -ALIGN


def frame_size(head_len: int, buf_lens: Sequence[int] = ()) -> int:
    """Bytes a message takes in the ring, frame header and padding included.
    (C: frame_size(), for messages without buffers.)"""
    if not buf_lens:
        return (FRAME_HEADER + ALIGN - 1 + head_len) & -ALIGN
    size = align(FRAME_HEADER + 8 * len(buf_lens) + head_len)
    for n in buf_lens:
        size += align(n)
    return size


def fits_plain(
    head: int,
    tail: int,
    count: int,
    total: int,
    k: int,
    cap: int,
    room: int,
    retain: int,
    maxsize: int,
) -> bool:
    """Whether ``k`` frames of ``total`` bytes go at ``tail`` just as the ring is: no
    pad, within the retained pages, within ``room`` (the data area's size, or the
    capacity if smaller) of ``head``, and under ``maxsize``. The plain case, which
    the single put, the framed batch and the C fast path (put_begin) take; anything
    else goes to ``place``. ``head`` and ``tail`` are relative to the base (see the
    module's docstring), ``cap`` the data area's size. (Shut down and reservations
    are checked by the caller.)"""
    return (
        tail % cap + total <= retain
        and tail + total - head <= room
        and (not maxsize or count + k <= maxsize)
    )


def place(head: int, tail: int, size: int, cap: int, retain: int) -> tuple[int, bool]:
    """Where a frame of ``size`` bytes would end if written at ``tail``, and whether a
    pad frame must first fill the rest of the lap. It fits if ``end - head`` is at
    most the room (the data area's size ``cap``, or the capacity if smaller).
    ``head`` and ``tail`` are relative to the base (``end`` then is too).

    A pad starts the next lap when the frame would not fit before the end of this
    one, or, early, when it would reach past the retained pages and fits before
    ``head`` in the next lap: a backlog then cycles through warm pages instead of
    faulting in new ones.
    """
    off = tail % cap
    pad = off + size > cap or (
        off + size > retain and off > 0 and head // cap == tail // cap and size <= head % cap
    )
    return (tail + cap - off + size if pad else tail + size), pad


def decode_blob(blob: bytes, loads: Callable[[bytes], object]) -> list[object] | None:
    """Apply ``loads`` to each message of a blob from ``get_many_raw``, in order.

    None if a message has out-of-band buffers (use ``parse_blob``). Exceptions from
    ``loads`` pass through; the caller can start again from ``parse_blob(blob)``.
    """
    out: list[object] = []
    append = out.append
    unpack = FRAME.unpack_from
    pos = 0
    end = len(blob)
    while pos < end:
        flen, plen, nbufs = unpack(blob, pos)
        if nbufs:
            return None
        append(loads(blob[pos + FRAME_HEADER : pos + FRAME_HEADER + plen]))
        pos += flen
    return out


def parse_blob(blob: bytes) -> list[Received]:
    """The messages in a blob of whole frames copied out of the ring (no pads)."""
    out: list[Received] = []
    append = out.append
    unpack = FRAME.unpack_from
    pos = 0
    end = len(blob)
    while pos < end:
        flen, plen, nbufs = unpack(blob, pos)
        if nbufs:
            append(read_frame_bufs(memoryview(blob), pos, plen, nbufs))
        else:
            append(blob[pos + FRAME_HEADER : pos + FRAME_HEADER + plen])
        pos += flen
    return out


def read_frame_bufs(
    src: memoryview, base: int, plen: int, nbufs: int
) -> tuple[bytes, list[bytearray]]:
    """The pickle and the out-of-band buffers of the frame at ``base`` in ``src``,
    each copied out once."""
    lens = struct.unpack_from(f"@{nbufs}Q", src, base + FRAME_HEADER)
    pos = base + FRAME_HEADER + 8 * nbufs
    head = bytes(src[pos : pos + plen])
    pos = base + align(FRAME_HEADER + 8 * nbufs + plen)
    out = []
    for length in lens:
        out.append(bytearray(src[pos : pos + length]))
        pos += align(length)
    return head, out


# -- the C fast path ----------------------------------------------------------------

# Every constant the C extension shares with this module, by the name it exports.
SHARED_WITH_C: dict[str, int] = {
    "OFF_HEAD": OFF_HEAD,
    "OFF_TAIL": OFF_TAIL,
    "OFF_COUNT": OFF_COUNT,
    "OFF_TAKEN": OFF_TAKEN,
    "OFF_GETTERS": OFF_GETTERS,
    "OFF_PUTTERS": OFF_PUTTERS,
    "OFF_JOINERS": OFF_JOINERS,
    "OFF_SHUT": OFF_SHUT,
    "OFF_CLAIM": OFF_CLAIM,
    "OFF_RESERVE": OFF_RESERVE,
    "OFF_GEO": OFF_GEO,
    "STALE": STALE,
    "OFF_PUT_SEQ": OFF_PUT_SEQ,
    "OFF_GET_SEQ": OFF_GET_SEQ,
    "OFF_DONE_SEQ": OFF_DONE_SEQ,
    "FRAME_HEADER": FRAME_HEADER,
    "ALIGN": ALIGN,
    "PAD": PAD,
    "WAKE_ALL": WAKE_ALL,
    "FUTEX_TID_MASK": FUTEX_TID_MASK,
    "SPIN": SPIN,
    "HINT_OFFSET": HINT_OFFSET,
    "POLL_ROUNDS": POLL_ROUNDS,
    "ZERO_WAKES_MAX": ZERO_WAKES_MAX,
    "DONE": FAST_DONE,
    "SLOW": FAST_SLOW,
    "SWEEP": FAST_SWEEP,
    "EMPTY": FAST_EMPTY,
}


def check_native(module: object) -> list[str]:
    """How the C extension's constants differ from ours, one line per field
    (empty: they all agree, and it exports no name we do not know)."""
    exported = getattr(module, "LAYOUT", None)
    if exported is None:
        return ["LAYOUT: not exported (a build of an older _speedups.c)"]
    out = [
        f"{name}: C has {getattr(module, name, None)!r}, Python {value!r}"
        for name, value in SHARED_WITH_C.items()
        if getattr(module, name, None) != value
    ]
    out += [
        f"{name}: exported by C, unknown to Python"
        for name in exported
        if name not in SHARED_WITH_C
    ]
    return out


class NoFastPath:
    """The C fast calls' stand-in without the extension: every call answers
    FAST_SLOW, and the ring's Python path does the work."""

    __slots__ = ()

    def put(self, data: bytes) -> int:
        return FAST_SLOW

    def get(self, block: bool) -> int:
        return FAST_SLOW

    def put_many(self, messages: list[bytes]) -> int:
        return FAST_SLOW

    def get_many(self, max_items: int, block: bool) -> int:
        return FAST_SLOW

    def detach(self) -> None:
        pass

    def remap(self, data: int, cap: int, room: int, base: int, retain: int) -> None:
        pass


NO_FAST_PATH = NoFastPath()

speedups = _native.speedups
if speedups is not None:
    _differences = check_native(speedups)
    if _differences:
        raise ImportError(
            "corral's C extension (_speedups) does not match _ringlayout.py: "
            + "; ".join(_differences)
            + ". Rebuild it (pip install .), or set CORRAL_PURE_PYTHON=1."
        )
