"""The shared arenas under locks and values (``corral._core._arena``): alignment,
reuse of freed blocks, closing an emptied arena, one arena per memfd in a process
that is given it, and a forked child that allocates from arenas of its own."""

from __future__ import annotations

import ctypes
import itertools
import os

import corral
from corral._core import _arena, _started
from corral._core._arena import ALIGN, BIG, PAGE, Block, allocate, blocks_in_use
from corral._core._fdpass import FdHandle

TIMEOUT = 30.0
# Enough blocks to reach any hole the suite's earlier objects left in the arenas.
MAX_TRIES = 10_000


def test_blocks_are_aligned_and_never_overlap() -> None:
    sizes = [1, 4, 63, 64, 65, 200, PAGE - 1, PAGE, PAGE + 8, 3 * PAGE]
    blocks = [allocate(size) for size in sizes * 3]
    spans = []
    for size, block in zip(sizes * 3, blocks, strict=True):
        assert block.size >= size
        if size >= PAGE:
            assert block.address % PAGE == 0
            assert block.size % PAGE == 0
        else:
            assert block.address % ALIGN == 0
            assert block.size % ALIGN == 0
        spans.append((block.address, block.address + block.size))
    spans.sort()
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start


def test_a_freed_block_is_given_again_zeroed() -> None:
    anchor = allocate(100)  # (keeps the arena open once the block is freed)
    block = allocate(100)
    ctypes.memset(block.address, 0xFF, block.size)
    where = (block.arena, block.offset)
    block.close()
    kept: list[Block] = []
    for _ in range(MAX_TRIES):
        again = allocate(100)
        if (again.arena, again.offset) == where:
            break
        kept.append(again)  # (an earlier hole: keep it filled)
    else:
        raise AssertionError("the freed block was never given again")
    assert bytes(again.buf) == bytes(again.size)
    assert not anchor.closed


def test_a_freed_page_is_given_again_zeroed() -> None:
    anchor = allocate(PAGE)  # (keeps the arena open once the block is freed)
    block = allocate(PAGE)
    ctypes.memset(block.address, 0xFF, block.size)
    where = (block.arena, block.offset)
    block.close()
    kept: list[Block] = []
    for _ in range(MAX_TRIES):
        again = allocate(PAGE)
        if (again.arena, again.offset) == where:
            break
        kept.append(again)
    else:
        raise AssertionError("the freed page was never given again")
    assert bytes(again.buf) == bytes(PAGE)
    assert not anchor.closed


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_big_block_has_its_own_arena_closed_with_it() -> None:
    in_use = blocks_in_use()
    block = allocate(BIG)
    arena, fd = block.arena, block.fd
    assert arena.size == PAGE + BIG
    assert blocks_in_use() == in_use + 1
    block.close()
    assert arena.closed
    assert not _fd_open(fd) or os.readlink(f"/proc/self/fd/{fd}") != "/memfd:corral-arena"
    assert blocks_in_use() == in_use


def test_an_arena_received_twice_is_held_once() -> None:
    block = allocate(64)
    arena = block.arena
    dup = FdHandle(os.dup(arena.handle.fd), "arena")
    assert _arena._adopt(dup, arena.size) is arena
    assert dup.closed  # (the duplicate fd was closed at once)
    assert _arena._adopt(arena.handle, arena.size) is arena
    assert not arena.handle.closed


def test_a_block_freed_by_the_collector_mid_allocation_waits_its_turn() -> None:
    block = allocate(64)
    arena, used = block.arena, block.arena.used
    with _started.state().lock:
        _arena._busy = True  # (as if the collector ran inside allocate())
        try:
            block.close()
            assert arena.used == used  # the free list was left alone...
        finally:
            _arena._busy = False
    other = allocate(64)  # ...and the next allocation applies the free first
    assert arena.used == used - 1 + (other.arena is arena)
    assert not _arena._pending


def _arena_inode_of_a_new_lock(parent_inodes: set[int]) -> tuple[int, bool]:
    lock = corral.Lock()
    inode = os.fstat(lock._mon.shm.fd).st_ino
    return inode, inode in parent_inodes


def test_a_forked_child_allocates_from_arenas_of_its_own() -> None:
    lock = corral.Lock()  # (an arena with room, inherited by the child)
    extents = list(lock._mon.shm.arena.extents)
    inodes = {os.fstat(a.handle.fd).st_ino for a in _arena._owned}
    p = corral.get_context("fork").Process(target=_arena_inode_of_a_new_lock, args=(inodes,))
    p.start()
    inode, shared = p.result(TIMEOUT)
    assert not shared
    assert inode not in inodes
    assert lock._mon.shm.arena.extents == extents


def _until_set(event: corral.Event) -> None:
    event.wait(TIMEOUT)


def _first_free_block_at(offset: int, arena: _arena.Arena) -> bool:
    """Does an allocation of PAGE bytes (now) land at ``offset`` of ``arena``? The
    blocks taken on the way are freed again."""
    taken = []
    try:
        for _ in range(MAX_TRIES):
            block = allocate(PAGE)
            taken.append(block)
            if block.arena is arena and block.offset == offset:
                return True
            if block.arena is not arena and len(taken) > 2 * _arena.ARENA_SIZE // PAGE:
                return False
        return False
    finally:
        for block in taken:
            block.close()


def test_a_block_freed_while_a_child_started_after_it_runs_is_held_until_it_exits(
    ctx: corral.CorralContext,
) -> None:
    # The child may still use the object (given at start, or inherited by fork)
    # after the parent let go of it: its memory is not handed to a new object until
    # the child is gone. A block made after the child started is reused at once.
    anchor = allocate(100)  # (keeps the arena open while the blocks come and go)
    before_child = allocate(PAGE)
    arena, offset = before_child.arena, before_child.offset
    go = ctx.Event()
    child = ctx.Process(target=_until_set, args=(go,))
    child.start()
    try:
        after_child = allocate(PAGE)
        later_arena, later_offset = after_child.arena, after_child.offset
        in_use = blocks_in_use()
        before_child.close()
        after_child.close()
        assert blocks_in_use() == in_use - 2  # both freed, as the leak check counts
        assert not _first_free_block_at(offset, arena)  # held for the child
        assert _first_free_block_at(later_offset, later_arena)  # free at once
    finally:
        go.set()
        child.join(TIMEOUT)
    assert child.exitcode == 0
    assert _first_free_block_at(offset, arena)  # the child is gone: free again
    anchor.close()
