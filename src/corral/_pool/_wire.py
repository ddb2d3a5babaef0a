"""The wire between the pool and a worker: framed pickles on a socketpair.

    frame := header (body length: u64, out-of-band buffers: u32) + body
    body  := [segment id (u64) + sizes of the out-of-band buffers (u64 each)]
             + pickle (protocol 5)
    freed := header (length, FREED) + ids (u64 each): segments the sender of this
             frame is done with, handled by the reader itself

Buffers of at least ``OOB_MIN_BYTES`` (numpy arrays, bytes-like objects pickled with
protocol 5) travel beside the pickle: copied once into a shared-memory segment
that the sender reuses (``_segments``), whose fd rides on the frame's first byte
(SCM_RIGHTS); the reader maps it and unpickles from the mapping without a copy,
and returns the segment with a "freed" frame once the objects built on it are gone.

Whole or absent: a writer killed mid-frame leaves a frame shorter than its header
says; the reader sees end-of-file before the frame is complete and drops it. So a
frame that was read is the whole frame the writer meant to send.

The parent's end is non-blocking (``Channel``): frames to send wait in an outbox and
are written as the socket accepts them, and frames are read as bytes arrive, so a
worker that is paused, slow to read or slow to write never blocks the scheduler.
The worker's end blocks (``WorkerEnd``): a worker has nothing else to do.
"""

from __future__ import annotations

import array
import collections
import os
import pickle
import select
import socket
import struct
import weakref
from typing import Any

from .._core._native import speedups
from .._core._shm import map_fd
from .._remote import dumps
from . import _segments
from ._segments import Segment, Segments

__all__ = [
    "OOB_MIN_BYTES",
    "Channel",
    "Frame",
    "ItemSlice",
    "WorkerEnd",
    "decode",
    "dump_scalars",
    "encode",
    "pack_items",
]

# Buffers at least this large travel out of band, in a memfd. Through the socket they
# would be copied four times (pickle, write, read, unpickle); smaller ones are
# cheaper in band than a memfd and an fd transfer.
OOB_MIN_BYTES = 1 << 20
# The size of each end's receive buffer, kept for the socket's life: one read asks
# the kernel for this much. Larger frames are read straight into a buffer of their
# own size. A fresh buffer per read cost 33 µs (a 256 KiB bytes object made and
# shrunk each time) against 9 µs for a kept one, on the "100k trivial tasks" case.
READ_SIZE = 64 * 1024

_HEADER = struct.Struct("<QI")
# The buffer count of a "freed" control frame.
FREED = 0xFFFFFFFF
_FDS_SPACE = socket.CMSG_SPACE(array.array("i").itemsize * 16)
# A list of plain scalars (ints, floats, bools, None, short str and bytes) pickled
# in C, in a few ns an item, where a Pickler takes about 20: the "100k trivial
# tasks" case's commits and chunks. What it makes is a pickle that ``pickle.loads``
# reads. (Long str and bytes are left to pickle, whose memo writes a repeated one once.)
dump_scalars = getattr(speedups, "dump_scalars", None)


class ItemSlice:
    """Items ``lo``.. (``n`` of them) of a list that is only ever read: a chunk's
    items, not copied. Its length and items by index, which is all a chunk needs
    after it was encoded (``pack_items`` encodes it from the list itself).
    A slice per chunk cost the scheduler thread a tenth of a trivial map's time:
    the copy, then freeing it."""

    __slots__ = ("lo", "n", "source")

    def __init__(self, source: list[Any], lo: int, n: int):
        self.source = source
        self.lo = lo
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < self.n:
            raise IndexError(i)
        if self.lo + i >= len(self.source):
            return GONE  # the caller shortened its list (the job fails: Job.shortened)
        return self.source[self.lo + i]

    def copy(self) -> list[Any]:
        items = self.source[self.lo : self.lo + self.n]
        if len(items) < self.n:
            raise IndexError("the list was shortened while it was read")
        return items


class _Gone:
    """What an ``ItemSlice`` reads where the caller's list no longer has an item:
    shown in an error's description, never run."""

    def __repr__(self) -> str:
        return "<gone from the shortened list>"


GONE = _Gone()


def pack_items(items: list[Any] | ItemSlice) -> list[Any] | bytes:
    """A chunk's items as they go in its frame: ``dump_scalars``' bytes if they are
    plain scalars (the worker loads them back), else as a list."""
    if dump_scalars is None:
        return items.copy() if isinstance(items, ItemSlice) else items
    if isinstance(items, ItemSlice):
        packed = dump_scalars(items.source, items.lo, items.lo + items.n)
        return items.copy() if packed is None else packed
    packed = dump_scalars(items)
    return items if packed is None else packed


