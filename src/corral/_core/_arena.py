"""Shared arenas: many small objects (locks, values) in one memfd, one fd.

    the process that makes objects              a child that is given some
    ------------------------------              --------------------------
    _owned: [Arena, ...]  this pid's, open to   _known: {memfd identity: Arena}
      allocation (free list: this process's       one fd and one mapping per
      Python memory, never shared)                arena, however many objects
        Block(arena, offset, size) ──pickled──►   came from it (duplicate fds
          under a Monitor or a ctypes object      received are closed at once)

- **Arena**: one memfd of ``ARENA_SIZE`` bytes, mapped once with libc's mmap (no
  duplicate fd), so that a thousand locks cost a handful of fds rather than a
  thousand. A block as big as ``BIG`` or more gets an arena of its own, of its
  size (a large Array), which is closed with it.
- **Block**: ``size`` bytes at ``offset`` in an arena: what a Monitor or a shared
  ctypes object lives in. Blocks are 64-byte aligned (a cache line: a robust mutex
  and a futex word need natural alignment, and two objects never share a line, so
  one object's traffic does not slow its neighbours); a block of a page or more is
  page aligned and a whole number of pages, so that a lock's page is one page, as
  it was with a memfd of its own, and is given back whole when freed.
- **Pickling** (only while a child starts, as for every fd): a Block goes as
  ``(Arena, offset, size)`` and an Arena as its ``FdHandle`` (``DupFd``). One
  pickle holds an arena once however many of its objects it carries (the pickle
  memo); across pickles, the child recognises an arena by its memfd's identity
  (``st_dev``, ``st_ino``) and closes the duplicate.
- **Freeing**: when the object that the creating process made is garbage, its
  block goes back to the arena's free list (zeroed: the pages under it are
  punched out, the rest cleared), and an arena left empty is unmapped and closed
  at once (none is kept for later: a test's fds and mappings then come back to
  what they were). This is what the stdlib's ``multiprocessing.heap`` does too,
  and with the same rule: the creating process must keep an object alive while
  children still use it (a freed block may be given to a new object). Other
  processes never free: a forked child's copy of its parent's allocator is
  dropped at fork, and it makes arenas of its own.
- **Reserved tails**: ``reserve()`` hands out file space past the mapped part
  (sparse: it costs nothing until touched), under a robust mutex in the arena's
  header, for a monitor whose process slots outgrow its page (``_monitor``).

Layout of an arena file::

    0..64     robust mutex guarding ``tail``
    64..72    tail: the file offset past everything reserved so far
    128..size blocks (the mapped part)
    size..    reserved tails, mapped separately by their users
"""

from __future__ import annotations

import ctypes
import mmap
import os
import weakref
from multiprocessing import context as _mp_context

from . import _started
from ._errors import SharingError
from ._fdpass import FdHandle
from ._linux import libc
from ._robust import RobustMutex, init_mutex
from ._shm import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, NAME_PREFIX, map_fd

# typing costs a few ms at import, and every spawned child imports this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "ARENA_SIZE",
    "BIG",
    "Arena",
    "Block",
    "allocate",
    "blocks_in_use",
]

PAGE = mmap.PAGESIZE
ALIGN = 64  # a cache line: natural alignment for every mutex and futex word
HEADER = 128
_TAIL_OFFSET = 64

# Bytes of one shared arena (whole pages). Larger: fewer fds for many objects
# (a Lock takes a page: 255 of them per MiB); smaller: less address space for a
# program with few objects. Only the pages touched take memory either way.
ARENA_SIZE = 1 << 20

# A block of this many bytes or more gets an arena of its own, closed with it, so
# that a large Array neither fragments the shared arenas nor keeps one mapped.
BIG = ARENA_SIZE // 4


