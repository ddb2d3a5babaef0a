"""The pool's outcome log: records written in C and in Python read back the same.

``_speedups.map_logged`` pickles scalar results itself; every value here must come
back from ``LogReader`` equal to the original (and of the same type), whichever
writer wrote it, including the ones the C loop hands to pickle and the ones that
don't fit the log's mapping.
"""

from __future__ import annotations

import enum
import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from corral._core._native import speedups
from corral._core._shm import SharedMemory
from corral._pool import _log, _worker


class Colour(enum.IntEnum):
    RED = 1


EDGE_VALUES: list[Any] = [
    0, 1, 255, 256, 65535, 65536, -1, -256, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1,
    2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**200, True, False, None, Colour.RED,
    0.0, -0.0, 1.5, math.inf, -math.inf, 1e308, 5e-324,
    "", "a", "é", "\U0001f600", "x" * 255, "x" * 256, "é" * 200, "\ud800",
    b"", b"\x00", b"y" * 255, b"y" * 256, bytearray(b"ba"),
    (1, "a"), [1, 2], {"k": 1.0}, b"z" * (3 << 20),
]  # fmt: skip


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, float):  # -0.0 == 0.0: compare signs too
        return type(b) is float and a == b and math.copysign(1, a) == math.copysign(1, b)
    return type(a) is type(b) and a == b


@pytest.fixture
def log() -> Iterator[tuple[_log.LogWriter, Any]]:
    handle = _log.new_log()
    writer = _log.LogWriter(handle)
    try:
        yield writer, handle
    finally:
        writer.words.release()
        writer.mm.close()
        handle.close()


def write_python(writer: _log.LogWriter, values: list[Any]) -> None:
    for v in values:
        writer.add(*_worker._log_record(v))


def write_c(writer: _log.LogWriter, values: list[Any]) -> None:
    assert speedups is not None
    words = SharedMemory(8)
    try:
        out: list[Any] = []
        i = 0
        while i < len(values):
            record = speedups.map_logged(
                lambda v: v, values, i, len(values), out, words.buf, 0, 1, writer.mm,
                _worker._log_record,
            )  # fmt: skip
            if record is None:
                break
            i, data, error = record
            writer.add(data, error)
        assert len(out) == len(values)
        assert all(a is b for a, b in zip(out, values, strict=True))
        # The running word: items started (base 1 + index of the last), and returned.
        assert words.buf.cast("q")[0] == len(values) | _worker.RETURNED
    finally:
        words.close()


writers = [pytest.param(write_python, id="python")]
if speedups is not None and hasattr(speedups, "map_logged"):
    writers.append(pytest.param(write_c, id="c"))


@pytest.mark.parametrize("write", writers)
def test_every_value_reads_back_as_written(log: Any, write: Any) -> None:
    writer, handle = log
    values = [*EDGE_VALUES, math.nan]
    writer.start(7, 40)
    write(writer, values)
    seq, first, records = _log.LogReader.read(handle)
    assert (seq, first) == (7, 40)
    assert len(records) == len(values)
    for (ok, got), want in zip(records, values, strict=True):
        assert ok
        assert same(want, got), (want, got)
    assert writer.size > _log.INITIAL_SIZE  # the 3 MiB value made the log grow


@pytest.mark.parametrize("write", writers)
def test_an_unpicklable_result_is_logged_as_an_error(log: Any, write: Any) -> None:
    writer, handle = log
    writer.start(1, 0)
    write(writer, [1, threading.Lock(), 2])  # no pickle for a lock, even cloudpickle's
    _seq, _first, records = _log.LogReader.read(handle)
    assert [ok for ok, _ in records] == [True, False, True]
    assert records[0][1] == 1
    assert records[2][1] == 2


def test_c_and_python_agree_on_the_layout() -> None:
    if speedups is None or not hasattr(speedups, "map_logged"):
        pytest.skip("the C extension is not built (pip install -e . with a compiler)")
    assert (speedups.LOG_MAX_RECORDS, speedups.LOG_DATA_START) == (
        _log.MAX_RECORDS,
        _log.DATA_START,
    )


def test_a_full_log_raises_rather_than_overwrites(log: Any) -> None:
    if speedups is None or not hasattr(speedups, "map_logged"):
        pytest.skip("the C extension is not built (pip install -e . with a compiler)")
    writer, _handle = log
    writer.start(1, 0)
    writer.words[1] = _log.MAX_RECORDS
    words = SharedMemory(8)
    try:
        with pytest.raises(IndexError, match="log full"):
            speedups.map_logged(abs, [1], 0, 1, [], words.buf, 0, 1, writer.mm, _worker._log_record)
    finally:
        words.close()
