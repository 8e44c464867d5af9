"""The service registry: ServiceInfo, signed entries, the SQLite store's ownership and order rules,
and the wire (RegistryService <-> RegistryClient over memory streams, two or three registry nodes)."""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from physarum.errors import ConfigError, DialError
from physarum.overlay.envelope import EnvelopeError, EnvelopeFault, seal, seal_peer_record
from physarum.overlay.identity import KeyPair, PeerId
from physarum.overlay.streamio import BufferedStream
from physarum.overlay.varint import encode as varint_encode
from physarum.services import registry
from physarum.services.discovery import service_key
from physarum.services.registry import (
    ENTRY_DOMAIN,
    ENTRY_TYPE,
    MAX_ENTRY_BYTES,
    NAME_RE,
    PROTOCOL_ID,
    REGISTRY_NAME,
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
    open_entry,
    seal_entry,
)
from physarum.services.wire import MAX_MESSAGE, frame, read_message

ALICE, BOB, CAROL = (KeyPair.generate() for _ in range(3))


def hello(name: str = "hello", **kwargs: Any) -> ServiceInfo:
    return ServiceInfo(name, ("physarum", "hello"), **kwargs)


def entry(key: KeyPair, seq: int, name: str = "hello", *, deleted: bool = False) -> Entry:
    return seal_entry(key, name, None if deleted else hello(name), seq)


def raw_entry(payload: object, key: KeyPair = ALICE) -> bytes:
    """An envelope of the right domain and type around any payload (a JSON value, or bytes as they are)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return seal(key, ENTRY_DOMAIN, ENTRY_TYPE, data)


class FakeTime:
    """Stands in for the registry module's ``time``: a wall clock the test moves."""

    def __init__(self, now: float = 1.7e9) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return int(self.now * 1e9)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(registry, "time", fake)
    return fake


@pytest.fixture
def store() -> Iterator[RegistryStore]:
    s = RegistryStore()
    yield s
    s.close()


# -- ServiceInfo -----------------------------------------------------------------------------------


def test_service_info_fields_and_json_form() -> None:
    full = ServiceInfo("web.v2_x-1", ("srv", "--port", "$SERVICE_PORT"), "busybox:latest", 5, 50.5, 0.5, 64)
    assert full.to_dict() == {
        "name": "web.v2_x-1", "command": ["srv", "--port", "$SERVICE_PORT"], "image": "busybox:latest",
        "soft_rtt_ms": 5, "hard_rtt_ms": 50.5, "cpu": 0.5, "memory_mb": 64,
    }
    assert ServiceInfo.from_dict(full.to_dict()) == full
    # absent fields are left out, and either runtime alone is enough
    assert ServiceInfo("img", image="busybox").to_dict() == {"name": "img", "image": "busybox"}
    assert hello().to_dict() == {"name": "hello", "command": ["physarum", "hello"]}
    # the edges of what is allowed
    assert ServiceInfo("a" * 63, ("x",), soft_rtt_ms=5, hard_rtt_ms=5).name == "a" * 63
    assert ServiceInfo("x", ("y" * 1024,) * 64).command[0] == "y" * 1024


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "bad service name ''"),
        ({"name": "-x"}, "bad service name"),
        ({"name": ".x"}, "bad service name"),
        ({"name": "a" * 64}, "bad service name"),
        ({"name": "a/b"}, "bad service name"),
        ({"name": "a b"}, "bad service name"),
        ({"name": "hello\n"}, "bad service name"),
        ({"name": "caf\u00e9"}, "bad service name"),
        ({"name": 5}, "bad service name 5"),
        ({"command": ()}, "give a command, an image, or both"),
        ({"command": (), "image": ""}, "give a command, an image, or both"),
        ({"command": ("",)}, "command must be"),
        ({"command": ("a\0b",)}, "command must be"),
        ({"command": ("x" * 1025,)}, "command must be"),
        ({"command": ("x",) * 65}, "command must be"),
        ({"command": (5,)}, "command must be"),
        ({"image": "bad image"}, "bad image"),
        ({"image": "x" * 256}, "bad image"),
        ({"command": (), "image": "a\tb"}, "bad image"),
        ({"soft_rtt_ms": 0}, "soft_rtt_ms must be a positive number, not 0"),
        ({"soft_rtt_ms": -1.5}, "soft_rtt_ms must be a positive number"),
        ({"hard_rtt_ms": math.nan}, "hard_rtt_ms must be a positive number, not nan"),
        ({"hard_rtt_ms": math.inf}, "hard_rtt_ms must be a positive number"),
        ({"cpu": True}, "cpu must be a positive number, not True"),
        ({"cpu": "1"}, "cpu must be a positive number"),
        ({"memory_mb": 0}, "memory_mb must be a positive number"),
        ({"memory_mb": 1.5}, "memory_mb must be a whole number"),
        ({"memory_mb": True}, "memory_mb must be a positive number"),
        ({"soft_rtt_ms": 10, "hard_rtt_ms": 5}, r"soft_rtt_ms \(10\) is over hard_rtt_ms \(5\)"),
    ],
)
def test_service_info_refuses_bad_fields(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"name": "svc", "command": ("run",), **kwargs}
    with pytest.raises(ConfigError, match=message) as info:
        ServiceInfo(**fields)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be a JSON object"),
        (None, "must be a JSON object"),
        ({"name": "x", "command": ["a"], "port": 80}, r"unknown service field\(s\): port"),
        ({"name": "x", "command": ["a"], "ContentHash": "h", "DockerHash": "d"}, "ContentHash, DockerHash"),
        ({"command": ["a"]}, "name must be a string"),
        ({"name": 5, "command": ["a"]}, "name must be a string"),
        ({"name": "x", "command": "physarum hello"}, "command must be a list"),
        ({"name": "x", "command": [1, 2]}, "command must be"),
        ({"name": "x", "image": 5}, "image must be a string"),
        ({"name": "x"}, "give a command, an image, or both"),
        ({"name": "x", "image": "i", "soft_rtt_ms": "5"}, "soft_rtt_ms must be a number"),
        ({"name": "x", "image": "i", "soft_rtt_ms": True}, "soft_rtt_ms must be a number"),
        ({"name": "x", "image": "i", "soft_rtt_ms": float("nan")}, "soft_rtt_ms must be a positive number"),
        ({"name": "x", "image": "i", "cpu": -1}, "cpu must be a positive number"),
        ({"name": "x", "image": "i", "memory_mb": 512.0}, "memory_mb must be a whole number"),
        ({"name": "x", "image": "i", "memory_mb": [1]}, "memory_mb must be a whole number"),
        ({"name": "x", "image": "i", "soft_rtt_ms": 9, "hard_rtt_ms": 3}, "is over hard_rtt_ms"),
    ],
)
def test_service_info_from_dict_refuses(data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServiceInfo.from_dict(data)


_numbers = st.one_of(
    st.none(),
    st.integers(min_value=1, max_value=10**9),
    st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False),
)
_arg = st.text(st.characters(exclude_characters="\0", codec="utf-8"), min_size=1, max_size=20)


