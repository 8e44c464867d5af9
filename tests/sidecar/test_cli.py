"""``sidecar``'s flags: the API address, the token and the loopback rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from physarum.cli.flags import UsageError
from physarum.cli.sidecar import API_DEFAULT, ENV_TOKEN, parse_args

NODE = ["-psk", "pass"]


def test_defaults() -> None:
    args, _ = parse_args(NODE, {})
    assert (args.api, args.api_host, args.api_port, args.token) == (API_DEFAULT, "127.0.0.1", 9081, None)


@pytest.mark.parametrize("api", ["127.0.0.1:0", "127.0.0.2:9081", "[::1]:9081", "localhost:9081"])
def test_loopback_needs_no_token(api: str) -> None:
    args, _ = parse_args([*NODE, "-api", api], {})
    assert args.token is None


@pytest.mark.parametrize("api", ["0.0.0.0:9081", ":9081", "10.1.2.3:9081", "[::]:9081", "sidecar.local:9081"])
def test_anything_else_needs_a_token(api: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not loopback"):
        parse_args([*NODE, "-api", api], {})
    token = tmp_path / "token"
    token.write_text("  abc-123\n")
    assert parse_args([*NODE, "-api", api, "-api-token-file", str(token)], {})[0].token == "abc-123"
    assert parse_args([*NODE, "-api", api], {ENV_TOKEN: "from-env"})[0].token == "from-env"


def test_the_token_file_wins_over_the_environment(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("file")
    args, _ = parse_args([*NODE, "-api-token-file", str(token)], {ENV_TOKEN: "env"})
    assert args.token == "file"


@pytest.mark.parametrize("content", ["", "   \n", "two words", "x" * 5000])
def test_bad_tokens(content: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(content)
    with pytest.raises(UsageError, match="bad API token"):
        parse_args([*NODE, "-api-token-file", str(token)], {})


def test_missing_token_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read -api-token-file"):
        parse_args([*NODE, "-api-token-file", str(tmp_path / "none")], {})


@pytest.mark.parametrize("api", ["nope", "127.0.0.1:99999", "::1:80"])
def test_bad_api_address(api: str) -> None:
    with pytest.raises(UsageError):
        parse_args([*NODE, "-api", api], {})
