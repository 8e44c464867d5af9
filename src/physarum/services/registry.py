"""The service registry: name -> :class:`ServiceInfo`, signed by its publisher, kept on registry nodes.

Decisions (issue 14):

* **Entries are signed envelopes** (``physarum-service-entry`` domain). A registry node stores the
  envelope as it came, and every reader checks the signature itself, so a registry node cannot
  forge an entry; what it is trusted with is the *ownership* rule below.
* **Ownership**: the first publisher of a name owns it. Replacing or deleting it needs an entry
  signed by the owner or by a key on the registry's admin allow-list (an admin's entry makes the
  admin the owner). A delete is a signed tombstone, kept ``tombstone_ttl`` (7 days) so that
  replication cannot bring the entry back; after that anyone may take the name.
* **Order**: each entry carries ``seq`` (the publisher's clock in nanoseconds, larger than the
  entry it replaces); an entry that is not newer than the stored one is refused as stale.
* **Storage and replication**: registry nodes (``physarum registry serve``, or
  :class:`RegistryService` on any host) keep entries in SQLite, so an entry survives the restart of
  the node that holds it. Registry nodes provide the DHT key of ``physarum-registry``; a client
  writes to every registry node it finds (up to ``fanout``) and reads from all of them, taking the
  newest valid entry. Registry nodes also pull each other's entries every ``sync_interval`` (the
  ownership and order rules apply to what they pull), so a node that was down catches up.
  ``list`` returns every live entry.

Wire (``/physarum/registry/1.0.0``): one request per stream; each message a uvarint-length-
prefixed JSON object. Requests ``{"op": "put", "entry": B64}``, ``{"op": "get", "name": N}``,
``{"op": "list"}``. Answers: ``{"result": "stored"|"unchanged"}``, or one ``{"entry": B64}`` per
entry (tombstones included, so replication sees deletes) and the end of the stream, or
``{"error": CODE, "message": TEXT}`` with CODE one of :class:`RegistryError`'s codes.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import sqlite3
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from physarum.errors import PEER_FAILURES, ConfigError, DecodeError, PhysarumError
from physarum.overlay.envelope import EnvelopeError, open_envelope, seal
from physarum.overlay.identity import KeyPair, PeerId
from physarum.services.discovery import Advertiser, AdvertiserOptions, service_key
from physarum.services.wire import call, serve_request

log = logging.getLogger("physarum.services.registry")

PROTOCOL_ID = "/physarum/registry/1.0.0"
#: The name registry nodes provide on the DHT (its :func:`service_key`).
REGISTRY_NAME = "physarum-registry"
ENTRY_DOMAIN = b"physarum-service-entry"
ENTRY_TYPE = b"/physarum/service-entry/1"
#: Largest signed entry taken (bytes); a ServiceInfo is a few hundred.
MAX_ENTRY_BYTES = 16384
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_MAX_COMMAND_ARGS = 64
_MAX_ARG_LEN = 1024


class RegistryError(PhysarumError):
    """A registry refused or could not answer a request; ``code`` is its wire code."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedEntryError(RegistryError, DecodeError):
    """An entry that does not decode, is badly signed, or holds an invalid ServiceInfo."""

    code = "malformed"


class NotOwnerError(RegistryError):
    """Replacing or deleting a name owned by another key (not an admin)."""

    code = "not-owner"


class StaleEntryError(RegistryError):
    """An entry not newer than the stored one (its ``seq`` is not larger)."""

    code = "stale"


class UnknownServiceError(RegistryError):
    """No live entry for the name."""

    code = "unknown"


class NoRegistryError(RegistryError):
    """No registry node could be found or reached."""

    code = "no-registry"


#: What a call to one registry node may raise: its refusal, a garbled answer, or the peer failing.
CALL_FAILURES: tuple[type[BaseException], ...] = (RegistryError, DecodeError, *PEER_FAILURES)

_CODES: dict[str, type[RegistryError]] = {
    c.code: c for c in (RegistryError, MalformedEntryError, NotOwnerError, StaleEntryError, UnknownServiceError)
}


def _opt_number(d: dict[str, Any], key: str, *, integer: bool = False) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or (integer and not isinstance(v, int)):
        raise ConfigError(f"{key} must be a {'whole ' if integer else ''}number, not {v!r}")
    return v


