"""Growing the data area: a ring maps only what it uses, and doubles on demand.

A new ring's data area is ``INITIAL_BYTES`` (or its capacity, if smaller). A put
that finds no room, while the capacity would allow its frame, grows the area under
the mutex instead of waiting::

    ftruncate the memfd  ->  map it bigger  ->  move the live frames that must move
      -> store ``base``   (the old geometry unchanged by it: see below)
      -> store ``geo``    (the commit: one aligned store)  ->  use the new mapping

Positions never change: ``head``, ``tail``, a claim's start all stay valid. Only
the map from position to offset does, ``(pos - base) % size``. The size doubles
(at most to the capacity), and the live frames ``[head, tail)``, which lie in at
most two runs (before and after the end of ``head``'s lap), keep their order:

- within one old lap (no pad among them): ``base`` becomes the start of that lap,
  and nothing moves (the frames keep their offsets, all below the old size);
- wrapping past the old lap's end (a pad ends it): ``base`` becomes that lap's
  end, the frames after it stay at offset 0, and those before it (from ``head``,
  at offset ``h``, to the pad's end) move to the top of the new area, ``[new - old
  + h, new)``, which lies beyond the old area (the size at least doubled): nobody
  reads there before the commit. (A last step to the capacity that is less than a
  doubling is taken only when nothing must move.)

Either way a pad still runs to the end of a lap, the rule every reader relies on.
The new ``base`` is stored as a position congruent to the old one modulo the old
size, so a death after the ``base`` store and before the ``geo`` store leaves the
old geometry exactly as it was; a death before that leaves the memfd longer, which
costs nothing. After the ``geo`` store every frame is where the new geometry says
(the move came first, in program order; see docs/design.md, "Memory ordering").

A growth never moves frames while a claim is live, nor runs at all while a
reservation is: their processes copy from or into the old offsets with the mutex
let go (a claimer's process keeps the mapping it copies from open until it is
done, see ``RingBase._use``). The put waits for them, as for room, within its
deadline. Other processes notice ``geo`` the next time they hold
the mutex and map the new area (``RingBase._sync``); the C fast path answers SLOW
until they have.

The area never shrinks: pages past ``RETAIN_BYTES`` are punched out as they are
consumed (``_give_back``), so a burst leaves address space mapped, not memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

from ._ringbase import RingBase, map_data, move
from ._ringlayout import DATA, Q_BASE, Q_GEO, RETAIN_BYTES, place

__all__ = ["GrowOps"]

# Test hook (see _ring.set_hook, which sets it here). None in normal use.
_hook: Callable[[str], None] | None = None


class GrowOps(RingBase):
    def _growable(self, head: int, tail: int, size: int) -> bool:
        """Whether growing could make room for a frame of ``size`` bytes at ``tail``
        (a hint, for waiters that must not sleep when a put would grow)."""
        return tail - head + size <= self.capacity and self.size < self.max_size

    def _grow(self, head: int, tail: int, size: int) -> bool:
        """With the mutex held, no reservation live, and a frame of ``size`` bytes
        not fitting at ``tail``: grow the data area until it does. False if the
        capacity forbids it, or frames must move while a live claim may be
        copying them out (wait, as for room). MemoryError, with nothing changed, if
        the memory cannot be had."""
        if not self._growable(head, tail, size):
            return False
        old = self.size
        h = (head - self._q[Q_BASE]) % old
        lap_end = head - h + old
        wraps = tail >= lap_end  # (head < lap_end always)
        if wraps and self._claim_alive():
            return False
        origin = lap_end if wraps else head - h
        new = old
        while True:
            if new >= self.max_size:
                return False
            new = min(2 * new, self.max_size)
            if wraps and new < 2 * old:
                return False  # (the move would overwrite what it moves: wait instead)
            if head == tail:  # empty: the put starts a new lap
                if size <= new:
                    break
                continue
            rel_head, rel_tail = head - origin, tail - origin
            end, _pad = place(rel_head, rel_tail, size, new, min(RETAIN_BYTES, new))
            if end - rel_head <= min(new, self.capacity):
                break
        # Stored as a position congruent to ``origin`` modulo both sizes (so that
        # it means the same in the old geometry) and not negative (a u64).
        if origin < 0:
            step = math.lcm(old, new)
            origin += -(origin // step) * step
        self._grow_to(new, origin, h if wraps else -1)
        return True

    def _grow_to(self, new: int, origin: int, moved_from: int) -> None:
        """Make the data area ``new`` bytes with ``origin`` at offset 0, moving the
        frames at ``[moved_from, old)`` to the top of it (none if -1). See the
        module's docstring for why each step leaves a consistent ring."""
        old = self.size
        fd = self._shm.fd
        try:
            if os.fstat(fd).st_size < DATA + new:
                os.ftruncate(fd, DATA + new)
            mm, data = map_data(fd, new)
        except OSError as exc:
            raise MemoryError(f"cannot grow a queue to {new} bytes: {exc}") from exc
        try:
            if moved_from >= 0:
                base = data - DATA
                move(base, DATA + new - old + moved_from, DATA + moved_from, old - moved_from)
            if _hook is not None:
                _hook("grow:moved")
            q = self._q
            q[Q_BASE] = origin  # (the same geometry as before, while the size is old)
            q[Q_GEO] = new  # the commit
            if _hook is not None:
                _hook("grow:committed")
        except BaseException:
            if self._q[Q_GEO] != new:
                mm.release()
            else:
                self._use(mm, data, new)
            raise
        self._use(mm, data, new)
