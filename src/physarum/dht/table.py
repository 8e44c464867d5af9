"""The Kademlia routing table: a pure data structure of k-buckets over the SHA-256 key space.

Layout: a fixed array of 256 buckets indexed by the common prefix length (CPL) of a contact's key
with our own key (bucket 0 = the far half of the space). Buckets are created on first use, so a
table costs memory only for the buckets it fills; a simulation of 10,000 nodes holds 10,000 tables.
Each bucket keeps at most ``k`` contacts in least-recently-seen-first order, plus a bounded
replacement cache of contacts that arrived while it was full (newest kept).

Kademlia's eviction rule is the caller's job: :meth:`RoutingTable.add` never evicts. It answers
:class:`Added`, :class:`Updated`, :class:`BucketFull` (naming the least-recently-seen contact, which
the caller should ping) or :class:`Rejected`. If the ping answers, call :meth:`RoutingTable.touch` on
the old contact (the newcomer stays in the replacement cache); if it fails, call
:meth:`RoutingTable.replace`. :meth:`RoutingTable.remove` promotes the newest acceptable
replacement into the freed slot.

Time is injected (``now``) everywhere, in whatever clock the caller uses consistently (the node
uses ``trio.current_time()``); the table never reads a clock and never starts tasks.

Contacts hold their addresses as ``Multiaddr`` objects, already checked (see
:mod:`physarum.dht.addrs`): the host dials them as they are, and IP grouping reads their bytes.
A contact keeps at most ``max_addrs`` of them (:data:`~physarum.dht.addrs.MAX_ADDRS_PER_PEER`,
32, by default; :meth:`RoutingTable.add` cuts longer lists, so an answer we send names at most
``k`` x 32 addresses); callers deduplicate (:func:`~physarum.dht.addrs.bounded_addrs`).

Seniority: a contact remembers ``since``, when it entered the table proper; updates and touches
keep it. It is the history the record and provider stores rank publishers by (see
:mod:`physarum.dht.records`): Kademlia never evicts a live contact for a newcomer, so a place held
for long is something a throwaway identity cannot have.

IP diversity (see :class:`DiversityLimits`): after libp2p's routing-table diversity filter, a
bucket holds at most 2 contacts per IPv4 /24 or IPv6 /48 and the whole table at most 3, so one
address range cannot fill a bucket or crowd the table. libp2p groups IPv4 by /16 and IPv6 by ASN;
we have no ASN data and serve private overlays where one operator's nodes often share a /16, so we
group more finely. Loopback, private (RFC 1918, ULA), link-local and carrier-grade NAT addresses are
exempt while ``allow_same_range`` is true, which is the default: test and demo networks put every
node on 127.0.0.1, and edge clusters live on one private LAN, where the limits would starve the
table. Set it to false on nodes reachable from the internet if private addresses should be limited
too; set a limit to None to disable it.

Persistence: :meth:`RoutingTable.to_json` / :meth:`RoutingTable.from_json` write and read a
versioned JSON object ``{"version": 2, "self": <peer id>, "saved_at": <unix time>, "contacts":
[{"peer_id", "addrs", "last_seen", "since"}]}`` with multiaddrs in text form and ``last_seen``
and ``since`` in unix seconds (``since`` is optional when reading): the table's own clock (``trio.current_time()`` in a node) means nothing to another
process, so the caller passes both clocks' readings (``now`` and ``wall_now``) and the table
converts, reading no clock itself. Version 1 files (``last_seen`` in the saving process's clock,
without ``saved_at``) still load. Never pickle.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import math
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from random import Random
from typing import Any

from physarum.dht import keyspace
from physarum.dht.addrs import MAX_ADDRS_PER_PEER, IPAddress, ip_address_of, parse_multiaddr_text
from physarum.errors import ConfigError, DecodeError
from physarum.overlay.identity import PeerId

K = 20
#: The version :meth:`RoutingTable.to_json` writes; :meth:`RoutingTable.from_json` also reads 1.
TABLE_JSON_VERSION = 2
_READABLE_VERSIONS = (1, 2)
#: libp2p refreshes CPLs 0..15 only: deeper buckets are empty in any realistic network.
DEFAULT_MAX_REFRESH_INDEX = 15

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")


class TableFormatError(DecodeError):
    """A saved routing table that cannot be loaded; ``reason`` says what is wrong and where."""


@dataclass(frozen=True, slots=True)
class Contact:
    """A peer the table knows: its id, the multiaddrs it is reached at, and when it was last seen.

    ``addrs`` are ``Multiaddr`` objects (checked ones: build them with
    :func:`physarum.dht.addrs.parse_multiaddr_bytes` / ``parse_multiaddr_text`` when they come
    from outside). ``key`` is the peer's Kademlia key, computed once. ``since`` is when the table
    took the peer in (set by :meth:`RoutingTable.add`, kept by later updates; what a caller
    passes is used only by :meth:`RoutingTable.from_json`). Contacts are immutable; the table
    stores new ones when it updates ``last_seen`` or addresses.
    """

    peer_id: PeerId
    addrs: tuple[Any, ...] = ()
    last_seen: float = 0.0
    since: float | None = field(default=None, compare=False)
    key: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.addrs, tuple):
            object.__setattr__(self, "addrs", tuple(self.addrs))
        object.__setattr__(self, "key", keyspace.peer_key(self.peer_id))

    def _evolve(self, addrs: tuple[Any, ...], last_seen: float, since: float | None = None) -> Contact:
        # same peer, so skip re-hashing the peer id
        new = object.__new__(Contact)
        object.__setattr__(new, "peer_id", self.peer_id)
        object.__setattr__(new, "addrs", addrs)
        object.__setattr__(new, "last_seen", last_seen)
        object.__setattr__(new, "since", self.since if since is None else since)
        object.__setattr__(new, "key", self.key)
        return new


@dataclass(frozen=True, slots=True)
class Added:
    """The contact went into its bucket."""

    contact: Contact


@dataclass(frozen=True, slots=True)
class Updated:
    """The peer was already in the table: ``last_seen`` (and addresses, if given) were refreshed."""

    contact: Contact


@dataclass(frozen=True, slots=True)
class BucketFull:
    """The bucket is full. ``candidate`` went into the replacement cache; ping ``oldest``.

    If ``oldest`` answers, :meth:`RoutingTable.touch` it; if not, :meth:`RoutingTable.replace` it
    with ``candidate``.
    """

    oldest: Contact
    candidate: Contact


class RejectReason(enum.Enum):
    SELF = "self"
    """The contact is this node."""
    IP_DIVERSITY = "ip-diversity"
    """The contact's address range already has its share of the bucket or the table."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """The table will not hold this contact, for ``reason``."""

    contact: Contact
    reason: RejectReason


