"""``peer``: a node that joins the network and stays up, and one-shot subcommands for scripts.

See :data:`DESCRIPTION` (its -help text). Without ``-keyfile`` a peer uses a fresh identity every run
(several peers on one machine then never share one by accident); give ``-keyfile PATH`` to keep it
across restarts (a record is replaced only by its own publisher, so republish with the same key file).
The one-shot subcommands do not listen, join the DHT as clients through -bootstrap (or the peers saved
in -dht-state), and print only their results. They dial the bootstrap peers first and, when none can
be reached, fail at once with the reason for each (a PSK mismatch, a refused connection, a timeout)
instead of waiting out their deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from physarum.cli.flags import (
    FlagParser,
    NodeOptions,
    UsageError,
    add_node_flags,
    flag,
    node_options,
    normalize_bool_flags,
    parse_peer_addr,
    positive_float,
    positive_int,
    seconds_flag,
    split_host_port,
)
from physarum.cli.node import (
    MonitorOptions,
    run_main,
    run_node,
    save_dht_state,
    setup_logging,
    short_reason,
    start_dht,
)
from physarum.dht.addrs import parse_multiaddr_text
from physarum.dht.records import (
    DEFAULT_RECORD_TTL,
    MAX_RECORD_TTL,
    ContactRecord,
    RecordError,
    new_expiry,
    sign_record,
)
from physarum.dht.service import PROTOCOL_ID as KAD_PROTOCOL_ID
from physarum.dht.service import KadDHT, NotJoinedError, PeerNotFoundError
from physarum.errors import PEER_FAILURES, DecodeError
from physarum.monitor.http import read_token_file
from physarum.overlay import addr as addrs_
from physarum.overlay import ping
from physarum.overlay.host import Host
from physarum.overlay.identity import PeerId
from physarum.overlay.multiaddr import Multiaddr

PROG = "peer"
LISTEN_DEFAULT = ":0"
KEYFILE_DEFAULT: str | None = None  # a fresh identity unless -keyfile is given

DESCRIPTION = """\
Join the network through -bootstrap and stay up, or run one command and exit:

  peer [flags]                            join, print our multiaddrs, stay up
  peer [flags] ping TARGET [-count N]     ping a peer (a multiaddr, or a peer id found through the DHT);
                                          one line per echo, then a summary as ping(8) prints
  peer [flags] find PEER_ID_OR_NAME       a peer id: its multiaddrs, one per line; any other name:
                                          its contact records, one JSON object per line
  peer [flags] publish NAME -data JSON [-endpoint MADDR ...] [-ttl S]
                                          sign and store a contact record for NAME in the DHT; print
                                          {"id": ..., "stored": N, ...} (N = nodes that stored it)"""

EPILOG = """\
Flags take one dash (Go style, as PhysarumSM) or two; values follow a space or '='; node flags may
come before or after the subcommand. Environment: P2P_PSK (as -psk, but out of the process list),
P2P_BOOTSTRAPS (as -bootstrap).
Exit status: 0 success; 1 a ping failed, the peer was unreachable, nothing was found, or nothing
could be stored; 2 bad input."""

#: Default deadline of ``find`` and ``publish``: joining the DHT plus the lookup or the stores.
DHT_TIMEOUT_DEFAULT = 30.0


def build_parser() -> FlagParser:
    parser = FlagParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    add_node_flags(parser, listen_default=LISTEN_DEFAULT, keyfile_default=KEYFILE_DEFAULT)
    metrics = parser.add_argument_group("metrics")
    flag(
        metrics,
        "prom-listen-addr",
        metavar="ADDR",
        help="serve this node's /metrics (DHT, connections, process) on HOST:PORT, :PORT for every "
        "interface; the ping-monitor then lists it for Prometheus at /sd (default: off)",
    )
    flag(
        metrics,
        "prom-token-file",
        metavar="PATH",
        help="with -prom-listen-addr: require 'Authorization: Bearer TOKEN', TOKEN read from PATH "
        "(as ping-monitor's flag); default: no token",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=FlagParser)
    ping_cmd = commands.add_parser("ping", help="ping a peer and print the RTTs", prog=f"{PROG} ping")
    ping_cmd.add_argument(
        "target",
        metavar="TARGET",
        help="/ip4/HOST/tcp/PORT/p2p/PEER_ID, or a peer id (found through the DHT: needs -bootstrap)",
    )
    flag(ping_cmd, "count", type=positive_int, default=1, metavar="N", help="pings to send (default 1)")
    # 0 is allowed (pings back to back); parse_args refuses a negative interval.
    seconds_flag(ping_cmd, "interval", default=0.0, type=float, help="seconds between pings")
    seconds_flag(ping_cmd, "timeout", default=10.0, help="deadline to find and connect, and for each echo")
    add_node_flags(ping_cmd, listen_default=LISTEN_DEFAULT, keyfile_default=KEYFILE_DEFAULT, suppress=True)

    find_cmd = commands.add_parser(
        "find", help="find a peer (its multiaddrs) or the contact records of a name", prog=f"{PROG} find"
    )
    find_cmd.add_argument("target", metavar="PEER_ID_OR_NAME", help="a peer id, or a record name")
    seconds_flag(find_cmd, "timeout", default=DHT_TIMEOUT_DEFAULT, help="deadline to join the DHT and find")
    add_node_flags(find_cmd, listen_default=LISTEN_DEFAULT, keyfile_default=KEYFILE_DEFAULT, suppress=True)

    publish_cmd = commands.add_parser(
        "publish", help="sign and store a contact record in the DHT", prog=f"{PROG} publish"
    )
    publish_cmd.add_argument("name", metavar="NAME", help='the record\'s id: an entity name ("receptionist")')
    flag(publish_cmd, "data", required=True, metavar="JSON", help="the application payload, a JSON object")
    flag(
        publish_cmd,
        "endpoint",
        action="append",
        default=[],
        metavar="MADDR",
        help="a multiaddr where NAME is reached; repeatable (default: none)",
    )
    flag(
        publish_cmd,
        "ttl",
        type=positive_float,
        default=DEFAULT_RECORD_TTL,
        metavar="S",
        help=f"seconds the record lives (default {DEFAULT_RECORD_TTL:g}, at most {MAX_RECORD_TTL:g})",
    )
    seconds_flag(
        publish_cmd, "timeout", default=DHT_TIMEOUT_DEFAULT, help="deadline to join the DHT and publish"
    )
    add_node_flags(publish_cmd, listen_default=LISTEN_DEFAULT, keyfile_default=KEYFILE_DEFAULT, suppress=True)
    return parser


def parse_args(
    argv: Sequence[str], env: Mapping[str, str] | None = None
) -> tuple[argparse.Namespace, NodeOptions]:
    """Parse peer's command line; ``args.command`` is None, "ping", "find" or "publish".

    For ``find``, ``args.peer_id`` is the target as a :class:`PeerId` (None for a record name). For
    ``publish``, ``args.data`` is the parsed JSON object and ``args.endpoint`` a list of multiaddrs;
    the record is test-signed here, so every bad input (a peer id as NAME, oversized data, too many
    endpoints) is reported before any network traffic.

    Raises:
        UsageError: bad flags or values, unusable key files, a subcommand's bad input, or ``find`` /
            ``publish`` with no -bootstrap peer and no -dht-state file.
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(normalize_bool_flags(argv))
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    needs_dht = args.command in ("find", "publish")
    if args.command is not None and (args.prom_listen_addr is not None or args.prom_token_file is not None):
        raise UsageError("-prom-listen-addr is for a peer that stays up, not for a subcommand")
    if args.prom_token_file is not None and args.prom_listen_addr is None:
        raise UsageError("-prom-token-file needs -prom-listen-addr")
    if args.command == "ping":
        args.peer_id = None if args.target.startswith("/") else _peer_id_or_none(args.target)
        if args.peer_id is None:
            args.target = parse_peer_addr(args.target, "ping")
        needs_dht = args.peer_id is not None
        if args.interval < 0:
            raise UsageError("-interval must not be negative")
    opts = node_options(args, listen_default=LISTEN_DEFAULT, keyfile_default=KEYFILE_DEFAULT, env=env)
    if needs_dht:
        if not opts.bootstrap and not (opts.dht_state and os.path.exists(opts.dht_state)):
            what = "to find a peer id" if args.command == "ping" else "to join the network"
            raise UsageError(f"{args.command}: give -bootstrap MADDR (or $P2P_BOOTSTRAPS) {what}")
    if args.command == "find":
        args.peer_id = _peer_id_or_none(args.target)
    elif args.command == "publish":
        _check_publish(args, opts)
    return args, opts


