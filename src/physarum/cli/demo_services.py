"""``physarum demo services``: PhysarumSM's "hello world" in one command (issue 14's second demo).

See :data:`DESCRIPTION`. Everything but the instance runs in this process, on loopback, in a private
network whose key never leaves it; the instance is a real child process that an allocator starts
(the process runtime), so the first request pays for a real start. The registry's SQLite file lives
in a temporary directory removed when the demo stops.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import trio
from prometheus_client import CollectorRegistry

from physarum.cli.demo import HttpResponse, demo_node_options, http_request
from physarum.cli.flags import FlagParser, UsageError, flag, parse_port, seconds_flag
from physarum.cli.node import RunningNode, run_main, run_node
from physarum.errors import DecodeError
from physarum.overlay.identity import KeyPair
from physarum.overlay.multiaddr import Multiaddr
from physarum.psk import generate_psk
from physarum.services.allocator import ALLOCATOR_NAME, Allocator, AllocatorClient, AllocatorOptions
from physarum.services.discovery import service_key
from physarum.services.network import OverlayNetwork
from physarum.services.placement import Placement
from physarum.services.proxy import INSTANCE_HEADER, ClientProxy, ProxyOptions
from physarum.services.registry import (
    REGISTRY_NAME,
    RegistryClient,
    RegistryError,
    RegistryService,
    RegistryStore,
    ServiceInfo,
)
from physarum.services.runtime import ProcessRuntime
from physarum.services.selection import Selector

PROG = "physarum demo services"
SERVICE = "hello-world"
#: The service's command: this interpreter's ``physarum hello``, so it runs from a checkout too.
HELLO = (sys.executable, "-m", "physarum.cli", "hello")
ALLOCATORS = 2
#: Requests the demo makes after the first one, to show what one costs without an allocation.
LATER_REQUESTS = 5

DESCRIPTION = f"""\
PhysarumSM's "hello world" in one process, on loopback, in a private network: a bootstrap node, a
registry node (SQLite in a temporary directory), {ALLOCATORS} allocators (process runtime) and a client
proxy on 127.0.0.1:4200 (-port). It registers the service {SERVICE} (the 'physarum hello' command)
and makes the first request itself: the proxy finds no instance, asks the allocator with the lowest
RTT to start one and forwards the request to it. The demo prints the answer, how long it took,
which instance answered and why (the RTTs the proxy measured), then stays up for curl until Ctrl-C,
which stops the instance too."""

EPILOG = f"""\
Then:  curl 127.0.0.1:4200/{SERVICE}/   (curl -i shows the physarum-instance header: who answered)"""


def build_parser() -> FlagParser:
    parser = FlagParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    flag(parser, "port", type=lambda t: parse_port(t, "-port"), default=4200, metavar="PORT",
         help="the client proxy's port on 127.0.0.1 (default 4200; 0: any free)")
    flag(parser, "once", action="store_true", help="exit after the first request and its printout")
    seconds_flag(parser, "timeout", default=30.0,
                 help="the network must form and the first request be answered within this")
    seconds_flag(parser, "idle-timeout", default=AllocatorOptions.idle_timeout,
                 help="stop an instance after this long without requests; the next one starts another")
    return parser


@dataclass
class _Allocator:
    name: str
    node: RunningNode
    allocator: Allocator
    metrics: CollectorRegistry


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _rtt(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


async def demo_services(args: argparse.Namespace) -> int:
    """Run the demo (see :data:`DESCRIPTION`); the exit status.

    Raises:
        UsageError: the proxy's port cannot be bound.
    """
    with tempfile.TemporaryDirectory(prefix="physarum-demo-services-") as tmp:
        store = RegistryStore(os.path.join(tmp, "registry.db"))
        try:
            return await _demo(args, store, tmp)
        finally:
            store.close()


async def _node(nursery: trio.Nursery, psk: bytes, bootstrap: list[Multiaddr]) -> RunningNode:
    node: RunningNode = await nursery.start(
        lambda task_status: run_node(
            demo_node_options(KeyPair.generate(), psk, bootstrap), out=io.StringIO(), handle_signals=False,
            task_status=task_status,
        )
    )
    return node


async def _demo(args: argparse.Namespace, store: RegistryStore, tmp: str) -> int:
    psk = generate_psk()
    stopped_by: list[str] = []
    allocators: list[_Allocator] = []
    async with trio.open_nursery() as nursery:
        stop = nursery.cancel_scope

        async def watch_signals(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                async for signum in signals:
                    stopped_by.append(signal.Signals(signum).name)
                    stop.cancel()
                    return

        await nursery.start(watch_signals)
        boot = await _node(nursery, psk, [])
        boot_addr = boot.host.addrs[0]
        bootstrap = [boot_addr]

        # The client proxy first: a busy port is the likeliest failure and should cost nothing.
        client = await _node(nursery, psk, bootstrap)
        network = OverlayNetwork(client.host, client.dht)
        selector = Selector(network)
        await nursery.start(selector.run)
        allocator_client = AllocatorClient(network)
        placement = Placement(selector, network, RegistryClient(network), allocator_client)
        await nursery.start(placement.run)
        try:
            port: int = await nursery.start(ClientProxy(placement, network, ProxyOptions(), port=args.port).run)
        except OSError as e:
            reason = os.strerror(e.errno).lower() if e.errno else str(e)
            raise UsageError(f"cannot listen on 127.0.0.1:{args.port}: {reason} "
                             "(pick another port with -port PORT, or 0 for any free port)") from None

        registry_node = await _node(nursery, psk, bootstrap)
        registry = RegistryService(store, registry_node.dht,
                                   RegistryClient(OverlayNetwork(registry_node.host, registry_node.dht)))
        registry.attach(registry_node.host)
        await nursery.start(registry.run)

        for i in range(1, ALLOCATORS + 1):
            node = await _node(nursery, psk, bootstrap)
            metrics = CollectorRegistry()
            allocator = Allocator(
                node.dht, RegistryClient(OverlayNetwork(node.host, node.dht)), {"process": ProcessRuntime()},
                AllocatorOptions(idle_timeout=args.idle_timeout, runtimes=("process",)), metrics=metrics,
            )
            allocator.attach(node.host)
            await nursery.start(allocator.run)
            allocators.append(_Allocator(f"allocator {i}", node, allocator, metrics))

        print(f"{PROG}: PhysarumSM's hello world on loopback, in a private network", flush=True)
        print(f"bootstrap     {boot_addr}", flush=True)
        print(f"registry      {registry_node.host.peer_id}  (SQLite in {tmp})", flush=True)
        for a in allocators:
            print(f"{a.name}   {a.node.host.peer_id}  (process runtime)", flush=True)
        print(f"client proxy  {client.host.peer_id}  http://127.0.0.1:{port}/SERVICE/PATH", flush=True)

        try:
            with trio.fail_after(args.timeout):
                await _wait_provided(boot, ALLOCATORS)
                # Published from the proxy's node like 'physarum registry add' would, by a key of the demo's.
                entry = await RegistryClient(network).publish(KeyPair.generate(), ServiceInfo(SERVICE, HELLO))
                print(f"registered    {entry.name}: {shlex.join(HELLO)}", flush=True)
                t0 = time.monotonic()
                first = await http_request("127.0.0.1", port, f"/{SERVICE}/", timeout=args.timeout)
                first_s = time.monotonic() - t0
                later: list[tuple[HttpResponse, float]] = []
                for _ in range(LATER_REQUESTS):
                    t0 = time.monotonic()
                    response = await http_request("127.0.0.1", port, f"/{SERVICE}/", timeout=args.timeout)
                    later.append((response, time.monotonic() - t0))
        except trio.TooSlowError:
            failure = f"the network did not form and answer within {args.timeout:g} s (-timeout)"
        except (RegistryError, DecodeError, OSError) as e:
            failure = str(e)
        else:
            failure = "" if first.status == 200 else (
                f"the first request got {first.status}: {first.body.decode(errors='replace').strip()}")
        if failure:
            print(f"{PROG}: {failure}", file=sys.stderr, flush=True)
            stop.cancel()  # the nursery's nodes and allocators (and any instance) stop before we return
            return 1
        _explain(port, first, first_s, later, allocators, allocator_client, selector)
        if args.once:
            stop.cancel()
            return 0
        print(f"\nTry it:  curl 127.0.0.1:{port}/{SERVICE}/     (curl -i shows the {INSTANCE_HEADER.decode()} "
              "header)\n"
              f"An instance idle for {args.idle_timeout:g} s is stopped; the next request starts a new one.\n"
              "Ctrl-C stops the demo and its instances.", flush=True)
        await trio.sleep_forever()
    # Allocator.run stops its instances (SIGTERM to their process groups) as it is cancelled.
    left = sum(len(a.allocator.instances) for a in allocators)
    print(f"\n{PROG}: stopped ({', '.join(stopped_by) or 'done'}); "
          f"{'no instance left running' if not left else f'{left} instance(s) still registered'}", flush=True)
    return 0


async def _wait_provided(boot: RunningNode, allocators: int) -> None:
    """Until the bootstrap node holds the registry's and every allocator's provider record: then the
    proxy's lookups find them all (the DHT joins and the first provides take a few hundred ms)."""
    providers = boot.dht.providers
    while (len(providers.get(service_key(REGISTRY_NAME), trio.current_time())) < 1
           or len(providers.get(service_key(ALLOCATOR_NAME), trio.current_time())) < allocators):
        await trio.sleep(0.01)


