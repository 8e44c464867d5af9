"""Signed contact records and the pure stores that hold them (and provider entries).

A contact record says who an id is and where it is reached: disgover's ``Contact{Id, Endpoint,
Data}``, done the libp2p way. The id is a peer id (text form) or any entity name, such as an actor
called ``"receptionist"``.

Wire format: a libp2p signed envelope (the record-envelope spec, as used for signed peer records)::

    Envelope      { bytes public_key = 1;    // libp2p PublicKey protobuf of the publisher
                    bytes payload_type = 2;  // b"/physarum/contact-record/1"
                    bytes payload = 3;       // a ContactRecord
                    bytes signature = 5; }
    ContactRecord { string id = 1; repeated bytes endpoints = 2;  // binary multiaddrs
                    bytes data = 3;          // a JSON object, UTF-8, at most 8 KiB
                    uint64 seq = 4;          // higher replaces lower, per (id, publisher)
                    uint64 expires = 5; }    // unix seconds

The signature covers ``uvarint(len(domain)) || domain || uvarint(len(payload_type)) ||
payload_type || uvarint(len(payload)) || payload`` with the domain ``"physarum-contact-record"``,
so a contact record signature can never pass for a peer record, a Noise handshake or anything else
the key signs. libp2p names payload types with multicodec codes (peer records use ``0x03 0x01``);
physarum has no registered code, so it uses a readable, versioned string that cannot collide with one.

DHT key: ``/physarum/contact/<id>`` (:func:`record_key`); its Kademlia key is the SHA-256 of that,
as for every kad key. The kad ``Record.value`` carries a *record set* (:func:`encode_record_set`):
``RecordSet{repeated bytes envelope = 1}``, because an entity name may have several publishers and
a GET_VALUE answer carries a single kad record.

Who may publish: a record whose id is a peer id must be signed by that peer (and the id must be
written in its canonical base58btc form, so one peer has one key). Anyone may publish a record for
an entity name; stores keep, per (id, publisher), only the highest ``seq``, and readers decide whom
to trust from the publishers and data they get back.

Verification (:func:`verify_record`) rejects, with a :class:`RecordError` subclass: envelopes over
16 KiB, malformed envelopes or payloads, foreign payload types, non-Ed25519 keys, bad signatures,
peer-id records from another publisher, data over 8 KiB or not a JSON object, expired records and
records that claim to live longer than :data:`MAX_RECORD_TTL`. Rejected records are neither stored
nor forwarded. Endpoints that are not valid multiaddrs are left out of the decoded
:class:`ContactRecord` (the envelope bytes, which are what is stored and forwarded, stay intact),
so a record that lists a transport this node does not know still verifies.

Time: ``expires`` is compared across machines, so the ``now`` given to :func:`verify_record` and
:class:`RecordStore` is wall-clock unix time (``time.time()``), not ``trio.current_time()``.
:class:`ProviderStore` only compares times it recorded itself, so any steady clock will do.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from physarum.dht import keyspace
from physarum.dht.addrs import parse_multiaddr_bytes
from physarum.errors import DecodeError, PhysarumError
from physarum.overlay import envelope as signed_envelope
from physarum.overlay import pb
from physarum.overlay.identity import KEY_ED25519, IdentityKeyError, KeyPair, PeerId, PublicKey

DOMAIN = "physarum-contact-record"
PAYLOAD_TYPE = b"/physarum/contact-record/1"
RECORD_KEY_PREFIX = b"/physarum/contact/"

#: Largest signed envelope accepted or produced.
MAX_ENVELOPE_SIZE = 16 * 1024
#: Largest application payload (``data`` as JSON bytes).
MAX_DATA_SIZE = 8 * 1024
#: Longest id, in UTF-8 bytes.
MAX_ID_SIZE = 256
#: Most endpoints in one record.
MAX_ENDPOINTS = 32
#: A record may not expire more than this many seconds after it is checked (libp2p uses 36-48 h).
MAX_RECORD_TTL = 48 * 3600.0
#: Lifetime :func:`new_expiry` gives a record; republish well before it runs out.
DEFAULT_RECORD_TTL = 24 * 3600.0
#: Most envelopes in one record set.
MAX_RECORD_SET = 64
#: How long a provider entry lives without being re-added (libp2p's provide validity).
DEFAULT_PROVIDER_VALIDITY = 24 * 3600.0

JSONObject = dict[str, Any]


# -- errors ------------------------------------------------------------------------------------


class RecordError(PhysarumError):
    """A contact record that is refused. ``reason`` says why; ``record_id`` and ``publisher`` when known."""

    def __init__(self, reason: str, *, record_id: str | None = None, publisher: PeerId | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.record_id = record_id
        self.publisher = publisher


class MalformedRecordError(RecordError, DecodeError):
    """Not a well-formed envelope or contact record (also a :class:`DecodeError`)."""


class InvalidDataError(MalformedRecordError):
    """The application payload is not JSON, or not a JSON object."""


class RecordTooLargeError(RecordError):
    """The envelope or its application payload is over its size limit."""


class UnsupportedKeyError(RecordError):
    """The envelope is signed with a key type physarum cannot check (only Ed25519 is supported)."""


class BadSignatureError(RecordError):
    """The signature does not match the envelope's key and contents."""


