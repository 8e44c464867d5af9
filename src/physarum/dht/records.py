"""Signed contact records and the pure store that holds them.

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

Holding records for others (:class:`RecordStore`) is bounded per publisher, per name, and per
store, so that a few throwaway identities can neither fill a node nor take a name from an
established publisher: when a bound is hit, publishers with a history in our routing table (the
longer, the higher: :mod:`physarum.dht.standing`) win over those without, and among equals
records are first come, first served. A peer's own peer-id record has room that entity-name
records cannot take. Provider entries are held the same way by
:class:`~physarum.dht.providers.ProviderStore` (re-exported here, where it used to live).

Verification (:func:`verify_record`) rejects, with a :class:`RecordError` subclass: envelopes over
16 KiB, malformed envelopes or payloads, foreign payload types, non-Ed25519 keys, bad signatures,
peer-id records from another publisher, data over 8 KiB or not a JSON object, expired records and
records that claim to live longer than :data:`MAX_RECORD_TTL`. Rejected records are neither stored
nor forwarded. Endpoints that are not valid multiaddrs are left out of the decoded
:class:`ContactRecord` (the envelope bytes, which are what is stored and forwarded, stay intact),
so a record that lists a transport this node does not know still verifies.

Time: ``expires`` is compared across machines, so the ``now`` given to :func:`verify_record` and
:class:`RecordStore` is wall-clock unix time (``time.time()``), not ``trio.current_time()``.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from physarum.dht import keyspace
from physarum.dht.addrs import parse_multiaddr_bytes
from physarum.dht.providers import DEFAULT_PROVIDER_VALIDITY as DEFAULT_PROVIDER_VALIDITY
from physarum.dht.providers import Provider as Provider
from physarum.dht.providers import ProviderOutcome as ProviderOutcome
from physarum.dht.providers import ProviderStore as ProviderStore
from physarum.dht.standing import STRANGER as _STRANGER
from physarum.dht.standing import Standing
from physarum.dht.standing import no_history as _no_history
from physarum.dht.standing import rank as _rank
from physarum.errors import DecodeError, EncodeError, PhysarumError
from physarum.overlay import envelope as signed_envelope
from physarum.overlay import pb
from physarum.overlay.identity import KEY_ED25519, KeyPair, PeerId, PublicKey

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


class WrongKeyError(RecordError):
    """The record was put under the DHT key of another id."""


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
    try:
        env = signed_envelope.open_envelope(
            data, domain.encode(), payload_type, max_size=max_size, key_types=(KEY_ED25519,)
        )
    except signed_envelope.EnvelopeError as e:
        raise _RECORD_ERRORS[e.fault](e.reason, publisher=e.signer) from None
    return env.public_key, env.payload


#: The contact-record error for each envelope fault (what the DHT counts and reports).
_RECORD_ERRORS: dict[signed_envelope.EnvelopeFault, type[RecordError]] = {
    signed_envelope.EnvelopeFault.TOO_LARGE: RecordTooLargeError,
    signed_envelope.EnvelopeFault.MALFORMED: MalformedRecordError,
    signed_envelope.EnvelopeFault.UNSUPPORTED_KEY: UnsupportedKeyError,
    signed_envelope.EnvelopeFault.BAD_SIGNATURE: BadSignatureError,
}


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


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON but parses to inf, which encode_data (and any JSON reader) refuses.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a float")
    return value


def decode_data(raw: bytes) -> JSONObject:
    """Parse an application payload: strict UTF-8 JSON whose top level is an object (empty = ``{}``).

    Raises:
        RecordTooLargeError: over :data:`MAX_DATA_SIZE`.
        InvalidDataError: not UTF-8, not JSON (NaN/Infinity included, and numbers like 1e400 that only
            a float's infinity holds; nesting too deep), or not an object.
    """
    if len(raw) > MAX_DATA_SIZE:
        raise RecordTooLargeError(f"record data of {len(raw)} bytes exceeds {MAX_DATA_SIZE}")
    if not raw:
        return {}
    try:
        value = json.loads(raw.decode(), parse_constant=_reject_constant, parse_float=_finite_float)
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
        EncodeError: ``seq`` or ``expires`` is not in [0, 2**64) (``expires`` must be positive).
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
        raise EncodeError(f"seq out of uint64 range: {record.seq}")
    if not 0 < record.expires < 1 << 64:
        raise EncodeError(f"expires must be positive unix seconds: {record.expires}")
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
    """A verified record as the store holds it: decoded, its envelope bytes, and when it was stored.

    For our own records ``record`` is the whole decoded record. For records held for others it is
    a summary (id, seq, expires, publisher; no endpoints, empty data): readers get the envelope,
    which they verify and decode themselves, and a held record then costs its envelope bytes and
    a fixed overhead, whatever its JSON would cost once parsed (an 8 KiB payload of empty lists
    is ~170 KB of Python objects).
    """

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


class NameFullError(StoreFullError):
    """The id already has ``max_per_id`` publishers, none with less standing than this one."""


class PublisherQuotaError(StoreFullError):
    """The publisher already holds ``max_per_publisher`` records here."""


_NAMES = 0  # records for entity names
_PEERS = 1  # records whose id is their publisher's peer id


class _Entry:
    __slots__ = ("known_since", "last_published", "order", "own", "pool", "stored")

    def __init__(
        self, stored: StoredRecord, own: bool, last_published: float, known_since: float | None, pool: int, order: int
    ) -> None:
        self.stored = stored
        self.own = own
        self.last_published = last_published
        self.known_since = known_since
        self.pool = pool
        self.order = order  # when it was first stored, as a counter: ties among equals go by it

    @property
    def key(self) -> tuple[str, PeerId]:
        return (self.stored.record.id, self.stored.publisher)

    @property
    def size(self) -> int:
        return len(self.stored.envelope)


def _newest_first(entry: _Entry) -> tuple[int, int, bytes]:
    rec = entry.stored.record
    assert rec.publisher is not None
    # expiry first: publishers re-sign with a fresh expiry, so the latest expiry is the latest news
    return (-rec.expires, -rec.seq, rec.publisher.to_bytes())


def _summary(record: ContactRecord) -> ContactRecord:
    return ContactRecord(record.id, (), {}, record.seq, record.expires, record.publisher)


class RecordStore:
    """Verified contact records by (id, publisher), highest seq only. Pure: ``now`` is injected.

    ``now`` is wall-clock unix time (records carry absolute expiry times). Our own records (put with
    ``own=True``) ignore every bound, count against none, and are offered by :meth:`due_for_republish`.

    Quotas, so that a few throwaway identities cannot fill the store or take a name:

    * Two pools with their own bounds: records for entity names (``max_records``, ``max_bytes``)
      and peer-id records, those whose id is their publisher's peer id (``max_peer_records``,
      ``max_peer_bytes``). A flood of names never takes the room of a peer's own peer-id record.
    * Per publisher: at most ``max_per_publisher`` entity-name records (a publisher has only one
      peer-id record, its own). Updates of a held record never count twice.
    * Per name: at most ``max_per_id`` publishers.

    Standing: ``standing(publisher)`` says since when the publisher has been in our routing table
    (any steady clock; None when it is not there: a stranger). Earlier is higher; strangers rank
    lowest. Kademlia keeps a
    live contact rather than admit a newcomer, so a place held for long is history a throwaway
    identity cannot fake; a publisher's id or its closeness to the key could be ground cheaply, and
    a connection's age only measures how long an attacker has been attacking. When a bound is hit:

    * a full name: the newcomer takes the place of the holder with the lowest standing (the one
      stored last among equals) if that standing is strictly lower than its own, else it is
      refused. So among strangers it is first come, first served (squatters cannot push out the
      incumbents, honest ones included), while a publisher with history always gets a place
      among strangers, however many came first;
    * a full pool: a newcomer with history evicts strangers' records, those stored last first; a
      stranger is refused. Publishers with history never lose records to anyone but each other's
      name limits.

    A publisher's standing is the one it had when it last stored (an update re-ranks it).

    Expiry costs a heap operation per record, so :meth:`put` drops expired records as it goes.

    Args:
        standing: the publisher's standing, as above (default: everyone is a stranger); a
            :class:`~physarum.dht.service.KadDHT` sets it to seniority in its routing table.
        max_records: most entity-name records held for others.
        max_bytes: most envelope bytes of entity-name records held for others.
        max_per_id: most publishers held for one id (ours not counted).
        max_per_publisher: most entity-name records held for one publisher.
        max_peer_records: most peer-id records held for others.
        max_peer_bytes: most envelope bytes of peer-id records held for others.
        max_ttl: passed to :func:`verify_record`.

    The defaults bound what others can make a node hold to about 24 MiB of envelopes plus ~600
    bytes per record (20,000 records).
    """

    def __init__(
        self,
        *,
        standing: Standing | None = None,
        max_records: int = 10_000,
        max_bytes: int = 16 * 1024 * 1024,
        max_per_id: int = 16,
        max_per_publisher: int = 64,
        max_peer_records: int = 10_000,
        max_peer_bytes: int = 8 * 1024 * 1024,
        max_ttl: float = MAX_RECORD_TTL,
    ) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.max_per_id = max_per_id
        self.max_per_publisher = max_per_publisher
        self.max_peer_records = max_peer_records
        self.max_peer_bytes = max_peer_bytes
        self.max_ttl = max_ttl
        self.standing: Standing = standing if standing is not None else _no_history
        self._by_id: dict[str, dict[PeerId, _Entry]] = {}
        self._count = 0
        self._bytes = 0
        # what others hold here, per pool (own records excluded)
        self._pool_count = [0, 0]
        self._pool_bytes = [0, 0]
        # strangers' entries per pool, in the order they were first stored
        self._strangers: list[dict[tuple[str, PeerId], _Entry]] = [{}, {}]
        self._stranger_bytes = [0, 0]
        self._per_publisher: dict[PeerId, int] = {}
        self._own: dict[tuple[str, PeerId], _Entry] = {}  # so republishing never scans others' records
        self._expiry: list[tuple[int, int, _Entry]] = []  # (expires, push count, entry), lazily pruned
        self._pushes = 0
        self._order = 0

    def __len__(self) -> int:
        return self._count

    @property
    def total_bytes(self) -> int:
        """Envelope bytes held."""
        return self._bytes

    def ids(self) -> list[str]:
        """Every id with at least one record held (expired ones included until :meth:`expire`)."""
        return list(self._by_id)

    def held_for(self, publisher: PeerId) -> int:
        """How many entity-name records are held for ``publisher`` (its quota use)."""
        return self._per_publisher.get(publisher, 0)

    def put(self, envelope: bytes, now: float, *, own: bool = False, record_id: str | None = None) -> PutResult:
        """Verify and store a signed record (a PUT_VALUE, or our own with ``own=True``). Never raises
        (unless ``standing`` does). With ``record_id`` (the id of the key it was put under), a
        record for another id is refused (:class:`WrongKeyError`) and nothing held changes.

        Returns :class:`Stored` (new, or a higher seq that replaced the old one), :class:`Unchanged`
        (the same envelope again), or :class:`RecordRejected` with a :class:`RecordError`: whatever
        :func:`verify_record` raises, :class:`StaleRecordError` for a lower seq or an equal seq with
        other contents, :class:`PublisherQuotaError`, :class:`NameFullError` or
        :class:`StoreFullError` at a bound.
        """
        try:
            record = verify_record(envelope, now, max_ttl=self.max_ttl)
        except RecordError as e:
            return RecordRejected(e)
        publisher = record.publisher
        assert publisher is not None
        if record_id is not None and record.id != record_id:
            return RecordRejected(
                WrongKeyError(
                    f"record for {record.id!r} under the key of {record_id!r}", record_id=record.id, publisher=publisher
                )
            )
        envelope = bytes(envelope)
        self.expire(now)
        known_since = None if own else self.standing(publisher)
        rank = _rank(known_since)
        pool = _PEERS if record.id == str(publisher) else _NAMES
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
                    self._unaccount(old)
                    old.own, old.last_published = True, now
                    self._account(old)
                return Unchanged(old.stored)
            if not (own or old.own):
                victims = self._room(pool, 0, len(envelope) - old.size, rank, keep=old)
                if victims is None:
                    return RecordRejected(StoreFullError("record store is full (bytes)", record_id=record.id))
                for victim in victims:
                    self._drop(victim)
            stored = StoredRecord(record if own or old.own else _summary(record), envelope, now)
            self._unaccount(old)
            old.stored = stored
            old.own = old.own or own
            if not old.own:
                old.known_since = known_since
            if own:
                old.last_published = now
            self._account(old)
            return Stored(stored, replaced=True)
        if not own:
            leaving = None
            if pool == _NAMES:
                if self._per_publisher.get(publisher, 0) >= self.max_per_publisher:
                    return RecordRejected(
                        PublisherQuotaError(
                            f"publisher holds {self.max_per_publisher} records here, the limit",
                            record_id=record.id,
                            publisher=publisher,
                        )
                    )
                others = [e for e in publishers.values() if not e.own] if publishers is not None else []
                if len(others) >= self.max_per_id:
                    leaving = min(others, key=lambda e: (_rank(e.known_since), -e.order))
                    if _rank(leaving.known_since) >= rank:
                        return RecordRejected(
                            NameFullError(
                                f"record store holds {len(others)} publishers for {record.id!r}, the limit,"
                                " none with less standing",
                                record_id=record.id,
                                publisher=publisher,
                            )
                        )
            victims = self._room(pool, 1, len(envelope), rank, leaving=leaving)
            if victims is None:
                what = "peer-id records" if pool == _PEERS else "records"
                return RecordRejected(
                    StoreFullError(f"record store is full ({what})", record_id=record.id, publisher=publisher)
                )
            for victim in ([leaving] if leaving is not None else []) + victims:
                self._drop(victim)
        stored = StoredRecord(record if own else _summary(record), envelope, now)
        self._order += 1
        entry = _Entry(stored, own, now, None if own else known_since, pool, self._order)
        self._by_id.setdefault(record.id, {})[publisher] = entry
        self._account(entry)
        return Stored(stored)

    def get(self, record_id: str, now: float, *, limit: int | None = None) -> list[bytes]:
        """The unexpired envelopes for ``record_id``, all publishers, newest (latest expiry) first."""
        return [s.envelope for s in self.records(record_id, now, limit=limit)]

    def records(self, record_id: str, now: float, *, limit: int | None = None) -> list[StoredRecord]:
        """Like :meth:`get`, with the held records (summaries for others' records, see :class:`StoredRecord`)."""
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
        victims = list(publishers.values()) if publisher is None else [publishers[publisher]] if publisher in publishers else []
        for entry in victims:
            self._drop(entry)
        return len(victims)

    def expire(self, now: float) -> int:
        """Drop every record with ``expires <= now`` (our own included); returns how many went.

        Amortised O(log n) per record dropped: records wait in a heap by expiry.
        """
        dropped = 0
        heap = self._expiry
        while heap and heap[0][0] <= now:
            expires, _, entry = heapq.heappop(heap)
            if entry.stored.record.expires == expires and self._holds(entry):
                self._drop(entry)
                dropped += 1
        return dropped

    def own_records(self) -> list[StoredRecord]:
        """Our own records (put with ``own=True``), expired or not."""
        return [e.stored for e in self._own.values()]

    def due_for_republish(self, now: float, interval: float) -> list[StoredRecord]:
        """Our own unexpired records last published at least ``interval`` ago.

        PUT each to the closest peers of its key, then :meth:`mark_republished`. A record that
        would expire before the next round should be re-signed with a higher seq and a later
        expiry instead (see :meth:`expiring_own`).
        """
        return [
            e.stored
            for e in self._own.values()
            if e.stored.record.expires > now and now - e.last_published >= interval
        ]

    def expiring_own(self, now: float, within: float) -> list[StoredRecord]:
        """Our own records that expire within ``within`` seconds (or already have): re-sign these."""
        return [e.stored for e in self._own.values() if e.stored.record.expires - now <= within]

    def mark_republished(self, record_id: str, publisher: PeerId, now: float) -> bool:
        """Note that our record was published at ``now``; False when no such own record is held."""
        entry = self._by_id.get(record_id, {}).get(publisher)
        if entry is None or not entry.own:
            return False
        entry.last_published = now
        return True

    # -- accounting --

    def _limits(self, pool: int) -> tuple[int, int]:
        if pool == _PEERS:
            return self.max_peer_records, self.max_peer_bytes
        return self.max_records, self.max_bytes

    def _room(
        self,
        pool: int,
        count: int,
        size: int,
        rank: float,
        *,
        leaving: _Entry | None = None,
        keep: _Entry | None = None,
    ) -> list[_Entry] | None:
        """Strangers' entries to evict so that ``count`` more entries and ``size`` more bytes fit in
        ``pool`` once ``leaving`` is gone: [] when they fit already, None when they cannot (or
        when the newcomer, of standing ``rank``, may not evict). ``keep`` is never chosen."""
        max_count, max_bytes = self._limits(pool)
        n = self._pool_count[pool] + count
        b = self._pool_bytes[pool] + size
        if leaving is not None:
            n -= 1
            b -= leaving.size
        if n <= max_count and b <= max_bytes:
            return []
        if rank == _STRANGER:
            return None
        strangers = self._strangers[pool]
        spare_n, spare_b = len(strangers), self._stranger_bytes[pool]
        for entry in (leaving, keep):
            if entry is not None and entry.key in strangers and strangers[entry.key] is entry:
                spare_n -= 1
                spare_b -= entry.size
        if n - spare_n > max_count or b - spare_b > max_bytes:
            return None
        victims = []
        for entry in reversed(strangers.values()):  # stored last, evicted first: incumbents stay
            if entry is leaving or entry is keep:
                continue
            victims.append(entry)
            n -= 1
            b -= entry.size
            if n <= max_count and b <= max_bytes:
                break
        return victims

    def _holds(self, entry: _Entry) -> bool:
        return self._by_id.get(entry.stored.record.id, {}).get(entry.stored.publisher) is entry

    def _account(self, entry: _Entry) -> None:
        """Count a (new or changed) entry that is in ``_by_id``."""
        self._count += 1
        self._bytes += entry.size
        if entry.own:
            self._own[entry.key] = entry
        else:
            pool = entry.pool
            self._pool_count[pool] += 1
            self._pool_bytes[pool] += entry.size
            if pool == _NAMES:
                publisher = entry.stored.publisher
                self._per_publisher[publisher] = self._per_publisher.get(publisher, 0) + 1
            if entry.known_since is None:
                self._strangers[pool][entry.key] = entry
                self._stranger_bytes[pool] += entry.size
        self._pushes += 1
        heapq.heappush(self._expiry, (entry.stored.record.expires, self._pushes, entry))
        if len(self._expiry) > 2 * self._count + 64:
            # updates leave stale heap items behind: rebuild before they outnumber the records
            self._expiry = []
            for pubs in self._by_id.values():
                for e in pubs.values():
                    self._pushes += 1
                    self._expiry.append((e.stored.record.expires, self._pushes, e))
            heapq.heapify(self._expiry)

    def _unaccount(self, entry: _Entry) -> None:
        """Undo :meth:`_account` (the heap item goes stale and is skipped)."""
        self._count -= 1
        self._bytes -= entry.size
        if entry.own:
            del self._own[entry.key]
        else:
            pool = entry.pool
            self._pool_count[pool] -= 1
            self._pool_bytes[pool] -= entry.size
            if pool == _NAMES:
                publisher = entry.stored.publisher
                left = self._per_publisher[publisher] - 1
                if left:
                    self._per_publisher[publisher] = left
                else:
                    del self._per_publisher[publisher]
            if entry.known_since is None:
                del self._strangers[pool][entry.key]
                self._stranger_bytes[pool] -= entry.size

    def _drop(self, entry: _Entry) -> None:
        record_id, publisher = entry.key
        publishers = self._by_id[record_id]
        del publishers[publisher]
        if not publishers:
            del self._by_id[record_id]
        self._unaccount(entry)
