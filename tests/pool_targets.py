"""Tasks for the pool tests: module-level, so that spawn and forkserver can pickle them.

Tasks that must be killed mid-run announce themselves on a channel queue that each
worker receives at start (``Pool(initializer=set_channel, initargs=(queue,))``):
``(pid, item)`` once they are running, so the test knows whom to kill and when.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import corral

FOREVER = 300.0

_channel: corral.Queue | None = None


def set_channel(q: corral.Queue) -> None:
    global _channel
    _channel = q


def _announce(*extra: Any) -> None:
    assert _channel is not None, "the pool was not started with initializer=set_channel"
    _channel.put((os.getpid(), *extra), timeout=30)


def double(x: int) -> int:
    return x * 2


def add(a: int, b: int) -> int:
    return a + b


def kwargs_echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x * 2


def fail_if_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd item {x}")
    return x * 2


def block_once(x: int, bad: int, marker: str) -> int:
    """Announce and block on item ``bad`` the first time (``marker`` records it)."""
    if x == bad:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return x * 2  # the retry: run normally
        os.close(fd)
        _announce(x)
        time.sleep(FOREVER)
    return x * 2


def block_on(x: int, bad: int) -> int:
    """Announce and block on item ``bad``, every time."""
    if x == bad:
        _announce(x)
        time.sleep(FOREVER)
    return x * 2


def block_with_grandchild(x: int, bad: int) -> int:
    """On item ``bad``: start a grandchild, announce (own pid, item, its pid), block."""
    if x == bad:
        child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({FOREVER})"])
        _announce(x, child.pid)
        time.sleep(FOREVER)
    return x * 2


def die_on(x: int, bad: int, how: str) -> int:
    """Kill this worker on item ``bad``: 'exit', 'sigkill' or 'segfault'."""
    if x == bad:
        if how == "exit":
            os._exit(3)
        elif how == "sigkill":
            os.kill(os.getpid(), 9)
        elif how == "segfault":
            ctypes.string_at(0)
    return x * 2


def die_on_item(item: tuple[int, int, str]) -> int:
    return die_on(*item)


def die_once(x: int, bad: int, marker: str) -> int:
    """os._exit on item ``bad`` the first time only."""
    if x == bad:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return x * 2
        os.close(fd)
        os._exit(4)
    return x * 2


def die_on_item_once(item: tuple[int, int, str]) -> int:
    return die_once(*item)


def return_lock(x: int) -> Any:
    return threading.Lock() if x == 1 else x


class UnpicklableError(Exception):
    def __init__(self, a: int, b: int):  # args don't round-trip through pickle
        super().__init__(f"{a}/{b}")


def raise_unpicklable(x: int) -> int:
    if x == 1:
        raise UnpicklableError(1, 2)
    return x


class BadUnpickle:
    """Pickles fine, fails to unpickle: exercises a worker-side loading error."""

    def __reduce__(self) -> Any:
        return (_refuse, ())


def _refuse() -> Any:
    raise RuntimeError("refusing to be unpickled")


class DieOnPickle:
    """A result whose pickling SIGKILLs the process: the item returned, then it died."""

    def __reduce__(self) -> Any:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


def identity(x: Any) -> Any:
    return x


def nested_pool(method: str, n: int) -> list[int]:
    with corral.Pool(2, context=method) as pool:
        return pool.map(double, range(n))


def worker_pid(x: int) -> int:
    return os.getpid()


def rss_hog(x: int) -> int:
    """Allocate (and keep) 40 MiB, so max_memory_per_child recycles this worker."""
    global _hog
    _hog = bytearray(40 * 1024 * 1024)
    for i in range(0, len(_hog), 4096):
        _hog[i] = 1
    return os.getpid()


_hog: bytearray | None = None


def init_fail() -> None:
    raise RuntimeError("initializer refuses")


_initialized: int | None = None


def init_set(value: int) -> None:
    global _initialized
    _initialized = value


def get_initialized(x: int) -> int | None:
    return _initialized


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def block_with_grandchild_always(x: int) -> int:
    return block_with_grandchild(x, x)


def _sigint_parent(method: str, what: str) -> None:
    """``python -m tests.pool_targets sigint METHOD``: a parent for the Ctrl-C test.

    Runs ``pool.map`` over tasks that each start a grandchild and block; prints
    ``READY`` with every worker and grandchild pid once both workers are busy, then
    waits in ``map`` for the test's SIGINT.
    """
    q = corral.Queue()
    pool = corral.Pool(2, set_channel, (q,), context=method)

    def report() -> None:
        pids = []
        for _ in range(2):
            pid, _item, grandchild = q.get(timeout=60)
            pids += [pid, grandchild]
        print("READY", *pids, flush=True)

    threading.Thread(target=report, daemon=True).start()
    if what == "map":
        pool.map(block_with_grandchild_always, range(10))
    else:
        pool.terminate()
        pipeline = (
            corral.Pipeline(range(10), context=method)
            .stage(double, workers=1)
            .stage(block_with_grandchild_always, workers=2, initializer=set_channel, initargs=(q,))
        )
        for _ in pipeline:
            pass


if __name__ == "__main__":
    if sys.argv[1] == "sigint":
        _sigint_parent(sys.argv[2], sys.argv[3])


def batch_double(items: list[int]) -> list[int]:
    return [x * 2 for x in items]


def block_once_item(item: tuple[int, int, str]) -> int:
    return block_once(*item)


def add_one(x: Any) -> Any:
    return x + 1


def _count_run(path: str, x: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)


def counted(item: tuple[int, int, str, str, Any]) -> Any:
    """Record that item ``x`` ran (a line in ``path``), then misbehave as ``how`` on ``bad``."""
    x, bad, how, path, _payload = item
    _count_run(path, x)
    time.sleep(0.0002)  # items are committed in groups, logged in between
    if x == bad:
        if how in ("exit", "sigkill", "segfault"):
            die_on(x, bad, how)
        elif how == "raise":
            raise ValueError(f"bad item {x}")
        elif how == "result_pickle":
            return threading.Lock()
        elif how == "result_unpickle":
            return BadUnpickle()
        elif how == "die_delivering":
            return DieOnPickle()
        elif how == "timeout":
            time.sleep(FOREVER)
    return x * 2


def counted_sleep(item: tuple[int, float, str]) -> int:
    """Record that item ``x`` ran, then sleep ``seconds``."""
    x, seconds, path = item
    _count_run(path, x)
    time.sleep(seconds)
    return x * 2


def counted_block(item: tuple[int, int, str]) -> int:
    """Record that item ``x`` ran; on ``bad``, announce it and block until killed."""
    x, bad, path = item
    _count_run(path, x)
    time.sleep(0.0002)  # items are committed in groups, logged in between
    if x == bad:
        _announce(x)
        time.sleep(FOREVER)
    return x * 2


def batch_fail_on_multiples_of_7(items: list[int]) -> list[int]:
    """A batched stage that refuses any batch holding a multiple of 7 (but not 0)."""
    if any(x % 7 == 0 and x for x in items):
        raise ValueError(f"a multiple of 7 in {items}")
    return [x * 2 for x in items]


def die_on_13(x: int) -> int:
    if x == 13:
        os.kill(os.getpid(), 9)
    return x


# --- Targets for the stopping, paused-worker, progress and reuse tests -------------------


class BadStrError(Exception):
    """An exception that can't be described: its ``__str__`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("this exception refuses to be described")


