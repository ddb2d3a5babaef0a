"""Locks: corral.Lock against multiprocessing.Lock (issue 4).

Cases, each measured side by side in one run, median of several repeats:
- uncontended acquire+release pair, explicit calls, and the same through ``with``
  (ns per pair; lower is better). corral's floor is two ctypes calls into glibc,
  about 190 ns here; multiprocessing.Lock is one C method each;
- contended hand-off rate: 2 forked processes hammer one lock for a fixed time;
  the figure is how many times per second the lock passed from one process to
  the other (total acquisitions in the note). This machine has 2 cores, so it
  measures scheduling too, and varies from run to run;
- recovery: a waiter thread is blocked in acquire() when the holder process is
  SIGKILLed; time from the kill to the waiter holding the lock (ms). The stdlib
  row shows what multiprocessing.Lock does instead (never: the waiter times out).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import statistics
import threading
import time
import warnings
from typing import Any

import corral
from corral._tools._bench import Row

_mp = multiprocessing.get_context("fork")
_ctx = corral.get_context("fork")

# How long the stdlib's waiter is given to show it never recovers.
STDLIB_RECOVERY_TIMEOUT = 0.5


def _make(impl: str) -> Any:
    return corral.Lock() if impl == "corral" else _mp.Lock()


# ------------------------------------------------------------------ uncontended


def _uncontended_ns(lock: Any, n: int) -> float:
    acquire, release = lock.acquire, lock.release
    t0 = time.perf_counter()
    for _ in range(n):
        acquire()
        release()
    return (time.perf_counter() - t0) / n * 1e9


def _with_ns(lock: Any, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        with lock:
            pass
    return (time.perf_counter() - t0) / n * 1e9


# -------------------------------------------------------------------- contended


def _hammer(lock: Any, start: Any, last: Any, me: int, duration: float) -> tuple[int, int]:
    acquire, release = lock.acquire, lock.release
    count = handoffs = 0
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[me % len(cpus)]})  # one process per core
    start.wait(30)
    end = time.monotonic() + duration
    while time.monotonic() < end:
        for _ in range(50):
            acquire()
            if last.value != me:
                handoffs += 1
                last.value = me
            release()
        count += 50
    return count, handoffs


def _contended(impl: str, duration: float) -> tuple[float, float]:
    lock = _make(impl)
    start = _mp.Event()
    last = _mp.RawValue("i", -1)
    procs = [_ctx.Process(target=_hammer, args=(lock, start, last, i, duration)) for i in (0, 1)]
    for p in procs:
        p.start()
    start.set()
    results = [p.result(timeout=120) for p in procs]
    for p in procs:
        p.join(10)
    total = sum(r[0] for r in results)
    handoffs = sum(r[1] for r in results)
    return handoffs / duration, total / duration


# --------------------------------------------------------------------- recovery


def _hold(lock: Any, ready: Any, stop: Any) -> None:
    lock.acquire()
    ready.set()
    stop.wait(60)


def _recovery_ms(impl: str) -> float | None:
    lock = _make(impl)
    ready, stop = _mp.Event(), _mp.Event()
    holder = _ctx.Process(target=_hold, args=(lock, ready, stop))
    holder.start()
    try:
        ready.wait(30)
        acquired: list[float] = []
        blocked = threading.Event()

        def waiter() -> None:
            blocked.set()
            timeout = 10.0 if impl == "corral" else STDLIB_RECOVERY_TIMEOUT
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if lock.acquire(timeout=timeout):
                    acquired.append(time.monotonic())
                    lock.release()

        t = threading.Thread(target=waiter)
        t.start()
        blocked.wait(10)
        if impl == "corral":  # wait until the thread really sleeps in acquire()
            deadline = time.monotonic() + 10
            while lock.statistics().waiters == 0 and time.monotonic() < deadline:
                time.sleep(0.001)
        else:
            time.sleep(0.05)
        assert holder.pid is not None
        killed_at = time.monotonic()
        os.kill(holder.pid, signal.SIGKILL)
        t.join(30)
        return (acquired[0] - killed_at) * 1e3 if acquired else None
    finally:
        holder.kill()
        holder.join(10)


# ------------------------------------------------------------------------- run


def run(quick: bool) -> list[Row]:
    repeats = 5 if quick else 15
    n_uncontended = 100_000 if quick else 500_000
    duration = 0.2 if quick else 1.0
    rows: list[Row] = []

    locks = {impl: _make(impl) for impl in ("corral", "mp.Lock")}
    samples: dict[str, list[float]] = {impl: [] for impl in locks}
    with_samples: dict[str, list[float]] = {impl: [] for impl in locks}
    for _ in range(repeats):  # interleaved, so both see the same machine
        for impl, lock in locks.items():
            samples[impl].append(_uncontended_ns(lock, n_uncontended))
            with_samples[impl].append(_with_ns(lock, n_uncontended))
    base = statistics.median(samples["mp.Lock"])
    case = "uncontended Lock acquire+release"
    for impl in locks:
        rows.append(
            Row(
                case,
                impl,
                statistics.median(samples[impl]),
                "ns/pair",
                baseline=base,
                higher_is_better=False,
                note="goal: within 5x of mp.Lock" if impl == "corral" else "",
            )
        )

    base = statistics.median(with_samples["mp.Lock"])
    case = "uncontended `with lock:`"
    for impl in locks:
        rows.append(
            Row(
                case,
                impl,
                statistics.median(with_samples[impl]),
                "ns/pair",
                baseline=base,
                higher_is_better=False,
            )
        )

    handoffs: dict[str, list[float]] = {"corral": [], "mp.Lock": []}
    acquisitions: dict[str, list[float]] = {"corral": [], "mp.Lock": []}
    for _ in range(repeats + 2):
        for impl in handoffs:
            rate, acq = _contended(impl, duration)
            handoffs[impl].append(rate)
            acquisitions[impl].append(acq)
    base = statistics.median(handoffs["mp.Lock"])
    case = "contended hand-offs, 2 processes"
    for impl in handoffs:
        rows.append(
            Row(
                case,
                impl,
                statistics.median(handoffs[impl]),
                "handoffs/s",
                baseline=base,
                note=f"{statistics.median(acquisitions[impl]):.3g} acq/s; "
                "goal >= 1x; 2 cores, so scheduling counts",
            )
        )

    latencies = [_recovery_ms("corral") for _ in range(repeats)]
    measured = [x for x in latencies if x is not None]
    case = "holder SIGKILLed -> waiter holds lock"
    rows.append(
        Row(
            case,
            "corral",
            statistics.median(measured) if measured else None,
            "ms",
            note=f"max {max(measured):.1f} ms of {len(measured)}; goal <= 100 ms"
            if measured
            else "never recovered",
        )
    )
    stdlib = _recovery_ms("mp.Lock")
    rows.append(
        Row(
            case,
            "mp.Lock",
            stdlib,
            "ms",
            note=f"never: waiter timed out after {STDLIB_RECOVERY_TIMEOUT} s"
            if stdlib is None
            else "recovered?",
        )
    )
    return rows
