"""corral.Process keeps the multiprocessing.Process API; result() is new.

Where corral mirrors the stdlib, the same assertions run against
``multiprocessing.Process`` as the reference.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
import types
from typing import Any

import pytest

import corral
from corral._core import _linux
from corral._core._fdpass import FdHandle

from . import helpers
from .conftest import wait_until

TIMEOUT = 60.0


class Doubler(corral.Process):
    """Subclassing and overriding run(), as with the stdlib."""

    def __init__(self, x: int) -> None:
        super().__init__()
        self.x = x

    def run(self) -> int:  # type: ignore[override]  # typeshed: BaseProcess.run -> None
        return self.x * 2


@pytest.fixture(params=["corral", "multiprocessing"])
def any_ctx(request: pytest.FixtureRequest, start_method: str) -> Any:
    """corral's context, and the stdlib's as the reference implementation."""
    if request.param == "corral":
        return corral.get_context(start_method)
    return multiprocessing.get_context(start_method)


def test_stdlib_api_parity(any_ctx: Any) -> None:
    r, w = multiprocessing.Pipe(duplex=False)
    p = any_ctx.Process(target=helpers.report_identity, args=(w,), name="worker-1")
    assert p.name == "worker-1"
    assert p.daemon is False
    assert (p.pid, p.exitcode, p.is_alive()) == (None, None, False)
    p.daemon = True
    p.start()
    w.close()
    assert r.poll(TIMEOUT)
    pid, parent_pid, name = r.recv()
    r.close()
    p.join(TIMEOUT)
    assert (pid, parent_pid, name) == (p.pid, os.getpid(), "worker-1")
    assert p.exitcode == 0
    assert not p.is_alive()
    assert isinstance(p.sentinel, int)
    assert isinstance(p.authkey, bytes)
    with pytest.raises(AssertionError, match="cannot start a process twice"):
        p.start()
    p.close()
    with pytest.raises(ValueError, match="closed"):
        p.is_alive()


def test_join_timeout_then_terminate(any_ctx: Any) -> None:
    p = any_ctx.Process(target=helpers.sleep_forever)
    p.start()
    p.join(0.01)
    assert p.exitcode is None
    assert p.is_alive()
    p.terminate()
    p.join(TIMEOUT)
    assert p.exitcode == -signal.SIGTERM


def test_close_refuses_running_process(any_ctx: Any) -> None:
    p = any_ctx.Process(target=helpers.sleep_forever)
    p.start()
    with pytest.raises(ValueError, match="still running"):
        p.close()
    p.kill()
    p.join(TIMEOUT)
    assert p.exitcode == -signal.SIGKILL
    p.close()


def test_exitcode_of_sys_exit(any_ctx: Any) -> None:
    p = any_ctx.Process(target=helpers.sys_exit, args=(4,))
    p.start()
    p.join(TIMEOUT)
    assert p.exitcode == 4


def test_ppid_is_the_starting_process(ctx: corral.CorralContext) -> None:
    p = ctx.Process(target=helpers.double, args=(1,))
    assert p.ppid == os.getpid()
    p.start()
    p.join(TIMEOUT)
    assert p.ppid == os.getpid()


def test_active_children_includes_corral_children(ctx: corral.CorralContext) -> None:
    p = ctx.Process(target=helpers.sleep_forever)
    p.start()
    try:
        assert p in corral.active_children()
        assert p in multiprocessing.active_children()
    finally:
        p.kill()
        p.join(TIMEOUT)
    assert p not in corral.active_children()


# -- result() ----------------------------------------------------------------------


def test_result_returns_target_value(ctx: corral.CorralContext) -> None:
    p = ctx.Process(target=helpers.double, args=(21,))
    p.start()
    assert p.result(timeout=TIMEOUT) == 42
    assert p.result(timeout=0) == 42  # again, without waiting
    assert p.exitcode == 0


def test_result_of_subclass_run(start_method: str) -> None:
    # The subclass is bound to the default context; pick the method explicitly.
    p = Doubler(5)
    p._start_method = start_method
    p.start()
    assert p.result(timeout=TIMEOUT) == 10


def test_result_reraises_with_remote_traceback(ctx: corral.CorralContext) -> None:
    p = ctx.Process(target=helpers.raise_value_error, args=("bad input",))
    p.start()
    with pytest.raises(ValueError, match="bad input") as info:
        p.result(timeout=TIMEOUT)
    cause = info.value.__cause__
    assert isinstance(cause, corral.RemoteTraceback)
    assert "raise_value_error" in str(cause)
    assert "bad input" in str(cause)
    assert p.exitcode == 1


def test_result_when_exception_cannot_be_unpickled(ctx: corral.CorralContext) -> None:
    p = ctx.Process(target=helpers.raise_unpicklable_error)
    p.start()
    with pytest.raises(corral.CorralError, match=r"UnpicklableError: 1/2") as info:
        p.result(timeout=TIMEOUT)
    assert isinstance(info.value.__cause__, corral.RemoteTraceback)


def test_result_of_unpicklable_return_value(ctx: corral.CorralContext) -> None:
    p = ctx.Process(target=helpers.return_unpicklable)
    p.start()
    with pytest.raises(corral.CorralError, match="could not be pickled"):
        p.result(timeout=TIMEOUT)
    assert p.exitcode == 0


@pytest.mark.parametrize(
    ("target", "args", "exitcode", "sig"),
    [
        (helpers.exit_with, (3,), 3, None),
        (helpers.exit_with, (0,), 0, None),
        (helpers.kill_self, (signal.SIGKILL,), -signal.SIGKILL, signal.SIGKILL),
        (helpers.kill_self, (signal.SIGSEGV,), -signal.SIGSEGV, signal.SIGSEGV),
        (helpers.sys_exit, (5,), 5, None),
    ],
    ids=["os._exit(3)", "os._exit(0)", "SIGKILL", "SIGSEGV", "sys.exit(5)"],
)
def test_result_when_child_dies_without_one(
    ctx: corral.CorralContext, target: Any, args: tuple[Any, ...], exitcode: int, sig: Any
) -> None:
    p = ctx.Process(target=target, args=args)
    p.start()
    with pytest.raises(corral.ProcessDied) as info:
        p.result(timeout=TIMEOUT)
    assert info.value.exitcode == exitcode
    assert info.value.signal == sig
    assert info.value.pid == p.pid
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.exitcode, copy.signal, copy.pid) == (exitcode, sig, p.pid)


def test_result_of_sys_exit_zero_is_none(ctx: corral.CorralContext) -> None:
    p = ctx.Process(target=helpers.sys_exit, args=(None,))
    p.start()
    assert p.result(timeout=TIMEOUT) is None


def test_result_timeout(ctx: corral.CorralContext) -> None:
    p = ctx.Process(target=helpers.sleep_forever)
    p.start()
    with pytest.raises(TimeoutError):
        p.result(timeout=0.05)
    p.kill()
    with pytest.raises(corral.ProcessDied) as info:
        p.result(timeout=TIMEOUT)
    assert info.value.signal == signal.SIGKILL


def test_result_before_start() -> None:
    with pytest.raises(ValueError, match="started"):
        corral.Process(target=helpers.double, args=(1,)).result()


# -- fd handles ------------------------------------------------------------------


def test_fd_handle_refuses_pickling_outside_start() -> None:
    r, w = os.pipe()
    os.close(w)
    handle = FdHandle(r, "queue")
    try:
        with pytest.raises(corral.SharingError, match="only be passed to a child process"):
            pickle.dumps(handle)
    finally:
        handle.close()


# -- the module surface ----------------------------------------------------------


def test_all_matches_exports() -> None:
    # Submodules (corral.pool, corral.queues, ...) are attributes once imported, and
    # never in __all__, as with multiprocessing.
    def submodule(name: str) -> bool:
        obj = getattr(corral, name)
        return isinstance(obj, types.ModuleType) and obj.__name__ in (
            f"corral.{name}",
            f"multiprocessing.{name}",  # corral.connection is the stdlib's, say
        )

    public = {name for name in dir(corral) if not name.startswith("_") and not submodule(name)}
    modules = {"annotations"}  # from __future__
    # multiprocessing.reducer is in the stdlib's __all__: the reduction module once
    # something imported it, else None. corral re-exports it as it is.
    public |= {"reducer"}
    assert set(corral.__all__) == public - modules
    assert isinstance(corral.__all__, tuple)
    assert list(corral.__all__) == sorted(corral.__all__)


def _printed_by(code: str) -> list[str]:
    """The lines ``code`` prints, run in a fresh interpreter (which must exit 0)."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout.splitlines()


