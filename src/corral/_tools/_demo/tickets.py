"""The ticket office: buyer processes share one JSON file under a lock.

    main process                      buyer i (a corral Process)
    ------------                      --------------------------
    tickets.json = {remaining, sold}  lock.acquire()  (OwnerDiedError -> repair)
    chaos: SIGKILL random buyers,     holder = my pid
      above all the lock's holder     read file, "think", write tickets.json.tmp in
                                        two halves, rename over tickets.json
    check the counts at the end       holder = 0, lock.release()

Writes go to a temporary file renamed over the real one, so a buyer killed
part-way through leaves the real file intact and a half-written ``.tmp``. The
next buyer learns of the death from ``OwnerDiedError`` (the lock is created with
``on_owner_death="raise"``), throws the half-written purchase away and carries on.

The same program on ``multiprocessing.Lock`` runs in a child under a deadline:
once a holder is killed, nobody ever gets the lock again; at the deadline the
child kills (and reaps) the buyers still blocked, and the demo reports them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import corral
from corral._core import _linux

from . import Report, scenario

# How long the stdlib version gets before it is declared hung and killed.
STDLIB_DEADLINE = 3.0
# How long the corral version may take before the demo gives up on it.
CORRAL_DEADLINE = 60.0
# A buyer's "thinking" while holding the lock, in seconds (uniform).
THINK = (0.002, 0.015)
# The chance that chaos kills a holder it catches (the first one always dies).
KILL_HOLDER_P = 0.3


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--buyers", type=int, default=30, help="buyer processes (default 30)")
    p.add_argument("--tickets", type=int, default=10, help="tickets for sale (default 10)")
    p.add_argument(
        "--chaos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="SIGKILL random buyers, some while they hold the lock (default on)",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed for the chaos")


# ------------------------------------------------------------------ the buyers


def _read(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        state: dict[str, Any] = json.load(f)  # raises on a corrupt file
    return state


def _write_atomic(path: str, state: dict[str, Any], rng: random.Random) -> None:
    data = json.dumps(state).encode()
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        half = len(data) // 2
        os.write(fd, data[:half])
        time.sleep(rng.uniform(*THINK))  # killed here: a half-written purchase
        os.write(fd, data[half:])
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _repair(path: str) -> None:
    """After a holder died: drop its half-written purchase; the real file is whole."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path + ".tmp")
    _read(path)


def _buy(path: str, holder: Any, buyer: int, rng: random.Random) -> int | None:
    holder.value = os.getpid()
    state = _read(path)
    time.sleep(rng.uniform(*THINK))
    if state["remaining"] <= 0:
        return None
    ticket = int(state["total"] - state["remaining"] + 1)
    state["remaining"] -= 1
    state["sold"].append([ticket, buyer])
    _write_atomic(path, state, rng)
    return ticket


# How long a frozen holder may take to stop (SIGSTOP lands when it next runs).
STOP_WAIT = 5.0


def _frozen_holding(pid: int, holder: Any) -> bool:
    """Freeze buyer ``pid`` (SIGSTOP) and say whether it still holds the lock: it
    clears ``holder`` before releasing, so only then is a kill a death *inside* the
    lock. A buyer that no longer holds it is let go on (SIGCONT). (``pid`` is an
    unjoined child of ours: it can't name another process.)"""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + STOP_WAIT
    while _linux.proc_state(pid) not in ("T", "t", "Z", None) and time.monotonic() < deadline:
        time.sleep(0.0005)
    if holder.value == pid:
        return True
    os.kill(pid, signal.SIGCONT)
    return False


def _corral_buyer(
    lock: corral.Lock, path: str, holder: Any, repairs: Any, buyer: int, seed: int
) -> int | None:
    rng = random.Random(seed)
    try:
        if not lock.acquire(timeout=CORRAL_DEADLINE):
            raise TimeoutError("buyer could not get the lock")
    except corral.OwnerDiedError:
        _repair(path)  # we hold the lock
        repairs.value += 1
    try:
        return _buy(path, holder, buyer, rng)
    finally:
        holder.value = 0
        lock.release()


def _stdlib_buyer(lock: Any, path: str, holder: Any, buyer: int, seed: int) -> None:
    rng = random.Random(seed)
    with lock:
        try:
            _buy(path, holder, buyer, rng)
        finally:
            holder.value = 0


