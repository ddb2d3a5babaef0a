"""Targets and tools for tests: module-level, so that spawn and forkserver can pickle them."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import corral
from corral._core import _linux
from corral._tools._demo import _watch
from corral._tools._demo._targets import descendants_then_wait as descendants_then_wait
from corral._tools._demo._targets import spawn_descendants as spawn_descendants

# Long enough to outlive any test; every process that sleeps this long is killed by
# the test or by corral, never waited out.
FOREVER = 300.0


def double(x: int) -> int:
    return x * 2


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def exit_with(code: int) -> None:
    os._exit(code)


def sys_exit(code: int | None) -> None:
    sys.exit(code)


def sleep_forever() -> None:
    time.sleep(FOREVER)


def kill_self(sig: int) -> None:
    os.kill(os.getpid(), sig)


def return_unpicklable() -> Any:
    return lambda: None


class UnpicklableError(Exception):
    def __init__(self, a: int, b: int):  # args don't round-trip through pickle
        super().__init__(f"{a}/{b}")


def raise_unpicklable_error() -> None:
    raise UnpicklableError(1, 2)


def report_identity(conn: Connection) -> None:
    """Send (pid, parent_process().pid, current_process().name) of this child."""
    parent = corral.parent_process()
    conn.send((os.getpid(), parent.pid if parent else None, corral.current_process().name))


def echo_forever(conn: Connection) -> None:
    """Answer every message with the same message, until killed."""
    while conn.poll(FOREVER):
        conn.send(conn.recv())


def leave_descendants_behind(conn: Connection, then_raise: bool) -> None:
    """Start descendants, send their pids, then return (or raise)."""
    conn.send(spawn_descendants())
    if then_raise:
        raise RuntimeError("raised with descendants running")


def start_grandchild(method: str, daemon: bool) -> int:
    """From inside a (possibly daemonic) corral child, start a corral child and get its result."""
    p = corral.get_context(method).Process(target=double, args=(21,), daemon=daemon)
    p.start()
    value: int = p.result(timeout=60)
    p.join(timeout=60)
    return value


def read_line(fd: int, timeout: float) -> str:
    """Read one line from ``fd``, failing loudly after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"no complete line within {timeout} s (got {data!r})")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise EOFError(f"EOF before a complete line (got {data!r})")
        data += chunk
    return data.decode()


def start_parent(code: str) -> subprocess.Popen[bytes]:
    """Run ``code`` as a parent interpreter that the test drives through its stdin and
    reads through its stdout (a "READY pid..." line: see ``ready_and_pinned``)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert parent.stdin is not None
    assert parent.stdout is not None
    return parent


def ready_and_pinned(parent: subprocess.Popen[bytes]) -> tuple[list[int], dict[int, int]]:
    """Read the parent's "READY pid..." line, then pin its whole subtree with pidfds.

    Returns the pids it reported, and the pidfds of everything below it (the
    reported ones plus any stdlib helpers), which the caller closes.
    """
    assert parent.stdout is not None
    line = read_line(parent.stdout.fileno(), 60)
    assert line.startswith("READY"), line
    reported = [int(x) for x in line.split()[1:]]
    subtree = list(_linux.descendants_of(parent.pid))
    assert set(reported) <= set(subtree), (reported, subtree)
    return reported, _watch.pin(subtree)


def return_big_under_file_limit(nbytes: int, limit: int) -> bytes:
    """Return ``nbytes`` bytes, with the process's file size limit at ``limit``:
    writing the result record then kills it (SIGXFSZ) with the record cut short."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # (Python ignores it by default)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return b"x" * nbytes


def sleeping_grandchildren(q: Any, n: int) -> None:
    """Start ``n`` ``sleep`` subprocesses, put their pids on ``q``, then sleep."""
    import subprocess

    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(n)]
    q.put([p.pid for p in procs])
    time.sleep(60)


def lifeline_state() -> dict[str, Any]:
    """What a corral child's setup left behind, seen from inside the child: the
    armed lifeline (owner, signal, flags, which pipe), the inherited read end,
    the signal handler, the subreaper flag."""
    import fcntl
    import signal
    import struct
    import threading

    from corral._core import _bootstrap, _lifeline

    f_getown_ex = 16  # (fcntl has no constant for it)
    fd = _lifeline.armed_fd()
    assert fd is not None
    owner_type, owner = struct.unpack("ii", fcntl.fcntl(fd, f_getown_ex, bytes(8)))
    pipe = os.readlink(f"/proc/self/fd/{fd}")
    same_pipe = [
        int(n) for n in os.listdir("/proc/self/fd") if _readlink(f"/proc/self/fd/{n}") == pipe
    ]
    return {
        "owner": (owner_type, owner),
        "main thread": (threading.get_native_id(), os.getpid()),
        "signal": fcntl.fcntl(fd, fcntl.F_GETSIG),
        "async": bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ASYNC),
        "pipe": pipe.startswith("pipe:"),
        "fds on the pipe": same_pipe,
        "armed fd": fd,
        "handler": signal.getsignal(_lifeline.LIFELINE_SIGNAL) is _bootstrap._die_with_parent,
        "subreaper": _linux.is_child_subreaper(),
    }


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except FileNotFoundError:  # (the fd listdir itself used)
        return ""