@dataclass(frozen=True)
class ServiceInfo:
    """What the registry keeps about a service: how to run it and how close it must be.

    ``command`` (process runtime: argv, no shell; the instance must listen on ``$SERVICE_PORT``)
    and/or ``image`` (container runtime, same environment). RTT limits are in milliseconds;
    ``cpu`` in cores, ``memory_mb`` in MiB (what an allocator reserves for an instance).

    Raises:
        ConfigError: a field out of its range (at construction).
    """

    name: str
    command: tuple[str, ...] = ()
    image: str | None = None
    soft_rtt_ms: float | None = None
    hard_rtt_ms: float | None = None
    cpu: float | None = None
    memory_mb: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name):
            raise ConfigError(
                f"bad service name {self.name!r}: 1-63 of letters, digits, '.', '_', '-' (not first)"
            )
        if not self.command and not self.image:
            raise ConfigError(f"service {self.name}: give a command, an image, or both")
        if len(self.command) > _MAX_COMMAND_ARGS or any(
            not isinstance(a, str) or not a or len(a) > _MAX_ARG_LEN or "\0" in a for a in self.command
        ):
            raise ConfigError(
                f"service {self.name}: command must be up to {_MAX_COMMAND_ARGS} non-empty arguments "
                f"of up to {_MAX_ARG_LEN} characters"
            )
        if self.image is not None and (
            not isinstance(self.image, str) or not self.image or len(self.image) > 255 or any(c.isspace() for c in self.image)
        ):
            raise ConfigError(f"service {self.name}: bad image {self.image!r}")
        for key in ("soft_rtt_ms", "hard_rtt_ms", "cpu", "memory_mb"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0):
                raise ConfigError(f"service {self.name}: {key} must be a positive number, not {v!r}")
        if self.memory_mb is not None and not isinstance(self.memory_mb, int):
            raise ConfigError(f"service {self.name}: memory_mb must be a whole number of MiB")
        if self.soft_rtt_ms is not None and self.hard_rtt_ms is not None and self.soft_rtt_ms > self.hard_rtt_ms:
            raise ConfigError(f"service {self.name}: soft_rtt_ms ({self.soft_rtt_ms:g}) is over hard_rtt_ms ({self.hard_rtt_ms:g})")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (absent fields left out)."""
        d: dict[str, Any] = {"name": self.name}
        if self.command:
            d["command"] = list(self.command)
        for key in ("image", "soft_rtt_ms", "hard_rtt_ms", "cpu", "memory_mb"):
            v = getattr(self, key)
            if v is not None:
                d[key] = v
        return d

    @classmethod
    def from_dict(cls, d: object) -> ServiceInfo:
        """Raises:
            ConfigError: not an object, unknown fields, or a field out of its range.
        """
        if not isinstance(d, dict):
            raise ConfigError("a service must be a JSON object")
        unknown = set(d) - {"name", "command", "image", "soft_rtt_ms", "hard_rtt_ms", "cpu", "memory_mb"}
        if unknown:
            raise ConfigError(f"unknown service field(s): {', '.join(sorted(map(str, unknown)))}")
        command = d.get("command", [])
        if not isinstance(command, list):
            raise ConfigError("command must be a list of strings")
        name = d.get("name")
        image = d.get("image")
        if not isinstance(name, str):
            raise ConfigError("name must be a string")
        if image is not None and not isinstance(image, str):
            raise ConfigError("image must be a string")
        memory = _opt_number(d, "memory_mb", integer=True)
        return cls(
            name=name,
            command=tuple(command),
            image=image,
            soft_rtt_ms=_opt_number(d, "soft_rtt_ms"),
            hard_rtt_ms=_opt_number(d, "hard_rtt_ms"),
            cpu=_opt_number(d, "cpu"),
            memory_mb=None if memory is None else int(memory),
        )


@dataclass(frozen=True)
class Entry:
    """A signed registry entry: ``info`` (None for a delete), ``seq``, and its publisher."""

    name: str
    seq: int
    publisher: PeerId
    info: ServiceInfo | None
    envelope: bytes = field(repr=False)

    @property
    def deleted(self) -> bool:
        return self.info is None

    def to_dict(self) -> dict[str, Any]:
        """For ``registry get``/``list`` output."""
        return {"name": self.name, "seq": self.seq, "publisher": str(self.publisher),
                "deleted": self.deleted, "service": self.info.to_dict() if self.info else None}


def seal_entry(key_pair: KeyPair, name: str, info: ServiceInfo | None, seq: int | None = None) -> Entry:
    """Sign ``info`` (None: a delete of ``name``) with ``seq`` (default: the clock in ns).

    Raises:
        ConfigError: a bad name, a name other than the service's, or a seq outside 1..2**63-1
            (what :func:`open_entry` would refuse).
    """
    if info is not None and info.name != name:
        raise ConfigError(f"entry name {name!r} differs from the service's {info.name!r}")
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"bad service name {name!r}")
    seq = time.time_ns() if seq is None else seq
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 < seq < 2**63:
        raise ConfigError(f"bad seq {seq!r}: a whole number from 1 to 2**63-1")
    payload = json.dumps(
        {"name": name, "seq": seq, "service": info.to_dict() if info else None}, separators=(",", ":"), sort_keys=True
    ).encode()
    return Entry(name, seq, key_pair.peer_id, info, seal(key_pair, ENTRY_DOMAIN, ENTRY_TYPE, payload))


def open_entry(data: bytes) -> Entry:
    """Verify and decode a signed entry.

    Raises:
        MalformedEntryError: not an envelope, badly signed, or not a valid entry (the message says which).
    """
    try:
        env = open_envelope(data, ENTRY_DOMAIN, ENTRY_TYPE, max_size=MAX_ENTRY_BYTES)
    except EnvelopeError as e:
        raise MalformedEntryError(f"entry: {e}") from e
    try:
        body = json.loads(env.payload)
        if not isinstance(body, dict) or set(body) != {"name", "seq", "service"}:
            raise ConfigError("entry must hold exactly name, seq and service")
        name, seq, service = body["name"], body["seq"], body["service"]
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ConfigError(f"bad service name {name!r}")
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 < seq < 2**63:
            raise ConfigError(f"bad seq {seq!r}")
        info = None if service is None else ServiceInfo.from_dict(service)
        if info is not None and info.name != name:
            raise ConfigError(f"entry name {name!r} differs from the service's {info.name!r}")
    except (ValueError, RecursionError, ConfigError) as e:  # json's errors are ValueErrors
        raise MalformedEntryError(f"entry: {e}") from e
    return Entry(name, seq, env.signer, info, data)


class RegistryStore:
    """Entries in SQLite (``path``; ":memory:" for none), under the ownership and order rules of
    the module docstring. ``admins``: keys that may replace or delete any entry."""

    def __init__(self, path: str = ":memory:", *, admins: Collection[PeerId] = (),
                 tombstone_ttl: float = 7 * 86400.0) -> None:
        self.path = path
        self.admins = frozenset(admins)
        self.tombstone_ttl = tombstone_ttl
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS entries (name TEXT PRIMARY KEY, seq INTEGER NOT NULL, "
                "publisher TEXT NOT NULL, deleted INTEGER NOT NULL, stored_at REAL NOT NULL, envelope BLOB NOT NULL)"
            )
        except sqlite3.Error as e:
            raise ConfigError(f"cannot open the registry database {path}: {e}") from None
        self._entries: dict[str, Entry] = {}
        self._stored_at: dict[str, float] = {}
        try:
            rows = self._db.execute("SELECT name, stored_at, envelope FROM entries").fetchall()
        except sqlite3.Error as e:  # a file of another program, or another schema
            self._db.close()
            raise ConfigError(f"{path} is not a physarum registry database: {e}") from None
        for name, stored_at, envelope in rows:
            try:
                entry = open_entry(envelope if isinstance(envelope, bytes) else b"")  # a TEXT or number cell: corrupt
            except MalformedEntryError as e:
                log.warning("registry database %s: dropping entry %r: %s", path, name, e)
                self._db.execute("DELETE FROM entries WHERE name = ?", (name,))
                continue
            self._entries[entry.name] = entry
            self._stored_at[entry.name] = stored_at

    def close(self) -> None:
        self._db.close()

    def get(self, name: str) -> Entry | None:
        """The stored entry for ``name`` (a tombstone too), or None."""
        return self._entries.get(name)

    def entries(self) -> list[Entry]:
        """Every stored entry, tombstones included, by name."""
        return [self._entries[n] for n in sorted(self._entries)]

    def live(self) -> list[Entry]:
        return [e for e in self.entries() if not e.deleted]

    def apply(self, data: bytes) -> bool:
        """Store the signed entry ``data`` if the rules allow; True if stored, False if it was
        already there.

        Raises:
            MalformedEntryError, NotOwnerError, StaleEntryError.
        """
        entry = open_entry(data)
        current = self._entries.get(entry.name)
        if current is not None and self._expired(current):
            current = None
        if current is not None:
            if entry.envelope == current.envelope:
                return False
            if entry.publisher != current.publisher and entry.publisher not in self.admins:
                raise NotOwnerError(f"{entry.name} is owned by {current.publisher}")
            if entry.seq <= current.seq:
                raise StaleEntryError(f"{entry.name}: seq {entry.seq} is not newer than the stored {current.seq}")
        now = time.time()
        self._db.execute(
            "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
            (entry.name, entry.seq, str(entry.publisher), int(entry.deleted), now, entry.envelope),
        )
        self._entries[entry.name] = entry
        self._stored_at[entry.name] = now
        return True

    def _expired(self, entry: Entry) -> bool:
        return entry.deleted and time.time() - self._stored_at.get(entry.name, 0.0) > self.tombstone_ttl

    def sweep(self) -> int:
        """Forget tombstones older than ``tombstone_ttl``; how many."""
        gone = [n for n, e in self._entries.items() if self._expired(e)]
        for name in gone:
            self._db.execute("DELETE FROM entries WHERE name = ?", (name,))
            del self._entries[name]
            self._stored_at.pop(name, None)
        return len(gone)


# -- the wire -------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise MalformedEntryError("entry must be base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedEntryError("entry is not valid base64") from None


class StreamHost(Protocol):
    """What the registry needs of a host (:class:`~physarum.overlay.host.Host` has it)."""

    peer_id: PeerId

    def set_handler(self, protocol: str, handler: Any) -> None: ...


class ProvidingDHT(Protocol):
    async def provide(self, key: bytes, *, timeout: float | None = None) -> int: ...


@dataclass(frozen=True)
class RegistryOptions:
    """A registry node's timings (seconds)."""

    sync_interval: float = 30.0
    """How often the node pulls every other registry node's entries."""
    request_timeout: float = 10.0
    """A request must arrive, and a pull finish, within this."""
    advertise: AdvertiserOptions = field(default_factory=AdvertiserOptions)


