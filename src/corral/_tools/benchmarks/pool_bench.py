"""Pool benchmarks: issue 9's "Measured" table, corral next to the pools people use.

    corral bench --only pool          # quick (30-45 s on 2 cores)
    corral bench --only pool --full   # more items and repeats

Cases (every figure a median; ratios against the row's baseline):
a. 100k trivial tasks (``x * 2``), ``map`` with each library's default options:
   corral.Pool.map against mp.Pool.map (goal >= 1.2x), each the median of 20 maps:
   4 children of each library, taking turns (8 with --full), 5 timed maps each after
   an untimed one. Also ProcessPoolExecutor (chunksize 1, so
   on 5k items), loky and pebble (chunksize 1000) and mpire, where installed.
b. The same through corral's ``imap`` with no chunksize, against mp.Pool.map (goal
   >= 0.8x) and against ``mp.Pool.imap(chunksize=1)`` (on 5k items; goal >= 20x).
c. 2k tasks (10k with --full) of about 1 ms with 3 workers SIGKILLed during the run:
   each victim task kills its own worker the first time it runs
   (``corral._demo._targets.die_once``), so every library sees the same kills.
   corral (``retries=1``) is timed against the same run without kills, the median of
   3 runs each (goal <= 1.2x). Every task that returns appends its index to a file,
   so each row also says whether every item ran to completion exactly once. For the
   other libraries the row says what happened: hung, broken (the pool raised), lost
   tasks, or a time when every result came back.
d. 8 numpy arrays of 16 MiB in and out of ``Pool.map(chunksize=1)`` against
   mp.Pool.map (goal >= 10x), the median of 5 maps after an untimed one (each library
   in the steady state: corral's shared-memory segments made, mp's heap grown).
e. ``corral.map(f, 100 items, workers=2)``: the time per call of the second and later
   calls against ``imap`` on a corral.Pool(2) that the caller keeps (goal <= 2x).

The benchmark never hangs. Each measurement of each library runs in a child
interpreter of its own, in a session of its own, under a deadline::

    run() --_measure(name, deadline, **args)--> python -c "..._child_main()"
      ^                                            | one of MEASUREMENTS
      +--- JSON lines on stdout (a temp file) -----+ (reported before cleanup)

A child that overruns is stopped with its whole process tree and its row says
"hung"; one that dies says "crashed". What it reported before that still counts.

Two workers on a 2-core machine: the figures measure IPC and scheduling, and
absolute numbers mean little. Baselines that are not installed are listed as
skipped (``pip install 'corral[bench]'``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import importlib.util
import json
import multiprocessing
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import corral
from corral._bench import Row
from corral._demo import _targets

WORKERS = 2
# How long one child may take in quick mode; --full allows FULL_SCALE times as long.
# Generous: it only decides when a child counts as hung, so it costs time only then.
DEADLINE = 30.0
# How long one run of the crash case may take (2k x 1 ms on two workers takes about
# 1 s) before it counts as hung; scaled with the number of items. A baseline that
# hangs there costs this much time, every run.
HANG_AFTER = 10.0
FULL_SCALE = 4
ARRAY_BYTES = 16 * 1024 * 1024
OPTIONAL = ("loky", "pebble", "mpire", "numpy")
SKIPPED_NOTE = "not installed (pip install 'corral[bench]')"


# --- Tasks (module level, so that every library can pickle them) --------------------


def double(x: int) -> int:
    return x * 2


def crash_item(item: tuple[int, tuple[int, ...], str]) -> int:
    """``die_once``, then append the item's index to ``<marker dir>/ran``: one line per
    run that completed in a worker (a victim's fatal first run writes none)."""
    result = _targets.die_once(item)
    fd = os.open(os.path.join(item[2], "ran"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, b"%d\n" % item[0])  # one short write with O_APPEND: never torn
    finally:
        os.close(fd)
    return result


def array_roundtrip(a: Any) -> Any:
    return a + 1


# --- The parent's side: one child per measurement, under a deadline -----------------

_REPORT = "pool_bench> "  # marks the child's report lines among anything else printed


@dataclass(frozen=True)
class _Outcome:
    reports: list[dict[str, Any]]  # what the child reported, in order
    status: str  # "" if it exited 0, else "hung" or "crashed"
    detail: str  # how it ended, when it did not exit 0


def _measure(name: str, deadline: float, **args: Any) -> _Outcome:
    """Run ``MEASUREMENTS[name](**args)`` in a child interpreter and collect its reports.

    The child gets its own session (so its process group covers its workers). Past
    ``deadline`` seconds it is stopped with every descendant, and the outcome is "hung".
    """
    here = Path(__file__).resolve()
    code = f"import sys; sys.path.insert(0, {str(here.parent)!r}); import {here.stem} as m; "
    code += "m._child_main()"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(here.parent), env.get("PYTHONPATH")]))
    with (
        tempfile.TemporaryDirectory(prefix="pool_bench-") as tmp,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        env["TMPDIR"] = tmp  # what a killed child leaves there (pymp-* dirs) goes with it
        child = subprocess.Popen(
            [sys.executable, "-c", code, name, json.dumps(args)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,
        )
        pidfd = os.pidfd_open(child.pid)
        try:
            exited = bool(select.select([pidfd], [], [], deadline)[0])
        finally:
            os.close(pidfd)
            # Not reaped yet, so its pid (and process group) can't have been reused.
            _end_tree(child.pid)
            child.wait()
        out.seek(0)
        err.seek(0)
        reports: list[dict[str, Any]] = []
        for line in out.read().decode(errors="replace").splitlines():
            if line.startswith(_REPORT):
                with contextlib.suppress(ValueError):  # a line cut short by the kill
                    reports.append(json.loads(line[len(_REPORT) :]))
        last_error = ["", *err.read().decode(errors="replace").strip().splitlines()][-1]
    if not exited:
        return _Outcome(reports, "hung", f"killed after {deadline:g} s")
    if child.returncode < 0:
        return _Outcome(reports, "crashed", f"{signal.Signals(-child.returncode).name}")
    if child.returncode > 0:
        return _Outcome(reports, "crashed", f"exit {child.returncode}: {last_error[:120]}")
    return _Outcome(reports, "", "")


def _end_tree(pid: int) -> None:
    """SIGKILL ``pid``, its process group and every descendant, wherever it moved.

    Everything is stopped first, walking the tree again until a walk finds nothing
    new, so that nothing can fork away between the walk and the kill.
    """
    stopped: set[int] = set()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGSTOP)
    while new := ({pid} | _descendants(pid)) - stopped:
        for p in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        stopped |= new
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for p in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:  # gone already
                continue
            ppid = int(stat.rpartition(b")")[2].split()[1])  # after "pid (comm) state"
            children[ppid].append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children[todo.pop()]:
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


# --- The child's side -----------------------------------------------------------------


def _child_main() -> None:
    name, args = sys.argv[1], json.loads(sys.argv[2])
    MEASUREMENTS[name](**args)


def _report(**fields: Any) -> None:
    print(_REPORT + json.dumps(fields), flush=True)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


_Map = Callable[[Callable[[Any], Any], list[Any]], list[Any]]


@contextlib.contextmanager
def _pool(lib: str, chunksize: int | None = None, retries: int = 0) -> Iterator[_Map]:
    """A pool of WORKERS processes from ``lib``, as ``map(fn, items) -> list``.

    ``chunksize`` None means the library's default. ``retries`` is corral's.
    """
    if lib.startswith("mp."):
        with multiprocessing.Pool(WORKERS) as mp_pool:
            if lib == "mp.Pool.map":
                yield lambda fn, items: mp_pool.map(fn, items, chunksize)
            else:
                yield lambda fn, items: list(mp_pool.imap(fn, items, chunksize or 1))
    elif lib.startswith("corral."):
        with corral.Pool(WORKERS, retries=retries) as pool:
            if lib == "corral.Pool.map":
                yield lambda fn, items: pool.map(fn, items, chunksize)
            else:
                yield lambda fn, items: list(pool.imap(fn, items, chunksize))
    elif lib == "ProcessPoolExecutor":
        with concurrent.futures.ProcessPoolExecutor(WORKERS) as ex:
            yield lambda fn, items: list(ex.map(fn, items, chunksize=chunksize or 1))
    elif lib == "loky":
        import loky

        lex = loky.get_reusable_executor(max_workers=WORKERS)
        try:
            yield lambda fn, items: list(lex.map(fn, items, chunksize=chunksize or 1))
        finally:
            lex.shutdown(wait=True, kill_workers=True)
    elif lib == "pebble":
        import pebble

        with pebble.ProcessPool(WORKERS) as ppool:

            def pebble_map(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
                out: list[Any] = []
                it = ppool.map(fn, items, chunksize=chunksize or 1).result()
                while True:
                    try:
                        out.append(next(it))
                    except StopIteration:
                        return out
                    except Exception as exc:  # ProcessExpired: that task is lost
                        out.append(exc)

            yield pebble_map
    elif lib == "mpire":
        from mpire.pool import WorkerPool

        with WorkerPool(WORKERS) as wp:
            yield lambda fn, items: wp.map(fn, items, progress_bar=False)
    else:
        raise ValueError(f"unknown library {lib!r}")


def trivial(lib: str, n: int, repeats: int, chunksize: int | None = None) -> None:
    """Cases a and b: report the seconds of each of ``repeats`` maps of ``double``,
    after one untimed map (workers started, memory touched) that checks the results."""
    data = list(range(n))
    with _pool(lib, chunksize) as pool_map:
        assert pool_map(double, data) == [x * 2 for x in data]
        _report(seconds=[_timed(lambda: pool_map(double, data)) for _ in range(repeats)])


def crashes(lib: str, n: int, kills: bool, repeats: int, root: str) -> None:
    """Case c: ``repeats`` runs, each in a pool of its own and a marker dir of its own
    under ``root``. Reports each run's outcome as soon as it is known, then again
    once the pool has shut down (a shutdown can hang too)."""
    for run in range(repeats):
        marker_dir = os.path.join(root, str(run))
        os.mkdir(marker_dir)
        victims = (n // 4, n // 2, 3 * n // 4) if kills else ()
        items: list[Any] = [(x, victims, marker_dir) for x in range(n)]
        if lib == "mpire":  # mpire unpacks tuples into arguments
            items = [(item,) for item in items]
        with _pool(lib, retries=1) as pool_map:
            t0 = time.perf_counter()
            try:
                out = pool_map(crash_item, items)
            except Exception as exc:
                _report(run=run, seconds=time.perf_counter() - t0, broken=type(exc).__name__)
            else:
                took = time.perf_counter() - t0
                lost = sum(not isinstance(v, int) for v in out) + n - len(out)
                wrong = lost == 0 and out != [x * 2 for x in range(n)]
                _report(run=run, seconds=took, lost=lost, wrong=wrong)
        _report(run=run, closed=True)


def arrays(lib: str, count: int, repeats: int) -> None:
    """Case d: seconds of each of ``repeats`` maps over ``count`` 16 MiB arrays."""
    import numpy as np

    data = [np.zeros(ARRAY_BYTES // 8) for _ in range(count)]
    with _pool(lib, chunksize=1) as pool_map:
        pool_map(array_roundtrip, data)  # untimed: the steady state is what is measured
        _report(seconds=[_timed(lambda: pool_map(array_roundtrip, data)) for _ in range(repeats)])


def reuse(n: int, calls: int) -> None:
    """Case e: seconds per call of imap on a kept pool, then of ``corral.map``.

    The kept pool is closed before ``corral.map`` runs, so the two never share the
    cores; ``corral.map`` is timed whole, as a caller sees it.
    """
    items = list(range(n))
    with corral.Pool(WORKERS) as pool:
        list(pool.imap(double, items))
        kept = [_timed(lambda: list(pool.imap(double, items))) for _ in range(calls)]
    first = _timed(lambda: list(corral.map(double, items, workers=WORKERS)))
    later = [_timed(lambda: list(corral.map(double, items, workers=WORKERS))) for _ in range(calls)]
    _report(kept=kept, first=first, later=later)


MEASUREMENTS: dict[str, Callable[..., None]] = {
    "trivial": trivial,
    "crashes": crashes,
    "arrays": arrays,
    "reuse": reuse,
}


# --- The parent's side: rows ------------------------------------------------------------


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _last(outcome: _Outcome, key: str) -> Any:
    """The last reported value of ``key``, or None if the child never reported it."""
    values = [r[key] for r in outcome.reports if key in r]
    return values[-1] if values else None


def _row(
    case: str,
    impl: str,
    outcome: _Outcome,
    value: float | None,
    unit: str,
    baseline: float | None,
    note: str = "",
    higher_is_better: bool = True,
) -> Row:
    """A measured row, or the reason there is no figure ("hung", "crashed", ...)."""
    if value is None:
        status = outcome.status or "failed"
        note = "; ".join(filter(None, [outcome.detail, note]))
        return Row(case, impl, None, unit, baseline, higher_is_better, note, status)
    if outcome.status:  # the figure came out, then the child hung or crashed
        note = "; ".join(filter(None, [note, f"then {outcome.status}: {outcome.detail}"]))
    return Row(case, impl, value, unit, baseline, higher_is_better, note)


def _k_per_s(outcome: _Outcome, n: int) -> float | None:
    seconds = _last(outcome, "seconds")
    return n / statistics.median(seconds) / 1000 if seconds else None


_Measured = tuple[_Outcome, float | None]  # how the child ended, and its figure


def _skipped(case: str, impl: str, unit: str) -> Row:
    return Row(case, impl, None, unit, note=SKIPPED_NOTE, status="skipped")


def _trivial_rows(quick: bool, deadline: float) -> list[Row]:
    """Cases a and b."""
    n = 100_000
    per_item_n = 5_000 if quick else 20_000  # for the baselines that send items one by one
    goal_runs = 5  # timed maps per child, after an untimed one
    # Children per library for the goal's pair, run alternately: a figure from one
    # child swings 5-9 M tasks/s for both libraries on this 2-core box (where the
    # scheduler happens to place the parent and its two workers), and stays there
    # for that child's life, so one child per library gave ratios of 0.8-1.7x.
    goal_blocks = 4 if quick else 8
    other_runs = 1 if quick else 3
    map_case, imap_case, unit = "100k trivial tasks, map", "100k trivial tasks, imap", "k tasks/s"
    rows: list[Row] = []

    def measure(lib: str, items: int, runs: int, chunksize: int | None = None) -> _Measured:
        outcome = _measure("trivial", deadline, lib=lib, n=items, repeats=runs, chunksize=chunksize)
        return outcome, _k_per_s(outcome, items)

    def add(case: str, impl: str, measured: _Measured, base: float | None, note: str = "") -> None:
        rows.append(_row(case, impl, measured[0], measured[1], unit, base, note))

    def alternately(libs: tuple[str, ...]) -> dict[str, _Measured]:
        """Each of ``libs`` in ``goal_blocks`` children, taking turns: the median of
        all their maps, and the first child that failed (if any) says why."""
        outcomes: dict[str, list[_Outcome]] = {lib: [] for lib in libs}
        for _ in range(goal_blocks):
            for lib in libs:
                outcomes[lib].append(
                    _measure("trivial", deadline, lib=lib, n=n, repeats=goal_runs, chunksize=None)
                )
        measured: dict[str, _Measured] = {}
        for lib, outs in outcomes.items():
            seconds = [s for o in outs for s in (_last(o, "seconds") or [])]
            failed = next((o for o in outs if o.status), None)
            merged = _Outcome(
                [{"seconds": seconds}] if seconds else [],
                failed.status if failed else "",
                failed.detail if failed else "",
            )
            measured[lib] = merged, (_k_per_s(merged, n) if failed is None else None)
        return measured

    pair = alternately(("mp.Pool.map", "corral.Pool.map", "corral.Pool.imap"))
    mp_map, co_map, co_imap = pair["mp.Pool.map"], pair["corral.Pool.map"], pair["corral.Pool.imap"]
    mp_imap1 = measure("mp.Pool.imap(1)", per_item_n, goal_runs)
    base = mp_map[1]
    runs = goal_blocks * goal_runs
    add(map_case, "multiprocessing.Pool.map", mp_map, base, f"median of {runs}")
    add(
        map_case,
        "corral.Pool.map",
        co_map,
        base,
        f"goal >= 1.2x; median of {runs}: {goal_blocks} fresh pools of each, alternately",
    )
    ppe = measure("ProcessPoolExecutor", per_item_n, other_runs)
    add(map_case, "ProcessPoolExecutor.map (chunksize 1)", ppe, base)
    for lib, impl, chunksize in (
        ("loky", "loky (chunksize 1000)", 1000),
        ("pebble", "pebble (chunksize 1000)", 1000),
        ("mpire", "mpire", None),
    ):
        if _installed(lib):
            add(map_case, impl, measure(lib, n, other_runs, chunksize), base)
        else:
            rows.append(_skipped(map_case, impl, unit))
    add(imap_case, "multiprocessing.Pool.imap (chunksize 1)", mp_imap1, mp_imap1[1])
    add(imap_case, "corral.Pool.imap, no chunksize", co_imap, mp_imap1[1], "goal >= 20x")
    add(imap_case + " vs mp map", "corral.Pool.imap, no chunksize", co_imap, base, "goal >= 0.8x")
    return rows


def _count_note(root: str, n: int) -> str:
    """How many times each item ran to completion, over the runs under ``root``."""
    twice = never = runs = 0
    for run_dir in sorted(Path(root).iterdir()):
        runs += 1
        ran_file = run_dir / "ran"
        counts = collections.Counter(ran_file.read_text().split() if ran_file.exists() else [])
        twice += sum(1 for c in counts.values() if c > 1)
        never += n - len(counts)
    if not runs:
        return "never started"
    over = f" (over {runs} runs)" if runs > 1 else ""
    if not twice and not never:
        return "every item counted once" + over
    found = [
        f"{twice} items completed more than once" if twice else "",
        f"{never} never completed" if never else "",
    ]
    return ", ".join(filter(None, found)) + over


def _crash_verdict(outcome: _Outcome, runs: int) -> tuple[float | None, _Outcome]:
    """The median seconds if every run returned every result right; else None, and
    an outcome that says what went wrong first, and how the child ended if it then
    hung or crashed (a pool's shutdown can hang after the results came back)."""
    results = [r for r in outcome.reports if "seconds" in r]
    verdict = ("", "")
    for r in results:
        if "broken" in r:
            verdict = ("broken", r["broken"])
        elif r["lost"] or r["wrong"]:
            verdict = (f"lost {r['lost']}", "") if r["lost"] else ("wrong results", "")
        if verdict[0]:
            break
    if not verdict[0] and len(results) == runs:
        return statistics.median(r["seconds"] for r in results), outcome
    if not verdict[0]:
        return None, outcome  # hung or crashed before the last run reported
    ending = f"then {outcome.status}: {outcome.detail}" if outcome.status else ""
    detail = "; ".join(filter(None, [verdict[1], ending]))
    return None, _Outcome(outcome.reports, verdict[0], detail)


def _crash_rows(quick: bool) -> list[Row]:
    """Case c."""
    n = 2_000 if quick else 10_000
    corral_runs = 3 if quick else 7
    hang_after = HANG_AFTER * n / 2_000
    case = f"{n // 1000}k x 1 ms tasks, 3 workers SIGKILLed"
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:

        def run(lib: str, kills: bool, runs: int) -> tuple[_Outcome, float | None, str]:
            root = tempfile.mkdtemp(dir=tmp)
            args = {"lib": lib, "n": n, "kills": kills, "repeats": runs, "root": root}
            seconds, outcome = _crash_verdict(_measure("crashes", runs * hang_after, **args), runs)
            return outcome, seconds, _count_note(root, n)

        clean, clean_s, clean_note = run("corral.Pool.map", False, corral_runs)
        killed, killed_s, killed_note = run("corral.Pool.map", True, corral_runs)
        rows.append(
            _row(case, "corral.Pool, no kills", clean, clean_s, "s", clean_s, clean_note, False)
        )
        goal = "goal <= 1.2x the time without kills (ratio >= 0.83x)"
        rows.append(
            _row(
                case,
                "corral.Pool (retries=1)",
                killed,
                killed_s,
                "s",
                clean_s,
                f"{killed_note}; {goal}",
                False,
            )
        )
        for lib, impl in (
            ("mp.Pool.map", "multiprocessing.Pool"),
            ("ProcessPoolExecutor", "ProcessPoolExecutor"),
            ("loky", "loky"),
            ("pebble", "pebble"),
            ("mpire", "mpire"),
        ):
            if lib in OPTIONAL and not _installed(lib):
                rows.append(_skipped(case, impl, "s"))
                continue
            outcome, seconds, note = run(lib, True, 1)
            rows.append(_row(case, impl, outcome, seconds, "s", clean_s, note, False))
    return rows


def _array_rows(quick: bool, deadline: float) -> list[Row]:
    """Case d."""
    case, unit = "16 MiB numpy arrays, args + results", "GB/s"
    if not _installed("numpy"):
        return [
            _skipped(case, impl, unit) for impl in ("multiprocessing.Pool.map", "corral.Pool.map")
        ]
    count = 8 if quick else 32
    repeats = 5 if quick else 7
    gb = count * ARRAY_BYTES * 2 / 2**30  # in and out

    def measure(lib: str) -> _Measured:
        outcome = _measure("arrays", deadline, lib=lib, count=count, repeats=repeats)
        seconds = _last(outcome, "seconds")
        return outcome, gb / statistics.median(seconds) if seconds else None

    mp_map, base = measure("mp.Pool.map")
    co_map, co = measure("corral.Pool.map")
    return [
        _row(case, "multiprocessing.Pool.map", mp_map, base, unit, base),
        _row(case, "corral.Pool.map", co_map, co, unit, base, "goal >= 10x"),
    ]


def _reuse_rows(quick: bool, deadline: float) -> list[Row]:
    """Case e."""
    n, calls = 100, (20 if quick else 100)
    case, unit = f"corral.map over {n} items, per call", "ms"
    outcome = _measure("reuse", deadline, n=n, calls=calls)
    kept, later, first = (_last(outcome, key) for key in ("kept", "later", "first"))
    base = statistics.median(kept) * 1000 if kept else None
    value = statistics.median(later) * 1000 if later else None
    first_note = f"first call {first * 1000:.1f} ms; " if first is not None else ""
    goal = "goal <= 2x the kept pool's time (ratio >= 0.5x)"
    return [
        _row(case, "corral.Pool(2).imap, pool kept", outcome, base, unit, base, "", False),
        _row(
            case,
            "corral.map(workers=2), 2nd+ calls",
            outcome,
            value,
            unit,
            base,
            first_note + goal,
            False,
        ),
    ]


def run(quick: bool) -> list[Row]:
    deadline = DEADLINE if quick else DEADLINE * FULL_SCALE
    return [
        *_trivial_rows(quick, deadline),
        *_crash_rows(quick),
        *_array_rows(quick, deadline),
        *_reuse_rows(quick, deadline),
    ]
