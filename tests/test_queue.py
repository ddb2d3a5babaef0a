"""corral.Queue, JoinableQueue and SimpleQueue (issue 3).

- behaviour, against multiprocessing's queues as the reference where they agree;
- each guarantee, by killing a producer or a consumer at an exact point of a put or
  a get (a hook inside the ring parks it there), under every start method;
- a randomized kill storm against an in-process model (hypothesis, stateful).
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import pickle
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import corral
from corral._core import _ring, _ringbase, _ringsingle
from corral._core._linux import proc_start_time

from . import queue_targets as targets

TIMEOUT = 30.0
# Slack on timing assertions, for a loaded 2-core box.
SLACK = 1.0


def _kill(p: corral.Process) -> None:
    p.kill()
    p.join(TIMEOUT)
    assert p.exitcode is not None


def _wait_for(conn: Any, what: bytes) -> None:
    assert conn.poll(TIMEOUT), f"child never reached {what!r}"
    assert conn.recv_bytes() == what


# -- behaviour -------------------------------------------------------------------------

QueueFactory = Callable[..., Any]
REFERENCES: list[tuple[str, QueueFactory]] = [
    ("corral", corral.Queue),
    ("multiprocessing", multiprocessing.get_context("fork").Queue),
]


@pytest.mark.parametrize(("name", "make"), REFERENCES)
def test_fifo_empty_and_full_like_the_stdlib(name: str, make: QueueFactory) -> None:
    q = make(3)
    for i in range(3):
        q.put(i, timeout=TIMEOUT)
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.05)
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    assert [q.get(timeout=TIMEOUT) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.close()
    q.join_thread()


def test_qsize_empty_full_are_exact() -> None:
    q = corral.Queue(2)
    assert (q.qsize(), q.empty(), q.full()) == (0, True, False)
    q.put("a")
    assert (q.qsize(), q.empty(), q.full()) == (1, False, False)
    q.put_nowait("b")
    assert (q.qsize(), q.empty(), q.full()) == (2, False, True)
    q.get_nowait()
    assert (q.qsize(), q.empty(), q.full()) == (1, False, False)


def test_get_timeout_is_honoured() -> None:
    q = corral.Queue()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 0.3 + SLACK


def test_put_timeout_is_honoured() -> None:
    q = corral.Queue(1)
    q.put(1)
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(2, timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 0.3 + SLACK


def test_put_many_get_many() -> None:
    q = corral.Queue()
    q.put_many(range(1000))
    assert q.qsize() == 1000
    assert q.get_many(10) == list(range(10))
    got = q.get_many(5000)
    assert got == list(range(10, 1000))
    with pytest.raises(queue.Empty):
        q.get_many(10, timeout=0.05)
    with pytest.raises(ValueError, match="max_items"):
        q.get_many(0)
    q.put_many([])
    assert q.empty()


def test_put_many_waits_for_room_and_reports_progress() -> None:
    q = corral.Queue(5)
    with pytest.raises(queue.Full) as info:
        q.put_many(range(8), timeout=0.1)
    assert info.value.put_count == 5  # type: ignore[attr-defined]
    assert q.get_many(10) == [0, 1, 2, 3, 4]


def test_wraps_around_many_times() -> None:
    q = corral.Queue(capacity_bytes=8192)
    sent = [os.urandom(n) for n in range(0, 3000, 7)]
    got = []
    for x in sent:
        q.put(x, timeout=TIMEOUT)
        if q.qsize() > 2:
            got.extend(q.get_many(2, timeout=TIMEOUT))
    while not q.empty():
        got.append(q.get(timeout=TIMEOUT))
    assert got == sent


def test_unpicklable_raises_at_put_and_leaves_queue_unchanged() -> None:
    q = corral.Queue()
    q.put("before")
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        q.put(lambda: None)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        q.put_many(["ok", threading.Lock()])
    assert q.qsize() == 1
    assert q.get_nowait() == "before"
    assert q.empty()


def test_too_large_raises_at_put_and_leaves_queue_unchanged() -> None:
    q = corral.Queue(capacity_bytes=100_000)
    q.put(b"small")
    with pytest.raises(corral.MessageTooLarge) as info:
        q.put(bytes(200_000))
    assert isinstance(info.value, ValueError)
    assert info.value.capacity >= 100_000
    with pytest.raises(corral.MessageTooLarge):
        q.put_many([b"fits", np.zeros(50_000)])
    assert q.qsize() == 1
    # A message of exactly capacity_bytes (pickled) does fit.
    q.get_nowait()
    big = bytearray(100_000)
    q.put(big)
    assert q.get_nowait() == big


def test_out_of_band_buffers_round_trip() -> None:
    q = corral.Queue()
    arr = np.arange(100_000, dtype=np.float64).reshape(100, 1000)
    fortran = np.asfortranarray(arr)
    strided = arr[:, ::3]
    q.put_many([arr, fortran, strided, bytearray(b"abc"), {"nested": [arr[:2]]}])
    a, f, s, b, d = q.get_many(5)
    np.testing.assert_array_equal(a, arr)
    np.testing.assert_array_equal(f, fortran)
    np.testing.assert_array_equal(s, strided)
    assert b == bytearray(b"abc")
    np.testing.assert_array_equal(d["nested"][0], arr[:2])
    assert a.flags.writeable


def test_pickle5_buffers_are_not_copied_by_pickle() -> None:
    seen: list[int] = []
    real = _ring.Ring._write_bufs

    def spy(self: Any, base: int, head: bytes, bufs: Any) -> None:
        seen.append(len(head))
        seen.extend(b.nbytes for b in bufs)
        real(self, base, head, bufs)

    q = corral.Queue()
    _ring.Ring._write_bufs = spy  # type: ignore[method-assign]
    try:
        q.put(np.zeros(1_000_000))
    finally:
        _ring.Ring._write_bufs = real  # type: ignore[method-assign]
    # The pickle itself is tiny; the 8 MB went out of band, straight to the ring.
    assert seen[0] < 1000
    assert seen[1:] == [8_000_000]
    assert q.get_nowait().shape == (1_000_000,)


def test_memory_follows_data_in_flight() -> None:
    q = corral.Queue(capacity_bytes=512 * 1024 * 1024)
    fd = q._ring.fd

    def resident() -> int:
        return os.fstat(fd).st_blocks * 512

    assert resident() < 1024 * 1024
    q.put(bytearray(200 * 1024 * 1024))
    assert resident() >= 200 * 1024 * 1024
    assert len(q.get(timeout=TIMEOUT)) == 200 * 1024 * 1024
    assert resident() <= _ring.RETAIN_BYTES + 1024 * 1024


def test_shutdown_drains_then_raises() -> None:
    q = corral.Queue()
    q.put_many([1, 2, 3])
    q.shutdown()
    with pytest.raises(corral.ShutDown):
        q.put(4)
    with pytest.raises(corral.ShutDown):
        q.put_many([4])
    assert list(q) == [1, 2, 3]
    with pytest.raises(corral.ShutDown):
        q.get(timeout=TIMEOUT)
    with pytest.raises(corral.ShutDown):
        q.get_many(3, timeout=TIMEOUT)
    assert q.statistics().shutdown


def test_shutdown_immediate_drops_and_counts_them_done() -> None:
    q = corral.JoinableQueue()
    q.put_many(range(10))
    assert q.get_nowait() == 0
    q.shutdown(immediate=True)
    assert q.qsize() == 0
    with pytest.raises(corral.ShutDown):
        q.get_nowait()
    assert q.statistics().unfinished_tasks == 1
    q.task_done()
    q.join(timeout=TIMEOUT)


def test_shutdown_wakes_blocked_getters_and_putters() -> None:
    q = corral.Queue(1)
    q2 = corral.Queue()
    q.put("x")
    errors: list[BaseException] = []

    def blocked(fn: Callable[[], object]) -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    putter = threading.Thread(target=blocked, args=(lambda: q.put("y", timeout=TIMEOUT),))
    getter = threading.Thread(target=blocked, args=(lambda: q2.get(timeout=TIMEOUT),))
    putter.start()
    getter.start()
    from .conftest import wait_until

    assert wait_until(
        lambda: q.statistics().putters_waiting == 1 and q2.statistics().getters_waiting == 1,
        TIMEOUT,
    )
    t0 = time.monotonic()
    q.shutdown()
    q2.shutdown()
    putter.join(TIMEOUT)
    getter.join(TIMEOUT)
    assert time.monotonic() - t0 < SLACK
    assert [type(e) for e in errors] == [corral.ShutDown, corral.ShutDown]


def test_shutdown_is_a_corral_error_and_pickles() -> None:
    assert issubclass(corral.ShutDown, corral.CorralError)
    for exc in (corral.ShutDown("x"), corral.MessageTooLarge(10, 5)):
        again = pickle.loads(pickle.dumps(exc))
        assert type(again) is type(exc)
        assert str(again) == str(exc)
    import queue as stdlib_queue

    if hasattr(stdlib_queue, "ShutDown"):  # Python 3.13+
        assert issubclass(corral.ShutDown, stdlib_queue.ShutDown)


def test_joinable_queue() -> None:
    q = corral.JoinableQueue()
    q.put_many("abc")
    with pytest.raises(TimeoutError):
        q.join(timeout=0.05)
    for _ in range(3):
        q.get_nowait()
        q.task_done()
    q.join(timeout=TIMEOUT)
    with pytest.raises(ValueError, match="task_done"):
        q.task_done()


def test_simple_queue() -> None:
    q = corral.SimpleQueue()
    assert q.empty()
    q.put([1, 2])
    assert not q.empty()
    assert q.get() == [1, 2]
    q.close()
    with pytest.raises(ValueError, match="closed"):
        q.put(1)
    with pytest.raises(ValueError, match="closed"):
        q.get()


def test_statistics() -> None:
    q = corral.Queue(7, capacity_bytes=1 << 20)
    q.put_many([b"x" * 100] * 3)
    s = q.statistics()
    assert (s.items, s.maxsize, s.capacity_bytes) == (3, 7, 1 << 20)
    assert s.bytes >= 300
    assert (s.getters_waiting, s.putters_waiting, s.shutdown) == (0, 0, False)
    with pytest.raises(AttributeError):
        s.items = 4  # type: ignore[misc]


def test_public_names_and_module() -> None:
    for name in (
        "Queue",
        "JoinableQueue",
        "SimpleQueue",
        "ShutDown",
        "MessageTooLarge",
        "QueueStatistics",
    ):
        assert name in corral.__all__
        assert getattr(corral, name).__module__ == "corral"
    assert corral.get_context("spawn").Queue is corral.Queue


def test_queue_cannot_be_sent_later() -> None:
    q = corral.Queue()
    other = corral.Queue()
    with pytest.raises(corral.SharingError, match=r"Process\(args=...\)"):
        other.put(q)
    with pytest.raises(corral.SharingError):
        pickle.dumps(q)
    assert other.empty()


def test_unpickling_error_in_get_many_loses_nothing() -> None:
    q = corral.Queue()
    q.put_many([1, _Bomb(), 3])
    assert q.get_many(3) == [1]
    with pytest.raises(RuntimeError, match="boom"):
        q.get()
    assert q.get_many(3) == [3]


class _Bomb:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_explode, ())


def _explode() -> None:
    raise RuntimeError("boom")


def test_asyncio_get_and_put_do_not_block_the_loop() -> None:
    q = corral.Queue(1)

    async def main() -> tuple[int, Any, Any]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        feeder = threading.Timer(0.3, q.put, args=("late",))
        feeder.start()
        got = await q.aget(timeout=TIMEOUT)
        await q.aput("a")
        drain = threading.Timer(0.3, q.get)
        drain.start()
        await q.aput("b", timeout=TIMEOUT)  # waits until the timer makes room
        last = await q.aget(timeout=TIMEOUT)
        stop.set()
        await t
        feeder.join()
        drain.join()
        return ticks, got, last

    ticks, got, last = asyncio.run(main())
    assert got == "late"
    assert last == "b"
    assert ticks >= 20  # the loop kept running for the ~0.6 s of waiting


def test_asyncio_cancelled_get_loses_nothing() -> None:
    q = corral.Queue()

    async def main() -> None:
        task = asyncio.create_task(q.aget())
        for _ in range(3):  # let it start waiting in its helper thread
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    q.put("kept")
    assert q.get(timeout=TIMEOUT) == "kept"


def test_freed_when_garbage_collected() -> None:
    q = corral.Queue()
    fd = q._ring.fd
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:corral-queue")
    del q
    gc.collect()
    assert not os.path.exists(f"/proc/self/fd/{fd}") or not os.readlink(
        f"/proc/self/fd/{fd}"
    ).startswith("/memfd:corral-queue")


# -- across processes, every start method -------------------------------------------------


def test_child_that_put_can_be_joined_at_once(ctx: corral.CorralContext) -> None:
    q = ctx.Queue()
    items = [bytes(1000)] * 50 + [np.ones(10_000)]
    p = ctx.Process(target=targets.put_all, args=(q, items))
    p.start()
    assert p.result(timeout=TIMEOUT) == len(items)  # nothing consumed yet
    assert q.qsize() == len(items)
    got = q.get_many(len(items))
    assert got[:50] == items[:50]
    np.testing.assert_array_equal(got[-1], items[-1])


def test_fifo_per_producer(ctx: corral.CorralContext) -> None:
    q = ctx.Queue(50)
    producers = [
        ctx.Process(target=targets.put_all, args=(q, [(n, i) for i in range(300)]))
        for n in range(2)
    ]
    producers.append(
        ctx.Process(target=targets.put_many_all, args=(q, [(2, i) for i in range(300)]))
    )
    for p in producers:
        p.start()
    got = [q.get(timeout=TIMEOUT) for _ in range(900)]
    for p in producers:
        assert p.result(timeout=TIMEOUT) == 300
    for n in range(3):
        assert [i for m, i in got if m == n] == list(range(300))


def test_consumers_in_children(ctx: corral.CorralContext) -> None:
    q = ctx.Queue()
    consumers = [ctx.Process(target=targets.get_until_shutdown, args=(q,)) for _ in range(2)]
    for p in consumers:
        p.start()
    q.put_many(range(500))
    q.shutdown()
    got = sorted(x for p in consumers for x in p.result(timeout=TIMEOUT))
    assert got == list(range(500))


@pytest.mark.parametrize("size", [100, 100 * 1024 * 1024], ids=["small", "100MB"])
def test_producer_killed_mid_put(ctx: corral.CorralContext, size: int) -> None:
    """Killed inside put: with the mutex held, after the frame was fully written but
    before it was published (small), or holding a reservation, in the middle of
    copying a 100 MB buffer."""
    q = ctx.Queue(capacity_bytes=128 * 1024 * 1024)
    q.put_many(["before", "also before"])
    r, w = ctx.Pipe(duplex=False)
    point = "put:publish" if size < _ring.COPY_CHUNK else "put:copy"
    p = ctx.Process(target=targets.put_and_park, args=(q, bytearray(size), point, w))
    p.start()
    w.close()
    _wait_for(r, point.encode())
    _kill(p)
    r.close()
    # Consumers see only the complete messages; get(timeout) honours its timeout.
    assert q.get(timeout=TIMEOUT) == "before"
    assert q.get(timeout=TIMEOUT) == "also before"
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 0.3 + SLACK
    assert q.qsize() == 0
    # And the queue keeps working, for large messages too.
    q.put("after")
    q.put(bytearray(size))
    assert q.get(timeout=TIMEOUT) == "after"
    assert len(q.get(timeout=TIMEOUT)) == size


def test_gets_go_on_while_a_large_put_copies(ctx: corral.CorralContext) -> None:
    """A large put reserves its frame and copies with the mutex let go: gets of the
    messages before it go on meanwhile, other puts wait (within their timeout), and
    when the large putter is killed mid-copy its reservation is dropped: nothing of
    it is ever seen, and puts resume."""
    q = ctx.Queue(capacity_bytes=64 * 1024 * 1024)
    q.put_many(["before", "also before"])
    r, w = ctx.Pipe(duplex=False)
    big = bytearray(2 * _ring.COPY_CHUNK + 1)
    p = ctx.Process(target=targets.put_and_park, args=(q, big, "put:copy", w))
    p.start()
    w.close()
    _wait_for(r, b"put:copy")
    t0 = time.monotonic()
    assert q.get(timeout=TIMEOUT) == "before"
    assert q.get_nowait() == "also before"
    assert time.monotonic() - t0 < SLACK  # not held up by the copy
    with pytest.raises(queue.Full):
        q.put("waits for the reservation", timeout=0.3)
    assert q.qsize() == 0
    _kill(p)
    r.close()
    q.put("after")
    assert q.get(timeout=TIMEOUT) == "after"
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.put(big)
    assert q.get(timeout=TIMEOUT) == big


def test_reservation_in_a_thread_and_immediate_shutdown() -> None:
    """A thread of this process holds a reservation (parked mid-copy): other
    threads' puts wait for it, gets of earlier messages do not. Then
    shutdown(immediate=True) drops it, and the reserving put raises ShutDown."""
    q = corral.Queue(capacity_bytes=64 * 1024 * 1024)
    q.put("before")
    parked, resume = threading.Event(), threading.Event()
    outcome: list[BaseException | None] = []

    def hook(where: str) -> None:
        if where == "put:copy" and not parked.is_set():
            parked.set()
            assert resume.wait(TIMEOUT)

    def reserving_put() -> None:
        try:
            q.put(bytearray(2 * _ring.COPY_CHUNK + 1))
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    _ring.set_hook(hook)
    t = threading.Thread(target=reserving_put)
    try:
        t.start()
        assert parked.wait(TIMEOUT)
        assert q.get(timeout=TIMEOUT) == "before"
        with pytest.raises(queue.Full):
            q.put("waits for the reservation", timeout=0.3)
        q.shutdown(immediate=True)
        resume.set()
        t.join(TIMEOUT)
        assert not t.is_alive()
    finally:
        resume.set()
        _ring.set_hook(None)
    assert len(outcome) == 1
    assert isinstance(outcome[0], corral.ShutDown)
    assert q.qsize() == 0
    with pytest.raises(corral.ShutDown):
        q.get(timeout=TIMEOUT)
    with pytest.raises(corral.ShutDown):
        q.put("after")


def test_get_many_before_a_lone_pad(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reservation that starts a new lap publishes the pad that ends the old one
    on its own, with nothing after it yet: a get_many of everything before it must
    stop at the pad, not read it as a message."""
    monkeypatch.setattr(_ringsingle, "COPY_CHUNK", 256 * 1024)  # so that the copy parks
    q = corral.Queue(capacity_bytes=4 * 1024 * 1024)
    filler = 3 * 1024 * 1024 + 512 * 1024  # what is left of the lap is a small blob
    q.put(bytes(filler), timeout=TIMEOUT)
    q.put_many(["a", "b"], timeout=TIMEOUT)
    assert len(q.get(timeout=TIMEOUT)) == filler  # room at the lap's start
    parked, resume = threading.Event(), threading.Event()

    def hook(where: str) -> None:
        if where == "put:copy" and not parked.is_set():
            parked.set()
            assert resume.wait(TIMEOUT)

    big = bytearray(2 * 1024 * 1024)
    _ring.set_hook(hook)
    t = threading.Thread(target=q.put, args=(big, True, TIMEOUT))
    try:
        t.start()
        assert parked.wait(TIMEOUT)
        ring = q._ring
        assert ring.off(ring._q[_ring.Q_TAIL]) == 0  # the lone pad is published
        assert q.get_many(10, timeout=TIMEOUT) == ["a", "b"]
        assert q.qsize() == 0
    finally:
        resume.set()
        t.join(TIMEOUT)
        _ring.set_hook(None)
    assert not t.is_alive()
    assert q.get(timeout=TIMEOUT) == big


