"""The optional C fast paths (``_core/_speedups.c``) against the pure-Python paths
of ``_core/_ring.py``: both must speak one protocol, on one robust mutex. (The
locks' C paths are covered by test_synchronize.py, which CI also runs without
them.)

The rest of the queue tests run with whichever path this interpreter has (CI runs
them a second time with CORRAL_PURE_PYTHON=1); these pin down what only the mix can
show: processes on different paths sharing a queue, the fast path repairing after a
dead holder by itself, and what it leaves to the Python path (a closed ring, a
too-large message, buffers, a shut-down queue).
"""

from __future__ import annotations

import os
import queue
import shlex
import shutil
import subprocess
import sys
import sysconfig
import types

import pytest

import corral
from corral._core import _ring, _ringlayout

from . import queue_targets as targets

TIMEOUT = 30.0

needs_fast = pytest.mark.skipif(
    _ring._speedups is None, reason="the C fast path is not built in this interpreter"
)


def _compiler_available() -> bool:
    cc = sysconfig.get_config_var("CC") or "cc"
    return shutil.which(shlex.split(cc)[0]) is not None


def test_fast_path_is_built_wherever_a_compiler_is() -> None:
    """Guards against the build quietly leaving the extension out (its failure is
    only a warning, so that corral installs without a compiler)."""
    lock_bases = [c.__name__ for c in type(corral.Lock()).__mro__]
    if os.environ.get("CORRAL_PURE_PYTHON"):
        assert _ring._speedups is None
        assert corral.Queue()._ring.fast is _ringlayout.NO_FAST_PATH
        assert "_PyLockBase" in lock_bases
    elif _compiler_available():
        assert _ring._speedups is not None
        assert corral.Queue()._ring.fast is not _ringlayout.NO_FAST_PATH
        assert "LockBase" in lock_bases