def _stdlib_office(path: str, buyers: int, seed: int, deadline: float) -> tuple[int, int, int]:
    """The same office on multiprocessing: kill the first holder, then join.

    A stdlib program would join forever; this one stops at ``deadline``, kills
    the buyers still blocked (and reaps them). Returns the buyers still blocked
    then, and the tickets sold just after the kill and at the deadline.
    """
    mp = multiprocessing.get_context("fork")
    lock = mp.Lock()
    holder = mp.RawValue("i", 0)
    procs = [
        mp.Process(target=_stdlib_buyer, args=(lock, path, holder, i, seed + i))
        for i in range(buyers)
    ]
    for p in procs:
        p.start()
    end = time.monotonic() + deadline
    victim = None
    while victim is None and time.monotonic() < end:
        pid = holder.value
        if pid == 0:
            time.sleep(0.001)
            continue
        if _frozen_holding(pid, holder):
            os.kill(pid, signal.SIGKILL)
            victim = next(p for p in procs if p.pid == pid)
    if victim is not None:
        victim.join(deadline)
    sold_after_kill = len(_read(path)["sold"])
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))
    blocked = [p for p in procs if p.exitcode is None]
    for p in blocked:
        p.kill()
    sold_at_deadline = len(_read(path)["sold"])
    for p in procs:
        p.join()
    return len(blocked), sold_after_kill, sold_at_deadline


# --------------------------------------------------------------- the scenario


def _new_office(directory: str, name: str, tickets: int) -> str:
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"total": tickets, "remaining": tickets, "sold": []}, f)
    return path


def _run_corral(ns: argparse.Namespace, report: Report, path: str, rng: random.Random) -> None:
    ctx = corral.get_context("fork")
    lock = corral.Lock(on_owner_death="raise")
    holder = corral.RawValue("i", 0)
    repairs = corral.RawValue("i", 0)
    procs = [
        ctx.Process(
            target=_corral_buyer,
            args=(lock, path, holder, repairs, i, rng.randrange(1 << 30)),
            name=f"buyer-{i}",
        )
        for i in range(ns.buyers)
    ]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    by_pid = {p.pid: p for p in procs}
    killed: set[int] = set()
    holders_killed = 0
    seen_holder = 0
    deadline = t0 + CORRAL_DEADLINE
    # The chaos monkey: strike holders while they think or write, and now and
    # then a buyer still waiting in line.
    while any(p.exitcode is None for p in procs) and time.monotonic() < deadline:
        if ns.chaos:
            h = holder.value
            if h and h != seen_holder and h in by_pid:
                seen_holder = h
                if holders_killed == 0:
                    # At least one death inside the lock in every run, however busy
                    # the machine: the holder is frozen and killed only if it still
                    # holds the lock; else it goes on, and the next holder is tried.
                    if _frozen_holding(h, holder):
                        by_pid[h].kill()
                        killed.add(h)
                        by_pid[h].join(10)
                        holders_killed += 1
                elif rng.random() < KILL_HOLDER_P:
                    # Later strikes land anywhere in the holder's turn.
                    time.sleep(rng.uniform(0, 2 * THINK[1]))
                    by_pid[h].kill()
                    killed.add(h)
                    # Did it die inside the lock? Only its death can say: between a
                    # look and the kill, a busy machine may let it leave.
                    by_pid[h].join(10)
                    if holder.value == h:
                        holders_killed += 1
            elif rng.random() < 0.002 and lock.statistics().recoveries == repairs.value:
                # (Not while a repair is under way: a repairer killed mid-repair is a
                # death the next holder recovers from, but it would leave one more
                # recovery than completed repairs, and the count below is exact.)
                waiting = [p for p in procs if p.exitcode is None and p.pid != h]
                if waiting:
                    victim = rng.choice(waiting)
                    victim.kill()
                    killed.add(victim.pid or 0)
        time.sleep(0.0005)
    elapsed = time.monotonic() - t0
    hung = [p for p in procs if p.exitcode is None]
    for p in hung:
        p.kill()
    receipts: dict[int, int | None] = {}
    failures: list[str] = []
    for i, p in enumerate(procs):
        p.join(10)
        if p.pid in killed:
            continue
        try:
            receipts[i] = p.result(timeout=0)
        except corral.ProcessDied:
            failures.append(f"buyer {i} died on its own")
        except Exception as exc:
            failures.append(f"buyer {i}: {type(exc).__name__}: {exc}")
    recoveries = lock.statistics().recoveries

    report.note(
        f"{ns.buyers} buyers, {ns.tickets} tickets, chaos {'on' if ns.chaos else 'off'}: "
        f"{len(killed)} buyers SIGKILLed ({holders_killed} caught holding the lock), "
        f"{recoveries} owner deaths recovered, in {elapsed:.2f} s"
    )
    report.check(
        "corral: every buyer finished or was killed; nobody hung",
        not hung,
        f"{len(hung)} still blocked" if hung else f"{elapsed:.2f} s",
    )
    report.check(
        "corral: no buyer saw an error (a corrupt file, a stuck lock)",
        not failures,
        "; ".join(failures[:3]),
    )
    try:
        state = _read(path)
        corrupt = ""
    except ValueError as exc:
        state, corrupt = {"total": ns.tickets, "remaining": -1, "sold": []}, str(exc)
    report.check("corral: the file is whole at the end", not corrupt, corrupt)
    sold = state["sold"]
    numbers = [t for t, _ in sold]
    report.check(
        "corral: no ticket oversold",
        state["remaining"] >= 0 and len(sold) <= ns.tickets and len(set(numbers)) == len(numbers),
        f"{len(sold)} sold of {ns.tickets}, numbers {sorted(numbers)}",
    )
    report.check(
        "corral: no ticket lost",
        state["remaining"] + len(sold) == ns.tickets,
        f"remaining {state['remaining']} + sold {len(sold)} = {ns.tickets}",
    )
    in_file = {buyer: ticket for ticket, buyer in sold}
    mismatched = [i for i, t in receipts.items() if t is not None and in_file.get(i) != t]
    turned_away = [i for i, t in receipts.items() if t is None]
    report.check(
        "corral: every receipt is in the file, and nobody was turned away early",
        not mismatched and (not turned_away or state["remaining"] == 0),
        f"{len(receipts) - len(turned_away)} receipts, {len(turned_away)} told 'sold out'",
    )
    if ns.chaos:
        report.check(
            "corral: every death inside the lock was seen and repaired",
            recoveries == repairs.value and recoveries >= 1,
            f"{recoveries} recoveries, {repairs.value} repairs by the next holder",
        )


