"""The attacks of issue 11's table, one function each, run as a process of their own::

    python -m tests.adversarial._attacks NAME '{"port": ..., "peer_id": ..., "psk": HEX, "metrics_port": ..., ...}'

Each prints JSON lines on stdout: ``{"event": ...}`` as it goes, and finally ``{"report": {...}}`` with
what it saw (replies, refusals, counts); the test decides what they mean. Each is bounded in time and
in count and stops by itself. Targets are always 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import trio

from physarum.dht import messages as kad
from physarum.dht.records import ContactRecord, encode_record_set, new_expiry, record_key, sign_record
from physarum.overlay import identify, ping, varint
from physarum.overlay.identity import KeyPair, PeerId
from physarum.overlay.multiaddr import Multiaddr
from physarum.overlay.streamio import BufferedStream
from tests.adversarial._wire import (
    Conn,
    Persona,
    Target,
    connect,
    fake_addrs,
    kad_request,
    ping_flood_chunk,
    raise_fd_limit,
    read_all,
    secure_channel,
    sources,
    tcp_from,
)

Params = dict[str, Any]
Report = dict[str, Any]

#: What ends an attempt: the node refusing, resetting, hanging up, answering garbage or too late, in
#: whatever layer, alone or grouped by a nursery. An attacker does not care why (reports count the
#: kinds); cancellation, a BaseException, is never caught.
REFUSALS = (Exception,)


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def _why(e: BaseException) -> str:
    return type(e).__name__


# 0 -----------------------------------------------------------------------------------------------------


async def idle(t: Target, p: Params) -> Report:
    """No attack: one honest-looking connection, quiet for ``duration`` seconds (the control)."""
    async with connect(t) as conn:
        await trio.sleep(p.get("duration", 4.0))
        return {"connection_closed": conn.closed}


# 1 -----------------------------------------------------------------------------------------------------


async def yamux_ping_flood(t: Target, p: Params) -> Report:
    """yamux PING frames as fast as the node takes them, never reading the pongs."""
    duration = p.get("duration", 8.0)
    secure, _ = await secure_channel(t, KeyPair.generate())
    chunk = ping_flood_chunk(5000)  # 60,000 bytes: one Noise message
    sent = 0
    closed_after = None
    started = trio.current_time()
    emit(event="flooding")
    with trio.move_on_after(duration):
        try:
            while True:
                await secure.send_all(chunk)
                sent += 5000
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            closed_after = trio.current_time() - started
    await trio.aclose_forcefully(secure)
    return {"pings_sent": sent, "closed_by_node_after": closed_after}


# 2 -----------------------------------------------------------------------------------------------------


async def kad_streams(t: Target, p: Params) -> Report:
    """Many kad streams on one connection, each with an unfinished message of the largest size."""
    n = p.get("streams", 250)
    size = p.get("message", kad.MAX_MESSAGE_SIZE)
    duration = p.get("duration", 8.0)
    chunk = bytes(60_000)
    sent = 0
    opened = 0
    reset = 0
    async with connect(t) as conn:
        with trio.move_on_after(duration):
            async with trio.open_nursery() as nursery:

                async def fill() -> None:
                    nonlocal sent, opened, reset
                    try:
                        stream = await conn.open(kad.PROTOCOL_ID)
                    except REFUSALS:
                        return
                    opened += 1
                    try:
                        await stream.send_all(varint.encode(size))
                        left = size - 1  # the message never completes
                        while left:
                            piece = chunk[: min(len(chunk), left)]
                            await stream.send_all(piece)
                            sent += len(piece)
                            left -= len(piece)
                        await trio.sleep_forever()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        reset += 1

                for _ in range(n):
                    nursery.start_soon(fill)
    return {"streams_opened": opened, "bytes_sent": sent, "streams_broken": reset}


# 3 and 4 -------------------------------------------------------------------------------------------------


async def identify_addr_flood(t: Target, p: Params) -> Report:
    """Peers announcing kad and thousands of listen addresses each; then a 37-byte FIND_NODE from a
    bystander, to see how large the answers have become."""
    peers = p.get("peers", 20)
    n_addrs = p.get("addrs", 6300)
    hold = p.get("hold", 3.0)
    queries = p.get("queries", 5)
    src = sources()
    identified = 0
    report: Report = {}
    protocols = [identify.PROTOCOL_ID, identify.PUSH_PROTOCOL_ID, ping.PROTOCOL_ID, kad.PROTOCOL_ID]
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def peer(i: int) -> None:
            nonlocal identified
            persona = Persona(protocols=protocols, listen_addrs=fake_addrs(n_addrs, start=i * n_addrs))
            try:
                async with connect(t, persona=persona, source=next(src)):
                    with trio.move_on_after(30):
                        await persona.identified.wait()
                        identified += 1
                    await done.wait()
            except REFUSALS:
                pass

        for i in range(peers):
            nursery.start_soon(peer, i)
        with trio.move_on_after(30):
            while identified < peers:
                await trio.sleep(0.05)
        emit(event="identified", peers=identified)
        report["identified"] = identified
        report["find_node"] = await _find_node_sizes(t, queries)
        await trio.sleep(hold)
        done.set()
    return report


async def _find_node_sizes(t: Target, queries: int, *, patience: float = 60.0) -> list[dict[str, Any]]:
    """``queries`` FIND_NODEs for random keys from one bystander connection; a node still busy with
    the flood may drop the bystander's first tries, so it dials again until ``patience`` runs out."""
    out: list[dict[str, Any]] = []
    failures: Counter[str] = Counter()
    with trio.move_on_after(patience):
        while len(out) < queries:
            try:
                async with connect(t, source="127.0.0.254") as conn:
                    while len(out) < queries:
                        key = os.urandom(32)
                        request = kad.Message(kad.MessageType.FIND_NODE, key=key)
                        started = trio.current_time()
                        size, reply = await kad_request(conn, request, timeout=patience)
                        out.append(
                            {
                                "request_bytes": len(kad.encode_framed(request)),
                                "reply_bytes": size,
                                "peers": len(reply.closer_peers) if reply else 0,
                                "addrs": sum(len(q.addrs) for q in reply.closer_peers) if reply else 0,
                                "seconds": round(trio.current_time() - started, 3),
                            }
                        )
            except REFUSALS as e:
                failures[_why(e)] += 1
                await trio.sleep(0.5)
    if len(out) < queries:
        out.append({"error": f"no answer within {patience:g} s (dial failures: {dict(failures)})"})
    return out


