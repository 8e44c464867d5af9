"""Fuzz the multiaddr codec (physarum.overlay.multiaddr, and physarum.dht.addrs over it): identify,
kad peers, peer records and contact records all carry binary multiaddrs from peers.

Input: byte 0 picks the form (even: binary, odd: text as UTF-8), the rest is the address. An address
that parses must print, and its text must parse back to the same address; binary and text forms
must agree; every accessor either answers or raises AddressError.

    mkdir -p /tmp/multiaddr && python tests/fuzz/fuzz_multiaddr.py /tmp/multiaddr tests/fuzz/corpus/multiaddr -max_total_time=60
"""

from __future__ import annotations

import _common
import atheris

with atheris.instrument_imports(include=["physarum"]):
    from physarum.dht.addrs import ip_address_of, parse_multiaddr_bytes, parse_multiaddr_text
    from physarum.errors import DecodeError
    from physarum.overlay.multiaddr import AddressError, Multiaddr


def _check(addr: Multiaddr) -> None:
    text = str(addr)
    assert Multiaddr(text) == addr, (text, addr.to_bytes().hex())
    assert str(Multiaddr(text)) == text
    assert Multiaddr(addr.to_bytes()) == addr
    parts = list(addr)
    assert [name for name, _ in parts] == list(addr.protocols())
    for name in addr.protocols():
        assert addr.value_for_protocol(name) is not None
    assert addr.value_for_protocol("p2p") is None or addr.peer_id() is not None
    ip_address_of(addr)
    for what in ("p2p", "tcp", addr.protocols()[-1], addr):
        try:
            rest = addr.decapsulate(what)
        except AddressError:
            continue
        assert rest.to_bytes() == addr.to_bytes()[: len(rest.to_bytes())]
    try:
        addr.encapsulate(addr)
    except AddressError:
        pass


def test_one_input(data: bytes) -> None:
    if not data:
        return
    raw = data[1:]
    if data[0] % 2 == 0:
        try:
            addr = parse_multiaddr_bytes(raw)
        except DecodeError:
            try:
                Multiaddr(raw)
            except AddressError:
                return
            raise AssertionError("parse_multiaddr_bytes refused what Multiaddr accepts") from None
    else:
        text = raw.decode("utf-8", "replace")
        try:
            addr = parse_multiaddr_text(text)
        except DecodeError:
            return
    _check(addr)


if __name__ == "__main__":
    _common.main(test_one_input, max_len=1200)
