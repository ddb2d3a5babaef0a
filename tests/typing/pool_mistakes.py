"""Deliberate type mistakes with corral's pool APIs, for ``tests/test_typing.py``.

Each line that ends in an ``E:`` comment must get a mypy error (``--strict``) whose
message contains the comment's text; every other line must get none. Not run, not
collected by pytest, and left out of the project-wide mypy run.
"""

from __future__ import annotations

import corral


def takes_str(s: str) -> str:
    return s.upper()


def int_and_str(n: int, s: str) -> str:
    return s * n


def pool_mistakes(pool: corral.Pool) -> None:
    pool.map(takes_str, [1, 2, 3])  # E: Argument 1 to "map"
    pool.map_async(takes_str, [1, 2, 3])  # E: Argument 1 to "map_async"
    pool.imap(takes_str, [1])  # E: Argument 1 to "imap"
    pool.imap_unordered(takes_str, [1])  # E: Argument 1 to "imap_unordered"
    pool.submit(takes_str, 1)  # E: Argument 2 to "submit"
    pool.submit(takes_str, "a", "b")  # E: Too many arguments for "submit"
    pool.submit(int_and_str, 2, s=3)  # E: Argument "s" to "submit"
    pool.apply_async(takes_str, (1,))  # E: "apply_async"
    pool.starmap(int_and_str, [(1, 2)])  # E: "starmap"
    pool.with_options(task_timeout=1).submit(takes_str, 1)  # E: Argument 2 to "submit"
    n: int = pool.map(takes_str, ["a"])[0]  # E: Incompatible types in assignment
    m: int = pool.apply(takes_str, ("a",))  # E: Incompatible types in assignment
    for k in pool.imap(takes_str, ["a"]):
        k + 1  # E: Unsupported operand types
    print(n, m)


def executor_mistakes(ex: corral.ProcessPoolExecutor) -> None:
    ex.submit(takes_str, 1)  # E: Argument 2 to "submit"
    r: int = ex.submit(takes_str, "a").result()  # E: Incompatible types in assignment
    print(r)


def map_mistakes() -> None:
    corral.map(takes_str, [1])  # E: Argument 1 to "map"
    for s in corral.map(takes_str, ["a"]):
        s + 1  # E: Unsupported operand types


def pipeline_mistakes() -> None:
    corral.Pipeline([1, 2]).stage(takes_str)  # E: Argument 1 to "stage"
    for s in corral.Pipeline(["a"]).stage(takes_str):
        s + 1  # E: Unsupported operand types


def correct(pool: corral.Pool, ex: corral.ProcessPoolExecutor) -> None:
    a: list[str] = pool.map(takes_str, ["a", "b"])
    b: list[str] = pool.map_async(takes_str, ["a"]).get(1)
    c: list[str] = list(pool.imap(takes_str, ["a"]))
    d: list[str] = list(pool.imap_unordered(takes_str, ["a"], task_timeout=5))
    e: str = pool.submit(takes_str, "a").result()
    f: str = pool.submit(int_and_str, 2, s="x").result()
    g: str = pool.apply(takes_str, ("a",))
    h: str = pool.apply_async(int_and_str, (2, "x")).get(1)
    i: list[str] = pool.starmap(int_and_str, [(2, "x")])
    j: str = pool.with_options(task_timeout=5, retries=2).submit(takes_str, "a").result()
    k: str = ex.submit(takes_str, "a").result()
    m: list[str] = list(corral.map(takes_str, ["a"], workers=2, progress={"desc": "x"}))
    n: list[str] = corral.Pipeline(["a"]).stage(takes_str).stage(takes_str).run()
    print(a, b, c, d, e, f, g, h, i, j, k, m, n)


# Queues are generic (issue 12): Queue[int] at run time and here; get() returns T.
def queue_mistakes(ctx: corral.CorralContext) -> None:
    q: corral.Queue[int] = corral.Queue()
    q.put("a")  # E: Argument 1 to "put" of "Queue" has incompatible type "str"
    s: str = q.get()  # E: Incompatible types in assignment
    jq: corral.JoinableQueue[str] = ctx.JoinableQueue()
    jq.put(1)  # E: Argument 1 to "put" of "Queue" has incompatible type "int"
    sq = corral.SimpleQueue[bytes]()
    sq.get() + 1  # E: Unsupported operand types
    print(s)


def queue_correct(ctx: corral.CorralContext) -> None:
    q: corral.Queue[int] = corral.Queue()
    q.put(1)
    n: int = q.get() + q.get_nowait()
    many: list[int] = q.get_many(10)
    cq: corral.Queue[str] = ctx.Queue()
    cs: str = cq.get()
    anything = corral.Queue()  # a bare Queue holds Any
    anything.put(object())
    print(n, many, cs, corral.Queue[int], corral.SimpleQueue[str], corral.JoinableQueue[bytes])
