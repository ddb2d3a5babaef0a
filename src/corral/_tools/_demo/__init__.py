"""Scenarios for ``corral demo``: each guarantee at work, next to what
``multiprocessing`` does in the same situation.

A scenario is a module in this package that calls :func:`scenario` at import. It
receives parsed arguments and a :class:`Report`, on which it records one check per
claim; the CLI prints a PASS/FAIL line per check and exits non-zero on any FAIL.
The stdlib side of a scenario always runs under a timeout, and whatever it left
running is killed.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Report", "Scenario", "all_scenarios", "scenario"]


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def check(self, name: str, passed: bool, detail: str = "") -> None:
        self.checks.append(Check(name, passed, detail))
        print(
            f"{'PASS' if passed else 'FAIL'}  {name}" + (f"  ({detail})" if detail else ""),
            flush=True,
        )

    def note(self, text: str) -> None:
        """Context that is not a pass/fail claim, such as what the stdlib did."""
        print(f"      {text}", flush=True)

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    run: Callable[[argparse.Namespace, Report], None]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None


_registry: dict[str, Scenario] = {}


def scenario(
    name: str,
    summary: str,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> Callable[
    [Callable[[argparse.Namespace, Report], None]], Callable[[argparse.Namespace, Report], None]
]:
    def register(
        fn: Callable[[argparse.Namespace, Report], None],
    ) -> Callable[[argparse.Namespace, Report], None]:
        _registry[name] = Scenario(name, summary, fn, add_arguments)
        return fn

    return register


def all_scenarios() -> dict[str, Scenario]:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return dict(_registry)
