"""A producer SIGKILLed in the middle of putting a large message.

corral: the killed put leaves nothing visible; the messages before it arrive whole,
``get(timeout=1)`` returns on time, and other producers carry on.

multiprocessing: the killed producer's feeder thread had written part of the frame
into the pipe and held the queue's write lock. A consumer reads the partial frame
and blocks forever, ``get(timeout=1)`` included; it is run in a child under a
timeout and killed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import signal
import time
from multiprocessing.connection import Connection

from ... import _queue
from ..._core import _ring
from ..._process import process_class_for
from . import Report, scenario

BIG = 64 * 1024 * 1024  # bytes in the message being put when the producer dies
STDLIB_PATIENCE = 5.0  # seconds the stdlib consumer gets before it is called stuck


def _corral_producer(q: _queue.Queue, conn: Connection) -> None:
    q.put("first")
    q.put("second")

    def hook(where: str) -> None:  # stop inside the copy of the big message
        if where == "put:copy":
            conn.send_bytes(b"copying")
            signal.pause()

    _ring.set_hook(hook)
    q.put(bytearray(BIG))


def _corral_late_producer(q: _queue.Queue) -> None:
    q.put("from another producer")


def _stdlib_producer(q: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    q.put("first")
    q.put(bytearray(BIG))
    time.sleep(60)  # the feeder thread is still writing when we are killed


def _stdlib_side(conn: Connection) -> None:
    """Runs in a child: the stdlib's queue, its producer killed mid-put."""
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_stdlib_producer, args=(q,))
    p.start()
    q.get(timeout=10)  # "first": the next frame is being written now
    deadline = time.monotonic() + 10
    while not q._reader.poll(0.01) and time.monotonic() < deadline:  # type: ignore[attr-defined]
        pass
    p.kill()
    p.join()
    conn.send("killed")
    t0 = time.monotonic()
    try:
        q.get(timeout=1)
        conn.send("got a message")
    except queue.Empty:
        conn.send(f"Empty after {time.monotonic() - t0:.2f} s")


@scenario(
    "queue-kill",
    "a producer SIGKILLed mid-put: corral's queue carries on, multiprocessing.Queue is stuck",
)
def run(ns: argparse.Namespace, report: Report) -> None:
    Process = process_class_for("fork")
    q = _queue.Queue(capacity_bytes=2 * BIG)
    r, w = multiprocessing.Pipe(duplex=False)
    p = Process(target=_corral_producer, args=(q, w))
    p.start()
    w.close()
    reached = r.poll(30) and r.recv_bytes() == b"copying"
    p.kill()
    p.join(30)
    r.close()
    report.check(
        "corral: producer killed while copying a 64 MiB message",
        bool(reached) and p.exitcode == -signal.SIGKILL,
        f"exit code {p.exitcode}",
    )
    got = [q.get(timeout=5), q.get(timeout=5)]
    report.check(
        "corral: the messages put before arrive whole", got == ["first", "second"], repr(got)
    )
    t0 = time.monotonic()
    try:
        q.get(timeout=1)
        outcome = "got a message"
    except queue.Empty:
        outcome = "Empty"
    elapsed = time.monotonic() - t0
    report.check(
        "corral: get(timeout=1) honours its timeout, nothing half-written shows",
        outcome == "Empty" and elapsed < 2,
        f"{outcome} after {elapsed:.2f} s",
    )
    late = Process(target=_corral_late_producer, args=(q,))
    late.start()
    late.join(30)
    item = q.get(timeout=5)
    q.put(bytearray(BIG))
    big_ok = len(q.get(timeout=5)) == BIG
    report.check(
        "corral: the queue keeps working for everyone else",
        item == "from another producer" and big_ok and q.empty(),
    )

    r, w = multiprocessing.Pipe(duplex=False)
    side = Process(target=_stdlib_side, args=(w,))
    side.start()
    w.close()
    verdict = "no answer"
    if r.poll(30) and r.recv() == "killed":
        verdict = (
            r.recv()
            if r.poll(STDLIB_PATIENCE)
            else (f"stuck: get(timeout=1) still blocked after {STDLIB_PATIENCE:.0f} s")
        )
    side.kill()
    side.join(30)
    r.close()
    report.note(
        f"multiprocessing.Queue after the same kill: {verdict} (run in a child "
        "under a timeout, then killed)"
    )
