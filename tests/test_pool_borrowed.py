"""A list given to map/imap is read in place while the call runs, not copied.

So the call is defined as the list was at the call: items the caller appends
meanwhile are not run, and a list the caller shortens meanwhile fails the call with
a ``CorralError`` saying so (``Job.shortened``), at the call that read it, while the
pool goes on. (multiprocessing's ``map`` waits for the missing items for ever.)

Every item here waits at a gate (``pool_targets.gated``) until the test opens it, so
the list is changed while the call has taken only its first few items: two running,
one more sent ahead to each worker.
"""

from __future__ import annotations

import collections
import functools
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import corral
from tests import pool_targets as t
from tests.leaks import wait_until

TIMEOUT = 60.0
N = 20
KEPT = 2  # the length the list is cut to


def runs(where: Path) -> collections.Counter[int]:
    path = where / "runs"
    if not path.exists():
        return collections.Counter()
    return collections.Counter(int(line) for line in path.read_text().split())


def until_error(it: Any) -> tuple[list[Any], BaseException | None]:
    """An imap's results up to its end or its first error (each within TIMEOUT)."""
    out: list[Any] = []
    while True:
        try:
            out.append(it.next(TIMEOUT))
        except StopIteration:
            return out, None
        except corral.CorralError as exc:
            return out, exc


def _map(pool: corral.Pool, fn: Callable[[int], int], items: list[int]) -> Callable[[], Any]:
    res = pool.map_async(fn, items, chunksize=1)

    def outcome() -> tuple[list[Any], BaseException | None]:
        try:
            return res.get(TIMEOUT), None
        except corral.CorralError as exc:
            return [], exc

    return outcome


def _imap(pool: corral.Pool, fn: Callable[[int], int], items: list[int]) -> Callable[[], Any]:
    it = pool.imap(fn, items, chunksize=1)
    return lambda: until_error(it)


def _imap_unordered(
    pool: corral.Pool, fn: Callable[[int], int], items: list[int]
) -> Callable[[], Any]:
    it = pool.imap_unordered(fn, items, chunksize=1)
    return lambda: until_error(it)


CALLS = {"map_async": _map, "imap": _imap, "imap_unordered": _imap_unordered}


def _started(where: Path) -> bool:
    return any(where.glob("started-*"))


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("change", ["shortened", "grown"])
def test_a_list_changed_while_the_call_runs(
    ctx: corral.CorralContext, tmp_path: Path, call: str, change: str
) -> None:
    fn = functools.partial(t.gated, where=str(tmp_path))
    items = list(range(N))
    with corral.Pool(2, context=ctx) as pool:
        outcome = CALLS[call](pool, fn, items)
        assert wait_until(lambda: _started(tmp_path), TIMEOUT)
        if change == "shortened":
            del items[KEPT:]
        else:
            items.extend(range(100, 100 + N))
        (tmp_path / "go").touch()
        values, error = outcome()
        assert pool.map(t.double, range(5)) == [0, 2, 4, 6, 8]  # the pool goes on
    ran = runs(tmp_path)
    assert all(n == 1 for n in ran.values()), ran
    if change == "grown":
        assert error is None
        assert sorted(values) == [2 * x for x in range(N)]
        assert set(ran) == set(range(N))  # the appended items are not the call's
        return
    assert isinstance(error, corral.CorralError)
    assert f"shortened from {N} to {KEPT} items" in str(error), error
    # Only what was taken before the change ran: the running items and one sent
    # ahead to each worker. What an imap gave before its error is theirs, in order
    # if ordered (items whose results came after the error are not given).
    assert set(ran) <= set(range(2 * 2)), ran
    assert set(values) <= {2 * x for x in ran}, (values, ran)
    if call == "imap":
        assert values == [2 * x for x in range(len(values))]


def test_a_list_shortened_before_an_item_is_run_again(
    ctx: corral.CorralContext, tmp_path: Path
) -> None:
    """The worker running item 0 dies after the list was cut: item 0 (a retry due)
    and item 1 (sent ahead to it) are gone from the list, and the map fails saying
    so rather than reading past the list's end."""
    fn = functools.partial(t.gated, where=str(tmp_path))
    items = list(range(N))
    with corral.Pool(1, context=ctx, retries=1) as pool:
        res = pool.map_async(fn, items, chunksize=1)
        started = tmp_path / "started-0"
        assert wait_until(started.exists, TIMEOUT)
        pid = int(started.read_text())
        del items[:]
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(corral.CorralError, match=f"shortened from {N} to 0 items"):
            res.get(TIMEOUT)
        (tmp_path / "go").touch()
        assert pool.map(t.double, range(5)) == [0, 2, 4, 6, 8]
    assert runs(tmp_path) == {0: 1}
