"""A network of machines in miniature: hosts as network namespaces on one bridge (needs root, ``ip``).

Each test runs the real binaries (``ping-monitor``, ``physarum bootstrap``, ``physarum peer``) inside
the hosts of a :func:`tests.netns._netns.lan`, bound to the hosts' addresses on the same port, as on
separate machines, with a private network key file. The monitor's ``/metrics`` is read from inside its
own namespace, so every packet stays in the namespaces the test made. Waits are polls under deadlines.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from physarum.overlay.identity import KeyPair, save_key_pair
from physarum.psk import generate_psk, write_key_file
from tests.integration.test_cli import Proc, binary, peer_id_of, script
from tests.netns._netns import Lan, NetHost, http_get, lan, remove_leftovers, unavailable

#: Every node listens on this port of its host's address (each host has its own ports).
P2P_PORT = 4001
PROM_PORT = 9100
#: The monitor's ping interval and deadline. A cut link shows after at most INTERVAL + PING_TIMEOUT
#: (the next ping starts within an interval, then fails at its deadline; 1.3-1.5 s measured), inside
#: the 2 intervals the bound allows; RTTs on the bridge are well under a millisecond.
INTERVAL = 1.0
PING_TIMEOUT = 0.5
#: How often a poll re-checks; only ever under a deadline.
POLL = 0.05


@pytest.fixture(scope="module", autouse=True)
def namespaces_or_skip() -> None:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    remove_leftovers()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "swarm.key"
    write_key_file(path, generate_psk())
    return path


# -- the nodes --


def node_argv(host: NetHost, command: str, key_file: Path, *flags: str) -> list[str]:
    return host.exec_argv(
        *script(command), "-psk-file", str(key_file), "-p2p-listen-addr", host.listen(P2P_PORT), *flags
    )


def monitor_argv(host: NetHost, key_file: Path, *flags: str) -> list[str]:
    return node_argv(
        host, "ping-monitor", key_file, "-ephemeral", "-prom-listen-addr", host.listen(PROM_PORT),
        "-ping-interval", str(INTERVAL), "-ping-timeout", str(PING_TIMEOUT), *flags,
    )  # fmt: skip


async def started(proc: Proc, host: NetHost) -> str:
    """The one multiaddr ``proc`` prints: on its host's address, at :data:`P2P_PORT`."""
    (addr,) = await proc.addrs()
    assert addr.startswith(f"/ip4/{host.ip4}/tcp/{P2P_PORT}/p2p/12D3KooW"), proc.stdout
    return addr


@asynccontextmanager
async def monitor_on(host: NetHost, key_file: Path) -> AsyncIterator[tuple[Proc, str, str]]:
    """A ping-monitor on ``host``: the process, its multiaddr and its metrics URL."""
    async with binary(monitor_argv(host, key_file)) as proc:
        addr = await started(proc, host)
        url = await proc.metrics_url()
        assert url == f"http://{host.ip4}:{PROM_PORT}/metrics", url
        yield proc, addr, url