@st.composite
def service_infos(draw: st.DrawFn) -> ServiceInfo:
    name = draw(st.from_regex(NAME_RE, fullmatch=True))
    command = tuple(draw(st.lists(_arg, max_size=5)))
    image = draw(st.none() | st.from_regex(r"[a-z0-9./:_@-]{1,40}", fullmatch=True))
    if not command and image is None:
        image = "busybox"
    soft, hard = draw(_numbers), draw(_numbers)
    if soft is not None and hard is not None and soft > hard:
        soft, hard = hard, soft
    memory = draw(st.none() | st.integers(min_value=1, max_value=2**40))
    return ServiceInfo(name, command, image, soft, hard, draw(_numbers), memory)


@given(service_infos())
def test_service_info_json_round_trip(info: ServiceInfo) -> None:
    text = json.dumps(info.to_dict())
    assert ServiceInfo.from_dict(json.loads(text)) == info


# -- signed entries -------------------------------------------------------------------------------


def test_entry_round_trip() -> None:
    e = seal_entry(ALICE, "hello", hello(soft_rtt_ms=5), 42)
    opened = open_entry(e.envelope)
    assert opened == e
    assert (opened.name, opened.seq, opened.publisher, opened.deleted) == ("hello", 42, ALICE.peer_id, False)
    assert opened.info == hello(soft_rtt_ms=5)
    assert opened.to_dict() == {
        "name": "hello", "seq": 42, "publisher": str(ALICE.peer_id), "deleted": False,
        "service": {"name": "hello", "command": ["physarum", "hello"], "soft_rtt_ms": 5},
    }
    tomb = open_entry(seal_entry(BOB, "hello", None, 43).envelope)
    assert tomb.deleted and tomb.info is None and tomb.publisher == BOB.peer_id
    assert tomb.to_dict()["service"] is None and tomb.to_dict()["deleted"] is True


def test_entry_seq_defaults_to_the_clock_in_ns(clock: FakeTime) -> None:
    assert seal_entry(ALICE, "hello", hello()).seq == clock.time_ns()
    clock.now += 1
    assert open_entry(seal_entry(ALICE, "hello", hello()).envelope).seq == clock.time_ns()


