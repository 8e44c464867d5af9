"""physarum: private libp2p overlays on trio (pnet, Noise, yamux, Kademlia, ping monitor).

The main API is importable from here (``from physarum import open_host, KadDHT, PingMonitor``);
each name is loaded on first use, so ``import physarum`` stays cheap for a program that needs
only part of it (the monitor pulls in prometheus_client, the host does not).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # the host
    "Host": "physarum.overlay.host",
    "Connection": "physarum.overlay.host",
    "open_host": "physarum.overlay.host",
    "KeyPair": "physarum.overlay.identity",
    "PeerId": "physarum.overlay.identity",
    "Multiaddr": "physarum.overlay.addr",
    # private networks
    "generate_psk": "physarum.psk",
    "load_key_file": "physarum.psk",
    "psk_from_passphrase": "physarum.psk",
    "write_key_file": "physarum.psk",
    # the DHT
    "KadDHT": "physarum.dht.service",
    "PeerNotFoundError": "physarum.dht.service",
    "NotJoinedError": "physarum.dht.service",
    "ContactRecord": "physarum.dht.records",
    # the monitor
    "PingMonitor": "physarum.monitor.ping_monitor",
    "MetricsServer": "physarum.monitor.metrics",
    "node_registry": "physarum.monitor.metrics",
    # errors
    "PhysarumError": "physarum.errors",
    "AddressError": "physarum.overlay.addr",
    "DecodeError": "physarum.errors",
    "DialError": "physarum.errors",
    "LimitError": "physarum.errors",
    "NegotiationError": "physarum.errors",
    "PeerIdMismatchError": "physarum.errors",
    "ProtocolError": "physarum.errors",
    "PskMismatchError": "physarum.psk",
}

__all__ = [
    "AddressError",
    "Connection",
    "ContactRecord",
    "DecodeError",
    "DialError",
    "Host",
    "KadDHT",
    "KeyPair",
    "LimitError",
    "MetricsServer",
    "Multiaddr",
    "NegotiationError",
    "NotJoinedError",
    "PeerId",
    "PeerIdMismatchError",
    "PeerNotFoundError",
    "PhysarumError",
    "PingMonitor",
    "ProtocolError",
    "PskMismatchError",
    "__version__",
    "generate_psk",
    "load_key_file",
    "node_registry",
    "open_host",
    "psk_from_passphrase",
    "write_key_file",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'physarum' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from physarum.dht.records import ContactRecord
    from physarum.dht.service import KadDHT, NotJoinedError, PeerNotFoundError
    from physarum.errors import (
        DecodeError,
        DialError,
        LimitError,
        NegotiationError,
        PeerIdMismatchError,
        PhysarumError,
        ProtocolError,
    )
    from physarum.monitor.metrics import MetricsServer, node_registry
    from physarum.monitor.ping_monitor import PingMonitor
    from physarum.overlay.addr import AddressError, Multiaddr
    from physarum.overlay.host import Connection, Host, open_host
    from physarum.overlay.identity import KeyPair, PeerId
    from physarum.psk import (
        PskMismatchError,
        generate_psk,
        load_key_file,
        psk_from_passphrase,
        write_key_file,
    )
