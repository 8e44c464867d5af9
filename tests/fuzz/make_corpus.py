"""Write the seed corpus of every harness: valid encodings from physarum's own encoders, in each
harness's input format, and a few edge cases. Deterministic (fixed keys, nonces and times), so a
rerun rewrites the same files; run it after changing a harness's input format:

    .venv/bin/python tests/fuzz/make_corpus.py

It replaces ``tests/fuzz/corpus/<name>/seed-*`` and leaves other files there (inputs a fuzzing run
found worth keeping, added by hand) alone.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import fuzz_envelope
import fuzz_http
import fuzz_identify
import fuzz_kad
import fuzz_noise
import fuzz_records
import nacl.bindings as sodium

from physarum.dht import messages, records
from physarum.overlay import envelope, identify, multistream, noise, pb, varint, yamux
from physarum.overlay.identity import KeyPair, PeerId, PublicKey
from physarum.overlay.multiaddr import Multiaddr
from physarum.psk.keyfile import format_key_file
from physarum.psk.xsalsa20 import XSalsa20

CORPUS = Path(__file__).resolve().parent / "corpus"

ADDRS = [
    "/ip4/127.0.0.1/tcp/4001",
    "/ip6/::1/tcp/4001/ws",
    "/ip4/192.0.2.7/udp/4001/quic-v1/webtransport",
    "/dns4/example.com/tcp/443/wss",
    "/dnsaddr/bootstrap.libp2p.io",
    "/ip4/127.0.0.1/tcp/4001/tls/sni/example.com/ws",
    "/ip6zone/eth0/ip6/fe80::1/tcp/1",
    "/ip4/192.0.2.0/ipcidr/24",
    "/memory/4",
    "/unix/tmp%2Fnode.sock",
    "/ip4/1.2.3.4/tcp/1/http/http-path/a%2Fb",
    "/onion/aaimaq4ygg2iegci:80",
    "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:1234",
    "/garlic32/566niximlxdzpanmn4qouucvua3k7neniwss47li5r6ugoertzuq",
    "/ip4/1.2.3.4/udp/1/webrtc-direct/certhash/uEiAkH5a4DPGKUuOBjYw0CgwjvcJCJMD2K_1aluKR_tpevQ",
    "/ip4/1.2.3.4/tcp/1/p2p-circuit/p2p/QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC",
    "/ip4/1.2.3.4/tcp/1/p2p/k51qzi5uqu5dlvj2baxnqndepeb86cbk3ng7n3i46uzyxzyqj2xjonzllnv0v8",
    "/sctp/1234/dccp/5/udt/utp/noise/https",
]


def _addr(i: int) -> Multiaddr:
    return Multiaddr(ADDRS[i % len(ADDRS)])


def _with_peer(text: str, peer: PeerId) -> Multiaddr:
    return Multiaddr(f"{text}/p2p/{peer}")


def varint_seeds() -> dict[str, bytes]:
    return {
        "zero": b"\x00",
        "one-byte-max": b"\x7f",
        "two-bytes": varint.encode(300),
        "max-uint64": varint.encode(2**64 - 1),
        "non-minimal": b"\x80\x00",
        "eleven-bytes": b"\xff" * 10 + b"\x01",
        "prefixed-message": varint.encode(5) + b"hello",
        "prefixed-truncated": varint.encode(1000) + b"abc",
        "sequence": b"".join(varint.encode(v) for v in (1, 128, 16384, 2**35, 2**63)),
    }


def pb_seeds() -> dict[str, bytes]:
    pair = KeyPair(bytes(32))
    return {
        "public-key": pair.public_key.to_protobuf(),
        "public-key-rsa-type": PublicKey(0, b"\x30" * 40).to_protobuf(),
        "noise-payload": noise.encode_payload(pair, bytes(32)),
        "peer-id-identity": pair.peer_id.to_bytes(),
        "peer-id-sha256": PeerId(b"\x12\x20" + bytes(range(32))).to_bytes(),
        "fixed-width": b"\x09" + bytes(8) + b"\x15" + bytes(4) + b"\x08\x01",
        "nested": pb.encode([(1, pb.encode([(2, b"x"), (3, 7)])), (15, 2**64 - 1), (2**29 - 1, b"")]),
        "group-wire-type": b"\x0b\x0c",
        "field-zero": b"\x02\x00",
    }


def multiaddr_seeds() -> dict[str, bytes]:
    peer = KeyPair(bytes(32)).peer_id
    seeds = {f"bin-{i:02d}": b"\x00" + Multiaddr(text).to_bytes() for i, text in enumerate(ADDRS)}
    seeds["bin-p2p"] = b"\x00" + _with_peer("/ip4/127.0.0.1/tcp/4001", peer).to_bytes()
    seeds["bin-truncated"] = b"\x00" + Multiaddr(ADDRS[0]).to_bytes()[:-1]
    seeds["bin-unknown-code"] = b"\x00" + varint.encode(0x7777) + b"\x00"
    seeds["text-p2p"] = b"\x01" + f"/ip4/127.0.0.1/tcp/4001/ipfs/{peer}".encode()
    seeds["text-ip6-mapped"] = b"\x01/ip6/::ffff:127.0.0.1/tcp/1/"
    seeds["text-percent"] = b"\x01/unix/%2Ftmp%2Fx%zz"
    return seeds


def multistream_seeds() -> dict[str, bytes]:
    header = multistream.encode(multistream.PROTOCOL_ID)
    na = multistream.encode(multistream.NA)
    return {
        "decode-all": b"\x00\x00" + header + multistream.encode("/noise") + na + b"\x05abc",
        "handle-noise": b"\x01\x00" + header + multistream.encode("/noise"),
        "handle-ls-then-unknown-then-yamux": b"\x01\x00"
        + header
        + multistream.encode("ls")
        + multistream.encode("/unknown/1.0.0")
        + multistream.encode("/yamux/1.0.0"),
        "handle-byte-by-byte": b"\x01\x01" + header + multistream.encode("/ipfs/ping/1.0.0"),
        "handle-no-newline": b"\x01\x00" + header + b"\x06/noise",
        "handle-garbage-header": b"\x01\x00" + bytes(range(40)),
        "select-na-then-yes": b"\x02\x03" + header + na + multistream.encode("/yamux/1.0.0"),
        "select-other-answer": b"\x02\x00" + header + multistream.encode("/ipfs/id/1.0.0"),
    }


def _message_1() -> bytes:
    """Noise message 1 from a fixed ephemeral key."""
    initiator = noise.HandshakeState(True, fuzz_noise.INITIATOR)
    initiator.e_priv = bytes(range(5, 37))
    initiator.e_pub = sodium.crypto_scalarmult_base(initiator.e_priv)
    return initiator.write_message()


def pnet_seeds() -> dict[str, bytes]:
    nonce = bytes(range(100, 124))
    message1 = noise.frame(_message_1())
    upgrade = multistream.encode(multistream.PROTOCOL_ID) + multistream.encode(noise.PROTOCOL_ID) + message1
    return {
        "plain-upgrade": b"\x01\x00\x00" + nonce + upgrade,
        "plain-upgrade-small-reads": b"\x01\x05\x03" + nonce + upgrade,
        "plain-read-dry": b"\x03\x07\x00" + nonce + b"hello through pnet" * 3,
        "raw-wrong-key": b"\x00\x00\x00" + nonce + XSalsa20(bytes(32), nonce).process(upgrade),
        "raw-short-nonce": b"\x02\x00\x00" + nonce[:10],
    }


def noise_seeds() -> dict[str, bytes]:
    payload = noise.encode_payload(fuzz_noise.INITIATOR, fuzz_noise.STATIC)
    message1 = _message_1()
    low_order = bytes(32)
    return {
        "payload": b"\x00\x00\x00" + noise.encode_payload(fuzz_noise.INITIATOR, fuzz_noise.STATIC),
        "payload-wrong-static": b"\x00\x00\x00" + noise.encode_payload(fuzz_noise.INITIATOR, bytes(32)),
        "responder-message-1": b"\x01\x00\x00" + noise.frame(message1),
        "responder-message-1-byte-by-byte": b"\x01\x01\x00" + noise.frame(message1) + noise.frame(bytes(64)),
        "initiator-short-message-2": b"\x02\x00\x00" + noise.frame(bytes(50)),
        "message-3-payload": b"\x03\x00\x00" + payload,
        "message-2-payload": b"\x04\x00\x00" + noise.encode_payload(fuzz_noise.RESPONDER, fuzz_noise.STATIC),
        "message-3-low-order-static": b"\x03\x01\x00" + low_order + payload,
        "transport": b"\x05\x00\x00" + b"\x05hello\x00\x03abc",
        "transport-tampered": b"\x05\x01\x04" + b"\x05hello\x03abc",
        "transport-raw": b"\x06\x00\x00" + noise.frame(bytes(20)),
    }


def _frames(*frames: tuple[int, int, int, int, bytes]) -> bytes:
    return b"".join(
        yamux.encode_header(t, f, sid, len(body) if t == 0 else n) + body for t, f, sid, n, body in frames
    )


def yamux_seeds() -> dict[str, bytes]:
    data, window, ping, go_away = (
        yamux.TYPE_DATA,
        yamux.TYPE_WINDOW_UPDATE,
        yamux.TYPE_PING,
        yamux.TYPE_GO_AWAY,
    )
    syn, ack, fin, rst = yamux.FLAG_SYN, yamux.FLAG_ACK, yamux.FLAG_FIN, yamux.FLAG_RST
    server_streams = _frames(
        (window, syn, 1, 0, b""),
        (data, 0, 1, 0, b"echo me"),
        (data, fin, 1, 0, b""),
        (data, syn, 3, 0, b"read once"),
        (window, syn, 5, 0, b""),
        (data, syn, 7, 0, b"big"),
        (window, 0, 7, 1 << 20, b""),
        (ping, syn, 0, 42, b""),
        (go_away, 0, 0, 0, b""),
    )
    client_streams = _frames(
        (window, syn, 2, 0, b""),
        (data, 0, 2, 0, b"x" * 100),
        (window, ack, 1, 0, b""),
        (data, 0, 1, 0, b"answer"),
        (data, fin, 1, 0, b""),
        (window, rst, 2, 0, b""),
    )
    pings = _frames(*[(ping, syn, 0, i, b"") for i in range(40)])
    return {
        "server-streams": b"\x00\x00\x00" + server_streams,
        "server-streams-small-reads": b"\x00\x05\x00" + server_streams,
        "client-with-our-stream": b"\x03\x00\x00" + client_streams,
        "ping-flood-not-reading": b"\x04\x00\x01" + pings,
        "bad-version": b"\x00\x00\x00" + b"\x01" + yamux.encode_header(data, 0, 1, 0)[1:],
        "data-past-window": b"\x00\x00\x00"
        + _frames((window, syn, 1, 0, b""))
        + yamux.encode_header(data, 0, 1, yamux.INITIAL_WINDOW + 1),
        "our-parity": b"\x01\x00\x00" + _frames((window, syn, 1, 0, b"")),
    }


def _identify_message(info: identify.IdentifyInfo) -> bytes:
    body = identify.encode(info)
    return varint.encode(len(body)) + body


def _peer_record_payload(peer: PeerId, seq: int, addrs: list[Multiaddr]) -> bytes:
    fields: list[tuple[int, int | bytes | str | None]] = [(1, peer.to_bytes()), (2, seq)]
    fields += [(3, pb.encode([(1, a.to_bytes())])) for a in addrs]
    return pb.encode(fields)


def identify_seeds() -> dict[str, bytes]:
    pair = fuzz_identify.PEER
    full = identify.IdentifyInfo(
        public_key=pair.public_key,
        listen_addrs=[_addr(0), _addr(1), _addr(3)],
        protocols=["/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/ipfs/kad/1.0.0", "/yamux/1.0.0"],
        observed_addr=_addr(0),
        protocol_version=identify.PROTOCOL_VERSION,
        agent_version="physarum/0.1.0",
        signed_peer_record=envelope.seal_peer_record(pair, 1, [_addr(0)]),
    )
    return {
        "full": b"\x00" + _identify_message(full),
        "bare": b"\x00" + identify.encode(full),
        "other-key": b"\x00"
        + _identify_message(identify.IdentifyInfo(public_key=fuzz_identify.OTHER.public_key)),
        "bad-addr": b"\x00" + pb.encode([(2, b"\x04\x01"), (3, "/a"), (3, b"\xff\xfe")]),
        "record": b"\x01" + _peer_record_payload(pair.peer_id, 7, [_addr(0), _addr(2)]),
        "record-other-peer": b"\x01" + _peer_record_payload(fuzz_identify.OTHER.peer_id, 1, []),
    }


def envelope_seeds() -> dict[str, bytes]:
    pair = fuzz_envelope.SIGNER
    return {
        "peer-record": b"\x00" + envelope.seal_peer_record(pair, 3, [_addr(0), _addr(1)]),
        "other-domain": b"\x00" + envelope.seal(pair, b"other", envelope.PEER_RECORD_TYPE, b"x"),
        "unsigned": b"\x00" + pb.encode([(1, pair.public_key.to_protobuf()), (2, b"\x03\x01"), (3, b"")]),
        "payload": b"\x01" + _peer_record_payload(pair.peer_id, 3, [_addr(0), _addr(5)]),
        "payload-bad-addr": b"\x01"
        + _peer_record_payload(pair.peer_id, 0, [])
        + pb.encode([(3, b"\x0a\x01\x04")]),
    }


def _contact_payload(record_id: str, expires: int, data: bytes = b"{}", endpoints: int = 2) -> bytes:
    fields: list[tuple[int, int | bytes | str | None]] = [(1, record_id)]
    fields += [(2, _addr(i).to_bytes()) for i in range(endpoints)]
    fields += [(3, data), (4, 5), (5, expires)]
    return pb.encode(fields)


def records_seeds() -> dict[str, bytes]:
    pair = fuzz_records.PUBLISHER
    expires = int(fuzz_records.NOW) + 3600
    signed = records.sign_record(
        pair,
        records.ContactRecord("receptionist", (_addr(0),), {"port": 7000}, seq=1, expires=expires),
    )
    own = records.sign_record(pair, records.ContactRecord(str(pair.peer_id), (), {}, expires=expires))
    return {
        "envelope": b"\x00" + signed,
        "envelope-own-peer-id": b"\x00" + own,
        "payload": b"\x01"
        + _contact_payload("receptionist", expires, b'{"port":7000,"tags":["a",1.5,null]}'),
        "payload-peer-id": b"\x01" + _contact_payload(str(pair.peer_id), expires),
        "payload-expired": b"\x01" + _contact_payload("x", expires - 7200),
        "payload-bad-json": b"\x01" + _contact_payload("x", expires, b"[1, NaN]"),
        "payload-json-array": b"\x01" + _contact_payload("x", expires, b"[]"),
        "payload-json-numbers": b"\x01"
        + _contact_payload("x", expires, b'{"a":[1e308,-0.0,12345678901234567890,"\\u00e9",{"b":null}]}'),
        "record-set": b"\x02" + records.encode_record_set([signed, own]),
        "key": b"\x03" + records.record_key("receptionist"),
    }


def kad_seeds() -> dict[str, bytes]:
    sender = fuzz_kad.SENDER
    expires = int(fuzz_kad.WALL_CLOCK) + 3600
    signed = records.sign_record(
        KeyPair(bytes(31) + b"\x0d"), records.ContactRecord("receptionist", (_addr(0),), {}, expires=expires)
    )
    peer = messages.Peer(sender, (_addr(0), _addr(1)), messages.ConnectionType.CONNECTED)
    requests = {
        "find-node": messages.Message(messages.MessageType.FIND_NODE, key=fuzz_kad.PEERS[0].to_bytes()),
        "find-node-self": messages.Message(
            messages.MessageType.FIND_NODE, key=fuzz_kad.NODE.peer_id.to_bytes()
        ),
        "get-value": messages.Message(messages.MessageType.GET_VALUE, key=records.record_key("receptionist")),
        "put-value": messages.Message(
            messages.MessageType.PUT_VALUE,
            key=records.record_key("receptionist"),
            record=messages.Record(records.record_key("receptionist"), records.encode_record_set([signed])),
        ),
        "add-provider": messages.Message(
            messages.MessageType.ADD_PROVIDER, key=b"content", provider_peers=(peer,)
        ),
        "get-providers": messages.Message(messages.MessageType.GET_PROVIDERS, key=b"content"),
        "ping": messages.Message(messages.MessageType.PING),
        "reply-like": messages.Message(
            messages.MessageType.FIND_NODE, key=b"k", closer_peers=(peer,), cluster_level_raw=-1
        ),
    }
    seeds = {name: b"\x00\x00" + messages.encode_framed(m) for name, m in requests.items()}
    seeds["two-requests-small-reads"] = (
        b"\x00\x03"
        + messages.encode_framed(requests["add-provider"])
        + messages.encode_framed(requests["get-providers"])
    )
    seeds["no-sender"] = b"\x01\x00" + messages.encode_framed(requests["add-provider"])
    seeds["bad-peer-entry"] = b"\x00\x00" + messages.frame(
        pb.encode([(1, 4), (8, b"\x0a\x02\x00\x01"), (8, b"\xff")])
    )
    seeds["oversized-length"] = b"\x00\x00" + varint.encode(messages.MAX_MESSAGE_SIZE + 1)
    long_key = messages.Message(messages.MessageType.GET_VALUE, key=b"/physarum/contact/" + b"k" * 3000)
    seeds["long-key-over-budget"] = b"\x00\x00" + messages.encode_framed(long_key)
    return seeds


def keyfile_seeds() -> dict[str, bytes]:
    psk = bytes(range(32))
    pair = KeyPair(bytes(32))
    seeds = {f"swarm-{enc}": b"\x00" + format_key_file(psk, enc) for enc in ("base16", "base64", "bin")}  # type: ignore[arg-type]
    seeds["swarm-crlf-upper"] = b"\x00" + format_key_file(psk).replace(b"\n", b"\r\n").upper()
    seeds["swarm-bare-hex"] = b"\x00" + psk.hex().encode()
    seeds["identity-key"] = b"\x01" + pair.private_key_protobuf()
    seeds["identity-seed-only"] = b"\x01" + pb.encode([(1, 1), (2, bytes(32))])
    seeds["peer-id"] = b"\x02" + str(pair.peer_id).encode()
    seeds["peer-id-qm"] = b"\x02QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC"
    seeds["peer-id-cid"] = b"\x02bafzaajaiaejcalj543iwv2d7pkjt7ykvefrkp5n2rxmhvy2tzxqgzstbwwqa"
    return seeds


def http_seeds() -> dict[str, bytes]:
    def request(*lines: str) -> bytes:
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    token = f"Authorization: Bearer {fuzz_http.TOKEN}"
    return {
        "get-metrics": b"\x00\x00" + request("GET /metrics HTTP/1.1", "Host: node:9100", "Accept: */*"),
        "prometheus-scrape": b"\x00\x07"
        + request(
            "GET /metrics HTTP/1.1",
            "Host: node:9100",
            "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            "Accept-Encoding: gzip",
            "User-Agent: Prometheus/3.0.0",
        ),
        "names-filter": b"\x00\x00" + request("GET /metrics?name[]=ping_rtt&name[]=x HTTP/1.1", "Host: a"),
        "absolute-form": b"\x00\x00" + request("HEAD http://127.0.0.1:9100/metrics HTTP/1.1", "Host: a"),
        "index": b"\x00\x00" + request("GET / HTTP/1.0"),
        "post": b"\x00\x00" + request("POST /metrics HTTP/1.1", "Host: a", "Content-Length: 3") + b"abc",
        "not-found": b"\x00\x00" + request("GET //x/y?q HTTP/1.1", "Host: a"),
        "token": b"\x02\x00" + request("GET /metrics HTTP/1.1", "Host: a", token),
        "token-missing": b"\x02\x00" + request("GET /metrics HTTP/1.1", "Host: a"),
        "bare-lf-kept-open": b"\x01\x00GET /metrics HTTP/1.0\n",
        "slow-head-kept-open": b"\x01\x01GET /metrics HTTP/1.1\r\nHost: a\r\n",
        "tls-hello": b"\x00\x00\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    }


HARNESSES: dict[str, Callable[[], dict[str, bytes]]] = {
    "varint": varint_seeds,
    "pb": pb_seeds,
    "multiaddr": multiaddr_seeds,
    "multistream": multistream_seeds,
    "pnet": pnet_seeds,
    "noise": noise_seeds,
    "yamux": yamux_seeds,
    "identify": identify_seeds,
    "envelope": envelope_seeds,
    "kad": kad_seeds,
    "records": records_seeds,
    "keyfile": keyfile_seeds,
    "http": http_seeds,
}


def main() -> None:
    for name, seeds in HARNESSES.items():
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("seed-*"):
            old.unlink()
        for seed, data in seeds().items():
            (folder / f"seed-{seed}").write_bytes(data)
        print(f"{name}: {len(list(folder.iterdir()))} files", file=sys.stderr)


if __name__ == "__main__":
    main()