def test_seal_entry_refuses_what_no_reader_would_take() -> None:
    with pytest.raises(ConfigError, match="differs from the service's 'hello'"):
        seal_entry(ALICE, "other", hello(), 1)
    with pytest.raises(ConfigError, match="bad service name"):
        seal_entry(ALICE, "a b", None, 1)
    for seq in (0, -1, 2**63, True):
        with pytest.raises(ConfigError, match="seq"):
            seal_entry(ALICE, "hello", hello(), seq)


def test_tampered_entries_are_refused() -> None:
    good = entry(ALICE, 5).envelope
    # the payload changed after signing (same length: still a well-formed envelope)
    assert good.count(b'"seq":5') == 1
    with pytest.raises(MalformedEntryError, match="signature"):
        open_entry(good.replace(b'"seq":5', b'"seq":6'))
    # the signature (the envelope's last field) changed
    with pytest.raises(MalformedEntryError, match="signature") as info:
        open_entry(good[:-1] + bytes([good[-1] ^ 1]))
    assert isinstance(info.value.__cause__, EnvelopeError)
    assert info.value.__cause__.fault is EnvelopeFault.BAD_SIGNATURE
    # cut short, empty, not an envelope at all
    for data in (good[:-10], good[: len(good) // 2], b"", b"\xff" * 40, b'{"name":"hello"}'):
        with pytest.raises(MalformedEntryError):
            open_entry(data)


def test_entries_signed_for_another_purpose_are_refused() -> None:
    payload = json.dumps({"name": "hello", "seq": 1, "service": hello().to_dict()}).encode()
    assert open_entry(seal(ALICE, ENTRY_DOMAIN, ENTRY_TYPE, payload)).name == "hello"
    with pytest.raises(MalformedEntryError, match="signature"):
        open_entry(seal(ALICE, b"libp2p-peer-record", ENTRY_TYPE, payload))
    with pytest.raises(MalformedEntryError, match="payload type"):
        open_entry(seal(ALICE, ENTRY_DOMAIN, b"/physarum/service-entry/2", payload))
    with pytest.raises(MalformedEntryError):
        open_entry(seal_peer_record(ALICE, 1, []))


def test_oversize_entries_are_refused_before_decoding() -> None:
    big = ServiceInfo("hello", ("x" * 1024,) * 15)
    ok = seal_entry(ALICE, "hello", big, 1)
    assert len(ok.envelope) <= MAX_ENTRY_BYTES
    assert open_entry(ok.envelope) == ok
    data = raw_entry({"name": "hello", "seq": 1, "service": hello().to_dict(), "pad": "x" * MAX_ENTRY_BYTES})
    with pytest.raises(MalformedEntryError, match="exceeds") as info:
        open_entry(data)
    assert isinstance(info.value.__cause__, EnvelopeError)
    assert info.value.__cause__.fault is EnvelopeFault.TOO_LARGE


SERVICE = {"name": "hello", "command": ["physarum", "hello"]}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff\xfe", "entry"),
        (b"{", "entry"),
        (b"", "entry"),
        (b"[" * 5000 + b"]" * 5000, "entry"),  # nesting deeper than the parser's recursion limit
        ([], "exactly name, seq and service"),
        ("hello", "exactly name, seq and service"),
        ({"name": "hello", "seq": 1}, "exactly name, seq and service"),
        ({"name": "hello", "seq": 1, "service": SERVICE, "owner": "me"}, "exactly name, seq and service"),
        ({"name": "a b", "seq": 1, "service": None}, "bad service name"),
        ({"name": 5, "seq": 1, "service": None}, "bad service name"),
        ({"name": "hello", "seq": 0, "service": SERVICE}, "bad seq 0"),
        ({"name": "hello", "seq": -1, "service": SERVICE}, "bad seq -1"),
        ({"name": "hello", "seq": True, "service": SERVICE}, "bad seq True"),
        ({"name": "hello", "seq": 2**63, "service": SERVICE}, "bad seq"),
        ({"name": "hello", "seq": 10**400, "service": SERVICE}, "entry"),
        ({"name": "hello", "seq": 1.5, "service": SERVICE}, "bad seq 1.5"),
        ({"name": "hello", "seq": "1", "service": SERVICE}, "bad seq '1'"),
        ({"name": "hello", "seq": 1, "service": "physarum hello"}, "must be a JSON object"),
        ({"name": "hello", "seq": 1, "service": {"name": "hello"}}, "give a command, an image, or both"),
        ({"name": "hello", "seq": 1, "service": {**SERVICE, "x": 1}}, "unknown service field"),
        ({"name": "other", "seq": 1, "service": SERVICE}, "entry name 'other' differs from the service's 'hello'"),
    ],
)
def test_entries_with_bad_contents_are_refused(payload: object, message: str) -> None:
    with pytest.raises(MalformedEntryError, match=message) as info:
        open_entry(raw_entry(payload))
    assert info.value.code == "malformed"


