"""``physarum proxy``'s command line: PhysarumSM's two argument orders, and bad input as one-line usage errors."""

from __future__ import annotations

import pytest

from physarum.cli import proxy
from physarum.cli.flags import UsageError


def test_client_and_sidecar_modes() -> None:
    client = proxy.parse_args(["-soft-rtt-ms", "5", "-hard-rtt-ms", "50", "4200"], {})
    assert (client.port, client.service) == (4200, None)
    assert (client.selector.soft_rtt_ms, client.selector.hard_rtt_ms) == (5, 50)
    sidecar = proxy.parse_args(["4200", "hello", "127.0.0.1:8080", "9102"], {})
    assert (sidecar.service, sidecar.service_host, sidecar.service_port, sidecar.metrics_port) == (
        "hello",
        "127.0.0.1",
        8080,
        9102,
    )
    assert proxy.parse_args(["0", "hello", ":8080", "0"], {}).service_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["x"], "bad PORT 'x'"),
        (["70000"], "bad PORT '70000'"),
        (["4200", "a/b", "127.0.0.1:8080", "9102"], "bad SERVICE"),
        (["4200", "hello", "127.0.0.1:8080", "nope"], "bad METRICS_PORT"),
        (["4200", "hello"], "expected PORT"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        proxy.parse_args(argv, {})
    assert "\n" not in str(info.value)
