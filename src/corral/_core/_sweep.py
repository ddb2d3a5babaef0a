"""Stopping and killing whole process subtrees in rounds; run as a script, the supervisor.

Stdlib only, and no package-relative imports: the same file is imported by
``_tree`` (a process ending its own subtree, or a child's on ``kill()``) and run as
``python -I -S _sweep.py`` by ``_supervisor`` (the process that ends a parent's
corral children from outside when that parent dies).

Freezing in rounds (``freeze``):

    SIGSTOP the roots (through pidfds)
    loop:  read /proc/PID/task/*/children of every member (and of the watched
           parents); pin each new pid with a pidfd and SIGSTOP it at once
           nothing new, and every member seen stopped since the last read? done
           else wait (bounded, for all of them together) until each member is
           stopped (T/t) or gone (Z/X), and read again

A process stopped by SIGSTOP cannot fork, and a fork in flight when the signal
arrives completes first (the new child is on the parent's children list before
the parent stops), so a read after everyone is stopped finds everything. Each new
generation costs one round, not one 0.25 s wait per member. A stopped parent
cannot reap, so a pid read from its children list cannot be recycled before its
pidfd is opened.

The supervisor (``main``), for one parent process:

    parent (corral) ── SOCK_SEQPACKET, fd 0 here ──► supervisor
       one message per started child: its pid, its pidfd (SCM_RIGHTS)
       EOF: the parent is dead, however it died
       a kill request: a pid and KILL (or KILR), its pidfd and a "done" socket's end
         (acknowledged at once on "done")
    epoll: fd 0 (registrations, EOF) + each child's pidfd (exited: forget it)
    a kill request: that child's subtree in kill rounds (``kill_tree``; a child
       that has exited already is skipped); for KILR, the members' pids and
       pidfds back on "done" (a subreaper parent reaps them); then "done" closed
    on EOF, or a SIGKILL seen pending on the parent (looked for every KILL_POLL
       while children are registered): every live registered child's subtree in
       kill rounds, wait, exit
"""

from __future__ import annotations

# The C halves of signal and socket: their Python wrappers import enum, which costs
# the supervisor a few ms of CPU at every parent's first start.
import _signal  # type: ignore[import-not-found]
import _socket
import errno
import os
import select
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "Member",
    "children_of",
    "freeze",
    "kill_all",
    "kill_pending",
    "kill_tree",
    "proc_state",
    "read_small",
    "wait_dead",
]

Member = tuple[int, int]  # (pid, pidfd)

# How long one freeze waits, in all, for its members to stop after SIGSTOP, and
# one kill round for its SIGKILLed members to exit (their children are re-parented
# to a root only then). A SIGSTOP takes effect when its target next runs, which
# beside a fork storm under load is seconds; a member still running may fork after
# its children were read, and one still exiting hands its children to the root only
# once gone: were the walk to end before, they would be missed, and re-parented
# above the root once it is killed (at 0.5 s, a storm's lasting members outlived
# a kill() that way, beside a load in the hundreds). A member that neither stops
# nor exits within it (stuck in uninterruptible sleep) is given up on, at the cost
# of missing a child it forks in that instant: so a kill() waits at most this long.
STOP_WAIT = 10.0

# How long the supervisor waits for the SIGKILLed members to be gone before it
# exits (they go in microseconds, unless stuck in the kernel).
KILL_WAIT = 1.0
# After handling what woke it, the supervisor sleeps this long before it looks
# again, so that a parent starting children in a burst wakes it (a context switch
# paid inside the parent's sendmsg) once per interval rather than once per start.
# It is also how much later the supervisor may see the parent's death.
BATCH_DELAY = 0.05
# While children are registered, the supervisor also looks this often for a
# SIGKILL pending on the parent. A SIGKILLed process exits (closing our socket's
# other end) only once the scheduler runs it, and a fork storm in its session
# shares its CPU share (autogroup) with it: that took from 3 ms to, once, 27 s
# here, while the storm went on. Shorter finds such a parent sooner; each look
# costs a wake-up and one read of a /proc file (about 20 us), and only while
# children are registered.
KILL_POLL = 0.2

_STOPPED_OR_GONE = frozenset({"T", "t", "Z", "X", "x", None})
_SIGSTOP: int = _signal.SIGSTOP
_SIGKILL: int = _signal.SIGKILL
_SIGKILL_BIT = 1 << (_SIGKILL - 1)  # (in /proc/PID/status's hex signal masks)


