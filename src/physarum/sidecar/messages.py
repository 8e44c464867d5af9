"""Messages: append to a named topic, stored on the nodes closest to it, queried back in order.

This is lightchain's ``Persist``/``Query`` on physarum. Decisions (issue 10):

* **A message is a signed envelope** (domain ``physarum-topic-message``) whose payload is the JSON
  object ``{"topic", "seq", "ts", "prev", "type", "data"}``: ``seq`` counts the publisher's messages
  in the topic from 1, ``ts`` is the publisher's clock in unix milliseconds (never going back for one
  publisher and topic), ``prev`` the hex id of the publisher's previous message in the topic ("" for
  the first), ``type`` ``"json"`` (``data`` any JSON value) or ``"bytes"`` (``data`` base64). A
  message's id is the SHA-256 of its payload. ``data`` is at most :data:`MAX_DATA_BYTES` (its
  compact JSON text, or its raw bytes).
* **Reading is cheap to trust.** Each publisher's messages form a hash chain through ``prev``, so a
  reader checks one signature per publisher and unbroken run (the newest message of the run) and
  only a hash for every message below it: a query of 1,000 messages costs about one Ed25519
  check instead of 1,000 (142 us each here). Stores check every signature when they take a message.
* **Where messages live**: every sidecar is a *store*: it serves :data:`PROTOCOL_ID`, keeps what it
  is sent in SQLite (WAL; a store killed mid-write keeps every message it acknowledged) and provides
  :data:`STORES_NAME` on the DHT. A topic's messages go to the ``replicas`` stores (3) closest to
  the topic's key (SHA-256 of ``physarum-topic:NAME``) by XOR distance, among the stores this node
  knows (itself, connected peers whose identify lists the protocol, and the DHT's providers of
  :data:`STORES_NAME`). When one of them fails, the next closest takes its place.
* **Acknowledged** means stored by ``replicas`` stores, or by every store known when there are
  fewer. A persist that reached fewer is answered 503 (the message may still appear: it was stored
  somewhere, and the publisher's chain moves past it so nothing is signed twice with one ``seq``).
* **Replication and republish**: every ``sync_interval`` seconds a store offers each topic it holds
  to the other stores now closest to it: it asks each for a digest (count and newest ``seq`` per
  publisher) and sends what they lack. A store that was down, or one that became closer, is filled
  within one interval; a restarted store answers from its disk at once.
* **Queries** ask the closest stores at once: one for the messages, the others for their ids (up to
  ``query_grace`` seconds after the messages came), and fetch by id what the others hold and the
  first lacks (a store that missed messages while it was down is covered by the others). Order: by
  ``ts``, then publisher, then ``seq``: publish order for each publisher.
  ``since`` (unix ms) keeps messages with ``ts >= since``; ``limit`` caps the answer (1,000 at most).

Wire (``/physarum/topics/1.0.0``): one request per stream, uvarint-length-prefixed JSON objects
(:mod:`physarum.services.wire`). Requests: ``{"op": "store", "messages": [B64...]}`` ->
``{"stored": N, "conflicts": N}``; ``{"op": "query", "topic", "since", "limit"}`` -> messages
``{"messages": [B64...]}`` of at most :data:`MAX_FRAME` bytes each, then the end of the stream (with
``"ids": true``: ``{"ids": [HEX...]}`` instead); ``{"op": "get", "topic", "ids": [HEX...]}`` -> messages;
``{"op": "head", "topic", "publisher"}`` -> ``{"seq", "id", "ts"}`` (seq 0: none);
``{"op": "digest", "topic"}`` -> ``{"publishers": {ID: [count, max_seq]}}``;
``{"op": "seqs", "topic", "publisher"}`` -> ``{"seqs": [...]}``. Errors: ``{"error": CODE, "message"}``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import logging
import math
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from physarum.dht import keyspace
from physarum.errors import PEER_FAILURES, DecodeError, PhysarumError
from physarum.overlay import pb
from physarum.overlay.envelope import EnvelopeError, open_envelope, seal
from physarum.overlay.identity import KeyPair, PeerId, PublicKey
from physarum.services.discovery import Advertiser, AdvertiserOptions, service_key
from physarum.services.wire import call, serve_request

log = logging.getLogger("physarum.sidecar.messages")

PROTOCOL_ID = "/physarum/topics/1.0.0"
#: The name stores provide on the DHT (its :func:`~physarum.services.discovery.service_key`).
STORES_NAME = "physarum-topics"
MESSAGE_DOMAIN = b"physarum-topic-message"
MESSAGE_TYPE = b"/physarum/topic-message/1"
#: Topic names: what fits a URL path segment and a log line unquoted.
TOPIC_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
#: Largest ``data`` of one message: its compact JSON text, or its raw bytes.
MAX_DATA_BYTES = 32768
#: Largest signed message taken (the data in base64 plus the envelope's key, signature and fields).
MAX_ENVELOPE_BYTES = 48 * 1024
#: Largest wire message (a batch of messages in base64, or a query's answer piece).
MAX_FRAME = 1 << 20
#: Largest ``limit`` of one query.
MAX_LIMIT = 1000
#: Largest number of sequence numbers a ``seqs`` answer lists (the rest are synced next round).
MAX_SEQS = 50000


class MessageError(PhysarumError):
    """A message or topic request that cannot be served; ``code`` is its wire and API code."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadTopicError(MessageError):
    code = "bad_topic"


