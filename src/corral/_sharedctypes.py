"""Shared ctypes objects (``Value``, ``Array``, ``RawValue``, ``RawArray``).

    RawValue / RawArray   a ctypes object laid over a block of a shared arena
      obj._wrapper        a _Block: keeps the memory alive, frees it when the
                          object is garbage, and carries it to a child at start
    Value / Array         the raw object wrapped by multiprocessing's own
                          Synchronized* classes, with a corral RLock (or the lock
                          given): get_lock() returns that corral lock

As with ``multiprocessing.sharedctypes``, small objects share arenas (``_core._arena``:
a thousand Values take a handful of fds), and the process that made an object
must keep it alive while children use it. Unlike it, nothing goes through
/dev/shm: an arena is an anonymous memfd, freed by the kernel when the last
process using it is gone, SIGKILL included.

Pickling (only while a child starts, as with the stdlib) goes through the same
``ForkingPickler`` reducer protocol as the stdlib's (``obj._wrapper`` with
``create_memoryview()``), so corral's and the stdlib's objects can coexist in one
program whichever reducer was registered last for a ctypes type.
"""

from __future__ import annotations

import ctypes
from multiprocessing import sharedctypes as _mp_sharedctypes
from multiprocessing.reduction import ForkingPickler
from typing import Any

from ._core._arena import Block, allocate
from ._synchronize import Lock, RLock

# The stdlib module's helpers are not all in its type stubs.
_mp_sc: Any = _mp_sharedctypes

__all__ = ["Array", "RawArray", "RawValue", "Value"]

_typecode_to_type: dict[str, Any] = dict(_mp_sc.typecode_to_type)


class _Block:
    """The shared memory under one ctypes object: ``size`` bytes at ``offset``.

    A Value's or Array's own lock (``lock=True``) carries its bytes in its block,
    past the lock's page: ``owner`` is then that lock, which this keeps alive and
    which frees the memory when it goes."""

    __slots__ = ("offset", "owner", "shm", "size")

    def __init__(self, shm: Block, offset: int = 0, size: int = 0, owner: Any = None):
        self.shm = shm
        self.offset = offset
        self.size = size or shm.size
        self.owner = owner

    def create_memoryview(self) -> memoryview:
        # The stdlib's reducer protocol (multiprocessing.heap.BufferWrapper).
        if not self.offset and self.size == self.shm.size:
            return self.shm.buf
        return self.shm.buf[self.offset : self.offset + self.size]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Block, (self.shm, self.offset, self.size, self.owner))

    def __del__(self) -> None:
        if self.owner is None:  # (else the lock's memory: its monitor frees it)
            self.shm.close()


def _as_type(typecode_or_type: Any) -> Any:
    return _typecode_to_type.get(typecode_or_type, typecode_or_type)


def _over(type_: Any, block: _Block, length: int | None) -> Any:
    full = type_ if length is None else type_ * length
    ForkingPickler.register(full, _reduce_ctype)
    obj = full.from_address(block.shm.address + block.offset)
    obj._wrapper = block
    return obj


def _new(type_: Any, length: int | None) -> Any:
    full = type_ if length is None else type_ * length
    block = allocate(ctypes.sizeof(full), "shared ctypes object")
    return _over(type_, _Block(block, 0, max(ctypes.sizeof(full), 1)), length)


def _reduce_ctype(obj: Any) -> tuple[Any, ...]:
    wrapper = getattr(obj, "_wrapper", None)
    if not isinstance(wrapper, _Block):
        # One of the stdlib's own objects of the same ctypes type.
        reduced: tuple[Any, ...] = _mp_sc.reduce_ctype(obj)
        return reduced
    if isinstance(obj, ctypes.Array):
        return (_over, (obj._type_, wrapper, obj._length_))
    return (_over, (type(obj), wrapper, None))


def RawValue(typecode_or_type: Any, *args: Any) -> Any:
    """A ctypes object in shared memory, without a lock."""
    obj = _new(_as_type(typecode_or_type), None)
    obj.__init__(*args)
    return obj


def RawArray(typecode_or_type: Any, size_or_initializer: Any) -> Any:
    """A ctypes array in shared memory, without a lock."""
    type_ = _as_type(typecode_or_type)
    if isinstance(size_or_initializer, int):
        return _new(type_, size_or_initializer)
    values = list(size_or_initializer)
    obj = _new(type_, len(values))
    obj.__init__(*values)
    return obj


def _synchronized(obj: Any, lock: Any) -> Any:
    if lock is False:
        return obj
    if lock is True or lock is None:
        lock = RLock()
    if not isinstance(lock, Lock):
        raise AttributeError(f"{lock!r} has no method 'acquire' of a corral lock")
    return _mp_sc.synchronized(obj, lock)


def _new_locked(type_: Any, length: int | None) -> tuple[Any, RLock]:
    """A ctypes object in the block of its own new RLock, past the lock's page."""
    full = type_ if length is None else type_ * length
    size = max(ctypes.sizeof(full), 1)
    lock = RLock(_data_bytes=size)
    mon = lock._mon
    block = _Block(mon.shm, mon.data_address - mon.shm.address, size, lock)
    return _over(type_, block, length), lock


def Value(typecode_or_type: Any, *args: Any, lock: Any = True) -> Any:
    """A ctypes object in shared memory, guarded by a corral RLock (``get_lock()``).

    ``lock=False`` returns the raw object; a corral Lock or RLock may be given.
    With its own lock (the default), the object lives in the lock's block.
    """
    if lock is True or lock is None:
        obj, lock = _new_locked(_as_type(typecode_or_type), None)
        obj.__init__(*args)
    else:
        obj = RawValue(typecode_or_type, *args)
    return _synchronized(obj, lock)


def Array(typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True) -> Any:
    """A ctypes array in shared memory, guarded by a corral RLock (``get_lock()``)."""
    if lock is not True and lock is not None:
        return _synchronized(RawArray(typecode_or_type, size_or_initializer), lock)
    type_ = _as_type(typecode_or_type)
    if isinstance(size_or_initializer, int):
        obj, lock = _new_locked(type_, size_or_initializer)
    else:
        values = list(size_or_initializer)
        obj, lock = _new_locked(type_, len(values))
        obj.__init__(*values)
    return _synchronized(obj, lock)


for _fn in (RawValue, RawArray, Value, Array):
    _fn.__module__ = "corral"