class WrongPublisherError(RecordError):
    """A record for a peer id was signed by someone other than that peer."""


class ExpiredRecordError(RecordError):
    """The record's expiry time has passed."""


class ExpiryTooFarError(RecordError):
    """The record claims to live longer than the store allows."""


class StaleRecordError(RecordError):
    """The store already holds this publisher's record for this id with an equal or higher seq."""


class StoreFullError(RecordError):
    """The store is at one of its bounds (records, bytes, or publishers for this id)."""


# -- keys --------------------------------------------------------------------------------------


def record_key(record_id: str) -> bytes:
    """The DHT key of an id's contact records: ``b"/physarum/contact/" + id`` (UTF-8)."""
    return RECORD_KEY_PREFIX + record_id.encode()


def record_kad_key(record_id: str) -> int:
    """The Kademlia key of an id's contact records (SHA-256 of :func:`record_key`)."""
    return keyspace.kad_key(record_key(record_id))


def record_id_from_key(key: bytes) -> str:
    """The id inside a contact record DHT key (inverse of :func:`record_key`).

    Raises:
        DecodeError: not a ``/physarum/contact/`` key, an empty or over-long id, or not UTF-8.
    """
    if not key.startswith(RECORD_KEY_PREFIX):
        raise DecodeError("not a physarum contact record key")
    raw = key[len(RECORD_KEY_PREFIX) :]
    if not raw or len(raw) > MAX_ID_SIZE:
        raise DecodeError(f"contact record id of {len(raw)} bytes (want 1..{MAX_ID_SIZE})")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise DecodeError("contact record id is not UTF-8") from None


# -- envelopes ---------------------------------------------------------------------------------


def seal_envelope(key_pair: KeyPair, domain: str, payload_type: bytes, payload: bytes) -> bytes:
    """A libp2p signed envelope of ``payload`` (record-envelope spec), signed for ``domain``."""
    return signed_envelope.seal(key_pair, domain.encode(), payload_type, payload)


def open_envelope(
    data: bytes, domain: str, payload_type: bytes, *, max_size: int = MAX_ENVELOPE_SIZE
) -> tuple[PublicKey, bytes]:
    """Check a libp2p signed envelope; return ``(signer's public key, payload)``.

    Raises:
        RecordTooLargeError: ``data`` is over ``max_size``.
        MalformedRecordError: not an envelope, fields missing, or a payload type other than ``payload_type``.
        UnsupportedKeyError: the key is not Ed25519.
        BadSignatureError: the signature does not verify for ``domain``.
    """
    if len(data) > max_size:
        raise RecordTooLargeError(f"envelope of {len(data)} bytes exceeds {max_size}")
    try:
        fields = pb.decode(data)
        raw_key = pb.get_bytes(fields, 1)
        got_type = pb.get_bytes(fields, 2)
        payload = pb.get_bytes(fields, 3)
        signature = pb.get_bytes(fields, 5)
    except DecodeError as e:
        raise MalformedRecordError(f"not a signed envelope: {e.reason}") from None
    if raw_key is None or got_type is None or payload is None or signature is None:
        raise MalformedRecordError("envelope lacks public_key, payload_type, payload or signature")
    if got_type != payload_type:
        raise MalformedRecordError(f"envelope payload type {got_type!r}, want {payload_type!r}")
    try:
        key = PublicKey.from_protobuf(raw_key)
    except DecodeError as e:
        raise MalformedRecordError(f"envelope public key: {e.reason}") from None
    if key.key_type != KEY_ED25519:
        raise UnsupportedKeyError(f"envelope signed with key type {key.key_type}; only Ed25519 is supported")
    try:
        valid = key.verify(signed_envelope.signing_bytes(domain.encode(), payload_type, payload), signature)
    except IdentityKeyError as e:
        raise UnsupportedKeyError(e.reason) from None
    if not valid:
        raise BadSignatureError("envelope signature does not verify", publisher=key.peer_id())
    return key, payload