# 5 -----------------------------------------------------------------------------------------------------


async def add_provider_flood(t: Target, p: Params) -> Report:
    """ADD_PROVIDER for fresh keys, each naming us with ``addrs`` addresses."""
    n_addrs = p.get("addrs", 1000)
    duration = p.get("duration", 6.0)
    n_streams = p.get("streams", 4)
    key_pair = KeyPair.generate()
    peer = kad.Peer(key_pair.peer_id, tuple(fake_addrs(n_addrs)))
    # field 1 (type) and field 9 (the provider) once; the key (field 2) appended per message
    base = kad.encode_message(kad.Message(kad.MessageType.ADD_PROVIDER, provider_peers=(peer,)))
    sent = 0
    broken = 0
    async with connect(t, key_pair=key_pair) as conn:
        with trio.move_on_after(duration):
            async with trio.open_nursery() as nursery:

                async def flood() -> None:
                    nonlocal sent, broken
                    while True:
                        try:
                            stream = await conn.open(kad.PROTOCOL_ID)
                            while True:
                                body = base + b"\x12\x20" + os.urandom(32)
                                await stream.send_all(varint.encode(len(body)) + body)
                                sent += 1
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            broken += 1
                            if conn.closed:
                                return
                        except REFUSALS:
                            return

                for _ in range(n_streams):
                    nursery.start_soon(flood)
    return {"announcements": sent, "bytes_each": len(base) + 34, "streams_broken": broken}


# 6 -----------------------------------------------------------------------------------------------------

#: What a libp2p client without a pre-shared key sends first: the multistream header and /noise.
NO_KEY_HELLO = b"\x13/multistream/1.0.0\n\x07/noise\n"


