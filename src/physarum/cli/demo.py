"""``physarum demo``: a local private network with a ping-monitor and 3 peers, metrics on :9100;
``physarum demo services``: the service layer's hello world (:mod:`physarum.cli.demo_services`).

See :data:`DESCRIPTION`. The key file lives in a temporary directory (mode 0700, the file 0600)
removed when the demo stops, so the printed join command carries no secret on its command line.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h11
import trio

from physarum.cli.flags import FlagParser, NodeOptions, UsageError, flag, seconds_flag
from physarum.cli.node import MonitorOptions, RunningNode, find_usage_error, run_main, run_node
from physarum.errors import DecodeError
from physarum.overlay.identity import KeyPair
from physarum.overlay.multiaddr import Multiaddr
from physarum.psk import generate_psk, write_key_file

PROG = "physarum demo"

DESCRIPTION = """\
A local private network in one process, on loopback: a ping-monitor node (the same code as the
ping-monitor binary) and 3 peers that join it with -bootstrap and a freshly generated key file. The
demo waits for the first pings, prints the metrics URL and the ping_rtt lines it serves, then stays
up for curl or Prometheus until Ctrl-C, and prints the command that joins one more peer from another
terminal."""

EPILOG = """\
The second demo, the service layer's hello world (PhysarumSM's): a registry, two allocators and a
client proxy on :4200 that starts a hello-world instance on the first request and says which
instance answered and why:  physarum demo services   (see physarum demo services -help)"""
LOOPBACK = Multiaddr("/ip4/127.0.0.1/tcp/0")


def build_parser() -> FlagParser:
    usage = f"{PROG} [flags]\n       {PROG} services [flags]   (the second demo: services by name)"
    parser = FlagParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, usage=usage)
    flag(
        parser,
        "prom-port",
        type=int,
        default=9100,
        metavar="PORT",
        help="metrics port (default 9100; 0: any free)",
    )
    flag(parser, "peers", type=int, default=3, metavar="N", help="peers besides the monitor (default 3)")
    seconds_flag(parser, "interval", default=1.0, help="seconds between pings")
    flag(parser, "once", action="store_true", help="exit after printing the first sample")
    seconds_flag(parser, "timeout", default=15.0, help="wait this long for the first pings")
    return parser


def demo_node_options(key_pair: KeyPair, psk: bytes, bootstrap: list[Multiaddr]) -> NodeOptions:
    """A demo node's options: loopback, any free port, the demo's key, joining through ``bootstrap``."""
    return NodeOptions(
        listen=[LOOPBACK],
        bootstrap=bootstrap,
        psk=psk,
        key_pair=key_pair,
        hostname=socket.gethostname(),
        debug="",
        psk_source="file (demo)",
    )


#: Largest body :func:`http_get` reads (a metrics page of 1,000 peers is well under it).
MAX_BODY = 64 << 20


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[bytes, bytes]
    """Lowercase names; a repeated header keeps its last value."""
    body: bytes


async def http_get(host: str, port: int, path: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
    """An HTTP/1.1 GET through h11: (status, body). Enough for our own metrics server.

    Raises:
        see :func:`http_request`.
    """
    response = await http_request(host, port, path, timeout=timeout)
    return response.status, response.body


async def http_request(host: str, port: int, path: str, *, timeout: float = 5.0) -> HttpResponse:
    """An HTTP/1.1 GET through h11 on a connection of its own, closed after the response.

    Raises:
        OSError, trio.TooSlowError, DecodeError (not an HTTP response, or a body over
        :data:`MAX_BODY`).
    """
    conn = h11.Connection(h11.CLIENT)
    status, body = 0, bytearray()
    headers: dict[bytes, bytes] = {}
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            request = h11.Request(
                method="GET", target=path, headers=[("Host", f"{host}:{port}"), ("Connection", "close")]
            )
            await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as e:
                    raise DecodeError(f"not an HTTP response: {e}") from None
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    headers = dict(event.headers)
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_BODY:
                        raise DecodeError(f"HTTP body over {MAX_BODY} bytes")
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
    if not status:
        raise DecodeError("the server closed the connection without an HTTP response")
    return HttpResponse(status, headers, bytes(body))


async def demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="physarum-demo-") as keydir:
        return await _demo(args, keydir)


async def _demo(args: argparse.Namespace, keydir: str) -> int:
    psk = generate_psk()
    if not 0 <= args.prom_port <= 65535:
        raise UsageError(f"--prom-port {args.prom_port} is out of range")
    if not 1 <= args.peers <= 100:
        raise UsageError("--peers must be between 1 and 100")
    async with trio.open_nursery() as nursery:
        stop = nursery.cancel_scope

        async def watch_signals(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                async for _ in signals:
                    stop.cancel()
                    return

        await nursery.start(watch_signals)
        monitor_opts = MonitorOptions(prom_host="127.0.0.1", prom_port=args.prom_port, interval=args.interval)
        try:
            monitor: RunningNode = await nursery.start(
                lambda task_status: run_node(
                    demo_node_options(KeyPair.generate(), psk, []),
                    monitor=monitor_opts,
                    out=io.StringIO(),
                    handle_signals=False,
                    task_status=task_status,
                )
            )
        except (UsageError, BaseExceptionGroup) as e:
            usage = find_usage_error(e)
            if usage is None:
                raise
            message = str(usage)
            if "metrics" in message:
                message += " (pick another port with --prom-port PORT, or 0 for any free port)"
            raise UsageError(message) from None
        assert monitor.metrics_server is not None and monitor.monitor is not None
        host, port = monitor.metrics_server.addresses[0]
        monitor_addr = monitor.host.addrs[0]
        print(
            f"physarum demo: a ping-monitor and {args.peers} peers on loopback, in a private network",
            flush=True,
        )
        print(f"ping-monitor  {monitor_addr}", flush=True)
        for i in range(1, args.peers + 1):
            peer: RunningNode = await nursery.start(
                lambda task_status: run_node(
                    demo_node_options(KeyPair.generate(), psk, [monitor_addr]),
                    out=io.StringIO(),
                    handle_signals=False,
                    task_status=task_status,
                )
            )
            print(f"peer {i}        {peer.host.addrs[0]}", flush=True)
        url = f"http://{host}:{port}/metrics"
        print(f"metrics       {url}", flush=True)

        stats = monitor.monitor.peers
        try:
            with trio.fail_after(args.timeout):
                # the second sample: the first one shares the new connection with identify
                while sum(1 for s in stats.values() if s.successes >= 2) < args.peers:
                    await trio.sleep(0.05)
        except trio.TooSlowError:
            print(f"{PROG}: the peers did not answer pings within {args.timeout:g} s", file=sys.stderr)
            return 1
        _, body = await http_get(host, port, "/metrics")
        lines = [line for line in body.decode().splitlines() if line.startswith("ping_rtt{")]
        print(f"\n$ curl -s {url} | grep ^ping_rtt", flush=True)
        for line in lines:
            print(line, flush=True)
        if args.once:
            stop.cancel()
            return 0
        key_file = os.path.join(keydir, "swarm.key")
        write_key_file(key_file, psk)
        print(
            "\nJoin one more peer from another terminal (it shows up in the metrics within a second):\n"
            f"  {_peer_command()} -psk-file {key_file} -bootstrap {monitor_addr}\n"
            f"Watch the RTTs:  watch -n1 'curl -s {url} | grep ^ping_'\n"
            "Ctrl-C stops the demo.",
            flush=True,
        )
        await trio.sleep_forever()
    return 0


def _peer_command() -> str:
    """How to run ``physarum peer`` installed beside this interpreter (a venv's bin/), else from PATH."""
    beside = Path(sys.executable).parent / "physarum"
    if beside.exists():
        try:
            return f"{beside.relative_to(Path.cwd())} peer"
        except ValueError:
            return f"{beside} peer"
    return "physarum peer"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``physarum demo [--prom-port PORT] [--peers N] [--once]`` and of
    ``physarum demo services ...`` (:func:`physarum.cli.demo_services.main`)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "services":
        from physarum.cli import demo_services

        return demo_services.main(argv[1:])
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )

    async def start() -> int:
        return await demo(build_parser().parse_args(list(argv)))

    return run_main(PROG, start)


if __name__ == "__main__":
    sys.exit(main())
