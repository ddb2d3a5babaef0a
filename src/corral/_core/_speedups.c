/* corral._core._speedups: the common cases of the ring's put and get (Ops), and a
 * generic fast acquire/release of a robust mutex (LockBase), in C.
 *
 * Optional. corral works without it (the pure-Python paths in _ring.py and
 * _sync_lock.py are the reference); when it is built, a single put or get of a
 * small message costs one C call instead of about twenty Python operations, and an
 * uncontended lock one C call instead of a Python call plus a ctypes call.
 *
 * The start of a process (child_setup, has_children, send_pidfd, near the end): the
 * syscalls a fork child and its parent make around the fork, made without touching
 * interpreter objects, each of which would cost a copy-on-write page fault there
 * (docs/design.md, "Start latency, second pass"). _bootstrap.py, _lifeline.py and
 * _supervisor.py keep the same steps in Python.
 *
 * The queues (Ops, below):
 *
 * It speaks exactly the protocol of _ring.py, on the same robust mutex, and does
 * only the plain case: the mutex is free (a few trylocks), the frame fits before
 * the retained pages end, the queue is not shut down, no claim and no
 * reservation (a large put copying in at tail), no out-of-band buffers.
 * Anything else returns SLOW with nothing done and the mutex free, and the
 * Python path starts again from the beginning. Read _ring.py's docstring and
 * docs/design.md ("Queues") first.
 *
 * The data area grows (_ringgrow.py), and only Python grows it or maps it anew.
 * Every call compares the header's ``geo`` with the size it was given (under the
 * mutex) and answers SLOW when they differ: Python then maps the new area and
 * hands it over (remap()).
 *
 * Memory ordering. All shared words are read and written under the mutex; the
 * mutex orders them for the next holder. What the mutex does not cover is a holder
 * SIGKILLed half way: the next holder (after EOWNERDEAD) sees the stores the dead
 * one made, in program order (the robust-futex hand-over goes through the kernel),
 * so program order is what matters. The frame is written first, then ``tail`` is
 * published with a release store, so the compiler cannot move the frame's stores
 * after it; ``head`` likewise. Lock-free readers (the getters' poll of ``count``)
 * use relaxed atomic loads: they are hints, re-checked under the mutex.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Header layout and frame format: the same constants as _ringlayout.py. The module
 * exports every one of them (LAYOUT, below) and _ringlayout.py checks each, field
 * by field, at import. */
#define OFF_HEAD ((Py_ssize_t)sizeof(pthread_mutex_t))
#define OFF_TAIL (OFF_HEAD + 8)
#define OFF_COUNT (OFF_HEAD + 16)
#define OFF_TAKEN 72
#define OFF_GETTERS 80
#define OFF_PUTTERS 84
#define OFF_JOINERS 88
#define OFF_SHUT 92
#define OFF_CLAIM 96
#define OFF_RESERVE 100
#define OFF_GEO 104 /* u64 the data area's size, | STALE while count must be recounted */
#define STALE 1
#define OFF_PUT_SEQ 128
#define OFF_GET_SEQ 192
#define OFF_DONE_SEQ 256
#define FRAME_HEADER 16
#define ALIGN 16
#define PAD 0xFFFFFFFFu
#define WAKE_ALL 0x7FFFFFFF

/* Return codes of put() (and of get() when it returns no bytes). */
#define R_DONE 0
#define R_SLOW 1  /* nothing done, mutex free: take the Python path */
#define R_SWEEP 2 /* done; wake-ups keep finding nobody: sweep dead waiters */
#define R_EMPTY 3 /* get: empty (not shut down), mutex free */

/* The one spin policy of corral's mutexes (the ring's and corral.Lock's, here and
 * in _robust.py's spin_trylock): while the mutex is busy, look at its lock word
 * (with a CPU pause) and try again only when it shows no owner, at most SPIN
 * times; then give up on the fast path, which goes to sleep in the kernel. See
 * trylock_spin() for why it reads the word rather than retrying the trylock, and
 * _robust.py's SPIN for the trade-off of the count (_ringlayout.py checks that the
 * two agree). */
#define SPIN 64
/* Looks at ``count`` (yielding the CPU between them) by a get that found the ring
 * empty, before it returns R_EMPTY. */
#define POLL_ROUNDS 20
/* Zero-result wake-ups (a counted waiter that nobody could wake) before R_SWEEP. */
#define ZERO_WAKES_MAX 64

static int enabled = 1;

typedef struct {
    PyObject_HEAD
    char *base;        /* the header */
    char *data;        /* the data area (in a mapping of its own once it grew) */
    uint64_t cap;      /* its size: geo, as this process last mapped it */
    uint64_t room;     /* min(cap, the ring's capacity) */
    uint64_t origin;   /* the offset of position p is (p + cap - origin) % cap */
    uint64_t retain;
    uint64_t maxsize;
    int joinable;
    unsigned zero_wakes;
} Ops;

#define U64(o, off) ((uint64_t *)((o)->base + (off)))
/* The offset in the data area of position ``pos`` (origin < cap: no underflow). */
#define OFFSET(o, pos) (((pos) + (o)->cap - (o)->origin) % (o)->cap)
#define U32(o, off) ((uint32_t *)((o)->base + (off)))