# -- contact records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContactRecord:
    """Who ``id`` is and where it is reached.

    ``endpoints`` are ``Multiaddr`` objects; ``data`` is the application's JSON object;
    ``expires`` is unix seconds (whole seconds: that is what the wire carries). ``publisher`` is
    filled by :func:`verify_record`; :func:`sign_record` ignores it unless it contradicts the key.
    """

    id: str
    endpoints: tuple[Any, ...] = ()
    data: JSONObject = field(default_factory=dict, hash=False)
    seq: int = 0
    expires: int = 0
    publisher: PeerId | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.endpoints, tuple):
            object.__setattr__(self, "endpoints", tuple(self.endpoints))


def new_expiry(now: float, ttl: float = DEFAULT_RECORD_TTL) -> int:
    """An ``expires`` value ``ttl`` seconds after the wall-clock time ``now``."""
    return int(now + ttl)


def _peer_id_named(record_id: str) -> PeerId | None:
    try:
        return PeerId.from_string(record_id)
    except DecodeError:
        return None


def _check_id(record_id: str, publisher: PeerId) -> None:
    raw = record_id.encode()
    if not raw or len(raw) > MAX_ID_SIZE:
        raise MalformedRecordError(
            f"record id of {len(raw)} bytes (want 1..{MAX_ID_SIZE})", record_id=record_id, publisher=publisher
        )
    named = _peer_id_named(record_id)
    if named is None:
        return
    if str(named) != record_id:
        # a second spelling of the same peer would be a second DHT key with its own records
        raise MalformedRecordError(
            f"record id names peer {named} but is not its canonical form",
            record_id=record_id,
            publisher=publisher,
        )
    if named != publisher:
        raise WrongPublisherError(
            f"record for peer {named} is signed by {publisher}", record_id=record_id, publisher=publisher
        )