async def no_key_flood(t: Target, p: Params) -> Report:
    """Clients without the key: ``holders`` connections kept open (silent after their hello), and
    ``churners`` that hang up and dial again at once, until ``min_connections`` were made."""
    holders: int = p.get("holders", 1030)
    churners: int = p.get("churners", 32)
    minimum: int = p.get("min_connections", 10_000)
    duration: float = p.get("duration", 6.0)
    longest: float = p.get("max_duration", 25.0)
    src = sources()
    made = 0
    failed: Counter[str] = Counter()
    holding = 0
    peak_holding = 0
    started = trio.current_time()

    def enough() -> bool:
        elapsed = trio.current_time() - started
        return (elapsed >= duration and made >= minimum) or elapsed >= longest

    async def hold() -> None:
        nonlocal made, holding, peak_holding
        while not enough():
            try:
                tcp = await tcp_from(next(src), t.host, t.port)
            except OSError as e:
                failed[_why(e)] += 1
                await trio.sleep(0.01)
                continue
            made += 1
            holding += 1
            peak_holding = max(peak_holding, holding)
            try:
                await tcp.send_all(NO_KEY_HELLO)
                await read_all(tcp)  # ignore its garbage, wait until it hangs up
            except (OSError, trio.BrokenResourceError):
                pass
            finally:
                holding -= 1
                await trio.aclose_forcefully(tcp)

    async def churn() -> None:
        nonlocal made
        while not enough():
            try:
                tcp = await tcp_from(next(src), t.host, t.port)
            except OSError as e:
                failed[_why(e)] += 1
                await trio.sleep(0.001)
                continue
            made += 1
            try:
                await tcp.send_all(NO_KEY_HELLO)
                with trio.move_on_after(1):
                    await tcp.receive_some(64)  # its nonce and garbled header: not our network
            except (OSError, trio.BrokenResourceError):
                pass
            await trio.aclose_forcefully(tcp)

    async with trio.open_nursery() as nursery:
        for _ in range(holders):
            nursery.start_soon(hold)
        for _ in range(churners):
            nursery.start_soon(churn)

        async def stop_when_enough() -> None:
            while not enough():
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_when_enough)
    return {
        "connections": made,
        "connect_failures": dict(failed),
        "peak_held": peak_holding,
        "seconds": round(trio.current_time() - started, 1),
    }


# 7 -----------------------------------------------------------------------------------------------------


async def fresh_identities(t: Target, p: Params) -> Report:
    """Valid connections from ``count`` fresh identities (each answers identify and ping), held
    ``hold`` seconds once all are open (or ``open_timeout`` passed), then all dropped."""
    count = p.get("count", 2000)
    concurrency = p.get("concurrency", 64)
    open_timeout = p.get("open_timeout", 15.0)
    hold = p.get("hold", 3.0)
    src = sources()
    opened = 0
    refused: Counter[str] = Counter()
    limiter = trio.CapacityLimiter(concurrency)
    leave = trio.Event()
    started = trio.current_time()

    async def one() -> None:
        nonlocal opened
        async with AsyncExitStack() as stack:
            try:
                async with limiter:
                    conn = await stack.enter_async_context(connect(t, source=next(src)))
            except REFUSALS as e:
                refused[_why(e)] += 1
                return
            opened += 1
            with trio.move_on_after(open_timeout + hold + 5):
                while not (leave.is_set() or conn.closed):
                    await trio.sleep(0.1)
            if conn.closed and not leave.is_set():
                refused["closed by the node"] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
        with trio.move_on_after(open_timeout):
            while opened + sum(refused.values()) < count:
                await trio.sleep(0.05)
        opened_in = trio.current_time() - started
        emit(event="opened", opened=opened, seconds=round(opened_in, 1))
        await trio.sleep(hold)
        leave.set()
        nursery.cancel_scope.cancel()
    return {"opened": opened, "refused": dict(refused), "open_seconds": round(opened_in, 1)}


# 8 -----------------------------------------------------------------------------------------------------