def raise_bad_str(item: tuple[int, str]) -> int:
    """Record that item ``x`` ran (a line in ``path``), then raise a BadStrError."""
    x, path = item
    _count_run(path, x)
    raise BadStrError(x)


def raise_system_exit(code: int) -> int:
    raise SystemExit(code)


def init_forever() -> None:
    """An initializer that never returns."""
    time.sleep(FOREVER)


def counted_block_with_grandchild(item: tuple[int, str]) -> int:
    """Record that item ``x`` ran, start a grandchild, announce (pid, x, its pid), block."""
    x, path = item
    _count_run(path, x)
    child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({FOREVER})"])
    _announce(x, child.pid)
    time.sleep(FOREVER)
    return x * 2


def length(data: bytes) -> int:
    return len(data)


# x86_64 syscall numbers of the calls a worker writes its result with.
_WRITE_SYSCALLS = {"1", "20", "44", "46"}  # write, writev, sendto, sendmsg


def big_result_stopped_mid_send(nbytes: int) -> bytes:
    """Return ``nbytes`` of result, and SIGSTOP this worker while it is writing them.

    A watcher thread waits until the main thread is inside a write to the socket
    (``/proc/self/task/<tid>/syscall``), announces ``(pid, "sending")`` and stops
    the whole process there: a worker paused mid-way through sending its result.
    """
    main = threading.get_native_id()
    pid = os.getpid()

    def watch() -> None:
        path = f"/proc/self/task/{main}/syscall"
        while True:
            with open(path) as f:
                nr = f.read().split()[0]
            if nr in _WRITE_SYSCALLS:
                _announce("sending")
                os.kill(pid, signal.SIGSTOP)
                return
            time.sleep(0.0005)  # polls another thread's state; no event says "in write"

    threading.Thread(target=watch, daemon=True).start()
    return b"r" * nbytes