class Frame:
    """An encoded message: the bytes to write, and the fd that goes with them.

    The fd is a segment's, lent by ``owner`` (the sender's ``Segments``) once the
    frame is sent; or, with no owner, a memfd of the frame's own.
    """

    __slots__ = ("data", "fd", "owner", "seg")

    def __init__(
        self,
        data: bytes,
        fd: int | None = None,
        seg: Segment | None = None,
        owner: Segments | None = None,
    ):
        self.data = data
        self.fd = fd
        self.seg = seg
        self.owner = owner

    def sent(self) -> int | None:
        """The kernel holds the fd's reference now: the id of a lent segment, if any."""
        if self.seg is not None:
            ident = self.seg.id
            self.seg = self.owner = None
            self.fd = None
            return ident
        self.discard()
        return None

    def discard(self) -> None:
        """Give back what a frame that will not be sent holds."""
        if self.seg is not None:
            assert self.owner is not None
            self.owner.release(self.seg.id)
            self.seg = self.owner = None
        elif self.fd is not None:
            os.close(self.fd)
        self.fd = None


STOP = Frame(_HEADER.pack(0, 0))  # an empty body: "stop"


def freed_frame(ids: list[int]) -> Frame:
    """A control frame: the segments with these ids (the reader's) are free again."""
    return Frame(_HEADER.pack(8 * len(ids), FREED) + struct.pack(f"<{len(ids)}Q", *ids))