def read_small(path: str) -> bytes | None:
    """Read a small /proc file with raw syscalls (no io objects: this runs in every
    child as it exits, where each extra object touched costs copy-on-write faults).
    None if the file is gone.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except ProcessLookupError:
        return None
    finally:
        os.close(fd)


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, from every one of its threads.

    A child belongs to the *thread* that forked it, so each task's list is read.
    Returns an empty list if the process is gone.
    """
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return out
    for tid in tids:
        data = read_small(f"/proc/{pid}/task/{tid}/children")
        if data:
            out.extend(map(int, data.split()))
    return out


def proc_state(pid: int) -> str | None:
    """The one-letter scheduler state of ``pid`` (R, S, D, T, t, Z, X...), or None if gone."""
    data = read_small(f"/proc/{pid}/stat")
    if data is None:
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    end = data.rindex(b")")
    return data[end + 2 : end + 3].decode()


def _open(pid: int) -> int | None:
    """A pidfd on ``pid``; None if it is gone; -1 if we are out of fds (then it is
    signalled by pid: its parent is a stopped member, which cannot reap it, so the
    pid cannot be recycled meanwhile)."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return -1
        raise


def send(pidfd: int, sig: int, pid: int = 0) -> None:
    """``sig`` to the process behind ``pidfd`` (or to ``pid`` if there is no pidfd);
    nothing if it is already gone."""
    try:
        if pidfd >= 0:
            _signal.pidfd_send_signal(pidfd, sig)
        elif pid > 0:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _main_thread_children(pid: int) -> list[int]:
    """Children forked by ``pid``'s main thread: one read, for the first round."""
    data = read_small(f"/proc/{pid}/task/{pid}/children")
    return list(map(int, data.split())) if data else []


def _wait_stopped(members: list[Member], stopped: set[int], deadline: float) -> None:
    """Until every member is stopped or gone (added to ``stopped``), or ``deadline``."""
    pending = [pid for pid, _ in members if pid not in stopped]
    delay = 0.0
    while True:
        still = []
        for pid in pending:
            if proc_state(pid) in _STOPPED_OR_GONE:
                stopped.add(pid)
            else:
                still.append(pid)
        pending = still
        if not pending or time.monotonic() >= deadline:
            return
        time.sleep(delay)
        delay = min(0.002, delay + 0.0002)


def freeze(roots: list[Member], parents: tuple[int, ...] = ()) -> list[Member]:
    """SIGSTOP ``roots`` and every descendant of them and of ``parents`` (pids that
    are not stopped themselves: this process, say), in rounds until nothing new
    appears. Returns every member, parents before children (roots first); the
    caller owns the pidfds of the members that were not roots.

    The first round reads only main threads' children lists (one read each), to
    stop a storm as fast as it can; each later round, after every member is seen
    stopped, reads every thread's list, and the last finds nothing new. A member
    already stopped when its lists were read is final (it cannot fork) and is not
    read again; the roots and ``parents`` are, every round: they are subreapers,
    which may yet receive orphans of a descendant dying on its own meanwhile.
    """
    members: list[Member] = []
    seen = set(parents)
    for pid, fd in roots:
        if pid not in seen:
            seen.add(pid)
            members.append((pid, fd))
            send(fd, _SIGSTOP)
    deadline = time.monotonic() + STOP_WAIT
    stopped: set[int] = set()
    final: set[int] = set()
    rounds = _Rounds(members, parents, seen, len(members))
    rounds.read(_main_thread_children, stopped, final)
    while True:
        _wait_stopped(members, stopped, deadline)
        if not rounds.read(children_of, stopped, final):
            return members


class _Rounds:
    """The members found so far, and one read of their children lists at a time."""

    def __init__(
        self, members: list[Member], parents: tuple[int, ...], seen: set[int], n_roots: int
    ) -> None:
        self.members, self.parents, self.seen, self.n_roots = members, parents, seen, n_roots

    def read(self, read: Callable[[int], list[int]], stopped: set[int], final: set[int]) -> bool:
        """Read the children of every member not yet final (and of the parents); new
        ones are pinned, stopped, appended, and read in the same round. True if any
        was new. A member seen stopped before its read becomes final."""
        members, seen = self.members, self.seen
        new = False
        for parent in self.parents:
            new = _adopt(read(parent), members, seen) or new
        i = 0
        while i < len(members):  # grows as we go: a new member's children are read too
            pid = members[i][0]
            if pid not in final:
                was_stopped = pid in stopped
                new = _adopt(read(pid), members, seen) or new
                if was_stopped and i >= self.n_roots and read is children_of:
                    final.add(pid)
            i += 1
        return new


