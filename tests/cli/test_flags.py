"""Parsing the binaries' flags: Go-style and double-dash spellings, env vars, defaults, and bad input."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
from pathlib import Path

import pytest

from physarum.cli import allocator, bootstrap, peer, ping_monitor
from physarum.cli.flags import (
    NodeOptions,
    UsageError,
    normalize_bool_flags,
    parse_listen_addr,
    split_host_port,
)
from physarum.cli.node import MonitorOptions, start_dht
from physarum.dht.client import DEFAULT_QUERY_TIMEOUT
from physarum.overlay.host import open_host
from physarum.overlay.identity import KeyPair, save_key_pair
from physarum.overlay.multiaddr import Multiaddr
from physarum.psk import generate_psk, write_key_file

PEER_ID = "12D3KooWQrEbutuv991JegVdQhzqv6v3MKjckZRtkdKnKqvHuNVM"
BOOT1 = f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER_ID}"
BOOT2 = "/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWSJotzjJxh4XrWR5bvAQ2mPmgpvTjDXzSX4RR3nBQJsHS"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Key files default to ~/...: keep them in a temporary home."""
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def pm(*argv: str, env: dict[str, str] | None = None) -> tuple[NodeOptions, MonitorOptions]:
    return ping_monitor.parse_args(list(argv), env or {})


# -- spellings --


@pytest.mark.parametrize(
    "argv",
    [
        [
            "-p2p-listen-addr",
            ":4002",
            "-prom-listen-addr",
            ":9200",
            "-hostname",
            "edge",
            "-ephemeral",
            "-debug",
        ],
        [
            "--p2p-listen-addr",
            ":4002",
            "--prom-listen-addr",
            ":9200",
            "--hostname",
            "edge",
            "--ephemeral",
            "--debug",
        ],
        [
            "-p2p-listen-addr=:4002",
            "-prom-listen-addr=:9200",
            "-hostname=edge",
            "-ephemeral=true",
            "-debug=1",
        ],
        [
            "--p2p-listen-addr=:4002",
            "--prom-listen-addr=:9200",
            "--hostname=edge",
            "--ephemeral=T",
            "--debug=TRUE",
        ],
    ],
    ids=["go", "double-dash", "go-equals", "double-dash-equals"],
)
def test_both_spellings(argv: list[str], home: Path) -> None:
    opts, monitor = ping_monitor.parse_args(argv, {})
    assert opts.listen == [Multiaddr("/ip4/0.0.0.0/tcp/4002")]
    assert (monitor.prom_host, monitor.prom_port) == (None, 9200)
    assert opts.hostname == "edge"
    assert opts.debug == "physarum"
    assert not (home / ".privKeyPing").exists()  # -ephemeral


def test_defaults_match_physarumsm(home: Path) -> None:
    opts, monitor = ping_monitor.parse_args([], {})
    assert opts.listen == [Multiaddr("/ip4/0.0.0.0/tcp/4001")]
    assert (monitor.prom_host, monitor.prom_port) == (None, 9100)
    assert (monitor.interval, monitor.timeout, monitor.expiry) == (1.0, 5.0, 600.0)
    assert opts.bootstrap == []
    assert opts.psk is None and opts.psk_source == "none"
    assert opts.hostname == socket.gethostname()
    assert opts.debug == ""
    key = home / ".privKeyPing"
    assert key.exists()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again, _ = ping_monitor.parse_args([], {})
    assert again.key_pair.peer_id == opts.key_pair.peer_id  # the identity persists


def test_keyfile_flag_loads_existing_key(tmp_path: Path) -> None:
    pair = KeyPair.generate()
    save_key_pair(tmp_path / "k", pair)
    opts, _ = pm("-keyfile", str(tmp_path / "k"))
    assert opts.key_pair.peer_id == pair.peer_id
    opts, _ = pm("--keyfile=" + str(tmp_path / "new"))
    assert (tmp_path / "new").exists()


def test_bootstrap_and_peer_key_defaults(home: Path) -> None:
    bootstrap.parse_args([], {})
    assert (home / ".privKeyBootstrap").exists()
    peer.parse_args([], {})
    assert sorted(p.name for p in home.iterdir()) == [".privKeyBootstrap"]  # peer: fresh identity


