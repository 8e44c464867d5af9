"""js-libp2p peers (tests/interop/js/peer.mjs) dialing a physarum ping monitor in a private network."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from physarum.psk import generate_psk, load_key_file, write_key_file
from tests.integration.test_monitor import monitor_node, rtt_series, scrape, wait_scrape
from tests.interop.partner import PartnerError, js_peer_argv, open_partner

pytestmark = pytest.mark.interop


async def test_js_peer_with_the_same_psk_appears_and_one_with_another_never_does(tmp_path: Path) -> None:
    good_key, bad_key = tmp_path / "good.key", tmp_path / "bad.key"
    write_key_file(good_key, generate_psk())
    write_key_file(bad_key, generate_psk())
    interval = 0.5
    async with (
        monitor_node(load_key_file(good_key), interval=interval) as node,
        open_partner(js_peer_argv("--psk-file", str(good_key))) as good,
        open_partner(js_peer_argv("--psk-file", str(bad_key))) as bad,
    ):
        target = str(node.host.addrs[0])
        reply = await good.call("dial", addr=target, timeout=15)
        assert reply["peer_id"] == str(node.host.peer_id)
        metrics = await wait_scrape(
            node, lambda m: good.peer_id in rtt_series(m), what="the js peer's ping_rtt"
        )
        assert 0 < rtt_series(metrics)[good.peer_id] < 1000
        labels = next(lab for lab, _ in metrics["ping_rtt"] if lab["targetHost"] == good.peer_id)
        assert labels["host"] == "monitor-under-test"

        # The other key: the dial fails (js may only give up at its own timeout) and nothing shows.
        with pytest.raises(PartnerError):
            await bad.call("dial", addr=target, timeout=20, timeout_ms=15000)
        metrics = await scrape(node)
        assert bad.peer_id not in str(metrics)
        assert metrics["physarum_peers_connected"] == [({}, 1.0)]

        # js aborts an inbound ping stream 10 s after it opened: the monitor replaces the stream
        # without counting a failure, and the js peer stays in the metrics throughout.
        stats = node.monitor.peers[node.host.connected_peers()[0]]
        assert str(stats.peer_id) == good.peer_id
        with trio.fail_after(30):
            while trio.current_time() - node.host.connection(stats.peer_id).opened_at < 12:  # type: ignore[union-attr]
                assert good.peer_id in rtt_series(await scrape(node))
                await trio.sleep(interval)
        assert stats.failures == 0, stats.failures_by_reason
        assert stats.successes >= 20
        assert stats.streams_opened >= 2  # js did abort the first stream
        assert bad.peer_id not in str(await scrape(node))
