"""The routing table as a pure data structure, with ``now`` injected everywhere."""

from __future__ import annotations

import json
import math
from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from physarum.dht import keyspace
from physarum.dht.table import (
    Added,
    BucketFull,
    Contact,
    DiversityLimits,
    Rejected,
    RejectReason,
    RoutingTable,
    TableFormatError,
    Updated,
)
from physarum.errors import ConfigError, DecodeError
from physarum.overlay.identity import PeerId

from ._util import ma, peer_in_bucket, random_peer_id, tcp


def make_table(seed: int = 1, **kwargs: object) -> tuple[RoutingTable, Random]:
    rng = Random(seed)
    return RoutingTable(random_peer_id(rng), **kwargs), rng  # type: ignore[arg-type]


def contact_in(table: RoutingTable, index: int, rng: Random, *addrs: object) -> Contact:
    return Contact(peer_in_bucket(table.self_key, index, rng), tuple(addrs))


# ---- add: Added / Updated / BucketFull / Rejected ----


def test_added_then_updated() -> None:
    table, rng = make_table()
    c = contact_in(table, 0, rng, tcp("127.0.0.1", 1))
    result = table.add(c, now=5.0)
    assert isinstance(result, Added)
    assert result.contact.last_seen == 5.0 and result.contact.peer_id == c.peer_id
    assert len(table) == 1 and c.peer_id in table
    assert table.get(c.peer_id) == result.contact

    again = table.add(Contact(c.peer_id, (tcp("127.0.0.1", 2),)), now=9.0)
    assert isinstance(again, Updated)
    assert again.contact.last_seen == 9.0
    assert again.contact.addrs == (tcp("127.0.0.1", 2),)
    assert len(table) == 1


def test_update_without_addrs_keeps_the_old_ones() -> None:
    table, rng = make_table()
    c = contact_in(table, 0, rng, tcp("127.0.0.1", 1))
    table.add(c, 1.0)
    result = table.add(Contact(c.peer_id), 2.0)
    assert isinstance(result, Updated) and result.contact.addrs == c.addrs


def test_update_never_moves_last_seen_back() -> None:
    table, rng = make_table()
    c = contact_in(table, 0, rng)
    table.add(c, 10.0)
    result = table.add(c, 3.0)
    assert isinstance(result, Updated) and result.contact.last_seen == 10.0


def test_update_moves_to_the_tail() -> None:
    table, rng = make_table(k=3)
    a, b, c = (contact_in(table, 0, rng) for _ in range(3))
    for i, x in enumerate((a, b, c)):
        table.add(x, float(i))
    table.add(a, 10.0)
    assert [x.peer_id for x in table.bucket(0)] == [b.peer_id, c.peer_id, a.peer_id]


def test_self_is_rejected() -> None:
    table, _ = make_table()
    result = table.add(Contact(table.self_id), 1.0)
    assert isinstance(result, Rejected) and result.reason is RejectReason.SELF
    assert len(table) == 0


def test_bucket_full_reports_least_recently_seen_and_caches_the_newcomer() -> None:
    table, rng = make_table(k=2)
    a, b, c = (contact_in(table, 1, rng) for _ in range(3))
    table.add(a, 1.0)
    table.add(b, 2.0)
    result = table.add(c, 3.0)
    assert isinstance(result, BucketFull)
    assert result.oldest.peer_id == a.peer_id
    assert result.candidate.peer_id == c.peer_id and result.candidate.last_seen == 3.0
    assert c.peer_id not in table
    assert [x.peer_id for x in table.replacements(1)] == [c.peer_id]
    assert len(table) == 2