class TooLargeError(MessageError):
    code = "too_large"


class MalformedMessageError(MessageError, DecodeError):
    """A message that does not decode, is badly signed, or breaks its publisher's chain."""

    code = "malformed"


class NoStoreError(MessageError):
    """Too few stores could be found or reached."""

    code = "no_store"


_CODES: dict[str, type[MessageError]] = {
    c.code: c for c in (MessageError, BadTopicError, TooLargeError, MalformedMessageError, NoStoreError)
}
CALL_FAILURES: tuple[type[BaseException], ...] = (MessageError, DecodeError, *PEER_FAILURES)


def check_topic(topic: object) -> str:
    """
    Raises:
        BadTopicError: not a topic name (:data:`TOPIC_RE`).
    """
    if not isinstance(topic, str) or not TOPIC_RE.fullmatch(topic):
        raise BadTopicError(
            f"bad topic {str(topic)[:40]!r}: 1-128 characters of letters, digits and ._:- starting "
            "with a letter or digit"
        )
    return topic


def topic_key(topic: str) -> int:
    """The topic's position in the DHT's keyspace."""
    return keyspace.kad_key(b"physarum-topic:" + topic.encode())


@dataclass(frozen=True)
class Message:
    """One message as read back: ``data`` is the JSON value, or bytes for type ``"bytes"``."""

    topic: str
    publisher: PeerId
    seq: int
    ts: int
    prev: str
    type: str
    data: Any
    id: str
    envelope: bytes = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """The API's view: ``data`` for JSON messages, ``data_base64`` for bytes."""
        out: dict[str, Any] = {
            "publisher": str(self.publisher),
            "seq": self.seq,
            "ts": self.ts,
            "id": self.id,
        }
        if self.type == "bytes":
            out["data_base64"] = base64.b64encode(self.data).decode()
        else:
            out["data"] = self.data
        return out


def encode_data(data: Any, *, raw: bool) -> tuple[str, Any]:
    """``(type, wire data)`` for a message holding ``data`` (bytes when ``raw``).

    Raises:
        TooLargeError: over :data:`MAX_DATA_BYTES`.
    """
    if raw:
        size = len(data)
        wire: Any = base64.b64encode(data).decode()
    else:
        size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())
        wire = data
    if size > MAX_DATA_BYTES:
        raise TooLargeError(f"the message's data is {size} bytes; the limit is {MAX_DATA_BYTES}")
    return ("bytes" if raw else "json"), wire


def seal_message(
    key_pair: KeyPair, topic: str, seq: int, ts: int, prev: str, type_: str, wire_data: Any
) -> Message:
    """Sign a message (``wire_data`` as :func:`encode_data` returns it)."""
    payload = json.dumps(
        {"topic": topic, "seq": seq, "ts": ts, "prev": prev, "type": type_, "data": wire_data},
        separators=(",", ":"),
        sort_keys=True,
        ensure_ascii=False,
    ).encode()
    envelope = seal(key_pair, MESSAGE_DOMAIN, MESSAGE_TYPE, payload)
    return _from_payload(envelope, key_pair.public_key.peer_id(), payload)


