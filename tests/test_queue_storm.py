"""A kill storm against an in-process model of the queue (hypothesis, stateful).

Producers and consumers in child processes are SIGKILLed at random points of their
puts and gets, while the test process puts and gets too. The model is the list of
messages the queue may hold, in order, each either *definite* (its put finished)
or *maybe* (its put, or a get of it, was cut by a kill). Every message got must be
the first definite one, or a maybe before it (which were then absent); ``qsize()``
must lie between the number of definite messages and that plus the maybes.

``test_kill_storm_while_growing`` runs the same storm on a queue whose data area
starts at one page, nearly full, so that the puts of the killed producers grow it.
"""

from __future__ import annotations

import itertools
import queue
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

import corral
from corral._core import _ring, _ringbase, _ringsingle

from . import queue_targets as targets

# Typed or not depending on the hypothesis release; call it through one signature.
_run_state_machine = cast(Callable[..., None], run_state_machine_as_test)

TIMEOUT = 30.0
DEFINITE, MAYBE = "definite", "maybe"


class Model:
    def __init__(self) -> None:
        self.entries: list[list[Any]] = []  # [(id, payload length), status]

    def add(self, value: Any, status: str = DEFINITE) -> None:
        self.entries.append([value, status])

    @property
    def definite(self) -> int:
        return sum(1 for _, s in self.entries if s == DEFINITE)

    def got(self, value: Any) -> None:
        """``value`` was got: an (id, payload) item, or the id a consumer reported."""
        if isinstance(value, tuple):
            ident, payload = value
            assert not any(payload), "payload corrupted"
            value = (ident, len(payload))
        for n, (v, status) in enumerate(self.entries):
            if v == value or v[0] == value:
                del self.entries[: n + 1]  # the maybes before it were absent
                return
            if status == DEFINITE:
                raise AssertionError(f"got {value!r}, but {v!r} was definitely ahead of it")
        raise AssertionError(f"got {value!r}, which the model does not hold")

    def empty_seen(self) -> None:
        assert self.definite == 0, f"queue empty, but the model holds {self.entries}"
        self.entries.clear()

    def maybe_taken(self) -> None:
        """A killed consumer may have taken the first present message, unreported."""
        for entry in self.entries:
            status = entry[1]
            entry[1] = MAYBE
            if status == DEFINITE:
                return


def machine_for(ctx: corral.CorralContext, prefill: int = 0) -> type[RuleBasedStateMachine]:
    """The storm, on queues made in ``ctx`` that start with a message of
    ``prefill`` bytes if it is not 0."""

    class QueueUnderFire(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.q = ctx.Queue(capacity_bytes=4 * 1024 * 1024)
            self.model = Model()
            self.ids = itertools.count()
            if prefill:
                self.q.put((next(self.ids), bytes(prefill)), timeout=TIMEOUT)
                self.model.add((0, prefill))

        def _items(self, sizes: list[int]) -> list[tuple[int, Any]]:
            # Odd sizes travel as numpy arrays: out-of-band buffers, and (with
            # CLAIM_BYTES lowered by the test) copied out under a claim.
            return [(next(self.ids), np.zeros(s, np.uint8) if s % 2 else bytes(s)) for s in sizes]

        @rule(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=4))
        def put(self, sizes: list[int]) -> None:
            items = self._items(sizes)
            if len(items) == 1:
                self.q.put(items[0], timeout=TIMEOUT)
            else:
                self.q.put_many(items, timeout=TIMEOUT)
            for ident, payload in items:
                self.model.add((ident, len(payload)))

        @rule(n=st.integers(1, 3))
        def get(self, n: int) -> None:
            for _ in range(n):
                if self.model.definite:
                    self.model.got(self.q.get(timeout=TIMEOUT))
                else:
                    try:
                        self.model.got(self.q.get_nowait())
                    except queue.Empty:
                        self.model.empty_seen()

        @rule(n=st.integers(1, 6))
        def get_many(self, n: int) -> None:
            try:
                got = self.q.get_many(n, block=False)
            except queue.Empty:
                self.model.empty_seen()
                return
            assert 1 <= len(got) <= n
            for x in got:
                self.model.got(x)

        @rule(sizes=st.lists(st.integers(0, 20_000), min_size=1, max_size=5), data=st.data())
        def kill_producer(self, sizes: list[int], data: st.DataObject) -> None:
            items = self._items(sizes)
            seen = data.draw(st.integers(1, len(items)), label="tokens before the kill")
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=targets.put_with_tokens, args=(self.q, items, w))
            p.start()
            w.close()
            for i in range(seen):
                assert r.poll(TIMEOUT), "producer made no progress"
                assert r.recv() == i
            p.kill()
            p.join(TIMEOUT)
            r.close()
            # Token i is sent once items[:i] are all put; the rest may or may not be.
            for n, (ident, payload) in enumerate(items):
                self.model.add((ident, len(payload)), DEFINITE if n < seen - 1 else MAYBE)

        @rule(wanted=st.integers(0, 3))
        def kill_consumer(self, wanted: int) -> None:
            # Only as many reports as are sure to come. (Drawn independently of the
            # model, whose state depends on how the kills fell: hypothesis needs the
            # same draws to replay a failure.)
            reports = min(wanted, self.model.definite)
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=targets.get_with_reports, args=(self.q, w))
            p.start()
            w.close()
            for _ in range(reports):
                assert r.poll(TIMEOUT), "consumer made no progress"
                self.model.got(r.recv())
            p.kill()
            p.join(TIMEOUT)
            while r.poll(0):  # whatever it reported before dying was got
                try:
                    self.model.got(r.recv())
                except EOFError:
                    break
            r.close()
            self.model.maybe_taken()

        @invariant()
        def qsize_within_model(self) -> None:
            n = self.q.qsize()
            definite = self.model.definite
            assert definite <= n <= len(self.model.entries), (n, self.model.entries)

        def teardown(self) -> None:
            while True:
                try:
                    self.model.got(self.q.get_nowait())
                except queue.Empty:
                    break
            self.model.empty_seen()
            self.q.put("still works")
            assert self.q.get(timeout=TIMEOUT) == "still works"
            self.q.close()

    return QueueUnderFire


def test_kill_storm(
    ctx: corral.CorralContext, start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_ringsingle, "CLAIM_BYTES", 0)  # (forked children inherit it)
    fast = start_method == "fork"
    _run_state_machine(
        machine_for(ctx),
        settings=settings(
            max_examples=20 if fast else 4,
            stateful_step_count=10 if fast else 6,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


def test_kill_storm_while_growing(
    ctx: corral.CorralContext, start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_ringsingle, "CLAIM_BYTES", 0)
    monkeypatch.setattr(_ringbase, "INITIAL_BYTES", _ring.PAGE)  # (read when a ring is made)
    fast = start_method == "fork"
    # A page with 3.5 KiB in it: nearly any put grows it, and killed producers die
    # growing it.
    _run_state_machine(
        machine_for(ctx, prefill=3584),
        settings=settings(
            max_examples=10 if fast else 3,
            stateful_step_count=10 if fast else 6,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_storm_soak(ctx: corral.CorralContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ringsingle, "CLAIM_BYTES", 0)
    _run_state_machine(
        machine_for(ctx),
        settings=settings(
            max_examples=200,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
