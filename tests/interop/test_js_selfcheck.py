"""Self-check of the js-libp2p partner (tests/interop/js/peer.mjs) and its harness (partner.py).

Two js peers talk to each other, so these tests pass or fail on js-libp2p and the harness alone,
before any physarum code is involved. They need ``npm ci`` in tests/interop/js.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest
import trio

from tests.interop import partner as partner_module
from tests.interop.partner import (
    Partner,
    PartnerError,
    PartnerExited,
    PartnerSetupError,
    PartnerTimeout,
    js_peer_argv,
    open_partner,
    write_psk_key_file,
)

pytestmark = pytest.mark.interop

PING = "/ipfs/ping/1.0.0"
IDENTIFY = "/ipfs/id/1.0.0"
KAD = "/ipfs/kad/1.0.0"


def test_js_peer_argv_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(partner_module, "JS_DIR", tmp_path)
    with pytest.raises(PartnerSetupError, match="run npm ci in tests/interop/js"):
        js_peer_argv()


async def test_harness_reports_a_partner_that_exits_before_ready() -> None:
    script = "import sys; print('not json'); print('boom', file=sys.stderr); sys.exit(3)"
    with pytest.raises(PartnerExited, match="before it was ready") as failure:
        async with open_partner([sys.executable, "-c", script], ready_timeout=10):
            pass  # pragma: no cover
    assert failure.value.returncode == 3
    assert "boom" in failure.value.stderr


async def test_harness_kills_a_partner_that_never_gets_ready() -> None:
    script = "import time; time.sleep(60)"
    with trio.fail_after(15):
        with pytest.raises(PartnerTimeout, match="not ready"):
            async with open_partner([sys.executable, "-c", script], ready_timeout=0.5, stop_timeout=1):
                pass  # pragma: no cover


async def test_ready_event_and_failing_commands_do_not_kill(psk_file: Path) -> None:
    async with open_partner(js_peer_argv("--psk-file", str(psk_file))) as js:
        assert js.peer_id.startswith("12D3KooW")
        assert js.addrs and all(a.startswith("/ip4/127.0.0.1/tcp/") for a in js.addrs)
        assert all(a.endswith(f"/p2p/{js.peer_id}") for a in js.addrs)
        with pytest.raises(PartnerError, match="unknown command"):
            await js.call("no_such_command", timeout=5)
        with pytest.raises(PartnerError, match=r"127\.0\.0\.1"):
            await js.call("dial", addr="/ip4/10.1.2.3/tcp/4001", timeout=5)
        with pytest.raises(PartnerError):
            await js.call("ping", peer="not-a-peer-id", timeout=5)
        with pytest.raises(PartnerError, match="kad is not enabled"):
            await js.call("routing_table", timeout=5)
        assert (await js.call("peers", timeout=5))["peers"] == []
    assert js.returncode == 0


async def test_seed_gives_deterministic_identity() -> None:
    seed = "00" * 32
    async with open_partner(js_peer_argv("--seed", seed, "--no-listen")) as a:
        assert a.addrs == []
    async with open_partner(js_peer_argv("--seed", seed, "--no-listen")) as b:
        pass
    assert a.peer_id == b.peer_id


async def test_bad_psk_file_is_a_start_up_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("/key/swarm/psk/1.0.0/\n/base16/\nnot-hex")
    with pytest.raises(PartnerError, match="could not start"):
        async with open_partner(js_peer_argv("--psk-file", str(bad))):
            pass  # pragma: no cover


async def test_same_psk_dial_ping_identify(psk_file: Path) -> None:
    async with (
        open_partner(js_peer_argv("--psk-file", str(psk_file))) as a,
        # js refuses more than 5 inbound connections per second from one host by default;
        # bench_connect below opens several in a row
        open_partner(js_peer_argv("--psk-file", str(psk_file), "--inbound-threshold", "100")) as b,
    ):
        reply = await a.call("dial", addr=b.addrs[0], timeout=15)
        assert reply["peer_id"] == b.peer_id
        await a.wait_event("connect", peer_id=b.peer_id, timeout=5)
        await b.wait_event("connect", peer_id=a.peer_id, timeout=5)
        assert (await a.call("peers"))["peers"] == [b.peer_id]

        rtts_ms = (await a.call("ping", peer=b.peer_id, count=3, timeout=15))["rtts_ms"]
        assert len(rtts_ms) == 3 and all(r >= 0 for r in rtts_ms)  # js rounds to whole ms
        rtts_us = (await b.call("bench_ping", peer=a.peer_id, count=5, timeout=15))["rtts_us"]
        assert len(rtts_us) == 5 and all(r > 0 for r in rtts_us)

        info = await a.call("identify", peer=b.peer_id, timeout=15)
        assert info["source"] == "identify"
        assert info["peer_id"] == b.peer_id
        assert {PING, IDENTIFY} <= set(info["protocols"])
        assert KAD not in info["protocols"]
        assert info["listen_addrs"] and info["listen_addrs"][0].startswith("/ip4/127.0.0.1/tcp/")
        assert info["observed_addr"].startswith("/ip4/127.0.0.1/tcp/")
        assert info["agent_version"].startswith("js-libp2p/")
        # protobuf PublicKey{Type=Ed25519 (1), Data=32 bytes}
        assert base64.b64decode(info["public_key_b64"])[:4] == bytes([0x08, 0x01, 0x12, 0x20])
        assert info["signed_peer_record"]["addrs"] == info["listen_addrs"]

        stored = await a.call("peerstore", peer=b.peer_id)
        assert PING in stored["protocols"]
        assert any(addr.startswith("/ip4/127.0.0.1/tcp/") for addr in stored["addrs"])

        # a full multiaddr works as a ping target as well
        assert len((await b.call("ping", peer=a.addrs[0], timeout=15))["rtts_ms"]) == 1

        mark = len(b.events)
        await a.call("hangup", peer=b.peer_id, timeout=10)
        await b.wait_event("disconnect", peer_id=a.peer_id, after=mark, timeout=10)

        times = (await a.call("bench_connect", addr=b.addrs[0], count=6, timeout=30))["times_us"]
        assert len(times) == 6 and all(t > 0 for t in times)


async def test_different_psk_fails_to_connect(tmp_path: Path) -> None:
    key_a, key_b = tmp_path / "a.key", tmp_path / "b.key"
    write_psk_key_file(key_a)
    write_psk_key_file(key_b)
    async with (
        open_partner(js_peer_argv("--psk-file", str(key_a))) as a,
        open_partner(js_peer_argv("--psk-file", str(key_b))) as b,
    ):
        # a wrong key shows up as garbage at multistream-select; js may only give up at its
        # own 10 s dial timeout, hence the generous limit
        with trio.fail_after(20):
            with pytest.raises(PartnerError) as failure:
                await a.call("dial", addr=b.addrs[0], timeout_ms=15_000, timeout=20)
        assert failure.value.error
        assert (await a.call("peers"))["peers"] == []
        assert (await b.call("peers"))["peers"] == []
        assert not [e for e in a.events + b.events if e["event"] == "connect"]


async def _routing_table(p: Partner) -> list[str]:
    reply = await p.call("routing_table", timeout=5)
    assert reply["mode"] == "server"
    peers: list[str] = reply["peers"]
    return peers


async def test_kad_peers_see_each_other(psk_file: Path) -> None:
    argv = js_peer_argv("--kad", "--psk-file", str(psk_file))
    async with open_partner(argv) as a, open_partner(argv) as b:
        assert await _routing_table(a) == []
        await a.call("dial", addr=b.addrs[0], timeout=15)
        # js adds a peer after identify shows /ipfs/kad/1.0.0 and a ping to it succeeds
        await a.wait_event("kad_add", peer_id=b.peer_id, timeout=15)
        await b.wait_event("kad_add", peer_id=a.peer_id, timeout=15)
        assert await _routing_table(a) == [b.peer_id]
        assert await _routing_table(b) == [a.peer_id]

        info = await a.call("identify", peer=b.peer_id, timeout=15)
        assert KAD in info["protocols"]

        closest = await a.call("closest_peers", key_peer=b.peer_id, timeout=15)
        assert b.peer_id in closest["peers"]

        # a FIND_NODE over the network (not the local peer store): b answers with itself
        found = await a.call("find_peer", peer=b.peer_id, timeout=15)
        assert found["peer_id"] == b.peer_id
        assert found["addrs"] == [b.addrs[0].removesuffix(f"/p2p/{b.peer_id}")]

        # kad pings new contacts itself; a ping command right after must still work
        assert len((await b.call("ping", peer=a.peer_id, count=3, timeout=15))["rtts_ms"]) == 3
