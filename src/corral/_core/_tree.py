"""Ending a whole process subtree, with nothing escaping.

Killing a parent before its children lets the children be re-parented away, out of
reach, unless a subreaper above them is still there to receive them. Killing
children first races with new forks. So a subtree is first *frozen*
(``_sweep.freeze``: SIGSTOP every member found, in rounds, until a read of every
member's children list after all of them stopped finds nothing new), every member
is pinned with a pidfd (no pid-reuse race), and only then is the signal sent, from
the bottom up (SIGTERM is followed by SIGCONT).

A frozen parent cannot reap, so a pid read from its children list cannot be
recycled before we open a pidfd on it.

The parent's ``kill()`` of a child first asks its supervisor to do it, in kill
rounds and in a session of its own (``_supervisor.kill_subtree``,
``_sweep.kill_tree``); this module is what runs in the caller's process.
"""

from __future__ import annotations

import os
import signal

from ._sweep import Member, freeze, send, wait_dead

__all__ = [
    "Member",
    "freeze_subtree",
    "kill_own_descendants",
    "kill_subtree",
    "signal_members",
    "wait_dead",
]


def freeze_subtree(root_pid: int, root_pidfd: int | None) -> list[Member]:
    """Stop ``root_pid`` (unless ``root_pidfd`` is None, meaning "this process") and
    every descendant, parents first. Returns the descendants, parents first; the
    root is not included. The caller owns the returned pidfds.
    """
    if root_pidfd is None:
        return freeze([], (root_pid,))
    return freeze([(root_pid, root_pidfd)])[1:]


def kill_subtree(root_pid: int, root_pidfd: int | None) -> list[Member]:
    """SIGKILL ``root_pid``'s descendants and the root itself (unless
    ``root_pidfd`` is None, meaning "this process"): frozen first, then killed
    bottom-up. Returns the descendants; the caller owns their pidfds.

    Freeze rounds, not the supervisor's kill rounds (``_sweep.kill_tree``): run
    here, in the subtree's own session, the killer gets a thousandth of the CPU
    beside a storm, and kill rounds, which wait for starved members to exit round
    after round, took 2-16 s for a 1,023-storm where freezing took 4-6 s. The
    parent's ``kill()`` hands the work to its supervisor when it can (a session of
    its own: under 1 s); this is the fallback, and a child's own teardown.
    """
    members = freeze_subtree(root_pid, root_pidfd)
    if root_pidfd is None:
        signal_members(members, signal.SIGKILL)
    else:
        signal_members([(root_pid, root_pidfd), *members], signal.SIGKILL)
    return members


def signal_members(members: list[Member], sig: int) -> None:
    """Send ``sig`` to frozen members, children before parents, then let them run."""
    for pid, fd in reversed(members):
        send(fd, sig, pid)
    if sig != signal.SIGKILL:
        for pid, fd in members:
            send(fd, signal.SIGCONT, pid)


def close_members(members: list[Member]) -> None:
    for _, fd in members:
        if fd >= 0:
            os.close(fd)


def kill_own_descendants(timeout: float = 1.0) -> None:
    """SIGKILL every descendant of this process and reap the ones that come back to it.

    Called by a corral child as it exits, and when its parent dies. The process is a
    child subreaper, so every orphan in its subtree has been re-parented to it and is
    found here, including those that called setsid().
    """
    try:
        # One syscall answers the common case: a process with no children at all has
        # no descendants either (a subreaper's orphans become its children).
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return
    members = kill_subtree(os.getpid(), None)
    if not members:
        return
    try:
        wait_dead([fd for _, fd in members], timeout)
        # Every member is dead, so every re-parenting has happened: reap them all.
        while True:
            try:
                if os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG) is None:
                    break
            except ChildProcessError:
                break
    finally:
        close_members(members)