def test_old_contact_answers_ping_then_touch_keeps_it() -> None:
    table, rng = make_table(k=2)
    a, b, c = (contact_in(table, 0, rng) for _ in range(3))
    table.add(a, 1.0)
    table.add(b, 2.0)
    full = table.add(c, 3.0)
    assert isinstance(full, BucketFull)
    assert table.touch(full.oldest.peer_id, 4.0)
    # a answered, so b is now the least recently seen
    again = table.add(c, 5.0)
    assert isinstance(again, BucketFull) and again.oldest.peer_id == b.peer_id
    assert table.get(a.peer_id).last_seen == 4.0  # type: ignore[union-attr]
    assert not table.touch(c.peer_id, 6.0)


def test_old_contact_fails_ping_then_replace() -> None:
    table, rng = make_table(k=2)
    a, b, c = (contact_in(table, 0, rng) for _ in range(3))
    table.add(a, 1.0)
    table.add(b, 2.0)
    full = table.add(c, 3.0)
    assert isinstance(full, BucketFull)
    result = table.replace(full.oldest.peer_id, full.candidate, 4.0)
    assert isinstance(result, Added)
    assert a.peer_id not in table and c.peer_id in table
    assert table.replacements(0) == []
    assert [x.peer_id for x in table.bucket(0)] == [b.peer_id, c.peer_id]


def test_remove_promotes_the_newest_replacement() -> None:
    table, rng = make_table(k=2)
    a, b, c, d = (contact_in(table, 0, rng) for _ in range(4))
    for i, x in enumerate((a, b, c, d)):
        table.add(x, float(i))
    assert [x.peer_id for x in table.replacements(0)] == [d.peer_id, c.peer_id]
    removed = table.remove(b.peer_id)
    assert removed is not None and removed.peer_id == b.peer_id
    assert d.peer_id in table and c.peer_id not in table
    assert [x.peer_id for x in table.replacements(0)] == [c.peer_id]
    assert table.remove(b.peer_id) is None


def test_remove_drops_a_replacement_cache_entry() -> None:
    table, rng = make_table(k=1)
    a, b = (contact_in(table, 0, rng) for _ in range(2))
    table.add(a, 1.0)
    table.add(b, 2.0)
    assert table.remove(b.peer_id) is None
    assert table.replacements(0) == []
    table.remove(a.peer_id)
    assert len(table) == 0


def test_replacement_cache_is_bounded_and_keeps_the_newest() -> None:
    table, rng = make_table(k=1, replacement_size=2)
    contacts = [contact_in(table, 0, rng) for _ in range(5)]
    for i, x in enumerate(contacts):
        table.add(x, float(i))
    assert [x.peer_id for x in table.replacements(0)] == [contacts[4].peer_id, contacts[3].peer_id]


def test_no_replacement_cache() -> None:
    table, rng = make_table(k=1, replacement_size=0)
    a, b = (contact_in(table, 0, rng) for _ in range(2))
    table.add(a, 1.0)
    assert isinstance(table.add(b, 2.0), BucketFull)
    assert table.replacements(0) == []
    table.remove(a.peer_id)
    assert len(table) == 0


def test_readding_a_cached_contact_moves_it_to_newest() -> None:
    table, rng = make_table(k=1, replacement_size=5)
    a, b, c = (contact_in(table, 0, rng) for _ in range(3))
    table.add(a, 1.0)
    table.add(b, 2.0)
    table.add(c, 3.0)
    table.add(b, 4.0)
    assert [x.peer_id for x in table.replacements(0)] == [b.peer_id, c.peer_id]


def test_contacts_land_in_their_buckets() -> None:
    table, rng = make_table()
    for index in (0, 1, 4, 7):
        table.add(contact_in(table, index, rng), 0.0)
    assert table.bucket_sizes() == {0: 1, 1: 1, 4: 1, 7: 1}
    for contact in table:
        assert table.bucket_index_of(contact.key) in (0, 1, 4, 7)
    with pytest.raises(IndexError):
        table.bucket(256)


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        RoutingTable(random_peer_id(Random(1)), k=0)
    with pytest.raises(ValueError):
        RoutingTable(random_peer_id(Random(1)), replacement_size=-1)


