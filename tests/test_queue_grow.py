"""Queues map only what they use, and grow on demand (issue 13, item 4).

- a default queue maps ``INITIAL_BYTES`` and has no bound but memory: it takes a
  100 MiB message across processes, as ``multiprocessing.Queue`` does, and 200 of
  them fit in a 4 GiB address space (a child interpreter under ``RLIMIT_AS``);
- ``capacity_bytes`` still bounds what a queue holds;
- growth is seen by every process, under every start method;
- a fault table: a growth while another process holds a claim (mid-get of a large
  message) or a reservation (mid-put), that process SIGKILLed or SIGSTOPped, and a
  growing putter itself SIGKILLed or SIGSTOPped at its hook points. Every row
  asserts that messages are whole or absent, none twice, and that no call waits
  past its timeout;
- a growth that cannot get its memory raises MemoryError and changes nothing.

Run it with ``CORRAL_PURE_PYTHON=1`` too for the pure-Python path (the rlimit rows
run both paths themselves).
"""

from __future__ import annotations

import importlib.util
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

import corral
from corral._core import _ring

from . import grow_targets as gt
from . import queue_targets as targets
from .leaks import wait_until

TIMEOUT = 60.0
SLACK = 1.0  # on timing assertions, for a loaded 2-core box
KIB, MIB = 1024, 1024 * 1024
INITIAL = _ring.INITIAL_BYTES


def _wait_for(conn: Any, what: bytes) -> None:
    assert conn.poll(TIMEOUT), f"child never reached {what!r}"
    assert conn.recv_bytes() == what


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def _stop(p: corral.Process) -> None:
    assert p.pid is not None
    os.kill(p.pid, signal.SIGSTOP)
    assert wait_until(lambda: _stopped(p.pid or 0), TIMEOUT)


def _kill(p: corral.Process) -> None:
    p.kill()
    p.join(TIMEOUT)
    assert p.exitcode == -signal.SIGKILL


def _times_out(call: Any, exc: type[BaseException], timeout: float) -> None:
    """``call()`` raises ``exc`` after about ``timeout`` seconds, not later."""
    t0 = time.monotonic()
    with pytest.raises(exc):
        call()
    elapsed = time.monotonic() - t0
    assert timeout <= elapsed < timeout + SLACK, elapsed


# -- size and bound ------------------------------------------------------------------------


def test_a_default_queue_maps_little_and_reports_no_bound() -> None:
    q: corral.Queue[int] = corral.Queue()
    for i in range(1000):
        q.put(i)
    assert q.get_many(1000, timeout=TIMEOUT) == list(range(1000))
    assert q._ring.size == INITIAL
    assert q.statistics().capacity_bytes is None
    assert "capacity_bytes=None" in repr(q)


def test_capacity_bytes_still_bounds_what_the_queue_holds() -> None:
    q: corral.Queue[Any] = corral.Queue(capacity_bytes=2 * MIB)
    assert q._ring.size == INITIAL
    q.put(gt.pattern(1536 * KIB, 1))
    assert INITIAL < q._ring.size <= 2 * MIB + 4096
    with pytest.raises(queue.Full):
        q.put_nowait(gt.pattern(MIB, 2))
    _times_out(lambda: q.put(gt.pattern(MIB, 2), timeout=0.3), queue.Full, 0.3)
    with pytest.raises(corral.MessageTooLarge):
        q.put(bytes(3 * MIB))
    assert q.get(timeout=TIMEOUT) == gt.pattern(1536 * KIB, 1)
    # A message of exactly capacity_bytes fits (the last growth stops at it).
    exact = bytearray(gt.pattern(2 * MIB, 3))
    q.put(exact, timeout=TIMEOUT)
    assert q._ring.size == q._ring.capacity
    assert q.get(timeout=TIMEOUT) == exact
    assert q.qsize() == 0


