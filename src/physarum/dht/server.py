"""Answering kad requests: the ``/ipfs/kad/1.0.0`` stream handler and one ``rpc_*`` per message type.

:meth:`KadServer.handle_stream` answers every message a stream carries, in order (go and js may
send several on one stream), until the asker closes its side or the stream idles for
``stream_idle_timeout``. :meth:`KadServer.rpc` answers one request: FIND_NODE, GET_VALUE and
PUT_VALUE (contact records), GET_PROVIDERS and ADD_PROVIDER, and PING (answered, never sent).
ADD_PROVIDER is never answered (libp2p sends it without waiting). A refused request resets that
stream and nothing else. To serve a new message type: a ``rpc_<name>`` method here, and its entry
in :meth:`KadServer.rpc`'s table.

Hostile peers (what one peer can make a node hold or do, whatever it sends):

* Requests are small: a request over ``max_request_size`` (64 KiB; the largest legitimate one, a
  PUT_VALUE of one contact record, is ~17 KiB: a 16 KiB envelope and its key twice) is refused
  from its length prefix alone, before its body is read; a key (or record key) over
  ``max_key_size`` (1 KiB: ours are at most 274 bytes, a CID or ``/ipns/`` key under 100; no
  reply ever echoes more) is refused; a request must arrive whole within ``request_timeout``
  (10 s) of its first byte. Each message read, request or answer, is reserved from the peer's
  memory budget (``stream.memory``, see :mod:`physarum.dht.framing`) while it is
  buffered and refused when the budget is spent. Answers we read may be up to 4 MiB (libp2p's
  limit). The host bounds the kad streams one peer may open at once.
* Addresses are bounded and handled in linear time wherever a peer's input reaches: identify,
  answers we decode, provider entries, contacts (see :mod:`physarum.dht.addrs`): at most 32 per
  peer, deduplicated with a set in one pass that stops once it has 32. An answer we send holds
  at most ``k`` peers of 32 addresses each.
* Records and providers have quotas per publisher, per name or key, and per store, and rank
  publishers by their history in our routing table (see :class:`~physarum.dht.records.RecordStore`
  and :class:`~physarum.dht.providers.ProviderStore`): throwaway identities can neither fill the
  store nor lock an established publisher out of a name.
* Refusals are counted (:mod:`physarum.dht.metrics`), logged one by one at DEBUG, and summed up at
  INFO at most once per ``refusal_log_interval`` (60 s).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Protocol

import trio

from physarum.dht import keyspace
from physarum.dht.addrs import bounded_addrs
from physarum.dht.framing import MemoryRefusedError, MessageReader, MessageTooLargeError, stream_budget
from physarum.dht.host_api import KadStream
from physarum.dht.messages import ConnectionType, Message, MessageType, Peer, Record, encode_framed
from physarum.dht.metrics import DhtMetrics
from physarum.dht.providers import ProviderOutcome, ProviderStore
from physarum.dht.records import (
    NameFullError,
    PublisherQuotaError,
    RecordError,
    RecordRejected,
    RecordStore,
    StaleRecordError,
    StoreFullError,
    WrongKeyError,
    decode_record_set,
    encode_record_set,
    record_id_from_key,
)
from physarum.dht.routing import Routing, now
from physarum.dht.table import RoutingTable
from physarum.errors import DecodeError, PhysarumError
from physarum.overlay.identity import PeerId
from physarum.overlay.multiaddr import Multiaddr

log = logging.getLogger(__name__)

#: Largest request served by default: a PUT_VALUE of one full-size contact record is ~17 KiB.
DEFAULT_MAX_REQUEST_SIZE = 64 * 1024
#: Longest key (and record key) served by default.
DEFAULT_MAX_KEY_SIZE = 1024


class ServerNode(Protocol):
    """What the server uses of its node (a :class:`~physarum.dht.service.KadDHT`)."""

    peer_id: PeerId
    k: int
    table: RoutingTable
    records: RecordStore
    providers: ProviderStore
    own_addrs: Callable[[], list[Multiaddr]]
    wall_clock: Callable[[], float]
    stream_idle_timeout: float
    request_timeout: float
    max_request_size: int
    max_key_size: int
    refusal_log_interval: float


class KadServer:
    """The server side of one node (see the module notes)."""

    def __init__(self, node: ServerNode, routing: Routing, metrics: DhtMetrics | None = None) -> None:
        self.node = node
        self.routing = routing
        self.metrics = metrics
        self._refusals: dict[str, int] = {}  # "kind reason" -> count since the last summary line
        self._refusals_logged_at = -math.inf

    async def handle_stream(self, stream: KadStream) -> None:
        """Answer the requests on one inbound kad stream (the handler registered on the host)."""
        node = self.node
        reader = MessageReader(stream, budget=stream_budget(stream))
        sender = stream.peer_id
        while True:
            try:
                with trio.move_on_after(node.stream_idle_timeout) as idle:
                    more = await reader.wait_message()
                if idle.cancelled_caught or not more:
                    return  # idle, or the asker closed its side: the host closes the stream
                with trio.fail_after(node.request_timeout):
                    request = await reader.receive(node.max_request_size)
            except trio.BrokenResourceError:
                return  # the asker closed or reset mid-request: nothing to answer
            except (MessageTooLargeError, MemoryRefusedError, DecodeError, trio.TooSlowError) as e:
                if isinstance(e, trio.TooSlowError):
                    self.refuse("request", "slow", sender, f"not whole within {node.request_timeout:g} s")
                else:
                    self.refuse("request", _request_refusal(e), sender, str(e))
                stream.reset()
                return
            reply = self.rpc(sender, request)
            if reply is None:
                stream.reset()
                return
            if request.type != MessageType.ADD_PROVIDER:  # libp2p never answers ADD_PROVIDER
                await stream.send_all(encode_framed(reply))

    def refuse(self, kind: str, reason: str, sender: PeerId | None, detail: str) -> None:
        """Count a refusal (``kind`` is request, record or provider), log it at DEBUG, and sum
        the refusals up at INFO at most once per ``refusal_log_interval``."""
        if self.metrics is not None:
            self.metrics.refused[kind][reason].inc()
        log.debug("kad %s from %s refused (%s): %s", kind, sender, reason, detail)
        what = f"{kind} {reason}"
        self._refusals[what] = self._refusals.get(what, 0) + 1
        t = now()
        if t - self._refusals_logged_at >= self.node.refusal_log_interval:
            since = t - self._refusals_logged_at
            window = f"in {since:.0f} s" if math.isfinite(since) else "so far"
            summary = ", ".join(f"{k} {n:,}" for k, n in sorted(self._refusals.items()))
            log.info("kad: refused %s: %s (details at DEBUG)", window, summary)
            self._refusals.clear()
            self._refusals_logged_at = t

    def _closer(self, sender: PeerId | None, key: bytes) -> list[Peer]:
        """The ``k`` contacts closest to ``key``, the asker left out."""
        exclude = [sender] if sender is not None else []
        return self.routing.closest_peers(keyspace.kad_key(key), self.node.k, exclude)

    def rpc(self, sender: PeerId | None, request: Message) -> Message | None:
        """Answer one request; None means refuse it (the stream is reset).

        A key or record key over ``max_key_size`` is refused before anything else is done."""
        node = self.node
        longest = max(len(request.key), len(request.record.key) if request.record is not None else 0)
        if longest > node.max_key_size:
            self.refuse("request", "key_too_large", sender, f"key of {longest} bytes, at most {node.max_key_size}")
            return None
        handler = {
            MessageType.FIND_NODE: self.rpc_find_node,
            MessageType.GET_VALUE: self.rpc_get_value,
            MessageType.PUT_VALUE: self.rpc_put_value,
            MessageType.GET_PROVIDERS: self.rpc_get_providers,
            MessageType.ADD_PROVIDER: self.rpc_add_provider,
            MessageType.PING: self.rpc_ping,
        }[request.type]
        if sender is not None and sender in node.table:
            node.table.touch(sender, now())
        if self.metrics is not None:
            self.metrics.requests[request.type].inc()
        return handler(sender, request)

    def rpc_ping(self, sender: PeerId | None, request: Message) -> Message:
        return Message(MessageType.PING)

    def rpc_find_node(self, sender: PeerId | None, request: Message) -> Message:
        node = self.node
        peers = self._closer(sender, request.key)
        if request.key == node.peer_id.to_bytes():
            peers = [Peer(node.peer_id, bounded_addrs(node.own_addrs()), ConnectionType.CONNECTED), *peers]
        return Message(MessageType.FIND_NODE, key=request.key, closer_peers=tuple(peers[: node.k]))

    def rpc_get_value(self, sender: PeerId | None, request: Message) -> Message:
        closer = tuple(self._closer(sender, request.key))
        record = None
        try:
            record_id = record_id_from_key(request.key)
        except (RecordError, DecodeError):
            record_id = None
        if record_id is not None:
            envelopes = self.node.records.get(record_id, self.node.wall_clock())
            if envelopes:
                record = Record(request.key, encode_record_set(envelopes))
        return Message(MessageType.GET_VALUE, key=request.key, record=record, closer_peers=closer)

    def rpc_put_value(self, sender: PeerId | None, request: Message) -> Message | None:
        if request.record is None:
            self.refuse("record", "invalid", sender, "PUT_VALUE without a record")
            return None
        try:
            record_id = record_id_from_key(request.record.key)
            envelopes = decode_record_set(request.record.value)
        except (RecordError, DecodeError) as e:
            self.refuse("record", "invalid", sender, str(e))
            return None
        wall = self.node.wall_clock()
        for envelope in envelopes:
            result = self.node.records.put(envelope, wall, record_id=record_id)
            if isinstance(result, RecordRejected):
                self.refuse("record", _record_refusal(result.error), sender, result.reason)
                return None
        return request

    def rpc_get_providers(self, sender: PeerId | None, request: Message) -> Message:
        providers = tuple(
            Peer(p.peer_id, tuple(p.addrs), ConnectionType.CAN_CONNECT)
            for p in self.node.providers.get(request.key, now(), limit=self.node.k)
        )
        closer = tuple(self._closer(sender, request.key))
        return Message(MessageType.GET_PROVIDERS, key=request.key, closer_peers=closer, provider_peers=providers)

    def rpc_add_provider(self, sender: PeerId | None, request: Message) -> Message | None:
        for provider in request.provider_peers:
            # Only a peer can say it provides: anything else would let one peer enlist others.
            if sender is not None and provider.peer_id != sender:
                continue
            outcome = self.node.providers.offer(request.key, provider.peer_id, provider.addrs, now())
            if outcome is not ProviderOutcome.STORED:
                self.refuse("provider", outcome.value, sender, f"provider entry for a key of {len(request.key)} bytes")
        return None if sender is None else Message(MessageType.ADD_PROVIDER, key=request.key)


def _request_refusal(error: PhysarumError) -> str:
    """The ``physarum_dht_requests_refused_total`` reason for a request that could not be read."""
    if isinstance(error, MessageTooLargeError):
        return "too_large"
    if isinstance(error, MemoryRefusedError):
        return "memory"
    return "malformed"


def _record_refusal(error: RecordError) -> str:
    """The ``physarum_dht_records_refused_total`` reason for a refused record."""
    if isinstance(error, StaleRecordError):
        return "stale"
    if isinstance(error, WrongKeyError):
        return "wrong_key"
    if isinstance(error, PublisherQuotaError):
        return "publisher_quota"
    if isinstance(error, NameFullError):
        return "name_full"
    if isinstance(error, StoreFullError):
        return "store_full"
    return "invalid"


__all__ = ["DEFAULT_MAX_KEY_SIZE", "DEFAULT_MAX_REQUEST_SIZE", "KadServer", "ServerNode"]