# ---- closest() against brute force ----


def brute_closest(table: RoutingTable, key: int, count: int, exclude: set[PeerId]) -> list[Contact]:
    everyone = [c for c in table if c.peer_id not in exclude]
    return sorted(everyone, key=lambda c: c.key ^ key)[:count]


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    k=st.integers(1, 6),
    n=st.integers(0, 200),
    count=st.integers(0, 30),
    target_kind=st.sampled_from(["random", "bucket", "self", "member"]),
    n_exclude=st.integers(0, 5),
)
def test_closest_equals_brute_force(
    seed: int, k: int, n: int, count: int, target_kind: str, n_exclude: int
) -> None:
    rng = Random(seed)
    table = RoutingTable(random_peer_id(rng), k=k)
    for _ in range(n):
        table.add(Contact(random_peer_id(rng)), 0.0)
    # a few deep contacts so the buckets above the target's bucket are exercised
    for index in range(2, 9):
        table.add(contact_in(table, index, rng), 0.0)
    members = list(table)
    if target_kind == "random":
        key = rng.getrandbits(256)
    elif target_kind == "bucket":
        key = table.random_key_in_bucket(rng.randrange(0, 12), rng)
    elif target_kind == "self":
        key = table.self_key
    else:
        key = rng.choice(members).key
    exclude = {c.peer_id for c in rng.sample(members, min(n_exclude, len(members)))}
    got = table.closest(key, count, exclude=exclude)
    want = brute_closest(table, key, count, exclude)
    assert [c.peer_id for c in got] == [c.peer_id for c in want]


def test_closest_defaults_to_k() -> None:
    table, rng = make_table(k=5)
    for _ in range(100):
        table.add(Contact(random_peer_id(rng)), 0.0)
    assert len(table.closest(rng.getrandbits(256))) == 5
    assert RoutingTable(random_peer_id(rng)).closest(0) == []


# ---- IP diversity ----


def test_two_per_slash24_per_bucket_for_public_addresses() -> None:
    table, rng = make_table()
    results = [table.add(contact_in(table, 0, rng, tcp(f"8.8.8.{i}")), 0.0) for i in (1, 2, 3)]
    assert isinstance(results[0], Added) and isinstance(results[1], Added)
    assert isinstance(results[2], Rejected) and results[2].reason is RejectReason.IP_DIVERSITY
    # another /24 is fine
    assert isinstance(table.add(contact_in(table, 0, rng, tcp("8.8.9.1")), 0.0), Added)


def test_three_per_range_in_the_whole_table() -> None:
    table, rng = make_table()
    results = [table.add(contact_in(table, i, rng, tcp(f"9.9.9.{i + 1}")), 0.0) for i in range(4)]
    assert [type(r) for r in results] == [Added, Added, Added, Rejected]


def test_ipv6_groups_by_slash48() -> None:
    table, rng = make_table()
    results = [table.add(contact_in(table, 0, rng, tcp(f"2001:4860:1:{i}::1")), 0.0) for i in (1, 2, 3)]
    assert [type(r) for r in results] == [Added, Added, Rejected]
    assert isinstance(table.add(contact_in(table, 0, rng, tcp("2001:4860:2::1")), 0.0), Added)


def test_ipv4_mapped_ipv6_counts_as_ipv4() -> None:
    table, rng = make_table()
    table.add(contact_in(table, 0, rng, tcp("8.8.8.1")), 0.0)
    table.add(contact_in(table, 0, rng, tcp("8.8.8.2")), 0.0)
    result = table.add(contact_in(table, 0, rng, tcp("::ffff:8.8.8.3")), 0.0)
    assert isinstance(result, Rejected)


