"""Services by name (issue 14): discovery on the DHT, RTT-ranked selection, the HTTP proxy pair.

Built on the public :class:`~physarum.overlay.host.Host` and :class:`~physarum.dht.service.KadDHT`
API only. The registry and the allocator come next; :class:`Selection.close_enough` and
:class:`Selector`'s ``on_not_close_enough`` hook are where the allocator will plug in.
"""

from physarum.services.discovery import (
    Advertiser,
    AdvertiserOptions,
    service_cid,
    service_cid_text,
    service_key,
)
from physarum.services.network import OverlayNetwork
from physarum.services.proxy import PROTOCOL_ID, ClientProxy, IdleReporter, ProxyOptions, Sidecar
from physarum.services.selection import Candidate, Selection, Selector, SelectorOptions, ServiceNetwork

__all__ = [
    "PROTOCOL_ID",
    "Advertiser",
    "AdvertiserOptions",
    "Candidate",
    "ClientProxy",
    "IdleReporter",
    "OverlayNetwork",
    "ProxyOptions",
    "Selection",
    "Selector",
    "SelectorOptions",
    "ServiceNetwork",
    "Sidecar",
    "service_cid",
    "service_cid_text",
    "service_key",
]
