"""Services by name (issue 14): reach a service at the lowest RTT, started on demand near the client.

* discovery: instances provide their service's key on the DHT (:class:`Advertiser`);
* selection: RTT-ranked instances with a re-pinged cache (:class:`Selector`);
* registry: signed :class:`ServiceInfo` entries on SQLite registry nodes (:class:`RegistryService`,
  :class:`RegistryStore`, :class:`RegistryClient`);
* allocator: starts instances through runtimes (:class:`Allocator`, :class:`AllocatorClient`,
  :class:`ProcessRuntime`; the container runtime is ``physarum.services.docker_runtime``);
* placement: what the client proxy does when instances are missing or too far (:class:`Placement`);
* proxy: the HTTP proxy pair (:class:`ClientProxy`, :class:`Sidecar`).

Built on the public :class:`~physarum.overlay.host.Host` and :class:`~physarum.dht.service.KadDHT`
API only (:class:`OverlayNetwork`).
"""

from physarum.services.allocator import Allocated, Allocator, AllocatorClient, AllocatorOptions
from physarum.services.discovery import (
    Advertiser,
    AdvertiserOptions,
    service_cid,
    service_cid_text,
    service_key,
)
from physarum.services.errors import AllocationError, AtCapacityError, NoAllocatorError
from physarum.services.network import OverlayNetwork
from physarum.services.placement import Placement, PlacementOptions
from physarum.services.proxy import PROTOCOL_ID, ClientProxy, IdleReporter, ProxyOptions, Sidecar
from physarum.services.registry import (
    Entry,
    MalformedEntryError,
    NoRegistryError,
    NotOwnerError,
    RegistryClient,
    RegistryError,
    RegistryOptions,
    RegistryService,
    RegistryStore,
    ServiceInfo,
    StaleEntryError,
    UnknownServiceError,
)
from physarum.services.runtime import Instance, ProcessRuntime, Runtime, StartError
from physarum.services.selection import Candidate, Selection, Selector, SelectorOptions, ServiceNetwork

__all__ = [
    "PROTOCOL_ID",
    "Advertiser",
    "AdvertiserOptions",
    "Allocated",
    "AllocationError",
    "Allocator",
    "AllocatorClient",
    "AllocatorOptions",
    "AtCapacityError",
    "Candidate",
    "ClientProxy",
    "Entry",
    "IdleReporter",
    "Instance",
    "MalformedEntryError",
    "NoAllocatorError",
    "NoRegistryError",
    "NotOwnerError",
    "OverlayNetwork",
    "Placement",
    "PlacementOptions",
    "ProcessRuntime",
    "ProxyOptions",
    "RegistryClient",
    "RegistryError",
    "RegistryOptions",
    "RegistryService",
    "RegistryStore",
    "Runtime",
    "Selection",
    "Selector",
    "SelectorOptions",
    "ServiceInfo",
    "ServiceNetwork",
    "Sidecar",
    "StaleEntryError",
    "StartError",
    "UnknownServiceError",
    "service_cid",
    "service_cid_text",
    "service_key",
]