static inline uint64_t load64(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline uint32_t load32(uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void store64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void publish64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void store32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

static long futex_wake(uint32_t *addr, int n) {
    return syscall(SYS_futex, addr, FUTEX_WAKE, n, NULL, NULL, 0);
}

/* The owner's TID in the lock word of a glibc mutex (the first int); the rest
 * are the FUTEX_WAITERS and FUTEX_OWNER_DIED bits. */
#define FUTEX_TID_MASK 0x3fffffff

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static void repair(Ops *o);

/* trylock; while busy, watch the lock word and try again only when it shows no
 * owner (the SPIN policy above). Reading leaves the cache line shared, so the
 * holder's unlock and the next trylock are not slowed by a stream of failing
 * compare-and-swaps from the waiter (measured here: that stream cut hand-offs
 * between two busy processes to a fifth). Returns 0 or the last trylock's error. */
static int trylock_spin(pthread_mutex_t *m) {
    int rc = pthread_mutex_trylock(m);
    int *word = (int *)m;
    for (int i = 0; rc == EBUSY && i < SPIN; i++) {
        cpu_relax();
        if ((__atomic_load_n(word, __ATOMIC_RELAXED) & FUTEX_TID_MASK) == 0)
            rc = pthread_mutex_trylock(m);
    }
    return rc;
}

/* Take the ring's mutex: 0, or R_SLOW (busy, or an error for Python to report)
 * with the mutex not held. After a holder's death (EOWNERDEAD) the ring is
 * repaired here, before this call returns: no Python code runs between the death
 * being seen and the repair, so nothing (a KeyboardInterrupt, say) can leave the
 * mutex held and unrepaired. */
static int lock(Ops *o) {
    pthread_mutex_t *m = (pthread_mutex_t *)o->base;
    int rc = trylock_spin(m);
    if (rc == EOWNERDEAD) {
        /* Ours now. consistent() fails only on a mutex that is not robust or not
         * ours: never here. */
        pthread_mutex_consistent(m);
        repair(o);
        return 0;
    }
    return rc == 0 ? 0 : R_SLOW;
}

static inline void unlock(Ops *o) { pthread_mutex_unlock((pthread_mutex_t *)o->base); }

/* After letting the mutex go: wake ``n`` sleepers on the futex at ``off``. Returns
 * R_SWEEP when wake-ups have found nobody too often. */
/* Bytes a message of ``n`` bytes without out-of-band buffers takes in the ring:
 * _ringlayout.frame_size(n). */
static inline uint64_t frame_size(uint64_t n) {
    return (FRAME_HEADER + ALIGN - 1 + n) & ~(uint64_t)(ALIGN - 1);
}

static int wake(Ops *o, Py_ssize_t off, int n) {
    if (futex_wake(U32(o, off), n) == 0) {
        if (++o->zero_wakes >= ZERO_WAKES_MAX) {
            o->zero_wakes = 0;
            return R_SWEEP;
        }
    }
    return R_DONE;
}

static void bump(Ops *o, Py_ssize_t off) {
    uint32_t *p = U32(o, off);
    store32(p, load32(p) + 1);
}

/* With the mutex held, after its holder died holding it: Ring._repair of _ring.py.
 * ``head`` and ``tail`` are the truth; ``count`` is recomputed by walking the
 * frames between them. What Ring._repair also does is left to be done when met:
 * a dead getter's claim (Ring._items), a dead putter's reservation (Ring._room)
 * and dead waiters (the zero-wake sweep). Everyone is woken, as a wake-up meant
 * for the dead holder may be lost. If the data area is not the one this process
 * mapped (it grew), the frames cannot be walked here: ``geo`` is marked STALE,
 * which sends every C call to Python, whose next holder recounts (Ring._sync). */
static void repair(Ops *o) {
    static const Py_ssize_t seqs[] = {OFF_PUT_SEQ, OFF_GET_SEQ, OFF_DONE_SEQ};
    uint64_t geo = load64(U64(o, OFF_GEO));
    if (geo != o->cap) {
        store64(U64(o, OFF_GEO), geo | STALE);
        for (int i = 0; i < 3; i++) {
            bump(o, seqs[i]);
            futex_wake(U32(o, seqs[i]), WAKE_ALL);
        }
        return;
    }
    uint64_t head = load64(U64(o, OFF_HEAD)), tail = load64(U64(o, OFF_TAIL));
    if (head > tail) { /* died between the two stores of a lap jump */
        publish64(U64(o, OFF_TAIL), head);
        tail = head;
    }
    uint64_t count = 0, pos = head;
    while (pos < tail) {
        uint64_t off = OFFSET(o, pos);
        char *frame = o->data + off;
        uint64_t flen = ((uint64_t *)frame)[0];
        if (flen == 0 || flen % ALIGN || off + flen > o->cap || pos + flen > tail) {
            /* Cannot happen if the protocol holds; never loop or read wild. */
            publish64(U64(o, OFF_HEAD), tail);
            count = 0;
            break;
        }
        if (((uint32_t *)frame)[3] != PAD) count++;
        pos += flen;
    }
    store64(U64(o, OFF_COUNT), count);
    for (int i = 0; i < 3; i++) {
        bump(o, seqs[i]);
        futex_wake(U32(o, seqs[i]), WAKE_ALL);
    }
}

/* The data area at address ``data``: ``cap`` bytes, ``room`` of them usable,
 * ``origin`` at offset 0, ``retain`` kept. */
static int set_geometry(Ops *self, unsigned long long data, unsigned long long cap,
                        unsigned long long room, unsigned long long origin,
                        unsigned long long retain) {
    if (cap == 0 || cap & STALE || retain > cap || room > cap || origin >= cap) {
        PyErr_SetString(PyExc_ValueError, "bad ring geometry");
        return -1;
    }
    self->data = (char *)(uintptr_t)data;
    self->cap = cap;
    self->room = room;
    self->origin = origin;
    self->retain = retain;
    return 0;
}

static int Ops_init(Ops *self, PyObject *args, PyObject *Py_UNUSED(kwds)) {
    unsigned long long base, data, cap, room, origin, retain, maxsize;
    int joinable;
    if (!PyArg_ParseTuple(args, "KKKKKKKp", &base, &data, &cap, &room, &origin, &retain,
                          &maxsize, &joinable))
        return -1;
    if (set_geometry(self, data, cap, room, origin, retain) < 0) return -1;
    self->base = (char *)(uintptr_t)base;
    self->maxsize = maxsize;
    self->joinable = joinable;
    self->zero_wakes = 0;
    return 0;
}

/* The state a put needs between taking the mutex and letting it go. */
typedef struct {
    uint64_t tail, count;
    uint32_t gw;
} PutState;

/* Take the mutex and check that ``total`` bytes of ``k`` new frames fit at ``tail``
 * with nothing unusual about the ring: 0 (mutex held, ``st`` filled), or an R_*
 * code with the mutex let go. */
static int put_begin(Ops *o, uint64_t total, uint64_t k, PutState *st) {
    int rc = lock(o);
    if (rc) return rc;
    uint64_t head = load64(U64(o, OFF_HEAD));
    st->tail = load64(U64(o, OFF_TAIL));
    st->count = load64(U64(o, OFF_COUNT));
    st->gw = load32(U32(o, OFF_GETTERS));
    uint64_t off = OFFSET(o, st->tail);
    if (load64(U64(o, OFF_GEO)) != o->cap || load32(U32(o, OFF_SHUT)) ||
        load32(U32(o, OFF_RESERVE)) || off + total > o->retain ||
        st->tail + total - head > o->room || (o->maxsize && st->count + k > o->maxsize)) {
        unlock(o);
        return R_SLOW;
    }
    return 0;
}

/* Write one frame (no out-of-band buffers) for ``b``; return where the next goes. */
static char *write_frame(char *frame, PyObject *b) {
    uint64_t n = (uint64_t)PyBytes_GET_SIZE(b);
    uint64_t size = frame_size(n);
    ((uint64_t *)frame)[0] = size;
    ((uint32_t *)frame)[2] = (uint32_t)n;
    ((uint32_t *)frame)[3] = 0;
    memcpy(frame + FRAME_HEADER, PyBytes_AS_STRING(b), n);
    return frame + size;
}

/* Publish the ``k`` frames written past ``tail`` (one release store), let the
 * mutex go, wake getters if any wait: R_DONE or R_SWEEP. */
static PyObject *put_finish(Ops *o, PutState *st, uint64_t total, uint64_t k) {
    publish64(U64(o, OFF_TAIL), st->tail + total);
    store64(U64(o, OFF_COUNT), st->count + k);
    if (st->gw) bump(o, OFF_PUT_SEQ);
    unlock(o);
    int rc = R_DONE;
    if (st->gw) rc = wake(o, OFF_PUT_SEQ, k > WAKE_ALL ? WAKE_ALL : (int)k);
    return PyLong_FromLong(rc);
}

/* put(data: bytes) -> int. A frame without out-of-band buffers. */
static PyObject *Ops_put(Ops *o, PyObject *arg) {
    if (!enabled || o->base == NULL || !PyBytes_CheckExact(arg)) return PyLong_FromLong(R_SLOW);
    uint64_t n = (uint64_t)PyBytes_GET_SIZE(arg);
    uint64_t size = frame_size(n);
    if (size > o->room || n > UINT32_MAX) return PyLong_FromLong(R_SLOW);
    PutState st;
    int rc = put_begin(o, size, 1, &st);
    if (rc) return PyLong_FromLong(rc);
    write_frame(o->data + OFFSET(o, st.tail), arg);
    return put_finish(o, &st, size, 1);
}

/* put_many(messages: list[bytes]) -> int. All of them, published by one store, or
 * nothing (R_SLOW: the Python path, which waits for room, goes message by message
 * and reports partial progress). */
static PyObject *Ops_put_many(Ops *o, PyObject *arg) {
    if (!enabled || o->base == NULL || !PyList_CheckExact(arg)) return PyLong_FromLong(R_SLOW);
    Py_ssize_t k = PyList_GET_SIZE(arg);
    uint64_t total = 0;
    for (Py_ssize_t j = 0; j < k; j++) {
        PyObject *b = PyList_GET_ITEM(arg, j);
        if (!PyBytes_CheckExact(b) || (uint64_t)PyBytes_GET_SIZE(b) > UINT32_MAX)
            return PyLong_FromLong(R_SLOW);
        total += frame_size((uint64_t)PyBytes_GET_SIZE(b));
    }
    if (k == 0 || total > o->room) return PyLong_FromLong(R_SLOW);
    PutState st;
    int rc = put_begin(o, total, (uint64_t)k, &st);
    if (rc) return PyLong_FromLong(rc);
    /* The list cannot change meanwhile: no Python code runs until we return. */
    char *frame = o->data + OFFSET(o, st.tail);
    for (Py_ssize_t j = 0; j < k; j++) frame = write_frame(frame, PyList_GET_ITEM(arg, j));
    return put_finish(o, &st, total, (uint64_t)k);
}

/* Whether ``count`` turned non-zero within a few looks (GIL let go meanwhile). */
static int poll_count(Ops *o) {
    int seen = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < POLL_ROUNDS && !seen; i++) {
        sched_yield();
        seen = load64(U64(o, OFF_COUNT)) != 0;
    }
    Py_END_ALLOW_THREADS
    return seen;
}

/* The state a get needs between taking the mutex and letting it go. */
typedef struct {
    uint64_t head, tail, count;
    uint32_t pw;
} GetState;

/* Take the mutex with a message at ``head`` and no claim on it: 0 (mutex held,
 * ``st`` filled), or an R_* code with the mutex let go. A
 * blocking get that finds the ring empty polls once before answering R_EMPTY. */
static int get_begin(Ops *o, int block, GetState *st) {
    int polled = 0;
    for (;;) {
        int rc = lock(o);
        if (rc) return rc;
        st->head = load64(U64(o, OFF_HEAD));
        st->tail = load64(U64(o, OFF_TAIL));
        st->count = load64(U64(o, OFF_COUNT));
        st->pw = load32(U32(o, OFF_PUTTERS));
        int grown = load64(U64(o, OFF_GEO)) != o->cap;
        if (st->count && !load32(U32(o, OFF_CLAIM)) && !grown) return 0;
        int shut = load32(U32(o, OFF_SHUT));
        unlock(o);
        if (st->count || shut || grown) return R_SLOW;
        if (!block || polled || !poll_count(o)) return R_EMPTY;
        polled = 1;
    }
}

/* The frame at ``*pos`` (past the pad that ends a lap there, if any, moving
 * ``*pos``), if it is one the fast path reads: no out-of-band buffers, within the
 * retained pages. NULL otherwise. */
static char *plain_frame(Ops *o, uint64_t *pos, uint64_t *flen, uint32_t *plen) {
    uint64_t off = OFFSET(o, *pos);
    char *frame = o->data + off;
    if (((uint32_t *)frame)[3] == PAD) { /* (a pad runs to the end of a lap) */
        *pos += ((uint64_t *)frame)[0];
        off = 0;
        frame = o->data;
    }
    *flen = ((uint64_t *)frame)[0];
    *plen = ((uint32_t *)frame)[2];
    if (((uint32_t *)frame)[3] || off + *flen > o->retain ||
        *flen < FRAME_HEADER + (uint64_t)*plen)
        return NULL;
    return frame;
}

/* Consume the ``k`` messages in ``[head, end)`` (one release store of ``head``),
 * let the mutex go, wake putters if any wait. */
static void get_finish(Ops *o, GetState *st, uint64_t end, uint64_t k) {
    uint64_t off = OFFSET(o, end);
    if (end == st->tail && off && !load32(U32(o, OFF_RESERVE))) {
        /* Emptied: both go to the start of the next lap (warm pages). head > tail
         * between the two stores; _repair knows. */
        uint64_t lap = end + o->cap - off;
        publish64(U64(o, OFF_HEAD), lap);
        publish64(U64(o, OFF_TAIL), lap);
    } else {
        publish64(U64(o, OFF_HEAD), end);
    }
    store64(U64(o, OFF_COUNT), st->count - k);
    if (o->joinable) store64(U64(o, OFF_TAKEN), load64(U64(o, OFF_TAKEN)) + k);
    if (st->pw) bump(o, OFF_GET_SEQ);
    unlock(o);
    if (st->pw) wake(o, OFF_GET_SEQ, WAKE_ALL); /* a sweep, if due, comes with a put */
}

/* get(block: bool) -> bytes | int. The oldest message, if it has no out-of-band
 * buffers; else an R_* code. */
static PyObject *Ops_get(Ops *o, PyObject *arg) {
    if (!enabled || o->base == NULL) return PyLong_FromLong(R_SLOW);
    int block = PyObject_IsTrue(arg);
    if (block < 0) return NULL;
    GetState st;
    int rc = get_begin(o, block, &st);
    if (rc) return PyLong_FromLong(rc);
    uint64_t pos = st.head, flen;
    uint32_t plen;
    char *frame = plain_frame(o, &pos, &flen, &plen);
    if (frame == NULL) {
        unlock(o);
        return PyLong_FromLong(R_SLOW);
    }
    PyObject *out = PyBytes_FromStringAndSize(frame + FRAME_HEADER, plen);
    if (out == NULL) {
        unlock(o);
        return NULL;
    }
    get_finish(o, &st, pos + flen, 1);
    return out;
}

/* remap(data, cap, room, origin, retain): the data area grew; use this mapping. */
static PyObject *Ops_remap(Ops *o, PyObject *const *args, Py_ssize_t nargs) {
    unsigned long long v[5];
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "remap(data, cap, room, origin, retain)");
        return NULL;
    }
    for (int i = 0; i < 5; i++) {
        v[i] = PyLong_AsUnsignedLongLong(args[i]);
        if (v[i] == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    }
    if (o->base == NULL) Py_RETURN_NONE; /* detached: stays so */
    if (set_geometry(o, v[0], v[1], v[2], v[3], v[4]) < 0) return NULL;
    Py_RETURN_NONE;
}