def _explain(port: int, first: HttpResponse, first_s: float, later: list[tuple[HttpResponse, float]],
             allocators: list[_Allocator], allocator_client: AllocatorClient, selector: Selector) -> None:
    """Print what answered and why: the allocators' and the instances' RTTs the proxy measured."""
    names = {a.node.host.peer_id: a.name for a in allocators}
    header = first.headers.get(INSTANCE_HEADER, b"").decode()
    peer_text, _, rtt_text = header.partition("; rtt-ms=")
    starter = next((a for a in allocators
                    if (r := a.allocator.instances.get(SERVICE)) is not None and str(r.host.peer_id) == peer_text),
                   None)
    print(f"\n$ curl 127.0.0.1:{port}/{SERVICE}/", flush=True)
    print(first.body.decode(errors="replace"), end="", flush=True)
    started = ""
    if starter is not None:
        seconds = starter.metrics.get_sample_value("physarum_allocator_allocation_seconds_sum") or 0.0
        started = f" ({seconds * 1000:.0f} ms of it in the allocator: start, until the port accepted)"
    print(f"\nfirst request   {first_s * 1000:.0f} ms, allocation included{started}", flush=True)
    if later:
        same = all(r.headers.get(INSTANCE_HEADER, b"").decode().partition(";")[0] == peer_text for r, _ in later)
        print(f"next {len(later)} requests {_ms(statistics.median(s for _, s in later))} median, "
              f"{'the same instance, no allocation' if same else 'not all by the same instance'} "
              "(a new connection each)", flush=True)
    if starter is not None:
        running = starter.allocator.instances[SERVICE]
        print(f"answered by     instance {peer_text}\n"
              f"                ({SERVICE} on 127.0.0.1:{running.port}, {running.instance.description}), "
              f"started by {starter.name}", flush=True)
    else:
        print(f"answered by     instance {peer_text or '(no physarum-instance header)'}", flush=True)

    print("why: the proxy had no instance of it, so it pinged the allocators and asked the nearest:", flush=True)
    ranked = sorted(allocator_client.rtts.items(), key=lambda kv: kv[1])
    for i, (peer, rtt) in enumerate(ranked):
        note = "  <- nearest: asked to start it" if i == 0 else ""
        if starter is not None and peer == starter.node.host.peer_id and i > 0:
            note = "  <- started it (the nearer ones refused)"
        print(f"  {names.get(peer, str(peer)):<12} {_rtt(rtt):>9}  {peer}{note}", flush=True)
    missing = [a.name for a in allocators if a.node.host.peer_id not in allocator_client.rtts]
    if missing:
        print(f"  ({', '.join(missing)} did not answer the ping in time)", flush=True)
    print(f"then it pinged the instances of {SERVICE} and sent the request to the lowest RTT:", flush=True)
    instances = sorted(selector.cached(SERVICE).items(), key=lambda kv: kv[1])
    for peer, rtt in instances:
        note = f"  <- answered (chosen at {rtt_text} ms)" if str(peer) == peer_text else ""
        print(f"  {'instance':<12} {_rtt(rtt):>9}  {peer}{note}", flush=True)
    if len(ranked) > 1:
        print("(all of them run on this machine, so their RTTs differ only by noise; on a network of several\n"
              " machines the allocator on the client's machine wins, and a far instance gets a nearer one)",
              flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``physarum demo services [-port PORT] [-once] [-timeout S] [-idle-timeout S]``."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    async def start() -> int:
        return await demo_services(build_parser().parse_args(list(argv)))

    return run_main(PROG, start)


if __name__ == "__main__":
    sys.exit(main())