def _adopt(children: list[int], members: list[Member], seen: set[int]) -> bool:
    """Pin and SIGSTOP each of ``children`` not seen yet. True if any was new."""
    new = False
    for child in children:
        if _pin(child, _SIGSTOP, members, seen) is not None:
            new = True
    return new


def _pin(pid: int, sig: int, members: list[Member], seen: set[int]) -> int | None:
    """Pin ``pid`` with a pidfd, send it ``sig`` (through the pidfd) and record it
    as a member, unless it is seen already or gone (None). Returns its pidfd, or -1
    if there is none (the fd table full: see ``_open``).

    The one step of both walks, freeze rounds (SIGSTOP) and kill rounds (SIGKILL).
    ``pid`` has just been read from a member's children list; why it cannot have
    been recycled since is the rounds' argument (see ``freeze`` and ``kill_tree``).
    No syscall but the open and the signal: it runs once per member of a storm.
    """
    if pid in seen:
        return None
    fd = _open(pid)
    if fd is None:
        return None
    seen.add(pid)
    send(fd, sig, pid)
    members.append((pid, fd))
    return fd


def kill_tree(roots: list[Member]) -> list[Member]:
    """SIGKILL every descendant of ``roots``, then the roots; no member is stopped
    first. Returns the members found (roots first); the caller owns the pidfds of
    the others.

    For roots that are child subreapers (every corral child is, and the roots are
    corral children: a dead parent's registered ones, or the child of a kill
    request): a killed member's children, and their zombies, are re-parented to the
    nearest subreaper above them, which is a root, where the next read of its
    children lists finds them. Each round:

        read the roots' children lists; SIGKILL each new pid through a pidfd, then
        read its own lists (killed, it can neither fork nor reap) and go down
        nothing new? wait until every killed member has exited (its children are
        re-parented by then), read once more; still nothing: done

    A process with SIGKILL pending cannot complete a fork (the kernel refuses it
    with the signal pending), so each member is found and signalled once, and the
    kernel's exit work for the first members runs while the rest are found: no
    round waits for a storm's members to be scheduled and stop, as freezing does.
    The roots are sent SIGSTOP first and killed last; the last read waits until they
    have stopped (a running root could fork after it). The reads before it may see
    a root reap a child (the pid is then not recycled before its pidfd is opened,
    microseconds later: pids go round all of ``pid_max`` first).
    """
    members: list[Member] = []
    seen: set[int] = set()
    # A root that has exited is skipped: what it left was re-parented above it, and
    # its pid, once reaped, may name another process (a kill request the parent
    # gave up on while we were paused, say).
    exited = _exited([fd for _, fd in roots])
    for pid, fd in roots:
        if pid not in seen and fd not in exited:
            seen.add(pid)
            members.append((pid, fd))
            send(fd, _SIGSTOP)
    live_roots = list(members)
    stop_deadline = time.monotonic() + STOP_WAIT
    killed: list[int] = []
    settled = False
    while True:
        found = len(members)
        for top, _ in live_roots:
            _kill_down(children_of(top), members, seen, killed)
        if len(members) > found:
            settled = False
            continue
        if settled:
            break
        # (Re-read between waits: a member's exit re-parents its children to a
        # root, where the next read finds them.)
        if not wait_dead(killed, KILL_WAIT) and time.monotonic() < stop_deadline:
            gone = _exited(killed)
            killed = [fd for fd in killed if fd not in gone]
            continue
        killed = []
        # The reads so far did not need the roots stopped (a root that forked
        # meanwhile shows its child at the next read); the last one does. In a
        # storm a root may wait long for its turn on the CPU, so it is waited for
        # only here, after the walk, which gave it that time.
        _wait_stopped(live_roots, set(), stop_deadline)
        settled = True
    kill_all(live_roots)
    return members


def _exited(pidfds: list[int]) -> set[int]:
    """Those of ``pidfds`` whose process has exited (readable), in one poll."""
    poller = select.poll()
    for fd in pidfds:
        if fd >= 0:
            poller.register(fd, select.POLLIN)
    return {fd for fd, _ in poller.poll(0)}