async def slow_http(t: Target, p: Params) -> Report:
    """``clients`` slowloris clients on /metrics: a request line, then a byte every ``drip`` seconds,
    reconnecting whenever the server hangs up."""
    clients = p.get("clients", 64)
    duration = p.get("duration", 6.0)
    drip = p.get("drip", 0.5)
    src = sources()
    connections = 0
    hung_up: Counter[str] = Counter()

    async def client() -> None:
        nonlocal connections
        while True:
            try:
                tcp = await tcp_from(next(src), "127.0.0.1", t.metrics_port)
            except OSError as e:
                hung_up[f"connect: {_why(e)}"] += 1
                await trio.sleep(0.05)
                continue
            connections += 1
            try:
                await tcp.send_all(b"GET /metrics HTTP/1.1\r\n")
                while True:
                    with trio.move_on_after(drip):
                        data = await tcp.receive_some(4096)
                        hung_up["answered" if data else "closed"] += 1
                        break
                    await tcp.send_all(b"X")
            except (OSError, trio.BrokenResourceError) as e:
                hung_up[_why(e)] += 1
            finally:
                await trio.aclose_forcefully(tcp)

    with trio.move_on_after(duration):
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(client)
    return {"connections": connections, "ended": dict(hung_up)}


# 9 -----------------------------------------------------------------------------------------------------


def _record(key_pair: KeyPair, name: str, data: dict[str, Any], seq: int = 1) -> bytes:
    record = ContactRecord(
        name, (Multiaddr("/ip4/127.1.0.1/tcp/9"),), data, seq=seq, expires=new_expiry(time.time())
    )
    return sign_record(key_pair, record)


async def _put(conn: Conn, name: str, envelope: bytes) -> bool:
    """One PUT_VALUE; True when the node stored it (it echoes the request)."""
    key = record_key(name)
    request = kad.Message(
        kad.MessageType.PUT_VALUE, key=key, record=kad.Record(key, encode_record_set([envelope]))
    )
    _, reply = await kad_request(conn, request)
    return reply is not None and reply.type == kad.MessageType.PUT_VALUE


async def record_squat(t: Target, p: Params) -> Report:
    """``publishers`` throwaway identities each publish a record for ``name`` first, then leave."""
    publishers = p.get("publishers", 16)
    name = p.get("name", "victim")
    src = sources()
    stored = 0
    refused = 0

    async def squat(i: int) -> None:
        nonlocal stored, refused
        key_pair = KeyPair.generate()
        try:
            async with connect(t, key_pair=key_pair, source=next(src)) as conn:
                if await _put(conn, name, _record(key_pair, name, {"squatter": i})):
                    stored += 1
                else:
                    refused += 1
        except REFUSALS:
            refused += 1

    async with trio.open_nursery() as nursery:
        for i in range(publishers):
            nursery.start_soon(squat, i)
    return {"stored": stored, "refused": refused}


# 10 ----------------------------------------------------------------------------------------------------


async def record_flood(t: Target, p: Params) -> Report:
    """One identity PUTs ``records`` tiny records under distinct names, ``streams`` at a time."""
    records = p.get("records", 10_000)
    n_streams = p.get("streams", 8)
    key_pair = KeyPair.generate()
    stored = 0
    refused = 0
    names = iter(range(records))
    async with connect(t, key_pair=key_pair) as conn:

        async def flood() -> None:
            nonlocal stored, refused
            stream = None
            buf = None
            for i in names:
                name = f"spam-{i}"
                key = record_key(name)
                envelope = _record(key_pair, name, {})
                request = kad.Message(
                    kad.MessageType.PUT_VALUE, key=key, record=kad.Record(key, encode_record_set([envelope]))
                )
                try:
                    if stream is None:
                        stream = await conn.open(kad.PROTOCOL_ID)
                        buf = BufferedStream(stream)
                    assert buf is not None
                    await stream.send_all(kad.encode_framed(request))
                    await buf.receive_length_prefixed(kad.MAX_MESSAGE_SIZE)
                    stored += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    refused += 1  # refused records reset their stream
                    stream = None
                    if conn.closed:
                        return

        with trio.move_on_after(p.get("max_duration", 30.0)):
            async with trio.open_nursery() as nursery:
                for _ in range(n_streams):
                    nursery.start_soon(flood)
    return {"stored": stored, "refused": refused}