def test_largest_seq_is_taken() -> None:
    e = open_entry(raw_entry({"name": "hello", "seq": 2**63 - 1, "service": SERVICE}))
    assert e.seq == 2**63 - 1 and e.info == hello()


# -- the store ------------------------------------------------------------------------------------


def test_first_publisher_owns_and_replaces_with_newer_seq(store: RegistryStore) -> None:
    first = entry(ALICE, 10)
    assert store.apply(first.envelope) is True
    assert store.get("hello") == first and store.live() == [first] and store.get("other") is None
    assert store.apply(first.envelope) is False  # the same envelope again: nothing to do
    newer = seal_entry(ALICE, "hello", hello(soft_rtt_ms=3), 11)
    assert store.apply(newer.envelope) is True
    assert store.get("hello") == newer
    for seq in (11, 10, 1):
        with pytest.raises(StaleEntryError, match=f"seq {seq} is not newer than the stored 11"):
            store.apply(entry(ALICE, seq).envelope)
    assert store.get("hello") == newer


def test_another_key_cannot_replace_or_delete(store: RegistryStore) -> None:
    store.apply(entry(ALICE, 10).envelope)
    for attempt in (entry(BOB, 11), entry(BOB, 10**18), entry(BOB, 12, deleted=True), entry(BOB, 5)):
        with pytest.raises(NotOwnerError, match=f"hello is owned by {ALICE.peer_id}") as info:
            store.apply(attempt.envelope)
        assert info.value.code == "not-owner"
    assert store.get("hello") == entry(ALICE, 10)
    # other names are free for anyone
    assert store.apply(entry(BOB, 1, "bobs").envelope)
    assert [e.name for e in store.live()] == ["bobs", "hello"]


def test_malformed_entries_are_never_stored(store: RegistryStore) -> None:
    good = entry(ALICE, 10).envelope
    for data in (good[:-1] + bytes([good[-1] ^ 1]), b"junk", raw_entry({"name": "hello", "seq": 0, "service": None})):
        with pytest.raises(MalformedEntryError):
            store.apply(data)
    assert store.entries() == []


def test_admins_may_replace_and_delete_and_become_owners() -> None:
    store = RegistryStore(admins=[CAROL.peer_id])
    try:
        store.apply(entry(ALICE, 10).envelope)
        with pytest.raises(StaleEntryError):  # an admin too must be newer
            store.apply(entry(CAROL, 10).envelope)
        assert store.apply(entry(CAROL, 11).envelope)
        got = store.get("hello")
        assert got is not None and got.publisher == CAROL.peer_id
        with pytest.raises(NotOwnerError, match=str(CAROL.peer_id)):  # the admin owns it now
            store.apply(entry(ALICE, 12).envelope)
        store.apply(entry(ALICE, 1, "alices").envelope)
        assert store.apply(entry(CAROL, 2, "alices", deleted=True).envelope)
        assert store.live() == [entry(CAROL, 11)]
    finally:
        store.close()


def test_delete_is_a_tombstone_replication_cannot_undo(store: RegistryStore) -> None:
    old = entry(ALICE, 10)
    store.apply(old.envelope)
    tomb = entry(ALICE, 20, deleted=True)
    assert store.apply(tomb.envelope)
    got = store.get("hello")
    assert got == tomb and got is not None and got.deleted
    assert store.live() == [] and store.entries() == [tomb]
    # an older copy arriving from another node does not bring it back
    with pytest.raises(StaleEntryError):
        store.apply(old.envelope)
    with pytest.raises(NotOwnerError):  # nor does another key, while the tombstone lasts
        store.apply(entry(BOB, 30).envelope)
    assert store.live() == []
    # the owner may publish it again
    assert store.apply(entry(ALICE, 21).envelope)
    assert store.live() == [entry(ALICE, 21)]


def test_expired_tombstones_free_the_name(clock: FakeTime) -> None:
    store = RegistryStore(tombstone_ttl=60.0)
    try:
        store.apply(entry(ALICE, 10).envelope)
        store.apply(entry(ALICE, 11, deleted=True).envelope)
        store.apply(entry(ALICE, 12, "kept").envelope)
        clock.now += 60.0
        with pytest.raises(NotOwnerError):  # not yet: only once older than the ttl
            store.apply(entry(BOB, 1).envelope)
        assert store.sweep() == 0
        clock.now += 0.5
        # live entries never expire; the tombstone has, so anyone may take the name, at any seq
        with pytest.raises(NotOwnerError):
            store.apply(entry(BOB, 13, "kept").envelope)
        assert store.apply(entry(BOB, 1).envelope)
        assert store.get("hello") == entry(BOB, 1)
        with pytest.raises(NotOwnerError):
            store.apply(entry(ALICE, 50).envelope)
        # sweep forgets expired tombstones
        store.apply(entry(BOB, 2, deleted=True).envelope)
        clock.now += 61.0
        assert [e.name for e in store.entries()] == ["hello", "kept"]
        assert store.sweep() == 1
        assert store.get("hello") is None and [e.name for e in store.entries()] == ["kept"]
    finally:
        store.close()


