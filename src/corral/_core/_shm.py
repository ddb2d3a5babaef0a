"""Anonymous shared memory: memfd_create + mmap(MAP_SHARED).

Why memfd rather than /dev/shm (``multiprocessing.shared_memory``):

- nothing has a name, so nothing can be left behind in /dev/shm, and no
  resource tracker is needed: the kernel frees the pages when the last fd and the
  last mapping are gone, SIGKILL included;
- the memory is reachable only through an fd, so other users cannot open it
  (unlike /dev/shm entries, which are files with permissions to get wrong).

Pages are allocated when first touched, so a large region costs what is written
to it; ``release()`` punches a hole to give pages back after use.

A region reaches a child as an argument at start (see ``_fdpass``); under fork it
is simply inherited.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import weakref

from ._fdpass import FdHandle
from ._linux import libc

# typing costs a few ms at import, and every spawned child imports this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["NAME_PREFIX", "SharedMemory", "map_fd"]

# Every memfd corral makes is named with this prefix (it shows in /proc/<pid>/maps
# and /proc/<pid>/fd), and so would anything corral ever put in /dev/shm: the
# test suite's leak check tells corral's memory from other programs' by it.
NAME_PREFIX = "corral-"

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
libc.fallocate.restype = ctypes.c_int

_libc_mmap = ctypes.CFUNCTYPE(
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
    use_errno=True,
)(("mmap", libc))
_libc_munmap = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)(("munmap", libc))
_PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE
_MAP_FAILED = ctypes.c_void_p(-1).value


def _mmap_shared(fd: int, size: int, offset: int = 0) -> int:
    """libc's mmap of ``size`` bytes of ``fd`` from ``offset``, shared and
    read-write: the address."""
    address = _libc_mmap(None, size, _PROT_RW, mmap.MAP_SHARED, fd, offset)
    if address is None or address == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap: {os.strerror(err)}")
    return int(address)


def map_fd(fd: int, size: int, offset: int = 0) -> ctypes.Array[ctypes.c_char]:
    """Map ``size`` bytes of ``fd`` from ``offset`` (shared, read-write) without
    keeping an fd.

    ``mmap.mmap`` keeps a duplicate of the fd for the mapping's life; this keeps
    none. The mapping is unmapped when the returned ctypes array and every view of
    it are gone: a view can never outlive the memory under it.
    """
    address = _mmap_shared(fd, size, offset)
    array = (ctypes.c_char * size).from_address(address)
    weakref.finalize(array, _libc_munmap, address, size).atexit = False
    return array


class SharedMemory:
    """A block of anonymous memory shared with the children this process starts.

    Attributes:
        size: the length in bytes.
        buf: a writable ``memoryview`` over the whole block.
        address: the block's address in this process, for ctypes and futexes.
    """

    def __init__(
        self,
        size: int,
        *,
        what: str = "shared memory",
        _handle: FdHandle | None = None,
    ):
        """Mapped with libc's mmap (``map_fd``), not Python's, which keeps a
        duplicate of the fd for as long as the mapping lives: one fd per block, not
        two. ``buf`` is a view of a ctypes array, and the block is unmapped once
        ``buf`` and every view taken of it are gone (``close()`` closes the fd at
        once)."""
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        if _handle is None:
            fd = os.memfd_create(f"{NAME_PREFIX}{what}", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, size)
            except BaseException:
                os.close(fd)
                raise
            _handle = FdHandle(fd, what)
        self._handle = _handle
        self.size = size
        self._anchor: ctypes.Array[ctypes.c_char] | None = map_fd(_handle.fd, size)
        self.buf = memoryview(self._anchor).cast("B")
        self.address: int = ctypes.addressof(self._anchor)

    @property
    def fd(self) -> int:
        return self._handle.fd

    def release(self, offset: int, length: int) -> None:
        """Give the pages under ``[offset, offset+length)`` back to the kernel.

        The range reads as zeros afterwards. Only whole pages inside the range are
        freed.
        """
        if length <= 0:
            return
        if (
            libc.fallocate(
                self._handle.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length
            )
            != 0
        ):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def close(self) -> None:
        """Unmap and close. Safe to call twice. Views exported from ``buf`` must be
        gone (a slice of ``buf`` still alive defers the unmapping until it goes)."""
        if self._handle.closed:
            return
        self.buf.release()  # (BufferError while views of it remain: nothing unmapped)
        self._anchor = None
        self._handle.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._handle, self.size))

    def __repr__(self) -> str:
        return f"<corral SharedMemory size={self.size} fd={self._handle.fd}>"


def _rebuild(handle: FdHandle, size: int) -> SharedMemory:
    return SharedMemory(size, what=handle.what, _handle=handle)
