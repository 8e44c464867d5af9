"""The fuzz tests' shared pool of harness runs, and their figures printed at the end of the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._runner import FuzzPool

_pool: FuzzPool | None = None


@pytest.fixture(scope="session")
def fuzz_pool(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzPool]:
    """The pool, which starts every harness this session selected when the first test asks."""
    global _pool
    selected = [
        item.callspec.params["harness"]
        for item in request.session.items
        if hasattr(item, "callspec") and "harness" in item.callspec.params and item.get_closest_marker("fuzz")
    ]
    _pool = FuzzPool(selected, tmp_path_factory.mktemp("fuzz"))
    yield _pool
    _pool.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _pool is None or not _pool.runs:
        return
    tr = terminalreporter
    tr.section(f"fuzzing: {_pool.seconds} s per harness, {_pool.jobs} at a time")
    tr.write_line(
        f"{'harness':<12} {'exit':>4} {'executions':>11} {'exec/s':>7} {'cov':>5} {'ft':>6} {'corpus':>6} {'new':>5}"
    )
    for run in sorted(_pool.runs, key=lambda r: r.name):
        s = run.stats
        tr.write_line(
            f"{run.name:<12} {run.returncode:>4} {s.get('number_of_executed_units', 0):>11} "
            f"{s.get('average_exec_per_sec', 0):>7} {s.get('cov', 0):>5} {s.get('ft', 0):>6} "
            f"{s.get('corpus', 0):>6} {s.get('new_units_added', 0):>5}"
        )
