"""ping-monitor's flags for the metrics endpoint and cardinality: -prom-token-file, -max-peer-series."""

from __future__ import annotations

from pathlib import Path

import pytest

from physarum.cli import ping_monitor
from physarum.cli.flags import UsageError
from physarum.monitor.ping_monitor import MAX_PEER_SERIES


def test_defaults_no_token_and_the_default_limit() -> None:
    _, monitor = ping_monitor.parse_args(["-ephemeral"], {})
    assert monitor.token is None
    assert monitor.max_peer_series == MAX_PEER_SERIES == 2000


def test_token_file_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "metrics.token"
    path.write_text("0123456789abcdef\n")
    _, monitor = ping_monitor.parse_args(
        ["-ephemeral", "-prom-token-file", str(path), "--max-peer-series=50"], {}
    )
    assert monitor.token == "0123456789abcdef"
    assert monitor.max_peer_series == 50


@pytest.mark.parametrize(
    ("content", "argv_tail", "message"),
    [
        (None, [], "bad -prom-token-file"),  # missing file
        (b"\n", [], "the token is empty"),
        (b"two words\n", [], "visible ASCII"),
        (b"ok", ["-max-peer-series", "0"], "-max-peer-series"),
        (b"ok", ["-max-peer-series", "many"], "-max-peer-series"),
    ],
)
def test_bad_values_are_usage_errors(
    tmp_path: Path, content: bytes | None, argv_tail: list[str], message: str
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        ping_monitor.parse_args(["-ephemeral", "-prom-token-file", str(path), *argv_tail], {})


def test_help_lists_the_flags() -> None:
    text = ping_monitor.build_parser().format_help()
    assert "-prom-token-file PATH" in text and "-max-peer-series N" in text