AddResult = Added | Updated | BucketFull | Rejected

_Group = tuple[int, int]


@dataclass(frozen=True, slots=True)
class DiversityLimits:
    """How many contacts one IP range may place in a bucket and in the table (None: no limit).

    A range is an IPv4 /``ipv4_prefix`` or an IPv6 /``ipv6_prefix`` (IPv4-mapped IPv6 counts as
    IPv4). A contact counts against the range of every IP address it lists; contacts listing no IP
    address (DNS names only) are not limited. With ``allow_same_range`` (the default), loopback,
    private, link-local and carrier-grade-NAT addresses are not counted at all.
    """

    per_bucket: int | None = 2
    per_table: int | None = 3
    ipv4_prefix: int = 24
    ipv6_prefix: int = 48
    allow_same_range: bool = True

    def groups(self, addrs: Sequence[Any]) -> frozenset[_Group]:
        """The address ranges a contact with ``addrs`` counts against."""
        out: set[_Group] = set()
        for addr in addrs:
            ip = ip_address_of(addr)
            if ip is None or (self.allow_same_range and _is_local(ip)):
                continue
            if ip.version == 4:
                out.add((4, int(ip) >> (32 - self.ipv4_prefix)))
            else:
                out.add((6, int(ip) >> (128 - self.ipv6_prefix)))
        return frozenset(out)


def _is_local(ip: IPAddress) -> bool:
    if ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_unspecified:
        return True
    return isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT


class _Bucket:
    __slots__ = ("contacts", "groups", "last_activity", "replacements")

    def __init__(self, now: float) -> None:
        # dicts keep insertion order: least recently seen / oldest first
        self.contacts: dict[PeerId, Contact] = {}
        self.replacements: dict[PeerId, Contact] = {}
        self.groups: Counter[_Group] = Counter()
        self.last_activity = now