def encode_data(data: JSONObject) -> bytes:
    """The canonical JSON bytes of an application payload (sorted keys, no spaces, UTF-8).

    Raises:
        InvalidDataError: not a dict, or not JSON-serialisable (NaN and infinities included).
        RecordTooLargeError: over :data:`MAX_DATA_SIZE`.
    """
    if not isinstance(data, dict):
        raise InvalidDataError(f"record data must be a JSON object (dict), not {type(data).__name__}")
    try:
        text = json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise InvalidDataError(f"record data is not JSON-serialisable: {e}") from None
    raw = text.encode()
    if len(raw) > MAX_DATA_SIZE:
        raise RecordTooLargeError(f"record data of {len(raw)} bytes exceeds {MAX_DATA_SIZE}")
    return raw


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_data(raw: bytes) -> JSONObject:
    """Parse an application payload: strict UTF-8 JSON whose top level is an object (empty = ``{}``).

    Raises:
        RecordTooLargeError: over :data:`MAX_DATA_SIZE`.
        InvalidDataError: not UTF-8, not JSON (NaN/Infinity included, nesting too deep), or not an object.
    """
    if len(raw) > MAX_DATA_SIZE:
        raise RecordTooLargeError(f"record data of {len(raw)} bytes exceeds {MAX_DATA_SIZE}")
    if not raw:
        return {}
    try:
        value = json.loads(raw.decode(), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InvalidDataError(f"record data is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise InvalidDataError(f"record data is a JSON {type(value).__name__}, not an object")
    return value


def sign_record(key_pair: KeyPair, record: ContactRecord) -> bytes:
    """Sign ``record`` as ``key_pair``: the envelope bytes to PUT and store.

    Raises:
        MalformedRecordError: an empty, over-long or non-canonical peer id ``id``, or too many endpoints.
        WrongPublisherError: ``id`` is a peer id other than ``key_pair``'s, or ``record.publisher``
            names another peer.
        InvalidDataError: ``data`` is not a JSON-serialisable dict.
        RecordTooLargeError: ``data`` over :data:`MAX_DATA_SIZE` or the envelope over :data:`MAX_ENVELOPE_SIZE`.
        ValueError: ``seq`` or ``expires`` is not in [0, 2**64) (``expires`` must be positive).
    """
    publisher = key_pair.peer_id
    if record.publisher is not None and record.publisher != publisher:
        raise WrongPublisherError(
            f"record names publisher {record.publisher} but is signed by {publisher}",
            record_id=record.id,
            publisher=publisher,
        )
    _check_id(record.id, publisher)
    if len(record.endpoints) > MAX_ENDPOINTS:
        raise MalformedRecordError(
            f"{len(record.endpoints)} endpoints, at most {MAX_ENDPOINTS}", record_id=record.id
        )
    if not 0 <= record.seq < 1 << 64:
        raise ValueError(f"seq out of uint64 range: {record.seq}")
    if not 0 < record.expires < 1 << 64:
        raise ValueError(f"expires must be positive unix seconds: {record.expires}")
    fields: list[tuple[int, int | bytes | str | None]] = [(1, record.id)]
    fields.extend((2, addr.to_bytes()) for addr in record.endpoints)
    fields.append((3, encode_data(record.data)))
    fields.append((4, record.seq or None))
    fields.append((5, int(record.expires)))
    envelope = seal_envelope(key_pair, DOMAIN, PAYLOAD_TYPE, pb.encode(fields))
    if len(envelope) > MAX_ENVELOPE_SIZE:
        raise RecordTooLargeError(
            f"signed record of {len(envelope)} bytes exceeds {MAX_ENVELOPE_SIZE}", record_id=record.id
        )
    return envelope


def verify_record(envelope: bytes, now: float, *, max_ttl: float = MAX_RECORD_TTL) -> ContactRecord:
    """Check a signed contact record at wall-clock time ``now`` and decode it.

    Raises:
        RecordTooLargeError: envelope over :data:`MAX_ENVELOPE_SIZE` or data over :data:`MAX_DATA_SIZE`.
        MalformedRecordError: malformed envelope or payload, foreign payload type, missing or bad id,
            no expiry, too many endpoints.
        UnsupportedKeyError: not signed with an Ed25519 key.
        BadSignatureError: the signature does not verify.
        WrongPublisherError: a peer-id record signed by another peer.
        InvalidDataError: data not JSON or not a JSON object.
        ExpiredRecordError: ``expires <= now``.
        ExpiryTooFarError: ``expires > now + max_ttl``.
    """
    key, payload = open_envelope(envelope, DOMAIN, PAYLOAD_TYPE)
    publisher = key.peer_id()
    try:
        fields = pb.decode(payload)
        raw_id = pb.get_bytes(fields, 1)
        raw_endpoints = pb.get_repeated_bytes(fields, 2)
        raw_data = pb.get_bytes(fields, 3, b"")
        seq = pb.get_int(fields, 4, 0)
        expires = pb.get_int(fields, 5)
    except DecodeError as e:
        raise MalformedRecordError(f"contact record payload: {e.reason}", publisher=publisher) from None
    assert raw_data is not None and seq is not None
    if raw_id is None:
        raise MalformedRecordError("contact record has no id", publisher=publisher)
    try:
        record_id = raw_id.decode()
    except UnicodeDecodeError:
        raise MalformedRecordError("contact record id is not UTF-8", publisher=publisher) from None
    _check_id(record_id, publisher)
    if expires is None or expires == 0:
        raise MalformedRecordError("contact record has no expiry", record_id=record_id, publisher=publisher)
    if len(raw_endpoints) > MAX_ENDPOINTS:
        raise MalformedRecordError(
            f"{len(raw_endpoints)} endpoints, at most {MAX_ENDPOINTS}",
            record_id=record_id,
            publisher=publisher,
        )
    try:
        data = decode_data(raw_data)
    except RecordError as e:
        e.record_id, e.publisher = record_id, publisher
        raise
    if expires <= now:
        raise ExpiredRecordError(
            f"record expired at {expires}, now {now:.0f}", record_id=record_id, publisher=publisher
        )
    if expires > now + max_ttl:
        raise ExpiryTooFarError(
            f"record expires {expires - now:.0f} s from now, more than {max_ttl:.0f}",
            record_id=record_id,
            publisher=publisher,
        )
    endpoints = []
    for raw in raw_endpoints:
        try:
            endpoints.append(parse_multiaddr_bytes(raw))
        except DecodeError:
            continue
    return ContactRecord(record_id, tuple(endpoints), data, seq, expires, publisher)


def encode_record_set(envelopes: Iterable[bytes]) -> bytes:
    """The kad ``Record.value`` for a set of envelopes: ``RecordSet{repeated bytes envelope = 1}``."""
    return pb.encode([(1, e) for e in envelopes])


def decode_record_set(data: bytes, *, max_count: int = MAX_RECORD_SET) -> list[bytes]:
    """The envelopes in a record set, unchecked (verify each with :func:`verify_record`).

    Raises:
        DecodeError: malformed, or more than ``max_count`` envelopes.
    """
    envelopes = pb.get_repeated_bytes(pb.decode(data), 1)
    if len(envelopes) > max_count:
        raise DecodeError(f"record set of {len(envelopes)} envelopes, at most {max_count}")
    return envelopes


# -- the record store --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A verified record as the store holds it: decoded, its envelope bytes, and when it was stored."""

    record: ContactRecord
    envelope: bytes
    stored_at: float

    @property
    def publisher(self) -> PeerId:
        assert self.record.publisher is not None
        return self.record.publisher


@dataclass(frozen=True, slots=True)
class Stored:
    """The record is now held; ``replaced`` when it superseded a lower seq from the same publisher."""

    stored: StoredRecord
    replaced: bool = False


@dataclass(frozen=True, slots=True)
class Unchanged:
    """The identical envelope was already held (a republish); nothing changed."""

    stored: StoredRecord


@dataclass(frozen=True, slots=True)
class RecordRejected:
    """The record was refused and not stored; ``error`` says why (its class is the reason kind)."""

    error: RecordError

    @property
    def reason(self) -> str:
        return self.error.reason


PutResult = Stored | Unchanged | RecordRejected


class _Entry:
    __slots__ = ("last_published", "own", "stored")

    def __init__(self, stored: StoredRecord, own: bool, last_published: float) -> None:
        self.stored = stored
        self.own = own
        self.last_published = last_published


def _newest_first(entry: _Entry) -> tuple[int, int, bytes]:
    rec = entry.stored.record
    assert rec.publisher is not None
    # expiry first: publishers re-sign with a fresh expiry, so the latest expiry is the latest news
    return (-rec.expires, -rec.seq, rec.publisher.to_bytes())


class RecordStore:
    """Verified contact records by (id, publisher), highest seq only. Pure: ``now`` is injected.

    ``now`` is wall-clock unix time (records carry absolute expiry times). Our own records (put with
    ``own=True``) ignore the bounds and are offered by :meth:`due_for_republish`.

    Args:
        max_records: most records held in all.
        max_bytes: most envelope bytes held in all.
        max_per_id: most publishers held for one id.
        max_ttl: passed to :func:`verify_record`.
    """

    def __init__(
        self,
        *,
        max_records: int = 10_000,
        max_bytes: int = 32 * 1024 * 1024,
        max_per_id: int = 16,
        max_ttl: float = MAX_RECORD_TTL,
    ) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.max_per_id = max_per_id
        self.max_ttl = max_ttl
        self._by_id: dict[str, dict[PeerId, _Entry]] = {}
        self._count = 0
        self._bytes = 0

    def __len__(self) -> int:
        return self._count

    @property
    def total_bytes(self) -> int:
        """Envelope bytes held."""
        return self._bytes

    def ids(self) -> list[str]:
        """Every id with at least one record held (expired ones included until :meth:`expire`)."""
        return list(self._by_id)

    def put(self, envelope: bytes, now: float, *, own: bool = False) -> PutResult:
        """Verify and store a signed record (a PUT_VALUE, or our own with ``own=True``). Never raises.

        Returns :class:`Stored` (new, or a higher seq that replaced the old one), :class:`Unchanged`
        (the same envelope again), or :class:`RecordRejected` with a :class:`RecordError`: whatever
        :func:`verify_record` raises, :class:`StaleRecordError` for a lower seq or an equal seq with
        other contents, :class:`StoreFullError` at a bound.
        """
        try:
            record = verify_record(envelope, now, max_ttl=self.max_ttl)
        except RecordError as e:
            return RecordRejected(e)
        publisher = record.publisher
        assert publisher is not None
        envelope = bytes(envelope)
        publishers = self._by_id.get(record.id)
        if publishers is not None:
            self._expire_id(record.id, publishers, now)
            publishers = self._by_id.get(record.id)
        old = publishers.get(publisher) if publishers is not None else None
        if old is not None:
            held = old.stored.record.seq
            if record.seq < held or (record.seq == held and envelope != old.stored.envelope):
                what = "older than" if record.seq < held else "the same as, with other contents than,"
                return RecordRejected(
                    StaleRecordError(
                        f"seq {record.seq} is {what} the stored seq {held}",
                        record_id=record.id,
                        publisher=publisher,
                    )
                )
            if record.seq == held:
                if own and not old.own:
                    old.own, old.last_published = True, now
                return Unchanged(old.stored)
            growth = len(envelope) - len(old.stored.envelope)
            if not (own or old.own) and self._bytes + growth > self.max_bytes:
                return RecordRejected(StoreFullError("record store is full (bytes)", record_id=record.id))
            stored = StoredRecord(record, envelope, now)
            old.stored = stored
            old.own = old.own or own
            if own:
                old.last_published = now
            self._bytes += growth
            return Stored(stored, replaced=True)
        if not own:
            full = self._full_for(record.id, publishers, len(envelope))
            if full is not None:
                self.expire(now)
                publishers = self._by_id.get(record.id)
                full = self._full_for(record.id, publishers, len(envelope))
                if full is not None:
                    return RecordRejected(StoreFullError(full, record_id=record.id, publisher=publisher))
        stored = StoredRecord(record, envelope, now)
        self._by_id.setdefault(record.id, {})[publisher] = _Entry(stored, own, now)
        self._count += 1
        self._bytes += len(envelope)
        return Stored(stored)

    def get(self, record_id: str, now: float, *, limit: int | None = None) -> list[bytes]:
        """The unexpired envelopes for ``record_id``, all publishers, newest (latest expiry) first."""
        return [s.envelope for s in self.records(record_id, now, limit=limit)]

    def records(self, record_id: str, now: float, *, limit: int | None = None) -> list[StoredRecord]:
        """Like :meth:`get`, with the decoded records."""
        publishers = self._by_id.get(record_id)
        if not publishers:
            return []
        live = [e for e in publishers.values() if e.stored.record.expires > now]
        live.sort(key=_newest_first)
        return [e.stored for e in live[:limit]]

    def get_from(self, record_id: str, publisher: PeerId, now: float) -> StoredRecord | None:
        """One publisher's unexpired record for ``record_id``, or None."""
        entry = self._by_id.get(record_id, {}).get(publisher)
        if entry is None or entry.stored.record.expires <= now:
            return None
        return entry.stored

    def remove(self, record_id: str, publisher: PeerId | None = None) -> int:
        """Drop one publisher's record for ``record_id``, or all of them; returns how many went."""
        publishers = self._by_id.get(record_id)
        if not publishers:
            return 0
        victims = list(publishers) if publisher is None else [publisher] if publisher in publishers else []
        for p in victims:
            self._drop(record_id, publishers, p)
        return len(victims)

    def expire(self, now: float) -> int:
        """Drop every record with ``expires <= now`` (our own included); returns how many went."""
        before = self._count
        for record_id, publishers in list(self._by_id.items()):
            self._expire_id(record_id, publishers, now)
        return before - self._count

    def own_records(self) -> list[StoredRecord]:
        """Our own records (put with ``own=True``), expired or not."""
        return [e.stored for pubs in self._by_id.values() for e in pubs.values() if e.own]

    def due_for_republish(self, now: float, interval: float) -> list[StoredRecord]:
        """Our own unexpired records last published at least ``interval`` ago.

        PUT each to the closest peers of its key, then :meth:`mark_republished`. A record that
        would expire before the next round should be re-signed with a higher seq and a later
        expiry instead (see :meth:`expiring_own`).
        """
        return [
            e.stored
            for pubs in self._by_id.values()
            for e in pubs.values()
            if e.own and e.stored.record.expires > now and now - e.last_published >= interval
        ]

    def expiring_own(self, now: float, within: float) -> list[StoredRecord]:
        """Our own records that expire within ``within`` seconds (or already have): re-sign these."""
        return [
            e.stored
            for pubs in self._by_id.values()
            for e in pubs.values()
            if e.own and e.stored.record.expires - now <= within
        ]

    def mark_republished(self, record_id: str, publisher: PeerId, now: float) -> bool:
        """Note that our record was published at ``now``; False when no such own record is held."""
        entry = self._by_id.get(record_id, {}).get(publisher)
        if entry is None or not entry.own:
            return False
        entry.last_published = now
        return True

    def _full_for(self, record_id: str, publishers: dict[PeerId, _Entry] | None, size: int) -> str | None:
        if publishers is not None and len(publishers) >= self.max_per_id:
            return f"record store holds {len(publishers)} publishers for {record_id!r}, the limit"
        if self._count >= self.max_records:
            return f"record store holds {self._count} records, the limit"
        if self._bytes + size > self.max_bytes:
            return f"record store would exceed {self.max_bytes} bytes"
        return None

    def _expire_id(self, record_id: str, publishers: dict[PeerId, _Entry], now: float) -> None:
        for p in [p for p, e in publishers.items() if e.stored.record.expires <= now]:
            self._drop(record_id, publishers, p)

    def _drop(self, record_id: str, publishers: dict[PeerId, _Entry], publisher: PeerId) -> None:
        entry = publishers.pop(publisher)
        self._count -= 1
        self._bytes -= len(entry.stored.envelope)
        if not publishers:
            del self._by_id[record_id]


# -- providers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Provider:
    """A peer that said (ADD_PROVIDER) it can provide a key: its id, addresses, and when."""

    peer_id: PeerId
    addrs: tuple[Any, ...]
    added: float
    expires: float


class ProviderStore:
    """Provider entries by key, each living ``validity`` seconds from its latest ADD_PROVIDER.

    Pure: ``now`` is injected, from any steady clock (only times this store recorded are compared).
    At ``max_per_key`` the entry added longest ago makes room (providers re-provide periodically, so
    the freshest are the most useful); a new key past ``max_keys`` is refused.

    Raises:
        ValueError: a bound below 1 or a non-positive ``validity``.
    """

    def __init__(
        self,
        *,
        validity: float = DEFAULT_PROVIDER_VALIDITY,
        max_per_key: int = 64,
        max_keys: int = 100_000,
        max_key_size: int = 256,
    ) -> None:
        if validity <= 0 or max_per_key < 1 or max_keys < 1 or max_key_size < 1:
            raise ValueError("provider store bounds and validity must be positive")
        self.validity = validity
        self.max_per_key = max_per_key
        self.max_keys = max_keys
        self.max_key_size = max_key_size
        # per key, insertion order = least recently (re-)added first
        self._by_key: dict[bytes, dict[PeerId, Provider]] = {}
        self._count = 0

    def __len__(self) -> int:
        """How many (key, provider) entries are held."""
        return self._count

    def keys(self) -> list[bytes]:
        return list(self._by_key)

    def add(self, key: bytes, provider: PeerId, addrs: Sequence[Any], now: float) -> bool:
        """Record that ``provider`` provides ``key`` as of ``now`` (re-adding refreshes it).

        Returns False, storing nothing, for an empty or over-long key or when a new key would pass
        ``max_keys``. Never raises.
        """
        if not key or len(key) > self.max_key_size:
            return False
        providers = self._by_key.get(key)
        if providers is None:
            if len(self._by_key) >= self.max_keys:
                self.expire(now)
                if len(self._by_key) >= self.max_keys:
                    return False
            providers = self._by_key[key] = {}
        if providers.pop(provider, None) is not None:
            self._count -= 1
        while len(providers) >= self.max_per_key:
            del providers[next(iter(providers))]
            self._count -= 1
        providers[provider] = Provider(provider, tuple(addrs), now, now + self.validity)
        self._count += 1
        return True

    def get(self, key: bytes, now: float, *, limit: int | None = None) -> list[Provider]:
        """The unexpired providers of ``key``, most recently added first."""
        providers = self._by_key.get(key)
        if not providers:
            return []
        live = [p for p in reversed(providers.values()) if p.expires > now]
        return live[:limit]

    def remove(self, key: bytes, provider: PeerId) -> bool:
        """Forget one provider of ``key``; False when it was not held."""
        providers = self._by_key.get(key)
        if not providers or providers.pop(provider, None) is None:
            return False
        self._count -= 1
        if not providers:
            del self._by_key[key]
        return True

    def expire(self, now: float) -> int:
        """Drop every entry with ``expires <= now``; returns how many went."""
        before = self._count
        for key, providers in list(self._by_key.items()):
            for peer_id in [p for p, e in providers.items() if e.expires <= now]:
                del providers[peer_id]
                self._count -= 1
            if not providers:
                del self._by_key[key]
        return before - self._count