def test_import_loads_only_what_a_child_needs() -> None:
    """Every spawned or forkserver child imports corral: queues, locks, the pool and
    concurrent.futures (WorkerCrashed's stdlib base) load on first use only."""
    code = (
        "import sys, corral\n"
        "heavy = ['concurrent.futures', 'logging', 'typing', 'corral._queue', 'corral._pool',\n"
        "         'corral._synchronize', 'corral._sync_base', 'corral._sync_lock',\n"
        "         'corral._workercrash']\n"
        "print([m for m in heavy if m in sys.modules])\n"
        "e = corral.WorkerCrashed(-9, 1)\n"
        "print(isinstance(e, corral.ProcessDied), 'concurrent.futures' in sys.modules)\n"
    )
    assert _printed_by(code) == ["[]", "True True"]


def test_a_spawned_child_imports_no_launcher_and_no_ctypes() -> None:
    """A spawned child imports corral to unpickle its process object, and to start
    only needs the bootstrap: not the launchers (multiprocessing.forkserver and
    company), and not ctypes where the C extension gives it prctl."""
    code = (
        "import sys, multiprocessing.process as mpp\n"
        "mpp.current_process()._inheriting = True  # as while a spawned child unpickles\n"
        "import corral\n"
        "from corral._core import _linux, _native\n"
        "_linux.set_child_subreaper(True)\n"
        "print('corral._core._popen' in sys.modules, 'multiprocessing.forkserver' in sys.modules)\n"
        "print(_native.speedups is None or 'ctypes' not in sys.modules)\n"
    )
    assert _printed_by(code) == ["False False", "True"]


