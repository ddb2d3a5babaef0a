"""The harness behind ``corral bench``.

Benchmarks live in ``corral/_tools/benchmarks/<name>_bench.py``, shipped with the
package, so that ``corral bench`` works after a plain ``pip install``. Each
defines ``run(quick: bool) -> list[Row]``: for every case, corral and its baselines
are measured side by side in the same run, several times, and the median kept. The
table reports each figure as a ratio against the case's baseline, because absolute
numbers on a shared 2-core machine mean little.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BENCH_DIR", "Row", "available", "find_benchmarks", "main", "median"]

# Where the benchmark files are: inside the package.
BENCH_DIR = Path(__file__).parent / "benchmarks"


@dataclass(frozen=True)
class Row:
    """One measured figure.

    ``higher_is_better`` says how to read the ratio: for a rate it is value/baseline,
    for a latency baseline/value, so a ratio above 1 always means corral is ahead.
    ``status`` says what happened instead of a value ("hung", "crashed", "lost 3");
    the table shows it in the value column, or "failed" when it is empty.
    """

    case: str
    impl: str
    value: float | None  # None: the implementation failed or hung (see status)
    unit: str
    baseline: float | None = None
    higher_is_better: bool = True
    note: str = ""
    status: str = ""  # only when value is None

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value


def median(fn: Callable[[], float], repeats: int) -> float:
    """The median of ``repeats`` calls of ``fn``, each returning one measurement."""
    return statistics.median(fn() for _ in range(repeats))


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def find_benchmarks() -> Path | None:
    """The directory of benchmark files (None if the installation lacks it)."""
    return BENCH_DIR if any(BENCH_DIR.glob("*_bench.py")) else None


def available() -> list[str]:
    """The names ``--only`` accepts: each ``<name>_bench.py``."""
    return sorted(p.name.removesuffix("_bench.py") for p in BENCH_DIR.glob("*_bench.py"))


def _format(rows: list[Row]) -> str:
    header = ("case", "implementation", "value", "unit", "ratio", "note")
    lines = [header]
    for r in rows:
        value = (r.status or "failed") if r.value is None else f"{r.value:.4g}"
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        lines.append((r.case, r.impl, value, r.unit, ratio, r.note))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def _run_isolated(path: Path, quick: bool) -> list[Row]:
    """Run one benchmark file in a fresh interpreter.

    A process that already ran other benchmarks is bigger (fork costs more), has
    threads and stray state; each file gets a clean one instead.
    """
    code = (
        "import json, sys, dataclasses, importlib.util\n"
        f"sys.path.insert(0, {str(path.parent)!r})\n"
        f"spec = importlib.util.spec_from_file_location({path.stem!r}, {str(path)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        f"sys.modules[{path.stem!r}] = module\n"
        "spec.loader.exec_module(module)\n"
        f"rows = module.run({quick!r})\n"
        "print('\\n' + json.dumps([dataclasses.asdict(r) for r in rows]))\n"
    )
    if __name__ != "__main__":  # the child must be able to import what run() pickles
        code = "if __name__ == '__main__':\n" + "".join(
            f"    {line}\n" for line in code.splitlines()
        )
    done = subprocess.run(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, check=False
    )
    if done.returncode != 0:
        print(f"corral bench: {path.name} failed with exit code {done.returncode}", file=sys.stderr)
        return []
    return [Row(**row) for row in json.loads(done.stdout.strip().splitlines()[-1])]


def _compile_corral() -> None:
    """Write corral's bytecode, as ``pip install`` does for an installed package.

    An editable install run with PYTHONDONTWRITEBYTECODE set (as on CI machines)
    would otherwise compile corral from source in every spawned child, and the
    start-up benchmarks would measure the compiler (about 7 ms a child here).
    """
    import compileall

    compileall.compile_dir(str(Path(__file__).parent.parent), quiet=1)


def main(quick: bool = True, only: str | None = None) -> int:
    bench_dir = find_benchmarks()
    if bench_dir is None:
        print(f"corral bench: no benchmarks in {BENCH_DIR}", file=sys.stderr)
        return 2
    pattern = f"{only}_bench.py" if only else "*_bench.py"
    files = sorted(bench_dir.glob(pattern))
    if not files:
        print(f"corral bench: nothing matches {pattern} in {bench_dir}", file=sys.stderr)
        return 2
    _compile_corral()
    rows: list[Row] = []
    for path in files:
        print(f"running {path.name} ({'quick' if quick else 'full'})...", flush=True)
        rows.extend(_run_isolated(path, quick))
    print(_format(rows))
    return 0
