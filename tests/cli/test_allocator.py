"""``physarum allocator``'s command line: defaults, each flag, and bad input as one-line usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from physarum.cli import allocator as cli
from physarum.cli.flags import UsageError
from physarum.overlay.identity import KeyPair
from physarum.overlay.multiaddr import Multiaddr
from physarum.services.allocator import AllocatorOptions
from physarum.services.docker_runtime import DockerRuntime

BOOT = f"/ip4/127.0.0.1/tcp/4001/p2p/{KeyPair.generate().peer_id}"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def usage_error(argv: list[str]) -> str:
    with pytest.raises(UsageError) as info:
        cli.parse_args(argv, {})
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_defaults(home: Path) -> None:
    opts = cli.parse_args([], {})
    d = AllocatorOptions()
    assert opts.runtimes == ("process",) and opts.options.runtimes == ("process",)
    assert (opts.options.capacity, opts.options.idle_timeout, opts.options.ready_timeout) == (
        d.capacity, d.idle_timeout, d.ready_timeout,
    ) == (16, 60.0, 30.0)
    assert opts.options.port_range is None
    assert opts.options.instance_listen == ("/ip4/127.0.0.1/tcp/0",)
    assert (opts.metrics_host, opts.metrics_port) == ("127.0.0.1", 9101)  # PhysarumSM's port, on loopback
    assert opts.docker_host is None
    assert opts.node.listen == [Multiaddr("/ip4/0.0.0.0/tcp/0")] and opts.node.bootstrap == []
    assert opts.node.psk is None
    # a fresh identity each run, no key file
    assert cli.parse_args([], {}).node.key_pair.peer_id != opts.node.key_pair.peer_id
    assert list(home.iterdir()) == []


def test_each_flag(tmp_path: Path) -> None:
    opts = cli.parse_args(
        ["-capacity", "3", "-idle-timeout", "5", "--ready-timeout=2.5", "-port-range", "20000-20010",
         "-runtime", "docker", "-runtime", "process", "-runtime", "docker",
         "-instance-listen", "10.0.0.5:0", "-instance-listen", "/ip4/127.0.0.1/tcp/0",
         "-metrics-listen-addr", "127.0.0.1:0", "-docker-host", "unix:///run/podman.sock",
         "-bootstrap", BOOT, "-psk", "secret", "-keyfile", str(tmp_path / "alloc.key"), "-p2p-listen-addr", ":4005"],
        {},
    )
    o = opts.options
    assert (o.capacity, o.idle_timeout, o.ready_timeout, o.port_range) == (3, 5.0, 2.5, (20000, 20010))
    assert opts.runtimes == o.runtimes == ("docker", "process")  # in order of preference, once each
    assert o.instance_listen == ("/ip4/10.0.0.5/tcp/0", "/ip4/127.0.0.1/tcp/0")
    assert (opts.metrics_host, opts.metrics_port, opts.docker_host) == ("127.0.0.1", 0, "unix:///run/podman.sock")
    assert opts.node.bootstrap == [Multiaddr(BOOT)] and opts.node.psk is not None
    assert opts.node.listen == [Multiaddr("/ip4/0.0.0.0/tcp/4005")]
    assert (tmp_path / "alloc.key").is_file()
    # the rest keep their defaults
    assert (o.stop_timeout, o.cull_interval) == (AllocatorOptions().stop_timeout, AllocatorOptions().cull_interval)

    assert cli.parse_args(["-port-range", "8080"], {}).options.port_range == (8080, 8080)
    assert cli.parse_args(["-port-range", "1-65535"], {}).options.port_range == (1, 65535)
    assert cli.parse_args(["-runtime", "docker"], {}).runtimes == ("docker",)
    v6 = cli.parse_args(["-metrics-listen-addr", "[::1]:9200"], {})
    assert (v6.metrics_host, v6.metrics_port) == ("::1", 9200)
    assert cli.parse_args(["-metrics-listen-addr", "9300"], {}).metrics_port == 9300
    env = cli.parse_args([], {"P2P_BOOTSTRAPS": BOOT, "P2P_PSK": "secret"})
    assert env.node.bootstrap == [Multiaddr(BOOT)] and env.node.psk == opts.node.psk


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-port-range", "a-b"], "argument -port-range/--port-range: 'a-b' is not LOW-HIGH"),
        (["-port-range", "8000-"], "'8000-' is not LOW-HIGH"),
        (["-port-range", "1-2-3"], "'1-2-3' is not LOW-HIGH"),
        (["-port-range", ""], "'' is not LOW-HIGH"),
        (["-port-range", "9000-8000"], "'9000-8000': ports are 1-65535, LOW <= HIGH"),
        (["-port-range", "0-10"], "'0-10': ports are 1-65535"),
        (["-port-range", "1-65536"], "'1-65536': ports are 1-65535"),
        (["-port-range", "70000"], "'70000': ports are 1-65535"),
        (["-runtime", "kubernetes"], "argument -runtime/--runtime: invalid choice: 'kubernetes'"),
        (["-runtime"], "expected one argument"),
        (["-capacity", "0"], "argument -capacity/--capacity: '0' is not a positive number"),
        (["-capacity", "many"], "'many' is not a whole number"),
        (["-idle-timeout", "0"], "argument -idle-timeout/--idle-timeout: '0' is not a positive number"),
        (["-ready-timeout", "-1"], "-ready-timeout"),
        (["-metrics-listen-addr", "localhost"], "bad -metrics-listen-addr 'localhost': want HOST:PORT or :PORT"),
        (["-metrics-listen-addr", ":99999"], "bad -metrics-listen-addr ':99999': port 99999 is out of range"),
        (["-metrics-listen-addr", "::1:9101"], "write IPv6 addresses in brackets"),
        (["-metrics-listen-addr", "127.0.0.1:http"], "the port is not a number"),
        (["-instance-listen", "/ip4/127.0.0.1/udp/1"], "bad -instance-listen '/ip4/127.0.0.1/udp/1'"),
        (["-instance-listen", f"{BOOT}"], "a listen address has no /p2p/ part"),
        (["-instance-listen", "127.0.0.1"], "bad -instance-listen"),
        (["-bootstrap", "/ip4/127.0.0.1/tcp/4001"], "it must end in /p2p/<peer id>"),
        (["-frobnicate", "80"], "unrecognized arguments: -frobnicate 80"),
        (["extra"], "unrecognized arguments: extra"),
    ],
)
def test_usage_errors(argv: list[str], message: str) -> None:
    assert message in usage_error(argv)


def test_main_exits_2_on_bad_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-runtime", "vm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("physarum allocator: argument -runtime/--runtime: invalid choice: 'vm'")
    assert err.count("\n") == 1


def test_help_names_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.parse_args(["-help"], {})
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("-runtime", "-capacity", "-idle-timeout", "-ready-timeout", "-port-range", "-instance-listen",
                 "-metrics-listen-addr", "-docker-host", "-bootstrap", "-psk"):
        assert flag in text, flag
    assert "(default 16)" in text and "(default 60)" in text and "default 127.0.0.1:9101" in text


def test_metrics_on_every_interface_with_an_empty_host() -> None:
    # as ping-monitor's -prom-listen-addr :9100; the default stays on loopback
    opts = cli.parse_args(["-metrics-listen-addr", ":9101"], {})
    assert (opts.metrics_host, opts.metrics_port) == (None, 9101)
    assert cli.parse_args(["-metrics-listen-addr", "9102"], {}).metrics_host is None
    assert cli.parse_args([], {}).metrics_host == "127.0.0.1"
    # the printed URL can be fetched on this machine whatever was bound
    assert cli.metrics_url([("0.0.0.0", 9101), ("::", 9101)]) == "http://127.0.0.1:9101/metrics"
    assert cli.metrics_url([("::", 9101)]) == "http://[::1]:9101/metrics"
    assert cli.metrics_url([("::1", 9200)]) == "http://[::1]:9200/metrics"
    assert cli.metrics_url([("10.0.0.5", 9101)]) == "http://10.0.0.5:9101/metrics"


async def _get_metrics(host: str, port: int) -> bytes:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def test_metrics_served_on_every_interface(capsys: pytest.CaptureFixture[str]) -> None:
    opts = cli.parse_args(["-p2p-listen-addr", "127.0.0.1:0", "-metrics-listen-addr", ":0"], {})
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            _, _, port = await nursery.start(cli.run_allocator, opts)
            err = capsys.readouterr().err
            assert f"metrics at http://127.0.0.1:{port}/metrics (every interface)" in err, err
            # 127.0.0.2 answers only when the wildcard address is bound (a 127.0.0.1 bind refuses it)
            for host in ("127.0.0.1", "127.0.0.2"):
                answer = await _get_metrics(host, port)
                assert answer.startswith(b"HTTP/1.1 200 ") and b"physarum_allocator_instances 0.0" in answer
            nursery.cancel_scope.cancel()


async def test_metrics_on_loopback_refuse_other_addresses(capsys: pytest.CaptureFixture[str]) -> None:
    opts = cli.parse_args(["-p2p-listen-addr", "127.0.0.1:0", "-metrics-listen-addr", "127.0.0.1:0"], {})
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            _, _, port = await nursery.start(cli.run_allocator, opts)
            err = capsys.readouterr().err
            assert f"metrics at http://127.0.0.1:{port}/metrics\n" in err, err
            assert (await _get_metrics("127.0.0.1", port)).startswith(b"HTTP/1.1 200 ")
            with pytest.raises(OSError):
                await _get_metrics("127.0.0.2", port)
            nursery.cancel_scope.cancel()


def test_docker_owner_flag() -> None:
    assert cli.parse_args([], {}).docker_owner == cli.DOCKER_OWNER_DEFAULT == "physarum"
    opts = cli.parse_args(["-runtime", "docker", "-docker-owner", "edge-2", "-docker-host", "unix:///x.sock"], {})
    assert opts.docker_owner == "edge-2"
    runtime = cli.make_runtimes(opts)["docker"]
    assert isinstance(runtime, DockerRuntime)
    assert runtime.options.owner == "edge-2" and runtime.url == "unix:///x.sock"
    assert "-docker-owner must not be empty" in usage_error(["-docker-owner", " "])


def test_help_documents_the_docker_owner(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["-help"], {})
    text = " ".join(capsys.readouterr().out.split())
    assert "-docker-owner NAME" in text and "allocators sharing an engine need distinct owners (default physarum)" in text