def test_a_program_that_only_starts_processes_loads_no_shared_memory_machinery() -> None:
    """Starting and joining children (fork: the start method that inherits the
    parent's whole address space) loads neither the arena nor ctypes and mmap: they
    would add some 20 memory areas that every later fork copies. The result memfd
    is named as every corral memfd is (``_shm.NAME_PREFIX``)."""
    code = (
        "import sys, corral\n"
        "p = corral.get_context('fork').Process(target=int)\n"
        "p.start(); p.join(60)\n"
        "assert p.exitcode == 0, p.exitcode\n"
        "mods = ('corral._core._arena', 'corral._core._shm', 'ctypes', 'mmap')\n"
        "print([m for m in mods if m in sys.modules])\n"
        "from corral import _process\n"
        "from corral._core import _shm\n"
        "print(_process._starts.result_name == _shm.NAME_PREFIX + 'result')\n"
    )
    assert _printed_by(code) == ["[]", "True"]


def test_every_multiprocessing_name_is_there() -> None:
    missing = [name for name in multiprocessing.__all__ if not hasattr(corral, name)]
    assert not missing


def test_public_objects_report_public_module() -> None:
    own = [
        n
        for n in corral.__all__
        if getattr(getattr(corral, n), "__module__", "").startswith("corral")
    ]
    assert {"Process", "Queue", "Lock", "Pool", "CorralError"} <= set(own)
    for name in own:
        assert getattr(corral, name).__module__ == "corral", name


def test_get_context() -> None:
    for method in ("fork", "forkserver", "spawn"):
        ctx = corral.get_context(method)
        assert ctx.get_start_method() == method
        assert issubclass(ctx.Process, corral.Process)
        r, w = ctx.Pipe(duplex=False)  # not reimplemented: the stdlib's
        w.send(method)
        assert r.recv() == method
        r.close()
        w.close()
    assert corral.get_context().get_start_method() == multiprocessing.get_start_method()
    with pytest.raises(ValueError, match="cannot find context"):
        corral.get_context("teleport")


