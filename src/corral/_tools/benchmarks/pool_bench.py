"""Pool benchmarks: the four cases of issue 5, corral next to the pools people use.

    corral bench --only pool          # quick (< 1 min)
    corral bench --only pool --full   # more items and repeats

Cases:
1. 100k trivial tasks (``x * 2``), ``map`` with each library's default options.
2. The same through ``imap`` with no chunksize, against ``mp.Pool.imap(chunksize=1)``
   and against ``mp.Pool.map``.
3. Tasks of about 1 ms with 3 workers SIGKILLed during the run (each victim task kills
   its own worker the first time it runs, so every library sees the same kills).
   corral (``retries=1``) is timed against the same run without kills; for the others
   the row records what happened: a hang (under a timeout), a broken pool, or lost
   tasks.
4. 16 MiB numpy arrays as arguments and results.

Two workers on a 2-core machine: the figures measure IPC and scheduling, and absolute
numbers mean little; each is a median, and ratios are against the row's baseline.
Baselines that are not installed are skipped (``pip install 'corral[bench]'``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import corral
from corral._bench import Row
from corral._demo import _targets

WORKERS = 2
# How long another library gets to finish the crash case before it counts as a hang.
HANG_TIMEOUT = 10.0


def double(x: int) -> int:
    return x * 2


def one_ms(x: int) -> int:
    time.sleep(0.001)
    return x * 2


_marker_dir = ""


def crash_item(args: tuple[int, tuple[int, ...], str]) -> int:
    return _targets.die_once(args)


def array_roundtrip(a: Any) -> Any:
    return a + 1


def _rate(fn: Callable[[], object], n: int, repeats: int) -> float:
    def once() -> float:
        t0 = time.perf_counter()
        fn()
        return n / (time.perf_counter() - t0) / 1000

    return statistics.median(once() for _ in range(repeats))


def _optional(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        return None


# --- Cases 1 and 2 -------------------------------------------------------------------


def _trivial(quick: bool, repeats: int) -> list[Row]:
    n = 100_000
    slow_n = 5_000 if quick else 20_000  # for the per-item baselines
    data = list(range(n))
    rows: list[Row] = []
    with multiprocessing.Pool(WORKERS) as mp_pool, corral.Pool(WORKERS) as pool:
        mp_pool.map(double, range(100))
        pool.map(double, range(100))
        base_map = _rate(lambda: mp_pool.map(double, data), n, repeats)
        co_map = _rate(lambda: pool.map(double, data), n, repeats)
        base_imap1 = _rate(lambda: list(mp_pool.imap(double, range(slow_n), 1)), slow_n, 1)
        co_imap = _rate(lambda: list(pool.imap(double, data)), n, repeats)
    case = "100k trivial tasks, map"
    rows.append(Row(case, "multiprocessing.Pool.map", base_map, "k tasks/s", base_map))
    rows.append(Row(case, "corral.Pool.map", co_map, "k tasks/s", base_map, note="goal >= 1.0x"))
    with concurrent.futures.ProcessPoolExecutor(WORKERS) as ex:
        list(ex.map(double, range(10)))
        ppe = _rate(lambda: list(ex.map(double, range(slow_n))), slow_n, 1)
    rows.append(Row(case, "ProcessPoolExecutor.map (chunksize 1)", ppe, "k tasks/s", base_map))
    loky = _optional("loky")
    if loky is not None:
        ex = loky.get_reusable_executor(max_workers=WORKERS)
        list(ex.map(double, range(10)))
        rate = _rate(lambda: list(ex.map(double, data, chunksize=1000)), n, repeats)
        rows.append(Row(case, "loky (chunksize 1000)", rate, "k tasks/s", base_map))
        ex.shutdown(wait=True, kill_workers=True)
    pebble = _optional("pebble")
    if pebble is not None:
        with pebble.ProcessPool(WORKERS) as ppool:
            rate = _rate(lambda: list(ppool.map(double, data, chunksize=1000).result()), n, 1)
        rows.append(Row(case, "pebble (chunksize 1000)", rate, "k tasks/s", base_map))
    mpire = _optional("mpire")
    if mpire is not None:
        with mpire.WorkerPool(WORKERS) as wp:
            rate = _rate(lambda: wp.map(double, data, progress_bar=False), n, 1)
        rows.append(Row(case, "mpire", rate, "k tasks/s", base_map))

    case = "100k trivial tasks, imap, no chunksize"
    rows.append(
        Row(case, "multiprocessing.Pool.imap (chunksize 1)", base_imap1, "k tasks/s", base_imap1)
    )
    rows.append(
        Row(
            case,
            "corral.Pool.imap",
            co_imap,
            "k tasks/s",
            base_imap1,
            note="goal >= 20x mp imap(1)",
        )
    )
    rows.append(
        Row(
            case + " vs mp map",
            "corral.Pool.imap",
            co_imap,
            "k tasks/s",
            base_map,
            note="goal >= 0.5x mp.Pool.map",
        )
    )
    return rows


# --- Case 3: crashes -----------------------------------------------------------------


def _crash_items(n: int, marker_dir: str) -> list[tuple[int, tuple[int, ...], str]]:
    victims = (n // 4, n // 2, 3 * n // 4)
    return [(x, victims, marker_dir) for x in range(n)]


def _in_thread(fn: Callable[[], Any], timeout: float) -> tuple[str, Any]:
    """Run fn in a daemon thread: ("ok", value), ("error", exc) or ("hang", None)."""
    box: list[tuple[str, Any]] = []

    def run() -> None:
        try:
            box.append(("ok", fn()))
        except BaseException as exc:
            box.append(("error", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return box[0] if box else ("hang", None)


def _verdict(outcome: tuple[str, Any], n: int) -> str:
    kind, value = outcome
    if kind == "hang":
        return f"hang: no result after {HANG_TIMEOUT:g} s"
    if kind == "error":
        return f"broken: {type(value).__name__}"
    got = [v for v in value if isinstance(v, int)]
    lost = n - len(got)
    return "all correct" if lost == 0 and got == [x * 2 for x in range(n)] else f"lost {lost}"


def _crashes(quick: bool, repeats: int) -> list[Row]:
    n = 2_000 if quick else 10_000
    case = f"{n // 1000}k x 1 ms tasks, 3 workers SIGKILLed"
    rows: list[Row] = []

    def corral_run(kill: bool) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            items = _crash_items(n, tmp) if kill else [(x, (), tmp) for x in range(n)]
            with corral.Pool(WORKERS, retries=1) as pool:
                t0 = time.perf_counter()
                out = pool.map(crash_item, items)
                took = time.perf_counter() - t0
            assert out == [x * 2 for x in range(n)], "corral lost or corrupted a task"
            return took

    clean = statistics.median(corral_run(False) for _ in range(repeats))
    killed = statistics.median(corral_run(True) for _ in range(repeats))
    rows.append(Row(case, "corral.Pool, no kills", clean, "s", clean, higher_is_better=False))
    rows.append(
        Row(
            case,
            "corral.Pool (retries=1)",
            killed,
            "s",
            clean,
            higher_is_better=False,
            note="all correct; goal: <= 1.2x the run without kills",
        )
    )

    def other(name: str, run: Callable[[list[Any]], Any], cleanup: Callable[[], object]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            outcome = _in_thread(lambda: run(_crash_items(n, tmp)), HANG_TIMEOUT)
            with contextlib.suppress(Exception):
                cleanup()
        rows.append(
            Row(case, name, None, "s", clean, higher_is_better=False, note=_verdict(outcome, n))
        )

    mp_pool = multiprocessing.Pool(WORKERS)
    other("multiprocessing.Pool", lambda items: mp_pool.map(crash_item, items), mp_pool.terminate)
    ppe = concurrent.futures.ProcessPoolExecutor(WORKERS)
    other(
        "ProcessPoolExecutor",
        lambda items: list(ppe.map(crash_item, items)),
        lambda: ppe.shutdown(wait=False, cancel_futures=True),
    )
    loky = _optional("loky")
    if loky is not None:
        lex = loky.get_reusable_executor(max_workers=WORKERS)
        other(
            "loky",
            lambda items: list(lex.map(crash_item, items)),
            lambda: lex.shutdown(wait=False, kill_workers=True),
        )
    pebble = _optional("pebble")
    if pebble is not None:
        ppool = pebble.ProcessPool(WORKERS)

        def pebble_run(items: list[Any]) -> list[Any]:
            out: list[Any] = []
            it = ppool.map(crash_item, items).result()
            while True:
                try:
                    out.append(next(it))
                except StopIteration:
                    return out
                except Exception as exc:  # ProcessExpired: that task is lost
                    out.append(exc)

        other("pebble", pebble_run, lambda: (ppool.stop(), ppool.join(5)))
    mpire = _optional("mpire")
    if mpire is not None:
        wp = mpire.WorkerPool(WORKERS)
        other(
            "mpire",
            lambda items: wp.map(crash_item, [(i,) for i in items], progress_bar=False),
            lambda: wp.terminate(),
        )
    return rows


# --- Case 4: large arrays ------------------------------------------------------------


def _arrays(quick: bool, repeats: int) -> list[Row]:
    np = _optional("numpy")
    if np is None:
        return []
    count = 8 if quick else 32
    arrays = [np.zeros(16 * 1024 * 1024 // 8) for _ in range(count)]
    gb = count * 16 * 2 / 1024  # in and out

    def rate(pool: Any) -> float:
        def once() -> float:
            t0 = time.perf_counter()
            pool.map(array_roundtrip, arrays, 1)
            return gb / (time.perf_counter() - t0)

        return statistics.median(once() for _ in range(repeats))

    with multiprocessing.Pool(WORKERS) as mp_pool, corral.Pool(WORKERS) as pool:
        base = rate(mp_pool)
        co = rate(pool)
    case = "16 MiB numpy arrays, args + results"
    return [
        Row(case, "multiprocessing.Pool.map", base, "GB/s", base),
        Row(
            case,
            "corral.Pool.map",
            co,
            "GB/s",
            base,
            note="goal >= 10x; buffers go through a memfd",
        ),
    ]


def run(quick: bool) -> list[Row]:
    repeats = 3 if quick else 7
    return [*_trivial(quick, repeats), *_crashes(quick, repeats), *_arrays(quick, repeats)]