/* detach(): the mapping is going away; every later call returns SLOW. */
static PyObject *Ops_detach(Ops *o, PyObject *Py_UNUSED(arg)) {
    o->base = o->data = NULL;
    Py_RETURN_NONE;
}

/* get_many(max_items: int, block: bool) -> list[bytes] | int. Up to ``max_items``
 * of the oldest messages (at least one), or an R_* code: R_SLOW, with nothing
 * taken, when one of those messages has out-of-band buffers or lies beyond the
 * retained pages. */
static PyObject *Ops_get_many(Ops *o, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "get_many(max_items, block)");
        return NULL;
    }
    if (!enabled || o->base == NULL) return PyLong_FromLong(R_SLOW);
    Py_ssize_t max_items = PyLong_AsSsize_t(args[0]);
    if (max_items == -1 && PyErr_Occurred()) return NULL;
    int block = PyObject_IsTrue(args[1]);
    if (block < 0) return NULL;
    if (max_items < 1) return PyLong_FromLong(R_SLOW);
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    GetState st;
    int rc = get_begin(o, block, &st);
    if (rc) {
        Py_DECREF(out);
        return PyLong_FromLong(rc);
    }
    uint64_t pos = st.head, k = 0, n = st.count, flen;
    if ((uint64_t)max_items < n) n = (uint64_t)max_items;
    uint32_t plen;
    for (; k < n; k++) {
        char *frame = plain_frame(o, &pos, &flen, &plen);
        if (frame == NULL) {
            /* A frame the Python path must read: it takes the whole batch, so
             * that a batch is as long as it would have been without the fast path. */
            unlock(o);
            Py_DECREF(out);
            return PyLong_FromLong(R_SLOW);
        }
        PyObject *b = PyBytes_FromStringAndSize(frame + FRAME_HEADER, plen);
        if (b == NULL || PyList_Append(out, b) < 0) {
            Py_XDECREF(b);
            unlock(o);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(b);
        pos += flen;
    }
    get_finish(o, &st, pos, k);
    return out;
}

static PyMethodDef Ops_methods[] = {
    {"put_many", (PyCFunction)Ops_put_many, METH_O, "put_many(messages: list[bytes]) -> int"},
    {"get_many", (PyCFunction)(void (*)(void))Ops_get_many, METH_FASTCALL,
     "get_many(max_items: int, block: bool) -> list[bytes] | int"},
    {"detach", (PyCFunction)Ops_detach, METH_NOARGS, "detach(): forget the mapping"},
    {"remap", (PyCFunction)(void (*)(void))Ops_remap, METH_FASTCALL,
     "remap(data, cap, room, origin, retain): use a grown data area"},
    {"put", (PyCFunction)Ops_put, METH_O, "put(data: bytes) -> int"},
    {"get", (PyCFunction)Ops_get, METH_O, "get(block: bool) -> bytes | int"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject OpsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "corral._core._speedups.Ops",
    .tp_basicsize = sizeof(Ops),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Ops(header, data, cap, room, origin, retain, maxsize, joinable): fast paths "
              "of one ring",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ops_init,
    .tp_methods = Ops_methods,
};

/* -- LockBase: a fast acquire/release of a robust mutex, for subclassing ----------
 *
 * Generic: it knows no lock type above it. acquire() and release() run on the
 * robust mutex bound with _bind(address), holding the GIL. Anything but success
 * goes to two methods that the Python subclass provides (corral.Lock and RLock
 * do): ``self._acquire_fallback(rc, *args, **kwargs)`` (busy after the spin,
 * EOWNERDEAD, a timeout to honour, arguments to check) and
 * ``self._not_owner("release")``. */

typedef struct {
    PyObject_HEAD
    pthread_mutex_t *m;
    uint32_t *spinning; /* the hand-off hint, in the mutex's cache line */
    char owner_died;
} LockBase;

/* The hand-off hint. A barging mutex lets a holder that releases and re-acquires
 * in a loop keep it for good: its next trylock comes from a core that still has
 * the cache line, long before a waiter on another core sees the word change. So
 * a waiter that starts spinning raises a flag next to the lock word (HINT_OFFSET
 * bytes in, past the largest pthread_mutex_t: 48 B on aarch64), and release(),
 * seeing the flag, watches the word for at most SPIN pauses until someone else
 * owns it. Under contention the lock then changes hands instead of starving the
 * waiter; uncontended, release() pays one read of a line it already holds. The
 * flag is a hint, never a promise: a spinner that gives up or dies leaves it set
 * for one release at most (which clears it when nobody came). */
#define HINT_OFFSET 48

static int trylock_spin_hinted(pthread_mutex_t *m, uint32_t *spinning) {
    int rc = pthread_mutex_trylock(m);
    if (rc != EBUSY) return rc;
    int *word = (int *)m;
    store32(spinning, 1);
    for (int i = 0; rc == EBUSY && i < SPIN; i++) {
        cpu_relax();
        if ((__atomic_load_n(word, __ATOMIC_RELAXED) & FUTEX_TID_MASK) == 0)
            rc = pthread_mutex_trylock(m);
    }
    if (rc == 0) store32(spinning, 0);
    return rc;
}

/* After an unlock: if a waiter spins, give it the time to take the lock. */
static void hand_off(pthread_mutex_t *m, uint32_t *spinning) {
    if (load32(spinning) == 0) return;
    int *word = (int *)m;
    for (int i = 0; i < SPIN; i++) {
        if ((__atomic_load_n(word, __ATOMIC_RELAXED) & FUTEX_TID_MASK) != 0) return;
        cpu_relax();
    }
    store32(spinning, 0); /* nobody came: a stale flag */
}

static PyObject *str_acquire_fallback, *str_not_owner, *str_release;

static int lock_bound(LockBase *self) {
    if (self->m == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "lock not initialised");
        return 0;
    }
    return 1;
}

static int known_kwnames(PyObject *kwnames) {
    if (kwnames == NULL) return 1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(k, "block") != 0 &&
            PyUnicode_CompareWithASCIIString(k, "timeout") != 0)
            return 0;
    }
    return 1;
}

/* acquire(block=True, timeout=None) -> bool. With no arguments: trylock and spin.
 * With arguments: one trylock (a non-blocking or timed acquire is the Python
 * path's to finish). Unknown arguments: rc -1, for Python to raise TypeError. */