def _process_class_name() -> str:
    return type(corral.current_process()).__name__


def test_context_binds_pools_to_its_start_method(ctx: corral.CorralContext) -> None:
    expected = type(ctx.Process()).__name__  # ForkProcess, SpawnProcess, ...
    with ctx.Pool(1) as pool:
        assert pool.apply(_process_class_name) == expected
    with ctx.ProcessPoolExecutor(1) as executor:
        assert executor.submit(_process_class_name).result(timeout=TIMEOUT) == expected


def test_children_that_exit_at_once(ctx: corral.CorralContext) -> None:
    procs = [ctx.Process(target=int) for _ in range(20)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT)
        assert p.exitcode == 0
        p.kill()
        p.terminate()
        assert p.exitcode == 0


def test_forkserver_child_reaped_before_start_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    # The server forks and reaps: a child that exits at once may be gone before the
    # parent opens its pidfd. Force that order; start() must cope, and signalling
    # the finished child must do nothing.
    from corral._core import _linux

    real_pidfd_open = os.pidfd_open

    def late_pidfd_open(pid: int, flags: int = 0) -> int:
        assert wait_until(lambda: _linux.proc_state(pid) is None, TIMEOUT)
        return real_pidfd_open(pid, flags)

    monkeypatch.setattr(os, "pidfd_open", late_pidfd_open)
    p = corral.get_context("forkserver").Process(target=int)
    p.start()
    monkeypatch.undo()
    p.join(TIMEOUT)
    assert p.exitcode == 0
    p.kill()
    assert p.exitcode == 0


def test_a_joined_process_leaves_no_finalizer_behind(ctx: corral.CorralContext) -> None:
    """Once a joined Process is gone, so are its launcher's util.Finalize entries:
    the reaper holds the launcher only weakly (CPython's TestFinalize checks this)."""
    import gc
    from multiprocessing import util

    before = set(util._finalizer_registry)  # type: ignore[attr-defined]
    for _ in range(20):
        p = ctx.Process(target=int)
        p.start()
        p.join(TIMEOUT)
        assert p.exitcode == 0
        del p
    gc.collect()
    assert set(util._finalizer_registry) - before == set()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "limit",
    [4, 1 << 20],
    ids=["cut-in-the-length", "cut-in-the-pickle"],
)
def test_result_record_cut_short_by_death_is_process_died(
    ctx: corral.CorralContext, limit: int
) -> None:
    """A child killed while writing its result record (here by SIGXFSZ, at a file
    size limit): the record is cut short, and result() says the child died, never
    that a pickle was truncated."""
    p = ctx.Process(target=helpers.return_big_under_file_limit, args=(4 << 20, limit))
    p.start()
    with pytest.raises(corral.ProcessDied) as info:
        p.result(timeout=TIMEOUT)
    assert info.value.signal == signal.SIGXFSZ
    assert p.exitcode == -signal.SIGXFSZ


def _kill_new_children(stop: threading.Event, known: frozenset[int]) -> None:
    """SIGKILL every new child of this process until ``stop``."""
    while not stop.is_set():
        for pid in set(_linux.children_of(os.getpid())) - known:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stop.wait(0.001)


def test_spawn_start_raises_if_the_child_dies_while_its_start_data_is_written() -> None:
    """Under spawn, start() writes the pickled process object (here with a 64 MiB
    argument) down a pipe the child reads. A child killed meanwhile made the write
    block for good, with the child a zombie; now start() raises at once and the
    child is reaped."""
    ctx = corral.get_context("spawn")
    known = frozenset(_linux.children_of(os.getpid()))
    stop = threading.Event()
    killer = threading.Thread(target=_kill_new_children, args=(stop, known))
    killer.start()
    p = ctx.Process(target=helpers.double, args=(b"x" * (64 << 20),))
    try:
        with pytest.raises(corral.ChildDiedAtStart) as info:
            p.start()
    finally:
        stop.set()
        killer.join(TIMEOUT)
    assert info.value.exitcode == -signal.SIGKILL
    assert set(_linux.children_of(os.getpid())) - known == set()  # reaped: no zombie