def test_pure_python_on_request() -> None:
    code = (
        "import corral\n"
        "q = corral.Queue()\n"
        "from corral._core import _ringlayout\n"
        "assert q._ring.fast is _ringlayout.NO_FAST_PATH\n"
        "q.put_many(range(5)); q.put('x')\n"
        "assert [q.get(timeout=5) for _ in range(6)] == [0, 1, 2, 3, 4, 'x']\n"
        "print('pure ok')\n"
    )
    env = dict(os.environ, CORRAL_PURE_PYTHON="1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pure ok"


@pytest.mark.parametrize(
    ("maxsize", "capacity"), [(0, 64 * 1024), (20, 4 * 1024 * 1024)], ids=["bytes", "maxsize"]
)
def test_paths_mix_in_one_queue(ctx: corral.CorralContext, maxsize: int, capacity: int) -> None:
    """A producer and a consumer on each path, plus this process (fast, where built),
    on a queue small enough to wrap, pad and fill many times over: every message is
    delivered once, in order per producer."""
    n = 3000
    q = ctx.Queue(maxsize, capacity_bytes=capacity)
    producers = [
        ctx.Process(target=targets.put_tagged, args=(q, tag, n, pure))
        for tag, pure in (("pure", True), ("fast", False))
    ]
    consumer = ctx.Process(target=targets.get_count, args=(q, n, True))
    for p in [*producers, consumer]:
        p.start()
    mine = [q.get(timeout=TIMEOUT) for _ in range(n)]
    for p in producers:
        assert p.result(timeout=TIMEOUT) == n
    theirs = consumer.result(timeout=TIMEOUT)
    for tag in ("pure", "fast"):
        for got in (mine, theirs):
            seq = [i for t, i, _ in got if t == tag]
            assert seq == sorted(seq), f"{tag} out of order"
        delivered = sorted(i for t, i, _ in mine + theirs if t == tag)
        assert delivered == list(range(n))
    assert all(len(payload) == i % 700 for _, i, payload in mine + theirs)
    assert q.qsize() == 0


@needs_fast
@pytest.mark.parametrize("op", ["get", "put"])
@pytest.mark.parametrize("published", [False, True], ids=["before-tail", "after-tail"])
def test_fast_path_repairs_after_a_dead_holder(
    ctx: corral.CorralContext, op: str, published: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A producer SIGKILLed with the mutex held, before its publishing ``tail`` store
    (the message is absent) or after it but before its ``count`` store (the message
    is there, and only a recount finds it). The next fast call takes the mutex as
    EOWNERDEAD and repairs the ring in C, before anything else runs; then the
    operation completes. Python's repair is not needed."""
    q = ctx.Queue()
    q.put("before")
    r, w = ctx.Pipe(duplex=False)
    target = targets.put_publish_and_park if published else targets.put_and_park
    p = ctx.Process(target=target, args=(q, "maybe", "put:publish", w))
    p.start()
    w.close()
    assert r.poll(TIMEOUT), "the producer never reached its publishing store"
    assert r.recv_bytes() == b"put:publish"
    p.kill()
    p.join(TIMEOUT)
    r.close()
    assert p.exitcode is not None
    python_repairs = []
    monkeypatch.setattr(q._ring, "_repair", lambda: python_repairs.append(1))
    expected = ["before", "maybe"] if published else ["before"]
    if op == "put":
        q.put("after")
        expected.append("after")
    assert python_repairs == []  # the C path repaired (and the mutex is consistent)
    monkeypatch.undo()
    assert q.qsize() == len(expected)
    assert [q.get(timeout=TIMEOUT) for _ in expected] == expected
    with pytest.raises(queue.Empty):
        q.get_nowait()
    assert q.qsize() == 0


@needs_fast
def test_fast_calls_after_close_touch_nothing() -> None:
    ring = _ring.Ring(1 << 20)
    fast = ring.fast
    assert fast.put(b"x") == 0
    ring.close()
    assert fast.put(b"y") == _ring.FAST_SLOW
    assert fast.get(False) == _ring.FAST_SLOW


@needs_fast
def test_fast_path_leaves_what_it_cannot_do_to_python() -> None:
    """Too large, shut down, and out-of-band buffers: each goes the Python way and
    ends the Python way (an error at the call, or the message delivered)."""
    q = corral.Queue(capacity_bytes=64 * 1024)
    fast = q._ring.fast
    assert fast.put(bytes(200 * 1024)) == _ring.FAST_SLOW  # too large: nothing written
    with pytest.raises(corral.MessageTooLarge):
        q.put(bytes(200 * 1024))
    q.put(bytearray(b"out of band"))  # a buffer: the Python path writes it
    assert fast.get(True) == _ring.FAST_SLOW
    assert q.get(timeout=TIMEOUT) == bytearray(b"out of band")
    assert fast.get(False) == _ring.FAST_EMPTY
    q.shutdown()
    assert fast.put(b"z") == _ring.FAST_SLOW
    with pytest.raises(corral.ShutDown):
        q.put("z")
    with pytest.raises(corral.ShutDown):
        q.get(timeout=TIMEOUT)


@needs_fast
def test_c_exports_every_layout_constant_and_python_checks_each() -> None:
    c = _ring._speedups
    assert c is not None
    assert set(c.LAYOUT) == set(_ringlayout.SHARED_WITH_C)
    assert _ringlayout.check_native(c) == []
    drifted = types.SimpleNamespace(**{name: getattr(c, name) for name in c.LAYOUT})
    drifted.LAYOUT = (*c.LAYOUT, "OFF_NEW")
    drifted.OFF_TAIL = c.OFF_TAIL + 8
    assert _ringlayout.check_native(drifted) == [
        f"OFF_TAIL: C has {c.OFF_TAIL + 8}, Python {_ringlayout.OFF_TAIL}",
        "OFF_NEW: exported by C, unknown to Python",
    ]
    assert _ringlayout.check_native(types.SimpleNamespace()) == [
        "LAYOUT: not exported (a build of an older _speedups.c)"
    ]


@needs_fast
@pytest.mark.parametrize("maxsize", [0, 7])
@pytest.mark.parametrize("gets", [0, 2])
@pytest.mark.parametrize("payload", [1000, 1008, 1009, 1100])
def test_c_put_fits_where_fits_plain_says(maxsize: int, gets: int, payload: int) -> None:
    """The edges of ``fits_plain`` (the end of the lap and of the retained pages,
    room before head, maxsize) and of ``frame_size``: the C put takes a message
    exactly when the Python rule says it fits as the ring is, and moves tail by the
    Python frame size."""
    cap = 2 * _ring.PAGE
    ring = _ring.Ring(cap, maxsize)
    try:
        filler = 1000  # 1024-byte frames: the lap is left with exactly one
        for _ in range(cap // _ringlayout.frame_size(filler) - 1):
            ring.put(bytes(filler), None)
        for _ in range(gets):
            ring.get()
        head, tail, count = _ringlayout.STATE.unpack_from(ring._mm, _ringlayout.OFF_HEAD)[:3]
        size = _ringlayout.frame_size(payload)
        origin = ring.origin
        expected = _ringlayout.fits_plain(
            head - origin, tail - origin, count, size, 1, ring.size, ring.room, ring.retain, maxsize
        )
        assert ring.fast.put(bytes(payload)) == (_ring.FAST_DONE if expected else _ring.FAST_SLOW)
        if expected:
            assert ring._q[_ring.Q_TAIL] == tail + size
        assert ring.qsize() == count + expected
    finally:
        ring.close()
