"""A host-local journal of a cluster chunk's outcomes: what finished on a node is
neither lost nor run again when its dask worker dies.

    pool worker on the node (Journaled)          journal (files on the host)
    -----------------------------------          ---------------------------
    value = fn(item)  --- append record --->     <base>/<token>/<key-hash>.<owner>.<pid>
    (index, ok, pickled outcome, crc)              one file per chunk and pool worker
    dask worker (``_cluster_node``)
    a failure the node's pool made  -- append --> <key-hash>.<owner>.node
    (a timeout, a crash)

    the dask worker dies (SIGKILL): its pool workers die with it; the files stay
    client: resubmits the items it has no outcome of, as a new chunk whose
    ``ancestors`` are the dead chunks' keys, preferring the same host
    node running it: ``recall(ancestors, range)`` --> the outcomes found are
    delivered as they are; only the other items run

Why the pool workers write, not the dask worker: a dask worker's death kills its
pool's workers too, and with them every outcome not yet committed to the dask
worker (``_worker``'s commits come once per report interval on a node) or reported
to the client. A record is appended before the item's value leaves the function's
process, so the window left is the item's own return path (microseconds), as on
one machine (``_worker.RETURNED``).

Layout and lifetime:
- ``<base>`` is ``<tmp>/corral-journal-<uid>``, mode 0700 and owned by the user
  (checked; refused otherwise): outcomes are pickles, which only their owner may
  read or write (the trust rule of ``docs/design.md``).
- ``<owner>`` names the dask worker process that ran the chunk (pid and start
  time). A dask worker removes its own files of chunks it no longer holds (their
  outcomes reached the client, which released the key): ``sweep``, at each chunk
  start. A dead dask worker's files stay until the client-side pool ends
  (``release``: the token's directory) or, if the client died too, until a later
  node finds every owner in a token's directory dead for ``STALE_SECONDS``.
- A record is ``index (u64), length (u32), ok (u8), payload, crc32 (u32)``; a record
  cut short by a death, or whose crc is wrong, ends its file's reading.

The cost: every outcome is pickled once more and written to a file (one write, a
few µs for a small value; a copy of a large one), on top of the commit to the dask
worker. A value that can't be pickled is not journaled (its item fails anyway).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import shutil
import stat
import struct
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from .._core import _linux
from .._remote import dumps, encode_error
from . import _worker

__all__ = ["Journaled", "base_dir", "key_hash", "owner", "recall", "release", "sweep", "write"]

# A token's directory whose files' owners are all dead is removed by a later node
# after this long untouched: its client is gone too (or it would have released
# it), and no chunk of it can be resubmitted any more. Shorter frees the disk
# sooner; it must stay well above a resubmit's delay (a nanny restart: seconds).
STALE_SECONDS = 600.0

_HEAD = struct.Struct("<QIB")
_CRC = struct.Struct("<I")

_base: str | None = None
_warned = False


def base_dir() -> str | None:
    """The user's journal directory, made if need be; None if it can't be trusted
    (someone else's, or open to others) or made: nothing is journaled then."""
    global _base, _warned
    if _base is not None:
        return _base
    path = os.path.join(tempfile.gettempdir(), f"corral-journal-{os.getuid()}")
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise PermissionError(f"{path} is not a directory private to this user")
    except OSError as exc:
        if not _warned:
            _warned = True
            warnings.warn(
                f"corral: no outcome journal on this node ({exc}): items that finished "
                "here may run again if this dask worker dies",
                RuntimeWarning,
                stacklevel=2,
            )
        return None
    _base = path
    return path


def key_hash(key: str) -> str:
    """A file-name-safe name for a dask key."""
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def owner() -> str:
    """This process, as named in its files: pid and start time (a reused pid is
    someone else)."""
    pid, start = _linux.self_identity()
    return f"{pid}-{start}"


def _owner_alive(name: str) -> bool:
    try:
        pid, start = (int(part) for part in name.split("-"))
    except ValueError:
        return False
    return _linux.is_alive(pid, start)


def encode(index: int, ok: bool, payload: bytes) -> bytes:
    head = _HEAD.pack(index, len(payload), ok)
    return head + payload + _CRC.pack(zlib.crc32(payload, zlib.crc32(head)))


def write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _records(path: str) -> Iterable[tuple[int, bool, bytes]]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return
    at = 0
    while at + _HEAD.size <= len(data):
        index, length, ok = _HEAD.unpack_from(data, at)
        end = at + _HEAD.size + length
        if end + _CRC.size > len(data):
            return  # cut short by a death
        (crc,) = _CRC.unpack_from(data, end)
        if crc != zlib.crc32(data[at + _HEAD.size : end], zlib.crc32(data[at : at + _HEAD.size])):
            return
        yield index, bool(ok), data[at + _HEAD.size : end]
        at = end + _CRC.size


def recall(token: str, ancestors: Iterable[str], lo: int, hi: int) -> dict[int, tuple[bool, Any]]:
    """The outcomes of items ``lo``..``hi - 1`` that the chunks ``ancestors`` journaled
    on this host: {index: (ok, value or error record)}; the first record of an item
    wins. A record that can't be unpickled here is left out (its item runs again)."""
    base = base_dir()
    hashes = {key_hash(key) for key in ancestors}
    if base is None or not hashes:
        return {}
    directory = os.path.join(base, token)
    try:
        names = os.listdir(directory)
    except OSError:
        return {}
    found: dict[int, tuple[bool, Any]] = {}
    for name in sorted(names):
        if name.split(".", 1)[0] not in hashes:
            continue
        for index, ok, payload in _records(os.path.join(directory, name)):
            if lo <= index < hi and index not in found:
                try:
                    found[index] = (ok, pickle.loads(payload))
                except BaseException:  # (a SystemExit would close the dask worker)
                    continue
    return found


def prefix(token: str, key: str, who: str) -> str | None:
    """Where the chunk ``key``'s records go: ``<prefix>.<writer>``."""
    base = base_dir()
    if base is None:
        return None
    return os.path.join(base, token, f"{key_hash(key)}.{who}")


def append(path: str, records: list[bytes]) -> None:
    """Append records to a file of their own (the dask worker's: failures its pool
    made, outcomes recalled from ancestors)."""
    if not records:
        return
    with contextlib.suppress(OSError):
        fd = _open(path)
        try:
            write(fd, b"".join(records))
        finally:
            os.close(fd)


def _open(path: str) -> int:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except FileNotFoundError:  # the token's directory: made by its first writer
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
        return os.open(path, flags, 0o600)


def sweep(token: str, who: str, held: Iterable[object]) -> None:
    """Remove this dask worker's files of chunks it no longer holds (``held``: the
    dask keys it has now): the client has their outcomes."""
    base = base_dir()
    if base is None:
        return
    directory = os.path.join(base, token)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    keep = {key_hash(key) for key in list(held) if isinstance(key, str)}
    for name in names:
        parts = name.split(".")
        if len(parts) == 3 and parts[1] == who and parts[0] not in keep:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def release(token: str) -> None:
    """The client-side pool ended: nothing of it can be resubmitted any more."""
    base = base_dir()
    if base is not None:
        shutil.rmtree(os.path.join(base, token), ignore_errors=True)


def sweep_stale(keep: str) -> None:
    """Remove token directories no live process owns a file in, untouched for
    ``STALE_SECONDS`` (their clients died without releasing them)."""
    base = base_dir()
    if base is None:
        return
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(base) as entries:
        for entry in entries:
            if entry.name == keep or not entry.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime < STALE_SECONDS:
                    continue
                owners = {name.split(".")[1] for name in os.listdir(entry.path) if "." in name}
                if not any(_owner_alive(o) for o in owners):
                    shutil.rmtree(entry.path, ignore_errors=True)


# -- In the node pool's workers ------------------------------------------------

# The file this pool worker appends to: (its chunk's prefix, fd). A node's pool is
# started with spawn, so the fd is never a forked parent's.
_fd: tuple[str, int] | None = None


def _fd_for(prefix_: str) -> int:
    global _fd
    if _fd is not None:
        if _fd[0] == prefix_:
            return _fd[1]
        old, _fd = _fd[1], None
        with contextlib.suppress(OSError):
            os.close(old)
    fd = _open(f"{prefix_}.{os.getpid()}")
    _fd = (prefix_, fd)
    return fd


class Journaled:
    """The function a node's pool runs for a cluster chunk: the user's ``fn`` on one
    ``(index, item)``, its outcome journaled before it is returned or raised.

    On the hot path of a cluster map (about 1.5 µs an item over the call itself:
    a pickle, a crc and a write), so kept flat."""

    __slots__ = ("fn", "mode", "prefix")

    def __init__(self, fn: Callable[..., Any], mode: int, prefix_: str):
        self.fn = fn
        self.mode = mode
        self.prefix = prefix_

    def __repr__(self) -> str:  # (what the node's pool names the items' function)
        return repr(self.fn)

    @property
    def _corral_chunk_key(self) -> Callable[..., Any]:
        """(The node's pool learns chunk sizes per function: the user's, not this
        wrapper, which is made anew for every chunk.)"""
        return self.fn

    def __call__(self, pair: tuple[int, Any]) -> Any:
        index, item = pair
        try:
            if self.mode == _worker.MODE_MAP:
                value = self.fn(item)
            elif self.mode == _worker.MODE_STAR:
                value = self.fn(*item)
            else:
                value = self.fn(*item[0], **item[1])
        except BaseException as exc:
            if not _worker._terminating:
                self._journal(index, False, pickle.dumps(encode_error(exc)))
            raise
        try:
            payload = dumps(value, 5)  # (cloudpickle's if pickle refuses, as the commit)
        except Exception:
            return value  # its item fails on the commit, and the node journals that
        self._journal(index, True, payload)
        return value

    def _journal(self, index: int, ok: bool, payload: bytes) -> None:
        # A journal that can't be written costs only the guarantee, not the item.
        data = encode(index, ok, payload)
        try:
            fd = _fd_for(self.prefix)
            n = os.write(fd, data)
            if n < len(data):  # (a large record, a few GiB)
                write(fd, data[n:])
        except OSError:
            pass
