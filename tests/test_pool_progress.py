"""Progress bars: one per call, with an honest total, and the tqdm options asked for.

Each bar is captured by passing ``{"file": io.StringIO()}`` among its tqdm options
(a bar with a ``file`` is drawn off a terminal too). A bar's last state is the last
``\\r``-separated segment of its line; every segment is checked, so a total that
grows while items are submitted ("96% 200/208") fails too.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import pytest

import corral
from tests import pool_targets as t

pytest.importorskip("tqdm")

N = 300
FRACTION = re.compile(r"(\d+)/(\d+)")


def bars(buf: io.StringIO) -> list[list[str]]:
    """The bars drawn into ``buf``: one list of states (segments) per bar line."""
    out = []
    for line in buf.getvalue().split("\n"):
        states = [s.strip() for s in line.split("\r") if s.strip()]
        if states:
            out.append(states)
    return out


def totals(states: list[str]) -> set[int]:
    return {int(m.group(2)) for s in states for m in FRACTION.finditer(s)}


def gen(n: int) -> Iterator[int]:
    yield from range(n)


@pytest.mark.parametrize("method", ["map", "map_async", "starmap", "imap", "imap_unordered"])
def test_a_bar_per_call_with_the_inputs_length_as_total(
    ctx: corral.CorralContext, method: str
) -> None:
    buf = io.StringIO()
    items = list(range(N))
    with corral.Pool(2, context=ctx) as pool:
        progress = {"file": buf}
        if method == "map":
            out = pool.map(t.double, items, progress=progress)
        elif method == "map_async":
            out = pool.map_async(t.double, items, progress=progress).get(60)
        elif method == "starmap":
            out = pool.starmap(t.add, [(x, x) for x in items], progress=progress)
        elif method == "imap":
            out = list(pool.imap(t.double, items, progress=progress))
        else:
            out = sorted(pool.imap_unordered(t.double, items, progress=progress))
    assert out == [x * 2 for x in items]
    (bar,) = bars(buf)
    assert totals(bar) == {N}, bar
    assert f"{N}/{N}" in bar[-1], bar[-1]
    assert "100%" in bar[-1], bar[-1]


def test_a_generator_has_no_total_but_a_count_and_a_rate(ctx: corral.CorralContext) -> None:
    buf = io.StringIO()
    with corral.Pool(2, context=ctx) as pool:
        assert list(pool.imap(t.double, gen(N), progress={"file": buf})) == [
            x * 2 for x in range(N)
        ]
    (bar,) = bars(buf)
    assert totals(bar) == set(), bar
    assert "%" not in bar[-1], bar[-1]
    assert f"{N}task" in bar[-1], bar[-1]
    assert "task/s" in bar[-1], bar[-1]


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_total_for_a_generator(ctx: corral.CorralContext, method: str) -> None:
    buf = io.StringIO()
    with corral.Pool(2, context=ctx) as pool:
        it = getattr(pool, method)(t.double, gen(N), total=N, progress={"file": buf})
        assert sorted(it) == [x * 2 for x in range(N)]
    (bar,) = bars(buf)
    assert totals(bar) == {N}, bar
    assert f"{N}/{N}" in bar[-1], bar[-1]


def test_tqdm_options_are_honoured(ctx: corral.CorralContext) -> None:
    buf = io.StringIO()
    with corral.Pool(2, context=ctx) as pool:
        pool.map(t.double, range(N), progress={"file": buf, "desc": "crunching", "unit": "row"})
    (bar,) = bars(buf)
    assert all(state.startswith("crunching") for state in bar), bar
    assert f"{N}/{N}" in bar[-1], bar[-1]
    assert "row/s" in bar[-1] or "s/row" in bar[-1], bar[-1]
    assert "task" not in bar[-1], bar[-1]


def test_the_pools_progress_draws_a_bar_per_call_counted_apart(ctx: corral.CorralContext) -> None:
    buf = io.StringIO()
    with corral.Pool(2, context=ctx, progress={"file": buf}) as pool:
        pool.map(t.double, range(100))
        pool.map(t.double, range(N))
        list(pool.imap(t.double, gen(50)))
        pool.map(t.double, range(N), progress=False)  # per call: off
    first, second, third = bars(buf)
    assert totals(first) == {100}, first
    assert "100/100" in first[-1], first[-1]
    assert totals(second) == {N}, second
    assert f"{N}/{N}" in second[-1], second[-1]
    assert "50task" in third[-1], third[-1]


def test_force_per_call(ctx: corral.CorralContext, capsys: pytest.CaptureFixture[str]) -> None:
    with corral.Pool(1, context=ctx) as pool:
        pool.map(t.double, range(10))
        assert capsys.readouterr().err == ""  # no bar by default
        pool.map(t.double, range(10), progress="force")
        pool.map(t.double, range(10), progress=True)  # stderr is not a terminal here
    err = capsys.readouterr().err
    assert err.count("10/10") >= 1
    (bar,) = [states for states in (line.split("\r") for line in err.split("\n")) if any(states)]
    assert totals([s for s in bar if s.strip()]) == {10}


def test_events_still_come_with_a_bar(ctx: corral.CorralContext) -> None:
    buf = io.StringIO()
    events: list[tuple[str, int]] = []

    def on_event(kind: str, n: int) -> None:
        events.append((kind, n))

    with corral.Pool(2, context=ctx, on_event=on_event) as pool:
        pool.map(t.double, range(N), progress={"file": buf})
    completed = sum(n for kind, n in events if kind == "completed")
    submitted = sum(n for kind, n in events if kind == "submitted")
    assert completed == submitted == N
    assert f"{N}/{N}" in bars(buf)[-1][-1]


def test_corral_map_draws_a_bar_per_call(ctx: corral.CorralContext) -> None:
    for _ in range(2):  # the same kept pool: the second bar starts again from 0
        buf = io.StringIO()
        out = list(corral.map(t.double, range(N), workers=2, context=ctx, progress={"file": buf}))
        assert out == [x * 2 for x in range(N)]
        (bar,) = bars(buf)
        assert totals(bar) == {N}, bar
        assert f"{N}/{N}" in bar[-1], bar[-1]
    buf = io.StringIO()
    out = list(
        corral.map(t.double, gen(N), workers=2, context=ctx, total=N, progress={"file": buf})
    )
    assert len(out) == N
    (bar,) = bars(buf)
    assert totals(bar) == {N}, bar