@pytest.mark.parametrize(
    "ip", ["127.0.0.1", "10.0.0.7", "192.168.1.9", "100.64.3.3", "::1", "fd00::5", "fe80::1"]
)
def test_local_ranges_are_exempt_by_default(ip: str) -> None:
    table, rng = make_table()
    for _ in range(30):
        assert isinstance(table.add(Contact(random_peer_id(rng), (tcp(ip),)), 0.0), (Added, BucketFull))
    assert len(table) > 3


def test_local_ranges_limited_when_same_range_not_allowed() -> None:
    table, rng = make_table(diversity=DiversityLimits(allow_same_range=False))
    results = [table.add(contact_in(table, 0, rng, tcp("127.0.0.1", 1000 + i)), 0.0) for i in range(3)]
    assert [type(r) for r in results] == [Added, Added, Rejected]


def test_no_diversity_limits() -> None:
    table, rng = make_table(diversity=None)
    for i in range(10):
        assert isinstance(table.add(contact_in(table, 0, rng, tcp(f"8.8.8.{i + 1}")), 0.0), Added)


def test_contacts_without_ip_addresses_are_not_limited() -> None:
    table, rng = make_table()
    for i in range(5):
        c = contact_in(table, 0, rng, ma(f"/dns4/n{i}.example.com/tcp/1"))
        assert isinstance(table.add(c, 0.0), Added)


def test_a_contact_counts_against_every_range_it_lists() -> None:
    table, rng = make_table()
    table.add(contact_in(table, 0, rng, tcp("8.8.8.1"), tcp("1.1.1.1")), 0.0)
    table.add(contact_in(table, 0, rng, tcp("1.1.1.2")), 0.0)
    assert isinstance(table.add(contact_in(table, 0, rng, tcp("1.1.1.3")), 0.0), Rejected)


def test_removal_frees_the_range() -> None:
    table, rng = make_table()
    a = contact_in(table, 0, rng, tcp("8.8.8.1"))
    table.add(a, 0.0)
    table.add(contact_in(table, 0, rng, tcp("8.8.8.2")), 0.0)
    c = contact_in(table, 0, rng, tcp("8.8.8.3"))
    assert isinstance(table.add(c, 0.0), Rejected)
    table.remove(a.peer_id)
    assert isinstance(table.add(c, 1.0), Added)


def test_update_to_a_full_range_keeps_the_old_addresses() -> None:
    table, rng = make_table()
    table.add(contact_in(table, 0, rng, tcp("8.8.8.1")), 0.0)
    table.add(contact_in(table, 0, rng, tcp("8.8.8.2")), 0.0)
    mover = contact_in(table, 0, rng, tcp("1.1.1.1"))
    table.add(mover, 0.0)
    result = table.add(Contact(mover.peer_id, (tcp("8.8.8.3"),)), 5.0)
    assert isinstance(result, Updated)
    assert result.contact.addrs == (tcp("1.1.1.1"),) and result.contact.last_seen == 5.0
    # moving within its own range is fine: it does not count against itself
    result = table.add(Contact(mover.peer_id, (tcp("1.1.1.9"),)), 6.0)
    assert isinstance(result, Updated) and result.contact.addrs == (tcp("1.1.1.9"),)


def test_promotion_skips_replacements_over_the_limit() -> None:
    table, rng = make_table(k=2)
    a = contact_in(table, 0, rng, tcp("8.8.8.1"))
    x = contact_in(table, 0, rng)
    table.add(a, 0.0)
    table.add(x, 1.0)
    ok = contact_in(table, 0, rng)
    risky = contact_in(table, 0, rng, tcp("8.8.8.2"))
    assert isinstance(table.add(ok, 2.0), BucketFull)
    assert isinstance(table.add(risky, 3.0), BucketFull)  # fits the limits while cached
    # elsewhere in the table 8.8.8.0/24 reaches its three table-wide slots
    table.add(contact_in(table, 3, rng, tcp("8.8.8.3")), 4.0)
    table.add(contact_in(table, 4, rng, tcp("8.8.8.4")), 4.0)
    table.remove(x.peer_id)
    assert ok.peer_id in table and risky.peer_id not in table
    assert [c.peer_id for c in table.replacements(0)] == [risky.peer_id]