def test_entries_survive_reopening_the_database(tmp_path: Path, clock: FakeTime) -> None:
    path = str(tmp_path / "registry.db")
    store = RegistryStore(path, tombstone_ttl=100.0)
    written = [entry(ALICE, 10), entry(BOB, 5, "web"), entry(ALICE, 7, "gone")]
    for e in written:
        store.apply(e.envelope)
    store.apply(entry(ALICE, 8, "gone", deleted=True).envelope)
    before = store.entries()
    store.close()

    clock.now += 50
    again = RegistryStore(path, tombstone_ttl=100.0)
    try:
        assert again.entries() == before
        assert [e.name for e in again.live()] == ["hello", "web"]
        # the rules hold across the restart: ownership, order, and the tombstone's age
        with pytest.raises(NotOwnerError):
            again.apply(entry(BOB, 11).envelope)
        with pytest.raises(StaleEntryError):
            again.apply(entry(ALICE, 9).envelope)
        assert again.apply(entry(ALICE, 10).envelope) is False
        with pytest.raises(NotOwnerError):
            again.apply(entry(BOB, 9, "gone").envelope)
        clock.now += 51  # 101 s after the delete was stored, not after the reopen
        assert again.apply(entry(BOB, 9, "gone").envelope)
    finally:
        again.close()


def test_corrupt_rows_are_dropped_at_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "registry.db"
    store = RegistryStore(str(path))
    good = [entry(ALICE, 10, name) for name in ("a", "c", "e", "g")]
    for e in good:
        store.apply(e.envelope)
    store.close()
    tampered = entry(ALICE, 10, "d").envelope
    with sqlite3.connect(path) as db:
        rows = [
            ("b", 1, "x", 0, 0.0, b"garbage"),
            ("d", 10, str(ALICE.peer_id), 0, 0.0, tampered[:-1] + bytes([tampered[-1] ^ 1])),
            ("f", 1, "x", 0, 0.0, raw_entry({"name": "f", "seq": 0, "service": None})),
            ("h", 1, "x", 0, 0.0, "text, not a blob"),
        ]
        db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.close()

    with caplog.at_level(logging.WARNING, logger="physarum.services.registry"):
        again = RegistryStore(str(path))
    try:
        assert again.entries() == good
        dropped = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert len(dropped) == 4
        for name, message in zip("bdfh", dropped, strict=True):
            assert message.startswith(f"registry database {path}: dropping entry '{name}': entry:"), message
    finally:
        again.close()
    with sqlite3.connect(path) as db:
        assert sorted(n for (n,) in db.execute("SELECT name FROM entries")) == ["a", "c", "e", "g"]
    db.close()


def test_unusable_database_paths_are_config_errors(tmp_path: Path) -> None:
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_bytes(b"this is not a SQLite database, but it is long enough to look for a header" * 20)
    for path in (tmp_path, tmp_path / "missing" / "registry.db", not_a_db):
        with pytest.raises(ConfigError, match=f"cannot open the registry database {re.escape(str(path))}: "):
            RegistryStore(str(path))


# -- the wire -------------------------------------------------------------------------------------

Handler = Callable[[trio.abc.HalfCloseableStream], Awaitable[None]]