def _peer_id_or_none(text: str) -> PeerId | None:
    try:
        return PeerId.from_string(text)
    except (DecodeError, ValueError):
        return None


def _check_publish(args: argparse.Namespace, opts: NodeOptions) -> None:
    try:
        args.data = json.loads(args.data)
    except (ValueError, RecursionError) as e:
        raise UsageError(f"publish: -data is not JSON: {e}") from None
    if not isinstance(args.data, dict):
        raise UsageError(f"publish: -data must be a JSON object, not a {type(args.data).__name__}")
    endpoints = []
    for text in args.endpoint:
        try:
            endpoints.append(parse_multiaddr_text(text))
        except DecodeError as e:
            raise UsageError(f"publish: bad -endpoint {text!r}: {e.reason}") from None
    args.endpoint = endpoints
    if args.ttl > MAX_RECORD_TTL:
        raise UsageError(f"publish: -ttl {args.ttl:g} is over the limit of {MAX_RECORD_TTL:g} s")
    trial = ContactRecord(
        args.name, tuple(endpoints), args.data, seq=1, expires=new_expiry(time.time(), args.ttl)
    )
    try:
        sign_record(opts.key_pair, trial)
    except (RecordError, ValueError) as e:
        raise UsageError(f"publish: {e}") from None


async def ping_peer(opts: NodeOptions, args: argparse.Namespace) -> int:
    """``peer ping``: 0 if every echo came back, 1 otherwise (messages on stderr, summary on stdout)."""
    if args.peer_id is not None:

        async def work(_host: Host, dht: KadDHT, timeout: float) -> int:
            try:
                found = await dht.find_peer(args.peer_id, timeout=min(timeout, args.timeout))
            except PeerNotFoundError:
                return _fail("ping", f"peer {args.peer_id} not found in the DHT")
            assert isinstance(dht.host, Host)  # the DHT sees it through a narrower Protocol
            dht.host.peerstore.add_addrs(found.peer_id, list(found.addrs), prefer=True)
            return await _ping(dht.host, args.peer_id, args.count, args.interval, args.timeout)

        return await with_dht(opts, "ping", args.timeout + args.count * (args.interval + args.timeout), work)
    host = Host(opts.key_pair, psk=opts.psk, listen=())
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        try:
            return await _ping(host, args.target, args.count, args.interval, args.timeout)
        finally:
            nursery.cancel_scope.cancel()


