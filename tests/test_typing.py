"""The pool's APIs are typed well enough that mypy catches mistakes with them.

``tests/typing/pool_mistakes.py`` holds deliberate mistakes, each line tagged
``# E: <fragment of the expected message>``, and correct uses, untagged. mypy
``--strict`` runs on it in a subprocess (once per session); each tagged line must be
flagged with its fragment, and no untagged line may be.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
MISTAKES = ROOT / "tests" / "typing" / "pool_mistakes.py"
MYPY_TIMEOUT = 300.0
TAG = re.compile(r"#\s*E:\s*(?P<fragment>.+?)\s*$")
ERROR = re.compile(r"^(?P<path>.+?):(?P<line>\d+): error: (?P<message>.*)$")

# Tagged mistakes that mypy does not catch yet, because corral's annotations are
# looser than the issue asks: bugs, expected to fail until fixed. None today.
KNOWN_UNFLAGGED: dict[str, str] = {}


def _tagged() -> list[Any]:
    params = []
    for n, text in enumerate(MISTAKES.read_text().splitlines(), 1):
        match = TAG.search(text)
        if match is None:
            continue
        code = text[: match.start()].strip()
        marks = []
        if code in KNOWN_UNFLAGGED:
            marks.append(pytest.mark.xfail(reason=KNOWN_UNFLAGGED[code], strict=True))
        params.append(pytest.param(n, code, match["fragment"], id=f"L{n}", marks=marks))
    return params


@functools.cache
def mypy_errors() -> dict[int, list[str]]:
    """mypy's error messages on the mistakes file, by line."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file=",  # the file on its own, not the project's settings
            "--cache-dir=/dev/null",
            "--no-error-summary",
            "--show-error-codes",
            str(MISTAKES),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=MYPY_TIMEOUT,
        check=False,
    )
    # 0: no errors, 1: errors found; anything else is mypy failing to run.
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    errors: dict[int, list[str]] = {}
    for text in proc.stdout.splitlines():
        match = ERROR.match(text)
        if match is None:
            continue
        assert Path(match["path"]).resolve() == MISTAKES, f"an error outside the file: {text}"
        errors.setdefault(int(match["line"]), []).append(match["message"])
    return errors


def test_the_file_has_mistakes_and_correct_lines() -> None:
    assert len(_tagged()) >= 10
    assert "def correct(" in MISTAKES.read_text()


@pytest.mark.parametrize(("line", "code", "fragment"), _tagged())
def test_each_mistake_is_flagged(line: int, code: str, fragment: str) -> None:
    messages = mypy_errors().get(line, [])
    assert messages, f"line {line} is not flagged: {code}"
    assert any(fragment in m for m in messages), (line, code, fragment, messages)


def test_no_correct_line_is_flagged() -> None:
    tagged = {param.values[0] for param in _tagged()}
    wrong = {n: m for n, m in mypy_errors().items() if n not in tagged}
    assert not wrong, f"flagged, though not tagged as mistakes: {wrong}"
