"""``physarum COMMAND [flags]`` (also ``python -m physarum.cli COMMAND``): every binary in one command.

The thin scripts in bin/ call this, so they work from a source checkout without installing.
``ping-monitor`` is also installed under its own name, PhysarumSM's drop-in.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from physarum import __version__

USAGE = """\
usage: physarum COMMAND [flags]

commands:
  ping-monitor   the network's bootstrap and monitor: pings every connected peer, serves /metrics
  bootstrap      a DHT node that other nodes join with -bootstrap
  peer           join the network and stay up; or one-shot: peer ping | find | publish
  proxy          HTTP proxy to services by name: PORT (client) or PORT SERVICE HOST:PORT METRICS_PORT (sidecar)
  sidecar        a node with a local HTTP/JSON API (-api 127.0.0.1:9081) for programs in any language
  registry       the service registry: serve | add | get | list | delete
  allocator      start instances of registered services on this machine when clients ask
  hello          the hello-world HTTP service of the services demo (on $SERVICE_PORT)
  demo           a local private network (a ping-monitor and 3 peers) with metrics on :9100
  demo services  services by name: a registry, 2 allocators and a proxy on :4200; curl it for "Hello, world"
  key generate   write a new private-network key file (libp2p swarm key, mode 0600)
  version        print physarum's version

Run 'physarum COMMAND -help' for a command's flags."""


#: command -> the module whose ``main(argv)`` runs it; imported only when chosen, so a light command
#: (``hello``, an instance started on demand) does not pay for the others' imports.
_PROGRAMS: dict[str, str] = {
    "ping-monitor": "physarum.cli.ping_monitor",
    "bootstrap": "physarum.cli.bootstrap",
    "peer": "physarum.cli.peer",
    "proxy": "physarum.cli.proxy",
    "sidecar": "physarum.cli.sidecar",
    "registry": "physarum.cli.registry",
    "allocator": "physarum.cli.allocator",
    "hello": "physarum.cli.hello",
    "demo": "physarum.cli.demo",
    "key": "physarum.cli.key",
}


def _program(name: str) -> Callable[[list[str]], int] | None:
    module = _PROGRAMS.get(name)
    if module is None:
        return None
    program: Callable[[list[str]], int] = importlib.import_module(module).main
    return program


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: ``physarum COMMAND [flags]``; status 2 for an unknown command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(USAGE, file=sys.stderr)
        return 2
    if args[0] in ("-h", "-help", "--help", "help"):
        print(USAGE)
        return 0
    if args[0] in ("version", "-version", "--version"):
        print(f"physarum {__version__}")
        return 0
    program = _program(args[0])
    if program is None:
        print(f"physarum: unknown command {args[0]!r} (see physarum -help)", file=sys.stderr)
        return 2
    if argv is None and args[0] == "ping-monitor":
        # As `ping-monitor` itself does: the system allocator, so memory returns after crowds.
        from physarum.monitor.reclaim import restart_with_system_malloc

        restart_with_system_malloc(["-m", "physarum.cli", *args])
    return program(args[1:])


if __name__ == "__main__":
    sys.exit(main())