async def _ping(host: Host, target: Multiaddr | PeerId, count: int, interval: float, timeout: float) -> int:
    """Ping ``target`` ``count`` times as ping(8) does: a lost echo is counted and the next one sent
    (on a fresh stream); a summary follows."""
    try:
        conn = await host.connect(target, timeout=timeout)
    except PEER_FAILURES as e:
        return _fail("ping", f"cannot reach {target}: {short_reason(e)}")
    rtts: list[float] = []
    started = trio.current_time()
    stream: trio.abc.Stream | None = None
    sent = 0
    try:
        for seq in range(1, count + 1):
            if seq > 1 and interval > 0:
                await trio.sleep(interval)
            sent += 1
            try:
                with trio.fail_after(timeout):
                    if stream is None:
                        stream = await conn.open_stream([ping.PROTOCOL_ID])
                    rtt = await ping.ping_once(stream)
            except PEER_FAILURES as e:
                reason = (
                    f"no echo within {timeout:g} s" if isinstance(e, trio.TooSlowError) else short_reason(e)
                )
                print(f"{PROG} ping: seq={seq}: {reason}", file=sys.stderr, flush=True)
                if stream is not None:
                    # a late echo must never be read as the next answer
                    await trio.aclose_forcefully(stream)
                    stream = None
                if conn.is_closed:
                    break
                continue
            rtts.append(rtt)
            print(f"{conn.peer_id}: seq={seq} time={rtt * 1000:.3f} ms", flush=True)
    finally:
        if stream is not None:
            await stream.aclose()
    print(ping_summary(str(conn.peer_id), sent, rtts, trio.current_time() - started), flush=True)
    return 0 if len(rtts) == count else 1