def test_put_many_woken_for_room_respects_a_reservation() -> None:
    """White-box: a put_many asleep for room, woken by a get, must not write past
    tail if a reservation was made meanwhile (only the reserving putter may)."""
    from .conftest import wait_until

    ring = _ring.Ring(1 << 20, maxsize=1)
    try:
        ring.put(b"x", None, timeout=TIMEOUT)  # full: maxsize
        result: list[object] = []

        def batch() -> None:
            messages: list[_ring.Message] = [(b"y", None), (b"z", None)]
            try:
                result.append(ring.put_many(messages, timeout=2.0))
            except queue.Full as exc:
                result.append(exc)

        t = threading.Thread(target=batch)
        t.start()
        assert wait_until(lambda: ring.statistics().putters_waiting == 1, TIMEOUT)
        owner = os.getppid()  # a live process, standing for a reserving putter
        start = proc_start_time(owner)
        assert start is not None
        ring._lock()
        try:
            ring._q[_ring.Q_RESERVE_START] = start
            ring._i[_ring.I_RESERVE] = owner
        finally:
            ring._unlock()
        assert ring.get(timeout=TIMEOUT) == b"x"  # room, and the batch is woken
        t.join(TIMEOUT)
        assert not t.is_alive()
        assert len(result) == 1
        assert isinstance(result[0], queue.Full)  # waited for the reservation
        assert getattr(result[0], "put_count", None) == 0
        assert ring.qsize() == 0
        ring._i[_ring.I_RESERVE] = 0
    finally:
        ring.close()