# 11 ----------------------------------------------------------------------------------------------------


async def protocol_flood(t: Target, p: Params) -> Report:
    """``identities`` peers, each identifying with ``protocol_bytes`` of protocol names, then leaving."""
    identities = p.get("identities", 300)
    total = p.get("protocol_bytes", 62_000)
    concurrency = p.get("concurrency", 16)
    src = sources()
    identified = 0
    failed = 0
    limiter = trio.CapacityLimiter(concurrency)

    async def one() -> None:
        nonlocal identified, failed
        salt = os.urandom(4).hex()
        # 60 characters each (62 bytes with their protobuf tag and length): distinct in every identity
        names = [
            f"/adversary/{salt}/{i:05d}/{os.urandom(16).hex()}"[:60].ljust(60, "x")
            for i in range(total // 62)
        ]
        persona = Persona(protocols=[identify.PROTOCOL_ID, ping.PROTOCOL_ID, *names])
        async with limiter:
            try:
                async with connect(t, persona=persona, source=next(src)):
                    with trio.fail_after(10):
                        await persona.identified.wait()
                    identified += 1
                    await trio.sleep(0.2)  # let the node take it in, then leave
            except REFUSALS:
                failed += 1

    async with trio.open_nursery() as nursery:
        for _ in range(identities):
            nursery.start_soon(one)
    return {"identified": identified, "failed": failed}


# 12 ----------------------------------------------------------------------------------------------------


async def churn_rounds(t: Target, p: Params) -> Report:
    """``rounds`` rounds: ``per_round`` fresh identities that listen (so they are nodes, not one-shot
    clients) join, stay until the monitor pinged them, and leave together."""
    src = sources()
    joined_total = pinged_total = 0
    for r in range(p.get("rounds", 5)):
        joined, pinged = await _churn_round(t, src, r, p)
        joined_total += joined
        pinged_total += pinged
        emit(event="round", round=r + 1, joined=joined, pinged=pinged)
    return {"joined": joined_total, "pinged": pinged_total}


async def _churn_round(t: Target, src: Iterator[str], r: int, p: Params) -> tuple[int, int]:
    per_round = p.get("per_round", 1000)
    leave = trio.Event()
    joined = pinged = 0
    limiter = trio.CapacityLimiter(p.get("concurrency", 64))

    async def one(i: int) -> None:
        nonlocal joined, pinged
        persona = Persona(listen_addrs=fake_addrs(1, start=r * per_round + i))
        async with AsyncExitStack() as stack:
            try:
                async with limiter:
                    conn = await stack.enter_async_context(connect(t, persona=persona, source=next(src)))
            except REFUSALS:
                return
            joined += 1
            with trio.move_on_after(5):
                while persona.pings_answered == 0 and not conn.closed:
                    await trio.sleep(0.05)
            pinged += persona.pings_answered > 0
            await leave.wait()

    async with trio.open_nursery() as nursery:
        for i in range(per_round):
            nursery.start_soon(one, i)
        with trio.move_on_after(p.get("round_timeout", 20.0)):
            while joined < per_round or pinged < joined:
                await trio.sleep(0.05)
        leave.set()
    return joined, pinged


# 13 ----------------------------------------------------------------------------------------------------


async def held_streams(t: Target, p: Params) -> Report:
    """Identify-push and ping streams negotiated, then never used; when does the node close them?"""
    per_protocol = p.get("per_protocol", 100)
    hold_max = p.get("hold_max", 15.0)
    report: Report = {}
    async with connect(t) as conn:
        started = trio.current_time()
        closed: dict[str, list[float]] = {identify.PUSH_PROTOCOL_ID: [], ping.PROTOCOL_ID: []}
        opened: Counter[str] = Counter()

        async def hold(protocol: str) -> None:
            try:
                stream = await conn.open(protocol)
            except REFUSALS:
                return
            opened[protocol] += 1
            await read_all(stream)  # returns once the node ends or resets the stream
            closed[protocol].append(trio.current_time() - started)

        with trio.move_on_after(hold_max):
            async with trio.open_nursery() as nursery:
                for protocol in closed:
                    for _ in range(per_protocol):
                        nursery.start_soon(hold, protocol)
        for protocol, times in closed.items():
            report[protocol] = {
                "opened": opened[protocol],
                "closed": len(times),
                "max_seconds": round(max(times), 2) if times else None,
            }
        report["connection_closed"] = conn.closed
    return report


# 14 ----------------------------------------------------------------------------------------------------


async def big_keys(t: Target, p: Params) -> Report:
    """GET_VALUE and FIND_NODE with ``key_size``-byte keys; then HTTP requests ending in bare LF."""
    key_size = p.get("key_size", 1_000_000)
    repeats = p.get("repeats", 20)
    replies: list[dict[str, Any]] = []
    async with connect(t) as conn:

        async def ask(kind: kad.MessageType) -> None:
            key = os.urandom(key_size)
            try:
                size, reply = await kad_request(conn, kad.Message(kind, key=key), timeout=30)
            except REFUSALS as e:
                replies.append({"type": kind.name, "error": _why(e)})
                return
            replies.append(
                {"type": kind.name, "reply_bytes": size, "echoed": bool(reply and key[:64] in reply.key)}
            )

        async with trio.open_nursery() as nursery:
            for _ in range(repeats):
                nursery.start_soon(ask, kad.MessageType.GET_VALUE)
                nursery.start_soon(ask, kad.MessageType.FIND_NODE)
    http = {}
    # `echo 'GET /metrics HTTP/1.0' | nc 127.0.0.1 PORT`: the head ends at a bare LF, and nothing follows.
    for name, request in {
        "HTTP/1.0 line, bare LF, nothing more": b"GET /metrics HTTP/1.0\n",
        "HTTP/1.1 head, bare LFs, no blank line": b"GET /metrics HTTP/1.1\nHost: 127.0.0.1\n",
        "HTTP/1.1 head, bare LFs": b"GET /metrics HTTP/1.1\nHost: 127.0.0.1\n\n",
    }.items():
        http[name] = await _first_line(t, request)
    return {"kad": replies, "http": http}


async def _first_line(t: Target, request: bytes) -> dict[str, Any]:
    """Send ``request`` to the metrics port; the answer's first line and how long it took."""
    started = trio.current_time()
    tcp = await tcp_from("127.0.0.2", "127.0.0.1", t.metrics_port)
    data = b""
    try:
        await tcp.send_all(request)
        with trio.move_on_after(15):
            while b"\r\n" not in data and (chunk := await tcp.receive_some(4096)):
                data += chunk
    except (OSError, trio.BrokenResourceError):
        pass
    finally:
        await trio.aclose_forcefully(tcp)
    return {
        "first_line": data.split(b"\r\n", 1)[0].decode(errors="replace"),
        "seconds": round(trio.current_time() - started, 3),
    }


ATTACKS: dict[str, Callable[[Target, Params], Awaitable[Report]]] = {
    f.__name__: f
    for f in (
        idle,
        yamux_ping_flood,
        kad_streams,
        identify_addr_flood,
        add_provider_flood,
        no_key_flood,
        fresh_identities,
        slow_http,
        record_squat,
        record_flood,
        protocol_flood,
        churn_rounds,
        held_streams,
        big_keys,
    )
}


def main(argv: list[str]) -> int:
    name, raw = argv
    config = json.loads(raw)
    target = Target(
        "127.0.0.1",
        config["port"],
        PeerId.from_string(config["peer_id"]),
        bytes.fromhex(config["psk"]),
        config["metrics_port"],
    )
    raise_fd_limit()

    async def run() -> None:
        report = await ATTACKS[name](target, config)
        report["attacker_cpu_seconds"] = round(time.process_time(), 1)
        print(json.dumps({"report": report}), flush=True)

    trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
