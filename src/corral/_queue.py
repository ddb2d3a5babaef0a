"""corral.Queue, JoinableQueue and SimpleQueue: the stdlib's API over a shared ring.

    put(obj)                                      get()
      pickle.dumps(obj, protocol 5)                 ring.get(): frame copied out,
        out-of-band buffers (numpy, bytearray)        consumed, under the mutex
        kept as views, not copied                 pickle.loads(head, buffers=...)
      ring.put(head, buffers): one copy of each     (outside the mutex)
        straight into shared memory, published
        by one store, under the robust mutex

There is no feeder thread: ``put()`` returns once the message is in shared memory,
so an unpicklable object or one too large raises at the call with the queue
unchanged, and a child that put items can be joined at once. The ring itself
(layout, publishing, recovery after a SIGKILL, waiting) is ``_core._ring``.
"""

from __future__ import annotations

import pickle
import queue
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._core._ring import (
    FAST_SLOW,
    NothingToAck,
    Received,
    Ring,
    RingShutDown,
    TooLarge,
    decode_blob,
    frame_size,
    parse_blob,
)
from ._exceptions import MessageTooLarge, ShutDown

# What a queue holds: ``corral.Queue[int]`` works at run time and for type checkers,
# as ``queue.Queue[int]`` does. A bare ``Queue()`` holds Any (PEP 696's default, seen
# by type checkers only: typing_extensions is not needed at run time).
if TYPE_CHECKING:
    from typing_extensions import TypeVar as _TypeVarWithDefault

    T = _TypeVarWithDefault("T", default=Any)
else:
    T = TypeVar("T")

__all__ = ["JoinableQueue", "Queue", "QueueStatistics", "SimpleQueue"]

# Room kept on top of ``capacity_bytes`` for frame headers, so that a message of
# exactly ``capacity_bytes`` pickled bytes fits.
_FRAME_ROOM = 4096

# The smallest capacity_bytes: one page, the unit the ring's memory comes in. A
# smaller one is refused rather than silently rounded up.
MIN_CAPACITY_BYTES = 4096

# Longest wait an asyncio helper thread does before the coroutine looks again.
# Shorter: a cancelled await frees its thread sooner; longer: fewer round trips.
ASYNC_SLICE = 0.1

_dumps = pickle.dumps
_loads = pickle.loads
_PROTOCOL = 5
_PickleBuffer = pickle.PickleBuffer
_decode_blob = decode_blob
_parse_blob = parse_blob
# Types whose pickle can hold no out-of-band buffer: pickled without the callback.
_FLAT = frozenset({bytes, str, int, float, bool, type(None)})


@dataclass(frozen=True)
class QueueStatistics:
    """A snapshot of a queue, exact at the moment it was taken.

    Attributes:
        items: messages in the queue.
        bytes: bytes of shared memory they occupy, framing included.
        capacity_bytes: the most bytes of messages the queue holds (None: no
            bound but memory).
        maxsize: the most messages it holds (0: no limit but bytes).
        getters_waiting: threads (in any process) blocked in a get.
        putters_waiting: threads blocked in a put.
        unfinished_tasks: for a JoinableQueue, messages put and not yet
            ``task_done()``; 0 otherwise.
        shutdown: whether ``shutdown()`` was called.
    """

    __module__ = "corral"

    items: int
    bytes: int
    capacity_bytes: int | None
    maxsize: int
    getters_waiting: int
    putters_waiting: int
    unfinished_tasks: int
    shutdown: bool


# The core's errors, which the queue translates into corral's public ones.
_RING_ERRORS = (RingShutDown, TooLarge)


def _translated(exc: Exception, what: str = "") -> Exception:
    """The public exception for a ring error (``what``: how a get's ShutDown ends)."""
    if isinstance(exc, TooLarge):
        return MessageTooLarge(exc.size, exc.capacity)
    return ShutDown(f"the queue was shut down{what}")