def test_terminate_from_another_thread_while_one_joins(ctx: corral.CorralContext) -> None:
    """A join() in one thread never makes terminate(), kill() or is_alive() in another
    wait for the child: the join waits on the sentinel, not under the reap lock."""
    p = ctx.Process(target=time.sleep, args=(TIMEOUT / 3,))
    p.start()
    joiner = threading.Thread(target=p.join)  # no timeout: the blocking wait
    joiner.start()

    def joining() -> bool:  # the joiner is inside its launcher's poll()
        frame = sys._current_frames().get(joiner.ident or 0)
        while frame is not None and frame.f_code.co_name != "poll":
            frame = frame.f_back
        return frame is not None

    deadline = time.monotonic() + TIMEOUT
    while not joining():
        assert time.monotonic() < deadline
        time.sleep(0.001)  # polling the joiner's stack, with a deadline
    assert p.is_alive()
    t0 = time.monotonic()
    p.terminate()
    took = time.monotonic() - t0
    joiner.join(TIMEOUT)
    assert not joiner.is_alive()
    assert p.exitcode is not None
    assert took < TIMEOUT / 6, took  # it used to wait out the child's sleep


def test_kill_returns_once_the_subtree_is_gone(ctx: corral.CorralContext) -> None:
    """kill() waits for the SIGKILLed subtree to have exited, so right after it
    returns no descendant is left: a pool's terminate() relies on it."""
    q = corral.Queue()
    p = ctx.Process(target=helpers.sleeping_grandchildren, args=(q, 3))
    p.start()
    pids = q.get(timeout=TIMEOUT)
    fds = [os.pidfd_open(pid) for pid in pids]
    try:
        p.kill()
        ready, _, _ = select.select(fds, [], [], 0)
        assert len(ready) == len(fds), "a grandchild was still alive when kill() returned"
    finally:
        for fd in fds:
            os.close(fd)
        p.join(TIMEOUT)


def test_join_with_a_zero_or_negative_timeout_does_not_wait(ctx: corral.CorralContext) -> None:
    """join(0) and join(-1) return at once on a running child, as the stdlib's
    (CPython's test_terminate and test_kill call both)."""
    p = ctx.Process(target=time.sleep, args=(helpers.FOREVER,))
    p.start()
    returned = threading.Event()

    def join_without_waiting() -> None:
        p.join(0)
        p.join(-1)
        returned.set()

    joiner = threading.Thread(target=join_without_waiting)
    joiner.start()
    try:
        # (A join that waited would wait for the child: this fails, then the kill
        # below lets it go.)
        assert returned.wait(TIMEOUT)
        assert p.exitcode is None
    finally:
        p.kill()
        joiner.join(TIMEOUT)
        p.join(TIMEOUT)
    assert p.exitcode == -signal.SIGKILL


def test_a_launcher_collected_while_the_interpreter_finalizes_waits_for_nothing(
    ctx: corral.CorralContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At exit the reaper, a daemon thread, is frozen wherever it was, maybe holding
    # its lock; a launcher collected then must not wait on that lock to close its
    # fds (the exit hung in about 1 of 50 runs). Here a thread holds the lock and
    # the interpreter "finalizes": the launcher's __del__ returns at once.
    from corral._core import _popen, _reaper

    p = ctx.Process(target=int)
    p.start()
    p.join(TIMEOUT)
    popen = p._popen
    assert popen is not None
    monkeypatch.setattr(_popen, "_is_finalizing", lambda: True)
    held, release, deleted = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        with _reaper._reaper._lock:
            held.set()
            release.wait(TIMEOUT)

    def collect() -> None:
        popen.__del__()
        deleted.set()

    holder = threading.Thread(target=hold)
    holder.start()
    collector = threading.Thread(target=collect)
    try:
        assert held.wait(TIMEOUT)
        collector.start()
        assert deleted.wait(5.0), "the launcher waited on the reaper's lock"
    finally:
        release.set()
        holder.join(TIMEOUT)
        if collector.is_alive():
            collector.join(TIMEOUT)
    monkeypatch.undo()
    p.close()  # (closes the fds __del__ left)
