"""``peer -prom-listen-addr``: off by default, a metrics server without pinging when given."""

from __future__ import annotations

from pathlib import Path

import pytest

from physarum.cli import peer
from physarum.cli.flags import UsageError
from physarum.overlay.identity import KeyPair

BOOT = f"/ip4/127.0.0.1/tcp/4001/p2p/{KeyPair.generate().peer_id}"


def test_off_by_default() -> None:
    args, _ = peer.parse_args([], {})
    assert peer.metrics_options(args) is None


@pytest.mark.parametrize(
    ("addr", "host", "port"),
    [(":9102", None, 9102), ("127.0.0.1:9102", "127.0.0.1", 9102), ("[::1]:9102", "::1", 9102)],
)
def test_serves_metrics_without_pinging(addr: str, host: str | None, port: int) -> None:
    args, _ = peer.parse_args(["-prom-listen-addr", addr], {})
    options = peer.metrics_options(args)
    assert options is not None
    assert (options.prom_host, options.prom_port, options.ping, options.token) == (host, port, False, None)


def test_refused_with_a_subcommand() -> None:
    with pytest.raises(UsageError, match="-prom-listen-addr"):
        peer.parse_args(["-prom-listen-addr", ":9102", "ping", BOOT], {})


def test_bad_address_is_a_usage_error() -> None:
    args, _ = peer.parse_args(["-prom-listen-addr", "nope"], {})
    with pytest.raises(UsageError, match="-prom-listen-addr"):
        peer.metrics_options(args)


def test_help_documents_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        peer.parse_args(["-help"], {})
    out = capsys.readouterr().out
    assert "-prom-listen-addr" in out and "/sd" in out


def test_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "metrics.token"
    token_file.write_text("peer-token-0123\n")
    args, _ = peer.parse_args(["-prom-listen-addr", ":9102", "-prom-token-file", str(token_file)], {})
    options = peer.metrics_options(args)
    assert options is not None and options.token == "peer-token-0123"
    with pytest.raises(UsageError, match="needs -prom-listen-addr"):
        peer.parse_args(["-prom-token-file", str(token_file)], {})
    args, _ = peer.parse_args(["-prom-listen-addr", ":9102", "-prom-token-file", str(tmp_path / "missing")], {})
    with pytest.raises(UsageError, match="bad -prom-token-file"):
        peer.metrics_options(args)
