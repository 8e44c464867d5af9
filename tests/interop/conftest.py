from __future__ import annotations

from pathlib import Path

import pytest

from physarum.psk import generate_psk, write_key_file


@pytest.fixture
def psk_file(tmp_path: Path) -> Path:
    """A fresh private network's swarm key file, for physarum and its partners."""
    path = tmp_path / "swarm.key"
    write_key_file(path, generate_psk())
    return path
