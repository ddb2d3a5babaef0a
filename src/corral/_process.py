"""corral.Process: multiprocessing.Process, minus the leaks.

    parent                                   child
    ------                                   -----
    start()
      lifeline read end, result memfd  --->  _bootstrap()
      launcher (_core._popen)                  _core._bootstrap.setup(): subreaper, lifeline
      reaper watches the pidfd                 run(), its outcome captured
                                               stdlib exit: join/terminate own children
                                               outcome pickled into the result memfd
                                               _core._bootstrap.teardown(): kill leftovers
    reaper: child exited -> waitid(P_PIDFD),
      exitcode stored, result bytes read, memfd closed
    result(): unpickle, return or re-raise

The stdlib's ``BaseProcess`` does the bookkeeping (names, ``current_process()``,
``active_children()``, the at-exit joining); corral replaces the launchers and
wraps ``_bootstrap``.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from multiprocessing import process as _mp_process
from multiprocessing import util as _mp_util

from ._core import _bootstrap, _lifeline, _native
from ._core._fdpass import FdHandle
from ._core._forkstate import PerFork
from ._exceptions import CorralError, ProcessDied

# typing costs a few ms at import, and every spawned child imports this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._core._popen import CorralPopen

__all__ = ["Process", "process_class_for"]

# The launchers (_core._launch, _popen) cost a spawned child part of its import of
# corral, and a child needs them only to start children of its own: they are
# loaded then. A process that is not being unpickled into (the main program, a
# forkserver preloading corral) loads them now. (Spawn's and forkserver's, whose
# stdlib modules pull in connection, tempfile, shutil..., load at their first use,
# before any corral forkserver starts, so corral is in its preload list; and at
# once if the stdlib's forkserver module is already loaded: see _core._launch.)
if not getattr(_mp_process.current_process(), "_inheriting", False):
    from ._core import _launch as _launch

_collect_lock = PerFork(threading.Lock)  # (a fork child's own: made on first use)


class _StartSupport:
    """What ``start()`` needs beyond this module, loaded at the first start: a
    spawned child that starts nothing needs none of it, and an import statement on
    every start would cost a call into importlib. (Not the arena, nor ``_shm``: they
    bring ctypes and mmap, which a program that only starts processes never needs.)"""

    def __init__(self) -> None:
        from ._core import _launch, _started

        self.popen_class_for = _launch.popen_class_for
        self.result_name = "corral-result"  # (``_shm.NAME_PREFIX``, checked in tests)
        self.child_starting = _started.child_starting
        self.child_gone = _started.child_gone


_starts: _StartSupport | None = None


def _load_start_support() -> _StartSupport:
    global _starts
    _starts = _StartSupport()
    return _starts


# How much of the result memfd the parent reads at once, first: the record of a
# small outcome whole, in one call.
_FIRST_READ = 4096


def _children() -> set[Any]:
    """The stdlib's registry of started children (rebound in every forked child)."""
    children: set[Any] = _mp_process._children  # type: ignore[attr-defined]
    return children


def _cleanup() -> None:
    _mp_process._cleanup()  # type: ignore[attr-defined]


# -- Two steps of the stdlib's child bootstrap, cheaper in a fork child.
#
# In a fresh fork child the first write to a page copies it (copy-on-write): 2 to
# 10 us a page on the machines measured here (docs/linux-facts.md), and a fork
# child's start-to-exit path is what join() waits for. Two steps of
# BaseProcess._bootstrap write many more pages than their work needs, so a corral
# fork child does them another way, to the same effect:
#
# - util._close_stdin() builds a new reader of /dev/null in the child: os.open,
#   then open()'s FileIO, BufferedReader, TextIOWrapper and its decoder (some 25
#   pages that nothing else in the child writes). Here the same reader is built
#   in the parent, before the fork (_prepare_stdin), and the child only swaps it
#   in (_close_stdin_prepared).
# - BaseProcess._after_fork() walks util's after-fork registry, a
#   WeakValueDictionary, through Python-level iteration guards, even when it holds
#   nothing, the usual case (about 14 faults): Process._after_fork skips the walk
#   then.
#
# Measured with the "start+join, fork" process benchmark's loop (target=int), 6
# alternations of 1,000 start+joins: the child's page faults 463 -> 425, and its
# CPU time 0.26 ms less (docs/design.md, "Fifth look").

