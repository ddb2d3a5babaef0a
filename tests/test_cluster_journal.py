"""The cluster chunks' outcome journal (``_cluster_journal``), on its own: records
whole or absent, the trust checks on its directory, and what is removed when.

No dask here: ``test_cluster.py`` kills real dask workers and counts the runs.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral._core import _linux
from corral._pool import _cluster_journal as journal
from corral._pool import _worker
from corral._remote import decode_error

TOKEN = "t" * 32


@pytest.fixture(autouse=True)
def _private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every journal of these tests under tmp_path; no file kept open after."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(journal, "_base", None)
    monkeypatch.setattr(journal, "_warned", False)
    yield tmp_path
    if journal._fd is not None:
        os.close(journal._fd[1])
        journal._fd = None


def _prefix(key: str = "corral-job-1") -> str:
    prefix = journal.prefix(TOKEN, key, journal.owner())
    assert prefix is not None
    return prefix


def _run(key: str, pairs: list[tuple[int, object]], fn: object = lambda x: x * 2) -> list[object]:
    """Run ``fn`` on (index, item) pairs as a node's pool worker does."""
    call = journal.Journaled(fn, _worker.MODE_MAP, _prefix(key))  # type: ignore[arg-type]
    out: list[object] = []
    for pair in pairs:
        try:
            out.append(call(pair))
        except Exception as exc:
            out.append(exc)
    return out


def _files() -> list[Path]:
    base = journal.base_dir()
    assert base is not None
    return sorted(Path(base, TOKEN).iterdir())


def test_outcomes_are_recalled_by_index_for_the_ancestors_asked() -> None:
    assert _run("k1", [(10, 1), (11, 2), (12, 3)]) == [2, 4, 6]
    _run("k2", [(13, 4)])
    assert journal.recall(TOKEN, ["k1"], 10, 20) == {10: (True, 2), 11: (True, 4), 12: (True, 6)}
    assert journal.recall(TOKEN, ["k1", "k2"], 11, 14) == {
        11: (True, 4),
        12: (True, 6),
        13: (True, 8),
    }
    assert journal.recall(TOKEN, ["k3"], 0, 100) == {}
    assert journal.recall(TOKEN, [], 0, 100) == {}


def test_an_item_that_raised_is_journaled_with_its_error_and_raises() -> None:
    def bad(x: int) -> int:
        raise ValueError(f"bad {x}")

    (out,) = _run("k1", [(3, 7)], bad)
    assert isinstance(out, ValueError)
    ((ok, record),) = journal.recall(TOKEN, ["k1"], 0, 10).values()
    assert not ok
    err = decode_error(record)
    assert isinstance(err, ValueError)
    assert str(err) == "bad 7"


def test_star_and_call_modes_unpack_the_item() -> None:
    star = journal.Journaled(lambda a, b: a + b, _worker.MODE_STAR, _prefix())
    call = journal.Journaled(lambda a, b=0: a - b, _worker.MODE_CALL, _prefix())
    assert star((0, (2, 3))) == 5
    assert call((1, ((9,), {"b": 4}))) == 5
    assert journal.recall(TOKEN, ["corral-job-1"], 0, 2) == {0: (True, 5), 1: (True, 5)}


def test_a_value_that_cant_be_pickled_is_returned_but_not_journaled() -> None:
    lock = threading.Lock()
    assert _run("k1", [(0, 1), (1, 2)], lambda x: lock if x == 2 else x) == [1, lock]
    assert journal.recall(TOKEN, ["k1"], 0, 10) == {0: (True, 1)}


# Records whole or absent: a death mid-write, or a damaged file, ends its reading
# at the last whole record; the items after it run again, none is made up.
@pytest.mark.parametrize(
    "damage",
    ["cut_in_head", "cut_in_payload", "cut_in_crc", "flipped_payload_byte", "garbage_after"],
)
def test_a_damaged_record_ends_its_files_reading(damage: str) -> None:
    _run("k1", [(0, "a" * 100), (1, "b" * 100)])
    (path,) = _files()
    data = path.read_bytes()
    first = len(journal.encode(0, True, pickle.dumps("a" * 100 * 2, 5)))
    assert len(data) == 2 * first
    if damage == "cut_in_head":
        data = data[: first + 5]
    elif damage == "cut_in_payload":
        data = data[: first + 40]
    elif damage == "cut_in_crc":
        data = data[:-2]
    elif damage == "flipped_payload_byte":
        data = data[: first + 30] + bytes([data[first + 30] ^ 1]) + data[first + 31 :]
    else:
        data += b"\x00" * 7
    path.write_bytes(data)
    expected = {0: (True, "aa" * 100)}
    if damage == "garbage_after":
        expected[1] = (True, "bb" * 100)
    assert journal.recall(TOKEN, ["k1"], 0, 10) == expected