def _from_payload(envelope: bytes, publisher: PeerId, payload: bytes) -> Message:
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError) as e:
        raise MalformedMessageError(f"message payload is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise MalformedMessageError("message payload is not a JSON object")
    topic = check_topic(obj.get("topic"))
    seq, ts = _positive(obj, "seq"), _positive(obj, "ts")
    prev, type_ = obj.get("prev"), obj.get("type")
    if not isinstance(prev, str) or (prev and not re.fullmatch(r"[0-9a-f]{64}", prev)):
        raise MalformedMessageError("message prev must be a hex SHA-256 id or empty")
    if (seq == 1) != (prev == ""):
        raise MalformedMessageError("a message has an empty prev exactly when its seq is 1")
    data = obj.get("data")
    if type_ == "bytes":
        try:
            data = base64.b64decode(data, validate=True) if isinstance(data, str) else None
        except (binascii.Error, ValueError):
            data = None
        if data is None:
            raise MalformedMessageError("a bytes message's data must be base64")
    elif type_ != "json":
        raise MalformedMessageError(f"unknown message type {type_!r}")
    return Message(
        topic, publisher, seq, ts, prev, type_, data, hashlib.sha256(payload).hexdigest(), envelope
    )


def _positive(obj: dict[str, Any], name: str) -> int:
    v = obj.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 1 << 62:
        raise MalformedMessageError(f"message {name} must be a positive integer, not {v!r}")
    return v


def open_message(envelope: bytes, *, verify: bool = True) -> Message:
    """Decode a message; with ``verify`` also check its signature.

    Unverified messages are only for :func:`verify_chains`, which checks them through the chain.

    Raises:
        MalformedMessageError: too large, not a message envelope, badly signed, or invalid fields.
    """
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise MalformedMessageError(f"message of {len(envelope)} bytes exceeds {MAX_ENVELOPE_BYTES}")
    if verify:
        try:
            env = open_envelope(envelope, MESSAGE_DOMAIN, MESSAGE_TYPE, max_size=MAX_ENVELOPE_BYTES)
        except EnvelopeError as e:
            raise MalformedMessageError(f"bad message envelope: {e}") from None
        return _from_payload(envelope, env.signer, env.payload)
    try:
        fields = pb.decode(envelope)
        raw_key, ptype, payload = (pb.get_bytes(fields, n) for n in (1, 2, 3))
        if raw_key is None or payload is None or ptype != MESSAGE_TYPE:
            raise DecodeError("not a message envelope")
        publisher = _publisher_of(raw_key)
    except DecodeError as e:
        raise MalformedMessageError(f"bad message envelope: {e}") from None
    return _from_payload(envelope, publisher, payload)


@functools.lru_cache(maxsize=1024)
def _publisher_of(raw_key: bytes) -> PeerId:
    """A key's peer id, cached: a query's messages come from a few publishers, each repeating its key
    (decoding it and hashing it into a peer id was a third of a 1,000-message query)."""
    return PublicKey.from_protobuf(raw_key).peer_id()


def verify_chains(messages: Iterable[Message]) -> list[Message]:
    """The messages whose authorship holds, each once: the newest of every unbroken run of a
    publisher's chain by its signature, the ones below it by the ``prev`` hashes leading down to them.
    Messages that fail (forged, or in conflict with a verified one) are dropped and logged."""
    by_publisher: dict[PeerId, dict[int, list[Message]]] = {}
    for m in messages:
        by_publisher.setdefault(m.publisher, {}).setdefault(m.seq, []).append(m)
    out: list[Message] = []
    for publisher, seqs in by_publisher.items():
        trusted_prev: str | None = None  # the prev the verified message above names
        for seq in sorted(seqs, reverse=True):
            candidates = {m.id: m for m in seqs[seq]}
            chosen: Message | None = None
            if trusted_prev is not None and trusted_prev in candidates:
                chosen = candidates[trusted_prev]
            else:
                for m in candidates.values():
                    try:
                        open_message(m.envelope, verify=True)
                    except MalformedMessageError as e:
                        log.info("messages: dropping %s #%d of %s: %s", m.topic, seq, publisher, e)
                        continue
                    chosen = m
                    break
            if chosen is None:
                trusted_prev = None
                continue
            out.append(chosen)
            trusted_prev = chosen.prev if seq - 1 in seqs else None
    return out


def order(messages: Iterable[Message]) -> list[Message]:
    """Publish order for each publisher: by ``ts``, then publisher, then ``seq``."""
    return sorted(messages, key=lambda m: (m.ts, m.publisher.to_bytes(), m.seq))


# -- the store ------------------------------------------------------------------------------------


class MessageStore:
    """A store's messages (and this node's own publishing heads) in the SQLite file ``path``
    (``":memory:"``: kept only while the process runs). Messages are checked before they are taken."""

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives the process being killed (not a power cut) without an
            # fsync per message, which is what keeps a persist within milliseconds.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS messages (
                    topic TEXT NOT NULL, publisher TEXT NOT NULL, seq INTEGER NOT NULL,
                    ts INTEGER NOT NULL, id TEXT NOT NULL, envelope BLOB NOT NULL,
                    PRIMARY KEY (topic, publisher, seq)) WITHOUT ROWID;
                CREATE INDEX IF NOT EXISTS messages_by_time ON messages (topic, ts);
                CREATE INDEX IF NOT EXISTS messages_by_id ON messages (id);
                CREATE TABLE IF NOT EXISTS heads (
                    topic TEXT PRIMARY KEY, seq INTEGER NOT NULL, id TEXT NOT NULL, ts INTEGER NOT NULL);
                """
            )
        except sqlite3.Error as e:
            raise PhysarumError(f"cannot open the message store {path}: {e}") from None

    def close(self) -> None:
        self._db.close()

    def put(self, messages: Sequence[Message]) -> tuple[int, int]:
        """Keep ``messages`` (already verified); ``(stored, conflicts)``: a conflict is a different
        message under a ``(topic, publisher, seq)`` already held (the first one stays)."""
        stored = conflicts = 0
        with self._db:
            self._db.execute("BEGIN")
            for m in messages:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?)",
                    (m.topic, str(m.publisher), m.seq, m.ts, m.id, m.envelope),
                )
                if cur.rowcount:
                    stored += 1
                    continue
                row = self._db.execute(
                    "SELECT id FROM messages WHERE topic=? AND publisher=? AND seq=?",
                    (m.topic, str(m.publisher), m.seq),
                ).fetchone()
                if row is not None and row[0] != m.id:
                    conflicts += 1
        return stored, conflicts

    def query(self, topic: str, since: int = 0, limit: int = MAX_LIMIT) -> list[bytes]:
        """Envelopes of ``topic`` with ``ts >= since``, in :func:`order`, at most ``limit``."""
        rows = self._db.execute(
            "SELECT envelope FROM messages WHERE topic=? AND ts>=? ORDER BY ts, publisher, seq LIMIT ?",
            (topic, since, limit),
        ).fetchall()
        return [r[0] for r in rows]

    def query_ids(self, topic: str, since: int = 0, limit: int = MAX_LIMIT) -> list[str]:
        """The ids of what :meth:`query` returns."""
        rows = self._db.execute(
            "SELECT id FROM messages WHERE topic=? AND ts>=? ORDER BY ts, publisher, seq LIMIT ?",
            (topic, since, limit),
        ).fetchall()
        return [r[0] for r in rows]

    def get(self, topic: str, ids: Sequence[str]) -> list[bytes]:
        """The envelopes of ``topic`` with these ids (those held)."""
        out: list[bytes] = []
        for start in range(0, len(ids), 500):  # SQLite's bound on parameters is 999 in old builds
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            out += [r[0] for r in self._db.execute(
                f"SELECT envelope FROM messages WHERE topic=? AND id IN ({marks})", (topic, *chunk)
            )]
        return out

    def head(self, topic: str, publisher: PeerId) -> tuple[int, str, int]:
        """``(seq, id, ts)`` of the publisher's newest message held in ``topic``; ``(0, "", 0)``: none."""
        row = self._db.execute(
            "SELECT seq, id, ts FROM messages WHERE topic=? AND publisher=? ORDER BY seq DESC LIMIT 1",
            (topic, str(publisher)),
        ).fetchone()
        return (row[0], row[1], row[2]) if row else (0, "", 0)

    def digest(self, topic: str) -> dict[str, tuple[int, int]]:
        """``publisher -> (count, newest seq)`` in ``topic``."""
        rows = self._db.execute(
            "SELECT publisher, COUNT(*), MAX(seq) FROM messages WHERE topic=? GROUP BY publisher", (topic,)
        ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def seqs(self, topic: str, publisher: str, limit: int = MAX_SEQS) -> list[int]:
        rows = self._db.execute(
            "SELECT seq FROM messages WHERE topic=? AND publisher=? ORDER BY seq LIMIT ?",
            (topic, publisher, limit),
        ).fetchall()
        return [r[0] for r in rows]

    def of_publisher(self, topic: str, publisher: str, skip: set[int]) -> Iterable[bytes]:
        for seq, envelope in self._db.execute(
            "SELECT seq, envelope FROM messages WHERE topic=? AND publisher=? ORDER BY seq", (topic, publisher)
        ):
            if seq not in skip:
                yield envelope

    def topics(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT topic FROM messages")]

    def own_head(self, topic: str) -> tuple[int, str, int] | None:
        """This node's publishing head in ``topic`` ``(seq, id, ts)``; None if never published here."""
        row = self._db.execute("SELECT seq, id, ts FROM heads WHERE topic=?", (topic,)).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def set_own_head(self, topic: str, seq: int, id_: str, ts: int) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO heads VALUES (?, ?, ?, ?)", (topic, seq, id_, ts))


# -- the service ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageOptions:
    """How many stores hold a topic and how they keep each other filled (seconds)."""

    replicas: int = 3
    """Stores that hold each topic (and must acknowledge a persist, when that many are known)."""
    sync_interval: float = 30.0
    """How often a store offers each topic it holds to the topic's other closest stores."""
    request_timeout: float = 5.0
    """One call to one store."""
    query_grace: float = 0.2
    """After the first store answers a query, how long the others may still add to it."""
    discovery_ttl: float = 30.0
    """How long the DHT's list of stores is reused before a persist or query looks it up again (it
    is refreshed in the background every half of it, so that seldom happens)."""
    advertise: AdvertiserOptions = field(default_factory=AdvertiserOptions)


@dataclass
class PersistResult:
    message: Message
    stored: int
    """Stores that acknowledged it."""
    wanted: int
    """Stores that had to (``replicas``, or every store known when fewer)."""


class MessageService:
    """This node as a store and as a client of the others: add it to a running host with
    ``host.add_service(MessageService(store, dht))`` (or :meth:`attach` and start :meth:`run`).

    ``dht`` is the node's :class:`~physarum.dht.service.KadDHT`; ``host`` comes with :meth:`attach`.
    """

    def __init__(self, store: MessageStore, dht: Any, options: MessageOptions = MessageOptions()) -> None:
        if options.replicas < 1:
            raise PhysarumError(f"replicas must be at least 1, got {options.replicas}")
        self.store = store
        self.dht = dht
        self.options = options
        self.requests = 0
        self.synced = 0
        self._host: Any = None
        self._found: list[PeerId] = []
        self._found_at = -math.inf
        self._locks: dict[str, trio.Lock] = {}

    @property
    def peer_id(self) -> PeerId:
        assert self._host is not None, "attach the message service to a host first"
        peer: PeerId = self._host.peer_id
        return peer

    def attach(self, host: Any) -> None:
        self._host = host
        host.set_handler(PROTOCOL_ID, self.handle_stream)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self._host is not None, "attach the message service to a host first"
        async with trio.open_nursery() as nursery:
            await nursery.start(Advertiser(STORES_NAME, self.dht, self._host, self.options.advertise).run)
            nursery.start_soon(self._refresh_stores)
            task_status.started()
            while True:
                await trio.sleep(self.options.sync_interval)
                await self.sync()

    async def _refresh_stores(self) -> None:
        # Ahead of time, so that a persist or a query rarely waits for the DHT's lookup itself.
        while True:
            await trio.sleep(max(self.options.discovery_ttl / 2, 1.0))
            await self.stores(refresh=True)

    # -- which stores --

    async def stores(self, *, refresh: bool = False) -> list[PeerId]:
        """Every store this node knows, itself included."""
        host = self._host
        known = {self.peer_id}
        for peer in host.connected_peers():
            info = host.peerstore.get(peer)
            if info is not None and PROTOCOL_ID in info.protocols:
                known.add(peer)
        now = trio.current_time()
        if refresh or now - self._found_at >= self.options.discovery_ttl:
            self._found_at = now
            try:
                found = await self.dht.find_providers(
                    service_key(STORES_NAME), timeout=self.options.request_timeout
                )
            except PEER_FAILURES as e:
                log.debug("looking up message stores failed: %s", e)
                found = []
            self._found = []
            for p in found:
                if p.addrs and p.peer_id != self.peer_id:
                    host.peerstore.add_addrs(p.peer_id, list(p.addrs))
                self._found.append(p.peer_id)
        known.update(self._found)
        return list(known)

    async def closest(self, topic: str, *, refresh: bool = False) -> list[PeerId]:
        """Every known store, closest to ``topic`` first."""
        return keyspace.sort_by_distance(topic_key(topic), await self.stores(refresh=refresh), keyspace.peer_key)

    # -- calls to one store --

    async def _call(self, peer: PeerId, request: dict[str, Any]) -> list[dict[str, Any]]:
        """Raises MessageError (the store's answer), DecodeError or one of PEER_FAILURES."""

        def refusal(code: str, message: str) -> MessageError:
            return _CODES.get(code, MessageError)(f"{peer}: {message}")

        timeout = self.options.request_timeout
        with trio.fail_after(timeout):
            stream = await self._host.new_lazy_stream(peer, PROTOCOL_ID, timeout=timeout)
            return await call(stream, request, refusal=refusal, max_size=MAX_FRAME)

    async def _store_on(self, peer: PeerId, messages: Sequence[Message]) -> None:
        if peer == self.peer_id:
            self.store.put(messages)
            return
        for batch in _batches([m.envelope for m in messages]):
            await self._call(peer, {"op": "store", "messages": batch})

    # -- persist --

    async def persist(self, key_pair: KeyPair, topic: str, data: Any, *, raw: bool = False) -> PersistResult:
        """Sign ``data`` as this node's next message in ``topic`` and store it (see the module).

        Raises:
            BadTopicError, TooLargeError: bad input.
            NoStoreError: fewer stores than wanted acknowledged it.
        """
        check_topic(topic)
        type_, wire = encode_data(data, raw=raw)
        lock = self._locks.setdefault(topic, trio.Lock())
        async with lock:
            seq, prev, last_ts = await self._head(topic)
            ts = max(int(time.time() * 1000), last_ts)
            message = seal_message(key_pair, topic, seq + 1, ts, prev, type_, wire)
            stored, wanted = await self._replicate(topic, message)
            if stored:
                self.store.set_own_head(topic, message.seq, message.id, message.ts)
        if stored < wanted:
            raise NoStoreError(f"message {message.seq} in {topic} stored by {stored} of {wanted} stores")
        return PersistResult(message, stored, wanted)

    async def _head(self, topic: str) -> tuple[int, str, int]:
        """This node's newest message in ``topic``: from its own record, else asked of the stores
        (a node started with a fresh store, or a new -messages-db, continues its chain)."""
        own = self.store.own_head(topic)
        if own is not None:
            return own
        best = self.store.head(topic, self.peer_id)
        results: list[tuple[int, str, int]] = []

        async def ask(peer: PeerId) -> None:
            try:
                answer = _one(await self._call(peer, {"op": "head", "topic": topic, "publisher": str(self.peer_id)}))
                seq, id_, ts = answer.get("seq"), answer.get("id"), answer.get("ts")
                if isinstance(seq, int) and isinstance(id_, str) and isinstance(ts, int):
                    results.append((seq, id_, ts))
            except CALL_FAILURES as e:
                log.debug("asking %s for our head in %s failed: %s", peer, topic, e)

        async with trio.open_nursery() as nursery:
            for peer in (await self.closest(topic))[: self.options.replicas + 2]:
                if peer != self.peer_id:
                    nursery.start_soon(ask, peer)
        # A store's word is taken for where the chain continues: the worst a lying store can do is
        # make this node skip sequence numbers or fork its own chain, which readers resolve.
        for r in results:
            if r[0] > best[0]:
                best = r
        return best

    async def _replicate(self, topic: str, message: Message) -> tuple[int, int]:
        """Store ``message`` on the closest stores, replacing failed ones with the next closest;
        ``(acknowledged, wanted)``."""
        candidates = await self.closest(topic)
        wanted = min(self.options.replicas, len(candidates))
        queue = list(candidates)
        stored = 0
        async def one(peer: PeerId, done: list[PeerId]) -> None:
            try:
                await self._store_on(peer, [message])
                done.append(peer)
            except CALL_FAILURES as e:
                log.info("storing %s #%d on %s failed: %s", topic, message.seq, peer, e)

        while stored < wanted and queue:
            batch, queue = queue[: wanted - stored], queue[wanted - stored :]
            done: list[PeerId] = []
            async with trio.open_nursery() as nursery:
                for peer in batch:
                    nursery.start_soon(one, peer, done)
            stored += len(done)
        if stored < wanted:
            self._found_at = -math.inf  # the list of stores is stale: look again next time
        return stored, wanted

    # -- query --

    async def query(self, topic: str, since: int = 0, limit: int = 100) -> tuple[list[Message], bool]:
        """Messages of ``topic`` with ``ts >= since`` in order, at most ``limit``, and whether more
        exist beyond it.

        The closest stores are asked at once: one (this node, when it is one of them) for the
        messages, the others for their ids only, within ``query_grace`` of the messages' arrival;
        what those hold and the first lacks (a store that was down while they were written) is
        then fetched by id. So a query costs about one store's answer, not ``replicas`` of them.

        Raises:
            BadTopicError: bad input.
            NoStoreError: no store answered.
        """
        check_topic(topic)
        limit = max(1, min(limit, MAX_LIMIT))
        stores = sorted((await self.closest(topic))[: self.options.replicas], key=lambda p: p != self.peer_id)
        first, rest = stores[0], stores[1:]
        window: dict[str, Any] = {"topic": topic, "since": since, "limit": limit + 1}
        ids: dict[PeerId, list[str]] = {}
        failures: list[str] = []
        envelopes: list[bytes] | None = None

        async def ids_of(peer: PeerId) -> None:
            try:
                ids[peer] = [i for answer in await self._call(peer, {"op": "query", "ids": True, **window})
                             for i in _strings(answer.get("ids"), "ids")]
            except CALL_FAILURES as e:
                failures.append(f"{peer}: {e}")

        async with trio.open_nursery() as nursery:
            for peer in rest:
                nursery.start_soon(ids_of, peer)
            try:
                envelopes = await self._messages(first, {"op": "query", **window})
            except CALL_FAILURES as e:
                failures.append(f"{first}: {e}")
            else:  # the others have a little longer to say what this one lacks
                nursery.cancel_scope.deadline = trio.current_time() + self.options.query_grace
        for peer in [p for p in rest if p in ids] if envelopes is None else []:
            try:
                envelopes = await self._messages(peer, {"op": "query", **window})
                break
            except CALL_FAILURES as e:
                failures.append(f"{peer}: {e}")
        if envelopes is None:
            self._found_at = -math.inf
            raise NoStoreError("no message store answered: " + ("; ".join(failures) or "none known"))
        decoded = _decode_all(envelopes)
        claimed = {m.id for m in decoded}
        wanted: dict[PeerId, list[str]] = {}
        for peer, listed in ids.items():
            missing = [i for i in listed if i not in claimed]
            claimed.update(missing)
            if missing:
                wanted[peer] = missing

        async def fetch(peer: PeerId, missing: list[str]) -> None:
            try:
                decoded.extend(_decode_all(await self._messages(peer, {"op": "get", "topic": topic, "ids": missing})))
            except CALL_FAILURES as e:
                log.info("messages: fetching %d message(s) of %s from %s failed: %s", len(missing), topic, peer, e)

        if wanted:
            async with trio.open_nursery() as nursery:
                for peer, missing in wanted.items():
                    nursery.start_soon(fetch, peer, missing)
        merged = [m for m in order(verify_chains(decoded)) if m.topic == topic and m.ts >= since]
        return merged[:limit], len(merged) > limit

    async def _messages(self, peer: PeerId, request: dict[str, Any]) -> list[bytes]:
        """The envelopes a ``query`` or ``get`` request returns (this node's own store: no call).

        Raises:
            see :meth:`_call`.
        """
        if peer == self.peer_id:
            return self._answer_messages(request)
        return [e for answer in await self._call(peer, request) for e in _unb64_list(answer.get("messages"))]

    # -- serving --

    async def handle_stream(self, stream: trio.abc.HalfCloseableStream) -> None:
        async def answer(request: dict[str, Any]) -> Iterable[dict[str, Any]]:
            self.requests += 1
            return self._answer(request)

        await serve_request(stream, answer, timeout=self.options.request_timeout, log=log, max_size=MAX_FRAME)

    def _answer(self, request: dict[str, Any]) -> Iterable[dict[str, Any]]:
        op = request.get("op")
        try:
            if op == "store":
                envelopes = _unb64_list(request.get("messages"))
                messages = [open_message(e) for e in envelopes]
                stored, conflicts = self.store.put(messages)
                if conflicts:
                    log.info("messages: %d conflicting message(s) refused", conflicts)
                return [{"stored": stored, "conflicts": conflicts}]
            topic = check_topic(request.get("topic"))
            if op == "query" and request.get("ids") is True:
                since, limit = _window(request)
                return [{"ids": self.store.query_ids(topic, since, limit)}]
            if op in ("query", "get"):
                return [{"messages": b} for b in _batches(self._answer_messages(request))]
            if op == "head":
                seq, id_, ts = self.store.head(topic, _publisher(request))
                return [{"seq": seq, "id": id_, "ts": ts}]
            if op == "digest":
                return [{"publishers": {p: list(v) for p, v in self.store.digest(topic).items()}}]
            if op == "seqs":
                return [{"seqs": self.store.seqs(topic, str(_publisher(request)))}]
            raise MalformedMessageError(f"unknown op {op!r}")
        except MessageError as e:
            return [{"error": e.code, "message": e.message}]

    def _answer_messages(self, request: dict[str, Any]) -> list[bytes]:
        """The envelopes of a ``query`` (a window) or a ``get`` (by ids) request.

        Raises:
            BadTopicError, MalformedMessageError: a bad request.
        """
        topic = check_topic(request.get("topic"))
        if request.get("op") == "get":
            wanted = _strings(request.get("ids"), "ids")
            if len(wanted) > MAX_LIMIT + 1:
                raise MalformedMessageError(f"more than {MAX_LIMIT + 1} ids")
            return self.store.get(topic, wanted)
        since, limit = _window(request)
        return self.store.query(topic, since, limit)

    # -- replication --

    async def sync(self) -> int:
        """Offer every topic held here to the other stores closest to it; how many messages were sent."""
        sent = 0
        for topic in self.store.topics():
            try:
                targets = (await self.closest(topic))[: self.options.replicas]
            except PEER_FAILURES as e:
                log.debug("sync of %s: %s", topic, e)
                continue
            for peer in targets:
                if peer == self.peer_id:
                    continue
                try:
                    sent += await self._offer(peer, topic)
                except CALL_FAILURES as e:
                    log.debug("sync of %s to %s failed: %s", topic, peer, e)
        self.synced += sent
        if sent:
            log.info("messages: %d message(s) sent to stores that lacked them", sent)
        return sent

    async def _offer(self, peer: PeerId, topic: str) -> int:
        answer = _one(await self._call(peer, {"op": "digest", "topic": topic}))
        theirs = answer.get("publishers")
        if not isinstance(theirs, dict):
            raise MalformedMessageError("digest without publishers")
        sent = 0
        for publisher, (count, newest) in self.store.digest(topic).items():
            other = theirs.get(publisher)
            if isinstance(other, list) and other == [count, newest]:
                continue
            have: set[int] = set()
            if isinstance(other, list) and other and isinstance(other[0], int) and other[0] > 0:
                seqs = _one(await self._call(peer, {"op": "seqs", "topic": topic, "publisher": publisher}))
                listed = seqs.get("seqs")
                have = {s for s in listed if isinstance(s, int)} if isinstance(listed, list) else set()
            missing = list(self.store.of_publisher(topic, publisher, have))
            for batch in _batches(missing):
                await self._call(peer, {"op": "store", "messages": batch})
            sent += len(missing)
        return sent


def _window(request: dict[str, Any]) -> tuple[int, int]:
    since, limit = request.get("since", 0), request.get("limit", MAX_LIMIT)
    if not _int(since) or not _int(limit):
        raise MalformedMessageError("since and limit must be integers")
    return max(0, since), max(1, min(limit, MAX_LIMIT + 1))


def _strings(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedMessageError(f"{what} must be a list of strings")
    return value


def _decode_all(envelopes: Iterable[bytes]) -> list[Message]:
    """Each envelope decoded (not verified: see :func:`verify_chains`); undecodable ones are logged."""
    out = []
    for env in envelopes:
        try:
            out.append(open_message(env, verify=False))
        except MalformedMessageError as e:
            log.info("messages: a store sent an undecodable message: %s", e)
    return out


def _one(answers: list[dict[str, Any]]) -> dict[str, Any]:
    if len(answers) != 1:
        raise MalformedMessageError(f"expected one answer, got {len(answers)}")
    return answers[0]


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _publisher(request: dict[str, Any]) -> PeerId:
    try:
        return PeerId.from_string(str(request.get("publisher")))
    except (DecodeError, ValueError) as e:
        raise MalformedMessageError(f"bad publisher: {e}") from None


def _batches(envelopes: Sequence[bytes]) -> list[list[str]]:
    """``envelopes`` in base64, cut into lists that each fit one wire message."""
    out: list[list[str]] = []
    current: list[str] = []
    size = 0
    budget = MAX_FRAME - 1024
    for env in envelopes:
        text = base64.b64encode(env).decode()
        if current and size + len(text) + 3 > budget:
            out.append(current)
            current, size = [], 0
        current.append(text)
        size += len(text) + 3
    if current or not out:
        out.append(current)
    return out


def _unb64_list(value: object) -> list[bytes]:
    if not isinstance(value, list):
        raise MalformedMessageError("messages must be a list")
    out = []
    for text in value:
        if not isinstance(text, str):
            raise MalformedMessageError("messages must be base64 strings")
        try:
            out.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise MalformedMessageError("a message is not base64") from None
    return out


__all__ = [
    "MAX_DATA_BYTES",
    "MAX_LIMIT",
    "PROTOCOL_ID",
    "STORES_NAME",
    "BadTopicError",
    "MalformedMessageError",
    "Message",
    "MessageError",
    "MessageOptions",
    "MessageService",
    "MessageStore",
    "NoStoreError",
    "PersistResult",
    "TooLargeError",
    "check_topic",
    "encode_data",
    "open_message",
    "order",
    "seal_message",
    "topic_key",
    "verify_chains",
]