def test_growth_keeps_order_when_the_live_frames_wrap() -> None:
    """The live frames wrap past the end of the lap (a pad ends it) when the ring
    grows: those before the pad move to the top of the new area, the others stay;
    every message comes out whole, in order, through get and get_many."""
    q: corral.Queue[bytes] = corral.Queue()
    _fill_wrapped(q)
    base_before = q._ring._q[_ring.Q_BASE]
    q.put(gt.pattern(900 * KIB, 4))
    assert q._ring.size == 2 * INITIAL
    assert q._ring._q[_ring.Q_BASE] != base_before  # the lap's end is offset 0 now
    assert q.get(timeout=TIMEOUT) == gt.pattern(200 * KIB, 2)
    assert q.get_many(5, timeout=TIMEOUT) == [gt.pattern(250 * KIB, 3), gt.pattern(900 * KIB, 4)]
    q.put_many([b"a", b"b"])
    assert q.get_many(5, timeout=TIMEOUT) == [b"a", b"b"]


def _fill_wrapped(q: corral.Queue[Any]) -> None:
    """Leave ``q`` (a fresh default queue) holding messages 2 and 3 of pattern
    lengths 200 and 250 KiB, message 3 past the pad that ends the first lap."""
    assert q._ring.size == INITIAL
    q.put(gt.pattern(700 * KIB, 1))
    q.put(gt.pattern(200 * KIB, 2))
    assert q.get(timeout=TIMEOUT) == gt.pattern(700 * KIB, 1)
    q.put(gt.pattern(250 * KIB, 3))
    ring = q._ring
    assert ring._q[_ring.Q_TAIL] - ring._q[_ring.Q_HEAD] > ring.off(ring._q[_ring.Q_TAIL])
    assert q._ring.size == INITIAL  # no growth yet: the lap wrapped


# -- every start method ------------------------------------------------------------------


def test_growth_is_seen_by_every_process(ctx: corral.CorralContext) -> None:
    """A child attached before the growth gets the messages of the grown queue and
    grows it further itself; the parent follows; a child started after the growth
    attaches to the grown queue."""
    q: corral.Queue[Any] = ctx.Queue()
    specs = [(100, i) for i in range(2000)] + [(3 * MIB, 2001)] + [(50, 2002)]
    child = ctx.Process(target=gt.check_then_reply, args=(q, specs, 10 * MIB))
    child.start()
    q.put_many([gt.pattern(n, tag) for n, tag in specs[:2000]], timeout=TIMEOUT)
    for n, tag in specs[2000:]:
        q.put(gt.pattern(n, tag), timeout=TIMEOUT)
    right, child_size = child.result(timeout=TIMEOUT)
    assert right == len(specs)
    assert child_size >= 16 * MIB  # the child grew it for its 10 MiB reply
    assert q.get(timeout=TIMEOUT) == gt.pattern(10 * MIB, 99)
    assert q._ring.size == child_size
    late = ctx.Process(target=gt.check_then_reply, args=(q, [(5 * MIB, 7)], 0))
    late.start()
    q.put(gt.pattern(5 * MIB, 7), timeout=TIMEOUT)
    assert late.result(timeout=TIMEOUT) == (1, child_size)
    assert q.qsize() == 0


def test_a_default_queue_carries_100_mib_each_way(ctx: corral.CorralContext) -> None:
    """multiprocessing.Queue takes a 100 MiB message; so does a default Queue, and
    gives the memory back after it (beyond RETAIN_BYTES)."""
    n = 100 * MIB
    q: corral.Queue[bytearray] = ctx.Queue()
    taken = ctx.Event()
    child = ctx.Process(target=gt.get_then_put_big, args=(q, n, taken))
    child.start()
    q.put(bytearray(gt.pattern(n, 1)), timeout=TIMEOUT)
    # Not before the child took it: this get could take back our own message.
    assert taken.wait(TIMEOUT)
    got = q.get(timeout=TIMEOUT)
    assert child.result(timeout=TIMEOUT) is True
    assert got == gt.pattern(n, 2)
    assert q.qsize() == 0
    # The area stays grown, but its pages past RETAIN_BYTES went back as consumed.
    assert q._ring.size >= n
    assert os.fstat(q._ring.fd).st_blocks * 512 <= _ring.RETAIN_BYTES + MIB