def test_a_record_that_cant_be_unpickled_here_is_left_out() -> None:
    path = _prefix("k1") + ".node"
    journal.append(
        path, [journal.encode(0, True, b"not a pickle"), journal.encode(1, True, pickle.dumps(5))]
    )
    assert journal.recall(TOKEN, ["k1"], 0, 10) == {1: (True, 5)}


def test_the_first_record_of_an_item_wins() -> None:
    # The node's own record of a failure may follow the pool worker's of the same
    # item (an error raised by the item is recorded by both): the first one is kept.
    _run("k1", [(4, 2)])
    journal.append(_prefix("k1") + ".node", [journal.encode(4, True, pickle.dumps("later"))])
    assert journal.recall(TOKEN, ["k1"], 0, 10) == {4: (True, 4)}


def test_the_files_are_private_to_the_user() -> None:
    _run("k1", [(0, 1)])
    base = journal.base_dir()
    assert base is not None
    assert os.stat(base).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(base, TOKEN)).st_mode & 0o777 == 0o700
    (path,) = _files()
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("how", ["open_to_others", "a_symlink", "a_file"])
def test_a_journal_directory_that_cant_be_trusted_is_not_used(tmp_path: Path, how: str) -> None:
    path = tmp_path / f"corral-journal-{os.getuid()}"
    if how == "open_to_others":
        path.mkdir(mode=0o700)
        path.chmod(0o777)
    elif how == "a_symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        path.symlink_to(tmp_path / "elsewhere")
    else:
        path.write_text("")
    with pytest.warns(RuntimeWarning, match="no outcome journal on this node"):
        assert journal.base_dir() is None
    assert journal.prefix(TOKEN, "k1", journal.owner()) is None
    assert journal.recall(TOKEN, ["k1"], 0, 10) == {}


def test_a_journal_that_cant_be_written_costs_the_item_nothing(tmp_path: Path) -> None:
    call = journal.Journaled(lambda x: x + 1, _worker.MODE_MAP, str(tmp_path / "gone" / "x" / "p"))
    (tmp_path / "gone").write_text("")  # a file where the directory should be
    assert call((0, 1)) == 2


def test_a_node_sweeps_its_own_files_of_chunks_it_no_longer_holds() -> None:
    for key in ("k1", "k2", "k3"):
        _run(key, [(0, 1)])
    other = journal.prefix(TOKEN, "k1", "1-1")  # another dask worker's, on this host
    assert other is not None
    journal.append(other + ".node", [journal.encode(0, True, pickle.dumps(1))])
    journal.sweep(TOKEN, journal.owner(), {"k2": None, "unrelated": None})
    names = [p.name for p in _files()]
    assert sorted(n.split(".")[0] for n in names) == sorted(
        [journal.key_hash("k1"), journal.key_hash("k2")]
    )
    assert any(n.split(".")[1] == "1-1" for n in names)  # not this node's to remove


def test_release_removes_the_pools_journal() -> None:
    _run("k1", [(0, 1)])
    journal.release(TOKEN)
    base = journal.base_dir()
    assert base is not None
    assert not os.path.exists(os.path.join(base, TOKEN))
    journal.release(TOKEN)  # again, or on a host that had none: nothing to do


def test_stale_journals_of_dead_clients_are_swept(monkeypatch: pytest.MonkeyPatch) -> None:
    base = journal.base_dir()
    assert base is not None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(30)
    dead_start = 1  # a start time no live process has: dead, whatever its pid
    owners = {
        "old_dead": f"{dead.pid}-{dead_start}",
        "old_alive": journal.owner(),
        "new_dead": f"{dead.pid}-{dead_start}",
        "keep": f"{dead.pid}-{dead_start}",
    }
    old = time.time() - journal.STALE_SECONDS - 60
    for token, who in owners.items():
        journal.append(os.path.join(base, token, f"{journal.key_hash('k')}.{who}.node"), [b"x"])
        if token != "new_dead":
            os.utime(os.path.join(base, token), (old, old))
    assert not _linux.is_alive(dead.pid, dead_start)
    journal.sweep_stale(keep="keep")
    assert sorted(os.listdir(base)) == ["keep", "new_dead", "old_alive"]


def _double(x: int) -> int:
    return 2 * x


def test_the_nodes_pool_learns_chunk_sizes_for_the_users_function() -> None:
    # A Journaled wrapper is made for every chunk: the node's pool must learn the
    # chunk size of the function it wraps, or each chunk would ramp up from 1 again.
    import corral

    with corral.Pool(1, context="fork") as pool:
        engine = pool._engine
        engine.learn_chunk(journal.Journaled(_double, _worker.MODE_MAP, _prefix()), 512)
        again = journal.Journaled(_double, _worker.MODE_MAP, _prefix())
        assert engine.learned_chunk(again) == 512
        assert engine.learned_chunk(_double) == 512
        assert pool.map(again, [(0, 1), (1, 2)]) == [2, 4]