def ping_summary(peer: str, sent: int, rtts: Sequence[float], elapsed: float) -> str:
    """ping(8)'s closing lines: counts, loss and min/avg/max/mdev in milliseconds."""
    lost = sent - len(rtts)
    loss = 100.0 * lost / sent if sent else 0.0
    lines = [
        f"--- {peer} ping statistics ---",
        f"{sent} transmitted, {len(rtts)} received, {loss:.0f}% packet loss, time {elapsed * 1000:.0f}ms",
    ]
    if rtts:
        ms = [r * 1000 for r in rtts]
        avg = sum(ms) / len(ms)
        mdev = (sum((m - avg) ** 2 for m in ms) / len(ms)) ** 0.5
        lines.append(f"rtt min/avg/max/mdev = {min(ms):.3f}/{avg:.3f}/{max(ms):.3f}/{mdev:.3f} ms")
    return "\n".join(lines)


# -- the DHT subcommands ---------------------------------------------------------------------------


def _fail(command: str, message: str) -> int:
    print(f"{PROG} {command}: {message}", file=sys.stderr, flush=True)
    return 1


async def with_dht(opts: NodeOptions, command: str, timeout: float, work: Any) -> int:
    """Run ``await work(host, dht, seconds_left)`` on a DHT client joined through the bootstrap peers
    (or the peers saved in -dht-state), all within ``timeout`` seconds.

    The bootstrap peers are dialed first, all at once: when none answers (and no saved table can
    stand in), the command fails right away with each address's reason on one line.
    """
    host = Host(opts.key_pair, psk=opts.psk, listen=())
    deadline = trio.current_time() + timeout
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        # Client mode: we do not listen, so peers must not put us in their routing tables.
        dht = start_dht(host, opts, server=False)
        try:
            failures = await dial_all(host, opts.bootstrap, min(timeout, BOOTSTRAP_DIAL_TIMEOUT))
            if opts.bootstrap and not len(dht.table):
                # A bootstrap that answers but does not serve kad cannot let us join: say so now,
                # not after the whole deadline.
                with trio.move_on_at(deadline):
                    failures |= await _without_kad(host, [a for a in opts.bootstrap if a not in failures])
                if len(failures) == len(opts.bootstrap):
                    return _fail(command, "cannot join the network: " + join_failures(failures))
            await nursery.start(dht.run)
            with trio.move_on_at(deadline):
                await dht.bootstrapped.wait()
            if not dht.bootstrapped.is_set():
                how = " through -bootstrap" if opts.bootstrap else ""
                return _fail(command, f"could not join the network{how} within {timeout:g} s")
            try:
                result: int = await work(host, dht, max(0.1, deadline - trio.current_time()))
            except trio.TooSlowError:
                return _fail(command, f"no answer within {timeout:g} s")
            except NotJoinedError as e:
                return _fail(command, e.reason)
            if opts.dht_state:
                save_dht_state(opts.dht_state, dht.table)
            return result
        finally:
            nursery.cancel_scope.cancel()


class _NoKadError(Exception):
    """A bootstrap peer that answered identify without /ipfs/kad/1.0.0."""

    def __str__(self) -> str:
        return f"does not serve {KAD_PROTOCOL_ID}"


async def _without_kad(host: Host, addrs: Sequence[Multiaddr]) -> dict[Multiaddr, BaseException]:
    """The bootstrap peers among ``addrs`` (dialed already) whose identify lists no kad."""
    out: dict[Multiaddr, BaseException] = {}
    for addr in addrs:
        peer = addr.peer_id()
        conn = host.connection(peer) if peer is not None else None
        if conn is None:
            continue
        await conn.identified.wait()
        info = conn.identify_info
        if info is not None and KAD_PROTOCOL_ID not in info.protocols:
            out[addr] = _NoKadError()
    return out


#: Deadline of each bootstrap dial of a one-shot command (within the command's own deadline).
BOOTSTRAP_DIAL_TIMEOUT = 10.0