static PyObject *LockBase_acquire(LockBase *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames) {
    if (!lock_bound(self)) return NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    int rc = -1;
    if (nargs + nkw == 0)
        rc = trylock_spin_hinted(self->m, self->spinning);
    else if (nargs + nkw <= 2 && known_kwnames(kwnames))
        rc = pthread_mutex_trylock(self->m);
    if (rc == 0) {
        self->owner_died = 0;
        Py_RETURN_TRUE;
    }
    if (nargs + nkw > 4) {
        PyErr_SetString(PyExc_TypeError, "acquire() takes at most 2 arguments");
        return NULL;
    }
    /* self._acquire_fallback(rc, *args, **kwargs) */
    PyObject *code = PyLong_FromLong(rc);
    if (code == NULL) return NULL;
    PyObject *stack[6];
    stack[0] = (PyObject *)self;
    stack[1] = code;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++) stack[2 + i] = args[i];
    PyObject *out = PyObject_VectorcallMethod(str_acquire_fallback, stack,
                                              (size_t)(2 + nargs), kwnames);
    Py_DECREF(code);
    return out;
}

static PyObject *LockBase_enter(LockBase *self, PyObject *Py_UNUSED(arg)) {
    return LockBase_acquire(self, NULL, 0, NULL);
}

static PyObject *LockBase_release(LockBase *self, PyObject *Py_UNUSED(arg)) {
    if (!lock_bound(self)) return NULL;
    if (pthread_mutex_unlock(self->m) != 0)
        return PyObject_CallMethodOneArg((PyObject *)self, str_not_owner, str_release);
    hand_off(self->m, self->spinning);
    Py_RETURN_NONE;
}

/* __exit__(*exc_info): release() */
static PyObject *LockBase_exit(LockBase *self, PyObject *const *Py_UNUSED(args),
                               Py_ssize_t Py_UNUSED(nargs)) {
    return LockBase_release(self, NULL);
}