class RegistryService:
    """A registry node: serves :data:`PROTOCOL_ID` from ``store``, provides :data:`REGISTRY_NAME`
    on the DHT and pulls the other registry nodes' entries (needs a running host and DHT: add it with
    ``host.add_service`` after the DHT exists, or call :meth:`attach` and start :meth:`run`)."""

    def __init__(self, store: RegistryStore, dht: Any, client: RegistryClient | None = None,
                 options: RegistryOptions = RegistryOptions()) -> None:
        self.store = store
        self.dht = dht
        self.client = client
        self.options = options
        self.requests = 0
        self.pulled = 0
        self._host: StreamHost | None = None

    def attach(self, host: Any) -> None:
        self._host = host
        host.set_handler(PROTOCOL_ID, self.handle_stream)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self._host is not None, "attach the registry to a host first"
        async with trio.open_nursery() as nursery:
            await nursery.start(Advertiser(REGISTRY_NAME, self.dht, self._host, self.options.advertise).run)  # type: ignore[arg-type]
            task_status.started()
            while self.client is not None:
                await self.sync()
                await trio.sleep(self.options.sync_interval)
                self.store.sweep()

    async def sync(self) -> int:
        """Pull every other registry node's entries once; how many were new here."""
        if self.client is None:
            return 0
        new = 0
        with trio.move_on_after(self.options.request_timeout):
            for peer in await self.client.find_nodes():
                try:
                    entries = await self.client.call_list(peer, raw=True)
                except CALL_FAILURES as e:
                    log.debug("pulling entries from %s failed: %s", peer, e)
                    continue
                for entry in entries:
                    try:
                        new += self.store.apply(entry.envelope)
                    except RegistryError as err:
                        log.debug("entry %s from %s not taken: %s", entry.name, peer, err)
        self.pulled += new
        if new:
            log.info("registry: %d entr%s pulled from other registry nodes", new, "y" if new == 1 else "ies")
        return new

    async def handle_stream(self, stream: trio.abc.HalfCloseableStream) -> None:
        async def answer(request: dict[str, Any]) -> Iterable[dict[str, Any]]:
            self.requests += 1
            return self._answer(request)

        await serve_request(stream, answer, timeout=self.options.request_timeout, log=log)

    def _answer(self, request: dict[str, Any]) -> Iterable[dict[str, Any]]:
        op = request.get("op")
        try:
            if op == "put":
                stored = self.store.apply(_unb64(request.get("entry")))
                return [{"result": "stored" if stored else "unchanged"}]
            if op == "get":
                name = request.get("name")
                entry = self.store.get(name) if isinstance(name, str) else None
                if entry is None:
                    raise UnknownServiceError(f"no service named {name!r}")
                return [{"entry": _b64(entry.envelope)}]
            if op == "list":
                return [{"entry": _b64(e.envelope)} for e in self.store.entries()]
            raise MalformedEntryError(f"unknown op {op!r}")
        except RegistryError as e:
            return [{"error": e.code, "message": e.message}]