def _run_stdlib(ns: argparse.Namespace, report: Report, path: str, seed: int) -> None:
    # In a corral child, so that nothing it starts can outlive the demo.
    child = corral.get_context("fork").Process(
        target=_stdlib_office,
        args=(path, min(ns.buyers, 10), seed, STDLIB_DEADLINE),
        name="stdlib-office",
    )
    child.start()
    try:
        blocked, sold_after_kill, sold = child.result(timeout=STDLIB_DEADLINE + 30)
    except Exception as exc:  # reported, not raised
        report.note(f"the stdlib office failed: {exc!r}")
        blocked, sold_after_kill, sold = 0, 0, -1
    finally:
        child.kill()
        child.join(10)
    report.check(
        "multiprocessing.Lock: one holder SIGKILLed, every other buyer blocked for good",
        blocked > 0 and sold == sold_after_kill,
        f"{blocked} buyers still blocked {STDLIB_DEADLINE:.0f} s later, no ticket sold "
        f"after the kill ({sold} in all); the demo killed them",
    )


@scenario(
    "tickets",
    "buyers share a JSON file under a lock; holders are SIGKILLed mid-purchase",
    _add_arguments,
)
def run(ns: argparse.Namespace, report: Report) -> None:
    seed = ns.seed if getattr(ns, "seed", None) is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    report.note(f"seed {seed}")
    with tempfile.TemporaryDirectory(prefix="corral-tickets-") as directory:
        _run_corral(ns, report, _new_office(directory, "corral.json", ns.tickets), rng)
        if ns.chaos:
            _run_stdlib(ns, report, _new_office(directory, "stdlib.json", ns.tickets), seed)
        Path(directory, "done").touch()