async def one_shot(host: NetHost, key_file: Path, *argv: str, timeout: float) -> tuple[int, str, str]:
    """``physarum peer ARGV`` run to its end inside ``host``: exit status, stdout, stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("P2P_PSK", "P2P_BOOTSTRAPS")}
    full = host.exec_argv(*script("peer"), "-psk-file", str(key_file), *argv)
    with trio.fail_after(timeout + 15):  # its own -timeout, and the interpreter's start
        done = await trio.run_process(full, capture_stdout=True, capture_stderr=True, check=False, env=env)
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")


async def find_until(
    host: NetHost, key_file: Path, bootstrap: str, target: str, *flags: str, expected: str, within: float
) -> str:
    """``physarum peer -bootstrap BOOTSTRAP FLAGS find TARGET -timeout 5`` run inside ``host`` again
    and again until its output holds ``expected``; that output. Fails after ``within`` seconds."""
    out = err = ""
    try:
        with trio.fail_after(within):
            while expected not in out:
                _, out, err = await one_shot(
                    host,
                    key_file,
                    "-bootstrap",
                    bootstrap,
                    *flags,
                    "find",
                    target,
                    "-timeout",
                    "5",
                    timeout=5,
                )
    except trio.TooSlowError:
        raise AssertionError(f"find {target} never printed {expected!r}: {out} {err}") from None
    return out


async def stop(proc: Proc) -> None:
    """SIGTERM, and a clean exit within the 2 s the README promises (plus the interpreter's slack)."""
    proc.process.send_signal(signal.SIGTERM)
    assert await proc.exit_within(10) == 0, proc.stderr


# -- the monitor's metrics, read inside its namespace --


class Scrape:
    """One scrape of the monitor: ``ping_rtt`` by peer id, ``physarum_peer_reachable`` by peer id."""

    def __init__(self, text: str) -> None:
        self.rtt: dict[str, float] = {}
        self.reachable: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "ping_rtt":
                    self.rtt[s.labels["targetHost"]] = s.value
                elif s.name == "physarum_peer_reachable":
                    self.reachable[s.labels["peer"]] = s.value

    def __repr__(self) -> str:
        return f"ping_rtt {self.rtt}, physarum_peer_reachable {self.reachable}"


async def scrape(host: NetHost, url: str) -> Scrape:
    status, body = await http_get(host.ns, url)
    assert status == 200, body
    return Scrape(body)


async def wait_scrape(
    host: NetHost, url: str, predicate: Callable[[Scrape], bool], *, timeout: float, what: str
) -> float:
    """Scrape until ``predicate`` holds; return how long it took. Fails after ``timeout`` seconds."""
    start = trio.current_time()
    last: Scrape | None = None
    try:
        with trio.fail_after(timeout):
            while not predicate(last := await scrape(host, url)):
                await trio.sleep(POLL)
    except trio.TooSlowError:
        raise AssertionError(f"{what} not seen within {timeout} s; {last}") from None
    return trio.current_time() - start


# -- the scenarios --


async def test_six_hosts_join_through_one_bootstrap(key_file: Path) -> None:
    with lan(7) as net:
        await six_hosts(net, key_file)


async def six_hosts(net: Lan, key_file: Path) -> None:
    monitor_host, *peer_hosts = net.hosts
    async with monitor_on(monitor_host, key_file) as (_, monitor_addr, url), AsyncExitStack() as stack:
        # The probe endpoint answers over the network too, before anyone has joined.
        assert await http_get(monitor_host.ns, url.replace("/metrics", "/healthz")) == (200, "ok\n")
        peers = [
            await stack.enter_async_context(
                binary(node_argv(h, "peer", key_file, "-bootstrap", monitor_addr))
            )
            for h in peer_hosts
        ]
        ids = {peer_id_of(await started(p, h)) for p, h in zip(peers, peer_hosts, strict=True)}
        assert len(ids) == 6
        await wait_scrape(
            monitor_host, url, lambda s: set(s.rtt) == ids, timeout=30, what="the 6 peers in ping_rtt"
        )
        final = await scrape(monitor_host, url)
        assert all(final.reachable[i] == 1 for i in ids), final
        assert all(rtt < 1000 for rtt in final.rtt.values()), final  # milliseconds, on one bridge


async def test_redundant_bootstrap_keeps_the_network_joinable(tmp_path: Path, key_file: Path) -> None:
    with lan(4) as net:
        first_host, second_host, joiner_host, finder_host = net.hosts
        keys = []
        for name in ("first", "second"):
            pair = KeyPair.generate()
            save_key_pair(tmp_path / f"{name}.key", pair)
            keys.append(pair)
        # Known in advance (from the key files), so both bootstraps get the same list.
        bootstraps = [
            f"/ip4/{h.ip4}/tcp/{P2P_PORT}/p2p/{k.peer_id}"
            for h, k in zip((first_host, second_host), keys, strict=True)
        ]
        listed = [flag for addr in bootstraps for flag in ("-bootstrap", addr)]
        first_argv = node_argv(
            first_host, "bootstrap", key_file, "-keyfile", str(tmp_path / "first.key"), *listed
        )
        second_argv = node_argv(
            second_host, "bootstrap", key_file, "-keyfile", str(tmp_path / "second.key"), *listed
        )
        async with binary(first_argv) as first, binary(second_argv) as second:
            assert await started(first, first_host) == bootstraps[0]
            assert await started(second, second_host) == bootstraps[1]
            # The two joined each other: a client that knows only the second finds the first.
            await find_until(
                finder_host, key_file, bootstraps[1], str(keys[0].peer_id), expected=bootstraps[0], within=30
            )

            first.process.kill()
            await first.exit_within(10)
            joiner_argv = node_argv(joiner_host, "peer", key_file, *listed)
            async with binary(joiner_argv) as joiner:
                joiner_id = peer_id_of(await started(joiner, joiner_host))
                # Seen by the second: a client that knows only the second finds the newcomer's address.
                expected = f"/ip4/{joiner_host.ip4}/tcp/{P2P_PORT}/p2p/{joiner_id}"
                await find_until(
                    finder_host, key_file, bootstraps[1], joiner_id, expected=expected, within=40
                )
                assert second.process.returncode is None and joiner.process.returncode is None


async def test_partition_marks_the_far_host_unreachable_and_heals(key_file: Path) -> None:
    with lan(3) as net:
        monitor_host, near_host, far_host = net.hosts
        async with monitor_on(monitor_host, key_file) as (_, monitor_addr, url):
            near_argv = node_argv(near_host, "peer", key_file, "-bootstrap", monitor_addr)
            far_argv = node_argv(far_host, "peer", key_file, "-bootstrap", monitor_addr)
            async with binary(near_argv) as near, binary(far_argv) as far:
                near_id = peer_id_of(await started(near, near_host))
                far_id = peer_id_of(await started(far, far_host))
                both = {near_id, far_id}
                await wait_scrape(
                    monitor_host, url, lambda s: set(s.rtt) == both, timeout=30, what="both peers"
                )

                net.link_down(far_host)
                took = await wait_scrape(
                    monitor_host,
                    url,
                    lambda s: far_id not in s.rtt and s.reachable.get(far_id) == 0,
                    timeout=10,
                    what="the far peer unreachable",
                )
                assert took <= 2 * INTERVAL, f"the cut link showed after {took:.2f} s, over 2 intervals"
                assert near_id in (await scrape(monitor_host, url)).rtt  # the near side is untouched

                net.link_up(far_host)
                await wait_scrape(
                    monitor_host,
                    url,
                    lambda s: far_id in s.rtt and s.reachable.get(far_id) == 1,
                    timeout=30,
                    what="the far peer back after healing",
                )
                # Healed with no restart: the very same processes.
                assert far.process.returncode is None and near.process.returncode is None


async def test_restart_with_dht_state_rejoins_without_a_bootstrap(tmp_path: Path, key_file: Path) -> None:
    with lan(2) as net:
        monitor_host, node_host = net.hosts
        identity = ["-keyfile", str(tmp_path / "node.key"), "-dht-state", str(tmp_path / "dht.json")]
        async with monitor_on(monitor_host, key_file) as (_, monitor_addr, url):
            first_argv = node_argv(node_host, "peer", key_file, *identity, "-bootstrap", monitor_addr)
            async with binary(first_argv) as node:
                node_id = peer_id_of(await started(node, node_host))
                await wait_scrape(monitor_host, url, lambda s: node_id in s.rtt, timeout=30, what="the node")
                await stop(node)  # a clean exit saves the routing table
            assert peer_id_of(monitor_addr) in (tmp_path / "dht.json").read_text()
            await wait_scrape(
                monitor_host, url, lambda s: node_id not in s.rtt, timeout=10, what="the node gone"
            )

            async with binary(node_argv(node_host, "peer", key_file, *identity)) as again:
                assert peer_id_of(await started(again, node_host)) == node_id  # the same key file
                await wait_scrape(
                    monitor_host, url, lambda s: node_id in s.rtt, timeout=30, what="the restarted node"
                )


async def test_records_published_during_a_partition_are_found_after_healing(key_file: Path) -> None:
    with lan(4) as net:
        monitor_host, publisher_host, other_host, far_host = net.hosts
        async with monitor_on(monitor_host, key_file) as (_, monitor_addr, url), AsyncExitStack() as stack:
            hosts = (publisher_host, other_host, far_host)
            procs = [
                await stack.enter_async_context(
                    binary(node_argv(h, "peer", key_file, "-bootstrap", monitor_addr))
                )
                for h in hosts
            ]
            addrs = [await started(p, h) for p, h in zip(procs, hosts, strict=True)]
            ids = {peer_id_of(a) for a in addrs}
            await wait_scrape(monitor_host, url, lambda s: set(s.rtt) == ids, timeout=30, what="3 peers")
            far_addr = addrs[2]
            far_id = peer_id_of(far_addr)

            net.link_down(far_host)
            await wait_scrape(monitor_host, url, lambda s: far_id not in s.rtt, timeout=10, what="the cut")
            data = {"port": 7000, "side": "publisher"}
            code, out, err = await one_shot(
                publisher_host, key_file, "-bootstrap", monitor_addr, "-dht-query-timeout", "1",
                "publish", "receptionist", "-data", json.dumps(data), "-timeout", "20", timeout=20,
            )  # fmt: skip
            assert code == 0, err
            published = json.loads(out)
            assert published["stored"] >= 1, out
            # The far side, through its own node, cannot see it while cut off.
            code, out, err = await one_shot(
                far_host, key_file, "-bootstrap", far_addr, "find", "receptionist", "-timeout", "3", timeout=3
            )
            assert code != 0 and "7000" not in out, (out, err)

            net.link_up(far_host)
            out = await find_until(
                far_host, key_file, far_addr, "receptionist", "-dht-query-timeout", "2",
                expected='"id": "receptionist"', within=40,
            )  # fmt: skip
            records = [json.loads(line) for line in out.splitlines() if line.strip()]
            assert [(r["id"], r["publisher"], r["data"]) for r in records] == [
                ("receptionist", published["publisher"], data)
            ], records
