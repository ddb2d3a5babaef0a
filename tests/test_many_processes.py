"""No fixed process limit, and no error path that leaves internal state locked.

- Many processes wait on one object at once: more than the 120 slots of a
  monitor's page (the default run: 150), and 1,000 in the slow run. The slots
  grow (``_core._monitor``: a growth area in the same memfd); nothing raises.
- An error injected inside each object's bookkeeping, with its internal mutex
  held, leaves that mutex free and the object working.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import pytest

import corral
from corral._core._monitor import NSLOTS
from tests.conftest import wait_until

TIMEOUT = 120.0
KINDS = ["Lock", "Semaphore", "Event"]


def _wait_on(kind: str, obj: Any, counter: Any) -> bool:
    if kind == "Lock":
        with obj:
            counter.value += 1
        return True
    if kind == "Semaphore":
        return bool(obj.acquire(timeout=TIMEOUT))
    return bool(obj.wait(TIMEOUT))


def _crowd(kind: str, n: int) -> None:
    ctx = corral.get_context("fork")
    obj: Any = corral.Semaphore(0) if kind == "Semaphore" else getattr(corral, kind)()
    counter = corral.RawValue("i", 0)
    if kind == "Lock":
        assert obj.acquire(timeout=TIMEOUT)
    procs = [ctx.Process(target=_wait_on, args=(kind, obj, counter)) for _ in range(n)]
    try:
        for p in procs:
            p.start()
        # Every one of them is asleep in the object, each with its own slot.
        assert wait_until(lambda: obj.statistics().waiters == n, TIMEOUT)
        if kind == "Lock":
            obj.release()
        elif kind == "Semaphore":
            obj.release(n)
        else:
            obj.set()
        assert [p.result(timeout=TIMEOUT) for p in procs] == [True] * n
    finally:
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                p.kill()
            if p.pid is not None:
                p.join(TIMEOUT)
    if kind == "Lock":
        assert counter.value == n
    assert len(obj._mon.slots) >= n > NSLOTS


@pytest.mark.parametrize("kind", KINDS)
def test_more_processes_than_a_page_of_slots(kind: str) -> None:
    _crowd(kind, NSLOTS + 30)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_thousand_processes_on_one_object(kind: str) -> None:
    _crowd(kind, 1000)


# -- errors inside the bookkeeping, with the internal mutex held


class Injected(Exception):
    pass


def _raise(*args: object) -> Any:
    raise Injected


def _holding_thread(lock: corral.Lock, held: threading.Event, done: threading.Event) -> None:
    with lock:
        held.set()
        done.wait(TIMEOUT)


ROWS = [
    ("Semaphore", "acquire"),
    ("Semaphore", "release"),
    ("Lock", "acquire"),
    ("Event", "wait"),
    ("Condition", "wait"),
    ("Barrier", "wait"),
    ("Queue", "get"),
    ("Queue", "put"),
]


@pytest.mark.parametrize(("kind", "call"), ROWS, ids=[f"{k}-{c}" for k, c in ROWS])
def test_an_error_inside_the_bookkeeping_leaves_nothing_locked(
    kind: str, call: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    obj: Any = corral.Semaphore(0) if kind == "Semaphore" else corral.Barrier(2)
    if kind not in ("Semaphore", "Barrier"):
        obj = getattr(corral, kind)(maxsize=1) if kind == "Queue" else getattr(corral, kind)()
    held, done = threading.Event(), threading.Event()
    keeper = None
    if kind == "Lock":  # so that acquire() takes the slow path, which counts waiters
        keeper = threading.Thread(target=_holding_thread, args=(obj, held, done))
        keeper.start()
        assert held.wait(TIMEOUT)
    if kind == "Queue":
        if call == "put":
            obj.put("fill")  # full: the put sleeps, through _room
            monkeypatch.setattr(obj._ring, "_sleep", _raise)
        else:
            monkeypatch.setattr(obj._ring, "_items", _raise)
        mutex = obj._ring._mutex
    else:
        monkeypatch.setattr(obj._mon, "my_slot", _raise)
        mutex = obj._mon.mutex
    try:
        with pytest.raises(Injected):
            _call(kind, call, obj)
        assert mutex.owner_tid() == 0  # the internal mutex is free again
    finally:
        monkeypatch.undo()
        done.set()
        if keeper is not None:
            keeper.join(TIMEOUT)
    _still_works(kind, obj)


def _call(kind: str, call: str, obj: Any) -> None:
    if kind == "Queue":
        if call == "put":
            obj.put("more", timeout=1)
        else:
            obj.get(timeout=1)
    elif call == "release":
        obj.release()
    elif kind == "Condition":
        with obj:
            obj.wait(1)
    elif kind in ("Event", "Barrier"):
        obj.wait(1)
    else:
        obj.acquire(timeout=1)


def _still_works(kind: str, obj: Any) -> None:
    if kind == "Semaphore":
        obj.release()
        assert obj.acquire(timeout=TIMEOUT)
    elif kind == "Lock":
        assert obj.acquire(timeout=TIMEOUT)
        obj.release()
    elif kind == "Event":
        obj.set()
        assert obj.wait(TIMEOUT)
    elif kind == "Condition":
        with obj:
            assert obj.wait(0.01) is False
    elif kind == "Barrier":
        obj.reset()
        got: list[int] = []
        t = threading.Thread(target=lambda: got.append(obj.wait(TIMEOUT)))
        t.start()
        mine = obj.wait(TIMEOUT)
        t.join(TIMEOUT)
        assert sorted([mine, *got]) == [0, 1]
    else:
        while obj.qsize():
            obj.get(timeout=TIMEOUT)
        obj.put("x")
        assert obj.get(timeout=TIMEOUT) == "x"
        with pytest.raises(queue.Empty):
            obj.get_nowait()