def test_a_queue_holds_one_fd_however_much_it_grew(ctx: corral.CorralContext) -> None:
    """A queue is one memfd, mapped with libc's mmap (Python's mmap keeps a
    duplicate of the fd per mapping): one fd in each process that uses it, before
    and after growth, here and in a child that grew it further."""
    q: corral.Queue[bytes] = ctx.Queue()
    inode = os.fstat(q._ring.fd).st_ino
    assert gt.fds_on(inode) == 1
    q.put(gt.pattern(3 * MIB, 1), timeout=TIMEOUT)  # grows it here, twice or more
    assert q.get(timeout=TIMEOUT) == gt.pattern(3 * MIB, 1)
    grown = q._ring.size
    assert grown >= 3 * MIB
    assert gt.fds_on(inode) == 1
    child = ctx.Process(target=gt.grow_then_count_fds, args=(q, 12 * MIB, inode))
    child.start()
    before, after, child_size = child.result(timeout=TIMEOUT)
    assert (before, after) == (1, 1)
    assert child_size > grown  # the child grew it further
    q.put(b"x", timeout=TIMEOUT)  # catches up with the child's growth here
    assert q.get(timeout=TIMEOUT) == b"x"
    assert q._ring.size == child_size
    assert gt.fds_on(inode) == 1


# -- faults --------------------------------------------------------------------------------

FAULTS = ["SIGKILL", "SIGSTOP"]


def _claimed_wrapped(q: corral.Queue[Any]) -> bytearray:
    """Leave ``q`` (a fresh default queue) holding a large message at ``head`` (one
    a getter copies out under a claim), "small", then a 300 KiB one past the pad
    that ends the lap: the live frames wrap."""
    q.put(gt.pattern(900 * KIB, 1))
    big = bytearray(gt.pattern(MIB, 2))
    q.put(big)
    assert q._ring.size == 2 * INITIAL
    assert q.get(timeout=TIMEOUT) == gt.pattern(900 * KIB, 1)
    q.put("small")
    q.put(gt.pattern(300 * KIB, 3))
    ring = q._ring
    assert ring._q[_ring.Q_TAIL] - ring._q[_ring.Q_HEAD] > ring.off(ring._q[_ring.Q_TAIL])
    return big


def _claiming_getter(
    ctx: corral.CorralContext, q: corral.Queue[Any], fault: str
) -> tuple[corral.Process, Connection]:
    """A child that gets from ``q`` and parks mid-copy, under its claim (SIGSTOPped
    there if ``fault`` says so). Returns it and the read end it reported on."""
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=targets.get_and_park, args=(q, "get:copied", w))
    p.start()
    w.close()
    _wait_for(r, b"get:copied")
    if fault == "SIGSTOP":
        _stop(p)
    return p, r


@pytest.mark.parametrize("fault", FAULTS)
def test_growth_waits_for_a_claim_on_frames_it_would_move(
    ctx: corral.CorralContext, fault: str
) -> None:
    """A getter copies a large message out under a claim (mutex let go) while the
    live frames wrap: a put that must grow the ring, which would move that frame,
    waits for the claim, within its timeout; small puts go on. Once the claimer is
    killed the put grows the ring, and every message is there, whole, once."""
    q: corral.Queue[Any] = ctx.Queue()
    first = _claimed_wrapped(q)
    p, r = _claiming_getter(ctx, q, fault)
    big = bytearray(gt.pattern(3 * MIB, 4))
    size = q._ring.size
    _times_out(lambda: q.put(big, timeout=0.3), queue.Full, 0.3)
    with pytest.raises(queue.Full):
        q.put_nowait(big)
    assert q._ring.size == size  # not grown under the claim
    q.put("meanwhile", timeout=TIMEOUT)
    _kill(p)
    r.close()
    q.put(big, timeout=TIMEOUT)
    assert q._ring.size > size
    assert q.get(timeout=TIMEOUT) == first
    assert q.get_many(3, timeout=TIMEOUT) == ["small", gt.pattern(300 * KIB, 3), "meanwhile"]
    assert q.get(timeout=TIMEOUT) == big
    with pytest.raises(queue.Empty):
        q.get_nowait()


