"""A 300-node real-socket DHT network: every node holds at most the high-water mark of connections
once settled, and every random find_peer succeeds.

Three processes (``bench/_swarm_node.py``, driven by :func:`bench._swarm_run.run_swarm`, the code
``bench/dht.py --swarm 300`` runs) of 100 physarum hosts each on 127.0.0.1, every one running the
Kademlia DHT with the default connection manager, all joining through one bootstrap node. Without
the manager each node ended up holding ~135 connections (45% of the network).

Slow by nature: joining 300 nodes costs ~300 CPU-seconds in this code base with or without the
connection manager (bench/dht.py --swarm 300 --no-trim shows the baseline), about 3 minutes on two
free cores. Deselect it with ``-m "not slow"``.
"""

from __future__ import annotations

import pytest
from bench._swarm_run import SwarmConfig, SwarmError, run_swarm

from physarum.overlay.connmgr import DEFAULT_CONN_MANAGER

pytestmark = pytest.mark.slow


async def test_300_nodes_hold_at_most_high_water_connections_and_find_every_peer() -> None:
    assert DEFAULT_CONN_MANAGER.high_water <= 100
    cfg = SwarmConfig(
        nodes=300,
        procs=3,
        lookups=60,
        seed=11,
        # generous deadlines: the machine may be shared; the figures, not the time, are checked
        join_timeout=900.0,
        settle_timeout=180.0,
    )
    try:
        result = await run_swarm(cfg)
    except SwarmError as e:
        pytest.fail(f"the swarm failed at {e.stage}: {e}")
    summary = {
        k: result.get(k) for k in ("join_s", "settle_s", "connections_after_join", "connections_settled")
    }
    assert result["join_failures"] == [], result["join_failures"]
    assert result["settled"], f"some node stayed over {cfg.high} connections: {summary}"
    assert result["connections_settled"]["max"] <= DEFAULT_CONN_MANAGER.high_water
    assert result["trimmed_connections"] > 0  # the manager did the work, not a small network
    assert result["lookups"] == 60
    assert result["lookup_success"] == 1.0, result["lookup_failures"]
