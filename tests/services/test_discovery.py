import base64
import hashlib

import trio
import trio.testing

from physarum.dht.maintenance import NotJoinedError
from physarum.services.discovery import (
    Advertiser,
    AdvertiserOptions,
    service_cid,
    service_cid_text,
    service_key,
)


def test_service_key_is_sha256_multihash_and_cid_v1_raw() -> None:
    digest = hashlib.sha256(b"hello-world").digest()
    assert service_key("hello-world") == b"\x12\x20" + digest
    assert service_cid("hello-world") == b"\x01\x55\x12\x20" + digest
    text = "b" + base64.b32encode(service_cid("hello-world")).decode().lower().rstrip("=")
    assert service_cid_text("hello-world") == text
    assert text.startswith("bafkrei")  # every CIDv1 raw sha2-256 reads so


class FakeDHT:
    def __init__(self) -> None:
        self.calls: list[float] = []
        self.fail = True

    async def provide(self, key: bytes, *, timeout: float | None = None) -> int:
        self.calls.append(trio.current_time())
        if self.fail:
            raise NotJoinedError("nobody to ask")
        return 3


class FakeHost:
    def __init__(self) -> None:
        self.on_connect: list = []  # type: ignore[type-arg]
        self.connections: dict[object, list[object]] = {}

    def connect(self, peer: object) -> None:
        self.connections[peer] = [object()]
        for cb in list(self.on_connect):
            cb(self.connections[peer][0])


async def test_advertiser_retries_with_backoff_then_reprovides_after_reconnect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dht, host = FakeDHT(), FakeHost()
    adv = Advertiser("svc", dht, host, AdvertiserOptions(reprovide_interval=3600, retry_min=1, retry_max=4))
    async with trio.open_nursery() as nursery:
        await nursery.start(adv.run)
        await trio.sleep(10)
        # failures at 0, 1, 3 (1+2), 7 (3+4), then every 4 s
        assert [round(t) for t in dht.calls[:4]] == [0, 1, 3, 7]
        dht.fail = False
        n = len(dht.calls)
        host.connect("bootstrap")  # a connection while failing: provide at once
        await trio.sleep(0.01)
        assert len(dht.calls) == n + 1 and adv.provided == 1
        host.connect("client-proxy")  # busy node: no provide per connection
        await trio.sleep(100)
        assert len(dht.calls) == n + 1
        host.connections.clear()  # isolated, then reconnected
        host.connect("bootstrap")
        await trio.sleep(0.01)
        assert adv.provided == 2
        await trio.sleep(3600)
        assert adv.provided == 3  # periodic
        nursery.cancel_scope.cancel()
    assert host.on_connect == []
