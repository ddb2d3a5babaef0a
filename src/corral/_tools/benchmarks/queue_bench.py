"""Queues: corral.Queue against multiprocessing.Queue, SimpleQueue and faster-fifo.

Cases (issue 3):
- 64 B messages, 1 producer -> 1 consumer, single put/get;
- the same with put_many/get_many (faster-fifo's batches; the stdlib has none), plus
  the pipelined pickle bound measured in this run: N / max(time of N dumps, N loads);
- 4 producers -> 4 consumers, single put/get;
- 16 MiB numpy arrays, 1 -> 1.

Each figure is the median of several runs; the ratio is against mp.Queue (and, for
the batched case, also against faster-fifo get_many and the pickle bound). Children
are forked, so process start-up is not measured: the clock starts when the first
message arrives (1 -> 1) or when a start event is set (4 -> 4).
"""

from __future__ import annotations

import functools
import multiprocessing
import pickle
import statistics
import time
from collections.abc import Callable
from typing import Any

import corral
from corral._tools._bench import Row

try:  # optional baseline
    import faster_fifo
except ImportError:  # pragma: no cover - depends on the environment
    faster_fifo = None

try:
    import numpy as np

    HAVE_NUMPY = True
except ImportError:  # pragma: no cover
    HAVE_NUMPY = False

_mp = multiprocessing.get_context("fork")

MSG = bytes(64)  # the 64-byte payload
BATCH = 256
ARRAY_BYTES = 16 * 1024 * 1024
# Arrays sent before the clock starts: a fresh queue's first ones pay for page faults.
WARMUP_ARRAYS = 6
# How long any one run may take before it is called hung and killed.
RUN_TIMEOUT = 60.0

IMPLS = ("corral", "mp.Queue", "mp.SimpleQueue", "faster-fifo")


def _make(impl: str, big: bool = False) -> Any:
    if impl == "corral":
        return corral.Queue(capacity_bytes=(256 if big else 64) * 1024 * 1024)
    if impl == "mp.Queue":
        return _mp.Queue()
    if impl == "mp.SimpleQueue":
        return _mp.SimpleQueue()
    assert faster_fifo is not None
    return faster_fifo.Queue(max_size_bytes=(256 if big else 16) * 1024 * 1024)


def _put_all(q: Any, impl: str, items: list[Any], batch: int) -> None:
    if batch > 1 and impl in ("corral", "faster-fifo"):
        for i in range(0, len(items), batch):
            q.put_many(items[i : i + batch])
    else:
        put = q.put
        for x in items:
            put(x)


def _producer(q: Any, impl: str, n: int, batch: int, payload: Any) -> None:
    _put_all(q, impl, [payload] * n, batch)


def _consume(q: Any, impl: str, n: int, batch: int, warmup: int = 1) -> float:
    """Get ``n`` messages; seconds from the ``warmup``-th to the last."""
    if warmup > 1:
        for _ in range(warmup - 1):
            q.get()
        n -= warmup - 1
    if batch > 1 and impl == "corral":
        first = q.get_many(batch, timeout=RUN_TIMEOUT)
        t0 = time.perf_counter()
        got = len(first)
        while got < n:
            got += len(q.get_many(batch, timeout=RUN_TIMEOUT))
    elif batch > 1 and impl == "faster-fifo":
        first = q.get_many(timeout=RUN_TIMEOUT, max_messages_to_get=batch)
        t0 = time.perf_counter()
        got = len(first)
        while got < n:
            got += len(q.get_many(timeout=RUN_TIMEOUT, max_messages_to_get=batch))
    else:
        get = q.get
        get()
        t0 = time.perf_counter()
        for _ in range(n - 1):
            get()
    return time.perf_counter() - t0


def _close(q: Any, impl: str) -> None:
    if impl == "mp.Queue":
        q.close()
        q.join_thread()
    elif impl == "mp.SimpleQueue" or impl == "corral":
        q.close()


def one_to_one(
    impl: str, n: int, batch: int, payload: Any, big: bool = False, warmup: int = 1
) -> float:
    """Messages per second from one forked producer to this process, timed from the
    ``warmup``-th message (the first ones also pay for first-touch page faults)."""
    q = _make(impl, big)
    p = _mp.Process(target=_producer, args=(q, impl, n, batch, payload))
    p.start()
    try:
        elapsed = _consume(q, impl, n, batch, warmup)
        n -= warmup - 1
    finally:
        p.join(RUN_TIMEOUT)
        if p.exitcode is None:
            p.kill()
            p.join()
        _close(q, impl)
    return (n - 1) / elapsed


def _mn_producer(q: Any, impl: str, n: int, start: Any) -> None:
    start.wait()
    put = q.put
    for _ in range(n):
        put(MSG)


