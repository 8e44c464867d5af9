"""Private networks over real TCP: a host outside the network is turned away fast and harmlessly."""

from __future__ import annotations

import logging

import pytest
import trio

from physarum.errors import DialError
from physarum.overlay.host import open_host
from physarum.psk import PskMismatchError, generate_psk, psk_from_passphrase
from tests.integration._util import ECHO, HandlerLog, Recorder, connection_count, echo_round_trip, wait_until

HOST_LOGGER = "physarum.overlay.host"


def _closing_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The listener's "refused connection from <addr>: <reason>" records (the exception is ``r.error``)."""
    return [r for r in caplog.records if r.name == HOST_LOGGER and isinstance(getattr(r, "error", None), Exception)]


KEYS = {
    "different-keys": (generate_psk(), generate_psk()),
    "dialer-psk-listener-none": (generate_psk(), None),
    "dialer-none-listener-psk": (None, generate_psk()),
}


@pytest.mark.parametrize("dialer_psk,listener_psk", list(KEYS.values()), ids=list(KEYS))
async def test_psk_mismatch_fails_fast_and_touches_nothing(
    caplog: pytest.LogCaptureFixture, dialer_psk: bytes | None, listener_psk: bytes | None
) -> None:
    caplog.set_level(logging.INFO, logger=HOST_LOGGER)
    async with open_host(psk=dialer_psk) as a, open_host(psk=listener_psk) as b:
        handlers = {h: HandlerLog() for h in (a, b)}
        for h, log in handlers.items():
            h.set_handler(ECHO, log)
        recs = [Recorder(a), Recorder(b)]

        with trio.fail_after(2), pytest.raises(DialError) as info:
            await a.connect(b.addrs[0])
        errors = list(info.value.errors.values())
        assert any(isinstance(e, PskMismatchError) for e in errors), errors

        # The listener noticed, logged why and closed the connection.
        await wait_until(lambda: bool(_closing_records(caplog)), timeout=2, what="listener logs the refusal")
        refusal = _closing_records(caplog)[0]
        assert isinstance(refusal.error, PskMismatchError), refusal.error
        assert refusal.getMessage().count("127.0.0.1") == 1 and len(refusal.getMessage()) < 200

        for h, log in handlers.items():
            assert log.calls == [], f"{h.peer_id} ran an application handler"
            assert not h.connections and connection_count(h) == 0
        for rec in recs:
            assert rec.connected == [] and rec.disconnected == []

        # Both hosts still serve their own networks.
        async with open_host(psk=listener_psk) as friend:
            stream = await friend.new_stream(b.addrs[0], [ECHO])
            await echo_round_trip(stream)
            await stream.aclose()
            assert len(handlers[b].calls) == 1
            assert len(await friend.ping(b.peer_id)) == 1
        async with open_host(psk=dialer_psk) as friend:
            assert len(await a.ping(friend.addrs[0])) == 1


async def test_the_reverse_direction_fails_too() -> None:
    async with open_host(psk=generate_psk()) as a, open_host(psk=generate_psk()) as b:
        for dialer, listener in ((a, b), (b, a)):
            with trio.fail_after(2), pytest.raises(DialError) as info:
                await dialer.connect(listener.addrs[0])
            assert any(isinstance(e, PskMismatchError) for e in info.value.errors.values())
        assert not a.connections and not b.connections


async def test_passphrase_derived_keys_join_the_same_network() -> None:
    psk = psk_from_passphrase("correct horse battery staple")
    async with (
        open_host(psk=psk) as a,
        open_host(psk=psk_from_passphrase("correct horse battery staple")) as b,
    ):
        assert len(await a.ping(b.addrs[0], count=3)) == 3
    async with open_host(psk=psk) as a, open_host(psk=psk_from_passphrase("wrong horse")) as b:
        with trio.fail_after(2), pytest.raises(DialError):
            await a.connect(b.addrs[0])
