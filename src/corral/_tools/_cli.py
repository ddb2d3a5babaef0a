"""The ``corral`` command: ``corral demo``, ``corral bench`` and ``corral --version``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import _bench, _demo

__all__ = ["main"]


def _demo_main(ns: argparse.Namespace) -> int:
    scenarios = _demo.all_scenarios()
    chosen = [ns.scenario] if ns.scenario else sorted(scenarios)
    report = _demo.Report()
    for name in chosen:
        sc = scenarios[name]
        print(f"== {name}: {sc.summary}", flush=True)
        sc.run(ns, report)
    failed = [c.name for c in report.checks if not c.passed]
    print(f"\n{len(report.checks) - len(failed)} passed, {len(failed)} failed", flush=True)
    return 1 if failed or not report.checks else 0


def _bench_main(ns: argparse.Namespace) -> int:
    return _bench.main(quick=not ns.full, only=ns.only)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral", description=__doc__)
    parser.add_argument("--version", action="version", version=f"corral {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="show each guarantee next to what multiprocessing does")
    demo_sub = demo.add_subparsers(dest="scenario")
    for name, sc in sorted(_demo.all_scenarios().items()):
        p = demo_sub.add_parser(name, help=sc.summary)
        if sc.add_arguments is not None:
            sc.add_arguments(p)
    demo.set_defaults(func=_demo_main)

    bench = sub.add_parser("bench", help="run the benchmarks and print ratios against baselines")
    bench.add_argument("--full", action="store_true", help="more repetitions (slower)")
    bench.add_argument(
        "--only", choices=_bench.available(), help="run only this benchmark (default: all)"
    )
    bench.set_defaults(func=_bench_main)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("corral")
    except PackageNotFoundError:  # run from a source tree that was never installed
        import corral

        return corral.__version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    # Scenario defaults (e.g. --buyers) when running every scenario at once.
    if ns.command == "demo" and not ns.scenario:
        for sc in _demo.all_scenarios().values():
            if sc.add_arguments is not None:
                p = argparse.ArgumentParser()
                sc.add_arguments(p)
                for key, value in vars(p.parse_args([])).items():
                    setattr(ns, key, getattr(ns, key, value))
    code: int = ns.func(ns)
    return code


if __name__ == "__main__":
    sys.exit(main())