def _kill_down(pids: list[int], members: list[Member], seen: set[int], killed: list[int]) -> None:
    """SIGKILL each pid not seen yet and, in turn, each of its descendants."""
    todo = pids
    while todo:
        pid = todo.pop()
        fd = _pin(pid, _SIGKILL, members, seen)
        if fd is None:
            continue
        if fd >= 0:
            killed.append(fd)
        todo.extend(children_of(pid))


def wait_dead(pidfds: list[int], timeout: float) -> bool:
    """Wait until every pidfd reports its process has exited. True if all did."""
    deadline = time.monotonic() + timeout
    remaining = {fd for fd in pidfds if fd >= 0}
    if not remaining:
        return True
    # epoll, registered once: thousands of members exit a few at a time, and a
    # poll() rebuilt at each wake-up would cost time quadratic in their number.
    with select.epoll() as ep:
        for fd in remaining:
            ep.register(fd, select.EPOLLIN)
        while remaining:  # (polls at least once: a timeout of 0 asks "all gone now?")
            left = max(0.0, deadline - time.monotonic())
            for fd, _ in ep.poll(left, maxevents=len(remaining)):
                if fd in remaining:
                    remaining.discard(fd)
                    ep.unregister(fd)
            if remaining and left == 0:
                return False
    return True


def kill_all(members: list[Member]) -> None:
    """SIGKILL frozen members, children before parents."""
    for pid, fd in reversed(members):
        send(fd, _SIGKILL, pid)


# -- the supervisor -----------------------------------------------------------------

# The messages: a registration is a pid (4 bytes) with its pidfd attached; a kill
# request is a pid and KILL (8 bytes) with its pidfd and the write end of a "done"
# socket attached, which is closed once the subtree is gone. KILR asks for the
# subtree's members first: messages of pids (4 bytes each, little-endian) with their
# pidfds attached, at most GIVE_BACK_BATCH a message (the kernel takes 253 fds at most).
KILL = b"KILL"
KILL_RETURN = b"KILR"
GIVE_BACK_BATCH = 250
# The first message on "done", sent as soon as a request is read: a supervisor
# that does not send it within the parent's ACK_WAIT (``_supervisor``) is taken
# for paused, and the parent kills the subtree itself.
ACK = b"!"
# How long the supervisor waits for room on "done" before each message of members.
GIVE_BACK_WAIT = 0.2

_MESSAGE = 8


