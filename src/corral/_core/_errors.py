"""The core's exceptions.

Two kinds:

- raised straight to users, from inside ``pickle`` where no layer above could
  catch and translate them: ``SharingError`` (an fd-holding object pickled outside
  a child's start). It is defined here, with the root ``CorralError`` it derives
  from, and ``corral._exceptions`` re-exports both as ``corral.CorralError`` and
  ``corral.SharingError``;
- internal, which the layer above translates into its own (``corral._queue``):
  ``RingShutDown`` (-> ``corral.ShutDown``), ``TooLarge`` (->
  ``corral.MessageTooLarge``), ``NothingToAck`` (-> ``ValueError`` from
  ``JoinableQueue.task_done``) and ``LockTimeout`` (-> the timeout answer of the
  call: False, ``queue.Empty``, ``BrokenBarrierError``...).

Nothing here imports anything: every spawned child loads this module.
"""

from __future__ import annotations

__all__ = [
    "ChildDiedAtStart",
    "CorralError",
    "LockTimeout",
    "NothingToAck",
    "RingShutDown",
    "SharingError",
    "TooLarge",
]


class CorralError(Exception):
    """Root of all corral exceptions.

    Catch this to handle anything corral raises on its own account. Exceptions
    raised by *your* code in a child are re-raised with their own type instead.
    """

    __module__ = "corral"


class SharingError(CorralError, RuntimeError):
    """A corral object that holds shared memory or a file descriptor was pickled
    outside a child's start.

    Raised when a Queue, Lock, Value or the like is sent through a queue or pipe, or
    pickled by hand: such objects reach a child only as an argument when the child
    starts (``Process(args=...)``), as with the stdlib's own locks and queues.
    """

    __module__ = "corral"


class RingShutDown(Exception):
    """Internal: the ring was shut down (the queue layer raises corral.ShutDown)."""


class TooLarge(ValueError):
    """Internal: a message can never fit (the queue layer raises MessageTooLarge)."""

    def __init__(self, size: int, capacity: int):
        super().__init__(f"a message of {size} bytes can never fit in {capacity} bytes")
        self.size = size
        self.capacity = capacity

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.size, self.capacity))


class NothingToAck(ValueError):
    """Internal: ``Ring.ack`` with no message got and not yet acknowledged (the
    queue layer raises the ValueError of ``task_done()`` called too often)."""


class LockTimeout(Exception):
    """Internal: a caller's deadline passed while a peer (paused, not dead) held a
    shared object's internal mutex, which the caller therefore does *not* hold.
    What it owed the shared state was handed to ``_later``. The layer above gives
    the call's own timeout answer."""


class ChildDiedAtStart(CorralError):
    """A spawned child died while ``start()`` was still writing its start data (its
    pickled process object and arguments) to it.

    Raised by ``Process.start()`` under the spawn start method. The child has been
    reaped; the Process was not started.
    """

    __module__ = "corral"

    def __init__(self, pid: int, exitcode: int | None):
        super().__init__(
            f"child {pid} died (exit code {exitcode}) while its start data was written"
        )
        self.pid = pid
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.pid, self.exitcode))