_NO_GROUPS: frozenset[_Group] = frozenset()


class RoutingTable:
    """k-buckets around ``self_id``. Pure: no clock, no I/O, no tasks.

    Args:
        self_id: this node's peer id (never stored in its own table).
        k: bucket size (Kademlia's k; libp2p uses 20).
        now: creation time; buckets count as active since then for :meth:`stale_buckets`.
        replacement_size: replacement cache bound per bucket (default ``k``).
        diversity: IP range limits, or None for none (see :class:`DiversityLimits`).
        max_addrs: most addresses a contact keeps (the first ones); default
            :data:`~physarum.dht.addrs.MAX_ADDRS_PER_PEER` (32).

    Raises:
        ValueError: ``k`` or ``max_addrs`` is below 1, or ``replacement_size`` below 0.
    """

    def __init__(
        self,
        self_id: PeerId,
        *,
        k: int = K,
        now: float = 0.0,
        replacement_size: int | None = None,
        diversity: DiversityLimits | None = DiversityLimits(),
        max_addrs: int = MAX_ADDRS_PER_PEER,
    ) -> None:
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        if max_addrs < 1:
            raise ConfigError(f"max_addrs must be at least 1, got {max_addrs}")
        if replacement_size is not None and replacement_size < 0:
            raise ConfigError(f"replacement_size must not be negative, got {replacement_size}")
        self.self_id = self_id
        self.self_key = keyspace.peer_key(self_id)
        self.k = k
        self.replacement_size = k if replacement_size is None else replacement_size
        self.diversity = diversity
        self.max_addrs = max_addrs
        self.created = now
        self._buckets: list[_Bucket | None] = [None] * keyspace.KEY_BITS
        self._contacts: dict[PeerId, Contact] = {}
        self._contact_groups: dict[PeerId, frozenset[_Group]] = {}
        self._table_groups: Counter[_Group] = Counter()
        # highest bucket index that has ever been created; bounds the scans in closest()
        self._top = -1

    # -- queries -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._contacts)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._contacts

    def __iter__(self) -> Iterator[Contact]:
        """All contacts, bucket 0 first, least recently seen first within a bucket."""
        for bucket in self._buckets[: self._top + 1]:
            if bucket is not None:
                yield from bucket.contacts.values()

    def get(self, peer_id: PeerId) -> Contact | None:
        """The stored contact for ``peer_id`` (not replacement-cache entries), or None."""
        return self._contacts.get(peer_id)

    def bucket_index_of(self, key: int) -> int:
        """The bucket a Kademlia key falls in (256 for our own key)."""
        return keyspace.bucket_index(self.self_key, key)

    def bucket(self, index: int) -> list[Contact]:
        """The contacts of bucket ``index``, least recently seen first.

        Raises:
            IndexError: ``index`` is not in [0, 255].
        """
        bucket = self._bucket_or_none(index)
        return [] if bucket is None else list(bucket.contacts.values())

    def replacements(self, index: int) -> list[Contact]:
        """The replacement cache of bucket ``index``, newest first.

        Raises:
            IndexError: ``index`` is not in [0, 255].
        """
        bucket = self._bucket_or_none(index)
        return [] if bucket is None else list(reversed(bucket.replacements.values()))

    def bucket_sizes(self) -> dict[int, int]:
        """``{bucket index: number of contacts}`` for the non-empty buckets."""
        return {
            i: len(b.contacts)
            for i, b in enumerate(self._buckets[: self._top + 1])
            if b is not None and b.contacts
        }

    def closest(self, key: int, count: int | None = None, exclude: Collection[PeerId] = ()) -> list[Contact]:
        """Up to ``count`` (default ``k``) contacts nearest to ``key`` by XOR distance, nearest first.

        Exact, and it never sorts more than one bucket at a time. With ``d = self_key ^ key`` and
        ``c`` the bucket ``key`` falls in (the number of leading zero bits of ``d``), XOR distance
        orders whole buckets: bucket ``c`` is nearest; then each bucket ``i > c`` comes before
        every deeper bucket when bit ``i`` of ``d`` is 1 and after all of them when it is 0; then
        buckets ``c-1``, ``c-2``, ... 0. So it visits buckets in that order, sorts each, and
        stops once it has ``count``. ``exclude`` contacts are skipped. Never raises.
        """
        n = self.k if count is None else count
        if n <= 0 or not self._contacts:
            return []
        buckets = self._buckets
        top = self._top
        d = self.self_key ^ key
        c = keyspace.KEY_BITS - d.bit_length()
        out: list[Contact] = []

        def dist(contact: Contact) -> int:
            return contact.key ^ key

        def take(index: int) -> bool:
            b = buckets[index]
            if b is None or not b.contacts:
                return False
            candidates = list(b.contacts.values())
            if exclude:
                candidates = [x for x in candidates if x.peer_id not in exclude]
            if len(candidates) > 1:
                candidates.sort(key=dist)
            out.extend(candidates[: n - len(out)])
            return len(out) >= n

        if c <= top and take(c):
            return out
        if c < top:
            deferred = []
            for i in range(c + 1, top + 1):
                if (d >> (keyspace.KEY_BITS - 1 - i)) & 1:
                    if take(i):
                        return out
                else:
                    deferred.append(i)
            for i in reversed(deferred):
                if take(i):
                    return out
        for i in range(min(c, top + 1) - 1, -1, -1):
            if take(i):
                return out
        return out

    # -- changes -------------------------------------------------------------------------------

    def add(self, contact: Contact, now: float) -> AddResult:
        """Record that ``contact`` was seen at ``now``; Kademlia's insertion rule without eviction.

        Known peer: moved to the tail of its bucket with ``last_seen = now`` and, when ``contact``
        lists addresses, those addresses (unless they would break the diversity limits; then the
        old ones stay) -> :class:`Updated`. New peer with room -> :class:`Added`, with ``since =
        now``. New peer, bucket full -> :class:`BucketFull` and the newcomer is kept in the
        replacement cache. Our own id or an address range over its limits -> :class:`Rejected`.
        Only the first ``max_addrs`` addresses are kept. Never raises.
        """
        peer_id = contact.peer_id
        if peer_id == self.self_id:
            return Rejected(contact, RejectReason.SELF)
        if len(contact.addrs) > self.max_addrs:
            contact = contact._evolve(contact.addrs[: self.max_addrs], contact.last_seen)
        index = keyspace.KEY_BITS - (self.self_key ^ contact.key).bit_length()
        bucket = self._bucket_for(index)
        if now > bucket.last_activity:
            bucket.last_activity = now
        existing = bucket.contacts.get(peer_id)
        if existing is not None:
            addrs = existing.addrs
            if contact.addrs and contact.addrs != existing.addrs:
                groups = self._groups_of(contact.addrs)
                if self._fits(bucket, groups, self._contact_groups.get(peer_id, _NO_GROUPS)):
                    self._unaccount(bucket, peer_id)
                    self._account(bucket, peer_id, groups)
                    addrs = contact.addrs
            updated = existing._evolve(addrs, max(now, existing.last_seen))
            del bucket.contacts[peer_id]
            bucket.contacts[peer_id] = updated
            self._contacts[peer_id] = updated
            return Updated(updated)
        new = contact._evolve(contact.addrs, now, now)
        groups = self._groups_of(new.addrs)
        if not self._fits(bucket, groups, _NO_GROUPS):
            return Rejected(new, RejectReason.IP_DIVERSITY)
        if len(bucket.contacts) < self.k:
            bucket.replacements.pop(peer_id, None)
            self._insert(bucket, new, groups)
            return Added(new)
        if self.replacement_size:
            bucket.replacements.pop(peer_id, None)
            bucket.replacements[peer_id] = new
            while len(bucket.replacements) > self.replacement_size:
                del bucket.replacements[next(iter(bucket.replacements))]
        return BucketFull(next(iter(bucket.contacts.values())), new)

    def touch(self, peer_id: PeerId, now: float) -> bool:
        """Mark a stored peer as seen at ``now`` (it answered a ping or a request).

        Returns False, changing nothing, when the peer is not in the table. Never raises.
        """
        existing = self._contacts.get(peer_id)
        if existing is None:
            return False
        bucket = self._buckets[keyspace.KEY_BITS - (self.self_key ^ existing.key).bit_length()]
        assert bucket is not None
        updated = existing._evolve(existing.addrs, max(now, existing.last_seen))
        del bucket.contacts[peer_id]
        bucket.contacts[peer_id] = updated
        self._contacts[peer_id] = updated
        if now > bucket.last_activity:
            bucket.last_activity = now
        return True

    def remove(self, peer_id: PeerId) -> Contact | None:
        """Forget a peer (it failed, or left) and promote the newest acceptable replacement.

        Also drops the peer from its bucket's replacement cache. Returns the removed contact, or
        None when the peer was not in the table proper. Never raises.
        """
        removed = self._remove(peer_id)
        index = keyspace.KEY_BITS - (self.self_key ^ keyspace.peer_key(peer_id)).bit_length()
        if index < keyspace.KEY_BITS:
            bucket = self._buckets[index]
            if bucket is not None:
                bucket.replacements.pop(peer_id, None)
                if removed is not None:
                    self._promote(bucket)
        return removed

    def replace(self, old_peer_id: PeerId, new_contact: Contact, now: float) -> AddResult:
        """Evict ``old_peer_id`` (it failed the ping after :class:`BucketFull`) and add ``new_contact``.

        When ``new_contact`` is refused (diversity limits), the freed slot goes to the newest
        acceptable replacement instead. Returns what :meth:`add` returned for ``new_contact``.
        Never raises.
        """
        removed = self._remove(old_peer_id)
        result = self.add(new_contact, now)
        if removed is not None and not isinstance(result, (Added, Updated)):
            bucket = self._buckets[keyspace.KEY_BITS - (self.self_key ^ removed.key).bit_length()]
            assert bucket is not None
            self._promote(bucket)
        return result

    # -- refresh -------------------------------------------------------------------------------

    def stale_buckets(
        self, now: float, refresh_interval: float, *, max_index: int = DEFAULT_MAX_REFRESH_INDEX
    ) -> list[int]:
        """Bucket indices with no activity for at least ``refresh_interval``: refresh them.

        Activity is an :meth:`add` or :meth:`touch` of a contact in the bucket, or
        :meth:`mark_refreshed` / :meth:`note_lookup`. Candidates are buckets 0 up to the deepest
        non-empty one, capped at ``max_index`` (deeper buckets hold almost nobody). An empty table
        has nothing to refresh from and returns []. Never raises.
        """
        deepest = max(self.bucket_sizes(), default=-1)
        out = []
        for i in range(min(deepest, max_index) + 1):
            bucket = self._buckets[i]
            last = self.created if bucket is None else bucket.last_activity
            if now - last >= refresh_interval:
                out.append(i)
        return out

    def mark_refreshed(self, index: int, now: float) -> None:
        """Record a refresh lookup for bucket ``index`` at ``now``.

        Raises:
            ConfigError: ``index`` is not in [0, 255].
        """
        if not 0 <= index < keyspace.KEY_BITS:
            raise ConfigError(f"bucket index out of range: {index}")
        bucket = self._bucket_for(index)
        bucket.last_activity = max(bucket.last_activity, now)

    def note_lookup(self, key: int, now: float) -> None:
        """Record a lookup for ``key`` at ``now``: the bucket it falls in counts as refreshed."""
        index = self.bucket_index_of(key)
        if index < keyspace.KEY_BITS:
            self.mark_refreshed(index, now)

    def random_key_in_bucket(self, index: int, rng: Random) -> int:
        """A random Kademlia key in bucket ``index`` (see :func:`keyspace.random_key_in_bucket`).

        Raises:
            ValueError: ``index`` is not in [0, 255].
        """
        return keyspace.random_key_in_bucket(self.self_key, index, rng)

    def random_preimage_in_bucket(self, index: int, rng: Random) -> bytes:
        """FIND_NODE key bytes that hash into bucket ``index`` (see :func:`keyspace.random_preimage_in_bucket`).

        Raises:
            ValueError: ``index`` is beyond :data:`keyspace.MAX_PREIMAGE_INDEX`.
        """
        return keyspace.random_preimage_in_bucket(self.self_key, index, rng)

    # -- persistence ---------------------------------------------------------------------------

    def to_json(self, *, now: float, wall_now: float) -> dict[str, Any]:
        """The table as a JSON-ready dict (version 2); replacement caches are not saved.

        ``now`` is the time on the table's clock (the one passed to :meth:`add`) at the moment the
        wall clock reads ``wall_now`` (unix seconds): each ``last_seen`` is saved as the unix time
        ``wall_now - (now - last_seen)``, which any later process can read.
        """
        offset = wall_now - now
        return {
            "version": TABLE_JSON_VERSION,
            "self": str(self.self_id),
            "saved_at": wall_now,
            "contacts": [
                {
                    "peer_id": str(c.peer_id),
                    "addrs": [str(a) for a in c.addrs],
                    "last_seen": c.last_seen + offset,
                    "since": (c.since if c.since is not None else c.last_seen) + offset,
                }
                for c in self
            ],
        }

    @classmethod
    def from_json(
        cls,
        data: Mapping[str, Any] | str | bytes,
        *,
        now: float,
        wall_now: float | None = None,
        self_id: PeerId | None = None,
        k: int = K,
        replacement_size: int | None = None,
        diversity: DiversityLimits | None = DiversityLimits(),
    ) -> RoutingTable:
        """Load a table saved by :meth:`to_json` (a parsed dict, or the JSON text itself).

        ``now`` is the time on the new table's clock, read when the wall clock read ``wall_now``.
        Contacts are added oldest ``last_seen`` first, as :meth:`add` would add them (our own id
        and contacts over the diversity limits are dropped; overflow goes to the replacement
        caches), so each bucket keeps its least-recently-seen order. A version 2 file keeps each
        contact's age: ``last_seen`` becomes ``now - (wall_now - saved last_seen)``, never later
        than ``now`` (a saved time in the future, from a clock that was reset, counts as ``now``),
        and its seniority (``since``, converted the same way; without it, ``last_seen``).
        Without ``wall_now``, and for version 1 files (whose times came from the saving process's
        monotonic clock), every contact is stamped ``now``. Bucket refresh clocks start at ``now``.

        Raises:
            TableFormatError: not JSON, an unknown version, a missing or ill-typed field, a bad peer
                id or multiaddr (the reason names the entry), or ``self`` differs from ``self_id``.
            ValueError: ``k`` or ``replacement_size`` out of range.
        """
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except (ValueError, RecursionError) as e:
                raise TableFormatError(f"routing table is not JSON: {e}") from None
        if not isinstance(data, Mapping):
            raise TableFormatError("routing table JSON is not an object")
        version = data.get("version")
        if version not in _READABLE_VERSIONS or isinstance(version, bool):
            raise TableFormatError(
                f"unsupported routing table version {version!r}, want one of {list(_READABLE_VERSIONS)}"
            )
        saved_self = data.get("self")
        if not isinstance(saved_self, str):
            raise TableFormatError("routing table lacks 'self' (a peer id string)")
        try:
            saved_id = PeerId.from_string(saved_self)
        except DecodeError as e:
            raise TableFormatError(f"routing table 'self' is not a peer id: {e.reason}") from None
        if self_id is not None and saved_id != self_id:
            raise TableFormatError(f"routing table was saved by {saved_id}, not {self_id}")
        raw_contacts = data.get("contacts")
        if not isinstance(raw_contacts, list):
            raise TableFormatError("routing table lacks 'contacts' (a list)")
        contacts = [_contact_from_json(i, entry) for i, entry in enumerate(raw_contacts)]
        table = cls(saved_id, k=k, now=now, replacement_size=replacement_size, diversity=diversity)
        keep_ages = version == 2 and wall_now is not None
        for contact in sorted(contacts, key=lambda c: c.last_seen):
            seen = now
            if keep_ages and wall_now is not None:
                seen = now - max(0.0, wall_now - contact.last_seen)
            result = table.add(contact, seen)
            if keep_ages and wall_now is not None and contact.since is not None and isinstance(result, Added):
                table._set_since(contact.peer_id, min(seen, now - max(0.0, wall_now - contact.since)))
        return table

    # -- internals -----------------------------------------------------------------------------

    def _set_since(self, peer_id: PeerId, since: float) -> None:
        contact = self._contacts[peer_id]
        bucket = self._buckets[keyspace.KEY_BITS - (self.self_key ^ contact.key).bit_length()]
        assert bucket is not None
        updated = contact._evolve(contact.addrs, contact.last_seen, since)
        bucket.contacts[peer_id] = updated  # an existing key keeps its place in the bucket
        self._contacts[peer_id] = updated

    def _bucket_or_none(self, index: int) -> _Bucket | None:
        if not 0 <= index < keyspace.KEY_BITS:
            raise IndexError(f"bucket index out of range: {index}")
        return self._buckets[index]

    def _bucket_for(self, index: int) -> _Bucket:
        bucket = self._buckets[index]
        if bucket is None:
            bucket = self._buckets[index] = _Bucket(self.created)
            if index > self._top:
                self._top = index
        return bucket

    def _groups_of(self, addrs: tuple[Any, ...]) -> frozenset[_Group]:
        if self.diversity is None or not addrs:
            return _NO_GROUPS
        return self.diversity.groups(addrs)

    def _fits(self, bucket: _Bucket, groups: frozenset[_Group], own: frozenset[_Group]) -> bool:
        limits = self.diversity
        if limits is None or not groups:
            return True
        for group in groups:
            # a contact whose addresses change must not count against itself
            mine = 1 if group in own else 0
            if limits.per_bucket is not None and bucket.groups[group] - mine >= limits.per_bucket:
                return False
            if limits.per_table is not None and self._table_groups[group] - mine >= limits.per_table:
                return False
        return True

    def _account(self, bucket: _Bucket, peer_id: PeerId, groups: frozenset[_Group]) -> None:
        if groups:
            self._contact_groups[peer_id] = groups
            for group in groups:
                bucket.groups[group] += 1
                self._table_groups[group] += 1

    def _unaccount(self, bucket: _Bucket, peer_id: PeerId) -> None:
        groups = self._contact_groups.pop(peer_id, None)
        if groups:
            for group in groups:
                bucket.groups[group] -= 1
                if bucket.groups[group] <= 0:
                    del bucket.groups[group]
                self._table_groups[group] -= 1
                if self._table_groups[group] <= 0:
                    del self._table_groups[group]

    def _insert(self, bucket: _Bucket, contact: Contact, groups: frozenset[_Group]) -> None:
        bucket.contacts[contact.peer_id] = contact
        self._contacts[contact.peer_id] = contact
        self._account(bucket, contact.peer_id, groups)

    def _remove(self, peer_id: PeerId) -> Contact | None:
        contact = self._contacts.pop(peer_id, None)
        if contact is None:
            return None
        bucket = self._buckets[keyspace.KEY_BITS - (self.self_key ^ contact.key).bit_length()]
        assert bucket is not None
        del bucket.contacts[peer_id]
        self._unaccount(bucket, peer_id)
        return contact

    def _promote(self, bucket: _Bucket) -> Contact | None:
        if len(bucket.contacts) >= self.k:
            return None
        for peer_id in reversed(list(bucket.replacements)):
            candidate = bucket.replacements[peer_id]
            groups = self._groups_of(candidate.addrs)
            if self._fits(bucket, groups, _NO_GROUPS):
                del bucket.replacements[peer_id]
                self._insert(bucket, candidate, groups)
                return candidate
        return None


