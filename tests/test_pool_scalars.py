"""Plain scalars on the pool's wire: packed and read back in C, never a Pickler.

``_speedups.dump_scalars`` pickles a list of ints, floats, bools, None and short
str and bytes itself (a chunk's items, a worker's committed values), and the parent reads a
commit of those straight into ``map``'s result list (``load_scalars_into``). Every
value must come back equal and of its exact type, whichever path it took; anything
the C code does not handle must take pickle's path unharmed.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest

import corral
from corral._core._native import speedups
from corral._pool import _jobs, _wire
from tests import pool_targets as t
from tests.test_pool_log import EDGE_VALUES, same

TIMEOUT = 60.0

_NEED_C = pytest.mark.skipif(speedups is None, reason="the C extension is not built")

MAX_LEN = getattr(speedups, "DUMP_SCALARS_MAX_LEN", 255)

# The edge values that dump_scalars packs; any other makes a list fall back to pickle.
SCALAR_TYPES = (type(None), bool, int, float, str, bytes)


def packs(value: Any) -> bool:
    if type(value) not in SCALAR_TYPES:
        return False
    if type(value) is int:
        return -(2**63) <= value < 2**63
    if type(value) in (str, bytes) and len(value) > MAX_LEN:  # long ones: see below
        return False
    if type(value) is str:
        try:
            value.encode()
        except UnicodeEncodeError:  # a lone surrogate: pickle decides what it does
            return False
    return True


@_NEED_C
@pytest.mark.parametrize("value", EDGE_VALUES, ids=repr)
def test_dump_scalars_reads_back_as_pickle_would(value: Any) -> None:
    assert speedups is not None
    data = speedups.dump_scalars([value, 7, value])
    assert (data is not None) == packs(value)
    if data is not None:
        got = pickle.loads(data)
        assert len(got) == 3
        assert got[1] == 7
        assert same(got[0], value)
        assert same(got[2], value)


@_NEED_C
def test_dump_scalars_packs_only_exact_lists_and_the_empty_one() -> None:
    assert speedups is not None
    assert pickle.loads(speedups.dump_scalars([])) == []
    assert speedups.dump_scalars((1, 2)) is None  # a tuple is not a list of outcomes
    assert speedups.dump_scalars(type("L", (list,), {})([1])) is None
    # The widest items it packs, well past its first guess of the size:
    widest = ["\u00e9" * MAX_LEN, "\U0001f600" * MAX_LEN, b"b" * MAX_LEN] * 50
    assert pickle.loads(speedups.dump_scalars(widest)) == widest


def test_a_long_str_repeated_is_pickled_once() -> None:
    """No memo in dump_scalars: long str and bytes are left to pickle, which writes
    a repeated object once (1,000 references to 1 MiB: not 1 GiB on the wire)."""
    text = "t" * (1 << 20)
    frame = _wire.encode([text] * 1000)
    try:
        assert len(frame.data) < 2 << 20
        assert pickle.loads(frame.data[_wire._HEADER.size :]) == [text] * 1000
    finally:
        frame.discard()
    assert speedups is None or speedups.dump_scalars(["s" * (MAX_LEN + 1)]) is None
    assert speedups is None or speedups.dump_scalars([b"s" * (MAX_LEN + 1)]) is None


@_NEED_C
def test_dump_scalars_of_a_slice_is_the_slices_pickle() -> None:
    """A chunk's items are packed from the caller's list, by start and stop."""
    assert speedups is not None
    items = [v for v in EDGE_VALUES if packs(v)]
    n = len(items)
    for start, stop in [(0, n), (0, 0), (3, 4), (5, n), (n, n)]:
        got = pickle.loads(speedups.dump_scalars(items, start, stop))
        assert len(got) == stop - start
        assert all(same(a, b) for a, b in zip(got, items[start:stop], strict=True))
    assert speedups.dump_scalars([1, 2, [3]], 0, 2) is not None  # (the list stops before)
    for start, stop in [(-1, 2), (2, 1), (0, n + 1)]:
        with pytest.raises(IndexError):
            speedups.dump_scalars(items, start, stop)


@_NEED_C
def test_load_scalars_into_fills_exactly_its_slice() -> None:
    assert speedups is not None
    values = [v for v in EDGE_VALUES if packs(v)]
    data = speedups.dump_scalars(values)
    target: list[Any] = ["before"] + [None] * len(values) + ["after"]
    assert speedups.load_scalars_into(data, target, 1, len(values)) is True
    assert target[0] == "before"
    assert target[-1] == "after"
    assert all(same(a, b) for a, b in zip(target[1:-1], values, strict=True))


@_NEED_C
def test_load_scalars_into_leaves_the_target_alone_for_anything_else() -> None:
    assert speedups is not None
    values = [1, 2.5, "three", b"four", None, True]
    data = speedups.dump_scalars(values)
    n = len(values)
    refused: dict[str, tuple[Any, int, int]] = {
        "a Pickler's pickle": (pickle.dumps(values, 5), 0, n),
        "one item fewer than said": (data, 0, n + 1),
        "one item more than said": (data, 0, n - 1),
        "past the target's end": (data, 2, n),
        "a negative start": (data, -1, n),
        "no items": (speedups.dump_scalars([]), 0, 0),
        "an opcode it does not read": (data[:2] + b"]" + data[2:], 0, n),
    }
    for cut in range(len(data) - 2):  # every truncation (data ends with APPENDS, STOP)
        refused[f"cut at {cut}"] = (data[:cut] + b"e.", 0, n)
    for what, (blob, start, count) in refused.items():
        target: list[Any] = [None] * (n + 1)
        assert speedups.load_scalars_into(blob, target, start, count) is False, what
        assert target == [None] * (n + 1), what


# Results by kind for the pool: all scalars (the whole commit read in place), a
# scalar list with one value pickle must take (the whole commit falls back), and
# values that only pickle handles.
RESULTS: dict[str, list[Any]] = {
    "scalars": [v for v in EDGE_VALUES if packs(v)] * 3,
    "one-past-int64": [*range(40), 2**63, *range(40)],
    "mixed": list(EDGE_VALUES) * 2,
}


@pytest.mark.parametrize("chunksize", [1, 4, None], ids=["chunk1", "chunk4", "auto"])
@pytest.mark.parametrize("kind", list(RESULTS))
def test_map_returns_each_value_equal_and_of_its_type(
    ctx: corral.CorralContext, kind: str, chunksize: int | None
) -> None:
    values = RESULTS[kind]
    with corral.Pool(2, context=ctx) as pool:
        got = pool.map_async(t.identity, values, chunksize).get(TIMEOUT)
        # Counted before the call returned: the in-place path counts, then delivers.
        assert pool.statistics().tasks_completed == len(values)
    assert len(got) == len(values)
    assert all(same(a, b) for a, b in zip(got, values, strict=True))


def test_a_large_map_of_ints_comes_back_in_order(
    ctx: corral.CorralContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many automatic chunks, each committed and stored in place at its own offset."""
    stored: list[int] = []
    real = _jobs._load_scalars_into
    if real is not None:

        def counting(data: Any, target: list[Any], start: int, count: int) -> bool:
            ok: bool = real(data, target, start, count)
            if ok:
                stored.append(count)
            return ok

        monkeypatch.setattr(_jobs, "_load_scalars_into", counting)
    items = list(range(-50_000, 150_000, 3))
    with corral.Pool(2, context=ctx) as pool:
        for _ in range(2):  # the second call starts from the learned chunk size
            assert pool.map_async(t.double, items).get(TIMEOUT) == [2 * x for x in items]
    if real is not None:  # every commit was read in place by the C path
        assert sum(stored) == 2 * len(items)