def test_replace_with_a_refused_contact_promotes_a_replacement() -> None:
    table, rng = make_table(k=2)
    a = contact_in(table, 0, rng, tcp("8.8.8.1"))
    b = contact_in(table, 0, rng, tcp("8.8.8.2"))
    table.add(a, 0.0)
    table.add(b, 1.0)
    cached = contact_in(table, 0, rng)
    table.add(cached, 2.0)
    refused = contact_in(table, 0, rng, tcp("8.8.8.4"), tcp("9.9.9.9"))
    # 9.9.9.0/24 fills its three table-wide slots, so `refused` is refused and a's slot
    # goes to the cached contact
    table.add(contact_in(table, 3, rng, tcp("9.9.9.1")), 2.0)
    table.add(contact_in(table, 4, rng, tcp("9.9.9.2")), 2.0)
    table.add(contact_in(table, 5, rng, tcp("9.9.9.3")), 2.0)
    result = table.replace(a.peer_id, refused, 3.0)
    assert isinstance(result, Rejected)
    assert cached.peer_id in table and a.peer_id not in table


# ---- refresh ----


def test_stale_buckets_with_injected_time() -> None:
    table, rng = make_table(now=0.0)
    assert table.stale_buckets(10_000.0, 3600.0) == []  # empty: nobody to ask
    table.add(contact_in(table, 0, rng), 100.0)
    table.add(contact_in(table, 3, rng), 2000.0)
    # buckets 0..3 are candidates; 1 and 2 were never active since creation at 0
    assert table.stale_buckets(3599.0, 3600.0) == []
    assert table.stale_buckets(3600.0, 3600.0) == [1, 2]
    assert table.stale_buckets(3700.0, 3600.0) == [0, 1, 2]
    assert table.stale_buckets(5600.0, 3600.0) == [0, 1, 2, 3]
    table.mark_refreshed(1, 5600.0)
    table.note_lookup(table.random_key_in_bucket(2, rng), 5600.0)
    assert table.stale_buckets(5600.0, 3600.0) == [0, 3]
    table.touch(table.bucket(0)[0].peer_id, 5600.0)
    assert table.stale_buckets(5600.0, 3600.0) == [3]


def test_stale_buckets_capped() -> None:
    table, rng = make_table()
    table.add(contact_in(table, 6, rng), 0.0)
    assert table.stale_buckets(100.0, 10.0, max_index=3) == [0, 1, 2, 3]


def test_mark_refreshed_checks_index() -> None:
    table, _ = make_table()
    with pytest.raises(ConfigError):
        table.mark_refreshed(256, 0.0)
    table.note_lookup(table.self_key, 1.0)  # our own key: no bucket, nothing to do


def test_refresh_targets_land_in_the_bucket() -> None:
    table, rng = make_table()
    for index in (0, 3, 7):
        assert table.bucket_index_of(table.random_key_in_bucket(index, rng)) == index
        target = table.random_preimage_in_bucket(index, rng)
        assert table.bucket_index_of(keyspace.kad_key(target)) == index
        PeerId.from_bytes(target)  # shaped like a peer id


# ---- persistence ----


def filled_table(seed: int = 3) -> RoutingTable:
    table, rng = make_table(seed, k=3)
    addrs = [tcp("127.0.0.1", 4001), tcp("2001:4860::1", 5), ma("/dns4/example.com/tcp/443/wss")]
    for i in range(40):
        table.add(Contact(random_peer_id(rng), (addrs[i % 3],)), float(i))
    return table


#: A table's clock (trio's, in a node) at 40.0 while the wall clock reads WALL.
WALL = 1_800_000_000.0


