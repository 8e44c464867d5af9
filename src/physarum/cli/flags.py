"""Command-line flags shared by the binaries, in PhysarumSM's Go style and in double-dash style.

Every flag has both spellings: ``-p2p-listen-addr :4001`` and ``--p2p-listen-addr :4001``, with the
value as the next argument or after ``=``. Boolean flags also take Go's ``-debug=true``/``-debug=false``.
Environment variables give defaults: ``P2P_PSK`` (the passphrase) and ``P2P_BOOTSTRAPS`` (multiaddrs
separated by whitespace); a flag given on the command line wins over its variable.

Every bad input becomes a :class:`UsageError`, which the binaries print as one line on stderr before
exiting with status 2 (no usage dump, no traceback).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from physarum import __version__
from physarum.dht.client import DEFAULT_QUERY_TIMEOUT
from physarum.overlay import addr as addrs_
from physarum.overlay.addr import AddressError
from physarum.overlay.connmgr import ConnManagerOptions
from physarum.overlay.identity import IdentityKeyError, KeyPair, load_or_create_key_pair
from physarum.overlay.multiaddr import Multiaddr
from physarum.overlay.resources import ResourceLimits
from physarum.psk import KeyFileError, generate_psk, load_key_file, psk_from_passphrase

ENV_PSK = "P2P_PSK"
ENV_BOOTSTRAPS = "P2P_BOOTSTRAPS"
BOOL_FLAGS = ("debug", "ephemeral")


class UsageError(Exception):
    """Bad command-line input, an unusable key file, an address that cannot be bound: exit status 2.

    The message is one line, fit to print after the program's name.
    """

    exit_code = 2


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of printing usage and exiting."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("add_help", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.add_argument("-h", "-help", "--help", action="help", help="show this help and exit")

    def _get_option_tuples(self, option_string: str) -> list[tuple[argparse.Action, str, str | None]]:
        tuples = super()._get_option_tuples(option_string)
        if self.allow_abbrev:
            return tuples
        # argparse (3.11) still matches single-dash prefixes as abbreviations with allow_abbrev=False
        # ("-port 80" was read as "-port-range 80"): keep only a one-letter option with its value
        # attached ("-hx"), which error() reports; every long name must be spelled whole.
        return [t for t in tuples if len(t[1]) == 2]

    def error(self, message: str) -> NoReturn:
        # Go-style single dashes make argparse read an unknown "-hostname" as "-h ostname".
        explicit = re.fullmatch(r"argument -h/-help/--help: ignored explicit argument '(.*)'", message)
        if explicit:
            message = f"unrecognized arguments: -h{explicit.group(1)}"
        raise UsageError(f"{message} (see {self.prog} -help)")


def flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, **kwargs: object) -> None:
    """Add ``-name`` and ``--name`` as one option."""
    parser.add_argument(f"-{name}", f"--{name}", **kwargs)  # type: ignore[arg-type]


def normalize_bool_flags(argv: Sequence[str], names: Sequence[str] = BOOL_FLAGS) -> list[str]:
    """Rewrite Go's ``-debug=true`` as ``-debug`` and drop ``-debug=false``; ``-debug=all`` becomes
    the hidden ``--debug-all``.

    Raises:
        UsageError: a boolean flag with a value that is not a Go boolean.
    """
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            out += argv[i:]
            break
        name, eq, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and eq and name in names:
            lowered = value.lower()
            if name == "debug" and lowered == "all":
                out.append("--debug-all")  # every library's debug lines, not only physarum's
            elif lowered in ("1", "t", "true"):
                out.append(f"-{name}")
            elif lowered not in ("0", "f", "false"):
                raise UsageError(f"invalid boolean value {value!r} for -{name}")
            continue
        out.append(arg)
    return out


# -- values --------------------------------------------------------------------------------------


def parse_port(text: str, what: str, whole: str | None = None) -> int:
    """``text`` as a TCP port (0-65535); ``what`` and ``whole`` (default ``text``) name it in errors.

    Raises:
        UsageError: not a number, or out of range.
    """
    whole = text if whole is None else whole
    try:
        port = int(text)
    except ValueError:
        raise UsageError(f"bad {what} {whole!r}: the port is not a number") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"bad {what} {whole!r}: port {port} is out of range")
    return port


def split_host_port(text: str, what: str) -> tuple[str, int]:
    """``":9100"`` -> ``("", 9100)``, ``"127.0.0.1:9100"``, ``"[::1]:9100"``, ``"9100"`` (Go's net.Listen style).

    Raises:
        UsageError: not HOST:PORT.
    """
    text = text.strip()
    if text.isdigit():
        return "", parse_port(text, what)
    host, sep, port = text.rpartition(":")
    if not sep:
        raise UsageError(f"bad {what} {text!r}: want HOST:PORT or :PORT")
    if host.startswith("["):
        if not host.endswith("]"):
            raise UsageError(f"bad {what} {text!r}: unbalanced brackets")
        host = host[1:-1]
    elif ":" in host:
        raise UsageError(f"bad {what} {text!r}: write IPv6 addresses in brackets, [::1]:PORT")
    return host, parse_port(port, what, text)


def parse_listen_addr(text: str, what: str = "-p2p-listen-addr") -> Multiaddr:
    """A listen multiaddr from Go style (``:4001`` = every IPv4 interface, ``127.0.0.1:4001``,
    ``[::1]:4001``) or a multiaddr (``/ip4/0.0.0.0/tcp/4001``).

    Raises:
        UsageError: malformed, not TCP, or carrying a ``/p2p`` id.
    """
    text = text.strip()
    if text.startswith("/"):
        try:
            ma = addrs_.parse(text)
            ep = addrs_.tcp_endpoint(ma)
        except AddressError as e:
            raise UsageError(f"bad {what} {text!r}: {e.reason}") from None
        if ep.peer_id is not None:
            raise UsageError(f"bad {what} {text!r}: a listen address has no /p2p/ part")
        return ma
    host, port = split_host_port(text, what)
    if not host:
        return Multiaddr(f"/ip4/0.0.0.0/tcp/{port}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return Multiaddr(f"/dns/{host}/tcp/{port}")
    return Multiaddr(f"/ip{ip.version}/{ip}/tcp/{port}")


def parse_peer_addr(text: str, what: str = "-bootstrap") -> Multiaddr:
    """A dialable ``/ip4|ip6|dns/HOST/tcp/PORT/p2p/ID`` multiaddr (the peer id is required).

    Raises:
        UsageError: malformed, not TCP, or without ``/p2p/<peer id>``.
    """
    try:
        ma = addrs_.parse(text.strip())
        ep = addrs_.tcp_endpoint(ma)
    except AddressError as e:
        raise UsageError(f"bad {what} address {text!r}: {e.reason}") from None
    if ep.peer_id is None:
        raise UsageError(f"bad {what} address {text!r}: it must end in /p2p/<peer id>")
    return ma


# -- the node flags ------------------------------------------------------------------------------


def add_node_flags(
    parser: argparse.ArgumentParser,
    *,
    listen_default: str,
    keyfile_default: str | None,
    suppress: bool = False,
) -> None:
    """Add the flags every node binary takes. ``suppress`` (for subcommands) leaves unset flags out of
    the namespace, so values parsed before the subcommand are kept."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("node")
    flag(
        group,
        "p2p-listen-addr",
        action="append",
        default=default(None),
        metavar="ADDR",
        help=f"libp2p listen address, :PORT / HOST:PORT or a multiaddr; repeatable (default {listen_default})",
    )
    flag(
        group,
        "bootstrap",
        action="append",
        default=default(None),
        metavar="MADDR",
        help=f"peer to join, /ip4/../tcp/../p2p/ID; repeatable (default: ${ENV_BOOTSTRAPS}, space separated)",
    )
    flag(
        group,
        "psk",
        default=default(None),
        metavar="PASS",
        help=f'private network passphrase, key = SHA3-256(PASS); "" = a random key (default: ${ENV_PSK}; '
        "none: no private network). Visible to every local user in the process list: prefer -psk-file"
        f" or ${ENV_PSK}",
    )
    flag(
        group,
        "psk-file",
        default=default(None),
        metavar="PATH",
        help="private network key file (a libp2p swarm key, made by: physarum key generate -o FILE)",
    )
    keyfile_help = (
        "identity key file, created (0600) if missing"
        f" (default {keyfile_default or 'none: a fresh identity each run'})"
    )
    flag(group, "keyfile", default=default(None), metavar="PATH", help=keyfile_help)
    flag(
        group,
        "ephemeral",
        action="store_true",
        default=default(False),
        help="use a random identity, no key file",
    )
    flag(
        group,
        "dht-state",
        default=default(None),
        metavar="FILE",
        help="keep the DHT routing table in FILE (versioned JSON): loaded at start, saved every minute and"
        " at exit, so a restarted node rejoins without its bootstrap peers",
    )
    flag(
        group,
        "announce",
        action="append",
        default=default(None),
        metavar="MADDR",
        help="advertise this address instead of the listen addresses (e.g. a public or NAT address,"
        " /ip4/203.0.113.7/tcp/4001 or /dns/node.example/tcp/4001); repeatable",
    )
    flag(
        group,
        "max-connections",
        type=_positive_int,
        default=default(None),
        metavar="N",
        help=f"open connections at most, both directions (default {ResourceLimits.max_connections})",
    )
    flag(
        group,
        "conn-low",
        type=positive_int,
        default=default(None),
        metavar="N",
        help="connection manager: trim down to N connections (default "
        f"{ConnManagerOptions.low_water}; ping-monitor: no trimming unless -conn-low or -conn-high is given)",
    )
    flag(
        group,
        "conn-high",
        type=positive_int,
        default=default(None),
        metavar="N",
        help="connection manager: trim when over N connections, each at least "
        f"{ConnManagerOptions.grace_period:g} s old, bootstrap peers never (default {ConnManagerOptions.high_water})",
    )
    flag(
        group,
        "dht-query-timeout",
        type=positive_float,
        default=default(None),
        metavar="SECONDS",
        help="DHT: give up on one peer's answer within a lookup after SECONDS (default "
        f"{DEFAULT_QUERY_TIMEOUT:g}; raise it on slow or distant links)",
    )
    flag(
        group,
        "debug",
        action="store_true",
        default=default(False),
        help="log physarum's debug messages (-debug=all: every library's too)",
    )
    parser.add_argument("--debug-all", action="store_true", default=default(False), help=argparse.SUPPRESS)
    if not suppress:
        flag(parser, "version", action="version", version=f"%(prog)s (physarum {__version__})")


@dataclass
class NodeOptions:
    """Everything a node needs, resolved from flags and environment (key files already loaded)."""

    listen: list[Multiaddr]
    bootstrap: list[Multiaddr]
    psk: bytes | None
    key_pair: KeyPair
    hostname: str
    """The metrics' ``host`` label (``-hostname``, ping-monitor only; else the machine's name)."""
    debug: str
    """"" (info), "physarum" (``-debug``) or "all" (``-debug=all``)."""
    psk_source: str
    """How the key was chosen, for the log: "none", "passphrase", "random", "file PATH"."""
    dht_state: str | None = None
    """Where the DHT routing table is kept (``-dht-state``), or None."""
    announce: list[Multiaddr] = field(default_factory=list)
    """Addresses to advertise instead of the listen addresses (``-announce``)."""
    psk_in_argv: bool = False
    """The key came from ``-psk`` on the command line (readable by every local user)."""
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    """The host's resource limits (``-max-connections``; the rest at their defaults)."""
    conn_manager: ConnManagerOptions = field(default_factory=ConnManagerOptions)
    """The connection manager's water marks (``-conn-low``, ``-conn-high``)."""
    conn_manager_set: bool = False
    """``-conn-low`` or ``-conn-high`` was given (the ping-monitor trims only then)."""
    dht_query_timeout: float = DEFAULT_QUERY_TIMEOUT
    """Seconds one peer has to answer a DHT query within a lookup (``-dht-query-timeout``)."""


def resolve_psk(
    passphrase: str | None, psk_file: str | None, env: Mapping[str, str]
) -> tuple[bytes | None, str]:
    """The pre-shared key and where it came from.

    ``-psk PASS`` hashes PASS with SHA3-256 (PhysarumSM); ``-psk ""`` is a random key, as PhysarumSM
    does; ``--psk-file`` reads a libp2p swarm key file; with neither, ``$P2P_PSK`` when it is set and not
    empty (an empty variable counts as unset); otherwise no private network.

    Raises:
        UsageError: both -psk and --psk-file, or an unreadable or malformed key file.
    """
    if passphrase is not None and psk_file is not None:
        raise UsageError("give -psk or --psk-file, not both")
    if psk_file is not None:
        try:
            return load_key_file(os.path.expanduser(psk_file)), f"file {psk_file}"
        except KeyFileError as e:
            raise UsageError(f"bad --psk-file: {e}") from None
    if passphrase is None:
        passphrase = env.get(ENV_PSK) or None
    if passphrase is None:
        return None, "none"
    if passphrase == "":
        return generate_psk(), "random"
    try:
        return psk_from_passphrase(passphrase), "passphrase"
    except UnicodeEncodeError:
        raise UsageError("-psk is not valid text") from None


def resolve_key_pair(keyfile: str | None, ephemeral: bool, default: str | None) -> KeyPair:
    """The node's identity: random with ``ephemeral``, else loaded from (or created at) the key file.

    Raises:
        UsageError: the key file is unreadable, not a libp2p Ed25519 key, or cannot be created.
    """
    if ephemeral:
        return KeyPair.generate()
    path = keyfile or default
    if path is None:
        return KeyPair.generate()
    path = os.path.expanduser(path)
    try:
        return load_or_create_key_pair(path)
    except IdentityKeyError as e:
        raise UsageError(f"bad -keyfile: {e.reason}") from None
    except OSError as e:
        raise UsageError(f"cannot create -keyfile {path}: {e.strerror or e}") from None


def node_options(
    args: argparse.Namespace,
    *,
    listen_default: str,
    keyfile_default: str | None,
    env: Mapping[str, str] | None = None,
) -> NodeOptions:
    """Resolve the node flags of ``args`` (see :func:`add_node_flags`) against ``env`` (default os.environ).

    Raises:
        UsageError: any bad value, or an unusable key file.
    """
    env = os.environ if env is None else env
    listen = [parse_listen_addr(a) for a in (args.p2p_listen_addr or [listen_default])]
    if args.bootstrap is not None:
        boot_texts: list[str] = list(args.bootstrap)
        what = "-bootstrap"
    else:
        boot_texts = env.get(ENV_BOOTSTRAPS, "").split()
        what = f"${ENV_BOOTSTRAPS}"
    bootstrap = list(dict.fromkeys(parse_peer_addr(t, what) for t in boot_texts if t.strip()))
    psk, source = resolve_psk(args.psk, args.psk_file, env)
    key_pair = resolve_key_pair(args.keyfile, args.ephemeral, keyfile_default)
    hostname = getattr(args, "hostname", None) or socket.gethostname()
    dht_state = resolve_dht_state(getattr(args, "dht_state", None))
    announce = [parse_announce_addr(a) for a in (args.announce or [])]
    debug = "all" if args.debug_all else "physarum" if args.debug else ""
    return NodeOptions(
        listen,
        bootstrap,
        psk,
        key_pair,
        hostname,
        debug,
        source,
        dht_state,
        announce=announce,
        psk_in_argv=args.psk is not None and args.psk != "",
        limits=_limits(args),
        conn_manager=resolve_conn_manager(getattr(args, "conn_low", None), getattr(args, "conn_high", None)),
        conn_manager_set=getattr(args, "conn_low", None) is not None or getattr(args, "conn_high", None) is not None,
        dht_query_timeout=getattr(args, "dht_query_timeout", None) or DEFAULT_QUERY_TIMEOUT,
    )


def resolve_conn_manager(low: int | None, high: int | None) -> ConnManagerOptions:
    """The water marks from ``-conn-low``/``-conn-high``; one not given is its default, moved to
    fit the other (``-conn-high 20`` alone also lowers the low-water mark to 20).

    Raises:
        UsageError: ``-conn-low`` above ``-conn-high``.
    """
    d = ConnManagerOptions()
    if low is not None and high is not None and low > high:
        raise UsageError(f"-conn-low {low} is above -conn-high {high}")
    if high is None:
        high = max(d.high_water, low or 0)
    if low is None:
        low = min(d.low_water, high)
    return ConnManagerOptions(low_water=low, high_water=high)


def _limits(args: argparse.Namespace) -> ResourceLimits:
    n = getattr(args, "max_connections", None)
    return ResourceLimits() if n is None else ResourceLimits(max_connections=n)


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def parse_announce_addr(text: str) -> Multiaddr:
    """An address to advertise: ``/ip4|ip6|dns*/HOST/tcp/PORT`` (no wildcard, no port 0, no /p2p).

    Raises:
        UsageError: malformed, not TCP, a wildcard host, port 0, or carrying a ``/p2p`` id.
    """
    try:
        ma = addrs_.parse(text.strip())
        ep = addrs_.tcp_endpoint(ma)
    except AddressError as e:
        raise UsageError(f"bad -announce {text!r}: {e.reason}") from None
    if ep.peer_id is not None:
        raise UsageError(f"bad -announce {text!r}: leave out /p2p/ (the node adds its own id)")
    if ep.port == 0 or addrs_.is_unspecified(ma):
        raise UsageError(f"bad -announce {text!r}: announce a concrete address and port others can dial")
    return ma


def resolve_dht_state(path: str | None) -> str | None:
    """The ``-dht-state`` path, with ``~`` expanded, checked to be a file in a directory that exists.

    Raises:
        UsageError: empty, a directory, or in a directory that does not exist.
    """
    if path is None:
        return None
    if not path.strip():
        raise UsageError("-dht-state needs a file name")
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        raise UsageError(f"bad -dht-state {path}: it is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"bad -dht-state {path}: directory {parent} does not exist")
    return path


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def seconds_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    name: str,
    *,
    default: float,
    help: str,
    type: Callable[[str], float] = positive_float,
) -> None:
    """Add ``-name S``, a duration in seconds; the help ends in "(default N)" made from ``default``,
    so the two cannot drift apart. ``type``: :func:`positive_float`, or ``float`` where the caller
    allows 0 and checks the sign itself."""
    flag(parser, name, type=type, default=default, metavar="S", help=f"{help} (default {default:g})")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


__all__ = [
    "BOOL_FLAGS",
    "ENV_BOOTSTRAPS",
    "ENV_PSK",
    "FlagParser",
    "NodeOptions",
    "UsageError",
    "add_node_flags",
    "flag",
    "node_options",
    "normalize_bool_flags",
    "parse_announce_addr",
    "parse_listen_addr",
    "parse_peer_addr",
    "parse_port",
    "positive_float",
    "positive_int",
    "resolve_conn_manager",
    "resolve_dht_state",
    "resolve_key_pair",
    "resolve_psk",
    "seconds_flag",
    "split_host_port",
]