def bytes_of(n: int) -> bytes:
    return bytes(range(256)) * (n // 256) + bytes(n % 256)


def has_children_answers() -> list[bool]:
    """``_speedups.has_children()`` with no child, a running one, an exited one not
    yet reaped, and after the reaping."""
    from corral._core._native import speedups

    assert speedups is not None
    answers = [speedups.has_children()]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(r, 1)
        os._exit(0)
    answers.append(speedups.has_children())
    os.write(w, b"x")
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    answers.append(speedups.has_children())
    os.waitpid(pid, 0)
    answers.append(speedups.has_children())
    os.close(r)
    os.close(w)
    return answers


def parent_view(parent_pid: int) -> tuple[bool, bool, bool]:
    """``parent_process()`` from inside a child: alive?, the right pid?, and is its
    sentinel the armed lifeline?"""
    import multiprocessing

    from corral._core import _lifeline

    parent = multiprocessing.parent_process()
    assert parent is not None
    return parent.is_alive(), parent.pid == parent_pid, parent.sentinel == _lifeline.armed_fd()


def raw_fork_parent_view(parent_pid: int) -> tuple[bool, bool, int, int]:
    """From inside a child: what a raw ``os.fork()`` of it sees as
    ``parent_process()`` (alive?, the right pid?) and how many of its fds on this
    child's lifeline pipe are signal-driven (O_ASYNC: the parent's death would then
    signal this child, whatever it has become); and how many fds on that pipe a
    corral fork grandchild keeps (its own lifeline is another pipe)."""
    import multiprocessing

    from corral._core import _lifeline

    armed = _lifeline.armed_fd()
    ours = os.readlink(f"/proc/self/fd/{armed}") if armed is not None else ""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            parent = multiprocessing.parent_process()
            seen = bytes(
                [
                    parent is not None and parent.is_alive(),
                    parent is not None and parent.pid == parent_pid,
                    async_fds_on(ours),
                ]
            )
            os.write(w, seen)
        finally:
            os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    seen = os.read(r, 3)
    os.close(r)
    assert status == 0, status
    assert len(seen) == 3, seen
    grandchild = corral.get_context("fork").Process(target=fds_on, args=(ours,))
    grandchild.start()
    kept: int = grandchild.result(timeout=60)
    return bool(seen[0]), bool(seen[1]), seen[2], kept


def async_fds_on(target: str | None, pid: int | str = "self") -> int:
    """How many of ``pid``'s fds (this process's by default) point at ``target``
    (at anything, if None) with O_ASYNC set."""
    count = 0
    for n in os.listdir(f"/proc/{pid}/fd"):
        if target is not None and _readlink(f"/proc/{pid}/fd/{n}") != target:
            continue
        try:
            with open(f"/proc/{pid}/fdinfo/{n}") as f:
                flags = next(int(x.split()[1], 8) for x in f if x.startswith("flags:"))
        except OSError:  # (closed meanwhile: the fd listdir itself used, say)
            continue
        count += bool(flags & 0o20000)  # (O_ASYNC, FASYNC)
    return count


def fds_on(target: str) -> int:
    """How many of this process's fds point at ``target`` (a /proc/self/fd link)."""
    return sum(1 for n in os.listdir("/proc/self/fd") if _readlink(f"/proc/self/fd/{n}") == target)


def corral_fds_kept_across_exec(*shared: Any) -> list[str]:
    """From inside a child given ``shared`` corral objects at start: its fds on
    corral's memfds or on its lifeline that an exec() would keep (inheritable)."""
    from corral._core import _lifeline

    del shared  # (passed only so that their fds reach this child)
    armed = _lifeline.armed_fd()
    lifeline = os.readlink(f"/proc/self/fd/{armed}") if armed is not None else None
    kept = []
    for n in map(int, os.listdir("/proc/self/fd")):
        target = _readlink(f"/proc/self/fd/{n}")
        ours = target.startswith("/memfd:corral") or (lifeline is not None and target == lifeline)
        if ours and os.get_inheritable(n):
            kept.append(f"{n} -> {target}")
    return kept


def identity(x: Any) -> Any:
    return x


class IntSubclass(int):
    """An int of another type: its outcome must keep the type (no scalar shortcut)."""


def stdin_view() -> dict[str, Any]:
    """A child's ``sys.stdin``, as the stdlib's child bootstrap leaves it (a text
    reader of /dev/null that reads nothing), without its fd number."""
    stdin = sys.stdin
    if stdin is None:
        return {"stdin": None}
    fd = stdin.fileno()
    st, null = os.fstat(fd), os.stat(os.devnull)
    buffer: Any = stdin.buffer
    raw = buffer.raw
    return {
        "types": [type(stdin).__name__, type(buffer).__name__, type(raw).__name__],
        "encoding": stdin.encoding,
        "errors": stdin.errors,
        "mode": stdin.mode,
        "closefd": raw.closefd,
        "name is its fd": stdin.name == fd,
        "is /dev/null": (st.st_mode, st.st_rdev) == (null.st_mode, null.st_rdev),
        "inheritable": os.get_inheritable(fd),
        "read": stdin.read(),
        "closed": stdin.closed,
    }


def send_stdin_view(conn: Connection) -> None:
    conn.send(stdin_view())
    conn.close()


def stdlib_stdin_view(method: str, timeout: float) -> dict[str, Any]:
    """``stdin_view()`` from a child of the stdlib's own, under ``method``."""
    import multiprocessing

    ctx: Any = multiprocessing.get_context(method)
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=send_stdin_view, args=(w,))
    p.start()
    w.close()
    try:
        if not r.poll(timeout):
            raise TimeoutError(f"no stdin view from a stdlib child within {timeout} s")
        view: dict[str, Any] = r.recv()
    finally:
        r.close()
        p.join(timeout)
        if p.exitcode is None:
            p.kill()
            p.join(timeout)
    return view


def stdin_views_below(method: str, timeout: float) -> list[dict[str, Any]]:
    """This child's ``stdin_view()``, then those of a corral child and a stdlib child
    of its own, under ``method``."""
    p = corral.get_context(method).Process(target=stdin_view)
    p.start()
    below = p.result(timeout=timeout)
    return [stdin_view(), below, stdlib_stdin_view(method, timeout)]
