"""Every Python block in the README runs as written, in a fresh interpreter."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("n", range(len(BLOCKS)))
def test_readme_block_runs(n: int, tmp_path: Path) -> None:
    if 'cluster="local"' in BLOCKS[n] and importlib.util.find_spec("distributed") is None:
        pytest.skip("a cluster block needs dask.distributed: pip install 'corral[distributed]'")
    script = tmp_path / f"block{n}.py"
    script.write_text(BLOCKS[n])
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"README block {n} failed:\n{BLOCKS[n]}\n{done.stderr}"
