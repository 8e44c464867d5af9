"""The DHT's Prometheus series, registered on an injected registry (``KadDHT(registry=...)``).

* ``physarum_routing_table_peers``: gauge, the contacts in the routing table, set whenever it
  changes (:mod:`physarum.dht.routing`);
* ``physarum_dht_requests_total{type}``: requests served, by message type, e.g. ``find_node``
  (:mod:`physarum.dht.server`);
* ``physarum_dht_lookups_total``: iterative lookups started, our callers' and the table
  maintenance's (:mod:`physarum.dht.client`);
* ``physarum_dht_lookup_duration_seconds``: histogram, how long each driven lookup took, from its
  first query to its result (:mod:`physarum.dht.client`);
* ``physarum_dht_queries_total{type,result}``: requests this node sent, by message type and result:
  ``ok`` or the failure's kind (:class:`physarum.errors.FailureKind`: ``gone``, ``protocol``,
  ``deadline``, ``limit``, ``not_in_network``) (:mod:`physarum.dht.client`);
* refusals (:mod:`physarum.dht.server`): ``physarum_dht_requests_refused_total{reason}``
  (:data:`REQUEST_REFUSALS`), ``physarum_dht_records_refused_total{reason}``
  (:data:`RECORD_REFUSALS`) and ``physarum_dht_providers_refused_total{reason}``
  (:data:`PROVIDER_REFUSALS`).

Every update runs on the trio thread. To add a series: create it here on ``registry`` and update
it from the part that knows the event (each part is handed this object, or None without a registry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from physarum.dht.messages import MessageType
from physarum.dht.providers import ProviderOutcome
from physarum.errors import FailureKind

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

#: What a query we sent came to (``physarum_dht_queries_total{result}``).
QUERY_RESULTS = ("ok", *(k.value for k in FailureKind))
#: Lookup duration buckets (seconds): a lookup on loopback takes milliseconds, across a WAN a
#: few round trips of 10-300 ms each, and a lookup that waits out silent peers its query timeout.
LOOKUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: Why a request was refused (``physarum_dht_requests_refused_total{reason}``).
REQUEST_REFUSALS = ("too_large", "key_too_large", "memory", "malformed", "slow")
#: Why a PUT_VALUE record was refused (``physarum_dht_records_refused_total{reason}``).
RECORD_REFUSALS = ("invalid", "stale", "wrong_key", "publisher_quota", "name_full", "store_full")
#: Why an ADD_PROVIDER entry was refused (``physarum_dht_providers_refused_total{reason}``).
PROVIDER_REFUSALS = tuple(o.value for o in ProviderOutcome if o is not ProviderOutcome.STORED)


class DhtMetrics:
    """The DHT's series on ``registry``.

    Raises:
        ValueError: ``registry`` already holds one of these names (one DHT per registry).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge, Histogram  # only nodes that export metrics pay for it

        self.table_peers = Gauge(
            "physarum_routing_table_peers", "Peers in the DHT routing table.", registry=registry
        )
        requests = Counter(
            "physarum_dht_requests_total",
            "Kademlia requests served, by message type.",
            ["type"],
            registry=registry,
        )
        self.requests = {t: requests.labels(t.name.lower()) for t in MessageType}
        self.lookups = Counter(
            "physarum_dht_lookups_total",
            "Iterative Kademlia lookups this node started (its callers' and its table maintenance's).",
            registry=registry,
        )
        self.lookup_duration = Histogram(
            "physarum_dht_lookup_duration_seconds",
            "How long iterative lookups took, first query to result.",
            buckets=LOOKUP_BUCKETS,
            registry=registry,
        )
        queries = Counter(
            "physarum_dht_queries_total",
            "Kademlia requests this node sent, by message type and result (ok or the failure's kind).",
            ["type", "result"],
            registry=registry,
        )
        self.queries: dict[tuple[MessageType, str], Counter] = {
            (t, r): queries.labels(t.name.lower(), r) for t in MessageType if t is not MessageType.PING for r in QUERY_RESULTS
        }
        refused = Counter(
            "physarum_dht_requests_refused_total",
            "Kademlia requests refused (their stream reset), by reason.",
            ["reason"],
            registry=registry,
        )
        records = Counter(
            "physarum_dht_records_refused_total",
            "Contact records refused in PUT_VALUE requests, by reason.",
            ["reason"],
            registry=registry,
        )
        providers = Counter(
            "physarum_dht_providers_refused_total",
            "Provider entries refused in ADD_PROVIDER requests, by reason.",
            ["reason"],
            registry=registry,
        )
        self.refused = {
            "request": {r: refused.labels(r) for r in REQUEST_REFUSALS},
            "record": {r: records.labels(r) for r in RECORD_REFUSALS},
            "provider": {r: providers.labels(r) for r in PROVIDER_REFUSALS},
        }


__all__ = ["LOOKUP_BUCKETS", "PROVIDER_REFUSALS", "QUERY_RESULTS", "RECORD_REFUSALS", "REQUEST_REFUSALS", "DhtMetrics"]