def received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds passed (SCM_RIGHTS) in ``ancillary``, as ``recvmsg`` returned it."""
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += [
                int.from_bytes(payload[k : k + 4], sys.byteorder)
                for k in range(0, len(payload) - len(payload) % 4, 4)
            ]
    return fds


def _receive(sock: _socket.socket, pinned: dict[int, int], poller: select.epoll) -> bool:
    """Take every message waiting on ``sock``. False at EOF (the parent died)."""
    space = _socket.CMSG_SPACE(8)
    while True:
        try:
            data, ancillary, _flags, _addr = sock.recvmsg(_MESSAGE, space, _socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except InterruptedError:
            continue
        if not data:
            return False
        fds = received_fds(ancillary)
        pid = int.from_bytes(data[:4], "little")
        if data[4:] in (KILL, KILL_RETURN) and len(fds) == 2:
            _kill_request(pid, fds[0], fds[1], give_back=data[4:] == KILL_RETURN)
            continue
        for fd in fds:
            pinned[fd] = pid
            poller.register(fd, select.EPOLLIN)


def _kill_request(pid: int, pidfd: int, done: int, give_back: bool = False) -> None:
    """The parent's ``kill()`` of a child, done here, in a session (and so a CPU
    share) of our own: a storm in the parent's session starves the parent, not us.
    ``done`` is closed once the subtree is gone (or after KILL_WAIT); if
    ``give_back``, the members (but the child) are sent back on it first."""
    members: list[Member] = []
    try:
        try:  # noqa: SIM105 (contextlib costs the supervisor's start an import)
            os.write(done, ACK)  # the parent waits for this only ACK_WAIT
        except OSError:  # (EPIPE: a parent past that wait; it kills the subtree too)
            pass
        members = kill_tree([(pid, pidfd)])
        wait_dead([fd for _, fd in members], KILL_WAIT)
        if give_back:
            _give_back([m for m in members if m[1] >= 0 and m[1] != pidfd], done)
    except OSError:  # (out of fds, say: the parent sees ``done`` close and checks)
        pass
    finally:
        if all(fd != pidfd for _, fd in members):  # (the child had exited: skipped)
            os.close(pidfd)
        for _, fd in members:
            if fd >= 0:
                os.close(fd)
        os.close(done)


def _give_back(members: list[Member], done: int) -> None:
    """Send ``members`` on ``done``, a batch a message, waiting at most
    GIVE_BACK_WAIT for room each time (the queue holds ``net.unix.max_dgram_qlen``
    messages, 10 by default: a storm of thousands, read as it comes). A parent that
    stopped reading (paused, or past its wait) gets what fitted: past its wait, it
    kills and reaps by its own walk; otherwise it reaps the members it got, and the
    rest stay zombies under it until it exits."""
    sock = _socket.socket(fileno=os.dup(done))
    room = select.poll()
    room.register(sock.fileno(), select.POLLOUT)
    try:
        for k in range(0, len(members), GIVE_BACK_BATCH):
            batch = members[k : k + GIVE_BACK_BATCH]
            pids = b"".join(p.to_bytes(4, "little") for p, _ in batch)
            fds = b"".join(fd.to_bytes(4, sys.byteorder) for _, fd in batch)
            message = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)]
            try:
                sock.sendmsg([pids], message, _socket.MSG_DONTWAIT)
            except BlockingIOError:
                if not room.poll(GIVE_BACK_WAIT * 1000):
                    return
                sock.sendmsg([pids], message, _socket.MSG_DONTWAIT)
    finally:
        sock.close()


def kill_pending(pid: int) -> bool:
    """Whether ``pid`` has been sent a SIGKILL: it is dying, whenever it next runs.

    A SIGKILL is queued on each thread until the thread takes it (the first thing
    it does when it runs again), and in the process-wide set (ShdPnd) until the
    process is reaped: so this also answers True for a process already exiting."""
    data = read_small(f"/proc/{pid}/status")
    if data is None:
        return False
    for line in data.split(b"\n"):
        if line.startswith((b"ShdPnd:", b"SigPnd:")) and int(line.split()[1], 16) & _SIGKILL_BIT:
            return True
    return False


def _parent_killed(parent: int) -> bool:
    """Whether our parent (the pid that started us) has a SIGKILL pending. Checked
    against our parent pid after the read: a parent that had exited since has
    re-parented us, and its pid may since name another process."""
    return kill_pending(parent) and os.getppid() == parent


def _sweep(pinned: dict[int, int]) -> None:
    """The parent died: end every registered child's whole subtree."""
    members = kill_tree([(pid, fd) for fd, pid in pinned.items()])
    wait_dead([fd for _, fd in members], KILL_WAIT)


def _raise_fd_limit() -> None:
    # One pidfd per member: a storm of thousands must not run out at the soft limit.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    """Run as the supervisor: fd 0 is our end of the parent's registration socket."""
    # Keep nothing of the parent's but the socket and stderr: another process's pipe
    # end held here would delay its EOF.
    os.closerange(3, 1 << 20)
    _raise_fd_limit()
    sock = _socket.socket(fileno=0)
    sock.setblocking(False)
    pinned: dict[int, int] = {}  # pidfd -> pid of each registered child still running
    poller = select.epoll()
    poller.register(0, select.EPOLLIN)
    parent = os.getppid()  # (1 if the parent is gone already: then the EOF is here)
    next_look = 0.0  # when to look for a SIGKILL pending on the parent next
    while True:
        looking = bool(pinned) and parent > 1
        events = poller.poll(max(0.0, next_look - time.monotonic()) if looking else -1)
        if looking and time.monotonic() >= next_look:
            if _parent_killed(parent):
                _receive(sock, pinned, poller)  # (registrations sent before the kill)
                _sweep(pinned)
                os._exit(0)
            next_look = time.monotonic() + KILL_POLL
        for fd, _events in events:
            if fd == 0:
                if not _receive(sock, pinned, poller):
                    _sweep(pinned)
                    os._exit(0)
            elif fd in pinned:  # that child exited: nothing of it is ours to watch
                poller.unregister(fd)
                os.close(fd)
                del pinned[fd]
        if events:
            time.sleep(BATCH_DELAY)


if __name__ == "__main__":
    main()