static PyObject *LockBase_bind(LockBase *self, PyObject *arg) {
    unsigned long long address = PyLong_AsUnsignedLongLong(arg);
    if (address == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    self->m = (pthread_mutex_t *)(uintptr_t)address;
    self->spinning = (uint32_t *)(uintptr_t)(address + HINT_OFFSET);
    Py_RETURN_NONE;
}

static PyMethodDef LockBase_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))LockBase_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(block=True, timeout=None) -> bool"},
    {"__enter__", (PyCFunction)LockBase_enter, METH_NOARGS, NULL},
    {"release", (PyCFunction)LockBase_release, METH_NOARGS, "release()"},
    {"__exit__", (PyCFunction)(void (*)(void))LockBase_exit, METH_FASTCALL, NULL},
    {"_bind", (PyCFunction)LockBase_bind, METH_O, "_bind(address): the mutex to use"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef LockBase_members[] = {
    {"owner_died", T_BOOL, offsetof(LockBase, owner_died), 0,
     "True for the current holding when the previous holder died holding the lock."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject LockBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "corral._core._speedups.LockBase",
    .tp_basicsize = sizeof(LockBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Fast acquire/release of a robust mutex: subclass it (providing "
              "_acquire_fallback and _not_owner), then call _bind(address).",
    .tp_new = PyType_GenericNew,
    .tp_methods = LockBase_methods,
    .tp_members = LockBase_members,
};

/* -- BufferedIter: an iterator over a list buffer, refilled from Python ------------- */

/* The consumer's side of a stream of values that arrive in batches (the pool's
 * imap). Values wait in `_items` from `_pos` on; __next__ hands out the next one and
 * puts None in its place (so a value consumed is not kept alive by the buffer). A
 * value whose type is `_failure` is not returned: its `exc` is raised instead. When
 * the buffer is used up, it is cleared and the subclass's `_refill()` is called,
 * which waits until it has appended values or raises (StopIteration at the end). In C
 * because a Python __next__ costs several times a list read, per item. */
typedef struct {
    PyObject_HEAD
    PyObject *items;   /* a list */
    PyObject *failure; /* a type, or NULL */
    Py_ssize_t pos;
} BufferedIter;

static PyObject *str_refill, *str_exc;

static int BufferedIter_init(BufferedIter *self, PyObject *args, PyObject *kwds) {
    (void)args;
    (void)kwds;
    PyObject *items = PyList_New(0);
    if (items == NULL) return -1;
    Py_XSETREF(self->items, items);
    self->pos = 0;
    return 0;
}

static PyObject *BufferedIter_next(BufferedIter *self) {
    for (;;) {
        PyObject *items = self->items;
        if (items == NULL || !PyList_CheckExact(items)) {
            PyErr_SetString(PyExc_TypeError, "BufferedIter._items must be a list");
            return NULL;
        }
        if (self->pos < PyList_GET_SIZE(items)) {
            PyObject *value = PyList_GET_ITEM(items, self->pos); /* the list's reference */
            Py_INCREF(Py_None);
            PyList_SET_ITEM(items, self->pos, Py_None); /* ... now ours */
            self->pos++;
            if (self->failure != NULL && (PyObject *)Py_TYPE(value) == self->failure) {
                PyObject *exc = PyObject_GetAttr(value, str_exc);
                Py_DECREF(value);
                if (exc == NULL) return NULL;
                PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
                Py_DECREF(exc);
                return NULL;
            }
            return value;
        }
        if (PyList_SetSlice(items, 0, PyList_GET_SIZE(items), NULL) < 0) return NULL;
        self->pos = 0;
        PyObject *res = PyObject_CallMethodNoArgs((PyObject *)self, str_refill);
        if (res == NULL) return NULL; /* StopIteration at the end, or the refill's error */
        Py_DECREF(res);
        /* (Round again: another thread reading this iterator may have taken what the
         * refill brought while it waited without the GIL.) */
    }
}

/* (A Python subclass's type is visited and released by CPython's subtype_traverse
 * and subtype_dealloc, since this base type is static.) */
static int BufferedIter_traverse(BufferedIter *self, visitproc visit, void *arg) {
    Py_VISIT(self->items);
    Py_VISIT(self->failure);
    return 0;
}

static int BufferedIter_clear(BufferedIter *self) {
    Py_CLEAR(self->items);
    Py_CLEAR(self->failure);
    return 0;
}

static void BufferedIter_dealloc(BufferedIter *self) {
    PyObject_GC_UnTrack(self);
    BufferedIter_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef BufferedIter_members[] = {
    {"_items", T_OBJECT, offsetof(BufferedIter, items), 0, "the buffer (a list)"},
    {"_pos", T_PYSSIZET, offsetof(BufferedIter, pos), 0, "the next value's index"},
    {"_failure", T_OBJECT, offsetof(BufferedIter, failure), 0,
     "the type of the values that stand for an exception (their .exc is raised)"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject BufferedIterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "corral._core._speedups.BufferedIter",
    .tp_basicsize = sizeof(BufferedIter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "An iterator over a list buffer; subclass it and provide _refill().",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)BufferedIter_init,
    .tp_dealloc = (destructor)BufferedIter_dealloc,
    .tp_traverse = (traverseproc)BufferedIter_traverse,
    .tp_clear = (inquiry)BufferedIter_clear,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)BufferedIter_next,
    .tp_members = BufferedIter_members,
};

/* -- module ------------------------------------------------------------------------ */

/* prctl(option, arg) -> int: prctl(2) with its last three arguments 0; OSError on
 * failure. For _linux, so that a spawned child needs no ctypes to set itself up. */
static PyObject *prctl_(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "prctl(option, arg)");
        return NULL;
    }
    long option = PyLong_AsLong(args[0]);
    if (option == -1 && PyErr_Occurred()) return NULL;
    unsigned long arg = PyLong_AsUnsignedLong(args[1]);
    if (arg == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    int res = prctl((int)option, arg, 0UL, 0UL, 0UL);
    if (res == -1) return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(res);
}

/* "/proc/self/fd/<fd>" into ``path`` (32 bytes), by hand: snprintf's deep stack
 * would cost a fresh fork child a copy-on-write fault or two. */
static void proc_fd_path(int fd, char *path) {
    static const char prefix[] = "/proc/self/fd/";
    char digits[12];
    int nd = 0;
    for (int v = fd; nd == 0 || v > 0; v /= 10) digits[nd++] = (char)('0' + v % 10);
    size_t at = sizeof(prefix) - 1;
    memcpy(path, prefix, at);
    while (nd > 0) path[at++] = digits[--nd];
    path[at] = '\0';
}

/* The ``n`` integer arguments of a METH_FASTCALL function, into ``out``: 0, or -1
 * with TypeError (``usage``: another count) or the conversion's error set. The
 * ranges are the caller's to check. */
static int long_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t n,
                     const char *usage, long *out) {
    if (nargs != n) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = PyLong_AsLong(args[i]);
        if (out[i] == -1 && PyErr_Occurred()) return -1;
    }
    return 0;
}

/* The fork state (see after_fork_child below): each slot's fd, or -1. */
enum { FORK_SLOTS = 8, FORK_ARMED = 7 };
static int fork_fds[FORK_SLOTS] = {-1, -1, -1, -1, -1, -1, -1, -1};
static char fork_owned[FORK_SLOTS]; /* the slot's fd is an object's: /dev/null under it */
static unsigned long fork_count = 0;
/* The forking process's armed lifeline, in a fork child: the same number, a
 * description of our own under it (its parent_process() sentinel); closed once
 * this process arms a lifeline of its own (child_setup). */
static int fork_inherited = -1;

/* child_setup(lifeline_fd, signum) -> (armed_fd, parent_gone): everything
 * _bootstrap.setup does in a new child after the signal handler is installed, in
 * one call: subreaper on; the lifeline's read end reopened through /proc/self/fd
 * (an open file description of the child's own), signal-driven I/O armed on it
 * (F_SETOWN_EX to this thread, F_SETSIG to ``signum``, O_ASYNC), then one poll for
 * a parent that died before the arming. The inherited ``lifeline_fd`` is closed
 * once all of that succeeded, and the armed fd recorded as this process's
 * (fork_fds[FORK_ARMED]; the forking process's, fork_inherited, closed); on an
 * error (OSError) nothing but the subreaper flag has changed. The same steps as the pure path (_lifeline.arm): in C, the child
 * touches none of the interpreter's objects on the way, and each object touched
 * costs a fresh fork child a copy-on-write page fault (docs/design.md, "Start
 * latency"). Only for the main thread, the one the signal must reach. */
static PyObject *child_setup(PyObject *Py_UNUSED(mod), PyObject *const *args,
                             Py_ssize_t nargs) {
    long v[2];
    if (long_args(args, nargs, 2, "child_setup(lifeline_fd, signum)", v) < 0) return NULL;
    long fd_arg = v[0], sig_arg = v[1];
    if (fd_arg < 0 || fd_arg > INT_MAX || sig_arg < 1 || sig_arg > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "child_setup: bad fd or signal number");
        return NULL;
    }
    int fd = (int)fd_arg, signum = (int)sig_arg;
    pid_t tid = (pid_t)syscall(SYS_gettid);
    if (tid != getpid()) {
        PyErr_SetString(PyExc_RuntimeError, "the lifeline must be armed from the main thread");
        return NULL;
    }
    if (prctl(PR_SET_CHILD_SUBREAPER, 1UL, 0UL, 0UL, 0UL) == -1)
        return PyErr_SetFromErrno(PyExc_OSError);
    char path[32];
    proc_fd_path(fd, path);
    int armed = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (armed == -1) return PyErr_SetFromErrno(PyExc_OSError);
    struct f_owner_ex owner = {.type = F_OWNER_TID, .pid = tid};
    if (fcntl(armed, F_SETOWN_EX, &owner) == -1 || fcntl(armed, F_SETSIG, signum) == -1 ||
        fcntl(armed, F_SETFL, O_NONBLOCK | O_ASYNC) == -1) {
        int err = errno;
        close(armed);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    close(fd);
    /* This process's armed lifeline now (a fork child of ours gives it a description
     * of its own); the one inherited from the forking process is not needed any more. */
    fork_fds[FORK_ARMED] = armed;
    if (fork_inherited >= 0) {
        close(fork_inherited);
        fork_inherited = -1;
    }
    /* Armed first, checked second: nobody writes to the lifeline, so readable (or
     * hung up) means the parent is gone already. */
    struct pollfd p = {.fd = armed, .events = POLLIN, .revents = 0};
    int gone = poll(&p, 1, 0) > 0;
    return Py_BuildValue("(iO)", armed, gone ? Py_True : Py_False);
}

/* The fork state (_forkstate.py): the fds of this process that a fork child must
 * not keep, by slot, and a count of the forks on this process's line.
 *
 * after_fork_child() runs first in every os.fork() child (an os.register_at_fork
 * hook, a builtin: no Python frame, no object made). It closes each slot's fd, so
 * the child holds none of those files (the supervisor's socket and the lifeline's
 * write end above all: a child that kept them would keep its parent's death from
 * being seen); for a slot whose fd a Python object owns (a socket, an epoll),
 * which would close the number again some day, it puts /dev/null under the number
 * instead, for the owner to close. It gives the armed lifeline an open file
 * description of the child's own (see _lifeline.py), and counts one more fork.
 * The modules drop the rest of their parent's state on first use in the child,
 * when they see the count moved. */

/* (An open file description of our own for the armed lifeline: reopened through
 * /proc/self/fd and put under the same number; /dev/null there if that failed.) */
static void fork_own_description(int fd, int devnull) {
    char path[32];
    proc_fd_path(fd, path);
    int own = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (own >= 0) {
        dup3(own, fd, O_CLOEXEC);
        close(own);
    } else if (devnull >= 0) {
        dup3(devnull, fd, O_CLOEXEC);
    }
}

static PyObject *after_fork_child(PyObject *Py_UNUSED(mod), PyObject *Py_UNUSED(arg)) {
    int saved = errno;
    int devnull = -1;
    for (int slot = 0; slot < FORK_SLOTS; slot++) {
        if (fork_fds[slot] >= 0 && (fork_owned[slot] || slot == FORK_ARMED)) {
            devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
            break;
        }
    }
    for (int slot = 0; slot < FORK_SLOTS; slot++) {
        int fd = fork_fds[slot];
        if (fd < 0) continue;
        if (slot == FORK_ARMED) {
            fork_own_description(fd, devnull);
            fork_inherited = fd;
        } else if (fork_owned[slot] && devnull >= 0)
            dup3(devnull, fd, O_CLOEXEC);
        else
            close(fd); /* (an owned one too if there was no /dev/null, the fd table
                        * full: its owner, let go of on first use, finds the number
                        * closed or reused and never closes it: _forkstate.let_go) */
        fork_fds[slot] = -1;
    }
    if (devnull >= 0) close(devnull);
    fork_count++;
    errno = saved;
    Py_RETURN_NONE;
}

/* fork_slot(slot, fd, owned) -> None: ``fd`` (-1: none) is the slot's from now on;
 * ``owned``: a Python object owns it (a fork child gets /dev/null under it). */
static PyObject *fork_slot(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs) {
    long v[3];
    if (long_args(args, nargs, 3, "fork_slot(slot, fd, owned)", v) < 0) return NULL;
    long slot = v[0], fd = v[1];
    int owned = v[2] != 0;
    if (slot < 0 || slot >= FORK_SLOTS || fd < -1 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "fork_slot: bad slot or fd");
        return NULL;
    }
    fork_owned[slot] = (char)owned;
    fork_fds[slot] = (int)fd;
    Py_RETURN_NONE;
}

/* fork_fd(slot) -> int: the slot's fd, or -1. */
static PyObject *fork_fd(PyObject *Py_UNUSED(mod), PyObject *arg) {
    long slot = PyLong_AsLong(arg);
    if (slot == -1 && PyErr_Occurred()) return NULL;
    if (slot < 0 || slot >= FORK_SLOTS) {
        PyErr_SetString(PyExc_ValueError, "fork_fd: bad slot");
        return NULL;
    }
    return PyLong_FromLong(fork_fds[slot]);
}

/* fork_take_inherited() -> int: the forking process's armed lifeline (see
 * fork_inherited), or -1; the caller owns it from now on. */
static PyObject *fork_take_inherited(PyObject *Py_UNUSED(mod), PyObject *Py_UNUSED(arg)) {
    int fd = fork_inherited;
    fork_inherited = -1;
    return PyLong_FromLong(fd);
}

/* fork_generation() -> int: how many forks this process's line has seen (its own
 * fork from its parent, and its parent's, ...: inherited, then counted). */
static PyObject *fork_generation(PyObject *Py_UNUSED(mod), PyObject *Py_UNUSED(arg)) {
    return PyLong_FromUnsignedLong(fork_count);
}

/* has_children() -> bool: whether this process has any child at all, exited or
 * not (waitid(P_ALL, WNOHANG | WNOWAIT), nothing reaped). A child's teardown asks
 * this as it exits; in Python the common answer, "none", is a ChildProcessError,
 * whose objects a fresh fork child pays for in copy-on-write faults. */
static PyObject *has_children(PyObject *Py_UNUSED(mod), PyObject *Py_UNUSED(arg)) {
    siginfo_t info;
    for (;;) {
        if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == 0) Py_RETURN_TRUE;
        if (errno == ECHILD) Py_RETURN_FALSE;
        if (errno != EINTR) return PyErr_SetFromErrno(PyExc_OSError);
        if (PyErr_CheckSignals() < 0) return NULL;
    }
}

/* send_pidfd(sock_fd, pid, pidfd) -> None: one registration with the supervisor
 * (_supervisor.register): the pid, 4 bytes little-endian, and the pidfd as
 * SCM_RIGHTS, in one non-blocking sendmsg; OSError (BlockingIOError,
 * BrokenPipeError, ...) as socket.sendmsg raises it. It runs in every start right
 * after the fork, where the lists, bytes and buffers of socket.sendmsg each cost
 * the parent copy-on-write page faults. */