def _encode(obj: Any) -> tuple[bytes, list[memoryview] | None]:
    """Pickle ``obj``; buffers that pickle protocol 5 exposes (numpy arrays, and a
    bytearray given as the message itself) are returned as views, not copied."""
    buffers: list[pickle.PickleBuffer] = []
    if type(obj) is bytearray:
        obj = _PickleBuffer(obj)  # unpickles as the bytearray the getter receives
    data = _dumps(obj, _PROTOCOL, buffer_callback=buffers.append)
    return data, _raw(buffers) if buffers else None


def _raw(buffers: list[pickle.PickleBuffer]) -> list[memoryview]:
    out = []
    for b in buffers:
        try:
            out.append(b.raw())
        except BufferError:  # not contiguous: one copy, to flatten it
            out.append(memoryview(bytes(memoryview(b))))
    return out


class Queue(Generic[T]):
    """A process-shared FIFO queue, API-compatible with :class:`multiprocessing.Queue`.

    Messages live in anonymous shared memory (memfd), in a ring guarded by a robust
    mutex: a process killed at any point of a ``put()`` or ``get()`` leaves every
    message whole or absent, and the queue working for everyone else.

    Args:
        maxsize: the most messages the queue holds; 0 or less means no limit other
            than ``capacity_bytes``.
        capacity_bytes: the most bytes of (pickled) messages the queue holds, and so
            the largest single message; None (the default): no bound but memory,
            as with :class:`multiprocessing.Queue`. The shared memory starts small
            and grows when a message needs room: memory is used only for what is
            in the queue, not for the capacity.

    Pass a queue to a child only as an argument when it starts
    (``Process(args=(q,))``); pickling it at any other time raises an error.
    """

    __module__ = "corral"

    _joinable = False

    def __init__(self, maxsize: int = 0, *, capacity_bytes: int | None = None):
        if capacity_bytes is not None and capacity_bytes < MIN_CAPACITY_BYTES:
            raise ValueError(
                f"capacity_bytes must be at least {MIN_CAPACITY_BYTES}, got {capacity_bytes}"
            )
        maxsize = max(0, int(maxsize))
        room = None if capacity_bytes is None else capacity_bytes + _FRAME_ROOM
        self._setup(Ring(room, maxsize, acks=self._joinable), capacity_bytes)

    def _setup(self, ring: Ring, capacity_bytes: int | None) -> None:
        self._ring = ring
        self._maxsize = ring.maxsize
        self._capacity_bytes = capacity_bytes
        self._closed = False
        # Messages taken by get_many() whose unpickling has not been tried yet,
        # because one before them failed (see get_many).
        self._pending: deque[Received] = deque()
        self._ring_put = ring.put
        self._ring_get = ring.get
        # The ring's fast calls: C when it is built, else stand-ins that answer
        # FAST_SLOW (the ring decides which, in one place). An int answer is passed
        # on to the ring's own method, which finishes the job.
        self._try_put = ring.try_put
        self._try_get = ring.try_get
        self._try_put_many = ring.try_put_many
        self._try_get_many = ring.try_get_many
        # The ring's memory goes when the last queue object in a process does.
        self._finalizer = weakref.finalize(self, Ring.close, ring)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._ring, self._capacity_bytes))

    def __repr__(self) -> str:
        return (
            f"<corral.{type(self).__name__} maxsize={self._maxsize} "
            f"capacity_bytes={self._capacity_bytes}>"
        )

    # -- put ---------------------------------------------------------------------

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError(f"{type(self).__name__} is closed")

    def put(self, obj: T, block: bool = True, timeout: float | None = None) -> None:
        """Put ``obj`` in the queue, waiting up to ``timeout`` seconds for room.

        Returns once the message is in shared memory: no feeder thread is involved.

        Raises:
            queue.Full: no room within ``timeout`` (at once if ``block`` is false).
            ShutDown: the queue was shut down.
            MessageTooLarge: the pickled object can never fit; the queue is unchanged.
            Exception: whatever pickling raised; the queue is unchanged.
        """
        if self._closed:
            self._check_closed()
        kind = type(obj)
        if kind in _FLAT:  # nothing in it can be an out-of-band buffer
            data = _dumps(obj, _PROTOCOL)
            raws = None
        else:
            buffers: list[pickle.PickleBuffer] = []
            # A bytearray is pickled in-band otherwise: send its buffer instead.
            out: Any = _PickleBuffer(obj) if kind is bytearray else obj  # type: ignore[arg-type]
            data = _dumps(out, _PROTOCOL, buffer_callback=buffers.append)
            raws = _raw(buffers) if buffers else None
        if raws is None:
            rc = self._try_put(data)
            if not rc:
                return
        else:
            rc = FAST_SLOW
        try:
            self._ring_put(data, raws, block, timeout, rc)
        except _RING_ERRORS as exc:
            raise _translated(exc) from None

    def put_nowait(self, obj: T) -> None:
        """``put(obj, block=False)``."""
        self.put(obj, False)

    def put_many(
        self, iterable: Iterable[T], block: bool = True, timeout: float | None = None
    ) -> None:
        """Put every object of ``iterable``, in order, many per lock hold.

        Every object is pickled first, so an unpicklable or too large one raises
        before anything is put. If room runs out, waits (up to ``timeout``) and
        goes on; ``queue.Full`` then carries ``put_count``, how many were put.
        """
        if self._closed:
            self._check_closed()
        objs = list(iterable)
        if not objs:
            return
        buffers: list[pickle.PickleBuffer] = []
        callback = buffers.append
        flat = [_dumps(obj, _PROTOCOL, buffer_callback=callback) for obj in objs]
        try:
            if not buffers:  # the common case: nothing out of band
                rc = self._try_put_many(flat)
                if rc:
                    self._ring.put_many_flat(flat, block, timeout, rc)
                return
            del flat, buffers
            messages = [_encode(obj) for obj in objs]  # again, keeping each one's buffers
            self._ring.put_many(messages, block, timeout)
        except _RING_ERRORS as exc:
            raise _translated(exc) from None

    # -- get ---------------------------------------------------------------------

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        """Remove and return the oldest message, waiting up to ``timeout`` seconds.

        Raises:
            queue.Empty: nothing arrived within ``timeout`` (at once if ``block`` is
                false). As with ``multiprocessing.Queue``, whose non-blocking get
                gives up when another consumer holds its read lock, a non-blocking
                get also gives up while another live process is copying out the
                oldest message (a large one, 1 MiB or more of buffers): ``qsize()``
                still counts that message until the copy is done.
            ShutDown: the queue was shut down and is empty.
            Exception: whatever unpickling raised; that message is consumed.
        """
        if self._closed or self._pending:
            self._check_closed()
            if self._pending:
                return _decode(self._pending.popleft())  # type: ignore[no-any-return]
        # (No cast() on this hot path: the ignores cost nothing at run time.)
        r = self._try_get(block)
        if type(r) is bytes:
            return _loads(r)  # type: ignore[no-any-return]
        try:
            r = self._ring_get(block, timeout, r)
        except _RING_ERRORS as exc:
            raise _translated(exc, " and is empty") from None
        if isinstance(r, bytes):
            return _loads(r)  # type: ignore[no-any-return]
        return _loads(r[0], buffers=r[1])  # type: ignore[no-any-return]

    def get_nowait(self) -> T:
        """``get(block=False)``."""
        return self.get(False)

    def get_many(self, max_items: int, block: bool = True, timeout: float | None = None) -> list[T]:
        """Remove and return between 1 and ``max_items`` of the oldest messages.

        Waits (up to ``timeout``) only while the queue is empty, then takes what is
        there, in one lock hold.

        Raises:
            queue.Empty: nothing arrived within ``timeout``.
            ShutDown: the queue was shut down and is empty.
            Exception: what unpickling the first message raised. If a later message
                fails, the ones before it are returned and the error is raised by the
                next get (the rest follow it, in order).
        """
        self._check_closed()
        if self._pending:
            raws: list[Received] = []
            while self._pending and len(raws) < max_items:
                raws.append(self._pending.popleft())
        else:
            if max_items < 1:
                raise ValueError(f"max_items must be at least 1, got {max_items}")
            got = self._try_get_many(max_items, block)
            if type(got) is list:  # bytes only: the C fast path took them
                try:
                    return [_loads(r) for r in got]
                except BaseException as exc:
                    return self._decode_after_error(got, exc)
            try:
                got = self._ring.get_many_raw(max_items, block, timeout, got)
            except _RING_ERRORS as exc:
                raise _translated(exc, " and is empty") from None
            if type(got) is bytes:  # a small batch, as one blob: decode it in one pass
                try:
                    decoded = _decode_blob(got, _loads)
                except Exception:
                    decoded = None  # one of them is bad: sorted out below
                except BaseException:  # Ctrl-C and the like: lose nothing
                    self._pending.extendleft(reversed(_parse_blob(got)))
                    raise
                if decoded is not None:
                    return decoded  # type: ignore[return-value]
                raws = _parse_blob(got)
            else:
                raws = got  # type: ignore[assignment]
        try:
            return [_loads(r) if type(r) is bytes else _decode(r) for r in raws]
        except BaseException as exc:
            return self._decode_after_error(raws, exc)

    def _decode_after_error(self, raws: list[Received], exc: BaseException) -> list[Any]:
        """Decoding ``raws`` (taken from the queue) raised: lose none of them. Ctrl-C
        and the like keep them all for the next gets; if one is bad, those before it
        are returned (unpickled again) and the rest, from the bad one on, are kept
        for the next gets, whose first raises its error."""
        if not isinstance(exc, Exception):
            self._pending.extendleft(reversed(raws))
            raise exc
        out: list[Any] = []
        for i, r in enumerate(raws):
            try:
                out.append(_decode(r))
            except Exception:
                if i == 0:
                    self._pending.extendleft(reversed(raws[1:]))
                    raise
                self._pending.extendleft(reversed(raws[i:]))
                break
            except BaseException:
                self._pending.extendleft(reversed(raws))
                raise
        return out

    def __iter__(self) -> Iterator[T]:
        """Yield messages until the queue is shut down and empty."""
        while True:
            try:
                yield self.get()
            except ShutDown:
                return

    # -- asyncio -----------------------------------------------------------------

    async def aget(self, timeout: float | None = None) -> T:
        """``get()`` for asyncio: waits in a helper thread, never in the event loop.

        The message is taken in the event loop's own thread, so cancelling the await
        never loses one.
        """
        import asyncio  # only here: it costs 10 ms at import, in every spawned child

        self._check_closed()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            try:
                # block=True with timeout 0: what is there now, without waiting even
                # for a busy mutex (block=False would allow NOWAIT_GRACE in the loop).
                return self.get(True, 0.0)
            except queue.Empty:
                pass
            wait = ASYNC_SLICE if deadline is None else min(ASYNC_SLICE, deadline - loop.time())
            if wait <= 0:
                raise queue.Empty
            await loop.run_in_executor(None, self._ring.wait, 0, wait)

    async def aput(self, obj: T, timeout: float | None = None) -> None:
        """``put()`` for asyncio: waits for room in a helper thread, never in the
        event loop. The object is pickled once, in the event loop's thread."""
        import asyncio  # only here: it costs 10 ms at import, in every spawned child

        self._check_closed()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        data, raws = _encode(obj)
        size = frame_size(len(data), [b.nbytes for b in raws] if raws else ())
        while True:
            try:
                self._ring_put(data, raws, True, 0.0)  # (as in aget: no wait at all)
                return
            except queue.Full:
                pass
            except _RING_ERRORS as exc:
                raise _translated(exc) from None
            wait = ASYNC_SLICE if deadline is None else min(ASYNC_SLICE, deadline - loop.time())
            if wait <= 0:
                raise queue.Full
            await loop.run_in_executor(None, self._ring.wait, size, wait)

    # -- state -------------------------------------------------------------------

    def qsize(self) -> int:
        """The number of messages in the queue, exact at the moment of the call
        (read without the queue's lock: a peer paused while holding it delays no one)."""
        return self._ring.qsize()

    def empty(self) -> bool:
        """Whether the queue holds no message, exact at the moment of the call."""
        return self._ring.qsize() == 0

    def full(self) -> bool:
        """Whether the queue holds ``maxsize`` messages, or has no room left at all."""
        return self._ring.full()

    def statistics(self) -> QueueStatistics:
        s = self._ring.statistics()
        return QueueStatistics(
            items=s.items,
            bytes=s.bytes,
            capacity_bytes=self._capacity_bytes,
            maxsize=s.maxsize,
            getters_waiting=s.getters_waiting,
            putters_waiting=s.putters_waiting,
            unfinished_tasks=s.unacked,
            shutdown=s.shutdown,
        )

    def shutdown(self, immediate: bool = False) -> None:
        """Shut the queue down, in every process, as ``queue.Queue.shutdown()`` does.

        Puts raise :class:`ShutDown` from now on; gets drain what is left, then raise
        it. With ``immediate``, what is left is dropped (and counted as done for
        ``JoinableQueue.join()``). Every blocked put and get wakes up.
        """
        self._ring.shutdown(immediate)

    def close(self) -> None:
        """This process will use the queue no more: later calls raise ValueError.

        Shared memory is released when the last queue object in the last process
        that has one is gone.
        """
        self._closed = True

    def join_thread(self) -> None:
        """Nothing to wait for: corral queues have no feeder thread."""

    def cancel_join_thread(self) -> None:
        """Nothing to cancel: corral queues have no feeder thread."""


