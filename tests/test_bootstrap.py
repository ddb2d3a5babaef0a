"""The child's first and last steps (``_core/_bootstrap.py``), on both paths.

Where the C extension is built, the child's setup is one C call
(``_speedups.child_setup``) and its teardown asks ``_speedups.has_children``;
otherwise the same steps run in Python (``_lifeline.arm``, ``os.waitid``). Each
row checks, from inside a child, the state the setup must leave: the lifeline
reopened (one fd on the pipe: the inherited read end closed), owned by the main
thread, raising ``LIFELINE_SIGNAL``, ``O_ASYNC`` set, the handler installed, the
child a subreaper. What the lifeline does at a parent's death is
``test_guarantees.py``'s.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pickle
import subprocess
import sys
import threading
from typing import Any

import pytest

import corral
from corral import _process
from corral._core import _bootstrap, _lifeline
from corral._core._fdpass import FdHandle
from corral._core._native import speedups

from . import helpers

TIMEOUT = 60.0

_NEED_C = pytest.mark.skipif(speedups is None, reason="the C extension is not built")
PATHS = [pytest.param("c", marks=_NEED_C), "pure"]
# The C path under every start method; the pure one where this process can choose
# it for the child: fork (the child inherits the module state) and spawn (the
# child reads CORRAL_PURE_PYTHON); a running forkserver keeps the environment it
# started with (.ci/run runs every test with CORRAL_PURE_PYTHON=1 as well).
SETUP_ROWS = [
    *(pytest.param(m, "c", marks=_NEED_C, id=f"{m}-c") for m in ("fork", "forkserver", "spawn")),
    pytest.param("fork", "pure", id="fork-pure"),
    pytest.param("spawn", "pure", id="spawn-pure"),
]


def _use_path(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if path == "pure":  # (a spawned child reads the environment; a fork child
        # inherits the module state)
        monkeypatch.setenv("CORRAL_PURE_PYTHON", "1")
        monkeypatch.setattr(_bootstrap, "_child_setup", None)
        monkeypatch.setattr(_bootstrap, "_has_children", None)
        monkeypatch.setattr(_process, "_pickle_scalar", None)


@pytest.mark.parametrize(("start_method", "path"), SETUP_ROWS)
def test_a_child_is_set_up_alike_on_either_path(
    start_method: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_path(path, monkeypatch)
    p = corral.get_context(start_method).Process(target=helpers.lifeline_state)
    p.start()
    state: dict[str, Any] = p.result(timeout=TIMEOUT)
    tid, pid = state["main thread"]
    assert tid == pid  # (the main thread: the one CPython runs handlers in)
    assert state["owner"] == (0, tid)  # F_OWNER_TID, the main thread
    assert state["signal"] == _lifeline.LIFELINE_SIGNAL
    assert state["async"] is True
    assert state["pipe"] is True
    assert state["fds on the pipe"] == [state["armed fd"]]  # the inherited end closed
    assert state["handler"] is True
    assert state["subreaper"] is True
    assert p.exitcode == 0


@pytest.mark.parametrize("path", PATHS)
def test_a_child_whose_parent_is_already_gone_dies_at_setup(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check after the arming: a lifeline at EOF before the child is set up (its
    write end closed here, as a parent's death would) ends the child there, by
    SIGKILL, before its target runs."""
    _use_path(path, monkeypatch)
    r, w = os.pipe2(os.O_CLOEXEC)
    monkeypatch.setattr(_lifeline, "_read_handle", FdHandle(r, "lifeline"))
    os.close(w)
    ran = corral.get_context("fork").Event()
    p = corral.get_context("fork").Process(target=ran.set)
    try:
        p.start()
        p.join(TIMEOUT)
    finally:
        os.close(r)
    assert p.exitcode == -9
    assert not ran.is_set()


