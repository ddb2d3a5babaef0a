"""corral's private core: the hard, low-level Linux work.

Nothing here knows about Process, Queue, Lock or Pool, or imports anything from
``corral`` outside ``_core``. The public objects are thin layers over these modules:

- ``_errors``:     the core's exceptions (the layer above translates the internal ones).
- ``_linux``:      libc through ctypes, prctl, the /proc helpers, and the one liveness
                   check (pid + start time).
- ``_native``:     the optional C extension ``_speedups`` (built from ``_speedups.c``),
                   or None.
- ``_forkstate``:  what an ``os.fork()`` child lets go of: the fds only the forking
                   process may hold (at once, first thing), the rest on first use.
- ``_shm``:        anonymous shared memory (memfd + mmap).
- ``_arena``:      many small objects (locks, values) in one memfd: one fd per arena.
- ``_started``:    the children started and not yet collected, by start number (what
                   the arena's freeing waits for), without loading the arena.
- ``_fdpass``:     handing a file descriptor to a child at start, under every start method.
- ``_futex``:      futex wait/wake on words in shared memory.
- ``_robust``:     robust process-shared glibc mutexes, and the one spin policy.
- ``_monitor``:    a robust monitor: state in one page, futex waiting, per-process
                   slots that survive SIGKILL (the sync primitives build on it).
- ``_ringlayout``: the shared ring's layout and rules (frame size, fits at tail),
                   checked against the C extension's constants.
- ``_ringbase``, ``_ringgrow``, ``_ringsingle``, ``_ringbatch``, ``_ring``: the
                   ring of byte messages in shared memory: base and repair, growing
                   on demand, single put/get, batches, the whole (the queues build
                   on it).
- ``_later``:      bookkeeping owed to shared state whose mutex a caller could not get
                   before its deadline (a paused peer held it), done in the background.
- ``_sweep``:      stdlib only: freezing a set of subtrees in rounds and killing them;
                   run as a script, the supervisor.
- ``_tree``:       freezing and killing a whole process subtree, bottom to top (on ``_sweep``).
- ``_supervisor``: per parent, the process that ends its children's subtrees from
                   outside when the parent dies (exec, closed fds, blocked signals, stopped).
- ``_lifeline``:   the pipe whose end tells a child that the process that started it is gone.
- ``_reaper``:     the thread that reaps corral's own children through pidfds, and only them.
- ``_popen``:      the launchers that wire all of the above into a child: the base,
                   and fork's.
- ``_popen_exec``: spawn's and forkserver's launchers (loaded on first use).
- ``_launch``:     which launcher, by start method.
- ``_bootstrap``:  what runs first and last inside every corral child.

The C extension's ``LockBase`` is generic too: a fast acquire/release of a robust
mutex that hands everything else to two methods its Python subclass provides
(``_acquire_fallback`` and ``_not_owner``); ``corral.Lock`` is one such subclass.
"""