_STDLIB_CLOSE_STDIN = _mp_util._close_stdin  # type: ignore[attr-defined]
_stdin_lock = PerFork(threading.Lock)
_stdin_reader: Any = None  # what the next fork child takes as its sys.stdin
_stdin_id = (0, 0)  # (st_dev, st_ino) of /dev/null, as the reader's fd was opened


def _prepare_stdin() -> None:
    """Have a /dev/null reader ready for the next fork child, built as
    ``util._close_stdin`` builds it. Its fd is this process's for life, as the
    lifeline pipe is; one that no longer names /dev/null (closed by the program, its
    number reused) is replaced. On an OSError (no fd left, no /dev/null) the child
    builds its own, as the stdlib's does: start() never fails for this."""
    global _stdin_reader, _stdin_id
    with _stdin_lock.get():
        if _stdin_reader is not None:
            try:
                st = os.fstat(_stdin_reader.fileno())
                if (st.st_dev, st.st_ino) == _stdin_id:
                    return
            except OSError:
                pass
            _stdin_reader = None  # (its fd is not ours any more: never closed here)
        try:
            fd = os.open(os.devnull, os.O_RDONLY)
        except OSError:
            return
        try:
            st = os.fstat(fd)
            reader = open(fd, encoding="utf-8", closefd=False)  # noqa: SIM115
        except OSError:
            os.close(fd)
            return
        except BaseException:
            os.close(fd)
            raise
        _stdin_reader, _stdin_id = reader, (st.st_dev, st.st_ino)


def _close_stdin_prepared() -> None:
    """``util._close_stdin`` in a corral fork child: the reader made by
    ``_prepare_stdin`` swapped in. Once: this process's own children, corral's or
    the stdlib's, go back to the stdlib's (the reader is this process's stdin now)."""
    global _stdin_reader
    reader, _stdin_reader = _stdin_reader, None
    _mp_util._close_stdin = _STDLIB_CLOSE_STDIN  # type: ignore[attr-defined]
    if reader is None or sys.stdin is None:
        _STDLIB_CLOSE_STDIN()
        return
    try:  # (no contextlib.suppress: its objects cost this child page faults)  # noqa: SIM105
        sys.stdin.close()
    except (OSError, ValueError):
        pass
    sys.stdin = reader


# Outcome records written by the child: (kind, payload, message). For _RAISE the
# payload is the exception's record from _remote.encode_error (the one encoding of a
# remote error, shared with the pool), which carries its traceback, type and message.
_OK, _RAISE, _EXIT, _UNPICKLABLE = "ok", "raise", "exit", "unpicklable"