@_NEED_C
def test_child_setup_refuses_a_bad_fd_and_another_thread() -> None:
    """Errors leave nothing armed: a closed fd is an OSError (nothing opened); from a
    thread other than the main one, a RuntimeError before anything is done."""
    assert speedups is not None
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(FileNotFoundError):
        speedups.child_setup(r, _lifeline.LIFELINE_SIGNAL)
    assert set(os.listdir("/proc/self/fd")) == before
    errors: list[BaseException] = []

    def from_a_thread() -> None:
        try:
            speedups.child_setup(0, _lifeline.LIFELINE_SIGNAL)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=from_a_thread)
    t.start()
    t.join(TIMEOUT)
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError)
    assert fcntl.fcntl(0, fcntl.F_GETFL) & os.O_ASYNC == 0


@_NEED_C
def test_has_children_counts_exited_children_until_reaped() -> None:
    # In a child of ours: this process has children of its own (the supervisor).
    p = corral.get_context("fork").Process(target=helpers.has_children_answers)
    p.start()
    # none yet; one running; one exited, not reaped; reaped
    assert p.result(timeout=TIMEOUT) == [False, True, True, False]


@pytest.mark.parametrize(
    "nbytes",
    [0, 100, 4096 - 64, 4096, 70_000, 3 << 20],
    ids=["empty", "small", "just-under-a-page", "a-page", "over-join-max", "3-mib"],
)
def test_results_of_every_size_come_back_whole(ctx: corral.CorralContext, nbytes: int) -> None:
    """The record is written in one write up to ``_JOIN_MAX`` and two past it, and read
    in one ``pread`` up to ``_FIRST_READ`` and more past it: each side of each."""
    p = ctx.Process(target=helpers.bytes_of, args=(nbytes,))
    p.start()
    assert p.result(timeout=TIMEOUT) == helpers.bytes_of(nbytes)


# Returned values, by how the child encodes them: the scalars that the C extension
# pickles without a Pickler (``_speedups.pickle_scalar``), at each edge of each
# opcode, and the values that go through pickle on either path.
RETURNED = {
    "None": None,
    "True": True,
    "False": False,
    "zero": 0,
    "255": 255,
    "256": 256,
    "minus-one": -1,
    "int32-max+1": 2**31,
    "int32-min-1": -(2**31) - 1,
    "int64-max": 2**63 - 1,
    "int64-min": -(2**63),
    "past-int64": 2**63,
    "huge-negative": -(2**200),
    "float": 1.5,
    "minus-zero": -0.0,
    "inf": float("inf"),
    "empty-str": "",
    "unicode": "h\u00e9llo \u2713 \U0001f600",
    "lone-surrogate": "a\ud800b",
    "str-255": "x" * 255,
    "str-256": "y" * 256,
    "long-str": "z" * 10_000,
    "empty-bytes": b"",
    "bytes": bytes(range(256)) * 3,
    "tuple": (1, "a", None),
    "list": [1, [2]],
    "int-subclass": helpers.IntSubclass(7),
}
SAMPLED = ("None", "int64-min", "past-int64", "unicode", "bytes", "int-subclass")