static PyObject *send_pidfd(PyObject *Py_UNUSED(mod), PyObject *const *args,
                            Py_ssize_t nargs) {
    long v[3];
    if (long_args(args, nargs, 3, "send_pidfd(sock_fd, pid, pidfd)", v) < 0) return NULL;
    for (int i = 0; i < 3; i++) {
        if (v[i] < 0 || v[i] > INT_MAX) {
            PyErr_SetString(PyExc_ValueError, "send_pidfd: bad fd or pid");
            return NULL;
        }
    }
    uint32_t pid = (uint32_t)v[1];
    unsigned char data[4] = {pid & 0xff, (pid >> 8) & 0xff, (pid >> 16) & 0xff, pid >> 24};
    struct iovec iov = {.iov_base = data, .iov_len = sizeof data};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    int pidfd = (int)v[2];
    memcpy(CMSG_DATA(cmsg), &pidfd, sizeof pidfd);
    for (;;) {
        if (sendmsg((int)v[0], &msg, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0) Py_RETURN_NONE;
        if (errno != EINTR) return PyErr_SetFromErrno(PyExc_OSError);
        if (PyErr_CheckSignals() < 0) return NULL;
    }
}

static PyObject *set_enabled(PyObject *Py_UNUSED(mod), PyObject *arg) {
    int v = PyObject_IsTrue(arg);
    if (v < 0) return NULL;
    enabled = v;
    Py_RETURN_NONE;
}

/* The arguments both map loops share: (fn, items, start, end, values, words, slot,
 * base). On success, *word points at words[slot] and the caller releases *buf. */
typedef struct {
    PyObject *fn, *items, *values;
    Py_ssize_t start, end;
    long long base;
    Py_buffer buf;
    volatile int64_t *word;
} loop_args;

static int
parse_loop_args(PyObject *const *args, loop_args *a)
{
    a->fn = args[0];
    a->items = args[1];
    a->values = args[4];
    if (!PyList_Check(a->items) || !PyList_Check(a->values)) {
        PyErr_SetString(PyExc_TypeError, "items and values must be lists");
        return -1;
    }
    a->start = PyLong_AsSsize_t(args[2]);
    a->end = PyLong_AsSsize_t(args[3]);
    Py_ssize_t slot = PyLong_AsSsize_t(args[6]);
    a->base = PyLong_AsLongLong(args[7]);
    if (PyErr_Occurred())
        return -1;
    if (PyObject_GetBuffer(args[5], &a->buf, PyBUF_WRITABLE) < 0)
        return -1;
    if (slot < 0 || (slot + 1) * (Py_ssize_t)sizeof(int64_t) > a->buf.len) {
        PyBuffer_Release(&a->buf);
        PyErr_SetString(PyExc_IndexError, "slot out of range");
        return -1;
    }
    a->word = (volatile int64_t *)a->buf.buf + slot;
    return 0;
}

/* Set in the running word once the call it names has returned (or raised). */
#define RETURNED_BIT ((int64_t)1 << 31)

/* map_tracked(fn, items, start, end, values, words, slot, base) -> None
 *
 * Append fn(items[i]) to values for i in [start, end), storing base + i into the
 * 64-bit word words[slot] before each call, and base + i | RETURNED_BIT after it: a
 * loop whose progress another process can read after this one died (the pool's
 * running word). An exception from fn
 * propagates with values holding the results before it. Generic: it knows nothing
 * of pools; the Python loop in corral._pool._worker is the same without it. */
static PyObject *
map_tracked(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "map_tracked takes 8 arguments");
        return NULL;
    }
    loop_args a;
    if (parse_loop_args(args, &a) < 0)
        return NULL;
    for (Py_ssize_t i = a.start; i < a.end && i < PyList_GET_SIZE(a.items); i++) {
        *a.word = (int64_t)(a.base + i);
        PyObject *item = PyList_GET_ITEM(a.items, i);
        Py_INCREF(item);
        PyObject *result = PyObject_CallOneArg(a.fn, item);
        Py_DECREF(item);
        *a.word = (int64_t)(a.base + i) | RETURNED_BIT;
        if (result == NULL) {
            PyBuffer_Release(&a.buf);
            return NULL;
        }
        int failed = PyList_Append(a.values, result);
        Py_DECREF(result);
        if (failed < 0) {
            PyBuffer_Release(&a.buf);
            return NULL;
        }
    }
    PyBuffer_Release(&a.buf);
    Py_RETURN_NONE;
}

/* map_logged(fn, items, start, end, values, words, slot, base, log, slow)
 *     -> None | (next, data, error)
 *
 * map_tracked, plus a record log that outlives this process: after each call, and
 * before the next item starts, the result is written to ``log`` (a writable shared
 * mapping) as a pickle that pickle.loads reads back. The log's layout:
 *     int64 base; int64 count; int64 ends[LOG_MAX_RECORDS]; records from
 *     LOG_DATA_START, back to back; ends[i] is the end offset of record i (negative
 *     for an error record, which this loop never writes).
 * A record is published by storing its end, then count + 1: a process that dies
 * between the two leaves a record that is not counted, never a counted one that is
 * half written. The reader reads only after the writer died.
 *
 * Results of exact type int (64-bit), float, bool, None, str and bytes are pickled
 * here (a few ns); any other result goes through slow(value) -> (bytes, is_error).
 * When a record doesn't fit in the log, the call returns (index of the next item,
 * record, is_error) with the result already in values: the caller grows the log,
 * adds the record, and calls again from there. An exception from fn propagates with
 * values holding the results before it, each of them logged. */
#define LOG_MAX_RECORDS 4096
#define LOG_DATA_START (8 * (2 + LOG_MAX_RECORDS))

/* Pickle opcodes (protocol 4, which pickle.loads reads without a PROTO header). */
static Py_ssize_t
pickle_scalar_ops(PyObject *v, unsigned char *out, Py_ssize_t room, int stop)
{
    /* Write the opcodes that push v at out, then STOP if ``stop``; their length, 0
     * if v is not a scalar handled here, or -1 if they would not fit in room bytes. */
    unsigned char local[16];
    /* the opcode and its argument (at most 10 bytes) go straight to out if they fit */
    unsigned char *head = room >= (Py_ssize_t)sizeof(local) ? out : local;
    Py_ssize_t n = 0;
    const char *data = NULL;
    Py_ssize_t len = 0;
    if (v == Py_None) {
        head[n++] = 'N';
    } else if (v == Py_True || v == Py_False) {
        head[n++] = v == Py_True ? 0x88 : 0x89;
    } else if (PyLong_CheckExact(v)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (x == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        if (x >= 0 && x < 256) {
            head[n++] = 'K';
            head[n++] = (unsigned char)x;
        } else if (x >= INT32_MIN && x <= INT32_MAX) {
            uint32_t u = (uint32_t)(int32_t)x;
            head[n++] = 'J';
            for (int k = 0; k < 4; k++) head[n++] = (unsigned char)(u >> (8 * k));
        } else {
            uint64_t u = (uint64_t)x;
            head[n++] = 0x8a; /* LONG1: little-endian two's complement */
            head[n++] = 8;
            for (int k = 0; k < 8; k++) head[n++] = (unsigned char)(u >> (8 * k));
        }
    } else if (PyFloat_CheckExact(v)) {
        head[n++] = 'G'; /* BINFLOAT: big-endian IEEE 754 */
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(v), (char *)head + n, 0) < 0) {
            PyErr_Clear();
            return 0;
        }
        n += 8;
    } else if (PyUnicode_CheckExact(v) || PyBytes_CheckExact(v)) {
        int is_str = PyUnicode_CheckExact(v);
        if (is_str) {
            data = PyUnicode_AsUTF8AndSize(v, &len);
            if (data == NULL) { /* lone surrogates: let pickle say what it does */
                PyErr_Clear();
                return 0;
            }
        } else {
            data = PyBytes_AS_STRING(v);
            len = PyBytes_GET_SIZE(v);
        }
        if (len > (Py_ssize_t)UINT32_MAX)
            return 0;
        if (len < 256) {
            head[n++] = is_str ? 0x8c : 'C'; /* SHORT_BINUNICODE, SHORT_BINBYTES */
            head[n++] = (unsigned char)len;
        } else {
            head[n++] = is_str ? 'X' : 'B'; /* BINUNICODE, BINBYTES */
            for (int k = 0; k < 4; k++) head[n++] = (unsigned char)((uint64_t)len >> (8 * k));
        }
    } else {
        return 0;
    }
    Py_ssize_t total = n + len + (stop ? 1 : 0);
    if (total > room)
        return -1;
    if (head == local)
        memcpy(out, local, (size_t)n);
    if (len)
        memcpy(out + n, data, (size_t)len);
    if (stop)
        out[n + len] = '.';
    return total;
}

static Py_ssize_t
pickle_scalar(PyObject *v, unsigned char *out, Py_ssize_t room)
{
    return pickle_scalar_ops(v, out, room, 1);
}