class FakeRegistryNetwork:
    """Registry nodes reached over memory streams; a node is a RegistryService, a handler of our
    own (a misbehaving node), or None (cannot be reached)."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.nodes: dict[PeerId, RegistryService | Handler | None] = {}
        self.lookups = 0
        self.opened: list[PeerId] = []

    def add(self, node: RegistryService | Handler | None = None) -> tuple[PeerId, RegistryService]:
        service = node if isinstance(node, RegistryService) else RegistryService(RegistryStore(), None)
        peer = KeyPair.generate().peer_id
        self.nodes[peer] = service if node is None or isinstance(node, RegistryService) else node
        return peer, service

    def unreachable(self) -> PeerId:
        peer = KeyPair.generate().peer_id
        self.nodes[peer] = None
        return peer

    async def find_instances(self, key: bytes, *, timeout: float) -> list[PeerId]:
        assert key == service_key(REGISTRY_NAME)
        self.lookups += 1
        return list(self.nodes)

    async def open_stream(self, peer: PeerId, protocol: str, *, timeout: float) -> trio.abc.HalfCloseableStream:
        assert protocol == PROTOCOL_ID
        self.opened.append(peer)
        node = self.nodes[peer]
        if node is None:
            raise DialError(peer, {"x": ConnectionRefusedError(111, "connection refused")})
        handler = node.handle_stream if isinstance(node, RegistryService) else node
        a, b = trio.testing.memory_stream_pair()

        async def serve() -> None:
            try:
                await handler(b)
            finally:  # as the host does after a handler returns
                await b.aclose()

        self.nursery.start_soon(serve)
        return a


def stores(*services: RegistryService) -> list[list[Entry]]:
    return [s.store.entries() for s in services]


async def test_put_get_list_delete_across_three_nodes() -> None:
    async with trio.open_nursery() as nursery:
        net = FakeRegistryNetwork(nursery)
        nodes = [net.add()[1] for _ in range(3)]
        client = RegistryClient(net)
        written = await client.publish(ALICE, hello(soft_rtt_ms=5))
        assert written.publisher == ALICE.peer_id and written.info == hello(soft_rtt_ms=5)
        assert stores(*nodes) == [[written]] * 3  # written to every node
        assert await client.get("hello") == written
        web = await client.publish(BOB, ServiceInfo("web", image="busybox"))
        assert await client.list() == [written, web]

        gone = await client.delete(ALICE, "hello")
        assert gone.deleted and gone.publisher == ALICE.peer_id and gone.seq > written.seq
        assert stores(*nodes) == [[gone, web]] * 3  # tombstones are kept (and replicated)
        with pytest.raises(UnknownServiceError, match="no service named 'hello'"):
            await client.get("hello")
        assert await client.list() == [web]
        with pytest.raises(UnknownServiceError):
            await client.delete(ALICE, "hello")
        assert net.lookups == 1  # the nodes found were cached
        assert [s.requests for s in nodes] == [9] * 3


async def test_get_and_list_take_the_newest_entry_across_nodes() -> None:
    async with trio.open_nursery() as nursery:
        net = FakeRegistryNetwork(nursery)
        (_, a), (_, b), (_, c) = net.add(), net.add(), net.add()
        a.store.apply(entry(ALICE, 10).envelope)
        b.store.apply(entry(ALICE, 30).envelope)
        c.store.apply(entry(ALICE, 20).envelope)
        a.store.apply(entry(BOB, 1, "only-on-a").envelope)
        c.store.apply(entry(BOB, 1, "deleted-on-c").envelope)
        b.store.apply(entry(BOB, 1, "deleted-on-c").envelope)
        c.store.apply(entry(BOB, 2, "deleted-on-c", deleted=True).envelope)
        client = RegistryClient(net)
        assert await client.get("hello") == entry(ALICE, 30)
        assert await client.get("only-on-a") == entry(BOB, 1, "only-on-a")
        with pytest.raises(UnknownServiceError):  # the newest is a tombstone
            await client.get("deleted-on-c")
        assert await client.list() == [entry(ALICE, 30), entry(BOB, 1, "only-on-a")]


async def test_refusals_come_back_as_their_exceptions() -> None:
    async with trio.open_nursery() as nursery:
        net = FakeRegistryNetwork(nursery)
        nodes = [net.add()[1] for _ in range(2)]
        client = RegistryClient(net)
        mine = await client.publish(ALICE, hello())
        with pytest.raises(NotOwnerError, match=f"hello is owned by {ALICE.peer_id}"):
            await client.publish(BOB, hello(soft_rtt_ms=1))
        with pytest.raises(NotOwnerError):
            await client.delete(BOB, "hello")
        with pytest.raises(StaleEntryError):
            await client.put(entry(ALICE, mine.seq - 1))
        assert await client.put(mine) == 2  # the same entry again: "unchanged" counts as stored
        bad = raw_entry({"name": "hello", "seq": 0, "service": SERVICE})
        with pytest.raises(MalformedEntryError, match="bad seq 0"):
            await client.put(Entry("hello", 0, ALICE.peer_id, hello(), bad))
        assert stores(*nodes) == [[mine]] * 2


async def test_put_counts_the_nodes_that_stored_it() -> None:
    async with trio.open_nursery() as nursery:
        net = FakeRegistryNetwork(nursery)
        (_, a), (_, b) = net.add(), net.add()
        net.unreachable()
        a.store.apply(entry(ALICE, 10).envelope)
        client = RegistryClient(net)
        # one node refuses (another owner there), one stores, one is down: no exception
        assert await client.put(entry(BOB, 11)) == 1
        assert b.store.entries() == [entry(BOB, 11)] and a.store.entries() == [entry(ALICE, 10)]


async def test_no_registry(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = FakeRegistryNetwork(nursery)
        client = RegistryClient(net, timeout=2.0)
        with pytest.raises(NoRegistryError, match="no registry node found"):
            await client.get("hello")
        with pytest.raises(NoRegistryError):
            await client.list()
        assert net.lookups == 2  # an empty answer is not cached

        net.unreachable()

        async def hang(stream: trio.abc.HalfCloseableStream) -> None:
            await trio.sleep_forever()

        net.add(hang)
        start = trio.current_time()
        with pytest.raises(NoRegistryError, match="no registry node answered") as info:
            await client.publish(ALICE, hello())
        assert trio.current_time() - start == pytest.approx(2.0)  # the hung node: one timeout
        assert info.value.code == "no-registry"
        with pytest.raises(NoRegistryError):
            await client.get("hello")
        assert net.lookups == 4  # after every node failed, they are looked up again
        nursery.cancel_scope.cancel()


async def test_nodes_are_cached_and_limited_to_fanout(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = FakeRegistryNetwork(nursery)
        for _ in range(5):
            net.add()
        client = RegistryClient(net, fanout=2, cache_ttl=30.0)
        await client.publish(ALICE, hello())
        await client.list()
        assert net.lookups == 1 and len(set(net.opened)) == 2 and len(net.opened) == 4
        await trio.sleep(31)
        await client.get("hello")
        assert net.lookups == 2
        fixed = RegistryClient(net, nodes=list(net.nodes)[4:])
        assert await fixed.list() == [] and net.lookups == 2 and net.opened[-1] == list(net.nodes)[4]


async def exchange(service: RegistryService, data: bytes, *, eof: bool = True) -> list[dict[str, Any]]:
    """``data`` sent raw to the service's handler; its answers up to the end of the stream."""
    a, b = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            try:
                await service.handle_stream(b)
            finally:
                await b.aclose()

        nursery.start_soon(serve)
        await a.send_all(data)
        if eof:
            await a.send_eof()
        answers = []
        buffered = BufferedStream(a)
        while (msg := await read_message(buffered)) is not None:
            answers.append(msg)
    return answers