def pid_after_announce(x: int) -> int:
    """Announce, then return this worker's pid."""
    _announce(x)
    return os.getpid()


def block_ignoring_sigterm(x: int) -> int:
    """Ignore SIGTERM (so only SIGKILL ends this worker), start a grandchild, announce
    (pid, x, its pid) and block."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return block_with_grandchild(x, x)


def init_fail_once(marker: str) -> None:
    """An initializer that raises in the first worker that runs it, and never again."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    raise RuntimeError("initializer fails once")


def block_always(x: int) -> int:
    """Announce ``(pid, x)`` and block until killed."""
    return block_on(x, x)


def wait_for_release(path: str) -> str:
    """Announce ``(pid, path)``, then wait until ``path`` exists (the test releases it)."""
    _announce(path)
    while not os.path.exists(path):
        time.sleep(0.005)  # the task's own wait; the test never sleeps on it
    return path


def wait_for_release_big(path: str) -> bytes:
    """``wait_for_release``, then return 32 MiB: the parent is still reading them when
    the worker is free to start its next task."""
    wait_for_release(path)
    return b"r" * (32 * 1024 * 1024)


def raise_unpicklable_counted(item: tuple[int, str]) -> int:
    """Record that item ``x`` ran, then raise an exception that can't be unpickled."""
    x, path = item
    _count_run(path, x)
    raise UnpicklableError(x, 0)


def corral_map_pids(method: str) -> list[int]:
    """The worker pids of a corral.map call made here (in a child, say)."""
    return sorted(set(corral.map(worker_pid, range(20), workers=2, context=method, chunksize=1)))


class ExitOnUnpickle:
    """Pickles fine; unpickling it raises SystemExit (in whatever process does it)."""

    def __reduce__(self) -> Any:
        return (sys.exit, (3,))


def return_exit_on_unpickle(x: int) -> Any:
    return ExitOnUnpickle() if x == 1 else x


# Results of every kind the worker's outcome log encodes: the C loop pickles the
# scalars itself, and hands the rest (and whatever does not fit) to pickle.
RESULT_KINDS = (
    "int",
    "bigint",
    "float",
    "str",
    "bytes",
    "none",
    "bool",
    "tuple",
    "large",
    "unpicklable",
)


def result_of(kind: str, x: int) -> Any:
    """Item ``x``'s result for a row of kind ``kind`` (item 3 is the odd one out)."""
    if kind == "int":
        return x * -70_000 if x % 2 else x
    if kind == "bigint":
        return x * 2**70
    if kind == "float":
        return x / 3
    if kind == "str":
        return f"é{x}" * (x % 300)
    if kind == "bytes":
        return bytes([x % 256]) * (x % 300)
    if kind == "none":
        return None
    if kind == "bool":
        return x % 3 == 0
    if kind == "tuple":
        return (x, str(x))
    if kind == "large":  # larger than the log's first mapping: the log grows
        return b"L" * (3 << 20) if x == 3 else x
    if kind == "unpicklable":
        return threading.Lock() if x == 3 else x
    raise ValueError(kind)


def fast_result(item: tuple[int, int, str, str]) -> Any:
    """Record that item ``x`` ran; SIGKILL the worker at ``bad``; else a fast result."""
    x, bad, kind, path = item
    _count_run(path, x)
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return result_of(kind, x)


def bump_in_place(a: Any) -> Any:
    """Add 1 to an array where it lies (the worker's own copy), and return it."""
    a += 1
    return a


def filled(item: tuple[int, float]) -> Any:
    """A fresh array of ``n`` float64s, each ``value``."""
    import numpy as np

    n, value = item
    return np.full(n, value)


def gated(x: int, where: str) -> int:
    """Record the run of item ``x`` (``where``/runs) and the worker's pid
    (``where``/started-x), then wait until the test creates ``where``/go."""
    _count_run(os.path.join(where, "runs"), x)
    started = os.path.join(where, f"started-{x}")
    with open(started + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(started + ".tmp", started)
    go = os.path.join(where, "go")
    while not os.path.exists(go):
        time.sleep(0.005)  # the task's own wait; the test never sleeps on it
    return x * 2