def _round(size: int) -> int:
    """The bytes a block of ``size`` takes: 64-byte units, whole pages from a page."""
    if size >= PAGE:
        return -(-size // PAGE) * PAGE
    return -(-size // ALIGN) * ALIGN


class Arena:
    """One memfd, mapped once. ``pid``: the process that allocates from it (0 for
    an arena received from another process)."""

    __slots__ = ("__weakref__", "_close", "address", "extents", "handle", "pid", "size", "used")

    def __init__(self, handle: FdHandle, size: int, *, create: bool):
        self.handle = handle
        self.size = size
        array = map_fd(handle.fd, size)
        self.address = ctypes.addressof(array)
        self.pid = os.getpid() if create else 0
        # Free extents, (offset, length) sorted by offset (the owner's only).
        self.extents: list[tuple[int, int]] = [(HEADER, size - HEADER)] if create else []
        self.used = 0
        if create:
            init_mutex(self.address)
            ctypes.c_uint64.from_address(self.address + _TAIL_OFFSET).value = size
        # Close the fd and unmap when the arena is garbage or emptied by its owner:
        # the mapping goes with the finalizer's arguments, so once it has run the
        # array is dropped and map_fd's own finalizer unmaps it.
        self._close = weakref.finalize(self, _close_arena, handle, array)
        self._close.atexit = False

    @property
    def closed(self) -> bool:
        return not self._close.alive

    def take(self, size: int) -> int:
        """First fit: the offset of a free block of ``size`` (already rounded), or -1."""
        align = PAGE if size >= PAGE else ALIGN
        for i, (start, length) in enumerate(self.extents):
            at = -(-start // align) * align
            end = start + length
            if at + size > end:
                continue
            pieces = []
            if at > start:
                pieces.append((start, at - start))
            if at + size < end:
                pieces.append((at + size, end - at - size))
            self.extents[i : i + 1] = pieces
            self.used += 1
            return at
        return -1

    def give_back(self, offset: int, size: int) -> None:
        """Return a block to the free list, merging it with its free neighbours."""
        ext = self.extents
        i = 0
        while i < len(ext) and ext[i][0] < offset:
            i += 1
        start, end = offset, offset + size
        if i > 0 and ext[i - 1][0] + ext[i - 1][1] == start:
            i -= 1
            start = ext[i][0]
            del ext[i]
        if i < len(ext) and ext[i][0] == end:
            end += ext[i][1]
            del ext[i]
        ext.insert(i, (start, end - start))
        self.used -= 1

    def reserve(self, nbytes: int) -> int:
        """File space for ``nbytes`` (whole pages) past everything reserved so far,
        by any process: its offset. The file grows (sparse) to cover it."""
        mutex = RobustMutex(self.address)
        tail = ctypes.c_uint64.from_address(self.address + _TAIL_OFFSET)
        try:  # (an interrupt after the lock was taken is inside the try)
            mutex.acquire()
            start = int(tail.value)
            os.ftruncate(self.handle.fd, start + nbytes)
            tail.value = start + nbytes  # (after the file grew: a death between wastes room only)
        finally:
            mutex.unlock_raw()
        return start

    def __reduce__(self) -> tuple[Any, ...]:
        return (_adopt, (self.handle, self.size))


def _close_arena(handle: FdHandle, array: ctypes.Array[ctypes.c_char]) -> None:
    handle.close()  # (the array goes with this call's arguments: unmapped then)


class Block:
    """``size`` bytes at ``offset`` in an arena: the memory under one object.

    Its object closes it when it goes (a Monitor's finalizer, a shared ctypes
    object's wrapper); a block that is garbage unclosed is freed all the same."""

    __slots__ = ("__weakref__", "address", "arena", "born", "closed", "offset", "size", "what")

    def __init__(self, arena: Arena, offset: int, size: int, what: str):
        self.arena = arena
        self.offset = offset
        self.size = size
        self.what = what
        self.address = arena.address + offset
        self.closed = False
        self.born = _started.state().count  # children started before it can't have it

    @property
    def fd(self) -> int:
        """The arena's fd (for mapping a tail that ``reserve()`` handed out)."""
        return self.arena.handle.fd

    @property
    def buf(self) -> memoryview:
        """A writable view of the block (it keeps the block, so the arena, alive)."""
        array = (ctypes.c_char * self.size).from_address(self.address)
        array._block = self  # type: ignore[attr-defined]
        return memoryview(array).cast("B")

    def reserve(self, nbytes: int) -> int:
        """File space in this block's arena, past its mapped part: see ``Arena.reserve``."""
        return self.arena.reserve(nbytes)

    def close(self) -> None:
        """The object is gone: in the process that made it, the block is free."""
        if self.closed:
            return
        self.closed = True
        if self.arena.pid == os.getpid():
            _free(self.arena, self.offset, self.size, self.born)

    def __del__(self) -> None:
        # Garbage (its object is gone without closing it): free it all the same.
        # Not at interpreter exit, when this module may be half torn down: the
        # kernel frees everything then anyway.
        if not self.closed and _started is not None:
            self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        if _mp_context.get_spawning_popen() is None:
            raise SharingError(
                f"a corral {self.what} can only be passed to a child process as an "
                "argument when the child starts (Process(args=...)); it cannot be "
                "pickled or sent through a queue or pipe later"
            )
        return (Block, (self.arena, self.offset, self.size, self.what))

    def __repr__(self) -> str:
        return f"<corral Block {self.size} B at {self.offset} of arena fd={self.fd}>"


# -- this process's allocator

# Everything below is guarded by ``_started.state().lock``. Reentrant, because a block may
# be freed by the garbage collector while this thread is inside allocate(): _busy
# then says the free list is mid-change, and the free waits in _pending until
# allocate() is done.
_busy = False
_pending: list[tuple[Arena, int, int, int]] = []  # (arena, offset, size, born)
# Children: a block freed here may still be in use in a child started after it was
# made (given as an argument, or inherited by fork), even after this process let go
# of its object (Process.start drops its arguments, as the stdlib's does). Giving
# that memory to a new object would hand a child's lock to someone else and corrupt
# the child's robust-mutex list, so such a block is held until every child started
# since it was made has exited (``_started``: Process.start counts its children
# there, and a block's ``born`` is that count when it was made).
_held: list[tuple[Arena, int, int, int]] = []  # freed, waiting for such children
_owned: list[Arena] = []  # this process's shared arenas, open to allocation
_in_use = 0  # blocks this process allocated and has not freed
_known: weakref.WeakValueDictionary[tuple[int, int], Arena] = weakref.WeakValueDictionary()


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def _new_arena(size: int) -> Arena:
    fd = os.memfd_create(f"{NAME_PREFIX}arena", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        arena = Arena(FdHandle(fd, "arena"), size, create=True)
    except BaseException:
        os.close(fd)
        raise
    _known[_identity(fd)] = arena
    return arena


def allocate(size: int, what: str = "object") -> Block:
    """A zeroed block of at least ``size`` bytes, 64-byte aligned (page aligned from
    a page up), from this process's arenas (a new one if none has room)."""
    global _busy, _in_use
    size = _round(max(size, 1))
    with _started.state().lock:
        _busy = True
        try:
            if size >= BIG:
                arena = _new_arena(PAGE + size)  # (the header's page, then the block)
                offset = arena.take(size)
            else:
                for arena in _owned:
                    offset = arena.take(size)
                    if offset >= 0:
                        break
                else:
                    arena = _new_arena(ARENA_SIZE)
                    _owned.append(arena)
                    offset = arena.take(size)
            _in_use += 1
        finally:
            _busy = False
        _drain()
    return Block(arena, offset, size, what)


def _free(arena: Arena, offset: int, size: int, born: int) -> None:
    global _in_use
    with _started.state().lock:
        _in_use -= 1
        _pending.append((arena, offset, size, born))
        if not _busy:
            _drain()


def _on_child_gone() -> None:
    """(``_started.state().lock`` held.) A child has gone: the blocks held for it alone go to
    the free list."""
    newest = _started.newest()
    ready = [entry for entry in _held if entry[3] >= newest]
    if ready:
        _held[:] = [entry for entry in _held if entry[3] < newest]
        _pending.extend(ready)
        if not _busy:
            _drain()


_started.on_gone = _on_child_gone


def _drain() -> None:
    """(``_started.state().lock`` held, free list not mid-change.) Free the blocks waiting to be."""
    global _busy
    _busy = True
    try:
        newest = _started.newest()
        while _pending:
            arena, offset, size, born = _pending.pop()
            if newest > born:  # a child started since it was made may still use it
                _held.append((arena, offset, size, born))
                continue
            if arena.used == 1:
                # The last block: the whole arena goes (no need to clear it).
                arena.used = 0
                if arena in _owned:
                    _owned.remove(arena)
                arena._close()
                continue
            _clear(arena, offset, size)
            arena.give_back(offset, size)
    finally:
        _busy = False


def _clear(arena: Arena, offset: int, size: int) -> None:
    """Zero a freed block: punch out its whole pages, clear the rest."""
    first = -(-offset // PAGE) * PAGE
    last = (offset + size) // PAGE * PAGE
    if last > first:
        libc.fallocate(
            arena.handle.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, first, last - first
        )
    else:
        first = last = offset
    ctypes.memset(arena.address + offset, 0, first - offset)
    ctypes.memset(arena.address + last, 0, offset + size - last)


def _adopt(handle: FdHandle, size: int) -> Arena:
    """An arena received from another process: the one already known by this
    memfd's identity (the duplicate fd is closed), or a new mapping of it."""
    key = _identity(handle.fd)
    with _started.state().lock:
        arena = _known.get(key)
        if arena is not None and not arena.closed:
            if arena.handle is not handle:
                handle.close()
            return arena
        arena = Arena(handle, size, create=False)
        _known[key] = arena
        return arena


def blocks_in_use() -> int:
    """How many blocks this process allocated and has not freed yet (the leak check
    compares it before and after a test: an arena shared with longer-lived objects
    hides a leaked block from an fd count)."""
    with _started.state().lock:
        return _in_use  # (a block freed but held for a child counts as freed)


def _after_fork_in_child() -> None:
    # The parent's arenas stay mapped for the objects inherited from it, but they
    # are the parent's to allocate from and to free: this process makes its own.
    # (``_started`` gives the child start numbers and a lock of its own on first use.)
    global _busy, _in_use
    _busy = False
    _pending.clear()
    _owned.clear()
    _in_use = 0
    _held.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