def framed(raw: bytes) -> bytes:
    return varint_encode(len(raw)) + raw


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (framed(b"not json"), "malformed", "not JSON"),
        (framed(b"[1, 2]"), "malformed", "not a JSON object"),
        (framed(b'"list"'), "malformed", "not a JSON object"),
        (framed(b"[" * 20000), "malformed", ""),
        (framed(b'{"op": "frobnicate"}'), "malformed", "unknown op 'frobnicate'"),
        (framed(b"{}"), "malformed", "unknown op None"),
        (varint_encode(MAX_MESSAGE + 1) + b"x" * 100, "malformed", "exceeds the limit"),
        (b"\xff" * 11, "malformed", "varint longer than 10 bytes"),
        (framed(b'{"op": "get", "name"'), "malformed", "not JSON"),
        (framed(b'{"op": "put"}'), "malformed", "base64"),
        (framed(b'{"op": "put", "entry": "%%%"}'), "malformed", "not valid base64"),
        (frame({"op": "put", "entry": base64.b64encode(b"junk").decode()}), "malformed", "entry:"),
        (frame({"op": "get"}), "unknown", "no service named None"),
        (frame({"op": "get", "name": ["hello"]}), "unknown", "no service named"),
        (frame({"op": "get", "name": "nothing"}), "unknown", "no service named 'nothing'"),
    ],
)
async def test_garbage_requests_are_answered_and_change_nothing(data: bytes, code: str, message: str) -> None:
    service = RegistryService(RegistryStore(), None)
    service.store.apply(entry(ALICE, 1).envelope)
    answers = await exchange(service, data)
    assert len(answers) == 1 and answers[0]["error"] == code, answers
    assert message in answers[0]["message"]
    assert service.store.entries() == [entry(ALICE, 1)]
    # the node goes on answering
    assert await exchange(service, frame({"op": "get", "name": "hello"})) == [
        {"entry": base64.b64encode(entry(ALICE, 1).envelope).decode()}
    ]


async def test_truncated_and_empty_requests(autojump_clock: trio.testing.MockClock) -> None:
    service = RegistryService(RegistryStore(), None, options=RegistryOptions(request_timeout=3.0))
    assert await exchange(service, b"") == []  # a stream closed at once: nothing to answer
    for cut in (frame({"op": "list"})[:5], b"\x85", varint_encode(20)):
        answers = await exchange(service, cut)
        assert [a["error"] for a in answers] == ["malformed"], cut
        assert "cut short" in answers[0]["message"]
    # a request that never comes ends at the deadline, unanswered
    start = trio.current_time()
    assert await exchange(service, b"", eof=False) == []
    assert trio.current_time() - start == pytest.approx(3.0)
    assert service.requests == 0


