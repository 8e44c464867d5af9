"""``proxy``: PhysarumSM's HTTP proxy, in its two modes (issue 14, first step).

* ``proxy [flags] PORT``: client mode. Serves HTTP/1.1 on 127.0.0.1:PORT; ``/SERVICE/PATH`` goes to
  the instance of SERVICE with the lowest RTT from this node, as ``/PATH``. A service with no
  instance is looked up in the registry (404 if it has no entry) and started by the nearest
  allocator; one whose best instance misses its soft RTT limit gets a nearer one in the background.
* ``proxy [flags] PORT SERVICE HOST:PORT METRICS_PORT``: sidecar mode, beside an instance. Provides
  SERVICE on the DHT (again after reconnects), forwards requests from client proxies to the service
  at HOST:PORT, and serves the seconds since the latest request on 127.0.0.1:METRICS_PORT
  (PhysarumSM's allocator culls idle instances with it). PORT is unused in this mode and kept for
  PhysarumSM's argument order (its sidecar also took the client proxy's port).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import trio

from physarum.cli import flags
from physarum.cli.flags import NodeOptions, UsageError
from physarum.cli.node import RunningNode, run_main, setup_logging, start_node
from physarum.services.allocator import AllocatorClient
from physarum.services.discovery import Advertiser
from physarum.services.network import OverlayNetwork
from physarum.services.placement import Placement
from physarum.services.proxy import (
    PROTOCOL_ID,
    ClientProxy,
    IdleReporter,
    ProxyOptions,
    Sidecar,
    sidecar_limits,
)
from physarum.services.registry import RegistryClient
from physarum.services.selection import Selector, SelectorOptions

PROG = "proxy"
LISTEN_DEFAULT = ":0"

DESCRIPTION = """\
PhysarumSM's HTTP proxy. Client mode (PORT): serves http://127.0.0.1:PORT/SERVICE/PATH from the
instance of SERVICE with the lowest RTT. Sidecar mode (PORT SERVICE HOST:PORT METRICS_PORT): beside an
instance, provides SERVICE on the DHT and forwards requests to HOST:PORT."""

EPILOG = """\
Flags take one dash (Go style, as PhysarumSM) or two. Environment: P2P_PSK, P2P_BOOTSTRAPS.
Proxy errors are one line of text/plain: 400 malformed request, 404 no service in the path or no
such service in the registry, 503 no instance found or allocated, 504 the instance timed out,
502 the instance failed. Responses carry 'physarum-instance: PEER_ID; rtt-ms=RTT' (who answered)."""


@dataclass
class ProxyArgs:
    node: NodeOptions
    port: int
    service: str | None
    """None: client mode."""
    service_host: str = "127.0.0.1"
    service_port: int = 0
    metrics_port: int = 0
    selector: SelectorOptions = field(default_factory=SelectorOptions)


def build_parser() -> flags.FlagParser:
    parser = flags.FlagParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    flags.add_node_flags(parser, listen_default=LISTEN_DEFAULT, keyfile_default=None)
    group = parser.add_argument_group("selection (client mode)")
    flags.flag(group, "soft-rtt-ms", type=flags.positive_float, default=None, metavar="MS",
         help="the best instance is 'not close enough' over MS milliseconds (default: no limit)")
    flags.flag(group, "hard-rtt-ms", type=flags.positive_float, default=None, metavar="MS",
         help="never use an instance over MS milliseconds (default: no limit)")
    flags.flag(group, "ping-budget", type=flags.positive_float, default=SelectorOptions.ping_budget, metavar="SECONDS",
         help=f"one budget for pinging all instances of a service (default {SelectorOptions.ping_budget:g})")
    parser.add_argument("args", nargs="+", metavar="PORT [SERVICE HOST:PORT METRICS_PORT]")
    return parser


def parse_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> ProxyArgs:
    """Parse proxy's command line.

    Raises:
        UsageError: bad flags or values, a wrong number of arguments, unusable key files.
    """
    args: argparse.Namespace = build_parser().parse_args(flags.normalize_bool_flags(argv))
    node = flags.node_options(args, listen_default=LISTEN_DEFAULT, keyfile_default=None, env=env)
    selector = SelectorOptions(soft_rtt_ms=args.soft_rtt_ms, hard_rtt_ms=args.hard_rtt_ms,
                               ping_budget=args.ping_budget)
    positional: list[str] = args.args
    if len(positional) == 1:
        return ProxyArgs(node, flags.parse_port(positional[0], "PORT"), None, selector=selector)
    if len(positional) == 4:
        node = dataclasses.replace(node, limits=sidecar_limits(node.limits))
        port, service, where, metrics = positional
        if not service or "/" in service:
            raise UsageError(f"bad SERVICE {service!r}: a name without '/'")
        host, service_port = flags.split_host_port(where, "HOST:PORT")
        return ProxyArgs(node, flags.parse_port(port, "PORT"), service, host or "127.0.0.1", service_port,
                         flags.parse_port(metrics, "METRICS_PORT"), selector)
    raise UsageError("expected PORT (client mode) or PORT SERVICE HOST:PORT METRICS_PORT (sidecar mode)")


async def run_proxy(
    opts: ProxyArgs, *, task_status: trio.TaskStatus[tuple[RunningNode, int]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the node and the proxy of ``opts``' mode until SIGINT/SIGTERM; ``nursery.start`` returns
    the node and the bound port (client mode: the proxy's; sidecar mode: the metrics port).

    Raises:
        UsageError: an address cannot be bound.
    """
    async with trio.open_nursery() as nursery:

        running = await start_node(nursery, opts.node)
        network = OverlayNetwork(running.host, running.dht)
        try:
            if opts.service is None:
                selector = Selector(network, opts.selector)
                await nursery.start(selector.run)
                placement = Placement(selector, network, RegistryClient(network), AllocatorClient(network))
                await nursery.start(placement.run)
                proxy = ClientProxy(placement, network, ProxyOptions(), port=opts.port)
                port = await nursery.start(proxy.run)
                print(f"proxy: http://127.0.0.1:{port}/SERVICE/PATH", file=sys.stderr, flush=True)
            else:
                sidecar = Sidecar(opts.service_host, opts.service_port)
                running.host.set_handler(PROTOCOL_ID, sidecar.handle_stream)
                port = await nursery.start(IdleReporter(sidecar, port=opts.metrics_port).run)
                await nursery.start(Advertiser(opts.service, running.dht, running.host).run)
        except OSError as e:
            raise UsageError(f"cannot listen on 127.0.0.1:{opts.port}: {e.strerror or e}") from None
        task_status.started((running, port))


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: ``proxy [flags] PORT [SERVICE HOST:PORT METRICS_PORT]``."""
    argv = sys.argv[1:] if argv is None else argv

    async def start() -> None:
        opts = parse_args(argv, os.environ)
        setup_logging(opts.node.debug)
        await run_proxy(opts)

    return run_main(PROG, start)


if __name__ == "__main__":
    sys.exit(main())