def test_a_recycled_pid_holds_no_claim_or_reservation() -> None:
    """A claim or reservation names its process by pid *and* start time: a live
    process that merely got a dead holder's pid does not hold anything up."""
    q = corral.Queue()
    ring = q._ring
    stranger = os.getppid()  # alive, and not the process that wrote these words
    ring._q[_ring.Q_RESERVE_START] = ring._q[_ring.Q_CLAIM_START] = 1
    ring._i[_ring.I_RESERVE] = stranger
    q.put("not held up by the reservation", timeout=TIMEOUT)
    assert ring._i[_ring.I_RESERVE] == 0
    ring._i[_ring.I_CLAIM] = stranger
    assert q.get(timeout=TIMEOUT) == "not held up by the reservation"
    assert ring._i[_ring.I_CLAIM] == 0


def test_pages_handed_back_spare_a_reserved_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """White-box: a get that hands pages beyond ``retain`` back to the kernel must
    keep those of a frame a putter is still writing in the next lap, even when the
    consumed frame starts in the page where the reserved one ends."""
    page = _ring.PAGE
    monkeypatch.setattr(_ringbase, "RETAIN_BYTES", page)
    ring = _ring.Ring(8 * page)
    try:
        data = _ring.DATA
        # Lap 0: A [0, 2p-96), B [2p-96, 4p), C [4p, 7p).
        a, b, c = 2 * page - 96, 2 * page + 96, 3 * page
        for frame in (a, b, c):
            ring.put(bytes(frame - 16), None, timeout=TIMEOUT)
        assert ring.get(timeout=TIMEOUT) == bytes(a - 16)  # head: 2p-96, in page [p, 2p)
        ring.put(bytes(1008), None, timeout=TIMEOUT)  # D: no room in lap 0: lap 1 at 0
        tail = ring._q[_ring.Q_TAIL]
        assert tail == ring.size + 1024
        # A putter holds a reservation at tail and has written its frame, which
        # ends at 2p-128: in the same page as head.
        reserved = 2 * page - 128 - 1024
        _ring._FRAME.pack_into(ring._mm, data + 1024, reserved, 0, 1)
        ring._mm[data + 1040 : data + 1024 + reserved] = b"\xab" * (reserved - 16)
        owner = os.getppid()
        start = proc_start_time(owner)
        assert start is not None
        ring._q[_ring.Q_RESERVE_START] = start
        ring._i[_ring.I_RESERVE] = owner
        assert ring.get(timeout=TIMEOUT) == bytes(b - 16)  # B: its pages beyond retain go
        written = bytes(ring._mm[data + 1040 : data + 1024 + reserved])
        assert written == b"\xab" * (reserved - 16)
        ring._i[_ring.I_RESERVE] = 0
    finally:
        ring.close()


