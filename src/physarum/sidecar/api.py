"""The sidecar's operations: one async method per ``operationId`` of :data:`~.openapi.OPENAPI`.

Each takes the path parameters and the validated JSON body and returns ``(status, JSON object)``;
failures a client must tell apart become :class:`ApiError` (a status, a code, a message), so the
HTTP layer (:mod:`physarum.sidecar.server`) only maps them to bodies. Nothing here knows HTTP.

``GET /v1/peers`` pings every connected peer concurrently each time it is asked, within
:attr:`ApiOptions.peers_ping_budget`: an RTT is always fresh, a peer that does not echo in time is
listed with ``rtt_ms: null``, and the node keeps no state for it (no background pinging).

Provider keys are names: the DHT key is the SHA2-256 multihash of the name's UTF-8 bytes, as
:func:`physarum.services.discovery.service_key` builds it, so the instances of a service named
``hello`` are the providers of ``hello`` here.

Messages (``/v1/topics/{topic}/messages``) are :mod:`physarum.sidecar.messages`: signed by this node's
key, stored on the stores closest to the topic. Without a :class:`~.messages.MessageService` (an
embedder that passes none) those operations answer 503 ``no_store``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from physarum.dht.maintenance import NotJoinedError
from physarum.dht.records import DEFAULT_RECORD_TTL, RecordError
from physarum.dht.service import KadDHT, PeerNotFoundError
from physarum.errors import PEER_FAILURES, DecodeError, DialError, exception_leaves
from physarum.overlay import addr as addrs_
from physarum.overlay.host import Host
from physarum.overlay.identity import KeyPair, PeerId
from physarum.overlay.multiaddr import Multiaddr
from physarum.services.discovery import service_key
from physarum.sidecar.messages import MessageError, MessageService
from physarum.sidecar.openapi import OPENAPI

JSON = dict[str, Any]
Result = tuple[int, JSON]


class ApiError(Exception):
    """A request that cannot be served: HTTP ``status``, a stable ``code`` and a one-line ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class ApiOptions:
    """Deadlines of the operations (seconds)."""

    dial_timeout: float = 10.0
    """``join``, and dialing a peer to ping it."""
    dht_timeout: float = 30.0
    """A DHT lookup, publish or provide."""
    ping_timeout: float = 10.0
    """A whole ping request (every echo)."""
    peers_ping_budget: float = 0.5
    """``GET /v1/peers``: how long the peers are pinged for their RTTs."""


def _reason(e: BaseException) -> str:
    """A failure in a few words, without reprs."""
    if isinstance(e, DialError) and e.errors:
        causes = [v for k, v in e.errors.items() if k != "(deadline)"] or list(e.errors.values())
        return _reason(causes[0])
    if isinstance(e, BaseExceptionGroup):
        return _reason(next(exception_leaves(e)))
    if isinstance(e, OSError) and e.errno is None and e.__cause__ is not None:
        return _reason(e.__cause__)
    text = str(e).split("\n", 1)[0] or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _timed_out(e: BaseException) -> bool:
    if isinstance(e, trio.TooSlowError | TimeoutError):
        return True
    return isinstance(e, DialError) and bool(e.errors) and set(e.errors) == {"(deadline)"}


def parse_peer_id(text: str) -> PeerId:
    """
    Raises:
        ApiError: 400 ``bad_peer_id``.
    """
    try:
        return PeerId.from_string(text)
    except (DecodeError, ValueError) as e:
        raise ApiError(400, "bad_peer_id", f"not a peer id: {_reason(e)}") from None


def _peer_json(peer_id: PeerId, addrs: Any) -> JSON:
    out = []
    for a in addrs:
        try:
            out.append(str(addrs_.with_peer(a, peer_id)))
        except addrs_.AddressError:
            out.append(str(a))
    return {"peer_id": str(peer_id), "addrs": out}