def saved(table: RoutingTable, now: float = 40.0, wall_now: float = WALL) -> dict[str, object]:
    return table.to_json(now=now, wall_now=wall_now)


def test_json_round_trip_keeps_ages_across_clocks() -> None:
    table = filled_table()  # last_seen between 0.0 and 39.0 on the table's clock
    text = json.dumps(saved(table))
    data = json.loads(text)
    assert data["version"] == 2 and data["self"] == str(table.self_id) and data["saved_at"] == WALL
    # Saved as unix times: a contact seen at t when the clock read 40.0 was seen 40 - t s before WALL.
    newest = max(c.last_seen for c in table)
    assert max(c["last_seen"] for c in data["contacts"]) == WALL - (40.0 - newest)
    # Another process: its clock reads 5.0 when the wall clock reads WALL + 100 (100 s later).
    loaded = RoutingTable.from_json(data, now=5.0, wall_now=WALL + 100.0, k=3)
    assert loaded.self_id == table.self_id
    assert [c.peer_id for c in loaded] == [c.peer_id for c in table]
    ages = {c.peer_id: 40.0 - c.last_seen + 100.0 for c in table}
    assert all(math.isclose(c.last_seen, 5.0 - ages[c.peer_id]) for c in loaded)
    assert [c.addrs for c in loaded] == [c.addrs for c in table]
    # Saved again from the new process, the wall times are the same.
    again = saved(loaded, now=5.0, wall_now=WALL + 100.0)
    assert [c["last_seen"] for c in again["contacts"]] == pytest.approx([c["last_seen"] for c in data["contacts"]])  # type: ignore[index, union-attr]
    # Refresh clocks start at `now`, whatever the contacts' ages.
    assert loaded.stale_buckets(5.0 + 599.0, 600.0) == []


def test_json_without_wall_now_stamps_every_contact_now() -> None:
    table = filled_table()
    text = json.dumps(saved(table))
    loaded = RoutingTable.from_json(text, now=1000.0, k=3, self_id=table.self_id)
    assert [c.peer_id for c in loaded] == [c.peer_id for c in table]
    assert all(c.last_seen == 1000.0 for c in loaded)


def test_json_saved_in_the_future_counts_as_now() -> None:
    table = filled_table()
    # The wall clock was set back by a day since the file was saved.
    loaded = RoutingTable.from_json(saved(table), now=7.0, wall_now=WALL - 86400.0, k=3)
    assert all(c.last_seen == 7.0 for c in loaded)


def test_json_version_1_still_loads_with_contacts_stamped_now() -> None:
    table = filled_table()
    # What older physarum wrote: last_seen on the saving process's monotonic clock, no saved_at.
    v1 = {
        "version": 1,
        "self": str(table.self_id),
        "contacts": [
            {"peer_id": str(c.peer_id), "addrs": [str(a) for a in c.addrs], "last_seen": c.last_seen}
            for c in table
        ],
    }
    loaded = RoutingTable.from_json(json.dumps(v1), now=3.0, wall_now=WALL, k=3, self_id=table.self_id)
    # Saved order kept (oldest first), times meaningless here: every contact stamped now.
    assert [c.peer_id for c in loaded] == [c.peer_id for c in table]
    assert all(c.last_seen == 3.0 for c in loaded)


def test_json_overflow_goes_to_replacements() -> None:
    table = filled_table()
    loaded = RoutingTable.from_json(saved(table), now=0.0, k=1, replacement_size=50)
    assert loaded.bucket_sizes() == {i: 1 for i in table.bucket_sizes()}
    assert sum(len(loaded.replacements(i)) for i in range(256)) == len(table) - len(loaded)