async def dial_all(host: Host, addrs: Sequence[Multiaddr], timeout: float) -> dict[Multiaddr, BaseException]:
    """Dial ``addrs`` concurrently, each within ``timeout``; the ones that failed, with why."""
    failures: dict[Multiaddr, BaseException] = {}

    async def one(addr: Multiaddr) -> None:
        try:
            await host.connect(addr, timeout=timeout)
        except PEER_FAILURES as e:
            failures[addr] = e

    async with trio.open_nursery() as nursery:
        for addr in addrs:
            nursery.start_soon(one, addr)
    return failures


def join_failures(failures: Mapping[Multiaddr, BaseException]) -> str:
    """``ADDR: reason; ADDR: reason`` with each peer id shortened, to keep the line short."""
    parts = []
    for addr, e in failures.items():
        text = str(addr)
        head, sep, peer = text.rpartition("/p2p/")
        if sep and len(peer) > 16:
            text = f"{head}/p2p/{peer[:8]}..{peer[-6:]}"
        parts.append(f"{text}: {short_reason(e)}")
    return "; ".join(parts)


async def find(opts: NodeOptions, args: argparse.Namespace) -> int:
    """``peer find``: 0 and the peer's multiaddrs or the name's records (JSON lines); 1 if not found."""

    async def work(_host: Host, dht: KadDHT, timeout: float) -> int:
        if args.peer_id is not None:
            try:
                found = await dht.find_peer(args.peer_id, timeout=timeout)
            except PeerNotFoundError:
                return _fail("find", f"peer {args.peer_id} not found")
            for a in found.addrs:
                try:
                    print(addrs_.with_peer(a, found.peer_id))
                except addrs_.AddressError:
                    print(a)  # not TCP: printed as given
            sys.stdout.flush()
            return 0
        records = await dht.find_contact(args.target, timeout=timeout)
        if not records:
            return _fail("find", f"no contact record for {args.target!r}")
        for r in records:
            line = {
                "id": r.id,
                "publisher": str(r.publisher),
                "endpoints": [str(e) for e in r.endpoints],
                "data": r.data,
                "seq": r.seq,
                "expires": r.expires,
            }
            print(json.dumps(line, sort_keys=True, ensure_ascii=False))
        sys.stdout.flush()
        return 0

    return await with_dht(opts, "find", args.timeout, work)


async def publish(opts: NodeOptions, args: argparse.Namespace) -> int:
    """``peer publish``: 0 and ``{"id", "stored", ...}`` when at least one node stored the record, else 1."""

    async def work(_host: Host, dht: KadDHT, timeout: float) -> int:
        try:
            stored = await dht.publish_contact(
                args.name, args.endpoint, args.data, ttl=args.ttl, timeout=timeout
            )
        except RecordError as e:
            raise UsageError(f"publish: {e}") from None
        line = {"id": args.name, "publisher": str(dht.peer_id), "stored": stored}
        print(json.dumps(line, sort_keys=True, ensure_ascii=False), flush=True)
        if stored == 0:
            return _fail("publish", "no node stored the record")
        return 0

    return await with_dht(opts, "publish", args.timeout, work)


def metrics_options(args: argparse.Namespace) -> MonitorOptions | None:
    """The metrics server of ``-prom-listen-addr`` (no pinging), or None without the flag.

    Raises:
        UsageError: the address is malformed, or ``-prom-token-file`` cannot be read or holds no token.
    """
    if args.prom_listen_addr is None:
        return None
    host, port = split_host_port(args.prom_listen_addr, "-prom-listen-addr")
    token = None
    if args.prom_token_file is not None:
        try:
            token = read_token_file(os.path.expanduser(args.prom_token_file))
        except (OSError, ValueError) as e:
            why = getattr(e, "strerror", None) or e
            raise UsageError(f"bad -prom-token-file {args.prom_token_file}: {why}") from None
    return MonitorOptions(prom_host=host or None, prom_port=port, ping=False, token=token)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: ``peer [flags] [ping MADDR | find ... | publish ...]``."""
    argv = sys.argv[1:] if argv is None else argv

    async def start() -> int:
        args, opts = parse_args(argv, os.environ)
        setup_logging(opts.debug, quiet=args.command is not None)
        if args.command == "ping":
            return await ping_peer(opts, args)
        if args.command == "find":
            return await find(opts, args)
        if args.command == "publish":
            return await publish(opts, args)
        await run_node(opts, monitor=metrics_options(args))
        return 0

    return run_main(PROG, start)


if __name__ == "__main__":
    sys.exit(main())
