"""Helpers the test packages share about processes."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts): how the tests tell the
    leftovers of a killed run (namespaces, containers named after its pid) from a live run's."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