def test_debug_false_and_bool_normalisation() -> None:
    opts, _ = pm("-ephemeral", "-debug=false")
    assert opts.debug == ""
    assert normalize_bool_flags(["-debug=0", "--ephemeral=t", "-psk=x", "--", "-debug=1"]) == [
        "-ephemeral",
        "-psk=x",
        "--",
        "-debug=1",
    ]


# -- addresses --


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":4001", "/ip4/0.0.0.0/tcp/4001"),
        ("4001", "/ip4/0.0.0.0/tcp/4001"),
        ("127.0.0.1:4001", "/ip4/127.0.0.1/tcp/4001"),
        ("[::1]:4001", "/ip6/::1/tcp/4001"),
        ("[::]:0", "/ip6/::/tcp/0"),
        ("localhost:4001", "/dns/localhost/tcp/4001"),
        ("/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/tcp/4001"),
        ("/ip6/::/tcp/4001", "/ip6/::/tcp/4001"),
    ],
)
def test_listen_addr_forms(text: str, expected: str) -> None:
    assert parse_listen_addr(text) == Multiaddr(expected)


def test_listen_addr_repeatable() -> None:
    opts, _ = pm("-ephemeral", "-p2p-listen-addr", ":4001", "--p2p-listen-addr", "/ip6/::/tcp/4001")
    assert opts.listen == [Multiaddr("/ip4/0.0.0.0/tcp/4001"), Multiaddr("/ip6/::/tcp/4001")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [(":9100", ("", 9100)), ("9100", ("", 9100)), ("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:9", ("::1", 9))],
)
def test_prom_listen_addr(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text, "x") == expected


def test_prom_listen_addr_host() -> None:
    _, monitor = pm("-ephemeral", "-prom-listen-addr", "127.0.0.1:9300")
    assert (monitor.prom_host, monitor.prom_port) == ("127.0.0.1", 9300)


def test_bootstrap_repeatable_and_env_default() -> None:
    opts, _ = pm("-ephemeral", "-bootstrap", BOOT1, "--bootstrap", BOOT2)
    assert opts.bootstrap == [Multiaddr(BOOT1), Multiaddr(BOOT2)]
    opts, _ = pm("-ephemeral", env={"P2P_BOOTSTRAPS": f"  {BOOT1}   {BOOT2}\n{BOOT1}"})
    assert opts.bootstrap == [Multiaddr(BOOT1), Multiaddr(BOOT2)]  # duplicates dropped
    opts, _ = pm("-ephemeral", "-bootstrap", BOOT2, env={"P2P_BOOTSTRAPS": BOOT1})
    assert opts.bootstrap == [Multiaddr(BOOT2)]  # the flag wins


# -- pre-shared keys --


def test_psk_passphrase_is_sha3_256() -> None:
    opts, _ = pm("-ephemeral", "-psk", "correct horse")
    assert opts.psk == hashlib.sha3_256(b"correct horse").digest()
    opts2, _ = pm("-ephemeral", "--psk=correct horse")
    assert opts2.psk == opts.psk


def test_psk_env_default_and_flag_wins() -> None:
    opts, _ = pm("-ephemeral", env={"P2P_PSK": "from-env"})
    assert opts.psk == hashlib.sha3_256(b"from-env").digest()
    opts, _ = pm("-ephemeral", "-psk", "flag", env={"P2P_PSK": "from-env"})
    assert opts.psk == hashlib.sha3_256(b"flag").digest()


def test_empty_psk_is_random_and_empty_env_is_none() -> None:
    a, _ = pm("-ephemeral", "-psk", "")
    b, _ = pm("-ephemeral", "-psk=")
    assert a.psk is not None and b.psk is not None and len(a.psk) == 32
    assert a.psk != b.psk and a.psk != hashlib.sha3_256(b"").digest()
    assert a.psk_source == "random"
    c, _ = pm("-ephemeral", env={"P2P_PSK": ""})
    assert c.psk is None


def test_psk_file(tmp_path: Path) -> None:
    key = generate_psk()
    write_key_file(tmp_path / "swarm.key", key)
    opts, _ = pm("-ephemeral", "--psk-file", str(tmp_path / "swarm.key"), env={"P2P_PSK": "ignored"})
    assert opts.psk == key
    opts, _ = pm("-ephemeral", f"-psk-file={tmp_path / 'swarm.key'}")
    assert opts.psk == key