def test_consumer_killed_mid_get(ctx: corral.CorralContext) -> None:
    """Killed inside get, after copying the message out, before consuming it."""
    q = ctx.Queue()
    q.put_many(["first", "second", np.arange(10)])
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=targets.get_and_park, args=(q, "get:copied", w))
    p.start()
    w.close()
    _wait_for(r, b"get:copied")
    _kill(p)
    r.close()
    assert q.qsize() == 3
    assert q.get(timeout=TIMEOUT) == "first"
    assert q.get(timeout=TIMEOUT) == "second"
    np.testing.assert_array_equal(q.get(timeout=TIMEOUT), np.arange(10))
    q.put("works")
    assert q.get_nowait() == "works"


def test_consumer_killed_while_copying_a_large_message(ctx: corral.CorralContext) -> None:
    """Large messages are copied out with the mutex let go, under a claim: a
    consumer killed there leaves the message whole for the next one."""
    q = ctx.Queue(capacity_bytes=256 * 1024 * 1024)
    big = np.arange(100 * 1024 * 1024 // 8, dtype=np.int64)
    q.put_many([big, "after"])
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=targets.get_and_park, args=(q, "get:copied", w))
    p.start()
    w.close()
    _wait_for(r, b"get:copied")
    # The claimer is alive: others wait for it, within their timeout; puts go on.
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 0.3 + SLACK
    q.put("put meanwhile", timeout=TIMEOUT)
    _kill(p)
    r.close()
    assert q.qsize() == 3
    np.testing.assert_array_equal(q.get(timeout=TIMEOUT), big)
    assert q.get_many(5, timeout=TIMEOUT) == ["after", "put meanwhile"]


