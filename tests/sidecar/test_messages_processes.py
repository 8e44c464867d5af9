"""Messages through ``physarum sidecar`` processes on 127.0.0.1: lightchain's persister/reader example,
and a storing node killed (SIGKILL) and restarted while a persister writes, with every acknowledged
message counted back."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from pathlib import Path

from physarum.dht import keyspace
from physarum.overlay.identity import PeerId
from physarum.sidecar.messages import topic_key
from tests.integration.test_cli import LOCAL, PASS, Proc, binary, script
from tests.sidecar.test_processes import api_url, call, curl, p2p_addr, until

SIDECAR = [*script("sidecar"), *LOCAL, "-psk", PASS, "-api", "127.0.0.1:0"]


async def bootstrap(stack: AsyncExitStack, tmp_path: Path) -> str:
    boot = await stack.enter_async_context(
        binary([*script("bootstrap"), "-keyfile", str(tmp_path / "boot.key"), *LOCAL, "-psk", PASS])
    )
    return (await boot.addrs())[0]


async def test_persister_and_reader(tmp_path: Path) -> None:
    """lightchain's example: a persister writes "Hello World" with a timestamp; a reader started later
    on another node prints them, the earlier ones included, in order."""
    async with AsyncExitStack() as stack:
        boot = await bootstrap(stack, tmp_path)
        persister = await stack.enter_async_context(
            binary([*SIDECAR, "-bootstrap", boot, "-messages-db", str(tmp_path / "p.db")])
        )
        url_p = await api_url(persister)
        await until("GET", f"{url_p}/v1/info", ok=lambda s, j: j["joined"])
        written = []
        for i in range(3):
            text = f"Hello World {time.strftime('%H:%M:%S')} #{i}"
            status, body = await curl(
                "-X",
                "POST",
                f"{url_p}/v1/topics/hello/messages",
                "-H",
                "Content-Type: application/json",
                "-d",
                f'{{"data": {{"text": "{text}"}}}}',
            )
            assert status == 201, body
            assert body["message"]["seq"] == i + 1 and body["stored"] == 1  # the only store yet
            written.append(text)

        reader = await stack.enter_async_context(
            binary([*SIDECAR, "-bootstrap", boot, "-messages-db", str(tmp_path / "r.db")])
        )
        url_r = await api_url(reader)
        await until("GET", f"{url_r}/v1/info", ok=lambda s, j: j["joined"])
        got = await until(
            "GET", f"{url_r}/v1/topics/hello/messages", ok=lambda s, j: s == 200 and len(j["messages"]) == 3
        )
        assert [m["data"]["text"] for m in got["messages"]] == written
        assert {m["publisher"] for m in got["messages"]} == {(await p2p_addr(persister)).rsplit("/", 1)[1]}

        # later messages reach both stores now, and the reader sees them after the earlier ones
        for i in range(3, 5):
            text = f"Hello World #{i}"
            status, body = await call("POST", f"{url_p}/v1/topics/hello/messages", {"data": {"text": text}})
            assert status == 201 and body["stored"] == 2, body
            written.append(text)
        status, got = await call("GET", f"{url_r}/v1/topics/hello/messages?since=0&limit=1000")
        assert status == 200 and [m["data"]["text"] for m in got["messages"]] == written
        status, got = await call("GET", f"{url_r}/v1/topics/hello/messages?limit=2")
        assert status == 200 and len(got["messages"]) == 2 and got["more"] is True

        # bad input is a 4xx with a code, never a 500
        for method, path, body, expected in [
            ("POST", "/v1/topics/bad%20topic/messages", {"data": 1}, (400, "bad_topic")),
            ("POST", "/v1/topics/t/messages", {"data": "x" * 40000}, (413, "too_large")),
            ("POST", "/v1/topics/t/messages", {}, (400, "bad_body")),
            ("POST", "/v1/topics/t/messages", {"data": 1, "data_base64": "AA=="}, (400, "bad_body")),
            ("POST", "/v1/topics/t/messages", {"data_base64": "!!"}, (400, "bad_body")),
            ("GET", "/v1/topics/t/messages?limit=0", None, (400, "bad_query")),
            ("GET", "/v1/topics/t/messages?since=x", None, (400, "bad_query")),
            ("GET", "/v1/topics/t/messages?limit=1&limit=2", None, (400, "bad_query")),
        ]:
            status, err = await call(method, url_p + path, body)
            assert (status, err["error"]) == expected, (path, err)


async def test_no_acknowledged_message_is_lost_when_a_store_is_killed_and_restarted(tmp_path: Path) -> None:
    topic = "ledger"
    async with AsyncExitStack() as stack:
        boot = await bootstrap(stack, tmp_path)

        def argv(i: int) -> list[str]:
            return [
                *SIDECAR,
                "-bootstrap",
                boot,
                "-keyfile",
                str(tmp_path / f"s{i}.key"),
                "-messages-db",
                str(tmp_path / f"s{i}.db"),
                "-messages-sync-interval",
                "1",
            ]

        stores: dict[int, Proc] = {}
        for i in range(5):
            stores[i] = await stack.enter_async_context(binary(argv(i)))
        urls = {i: await api_url(p) for i, p in stores.items()}
        ids = {i: PeerId.from_string((await p2p_addr(p)).rsplit("/", 1)[1]) for i, p in stores.items()}
        for url in urls.values():
            await until("GET", f"{url}/v1/info", ok=lambda s, j: j["joined"])
        # the persister is node 0; the victim is the store nearest the topic among the others
        nearest = keyspace.sort_by_distance(
            topic_key(topic), [i for i in ids if i != 0], lambda i: keyspace.peer_key(ids[i])
        )
        victim = nearest[0]
        writer = urls[0]
        # wait until node 0 knows all five stores (persist asks for 3 acknowledgements)
        await until(
            "POST",
            f"{writer}/v1/topics/warmup/messages",
            {"data": 0},
            ok=lambda s, j: s == 201 and j["stored"] == 3,
        )

        acked: list[int] = []
        failed = 0

        async def write(n: int) -> None:
            nonlocal failed
            for _ in range(n):
                status, body = await call(
                    "POST", f"{writer}/v1/topics/{topic}/messages", {"data": len(acked) + failed}
                )
                if status == 201:
                    acked.append(body["message"]["seq"])
                else:
                    failed += 1

        await write(20)
        stores[victim].process.kill()  # SIGKILL: no chance to flush or say goodbye
        await stores[victim].process.wait()
        await write(20)
        restarted = await stack.enter_async_context(binary(argv(victim)))
        url_v = await api_url(restarted)
        await until("GET", f"{url_v}/v1/info", ok=lambda s, j: j["joined"])
        await write(20)

        assert len(acked) >= 55, f"only {len(acked)} of 60 persists acknowledged ({failed} failed)"
        # every acknowledged message is there, read from a node that is neither writer nor victim
        reader = urls[next(i for i in urls if i not in (0, victim))]
        got = await until(
            "GET",
            f"{reader}/v1/topics/{topic}/messages?limit=1000",
            ok=lambda s, j: s == 200 and len(j["messages"]) >= len(acked),
        )
        assert set(acked) <= {m["seq"] for m in got["messages"]}
        # the restarted store kept what it had acknowledged before the kill (its disk), and sync
        # fills in what it missed while it was down
        got_v = await until(
            "GET",
            f"{url_v}/v1/topics/{topic}/messages?limit=1000",
            ok=lambda s, j: s == 200 and len(j["messages"]) >= len(acked),
        )
        assert set(acked) <= {m["seq"] for m in got_v["messages"]}


async def test_a_restarted_store_answers_from_its_disk_and_continues_its_chain(tmp_path: Path) -> None:
    """A lone sidecar (no other store to refresh it from): killed and restarted on the same key and
    -messages-db, it answers the earlier messages at once and writes the next seq after them."""
    argv = [*SIDECAR, "-keyfile", str(tmp_path / "k.key"), "-messages-db", str(tmp_path / "m.db")]
    async with binary(argv) as first:
        url = await api_url(first)
        for i in range(3):
            status, body = await call("POST", f"{url}/v1/topics/t/messages", {"data": i})
            assert (status, body["stored"]) == (201, 1), body
        first.process.kill()
        await first.process.wait()
    async with binary(argv) as second:
        url = await api_url(second)
        status, got = await call("GET", f"{url}/v1/topics/t/messages")
        assert status == 200 and [m["data"] for m in got["messages"]] == [0, 1, 2]
        status, body = await call("POST", f"{url}/v1/topics/t/messages", {"data": 3})
        assert status == 201 and body["message"]["seq"] == 4