def _valid() -> dict[str, object]:
    return saved(filled_table())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: "not json at all {",
        lambda d: b"\xff\xfe",
        lambda d: "[" * 100_000,
        lambda d: [],
        lambda d: {**d, "version": 3},
        lambda d: {**d, "version": 0},
        lambda d: {**d, "version": True},
        lambda d: {**d, "version": 2.0000001},
        lambda d: {k: v for k, v in d.items() if k != "version"},
        lambda d: {**d, "self": 5},
        lambda d: {**d, "self": "not-a-peer-id"},
        lambda d: {**d, "contacts": {}},
        lambda d: {**d, "contacts": [5]},
        lambda d: {**d, "contacts": [{"addrs": []}]},
        lambda d: {**d, "contacts": [{"peer_id": "zzz"}]},
        lambda d: {**d, "contacts": [{**d["contacts"][0], "addrs": "x"}]},
        lambda d: {**d, "contacts": [{**d["contacts"][0], "addrs": [7]}]},
        lambda d: {**d, "contacts": [{**d["contacts"][0], "addrs": ["/ip4/300.1.1.1/tcp/1"]}]},
        lambda d: {**d, "contacts": [{**d["contacts"][0], "last_seen": "yesterday"}]},
        lambda d: {**d, "contacts": [{**d["contacts"][0], "last_seen": math.nan}]},
        lambda d: {**d, "contacts": [{**d["contacts"][0], "last_seen": True}]},
    ],
)
def test_malformed_json_raises_table_format_error(mutate: object) -> None:
    data = mutate(_valid())  # type: ignore[operator]
    with pytest.raises(TableFormatError) as info:
        RoutingTable.from_json(data, now=0.0)
    assert isinstance(info.value, DecodeError) and info.value.reason


def test_json_for_another_identity_is_refused() -> None:
    with pytest.raises(TableFormatError, match="saved by"):
        RoutingTable.from_json(_valid(), now=0.0, self_id=random_peer_id(Random(99)))


def test_json_drops_our_own_id() -> None:
    data = _valid()
    data["contacts"].append({"peer_id": data["self"], "addrs": [], "last_seen": 1.0})  # type: ignore[attr-defined]
    loaded = RoutingTable.from_json(data, now=0.0, k=3)
    assert loaded.self_id not in loaded


# ---- bounds and seniority ----


def test_contacts_keep_at_most_max_addrs() -> None:
    table, rng = make_table(max_addrs=4)
    addrs = tuple(tcp(f"10.0.0.{i}") for i in range(1, 50))
    peer = random_peer_id(rng)
    result = table.add(Contact(peer, addrs, 0.0), 1.0)
    assert isinstance(result, Added) and result.contact.addrs == addrs[:4]
    again = table.add(Contact(peer, addrs[10:], 0.0), 2.0)
    assert isinstance(again, Updated) and again.contact.addrs == addrs[10:14]
    with pytest.raises(ValueError):
        RoutingTable(peer, max_addrs=0)


def test_since_is_when_the_peer_entered_and_survives_updates_and_saves() -> None:
    table, rng = make_table()
    peer = random_peer_id(rng)
    assert isinstance(table.add(Contact(peer, (tcp("10.0.0.1"),), 0.0), 5.0), Added)
    table.touch(peer, 9.0)
    table.add(Contact(peer, (tcp("10.0.0.2"),), 0.0), 12.0)
    contact = table.get(peer)
    assert contact is not None and contact.since == 5.0 and contact.last_seen == 12.0
    # Saved and loaded (table clock 20 = wall 1000, then 50 = wall 2000): it kept its seniority.
    data = table.to_json(now=20.0, wall_now=1000.0)
    assert data["contacts"][0]["since"] == 985.0
    loaded = RoutingTable.from_json(data, now=50.0, wall_now=2000.0)
    got = loaded.get(peer)
    assert got is not None and got.since == 50.0 - 1015.0 and got.last_seen == 50.0 - 1008.0
    bad = {**data, "contacts": [{**data["contacts"][0], "since": "long ago"}]}
    with pytest.raises(TableFormatError):
        RoutingTable.from_json(bad, now=0.0)