def encode(obj: Any, segments: Segments | None = None) -> Frame:
    """Pickle ``obj`` into a frame; large buffers go beside it, into shared memory.

    With ``segments``, into a segment taken from it (the frame lends it to the
    receiver once sent); else into a memfd of the frame's own. Raises what pickling
    raises (with a hint to install cloudpickle where that would have helped);
    nothing is left open or lent then.
    """
    if obj.__class__ is list and dump_scalars is not None:
        data = dump_scalars(obj)
        if data is not None:
            return Frame(_HEADER.pack(len(data), 0) + data)
    buffers: list[memoryview] = []

    def keep_apart(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes >= OOB_MIN_BYTES:
            buffers.append(raw)
            return False
        return True

    try:
        payload = dumps(obj, 5, keep_apart)
    except BaseException:
        buffers.clear()
        raise
    if not buffers:
        return Frame(_HEADER.pack(len(payload), 0) + payload)
    sizes = [b.nbytes for b in buffers]
    head = _HEADER.pack(8 + 8 * len(sizes) + len(payload), len(sizes))
    if segments is not None:
        seg = segments.take(sum(sizes))
        try:
            offset = 0
            for buf in buffers:
                seg.view[offset : offset + buf.nbytes] = buf.cast("B")
                offset += buf.nbytes
        except BaseException:
            segments.release(seg.id)
            raise
        meta = struct.pack(f"<Q{len(sizes)}Q", seg.id, *sizes)
        return Frame(head + meta + payload, seg.fd, seg, segments)
    fd = os.memfd_create("corral-pool-buffers", os.MFD_CLOEXEC)
    try:
        for buf in buffers:
            view = buf.cast("B")
            while view:
                view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return Frame(head + struct.pack(f"<Q{len(sizes)}Q", 0, *sizes) + payload, fd)


def decode(
    body: memoryview, nbuf: int, fd: int | None, end: Channel | WorkerEnd | None = None
) -> Any:
    """Unpickle a frame's body (closing its fd, if any).

    A segment's id goes to ``end.freed`` once nothing built on its mapping is left
    (a finalizer, in whichever thread drops the last object), and ``end`` sends it
    back to the segment's owner. (Without ``end``, the owner gets it back only when
    the channel closes.)
    """
    if not nbuf:
        return pickle.loads(body)
    assert fd is not None
    try:
        ident, *sizes = struct.unpack_from(f"<Q{nbuf}Q", body)
        mapped = map_fd(fd, max(1, sum(sizes)))
    finally:
        os.close(fd)
    if ident and end is not None:
        end.holding += 1
        weakref.finalize(mapped, end.freed.append, ident).atexit = False
    whole = memoryview(mapped).cast("B")
    buffers, offset = [], 0
    for size in sizes:
        buffers.append(whole[offset : offset + size])
        offset += size
    whole.release()
    return pickle.loads(body[8 + 8 * nbuf :], buffers=buffers)


class _Reader:
    """Reassembles frames from a socket, blocking or not, with the fds that came along.

    Bytes land in ``buf``, a buffer kept for the reader's life; ``buf[lo:hi]`` is what
    has arrived and is not parsed yet. A complete frame's body is copied out of it.
    """

    def __init__(self, sock: socket.socket, on_freed: Any):
        self.sock = sock
        self.on_freed = on_freed  # called with the ids of each "freed" frame
        self.buf = bytearray(READ_SIZE)
        self.view = memoryview(self.buf)
        self.lo = self.hi = 0
        self.big: bytearray | None = None  # the body of a large frame being read
        self.big_pos = 0
        self.big_nbuf = 0
        self.fds: collections.deque[int] = collections.deque()
        self.frames: collections.deque[tuple[memoryview, int, int | None]] = collections.deque()
        self.eof = False

    def read_once(self) -> bool:
        """One read from the socket. False if nothing was there (non-blocking only)."""
        if self.big is None and self.lo:  # the partial frame goes to the front
            rest = self.hi - self.lo
            self.buf[:rest] = self.view[self.lo : self.hi]
            self.lo, self.hi = 0, rest
        try:
            if self.big is not None:
                view = memoryview(self.big)[self.big_pos :]
            else:
                view = self.view[self.hi :]
            n, anc, _, _ = self.sock.recvmsg_into([view], _FDS_SPACE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            n, anc = 0, []
        self._take_fds(anc)
        if n == 0:
            self.eof = True
            return True
        if self.big is not None:
            self.big_pos += n
            if self.big_pos == len(self.big):
                self._complete(memoryview(self.big), self.big_nbuf)
                self.big = None
        else:
            self.hi += n
        self._parse()
        return True

    def _take_fds(self, anc: list[tuple[int, int, bytes]]) -> None:
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                self.fds.extend(fds)

    def _parse(self) -> None:
        view, pos, hi = self.view, self.lo, self.hi
        while hi - pos >= _HEADER.size:
            length, nbuf = _HEADER.unpack_from(view, pos)
            start = pos + _HEADER.size
            if hi - start >= length:
                self._complete(memoryview(bytes(view[start : start + length])), nbuf)
                pos = start + length
                continue
            if _HEADER.size + length > len(view):  # read the rest into a buffer of its own
                self.big = bytearray(length)
                have = hi - start
                self.big[:have] = view[start:hi]
                self.big_pos, self.big_nbuf = have, nbuf
                pos = hi
            break
        if pos == hi:
            pos = hi = 0
        self.lo, self.hi = pos, hi

    def _complete(self, body: memoryview, nbuf: int) -> None:
        if nbuf == FREED:
            self.on_freed(struct.unpack(f"<{len(body) // 8}Q", body))
            return
        fd = self.fds.popleft() if nbuf and self.fds else None
        self.frames.append((body, nbuf, fd))

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.popleft())
        for _, _, fd in self.frames:
            if fd is not None:
                os.close(fd)
        self.frames.clear()


class Channel:
    """The parent's end of a worker's socketpair: never blocks.

    ``send`` queues a frame; ``flush`` writes what the socket accepts now;
    ``receive`` returns the messages whose frames are complete. After the worker
    is gone, ``drain`` reads what it sent before dying; a frame it was killed in
    the middle of is dropped.
    """

    def __init__(self, sock: socket.socket, segments: Segments):
        sock.setblocking(False)
        self.sock = sock
        self.segments = segments  # the pool's, which this end lends to the worker
        self.lent: set[int] = set()  # ids of segments the worker holds
        # Ids of the worker's segments this end is done with, to send back: appended
        # by finalizers (any thread), sent ahead of the next frame.
        self.freed: collections.deque[int] = collections.deque()
        self.holding = 0  # segments of the worker's mapped here and not yet given back
        self.reader = _Reader(sock, self._on_freed)
        self.outbox: collections.deque[Frame] = collections.deque()
        self.sent = 0  # bytes of outbox[0] already written
        self.broken = False

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def wants_write(self) -> bool:
        return bool(self.outbox) and not self.broken

    def send(self, frame: Frame) -> None:
        self._queue_freed()
        self.outbox.append(frame)
        self.flush()

    def send_freed(self) -> None:
        """Give the worker back the segments this end is done with, if any, now."""
        if self.freed and not self.broken:
            self._queue_freed()
            self.flush()

    def _queue_freed(self) -> None:
        if self.freed:
            ids = _drain(self.freed)
            self.holding -= len(ids)
            self.outbox.append(freed_frame(ids))

    def _on_freed(self, ids: tuple[int, ...]) -> None:
        for ident in ids:
            self.lent.discard(ident)
            self.segments.release(ident)

    def flush(self) -> None:
        while self.outbox and not self.broken:
            frame = self.outbox[0]
            try:
                if self.sent == 0 and frame.fd is not None:
                    n = self.sock.sendmsg(
                        [frame.data],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [frame.fd]))],
                    )
                    lent = frame.sent()  # the kernel holds the fd's reference now
                    if lent is not None:
                        self.lent.add(lent)
                else:
                    n = self.sock.send(memoryview(frame.data)[self.sent :])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the worker is gone; its sentinel will say so
                self.broken = True
                return
            self.sent += n
            if self.sent == len(frame.data):
                self.outbox.popleft()
                self.sent = 0

    def receive(self) -> list[Any]:
        """Read what is there now; return the messages it completed (EOF: see ``eof``)."""
        while not self.reader.eof and self.reader.read_once():
            pass
        return self._messages()

    def drain(self) -> list[Any]:
        """After the worker died: everything it sent, to the end of the stream."""
        self.sock.setblocking(True)
        self.sock.settimeout(1.0)  # a grandchild may hold the other end open
        try:
            while not self.reader.eof:
                try:
                    self.reader.read_once()
                except TimeoutError:
                    break
        finally:
            self.sock.setblocking(False)
        return self._messages()

    @property
    def eof(self) -> bool:
        return self.reader.eof

    def _messages(self) -> list[Any]:
        out = []
        frames = self.reader.frames
        while frames:
            body, nbuf, fd = frames.popleft()
            out.append((body, nbuf, fd))
        return out

    def close(self) -> None:
        """After the worker is gone: what it held of the pool's segments is free."""
        for frame in self.outbox:
            frame.discard()
        self.outbox.clear()
        for ident in self.lent:
            self.segments.release(ident)
        self.lent.clear()
        self.reader.close()
        self.sock.close()