@pytest.mark.parametrize("fault", ["none", *FAULTS])
def test_growth_under_a_claim_on_frames_that_stay(ctx: corral.CorralContext, fault: str) -> None:
    """The live frames do not wrap: a put grows the ring while another process
    copies the message at ``head`` out under a claim (nothing moves), paused or
    not. The claimer's message stays whole, for it (in this process, a thread,
    whose old mapping stays open until its copy is done) or, once it is killed,
    for the next getter."""
    q: corral.Queue[Any] = ctx.Queue()
    first = bytearray(gt.pattern(1536 * KIB, 1))
    q.put(first)
    q.put("small")
    big = bytearray(gt.pattern(3 * MIB, 3))
    size = q._ring.size
    if fault == "none":
        parked, resume = threading.Event(), threading.Event()
        got: list[Any] = []

        def hook(where: str) -> None:
            if where == "get:copied" and not parked.is_set():
                parked.set()
                assert resume.wait(TIMEOUT)

        _ring.set_hook(hook)
        t = threading.Thread(target=lambda: got.append(q.get(timeout=TIMEOUT)))
        try:
            t.start()
            assert parked.wait(TIMEOUT)
            q.put(big, timeout=TIMEOUT)  # grows, and this process maps the new area
            assert q._ring.size > size
            assert q._ring._retired  # the claim's mapping is still open
        finally:
            resume.set()
            t.join(TIMEOUT)
            _ring.set_hook(None)
        assert got == [first]
        assert q.get(timeout=TIMEOUT) == "small"
        q.put("after")  # (a later remap closes what was retired; none here)
    else:
        p, r = _claiming_getter(ctx, q, fault)
        q.put(big, timeout=TIMEOUT)
        assert q._ring.size > size
        _kill(p)
        r.close()
        assert q.get(timeout=TIMEOUT) == first
        assert q.get(timeout=TIMEOUT) == "small"
    assert q.get(timeout=TIMEOUT) == big
    if fault == "none":
        assert q.get(timeout=TIMEOUT) == "after"
    with pytest.raises(queue.Empty):
        q.get_nowait()


