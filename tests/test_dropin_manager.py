"""corral.Manager() is the stdlib's SyncManager (issue 12), its server started as a
corral Process (issue 13: it dies with its parent; tests/test_orphans.py, row
``manager``): its proxies work with corral's Processes, Pools and executors, under
every start method."""

from __future__ import annotations

import multiprocessing.managers

import corral
from tests import dropin_targets as t

TIMEOUT = 30.0


def test_manager_proxies_with_corral_objects(ctx: corral.CorralContext) -> None:
    with ctx.Manager() as mgr:
        assert isinstance(mgr, multiprocessing.managers.SyncManager)
        assert isinstance(mgr._process, ctx.Process)  # type: ignore[attr-defined]
        d, items, q, lock = mgr.dict(), mgr.list(), mgr.Queue(), mgr.Lock()

        p = ctx.Process(target=t.manager_child, args=(d, items, q, lock))
        p.start()
        p.join(TIMEOUT)
        assert p.exitcode == 0
        assert d["pid"] == p.pid
        assert list(items) == ["child"]
        assert q.get(timeout=TIMEOUT) == "hello"

        with corral.Pool(2, context=ctx) as pool:
            assert pool.map(t.manager_put, [(q, i) for i in range(10)]) == list(range(10))
        assert sorted(q.get(timeout=TIMEOUT) for _ in range(10)) == [i * 2 for i in range(10)]

        with corral.ProcessPoolExecutor(2, mp_context=ctx) as ex:
            assert ex.submit(t.manager_append, items, "task").result(TIMEOUT) == 2
        assert list(items) == ["child", "task"]