class WorkerEnd:
    """The worker's end of the socketpair: blocking reads and writes."""

    def __init__(self, sock: socket.socket):
        sock.setblocking(True)
        self.sock = sock
        self.segments = Segments()  # this worker's, lent to the parent with results
        self.freed: collections.deque[int] = collections.deque()  # the parent's, done with
        self.holding = 0
        self.reader = _Reader(sock, self._on_freed)

    def _on_freed(self, ids: tuple[int, ...]) -> None:
        for ident in ids:
            self.segments.release(ident)

    def send(self, *frames: Frame) -> None:
        """Write frames back to back, in one call where the socket takes them.

        Segments this end is done with go back first, in a "freed" frame.
        """
        if self.freed:
            ids = _drain(self.freed)
            self.holding -= len(ids)
            frames = (freed_frame(ids), *frames)
        fds = array.array("i", [f.fd for f in frames if f.fd is not None])
        views = [memoryview(f.data) for f in frames]
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)] if fds else []
        n = self.sock.sendmsg(views, anc)
        for frame in frames:
            frame.sent()  # the parent holds lent segments until it frees them
        for view in views:
            if n >= len(view):
                n -= len(view)
                continue
            self.sock.sendall(view[n:])
            n = 0

    def send_obj(self, obj: Any) -> None:
        self.send(encode(obj, self.segments))

    def send_freed(self) -> None:
        """Return the parent's segments this end is done with, if any, now."""
        if self.freed:
            self.send()

    def recv(self) -> tuple[memoryview, int, int | None] | None:
        """The next frame (body, buffers, fd), or None at end of stream.

        Idle segments go back to the system once no work came for ``IDLE_SECONDS``
        (``_segments``).
        """
        reader = self.reader
        while not reader.frames:
            if reader.eof:
                return None
            idle = _segments.IDLE_SECONDS
            if self.segments.idle_bytes and not select.select([self.sock], [], [], idle)[0]:
                self.segments.trim(0)
            reader.read_once()
        return reader.frames.popleft()


def _drain(ids: collections.deque[int]) -> list[int]:
    out = []
    while ids:  # appended to from other threads meanwhile: take what is there
        out.append(ids.popleft())
    return out