def _mn_consumer(q: Any, impl: str, start: Any) -> None:
    start.wait()
    get = q.get
    while get() is not None:
        pass


def many_to_many(impl: str, n: int, k: int = 4) -> float:
    """Messages per second, ``k`` producers to ``k`` consumers, all forked."""
    q = _make(impl)
    start = _mp.Event()
    producers = [_mp.Process(target=_mn_producer, args=(q, impl, n // k, start)) for _ in range(k)]
    consumers = [_mp.Process(target=_mn_consumer, args=(q, impl, start)) for _ in range(k)]
    for p in producers + consumers:
        p.start()
    t0 = time.perf_counter()
    start.set()
    for p in producers:
        p.join(RUN_TIMEOUT)
    for _ in consumers:
        q.put(None)
    for p in consumers:
        p.join(RUN_TIMEOUT)
    elapsed = time.perf_counter() - t0
    for p in producers + consumers:
        if p.exitcode is None:
            p.kill()
            p.join()
    _close(q, impl)
    return (n // k) * k / elapsed


def pickle_bound(n: int) -> float:
    """Messages per second if only pickling cost: the slower of dumps and loads."""
    dumps, loads = pickle.dumps, pickle.loads
    t0 = time.perf_counter()
    blobs = [dumps(MSG, 5) for _ in range(n)]
    t1 = time.perf_counter()
    for b in blobs:
        loads(b)
    t2 = time.perf_counter()
    return n / max(t1 - t0, t2 - t1)


def _median(fn: Callable[[], float], repeats: int) -> float | None:
    values = []
    for _ in range(repeats):
        try:
            values.append(fn())
        except Exception:
            return None
    return statistics.median(values)


def run(quick: bool) -> list[Row]:
    repeats = 3 if quick else 7
    n = 60_000 if quick else 300_000
    n_arrays = 30 if quick else 100
    impls = [i for i in IMPLS if i != "faster-fifo" or faster_fifo is not None]
    missing = (
        "" if faster_fifo is not None else "faster-fifo: not installed (pip install faster-fifo)"
    )
    rows: list[Row] = []

    def case(
        name: str, unit: str, fn: Callable[[str], float], impls_here: list[str], note: str = ""
    ) -> dict[str, float | None]:
        values = {impl: _median(functools.partial(fn, impl), repeats) for impl in impls_here}
        base = values.get("mp.Queue")
        for impl, v in values.items():
            rows.append(
                Row(
                    name,
                    impl,
                    v,
                    unit,
                    baseline=base,
                    note=note if impl == "corral" else ("" if v is not None else "failed"),
                )
            )
        if missing:
            rows.append(Row(name, "faster-fifo", None, unit, note=missing))
        return values

    case("64 B, 1->1, put/get", "msg/s", lambda i: one_to_one(i, n, 1, MSG), impls)

    batched = case(
        "64 B, 1->1, put_many/get_many",
        "msg/s",
        lambda i: one_to_one(i, n, BATCH, MSG),
        impls,
        note=f"batches of {BATCH}; stdlib queues have no batch API",
    )
    bound = _median(lambda: pickle_bound(n), repeats)
    rows.append(
        Row(
            "64 B, 1->1, put_many/get_many",
            "pickle bound (dumps|loads)",
            bound,
            "msg/s",
            note="pipelined bound, measured in this run",
        )
    )
    c = batched.get("corral")
    if c is not None and bound:
        rows.append(
            Row(
                "64 B, 1->1, put_many/get_many",
                "corral vs pickle bound",
                c,
                "msg/s",
                baseline=bound,
                note="goal >= 0.5x",
            )
        )
    ff = batched.get("faster-fifo")
    if c is not None and ff:
        rows.append(
            Row(
                "64 B, 1->1, put_many/get_many",
                "corral vs faster-fifo get_many",
                c,
                "msg/s",
                baseline=ff,
                note="goal >= 2x",
            )
        )

    case(
        "64 B, 4->4, put/get",
        "msg/s",
        lambda i: many_to_many(i, n),
        impls,
        note="8 processes on this machine's cores: measures scheduling too",
    )

    if HAVE_NUMPY:
        arr = np.ones(ARRAY_BYTES // 8)
        values = case(
            "16 MiB numpy, 1->1",
            "GB/s",
            lambda i: (
                one_to_one(i, n_arrays, 1, arr, big=True, warmup=WARMUP_ARRAYS) * ARRAY_BYTES / 1e9
            ),
            impls,
            note=f"timed after {WARMUP_ARRAYS} arrays (first-touch faults)",
        )
        del values
    else:
        rows.append(Row("16 MiB numpy, 1->1", "corral", None, "GB/s", note="numpy not installed"))
    return rows


if __name__ == "__main__":
    from corral._tools._bench import _format

    print(_format(run(quick=True)))