class Process(_mp_process.BaseProcess):
    """A child process with the :class:`multiprocessing.Process` API, that never leaks.

    - It is reaped within milliseconds of exiting, whether or not anyone joins it.
    - When the process that started it dies, by any means, it and every one of its
      descendants die too.
    - ``terminate()`` and ``kill()`` end its whole subtree.
    - Whatever it leaves running when ``run()`` ends is killed before it exits.
    - A daemonic child may start children of its own.
    - :meth:`result` returns what the target returned, or re-raises what it raised.
    """

    __module__ = "corral"

    # None: use multiprocessing.get_start_method() at start time.
    _start_method: str | None = None

    # Set by the stdlib's BaseProcess; typeshed does not declare them.
    _popen: CorralPopen | None
    _parent_pid: int
    _target: Callable[..., object] | None
    _args: tuple[Any, ...]
    _kwargs: dict[str, Any]
    _check_closed: Callable[[], None]

    def __init__(
        self,
        group: None = None,
        target: Callable[..., object] | None = None,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        daemon: bool | None = None,
    ) -> None:
        super().__init__(group, target, name, args, kwargs or {}, daemon=daemon)
        self._corral_lifeline: FdHandle | None = None
        self._corral_result_fd: FdHandle | None = None
        self._corral_raw: bytes | None = None

    @staticmethod
    def _Popen(process_obj: Process) -> CorralPopen:
        method = process_obj._start_method or multiprocessing.get_start_method()
        if method == "fork":
            _prepare_stdin()
        return (_starts or _load_start_support()).popen_class_for(method)(process_obj)

    def run(self) -> Any:
        """The child's work: call the target, and return what it returns.

        Override it in a subclass, as with the stdlib; its return value is what
        :meth:`result` gives back.
        """
        if self._target:
            return self._target(*self._args, **self._kwargs)
        return None

    @property
    def ppid(self) -> int:
        """The pid of the process that created (and started) this one."""
        return self._parent_pid

    def start(self) -> None:
        """Start the child. Unlike the stdlib, a daemonic process may do this too."""
        self._check_closed()
        assert self._popen is None, "cannot start a process twice"
        assert self._parent_pid == os.getpid(), (
            "can only start a process object created by current process"
        )
        _cleanup()
        starts = _starts or _load_start_support()
        self._corral_lifeline = _lifeline.child_end()
        fd = os.memfd_create(starts.result_name, os.MFD_CLOEXEC)
        self._corral_result_fd = FdHandle(fd, "process result")
        # Shared objects freed from now on stay reserved until this child is gone.
        number = self._corral_number = starts.child_starting()
        try:
            popen = self._popen = self._Popen(self)
        except BaseException:
            self._corral_result_fd.close()
            self._corral_result_fd = None
            starts.child_gone(number)
            raise
        finally:
            self._corral_lifeline = None  # shared by all children; not ours to close
        # From here on the child runs, and every page this process writes is copied
        # (the child still shares it): the rest is kept short.
        self._sentinel = popen.sentinel
        # Avoid a reference cycle through the target (bpo-30775), as the stdlib does.
        del self._target, self._args, self._kwargs
        _mp_process._children.add(self)  # type: ignore[attr-defined]
        popen.add_exit_callback(self._corral_exited)
        if not _exit_hook_installed:
            _install_exit_hook()

    def kill(self) -> None:
        """Send SIGKILL to the child and every one of its descendants."""
        super().kill()

    def terminate(self) -> None:
        """Send SIGTERM to the child and every one of its descendants."""
        super().terminate()

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the child to finish and return what its target returned.

        Raises:
            TimeoutError: the child is still running after ``timeout`` seconds.
            ProcessDied: the child ended without a result (a signal, ``os._exit()``,
                or ``sys.exit()`` with a non-zero code).
            Exception: whatever the target raised, with the child's traceback
                attached as ``__cause__``.
        """
        self._check_closed()
        if self._popen is None:
            raise ValueError("can only get the result of a started process")
        if self._popen.wait(timeout) is None:
            raise TimeoutError(
                f"process {self.name} (pid {self.pid}) did not finish within {timeout} s"
            )
        _children().discard(self)  # as join() does
        self._corral_collect()
        raw = self._corral_raw
        exitcode = self._popen.returncode
        # A record is its length, then its body: a child killed while writing it
        # left it short, and died without a result like any other.
        if not raw or len(raw) < _LEN.size or _LEN.unpack_from(raw)[0] != len(raw) - _LEN.size:
            raise ProcessDied(exitcode, self.pid, self.name)
        body = memoryview(raw)[_LEN.size :]
        if body[:1] == _VALUE:
            return pickle.loads(body[1:])
        kind, payload, message = pickle.loads(body)
        if kind == _EXIT:
            if exitcode == 0:
                return None
            raise ProcessDied(exitcode, self.pid, self.name)
        if kind == _RAISE:  # payload: an error record, as the pool's (see _remote)
            from ._remote import decode_error

            raise decode_error(pickle.loads(payload), f"process {self.name}")
        raise CorralError(
            f"process {self.name} returned a value that could not be pickled: {message}"
        )

    # -- parent side
    def _corral_exited(self) -> None:
        """The launcher's exit callback: the outcome read, the start's number given back."""
        try:
            self._corral_collect()
        finally:
            _starts.child_gone(self._corral_number)  # type: ignore[union-attr]

    def _corral_collect(self) -> None:
        """Read the child's outcome out of the result memfd, once, and close it."""
        with _collect_lock.get():
            handle, self._corral_result_fd = self._corral_result_fd, None
            if handle is None:
                return
            try:
                # One read for a record that fits (the common case, and all of it
                # for a record of up to a page), then the rest, if any.
                data = os.pread(handle.fd, _FIRST_READ, 0)
                if len(data) == _FIRST_READ:
                    chunks = [data]
                    offset = len(data)
                    while chunk := os.pread(handle.fd, 1 << 20, offset):
                        chunks.append(chunk)
                        offset += len(chunk)
                    data = b"".join(chunks)
                self._corral_raw = data
            finally:
                handle.close()

    def close(self) -> None:
        super().close()
        self._corral_collect()

    # -- child side
    @staticmethod
    def _after_fork() -> None:
        # The stdlib's (BaseProcess._after_fork), without its walk of an empty
        # after-fork registry (see _prepare_stdin above).
        _mp_util._finalizer_registry.clear()  # type: ignore[attr-defined]
        if _mp_util._afterfork_registry.data:  # type: ignore[attr-defined]
            _mp_util._run_after_forkers()  # type: ignore[attr-defined]

    def _bootstrap(self, parent_sentinel: int | None = None) -> int:
        lifeline, self._corral_lifeline = self._corral_lifeline, None
        result_fd, self._corral_result_fd = self._corral_result_fd, None
        assert lifeline is not None
        assert result_fd is not None
        try:
            armed = _bootstrap.setup(lifeline)
        except BaseException:
            # Nothing of the stdlib's error reporting has run yet.
            import traceback

            traceback.print_exc()
            raise
        outcome: list[tuple[str, Any]] = []
        run = self.run

        def run_and_capture() -> Any:
            try:
                value = run()
            except SystemExit as exc:
                outcome.append((_EXIT, exc.code))
                raise
            except Exception as exc:
                from ._remote import encode_error

                outcome.append((_RAISE, encode_error(exc)))
                raise
            outcome.append((_OK, value))
            return value

        self.run = run_and_capture  # type: ignore[method-assign]
        try:
            if parent_sentinel is None:  # (fork: the lifeline is the parent's sentinel)
                parent_sentinel = armed
                if _mp_util._close_stdin is _STDLIB_CLOSE_STDIN:  # type: ignore[attr-defined]
                    _mp_util._close_stdin = _close_stdin_prepared  # type: ignore[attr-defined]
            code: int = super()._bootstrap(parent_sentinel)  # type: ignore[misc]
            return code
        finally:
            try:
                _write_outcome(result_fd, outcome)
            finally:
                _bootstrap.teardown()