def test_killed_waiter_is_forgotten(ctx: corral.CorralContext) -> None:
    q = ctx.Queue()
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=targets.blocked_get, args=(q, w))
    p.start()
    w.close()
    _wait_for(r, b"about to block")
    from .conftest import wait_until

    assert wait_until(lambda: q.statistics().getters_waiting == 1, TIMEOUT)
    _kill(p)
    r.close()
    for i in range(200):  # zero-wake puts make the queue sweep its waiter table
        q.put(i)
    assert q.statistics().getters_waiting == 0
    assert q.get_many(500) == list(range(200))


def test_a_waiter_killed_before_taking_its_slot_is_not_counted_for_good(
    ctx: corral.CorralContext,
) -> None:
    # Killed inside registration, mutex held: counted as a getter, no slot taken
    # yet. The next holder repairs (the pure path) or, on the C path, the wake-ups
    # that keep finding nobody make a put sweep: either way the counts are set
    # from the slots, and nobody stays counted who no slot accounts for.
    q = ctx.Queue()
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=targets.get_and_park, args=(q, "sleep:counted", w))
    p.start()
    w.close()
    _wait_for(r, b"sleep:counted")
    assert q.statistics().getters_waiting == 1
    _kill(p)
    r.close()
    for i in range(200):
        q.put(i, timeout=TIMEOUT)
    assert q.statistics().getters_waiting == 0
    assert q.get_many(500) == list(range(200))


def test_demo_scenario_passes(capsys: pytest.CaptureFixture[str]) -> None:
    """``corral demo queue-kill``: the producer killed mid-put, corral against the stdlib."""
    import argparse

    from corral._tools._demo import Report, all_scenarios

    report = Report()
    all_scenarios()["queue-kill"].run(argparse.Namespace(), report)
    failed = [f"{c.name} ({c.detail})" for c in report.checks if not c.passed]
    assert report.checks
    assert not failed
    assert "multiprocessing.Queue after the same kill" in capsys.readouterr().out


@pytest.mark.parametrize("capacity", [-1, 0, 10, 4095])
def test_capacity_below_the_minimum_raises(capacity: int) -> None:
    """Refused, not silently rounded up to a page."""
    with pytest.raises(ValueError, match="at least 4096"):
        corral.Queue(capacity_bytes=capacity)


def test_capacity_at_the_minimum_holds_a_message_of_that_size() -> None:
    q = corral.Queue(capacity_bytes=4096)
    payload = b"x" * (4096 - 64)  # its pickle fits in 4096 bytes
    q.put(payload)
    assert q.get(timeout=10) == payload
    assert q.statistics().capacity_bytes == 4096