# -- peer subcommands --


def test_peer_ping_flags_before_and_after_the_subcommand() -> None:
    args, opts = peer.parse_args(["-psk", "x", "ping", BOOT1, "-count", "5", "--timeout=2"], {})
    assert args.command == "ping" and args.count == 5 and args.timeout == 2.0
    assert args.target == Multiaddr(BOOT1)
    assert opts.psk == hashlib.sha3_256(b"x").digest()
    args, opts = peer.parse_args(["ping", BOOT1, "-psk", "y", "--count", "2"], {})
    assert args.count == 2 and opts.psk == hashlib.sha3_256(b"y").digest()
    args, opts = peer.parse_args(["-bootstrap", BOOT2], {})
    assert args.command is None and opts.bootstrap == [Multiaddr(BOOT2)]


def test_peer_find_and_publish_flags(tmp_path: Path) -> None:
    args, opts = peer.parse_args(["find", PEER_ID, "-bootstrap", BOOT1, "-timeout", "5"], {})
    assert args.command == "find" and args.timeout == 5.0
    assert str(args.peer_id) == PEER_ID and opts.bootstrap == [Multiaddr(BOOT1)]
    args, _ = peer.parse_args(["-bootstrap", BOOT1, "find", "receptionist"], {})
    assert args.target == "receptionist" and args.peer_id is None
    args, opts = peer.parse_args(
        [
            "publish",
            "receptionist",
            "-data",
            '{"port": 8080}',
            "--endpoint",
            "/ip4/127.0.0.1/tcp/8080",
            "-endpoint=/dns/edge.example/tcp/80",
            "-ttl",
            "600",
        ],
        {"P2P_BOOTSTRAPS": BOOT2},
    )
    assert args.command == "publish" and args.name == "receptionist" and args.data == {"port": 8080}
    assert [str(e) for e in args.endpoint] == ["/ip4/127.0.0.1/tcp/8080", "/dns/edge.example/tcp/80"]
    assert args.ttl == 600.0 and opts.bootstrap == [Multiaddr(BOOT2)]
    # A saved routing table can stand in for -bootstrap.
    state = tmp_path / "dht.json"
    state.write_text("{}")
    args, opts = peer.parse_args(["find", "x", "-dht-state", str(state)], {})
    assert opts.dht_state == str(state) and opts.bootstrap == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["find", PEER_ID], "find: give -bootstrap MADDR"),
        (["publish", "x", "-data", "{}"], "publish: give -bootstrap MADDR"),
        (["publish", "x", "-bootstrap", BOOT1], "required: -data"),
        (["publish", "-bootstrap", BOOT1], "required: NAME"),
        (["publish", "x", "-data", "{oops", "-bootstrap", BOOT1], "publish: -data is not JSON"),
        (["publish", "x", "-data", "[1, 2]", "-bootstrap", BOOT1], "-data must be a JSON object, not a list"),
        (["publish", "x", "-data", "{}", "-endpoint", "nope", "-bootstrap", BOOT1], "bad -endpoint 'nope'"),
        (
            ["publish", "x", "-data", "{}", "-ttl", "1e9", "-bootstrap", BOOT1],
            r"-ttl 1e\+09 is over the limit",
        ),
        (["publish", "x", "-data", "{}", "-ttl", "0", "-bootstrap", BOOT1], "-ttl"),
        (["publish", "x", "-data", '{"a": "' + "y" * 9000 + '"}', "-bootstrap", BOOT1], "exceeds"),
        (["publish", PEER_ID, "-data", "{}", "-bootstrap", BOOT1], "is signed by"),
        (["find", "x", "-bootstrap", BOOT1, "-dht-state", "/nonexistent/dir/state"], "does not exist"),
    ],
)
def test_peer_find_and_publish_bad_input(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        peer.parse_args(argv, {})
    assert "\n" not in str(info.value)


def test_dht_state_flag_on_every_binary(tmp_path: Path) -> None:
    state = str(tmp_path / "state.json")
    assert pm("-ephemeral", "-dht-state", state)[0].dht_state == state
    assert bootstrap.parse_args(["-ephemeral", "--dht-state", state], {}).dht_state == state
    assert peer.parse_args(["-dht-state", state], {})[1].dht_state == state
    assert pm("-ephemeral")[0].dht_state is None
    with pytest.raises(UsageError, match="is a directory"):
        pm("-ephemeral", "-dht-state", str(tmp_path))


async def test_dht_query_timeout_reaches_the_dht() -> None:
    opts = bootstrap.parse_args(["-ephemeral", "-dht-query-timeout", "12.5"], {})
    assert opts.dht_query_timeout == 12.5
    assert peer.parse_args(["-dht-query-timeout", "7"], {})[1].dht_query_timeout == 7
    assert pm("-ephemeral")[0].dht_query_timeout == DEFAULT_QUERY_TIMEOUT
    with pytest.raises(UsageError):
        bootstrap.parse_args(["-ephemeral", "-dht-query-timeout", "0"], {})
    async with open_host(opts.key_pair) as host:
        assert start_dht(host, opts).query_timeout == 12.5


# -- bad input: one line, exit status 2 --


def bad_cases(tmp: Path) -> list[tuple[str, list[str]]]:
    (tmp / "garbage").write_bytes(b"not a key")
    (tmp / "dir").mkdir(exist_ok=True)
    return [
        ("unknown flag", ["-ephemeral", "-bogus"]),
        ("missing value", ["-ephemeral", "-psk"]),
        ("listen not an address", ["-ephemeral", "-p2p-listen-addr", "nonsense"]),
        ("listen bad multiaddr", ["-ephemeral", "-p2p-listen-addr", "/ip4/1.2.3/tcp/1"]),
        ("listen not tcp", ["-ephemeral", "-p2p-listen-addr", "/ip4/1.2.3.4/udp/1"]),
        ("listen port", ["-ephemeral", "-p2p-listen-addr", ":70000"]),
        ("bootstrap without id", ["-ephemeral", "-bootstrap", "/ip4/127.0.0.1/tcp/4001"]),
        ("bootstrap bad", ["-ephemeral", "-bootstrap", "/ip4/127.0.0.1/tcp/4001/p2p/notapeerid"]),
        ("prom port", ["-ephemeral", "-prom-listen-addr", ":99999"]),
        ("prom no port", ["-ephemeral", "-prom-listen-addr", "localhost"]),
        ("keyfile garbage", ["-keyfile", str(tmp / "garbage")]),
        ("keyfile directory", ["-keyfile", str(tmp / "dir")]),
        ("keyfile cannot create", ["-keyfile", str(tmp / "missing" / "key")]),
        ("psk-file missing", ["-ephemeral", "--psk-file", str(tmp / "nope")]),
        ("psk-file garbage", ["-ephemeral", "--psk-file", str(tmp / "garbage")]),
        ("psk and psk-file", ["-ephemeral", "-psk", "a", "--psk-file", str(tmp / "garbage")]),
        ("bad boolean", ["-ephemeral", "-debug=maybe"]),
        ("bad interval", ["-ephemeral", "-ping-interval", "0"]),
        ("positional", ["-ephemeral", "extra"]),
    ]


def test_every_bad_input_is_a_usage_error(tmp_path: Path) -> None:
    for name, argv in bad_cases(tmp_path):
        with pytest.raises(UsageError) as info:
            ping_monitor.parse_args(argv, {})
        message = str(info.value)
        assert message and "\n" not in message, name


def test_bad_env_bootstrap_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="P2P_BOOTSTRAPS"):
        pm("-ephemeral", env={"P2P_BOOTSTRAPS": "/ip4/1.2.3.4/tcp/1"})