# An outcome record is its body's length (``_LEN``), then its body: for a returned
# value, ``_VALUE`` and the value's pickle; for any other outcome (an exception, an
# exit, a value pickle refused), the pickle of (kind, payload, message).
#
# A returned value is pickled once, and a scalar (int, float, bool, None, a short
# str or bytes) without a Pickler where the C extension is built
# (``_speedups.pickle_scalar``): a fresh fork child writes every page a Pickler's
# buffers and memo touch (copy-on-write faults), and a target's return is on the
# path that join() waits for. Measured with ``target=int`` (it returns 0), fork,
# 14 paired runs: start+join 0.24 ms shorter without the outcome's two pickles,
# of about 3.4 ms ("start+join" in ``corral bench --only process``).
_VALUE = b"v"
_LEN = struct.Struct("<Q")
# Records up to this size are written with their length in one write (a copy
# that costs less than a second syscall); larger ones in two, without the copy.
_JOIN_MAX = 64 * 1024
_pickle_scalar = getattr(_native.speedups, "pickle_scalar", None)


def _encode_outcome(kind: str, obj: Any) -> tuple[bytes, bytes]:
    """An outcome's body, as (head, data): written one after the other."""
    if kind == _OK:
        data = _pickle_scalar(obj) if _pickle_scalar is not None else None
        if data is not None:
            return _VALUE, data
    message = ""
    try:
        payload = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # a return value or exit code pickle refuses
        kind = _UNPICKLABLE
        message = f"{type(exc).__name__}: {exc}"
        payload = b""
    if kind == _OK:
        return _VALUE, payload
    return b"", pickle.dumps((kind, payload, message), pickle.HIGHEST_PROTOCOL)


