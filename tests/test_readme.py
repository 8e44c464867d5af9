"""The README's Python examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)

# What each example prints, in order of the blocks: it must show the thing the text claims.
EXPECTED = [
    [r"\d+ us", r"b'hello'", r"/example/echo/1\.0\.0", r"/ipfs/ping/1\.0\.0"],
    [r"receptionist True \{'port': 7000\}", r"\['/ip4/127\.0\.0\.1/tcp/\d+'\]", r"\[True\]", "not joined: "],
    [r"scrape http://127\.0\.0\.1:\d+/metrics", r"\d+ us"],
]


def test_readme_has_the_examples() -> None:
    assert len(BLOCKS) == len(EXPECTED)


@pytest.mark.parametrize(("block", "expected"), list(zip(BLOCKS, EXPECTED, strict=False)))
def test_readme_python_example_runs(block: str, expected: list[str]) -> None:
    result = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for pattern in expected:
        assert re.search(pattern, result.stdout), (pattern, result.stdout)