static PyObject *
map_logged(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "map_logged takes 10 arguments");
        return NULL;
    }
    PyObject *slow = args[9];
    loop_args a;
    if (parse_loop_args(args, &a) < 0)
        return NULL;
    Py_buffer log;
    if (PyObject_GetBuffer(args[8], &log, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&a.buf);
        return NULL;
    }
    PyObject *ret = NULL;
    if (log.len < LOG_DATA_START) {
        PyErr_SetString(PyExc_ValueError, "log too small");
        goto done;
    }
    volatile int64_t *head = (volatile int64_t *)log.buf;
    unsigned char *bytes = (unsigned char *)log.buf;
    for (Py_ssize_t i = a.start; i < a.end && i < PyList_GET_SIZE(a.items); i++) {
        int64_t count = head[1];
        if (count < 0 || count >= LOG_MAX_RECORDS) {
            PyErr_SetString(PyExc_IndexError, "log full");
            goto done;
        }
        Py_ssize_t pos = count ? (Py_ssize_t)llabs(head[2 + count - 1]) : LOG_DATA_START;
        if (pos < LOG_DATA_START || pos > log.len) {
            PyErr_SetString(PyExc_ValueError, "log corrupt");
            goto done;
        }
        *a.word = (int64_t)(a.base + i);
        PyObject *item = PyList_GET_ITEM(a.items, i);
        Py_INCREF(item);
        PyObject *result = PyObject_CallOneArg(a.fn, item);
        Py_DECREF(item);
        *a.word = (int64_t)(a.base + i) | RETURNED_BIT;
        if (result == NULL)
            goto done;
        int failed = PyList_Append(a.values, result);
        if (failed < 0) {
            Py_DECREF(result);
            goto done;
        }
        Py_ssize_t n = pickle_scalar(result, bytes + pos, log.len - pos);
        if (n > 0) {
            Py_DECREF(result);
            head[2 + count] = (int64_t)(pos + n);
            head[1] = count + 1;
            continue;
        }
        PyObject *rec = PyObject_CallOneArg(slow, result);
        Py_DECREF(result);
        if (rec == NULL)
            goto done;
        PyObject *data;
        int is_error;
        if (!PyArg_ParseTuple(rec, "Sp", &data, &is_error)) {
            Py_DECREF(rec);
            goto done;
        }
        Py_ssize_t len = PyBytes_GET_SIZE(data);
        if (len > log.len - pos) { /* the caller grows the log and adds it */
            ret = Py_BuildValue("(nOO)", i + 1, data, is_error ? Py_True : Py_False);
            Py_DECREF(rec);
            goto done;
        }
        memcpy(bytes + pos, PyBytes_AS_STRING(data), (size_t)len);
        Py_DECREF(rec);
        head[2 + count] = is_error ? -(int64_t)(pos + len) : (int64_t)(pos + len);
        head[1] = count + 1;
    }
    ret = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&log);
    PyBuffer_Release(&a.buf);
    return ret;
}

/* pickle_scalar(value) -> bytes | None
 *
 * The pickle of an int (64-bit), float, bool, None, bytes (up to 4 KiB) or str (up
 * to 1,024 characters: 4 bytes each at most in UTF-8) of exact type, as
 * pickle.loads reads it, made without a Pickler; None for any other value. For an
 * outcome written once by a fresh fork child: a Pickler's buffers and memo are
 * objects and pages that child would write (copy-on-write faults), for a few bytes. */
static PyObject *
pickle_scalar_py(PyObject *Py_UNUSED(mod), PyObject *v)
{
    unsigned char small[32];
    Py_ssize_t room = sizeof(small);
    if (PyUnicode_CheckExact(v) || PyBytes_CheckExact(v)) {
        Py_ssize_t len = PyBytes_CheckExact(v) ? PyBytes_GET_SIZE(v) : PyUnicode_GET_LENGTH(v) * 4;
        if (len > 4096)
            Py_RETURN_NONE; /* (a large one: pickle's own way costs no more) */
        room = len + 16;
    }
    unsigned char *out = room <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)room);
    if (out == NULL)
        return PyErr_NoMemory();
    Py_ssize_t n = pickle_scalar(v, out, room);
    PyObject *ret = n > 0 ? PyBytes_FromStringAndSize((const char *)out, n) : Py_NewRef(Py_None);
    if (out != small)
        PyMem_Free(out);
    return ret;
}

/* dump_scalars(list, start=0, stop=len(list)) -> bytes | None
 *
 * The pickle of list[start:stop], its items all scalars pickle_scalar handles (EMPTY_LIST,
 * MARK, the items' opcodes, APPENDS, STOP: what pickle.loads reads back as an equal
 * list), made without a Pickler; None if an item is of any other kind, or a str
 * or bytes longer than DUMP_SCALARS_MAX_LEN. For the pool's chunks and commits of
 * plain values: a Pickler spends about 20 ns an item on them, this a few. There is
 * no memo: two references to one str come back as two equal strs, and each is
 * written out in full, which is why long ones are left to pickle (a list of a
 * thousand references to one 1 MiB str is 1 MiB pickled, and would be 1 GiB here). */