def _record(head: bytes, data: bytes) -> list[bytes]:
    """The outcome record as the parts to write: the body's length, then the body."""
    size = len(head) + len(data)
    if size <= _JOIN_MAX:
        return [_LEN.pack(size) + head + data]
    return [_LEN.pack(size) + head, data]


# The commonest outcome, a target that returned None, as its whole record, made
# once: every object the child builds on its way out costs it page faults.
_OK_NONE_RECORD = _record(_VALUE, pickle.dumps(None))


def _write_outcome(handle: FdHandle, outcome: list[tuple[str, Any]]) -> None:
    """The record: the body's length, then the body (see ``_VALUE``)."""
    try:
        if outcome:
            kind, obj = outcome[0]
            if kind == _OK and obj is None:
                parts = _OK_NONE_RECORD
            else:
                parts = _record(*_encode_outcome(kind, obj))
            # One write for a small record (the start-to-exit path counts every
            # syscall); a large one is not copied to prepend its length.
            for part in parts:
                done = os.write(handle.fd, part)
                if done < len(part):  # (never for a memfd, but for a full one)
                    view = memoryview(part)[done:]
                    while view:
                        view = view[os.write(handle.fd, view) :]
    finally:
        handle.close()


_exit_hook_installed = False


def _install_exit_hook() -> None:
    # atexit runs hooks last-in first-out; multiprocessing.util registered its
    # _exit_function at import, so this runs before it.
    global _exit_hook_installed
    if not _exit_hook_installed:
        import atexit

        _exit_hook_installed = True
        atexit.register(_on_interpreter_exit)


# After an uncaught exception, how long running children get to honour SIGTERM
# before they are killed. The stdlib would instead join them, possibly forever.
CRASH_GRACE = 0.5


def _on_interpreter_exit() -> None:
    import sys

    crashed = getattr(sys, "last_value", None) is not None
    interactive = hasattr(sys, "ps1")  # there, last_value may be an old exception
    if not crashed or interactive or _mp_process.current_process().name != "MainProcess":
        return
    # The main module died of an exception: don't wait on children it can no
    # longer coordinate. End them, their subtrees with them.
    children = [p for p in _mp_process.active_children() if isinstance(p, Process)]
    for p in children:
        p.terminate()
    for p in children:
        p.join(CRASH_GRACE)
        if p.exitcode is None:
            p.kill()
            p.join()


class ForkProcess(Process):
    __module__ = "corral._process"
    _start_method = "fork"


class SpawnProcess(Process):
    __module__ = "corral._process"
    _start_method = "spawn"


class ForkServerProcess(Process):
    __module__ = "corral._process"
    _start_method = "forkserver"


_BY_METHOD: dict[str, type[Process]] = {
    "fork": ForkProcess,
    "spawn": SpawnProcess,
    "forkserver": ForkServerProcess,
}


def process_class_for(method: str) -> type[Process]:
    return _BY_METHOD[method]
