"""corral.Pipeline: stages of worker pools, end-of-stream, error policies, crashes."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import corral
from tests import pool_targets as t

TIMEOUT = 30.0


def test_two_stages_ordered_and_unordered(ctx: corral.CorralContext) -> None:
    p = corral.Pipeline(range(500), context=ctx).stage(t.double, workers=2).stage(t.double)
    assert list(p) == [x * 4 for x in range(500)]
    p = corral.Pipeline(range(500), ordered=False, context=ctx).stage(t.double, workers=2)
    assert sorted(p.run()) == [x * 2 for x in range(500)]


def test_batching(ctx: corral.CorralContext) -> None:
    p = corral.Pipeline(range(10), context=ctx).stage(t.batch_double, batch=3).stage(t.double)
    assert list(p) == [x * 4 for x in range(10)]


def test_skip_policy_records_stage_and_item(ctx: corral.CorralContext) -> None:
    p = (
        corral.Pipeline(range(20), context=ctx)
        .stage(t.fail_if_odd, workers=2, on_error="skip")
        .stage(t.double)
    )
    assert list(p) == [x * 4 for x in range(0, 20, 2)]
    assert sorted(e.item for e in p.errors) == list(range(1, 20, 2))
    assert {e.stage for e in p.errors} == {"fail_if_odd"}
    assert isinstance(p.errors[0].__cause__, ValueError)


def test_stop_policy_raises_from_an_early_stage(ctx: corral.CorralContext) -> None:
    p = corral.Pipeline(range(20), context=ctx).stage(t.fail_if_odd).stage(t.double)
    with pytest.raises(corral.StageError, match="odd item 1") as info:
        list(p)
    assert info.value.stage == "fail_if_odd"
    assert info.value.item == 1
    assert isinstance(info.value.__cause__, ValueError)


def test_infinite_source_and_early_exit(ctx: corral.CorralContext) -> None:
    pulled = 0

    def source() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    it = iter(corral.Pipeline(source(), capacity=64, context=ctx).stage(t.double, workers=2))
    assert [next(it) for _ in range(1000)] == [x * 2 for x in range(1000)]
    it.close()  # type: ignore[attr-defined]
    assert pulled < 1000 + 64 + 2 * 4 * 4096 + 64  # consumed + feed + window + pump


def test_killed_stage_worker_loses_nothing(ctx: corral.CorralContext, tmp_path: Path) -> None:
    """SIGKILL a stage worker mid-item: every item still comes out exactly once."""
    q = corral.Queue()
    n, bad = 300, 150
    p = (
        corral.Pipeline(((x, bad, str(tmp_path / "m")) for x in range(n)), context=ctx)
        .stage(t.block_once_item, workers=2, retries=1, initializer=t.set_channel, initargs=(q,))
        .stage(t.double, workers=1)
    )
    it = iter(p)
    first = next(it)
    pid, item = q.get(timeout=TIMEOUT)
    assert item == bad
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    rest = list(it)
    assert [first, *rest] == [x * 4 for x in range(n)]
    assert time.monotonic() - t0 < TIMEOUT


def test_batched_skip_drops_only_the_bad_items(ctx: corral.CorralContext) -> None:
    """A failing batch runs again item by item: 3 bad of 20 skip 3, not 3 batches."""
    p = corral.Pipeline(range(20), context=ctx).stage(
        t.batch_fail_on_multiples_of_7, workers=2, batch=4, on_error="skip"
    )
    assert list(p) == [x * 2 for x in range(20) if x not in (7, 14)]
    assert sorted(e.item for e in p.errors) == [7, 14]
    assert {e.stage for e in p.errors} == {"batch_fail_on_multiples_of_7"}
    assert all(isinstance(e.__cause__, ValueError) for e in p.errors)


def test_a_crash_in_a_skip_stage_names_its_item(ctx: corral.CorralContext) -> None:
    p = corral.Pipeline(range(20), context=ctx).stage(t.die_on_13, workers=2, on_error="skip")
    assert list(p) == [x for x in range(20) if x != 13]
    assert [e.item for e in p.errors] == [13]
    assert isinstance(p.errors[0].__cause__, corral.WorkerCrashed)