# -- the client -----------------------------------------------------------------------------------


class RegistryNetwork(Protocol):
    """What :class:`RegistryClient` needs (:class:`~physarum.services.network.OverlayNetwork` has it)."""

    async def find_instances(self, key: bytes, *, timeout: float) -> list[PeerId]: ...

    async def open_stream(self, peer: PeerId, protocol: str, *, timeout: float) -> trio.abc.HalfCloseableStream: ...


class RegistryClient:
    """add/get/list/delete against the registry nodes found on the DHT (see the module docstring).

    ``nodes``: registry nodes to use instead of looking them up (tests, or a fixed registry).
    """

    def __init__(self, network: RegistryNetwork, *, timeout: float = 10.0, fanout: int = 8,
                 nodes: Sequence[PeerId] | None = None, cache_ttl: float = 30.0) -> None:
        self.network = network
        self.timeout = timeout
        self.fanout = fanout
        self.fixed = list(nodes) if nodes is not None else None
        self.cache_ttl = cache_ttl
        self._found: list[PeerId] = []
        self._found_at = -math.inf

    async def find_nodes(self) -> list[PeerId]:
        """The registry nodes to ask (up to ``fanout``; cached ``cache_ttl`` s when some were found)."""
        if self.fixed is not None:
            return self.fixed
        if self._found and trio.current_time() - self._found_at < self.cache_ttl:
            return self._found
        try:
            found = await self.network.find_instances(service_key(REGISTRY_NAME), timeout=self.timeout)
        except PEER_FAILURES as e:
            log.debug("looking up registry nodes failed: %s", e)
            found = []
        self._found = found[: self.fanout]
        self._found_at = trio.current_time()
        return self._found

    async def _call(self, peer: PeerId, request: dict[str, Any]) -> list[dict[str, Any]]:
        """Raises RegistryError (the node's answer), DecodeError or one of PEER_FAILURES."""

        def refusal(code: str, message: str) -> RegistryError:
            return _CODES.get(code, RegistryError)(f"{peer}: {message}")

        with trio.fail_after(self.timeout):
            stream = await self.network.open_stream(peer, PROTOCOL_ID, timeout=self.timeout)
            return await call(stream, request, refusal=refusal)

    async def _each(self, request: dict[str, Any]) -> list[tuple[PeerId, list[dict[str, Any]] | BaseException]]:
        """``request`` to every registry node at once; each node's answers or failure.

        Raises:
            NoRegistryError: none found.
        """
        nodes = await self.find_nodes()
        if not nodes:
            raise NoRegistryError("no registry node found on the network (run 'physarum registry serve')")
        results: list[tuple[PeerId, list[dict[str, Any]] | BaseException]] = []

        async def one(peer: PeerId) -> None:
            try:
                results.append((peer, await self._call(peer, request)))
            except CALL_FAILURES as e:
                results.append((peer, e))

        async with trio.open_nursery() as nursery:
            for peer in nodes:
                nursery.start_soon(one, peer)
        # A refusal (a RegistryError) is an answer; PEER_FAILURES would count it as a failure.
        if not any(isinstance(r, list | RegistryError) for _, r in results):
            self._found_at = -math.inf  # look them up again next time
            reasons = "; ".join(f"{p}: {r}" for p, r in results)
            raise NoRegistryError(f"no registry node answered ({reasons})")
        return results

    async def put(self, entry: Entry) -> int:
        """Write ``entry`` to every registry node; how many stored it (or had it already).

        Raises:
            NotOwnerError, StaleEntryError, MalformedEntryError: a registry node refused it (and none stored it).
            NoRegistryError: no registry node found or answered.
        """
        results = await self._each({"op": "put", "entry": _b64(entry.envelope)})
        ok = sum(1 for _, r in results if isinstance(r, list))
        refusals = [r for _, r in results if isinstance(r, RegistryError)]
        if not ok and refusals:
            raise refusals[0]
        if ok and refusals:
            log.info("registry: %d node(s) refused %s: %s", len(refusals), entry.name, refusals[0])
        return ok

    async def publish(self, key_pair: KeyPair, info: ServiceInfo) -> Entry:
        """Sign and write ``info``; the entry written.

        Raises:
            see :meth:`put`.
        """
        entry = seal_entry(key_pair, info.name, info)
        await self.put(entry)
        return entry

    async def delete(self, key_pair: KeyPair, name: str) -> Entry:
        """Write a signed tombstone for ``name``.

        Raises:
            UnknownServiceError: no live entry to delete; and see :meth:`put`.
        """
        await self.get(name)
        entry = seal_entry(key_pair, name, None)
        await self.put(entry)
        return entry

    @staticmethod
    def _entries(answers: list[dict[str, Any]]) -> list[Entry]:
        out = []
        for msg in answers:
            try:
                out.append(open_entry(_unb64(msg.get("entry"))))
            except MalformedEntryError as e:
                log.info("registry: dropping an entry a node sent: %s", e)
        return out

    async def get(self, name: str) -> Entry:
        """The newest live entry for ``name`` across the registry nodes.

        Raises:
            UnknownServiceError: no node has a live entry for it.
            NoRegistryError: no registry node found or answered.
        """
        best: Entry | None = None
        for _peer, r in await self._each({"op": "get", "name": name}):
            if isinstance(r, list):
                for e in self._entries(r):
                    if e.name == name and (best is None or e.seq > best.seq):
                        best = e
        if best is None or best.deleted:
            raise UnknownServiceError(f"no service named {name!r} in the registry")
        return best

    async def call_list(self, peer: PeerId, *, raw: bool = False) -> list[Entry]:
        """One node's entries (tombstones too with ``raw``)."""
        entries = self._entries(await self._call(peer, {"op": "list"}))
        return entries if raw else [e for e in entries if not e.deleted]

    async def list(self) -> list[Entry]:
        """Every live entry, newest per name across the registry nodes, by name.

        Raises:
            NoRegistryError: no registry node found or answered.
        """
        newest: dict[str, Entry] = {}
        for _peer, r in await self._each({"op": "list"}):
            if isinstance(r, list):
                for e in self._entries(r):
                    if e.name not in newest or e.seq > newest[e.name].seq:
                        newest[e.name] = e
        return [newest[n] for n in sorted(newest) if not newest[n].deleted]


__all__ = [
    "MAX_ENTRY_BYTES",
    "PROTOCOL_ID",
    "REGISTRY_NAME",
    "Entry",
    "MalformedEntryError",
    "NoRegistryError",
    "NotOwnerError",
    "RegistryClient",
    "RegistryError",
    "RegistryNetwork",
    "RegistryOptions",
    "RegistryService",
    "RegistryStore",
    "ServiceInfo",
    "StaleEntryError",
    "UnknownServiceError",
    "open_entry",
    "seal_entry",
]