class JoinableQueue(Queue[T]):
    """A :class:`Queue` that also counts unfinished tasks, like
    :class:`multiprocessing.JoinableQueue`.

    A task is unfinished from its ``put()`` until a consumer calls ``task_done()``
    for it. A consumer killed after taking a message and before its ``task_done()``
    leaves that task unfinished, as with the stdlib: use ``join(timeout)``.
    """

    __module__ = "corral"

    _joinable = True

    def task_done(self) -> None:
        """Mark one task got earlier as done. ValueError if called too often."""
        try:
            self._ring.ack()
        except NothingToAck:
            raise ValueError("task_done() called more times than there were items") from None

    def join(self, timeout: float | None = None) -> None:
        """Wait until every task put has been marked done.

        Raises:
            TimeoutError: tasks were still unfinished after ``timeout`` seconds.
        """
        if not self._ring.wait_acked(timeout):
            raise TimeoutError(f"tasks still unfinished after {timeout} s")


class SimpleQueue(Queue[T]):
    """An unbounded queue with the small API of :class:`multiprocessing.SimpleQueue`
    (``put``, ``get``, ``empty``, ``close``), and the same guarantees as
    :class:`Queue`."""

    __module__ = "corral"

    def __init__(self, *, capacity_bytes: int | None = None):
        super().__init__(0, capacity_bytes=capacity_bytes)


def _decode(r: Received) -> Any:
    if isinstance(r, bytes):
        return _loads(r)
    head, buffers = r
    return _loads(head, buffers=buffers)


def _rebuild(cls: type[Queue], ring: Ring, capacity_bytes: int | None) -> Queue:
    q = cls.__new__(cls)
    q._setup(ring, capacity_bytes)
    return q
