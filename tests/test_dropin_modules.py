"""Every multiprocessing submodule a program may import is there as corral.<name>
(issue 12): corral's own objects where corral has its own, the stdlib's otherwise."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

import corral

# submodule -> names that must be corral's own objects there
OWN: dict[str, dict[str, Any]] = {
    "pool": {"Pool": corral.Pool, "AsyncResult": corral.AsyncResult},
    "queues": {"Queue": corral.Queue, "JoinableQueue": corral.JoinableQueue},
    "synchronize": {"Lock": corral.Lock, "Condition": corral.Condition, "Event": corral.Event},
    "sharedctypes": {"Value": corral.Value, "RawArray": corral.RawArray},
    "context": {"get_context": corral.get_context, "Process": corral.Process},
    "process": {"Process": corral.Process},
}
STDLIB = ("connection", "dummy", "managers", "shared_memory")


@pytest.mark.parametrize("name", sorted(OWN))
def test_submodules_hold_corrals_objects(name: str) -> None:
    module = importlib.import_module(f"corral.{name}")
    for attr, obj in OWN[name].items():
        assert getattr(module, attr) is obj, (name, attr)
    for attr in module.__all__:
        assert hasattr(module, attr), (name, attr)


@pytest.mark.parametrize("name", STDLIB)
def test_submodules_without_a_corral_version_are_the_stdlibs(name: str) -> None:
    module = importlib.import_module(f"corral.{name}")
    assert module is importlib.import_module(f"multiprocessing.{name}")
    assert getattr(corral, name) is module


def test_stdlib_names_are_there_in_corrals_submodules() -> None:
    import multiprocessing.pool
    import multiprocessing.queues
    import multiprocessing.synchronize

    import corral.queues

    for name in ("pool", "queues", "synchronize"):
        stdlib = importlib.import_module(f"multiprocessing.{name}")
        ours = importlib.import_module(f"corral.{name}")
        missing = [n for n in getattr(stdlib, "__all__", ()) if not hasattr(ours, n)]
        assert not missing, (name, missing)
    assert corral.queues.Empty is multiprocessing.queues.Empty  # type: ignore[attr-defined]


def test_queues_are_generic_at_run_time() -> None:
    for cls in (corral.Queue, corral.SimpleQueue, corral.JoinableQueue):
        alias = cls[int]
        assert alias.__origin__ is cls
    q = corral.Queue[int]()
    q.put(1)
    assert q.get(timeout=5) == 1
    q.close()