@pytest.mark.parametrize(("start_method", "path"), SETUP_ROWS)
def test_returned_values_come_back_equal_and_of_their_type(
    start_method: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_path(path, monkeypatch)
    values = list(RETURNED.values())
    p = corral.get_context(start_method).Process(target=helpers.identity, args=(values,))
    p.start()
    assert p.result(timeout=TIMEOUT) == values  # (the whole list: one pickle, as before)
    # One child per value, each its own outcome: every value under fork; a few under
    # the slower methods (the encoding is the same; what differs is only how the
    # child came by the C extension, or not).
    names = RETURNED if start_method == "fork" else SAMPLED
    for name in names:
        value = RETURNED[name]
        p = corral.get_context(start_method).Process(target=helpers.identity, args=(value,))
        p.start()
        got = p.result(timeout=TIMEOUT)
        assert type(got) is type(value), name
        assert repr(got) == repr(value), name  # (-0.0 against 0.0; equal values)


@_NEED_C
@pytest.mark.parametrize("name", list(RETURNED))
def test_pickle_scalar_reads_back_as_its_value(name: str) -> None:
    """``_speedups.pickle_scalar``: what ``pickle.loads`` reads back as the value,
    of its exact type; None for what it leaves to pickle."""
    assert speedups is not None
    value = RETURNED[name]
    data = speedups.pickle_scalar(value)
    left = name in {
        "past-int64",
        "huge-negative",
        "lone-surrogate",
        "long-str",
        "tuple",
        "list",
        "int-subclass",
    }
    assert (data is None) == left
    if data is not None:
        got = pickle.loads(data)
        assert type(got) is type(value)
        assert repr(got) == repr(value)


def test_parent_process_sees_its_parent(ctx: corral.CorralContext, start_method: str) -> None:
    """``multiprocessing.parent_process()`` in a child, as in the stdlib's: alive, the
    right pid. Under fork its sentinel is the child's lifeline (corral's fork launch
    makes no sentinel pipe of the stdlib's): readable exactly at the parent's death."""
    p = ctx.Process(target=helpers.parent_view, args=(os.getpid(),))
    p.start()
    assert p.result(timeout=TIMEOUT) == (True, True, start_method == "fork")


def test_a_raw_fork_of_a_child_sees_the_same_parent_process(
    ctx: corral.CorralContext, start_method: str
) -> None:
    """A raw ``os.fork()`` inside a child inherits its ``parent_process()``, alive, as
    with the stdlib's (whose sentinel pipe it inherits). Under fork the sentinel is
    the child's armed lifeline, which the fork keeps open (it was closed there, and
    ``is_alive()`` read False), but not signal-driven: the raw fork holds a
    description of its own (held, the child's one would signal the child at its
    parent's death even after it exec()ed: see test_orphans.py,
    "exec-above-python"). A corral fork grandchild, armed on a lifeline of its own,
    keeps no fd on the child's."""
    p = ctx.Process(target=helpers.raw_fork_parent_view, args=(os.getpid(),))
    p.start()
    assert p.result(timeout=TIMEOUT) == (True, True, 0, 0)


def test_no_corral_fd_is_kept_across_a_childs_exec(
    ctx: corral.CorralContext, start_method: str
) -> None:
    """A child that exec()s another program leaves corral's fds behind: its result
    memfd, its lifeline, the shared objects it was given. Under spawn and forkserver
    they arrive inheritable (kept across exec for spawn, received over a socket for
    forkserver) and are made close-on-exec as they are rebuilt; under fork they are
    inherited close-on-exec."""
    queue, lock, value = ctx.Queue(), ctx.Lock(), ctx.Value("i", 0)
    p = ctx.Process(target=helpers.corral_fds_kept_across_exec, args=(queue, lock, value))
    p.start()
    assert p.result(timeout=TIMEOUT) == []
    queue.close()


# -- the stdlib's child steps that a corral fork child does another way
# (``_process._prepare_stdin``, ``Process._after_fork``): the same effect, checked
# against a child of the stdlib's own.


def test_a_childs_stdin_is_the_stdlibs(ctx: corral.CorralContext, start_method: str) -> None:
    """A child's ``sys.stdin`` is what the stdlib gives its children: a utf-8 text
    reader of /dev/null that reads nothing. Under fork it was built in the parent."""
    p = ctx.Process(target=helpers.stdin_view)
    p.start()
    got = p.result(timeout=TIMEOUT)
    assert got == helpers.stdlib_stdin_view(start_method, TIMEOUT)
    assert got["is /dev/null"]
    assert got["read"] == ""
    assert not got["closed"]


def test_a_childs_own_children_get_a_stdin_of_their_own(
    ctx: corral.CorralContext, start_method: str
) -> None:
    """A child's fork children, corral's and the stdlib's, get a working stdin too:
    not the reader the child itself took (a fork child closes the stdin it
    inherits, which would then be its new one)."""
    p = ctx.Process(target=helpers.stdin_views_below, args=("fork", TIMEOUT))
    p.start()
    views = p.result(timeout=TIMEOUT)
    expected = helpers.stdlib_stdin_view("fork", TIMEOUT)
    assert views == [expected] * 3
    assert not expected["closed"]


def test_a_child_of_a_parent_without_stdin_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", None)
    p = corral.get_context("fork").Process(target=helpers.stdin_view)
    p.start()
    assert p.result(timeout=TIMEOUT) == {"stdin": None}


def test_a_fork_child_builds_its_own_stdin_when_the_parent_could_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An OSError while the parent prepares the reader (no fd left, say) does not
    fail start(): the child builds its own, as the stdlib's child does."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(_process, "_stdin_reader", None)
    monkeypatch.setattr(_process, "open", refuse, raising=False)
    p = corral.get_context("fork").Process(target=helpers.stdin_view)
    p.start()
    assert p.result(timeout=TIMEOUT) == helpers.stdlib_stdin_view("fork", TIMEOUT)
    assert _process._stdin_reader is None  # (nothing was kept)


def test_a_replaced_close_stdin_is_the_one_a_fork_child_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A program (or a tool) that replaced ``multiprocessing.util._close_stdin`` gets
    its own in corral's fork children, as in the stdlib's."""
    from multiprocessing import util

    monkeypatch.setattr(util, "_close_stdin", lambda: setattr(sys, "stdin", None))
    p = corral.get_context("fork").Process(target=helpers.stdin_view)
    p.start()
    assert p.result(timeout=TIMEOUT) == {"stdin": None}


def test_after_fork_functions_still_run_in_a_fork_child() -> None:
    """``multiprocessing.util.register_after_fork`` functions run in a fork child (a
    corral child skips only the walk of an empty registry)."""
    from multiprocessing import util

    class Marker:
        ran = False

    marker = Marker()
    util.register_after_fork(marker, lambda m: setattr(m, "ran", True))
    p = corral.get_context("fork").Process(target=lambda: marker.ran)
    p.start()
    assert p.result(timeout=TIMEOUT) is True
    assert not marker.ran  # (in the child only; the registry holds it weakly)


# Run in a child interpreter: it closes the prepared reader's fd, which in the test
# process would change what the leak check sees.
_STDIN_FD_REUSED = r"""
import json, os, sys
import corral
from corral import _process

def read_stdin():
    return [sys.stdin.read(), os.fstat(sys.stdin.fileno()).st_rdev]

def start_and_read():
    p = corral.get_context("fork").Process(target=read_stdin)
    p.start()
    return p.result(timeout=60)

first = start_and_read()
old = _process._stdin_reader.fileno()
r, w = os.pipe()
os.close(old)  # as a program's os.closerange() would
os.dup2(r, old)  # the number now names a pipe, with data waiting
os.write(w, b"not stdin")
second = start_and_read()
os.set_blocking(old, False)
print(json.dumps({
    "first": first, "second": second, "null": os.stat(os.devnull).st_rdev,
    "new fd": _process._stdin_reader.fileno() != old, "left in the pipe": os.read(old, 64).decode(),
}))
"""


def test_a_closed_or_reused_stdin_fd_is_never_a_childs_stdin() -> None:
    """The parent's prepared /dev/null reader is checked before each fork: when the
    program closed its fd and the number now names something else, a new one is
    made, and the child reads /dev/null, not the other file."""
    out = subprocess.run(
        [sys.executable, "-c", _STDIN_FD_REUSED],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    ).stdout
    got = json.loads(out.splitlines()[-1])
    assert got["first"] == got["second"] == ["", got["null"]]
    assert got["new fd"]
    assert got["left in the pipe"] == "not stdin"