@pytest.mark.parametrize("fault", FAULTS)
def test_growth_waits_for_a_reservation(ctx: corral.CorralContext, fault: str) -> None:
    """A putter copies a large message in under a reservation, having grown the
    ring for it (the parent maps the grown area when it next looks). A put that
    must grow the ring further waits for the reservation, within its timeout;
    gets go on. Once the reserving putter is killed its message is never seen, and
    the put grows the ring."""
    q: corral.Queue[Any] = ctx.Queue()
    q.put("before")
    r, w = ctx.Pipe(duplex=False)
    reserved = bytearray(2 * _ring.COPY_CHUNK + 1)
    p = ctx.Process(target=targets.put_and_park, args=(q, reserved, "put:copy", w))
    p.start()
    w.close()
    _wait_for(r, b"put:copy")
    if fault == "SIGSTOP":
        _stop(p)
    assert q.get(timeout=TIMEOUT) == "before"
    size = q._ring.size
    assert size > 2 * _ring.COPY_CHUNK  # grown by the child
    big = bytearray(gt.pattern(40 * MIB, 4))
    _times_out(lambda: q.put(big, timeout=0.3), queue.Full, 0.3)
    assert q._ring.size == size
    _kill(p)
    r.close()
    q.put(big, timeout=TIMEOUT)
    assert q._ring.size > size
    assert q.get(timeout=TIMEOUT) == big
    with pytest.raises(queue.Empty):
        q.get_nowait()


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("point", ["grow:moved", "put:publish"])
def test_a_growing_putter_killed_or_paused(
    ctx: corral.CorralContext, point: str, fault: str
) -> None:
    """A putter grows a ring whose live frames wrap, and is stopped with the mutex
    held: after moving frames, before the commit ("grow:moved"), or after the
    commit, its frame written, before publishing it ("put:publish"). Paused, it
    delays nobody past their timeout; killed, it leaves the messages before it
    whole (in the old geometry or the new one), its own absent, and the queue
    working, the growth included. (The parent runs the C path, if built: a C
    repair after "put:publish" finds the geometry changed and leaves the recount to
    Python.)"""
    q: corral.Queue[Any] = ctx.Queue()
    _fill_wrapped(q)
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=targets.put_and_park, args=(q, gt.pattern(900 * KIB, 4), point, w))
    p.start()
    w.close()
    _wait_for(r, point.encode())
    if fault == "SIGSTOP":
        _stop(p)
        _times_out(lambda: q.get(timeout=0.3), queue.Empty, 0.3)
        t0 = time.monotonic()
        with pytest.raises(queue.Full):
            q.put_nowait("x")
        assert q.qsize() == 2
        assert time.monotonic() - t0 < SLACK
    _kill(p)
    r.close()
    # The first call after the death goes through C, if built (which repairs).
    assert q.get(timeout=TIMEOUT) == gt.pattern(200 * KIB, 2)
    assert q.qsize() == 1
    assert q.get(timeout=TIMEOUT) == gt.pattern(250 * KIB, 3)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    grown = q._ring.size > INITIAL
    assert grown == (point == "put:publish")
    q.put_many([gt.pattern(900 * KIB, 5), gt.pattern(1500 * KIB, 6)], timeout=TIMEOUT)
    assert q.get_many(5, timeout=TIMEOUT) == [gt.pattern(900 * KIB, 5), gt.pattern(1500 * KIB, 6)]
    assert q.qsize() == 0


@pytest.mark.skipif(_ring._speedups is None, reason="the C fast path is not built here")
def test_c_repair_after_a_growth_leaves_the_recount_to_python(ctx: corral.CorralContext) -> None:
    """A putter grows the ring, publishes its message and dies before counting it.
    The C call that next takes the mutex cannot walk the grown area (it has no
    mapping of it): it marks ``geo`` STALE and answers SLOW; the Python path maps
    the area, recounts (the published message included) and clears the mark."""
    q: corral.Queue[Any] = ctx.Queue()
    _fill_wrapped(q)
    r, w = ctx.Pipe(duplex=False)
    item = gt.pattern(900 * KIB, 4)
    p = ctx.Process(target=targets.put_publish_and_park, args=(q, item, "put:publish", w))
    p.start()
    w.close()
    _wait_for(r, b"put:publish")
    _kill(p)
    r.close()
    ring = q._ring
    assert ring.fast.get(False) == _ring.FAST_SLOW
    assert ring._q[_ring.Q_GEO] == 2 * INITIAL | 1  # grown, and STALE
    assert ring.size == INITIAL  # (this process has not caught up yet)
    assert q.qsize() == 3
    assert ring._q[_ring.Q_GEO] == ring.size == 2 * INITIAL
    assert q.get_many(5, timeout=TIMEOUT) == [
        gt.pattern(200 * KIB, 2),
        gt.pattern(250 * KIB, 3),
        item,
    ]
    q.put("after")
    assert q.get(timeout=TIMEOUT) == "after"