def _contact_from_json(index: int, entry: object) -> Contact:
    where = f"routing table contact #{index}"
    if not isinstance(entry, Mapping):
        raise TableFormatError(f"{where} is not an object")
    peer_text = entry.get("peer_id")
    if not isinstance(peer_text, str):
        raise TableFormatError(f"{where} lacks 'peer_id' (a string)")
    try:
        peer_id = PeerId.from_string(peer_text)
    except DecodeError as e:
        raise TableFormatError(f"{where}: bad peer id: {e.reason}") from None
    raw_addrs = entry.get("addrs", [])
    if not isinstance(raw_addrs, list):
        raise TableFormatError(f"{where}: 'addrs' is not a list")
    addrs = []
    for text in raw_addrs:
        if not isinstance(text, str):
            raise TableFormatError(f"{where}: an address is not a string")
        try:
            addrs.append(parse_multiaddr_text(text))
        except DecodeError as e:
            raise TableFormatError(f"{where}: bad multiaddr: {e.reason}") from None
    last_seen = entry.get("last_seen", 0.0)
    if not _finite(last_seen):
        raise TableFormatError(f"{where}: 'last_seen' is not a finite number")
    since = entry.get("since")
    if since is not None and not _finite(since):
        raise TableFormatError(f"{where}: 'since' is not a finite number")
    return Contact(peer_id, tuple(addrs), float(last_seen), None if since is None else float(since))


def _finite(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