def junk_node(*answers: dict[str, Any] | bytes) -> Handler:
    async def handle(stream: trio.abc.HalfCloseableStream) -> None:
        for msg in answers:
            await stream.send_all(msg if isinstance(msg, bytes) else frame(msg))
        await stream.send_eof()

    return handle


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_forged_and_garbled_answers_are_ignored() -> None:
    good = entry(ALICE, 10)
    tampered = entry(ALICE, 99).envelope
    tampered = tampered[:-1] + bytes([tampered[-1] ^ 1])
    async with trio.open_nursery() as nursery:
        net = FakeRegistryNetwork(nursery)
        liar = junk_node(
            {"entry": b64(tampered)},
            {"entry": "%%% not base64"},
            {"entry": 5},
            {"unexpected": True},
            {"entry": b64(entry(BOB, 50, "other").envelope)},  # well signed, but not what was asked
            {"entry": b64(raw_entry({"name": "hello", "seq": 0, "service": SERVICE}))},
        )
        net.add(liar)
        client = RegistryClient(net)
        with pytest.raises(UnknownServiceError):
            await client.get("hello")
        # list takes the well-signed entry, nothing else
        assert await client.list() == [entry(BOB, 50, "other")]

        _, honest = net.add()
        honest.store.apply(good.envelope)
        net.add(junk_node(b"\x05{}}}}"))  # not JSON: a failed node, not an answer
        net.add(junk_node({"error": "teapot", "message": "I'm a teapot"}))  # an unknown refusal
        net.add(junk_node(frame({"entry": b64(entry(ALICE, 99).envelope)})[:-3]))  # cut short: not an answer
        client = RegistryClient(net)
        assert await client.get("hello") == good
        assert await client.list() == [good, entry(BOB, 50, "other")]


async def test_answers_from_a_node_are_checked_for_errors() -> None:
    async with trio.open_nursery() as nursery:
        net = FakeRegistryNetwork(nursery)
        peer, _ = net.add(junk_node({"error": "teapot", "message": "I'm a teapot"}))
        other, _ = net.add(junk_node({"error": "stale"}))
        client = RegistryClient(net, nodes=[peer])
        with pytest.raises(RegistryError, match="I'm a teapot") as info:
            await client.put(entry(ALICE, 1))
        assert type(info.value) is RegistryError
        with pytest.raises(StaleEntryError, match=f"{other}: stale"):
            await RegistryClient(net, nodes=[other]).put(entry(ALICE, 1))
        with pytest.raises(RegistryError, match="teapot"):
            await client.call_list(peer)


async def test_sync_pulls_entries_under_the_same_rules() -> None:
    async with trio.open_nursery() as nursery:
        net = FakeRegistryNetwork(nursery)
        a_id, a = net.add()
        down = net.unreachable()
        a.store.apply(entry(ALICE, 10).envelope)
        a.store.apply(entry(ALICE, 5, "gone").envelope)
        a.store.apply(entry(ALICE, 6, "gone", deleted=True).envelope)
        a.store.apply(entry(BOB, 1, "squatted").envelope)

        b = RegistryService(RegistryStore(), None, RegistryClient(net, nodes=[down, a_id]))
        b.store.apply(entry(CAROL, 1, "squatted").envelope)  # another owner here: not taken
        b.store.apply(entry(ALICE, 5, "gone").envelope)  # the live copy the tombstone replaces
        b.store.apply(entry(ALICE, 3, "newer-here").envelope)
        a.store.apply(entry(ALICE, 2, "newer-here").envelope)
        assert await b.sync() == 2
        assert b.pulled == 2
        assert b.store.entries() == [
            entry(ALICE, 6, "gone", deleted=True), entry(ALICE, 10), entry(ALICE, 3, "newer-here"),
            entry(CAROL, 1, "squatted"),
        ]
        assert await b.sync() == 0

        # the other way: a node holding the tombstone does not take back an older live copy
        c_id, c = net.add()
        c.store.apply(entry(ALICE, 5, "gone").envelope)
        c.store.apply(entry(BOB, 1, "fresh").envelope)
        a.client = RegistryClient(net, nodes=[c_id])
        assert await a.sync() == 1
        assert a.store.get("gone") == entry(ALICE, 6, "gone", deleted=True)
        assert a.store.get("fresh") == entry(BOB, 1, "fresh")
    assert await RegistryService(RegistryStore(), None).sync() == 0  # no client: nothing to pull


def test_a_database_of_another_schema_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE entries (x INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="is not a physarum registry database"):
        RegistryStore(str(path))