@pytest.mark.parametrize("point", ["grow:moved", "grow:committed"])
def test_an_interrupt_inside_a_growth(point: str) -> None:
    """An exception from a signal handler (KeyboardInterrupt) lands inside a
    growth, before or after its commit: the put raises it, leaves no lock held and
    nothing of its message, the messages before it whole, and the ring in the old
    geometry or wholly in the new one; the queue keeps working, growing included."""
    q: corral.Queue[Any] = corral.Queue()
    _fill_wrapped(q)

    def hook(where: str) -> None:
        if where == point:
            raise KeyboardInterrupt

    _ring.set_hook(hook)
    try:
        with pytest.raises(KeyboardInterrupt):
            q.put(gt.pattern(900 * KIB, 4))
    finally:
        _ring.set_hook(None)
    ring = q._ring
    assert ring._mutex.owner_tid() == 0  # not left held
    assert ring.size == (2 * INITIAL if point == "grow:committed" else INITIAL)
    assert ring._q[_ring.Q_GEO] == ring.size
    assert q.qsize() == 2
    assert q.get(timeout=TIMEOUT) == gt.pattern(200 * KIB, 2)
    q.put(gt.pattern(3 * MIB, 5))
    assert q.get_many(5, timeout=TIMEOUT) == [gt.pattern(250 * KIB, 3), gt.pattern(3 * MIB, 5)]


# -- 200 queues in 4 GiB -----------------------------------------------------------------

RLIMIT_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    import corral
    from corral._core import _ringlayout

    if __name__ == "__main__":
        n = int(sys.argv[1])
        queues = [corral.Queue() for _ in range(n)]
        for i, q in enumerate(queues):
            q.put(("hello", i))
            assert q.get(timeout=5) == ("hello", i)
        print(len(queues), _ringlayout.speedups is not None)
    """
)


def _run_script(
    text: str, path: str, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run ``text`` as a script in a child interpreter on the C or the pure path;
    it must succeed."""
    script = tmp_path / "script.py"
    script.write_text(text)
    env = dict(os.environ)
    env.pop("CORRAL_PURE_PYTHON", None)
    if path == "pure":
        env["CORRAL_PURE_PYTHON"] = "1"
    out = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return out


@pytest.mark.parametrize("path", ["C", "pure"])
def test_200_default_queues_in_a_4_gib_address_space(path: str, tmp_path: Path) -> None:
    out = _run_script(RLIMIT_SCRIPT, path, tmp_path, "200")
    count, fast = out.stdout.split()
    assert count == "200"
    built = importlib.util.find_spec("corral._core._speedups") is not None
    assert fast == str(path == "C" and built)


NO_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (768 << 20, 768 << 20))
    import corral

    if __name__ == "__main__":
        q = corral.Queue()
        q.put("before")
        big = bytearray(300 << 20)  # the queue would double to 512 MiB for it: too much
        try:
            q.put(big)
        except MemoryError:
            print("MemoryError")
        del big
        assert q.qsize() == 1
        assert q.get(timeout=5) == "before"
        q.put("after")
        assert q.get_nowait() == "after"
        print(q._ring.size)
    """
)


@pytest.mark.parametrize("path", ["C", "pure"])
def test_a_growth_without_memory_raises_and_changes_nothing(path: str, tmp_path: Path) -> None:
    out = _run_script(NO_MEMORY_SCRIPT, path, tmp_path)
    assert out.stdout.split() == ["MemoryError", str(INITIAL)]


def test_a_finished_copy_forgets_its_own_mapping_not_an_equal_one() -> None:
    """Claims copying out of mappings are tracked in a list: the one finished is
    removed by identity (``list.remove`` would compare two mappings' bytes, and take
    the first equal one, whose mapping could then be unmapped under its copy)."""
    q = corral.Queue()
    try:
        ring = q._ring
        first, second = memoryview(bytearray(64)), memoryview(bytearray(64))
        ring._copies.extend([first, second])
        ring._copy_done(second)
        assert len(ring._copies) == 1
        assert ring._copies[0] is first
        ring._copy_done(first)
        assert ring._copies == []
    finally:
        q.close()
        q.join_thread()