class SidecarApi:
    """The operations over a running ``host`` and its ``dht`` (started by the caller)."""

    def __init__(
        self,
        host: Host,
        dht: KadDHT,
        options: ApiOptions | None = None,
        messages: MessageService | None = None,
        key_pair: KeyPair | None = None,
    ) -> None:
        self.host = host
        self.dht = dht
        self.options = options or ApiOptions()
        self.messages = messages
        self.key_pair = key_pair
        self.handlers: dict[str, Callable[[Mapping[str, str], JSON], Awaitable[Result]]] = {
            "openapi": self.openapi,
            "info": self.info,
            "join": self.join,
            "peers": self.peers,
            "ping": self.ping,
            "find_peer": self.find_peer,
            "publish_record": self.publish_record,
            "find_records": self.find_records,
            "provide": self.provide,
            "find_providers": self.find_providers,
            "persist": self.persist,
            "query": self.query,
        }

    async def _network(self, work: Callable[[], Awaitable[Result]], timeout: float) -> Result:
        """``work()`` within ``timeout``, its network failures mapped to 503/504."""
        try:
            with trio.fail_after(timeout):
                return await work()
        except NotJoinedError as e:
            raise ApiError(503, "not_joined", e.reason) from None
        except trio.TooSlowError:
            raise ApiError(504, "timeout", f"no answer within {timeout:g} s") from None

    async def openapi(self, _params: Mapping[str, str], _body: JSON) -> Result:
        return 200, OPENAPI

    async def info(self, _params: Mapping[str, str], _body: JSON) -> Result:
        return 200, {
            "peer_id": str(self.host.peer_id),
            "addrs": [str(a) for a in self.host.addrs],
            "joined": len(self.dht.table) > 0,
            "connected_peers": len(self.host.connected_peers()),
        }

    async def join(self, _params: Mapping[str, str], body: JSON) -> Result:
        text: str = body["address"]
        try:
            address = Multiaddr(text)
            addrs_.tcp_endpoint(address)
        except (addrs_.AddressError, DecodeError, ValueError) as e:
            raise ApiError(400, "bad_multiaddr", f"bad address {text!r}: {_reason(e)}") from None
        timeout = self.options.dial_timeout
        try:
            with trio.fail_after(timeout + 1):  # the host's own deadline comes first
                conn = await self.host.connect(address, timeout=timeout)
        except PEER_FAILURES as e:
            if _timed_out(e):
                raise ApiError(504, "timeout", f"no answer from {text} within {timeout:g} s") from None
            raise ApiError(503, "unreachable", f"cannot reach {text}: {_reason(e)}") from None
        return 200, {"peer_id": str(conn.peer_id)}

    async def peers(self, _params: Mapping[str, str], _body: JSON) -> Result:
        peers = self.host.connected_peers()
        rtts: dict[PeerId, float] = {}

        async def one(peer: PeerId) -> None:
            try:
                rtts[peer] = (await self.host.ping(peer, timeout=self.options.peers_ping_budget))[0]
            except PEER_FAILURES:
                pass  # listed without an RTT

        with trio.move_on_after(self.options.peers_ping_budget):
            async with trio.open_nursery() as nursery:
                for p in peers:
                    nursery.start_soon(one, p)
        out = [{"peer_id": str(p), "rtt_ms": round(rtts[p] * 1000, 3) if p in rtts else None} for p in peers]
        return 200, {"peers": out}

    async def ping(self, params: Mapping[str, str], body: JSON) -> Result:
        peer = parse_peer_id(params["peer_id"])
        count: int = body.get("count", 1)
        if peer == self.host.peer_id:
            raise ApiError(400, "self", "cannot ping this node itself")
        opts = self.options
        if self.host.connection(peer) is None:
            try:
                found = await self.dht.find_peer(peer, timeout=opts.dht_timeout)
            except PeerNotFoundError:
                raise ApiError(404, "peer_not_found", f"peer {peer} is not connected and not found") from None
            except NotJoinedError as e:
                raise ApiError(503, "not_joined", e.reason) from None
            except trio.TooSlowError:
                raise ApiError(
                    504, "timeout", f"peer {peer} not found within {opts.dht_timeout:g} s"
                ) from None
            self.host.peerstore.add_addrs(found.peer_id, list(found.addrs), prefer=True)
        try:
            rtts = await self.host.ping(peer, count=count, timeout=opts.ping_timeout)
        except PEER_FAILURES as e:
            if _timed_out(e):
                raise ApiError(
                    504, "timeout", f"no echo from {peer} within {opts.ping_timeout:g} s"
                ) from None
            raise ApiError(503, "unreachable", f"cannot ping {peer}: {_reason(e)}") from None
        return 200, {"peer_id": str(peer), "rtts_ms": [round(r * 1000, 3) for r in rtts]}

    async def find_peer(self, params: Mapping[str, str], _body: JSON) -> Result:
        peer = parse_peer_id(params["peer_id"])

        async def work() -> Result:
            try:
                found = await self.dht.find_peer(peer)
            except PeerNotFoundError:
                raise ApiError(404, "peer_not_found", f"peer {peer} not found in the DHT") from None
            return 200, _peer_json(found.peer_id, found.addrs)

        return await self._network(work, self.options.dht_timeout)

    async def publish_record(self, _params: Mapping[str, str], body: JSON) -> Result:
        name: str = body["name"]
        endpoints = []
        for text in body.get("endpoints", []):
            try:
                endpoints.append(Multiaddr(text))
            except (addrs_.AddressError, DecodeError, ValueError) as e:
                raise ApiError(400, "bad_multiaddr", f"bad endpoint {text!r}: {_reason(e)}") from None
        ttl = float(body.get("ttl", DEFAULT_RECORD_TTL))

        async def work() -> Result:
            try:
                stored = await self.dht.publish_contact(name, endpoints, body.get("data", {}), ttl=ttl)
            except (RecordError, addrs_.AddressError) as e:
                raise ApiError(400, "bad_record", _reason(e)) from None
            return 200, {"name": name, "publisher": str(self.host.peer_id), "stored": stored}

        return await self._network(work, self.options.dht_timeout)

    async def find_records(self, params: Mapping[str, str], _body: JSON) -> Result:
        name = params["name"]

        async def work() -> Result:
            records = await self.dht.find_contact(name)
            out = [
                {
                    "name": r.id,
                    "publisher": str(r.publisher),
                    "endpoints": [str(e) for e in r.endpoints],
                    "data": r.data,
                    "seq": r.seq,
                    "expires": r.expires,
                }
                for r in records
            ]
            return 200, {"records": out}

        return await self._network(work, self.options.dht_timeout)

    async def provide(self, params: Mapping[str, str], _body: JSON) -> Result:
        key = params["key"]

        async def work() -> Result:
            stored = await self.dht.provide(service_key(key))
            return 200, {"key": key, "stored": stored}

        return await self._network(work, self.options.dht_timeout)

    async def find_providers(self, params: Mapping[str, str], _body: JSON) -> Result:
        key = params["key"]

        async def work() -> Result:
            found = await self.dht.find_providers(service_key(key))
            return 200, {"key": key, "providers": [_peer_json(p.peer_id, p.addrs) for p in found]}

        return await self._network(work, self.options.dht_timeout)

    def _message_service(self) -> tuple[MessageService, KeyPair]:
        if self.messages is None or self.key_pair is None:
            raise ApiError(503, "no_store", "this node does not run the message service")
        return self.messages, self.key_pair

    async def persist(self, params: Mapping[str, str], body: JSON) -> Result:
        service, key_pair = self._message_service()
        topic = params["topic"]
        if ("data" in body) == ("data_base64" in body):
            raise ApiError(400, "bad_body", "give exactly one of data and data_base64")
        raw = "data_base64" in body
        data = body.get("data")
        if raw:
            try:
                data = base64.b64decode(body["data_base64"], validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, "bad_body", "data_base64 is not base64") from None
        timeout = self.options.dht_timeout
        try:
            with trio.fail_after(timeout):
                result = await service.persist(key_pair, topic, data, raw=raw)
        except MessageError as e:
            raise ApiError(_MESSAGE_STATUS.get(e.code, 503), e.code, e.message) from None
        except trio.TooSlowError:
            raise ApiError(504, "timeout", f"not acknowledged within {timeout:g} s") from None
        return 201, {"topic": topic, "message": result.message.to_json(), "stored": result.stored}

    async def query(self, params: Mapping[str, str], _body: JSON) -> Result:
        service, _ = self._message_service()
        topic = params["topic"]
        since = int(params.get("since", 0))
        limit = int(params.get("limit", 100))
        timeout = self.options.dht_timeout
        try:
            with trio.fail_after(timeout):
                messages, more = await service.query(topic, since, limit)
        except MessageError as e:
            raise ApiError(_MESSAGE_STATUS.get(e.code, 503), e.code, e.message) from None
        except trio.TooSlowError:
            raise ApiError(504, "timeout", f"no store answered within {timeout:g} s") from None
        return 200, {"topic": topic, "messages": [m.to_json() for m in messages], "more": more}


#: HTTP status of each message error code (others: 503).
_MESSAGE_STATUS = {"bad_topic": 400, "too_large": 413, "malformed": 400}


__all__ = ["JSON", "ApiError", "ApiOptions", "Result", "SidecarApi", "parse_peer_id"]