#define DUMP_SCALARS_MAX_LEN 255
static PyObject *
dump_scalars(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "dump_scalars(list, start=0, stop=len(list))");
        return NULL;
    }
    PyObject *list = args[0];
    if (!PyList_CheckExact(list))
        Py_RETURN_NONE;
    Py_ssize_t start = 0, stop = PyList_GET_SIZE(list);
    if (nargs > 1 && (start = PyLong_AsSsize_t(args[1])) == -1 && PyErr_Occurred())
        return NULL;
    if (nargs > 2 && (stop = PyLong_AsSsize_t(args[2])) == -1 && PyErr_Occurred())
        return NULL;
    if (start < 0 || stop < start || stop > PyList_GET_SIZE(list)) {
        PyErr_SetString(PyExc_IndexError, "dump_scalars: start and stop out of range");
        return NULL;
    }
    Py_ssize_t n = stop - start;
    Py_ssize_t room = 16 + 6 * n;
    PyObject *out = PyBytes_FromStringAndSize(NULL, room);
    if (out == NULL)
        return NULL;
    unsigned char *buf = (unsigned char *)PyBytes_AS_STRING(out);
    Py_ssize_t pos = 0;
    buf[pos++] = ']';
    if (n)
        buf[pos++] = '(';
    for (Py_ssize_t i = start; i < stop; i++) {
        /* (no Python code runs in this loop: the list can't change under it) */
        PyObject *item = PyList_GET_ITEM(list, i);
        if ((PyUnicode_CheckExact(item) && PyUnicode_GET_LENGTH(item) > DUMP_SCALARS_MAX_LEN) ||
            (PyBytes_CheckExact(item) && PyBytes_GET_SIZE(item) > DUMP_SCALARS_MAX_LEN)) {
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        Py_ssize_t k;
        while ((k = pickle_scalar_ops(item, buf + pos, room - 2 - pos, 0)) < 0) {
            room = 2 * room + 64;
            if (_PyBytes_Resize(&out, room) < 0)
                return NULL;
            buf = (unsigned char *)PyBytes_AS_STRING(out);
        }
        if (k == 0) {
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        pos += k;
    }
    if (n)
        buf[pos++] = 'e';
    buf[pos++] = '.';
    if (_PyBytes_Resize(&out, pos) < 0)
        return NULL;
    return out;
}

static PyObject *
load_scalar_op(const unsigned char **at, const unsigned char *end)
{
    /* The value of the scalar opcode at *at (one that pickle_scalar_ops writes),
     * moving *at past it; NULL with no exception set if it is any other opcode or
     * runs past end. */
    const unsigned char *p = *at;
    Py_ssize_t left = end - p;
    PyObject *v = NULL;
    Py_ssize_t used = 1, len;
    if (left < 1)
        return NULL;
    switch (p[0]) {
    case 'N':
        v = Py_NewRef(Py_None);
        break;
    case 0x88:
        v = Py_NewRef(Py_True);
        break;
    case 0x89:
        v = Py_NewRef(Py_False);
        break;
    case 'K':
        if (left < 2)
            return NULL;
        v = PyLong_FromLong(p[1]);
        used = 2;
        break;
    case 'J':
        if (left < 5)
            return NULL;
        v = PyLong_FromLong((int32_t)((uint32_t)p[1] | (uint32_t)p[2] << 8 | (uint32_t)p[3] << 16 |
                                      (uint32_t)p[4] << 24));
        used = 5;
        break;
    case 0x8a: { /* LONG1 of 8 bytes only: what pickle_scalar_ops writes */
        if (left < 10 || p[1] != 8)
            return NULL;
        uint64_t u = 0;
        for (int k = 7; k >= 0; k--)
            u = u << 8 | p[2 + k];
        v = PyLong_FromLongLong((long long)u);
        used = 10;
        break;
    }
    case 'G':
        if (left < 9)
            return NULL;
        {
            double d = PyFloat_Unpack8((const char *)p + 1, 0);
            if (d == -1.0 && PyErr_Occurred())
                return NULL;
            v = PyFloat_FromDouble(d);
        }
        used = 9;
        break;
    case 0x8c: case 'C': case 'X': case 'B': {
        int short_len = p[0] == 0x8c || p[0] == 'C';
        Py_ssize_t head = short_len ? 2 : 5;
        if (left < head)
            return NULL;
        len = short_len ? p[1]
                        : (Py_ssize_t)((uint32_t)p[1] | (uint32_t)p[2] << 8 | (uint32_t)p[3] << 16 |
                                       (uint32_t)p[4] << 24);
        if (len > left - head)
            return NULL;
        if (p[0] == 0x8c || p[0] == 'X')
            v = PyUnicode_DecodeUTF8((const char *)p + head, len, "surrogatepass");
        else
            v = PyBytes_FromStringAndSize((const char *)p + head, len);
        used = head + len;
        break;
    }
    default:
        return NULL;
    }
    *at = p + used;
    return v;
}

/* load_scalars_into(data, target, start, count) -> bool
 *
 * Read a pickle that dump_scalars made, of ``count`` items, straight into
 * target[start:start + count] (a list), with no list in between; False, with
 * target untouched, if data is any other pickle (pickle.loads reads those). */
static PyObject *
load_scalars_into(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t start, count;
    if (nargs != 4 || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "load_scalars_into(data, target: list, start, count)");
        return NULL;
    }
    if ((start = PyLong_AsSsize_t(args[2])) == -1 && PyErr_Occurred())
        return NULL;
    if ((count = PyLong_AsSsize_t(args[3])) == -1 && PyErr_Occurred())
        return NULL;
    PyObject *target = args[1];
    if (start < 0 || count < 1 || start > PyList_GET_SIZE(target) - count)
        Py_RETURN_FALSE;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *p = view.buf, *end = p + view.len;
    PyObject **got = NULL;
    Py_ssize_t n = 0;
    int ok = 0;
    if (view.len < 4 || p[0] != ']' || p[1] != '(' || end[-2] != 'e' || end[-1] != '.')
        goto done;
    got = PyMem_Malloc(sizeof(PyObject *) * (size_t)count);
    if (got == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    p += 2;
    end -= 2;
    while (p < end && n < count) {
        PyObject *v = load_scalar_op(&p, end);
        if (v == NULL)
            goto done;
        got[n++] = v;
    }
    ok = p == end && n == count;
done:
    PyBuffer_Release(&view);
    if (ok) { /* swap in, then let go of the old items (whose __del__ may run code) */
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *old = PyList_GET_ITEM(target, start + i);
            PyList_SET_ITEM(target, start + i, got[i]);
            got[i] = old;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(got[i]);
    PyMem_Free(got);
    if (PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(ok);
}

static PyMethodDef module_methods[] = {
    {"dump_scalars", (PyCFunction)(void (*)(void))dump_scalars, METH_FASTCALL,
     "dump_scalars(list, start=0, stop=len(list)) -> bytes | None: see the C source"},
    {"load_scalars_into", (PyCFunction)(void (*)(void))load_scalars_into, METH_FASTCALL,
     "load_scalars_into(data, target, start, count) -> bool: see the C source"},
    {"pickle_scalar", pickle_scalar_py, METH_O,
     "pickle_scalar(value) -> bytes | None: see the C source"},
    {"map_tracked", (PyCFunction)(void (*)(void))map_tracked, METH_FASTCALL,
     "map_tracked(fn, items, start, end, values, words, slot, base): see the C source"},
    {"map_logged", (PyCFunction)(void (*)(void))map_logged, METH_FASTCALL,
     "map_logged(fn, items, start, end, values, words, slot, base, log, slow): see the C source"},
    {"set_enabled", set_enabled, METH_O, "Turn every fast path on or off (tests)."},
    {"prctl", (PyCFunction)(void (*)(void))prctl_, METH_FASTCALL,
     "prctl(option, arg) -> int: prctl(2), the other arguments 0"},
    {"child_setup", (PyCFunction)(void (*)(void))child_setup, METH_FASTCALL,
     "child_setup(lifeline_fd, signum) -> (armed_fd, parent_gone): see the C source"},
    {"send_pidfd", (PyCFunction)(void (*)(void))send_pidfd, METH_FASTCALL,
     "send_pidfd(sock_fd, pid, pidfd) -> None: one supervisor registration"},
    {"after_fork_child", after_fork_child, METH_NOARGS,
     "after_fork_child() -> None: the fork child's at-fork hook (see the C source)"},
    {"fork_slot", (PyCFunction)(void (*)(void))fork_slot, METH_FASTCALL,
     "fork_slot(slot, fd, owned) -> None: the fd a fork child lets go of, by slot"},
    {"fork_fd", fork_fd, METH_O, "fork_fd(slot) -> int: the slot's fd, or -1"},
    {"fork_take_inherited", fork_take_inherited, METH_NOARGS,
     "fork_take_inherited() -> int: the forking process's armed lifeline, or -1"},
    {"fork_generation", fork_generation, METH_NOARGS,
     "fork_generation() -> int: forks seen on this process's line"},
    {"has_children", has_children, METH_NOARGS,
     "has_children() -> bool: any child at all (waitid, nothing reaped)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "corral._core._speedups",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    if (PyType_Ready(&OpsType) < 0 || PyType_Ready(&LockBaseType) < 0 ||
        PyType_Ready(&BufferedIterType) < 0)
        return NULL;
    str_refill = PyUnicode_InternFromString("_refill");
    str_exc = PyUnicode_InternFromString("exc");
    if (!str_refill || !str_exc) return NULL;
    str_not_owner = PyUnicode_InternFromString("_not_owner");
    str_release = PyUnicode_InternFromString("release");
    str_acquire_fallback = PyUnicode_InternFromString("_acquire_fallback");
    if (!str_not_owner || !str_release || !str_acquire_fallback) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL) return NULL;
    Py_INCREF(&OpsType);
    Py_INCREF(&LockBaseType);
    Py_INCREF(&BufferedIterType);
    if (PyModule_AddObject(m, "Ops", (PyObject *)&OpsType) < 0 ||
        PyModule_AddObject(m, "LockBase", (PyObject *)&LockBaseType) < 0 ||
        PyModule_AddObject(m, "BufferedIter", (PyObject *)&BufferedIterType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    /* Every constant the ring's protocol shares with _ringlayout.py, which checks
     * each of them at import; the names of them all in LAYOUT. */
    static const struct {
        const char *name;
        long long value;
    } layout[] = {
        {"OFF_HEAD", OFF_HEAD},
        {"OFF_TAIL", OFF_TAIL},
        {"OFF_COUNT", OFF_COUNT},
        {"OFF_TAKEN", OFF_TAKEN},
        {"OFF_GETTERS", OFF_GETTERS},
        {"OFF_PUTTERS", OFF_PUTTERS},
        {"OFF_JOINERS", OFF_JOINERS},
        {"OFF_SHUT", OFF_SHUT},
        {"OFF_CLAIM", OFF_CLAIM},
        {"OFF_RESERVE", OFF_RESERVE},
        {"OFF_GEO", OFF_GEO},
        {"STALE", STALE},
        {"OFF_PUT_SEQ", OFF_PUT_SEQ},
        {"OFF_GET_SEQ", OFF_GET_SEQ},
        {"OFF_DONE_SEQ", OFF_DONE_SEQ},
        {"FRAME_HEADER", FRAME_HEADER},
        {"ALIGN", ALIGN},
        {"PAD", PAD},
        {"WAKE_ALL", WAKE_ALL},
        {"FUTEX_TID_MASK", FUTEX_TID_MASK},
        {"SPIN", SPIN},
        {"HINT_OFFSET", HINT_OFFSET},
        {"POLL_ROUNDS", POLL_ROUNDS},
        {"ZERO_WAKES_MAX", ZERO_WAKES_MAX},
        {"DONE", R_DONE},
        {"SLOW", R_SLOW},
        {"SWEEP", R_SWEEP},
        {"EMPTY", R_EMPTY},
    };
    Py_ssize_t n = (Py_ssize_t)(sizeof(layout) / sizeof(layout[0]));
    PyObject *names = PyTuple_New(n);
    if (names == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyUnicode_FromString(layout[i].name);
        if (name == NULL) {
            Py_DECREF(names);
            Py_DECREF(m);
            return NULL;
        }
        PyTuple_SET_ITEM(names, i, name);
        PyObject *value = PyLong_FromLongLong(layout[i].value);
        if (value == NULL || PyModule_AddObject(m, layout[i].name, value) < 0) {
            Py_XDECREF(value);
            Py_DECREF(names);
            Py_DECREF(m);
            return NULL;
        }
    }
    if (PyModule_AddObject(m, "LAYOUT", names) < 0) {
        Py_DECREF(names);
        Py_DECREF(m);
        return NULL;
    }
    /* map_logged's log layout; corral._pool._log checks both at import. */
    if (PyModule_AddIntConstant(m, "DUMP_SCALARS_MAX_LEN", DUMP_SCALARS_MAX_LEN) < 0 ||
        PyModule_AddIntConstant(m, "RETURNED_BIT", (long)RETURNED_BIT) < 0 ||
        PyModule_AddIntConstant(m, "LOG_MAX_RECORDS", LOG_MAX_RECORDS) < 0 ||
        PyModule_AddIntConstant(m, "LOG_DATA_START", LOG_DATA_START) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    /* The fork slots; corral._core._forkstate checks both at import. */
    if (PyModule_AddIntConstant(m, "FORK_SLOTS", FORK_SLOTS) < 0 ||
        PyModule_AddIntConstant(m, "FORK_ARMED", FORK_ARMED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