def test_main_prints_one_line_and_returns_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, argv in bad_cases(tmp_path):
        assert ping_monitor.main(argv) == 2, name
        captured = capsys.readouterr()
        assert captured.out == "", name
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("ping-monitor: "), (name, captured.err)
        assert "Traceback" not in captured.err


def test_peer_and_bootstrap_main_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert peer.main(["find", PEER_ID]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "peer: find: give -bootstrap MADDR (or $P2P_BOOTSTRAPS) to join the network"
    ]
    assert peer.main(["ping"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert peer.main(["ping", BOOT1, "-count", "0"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert bootstrap.main(["-p2p-listen-addr", "x:y"]) == 2
    assert capsys.readouterr().err.startswith("bootstrap: bad -p2p-listen-addr 'x:y'")


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["-help"], ["--help"], ["-h"]):
        with pytest.raises(SystemExit) as info:
            ping_monitor.build_parser().parse_args(argv)
        assert info.value.code == 0
    out = capsys.readouterr().out
    assert "-p2p-listen-addr" in out and "-prom-listen-addr" in out and "P2P_BOOTSTRAPS" in out


def test_keyfile_is_not_world_readable_even_with_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        pm("-keyfile", str(tmp_path / "k"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_announce_flag() -> None:
    opts = bootstrap.parse_args(
        ["-announce", "/ip4/203.0.113.7/tcp/4001", "-announce", "/dns/a.example/tcp/1"], {}
    )
    assert [str(a) for a in opts.announce] == ["/ip4/203.0.113.7/tcp/4001", "/dns/a.example/tcp/1"]
    for bad, reason in (
        ("/ip4/0.0.0.0/tcp/4001", "concrete address"),
        ("/ip4/203.0.113.7/tcp/0", "concrete address"),
        (f"/ip4/203.0.113.7/tcp/1/p2p/{PEER_ID}", "leave out /p2p/"),
        ("/ip4/203.0.113.7/udp/1", "want /ip4"),
        ("nonsense", "bad -announce"),
    ):
        with pytest.raises(UsageError, match=reason):
            bootstrap.parse_args(["-announce", bad], {})


def test_debug_all_and_psk_in_argv() -> None:
    assert bootstrap.parse_args(["-ephemeral"], {}).debug == ""
    assert bootstrap.parse_args(["-ephemeral", "-debug"], {}).debug == "physarum"
    assert bootstrap.parse_args(["-ephemeral", "-debug=all"], {}).debug == "all"
    assert bootstrap.parse_args(["-ephemeral", "-debug=false"], {}).debug == ""
    assert bootstrap.parse_args(["-ephemeral", "-psk", "x"], {}).psk_in_argv
    assert not bootstrap.parse_args(["-ephemeral"], {"P2P_PSK": "x"}).psk_in_argv


def test_hostname_is_a_monitor_flag() -> None:
    opts, _ = pm("-ephemeral", "-hostname", "edge-7")
    assert opts.hostname == "edge-7"
    with pytest.raises(UsageError, match="unrecognized arguments: -hostname"):
        bootstrap.parse_args(["-hostname", "x"], {})


def test_peer_ping_takes_a_peer_id() -> None:
    args, _ = peer.parse_args(["ping", PEER_ID, "-bootstrap", BOOT1], {})
    assert str(args.peer_id) == PEER_ID
    with pytest.raises(UsageError, match=r"give -bootstrap MADDR .* to find a peer id"):
        peer.parse_args(["ping", PEER_ID], {})
    args, _ = peer.parse_args(["ping", BOOT1], {})
    assert args.peer_id is None and str(args.target) == BOOT1


def test_single_dash_prefixes_are_not_abbreviations() -> None:
    # argparse 3.11 matched "-port" to "-port-range" despite allow_abbrev=False
    with pytest.raises(UsageError, match=r"^unrecognized arguments: -port 80 \(see physarum allocator -help\)$"):
        allocator.parse_args(["-port", "80"], {})
    with pytest.raises(UsageError, match="unrecognized arguments: -dht-query 7"):
        peer.parse_args(["ping", BOOT1, "-dht-query", "7"], {})
    with pytest.raises(UsageError, match="unrecognized arguments: -dht-query=7"):
        peer.parse_args(["-dht-query=7", "ping", BOOT1], {})
    with pytest.raises(UsageError, match="unrecognized arguments: --dht-query 7"):
        bootstrap.parse_args(["-ephemeral", "--dht-query", "7"], {})
    # ambiguous prefixes are unknown too, not "ambiguous option"
    with pytest.raises(UsageError, match="unrecognized arguments: -conn 7"):
        pm("-ephemeral", "-conn", "7")
    # whole names still work in every spelling
    assert peer.parse_args(["ping", BOOT1, "-dht-query-timeout", "7"], {})[1].dht_query_timeout == 7
    assert allocator.parse_args(["-port-range=80"], {}).options.port_range == (80, 80)
