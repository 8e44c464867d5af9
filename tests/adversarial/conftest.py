from __future__ import annotations

from pathlib import Path

import pytest

from tests.adversarial._harness import generate_key_file


@pytest.fixture(scope="session")
def swarm_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One private network for every scenario (each has its own monitor and peers)."""
    return generate_key_file(tmp_path_factory.mktemp("adversarial") / "swarm.key")
