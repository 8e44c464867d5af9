"""The resource manager's pure parts: memory budgets, the handshake pool, refusal counts and logs."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from physarum.overlay.resources import (
    HandshakePool,
    MemoryBudget,
    Refusal,
    RefusalLog,
    ResourceCollector,
    ResourceLimits,
    ResourceManager,
    Usage,
)


def test_a_reservation_is_all_or_nothing_across_nested_budgets() -> None:
    system = MemoryBudget(100, name="system")
    a = MemoryBudget(60, parent=system)
    b = MemoryBudget(60, parent=system)
    assert a.try_reserve(60)
    assert not a.try_reserve(1)  # a's own limit
    assert b.available == 40
    assert not b.try_reserve(41)  # the system's limit, though b has room
    assert b.used == 0 and system.used == 60
    assert b.try_reserve(40)
    a.release(60)
    b.release(40)
    assert (a.used, b.used, system.used) == (0, 0, 0)
    b.release(5)  # more than reserved never goes negative
    assert b.used == 0 and system.used == 0
    with pytest.raises(ValueError):
        MemoryBudget(-1)


def test_the_pool_bounds_handshakes_per_ip_and_drops_the_oldest_when_full() -> None:
    pool = HandshakePool(ResourceLimits(max_handshakes=3, max_handshakes_per_ip=2, exempt_networks=()))
    first = pool.admit("10.0.0.1", 0.0)
    second = pool.admit("10.0.0.1", 1.0)
    assert pool.admit("10.0.0.1", 2.0) is Refusal.IP_LIMIT
    third = pool.admit("10.0.0.2", 3.0)
    assert len(pool) == 3
    fourth = pool.admit("10.0.0.3", 4.0)  # full: the oldest goes
    assert not isinstance(first, Refusal) and first.evicted and first.cancel_scope.cancel_called
    assert not isinstance(second, Refusal) and not second.evicted
    assert len(pool) == 3
    # The evicted one's IP slot came back.
    fifth = pool.admit("10.0.0.1", 5.0)
    assert not isinstance(fifth, Refusal)
    for hs in (first, second, third, fourth, fifth):
        assert not isinstance(hs, Refusal)
        pool.release(hs)
        pool.release(hs)  # twice is harmless
    assert len(pool) == 0 and not pool._per_ip


def test_exempt_networks_skip_the_per_ip_limit_only() -> None:
    pool = HandshakePool(ResourceLimits(max_handshakes=4, max_handshakes_per_ip=1))  # loopback exempt
    admitted = [pool.admit("127.0.0.1", float(i)) for i in range(3)]
    assert not any(isinstance(a, Refusal) for a in admitted)
    assert not isinstance(pool.admit("::1", 3.0), Refusal)
    assert pool.admit("192.0.2.1", 4.0) is not Refusal.IP_LIMIT  # admitted (dropping the oldest)
    assert pool.admit("192.0.2.1", 5.0) is Refusal.IP_LIMIT


def test_refusals_log_the_first_of_each_reason_then_one_summary(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("physarum.test.refusals")
    book = RefusalLog(logger, "connections", interval=60)
    with caplog.at_level(logging.INFO, logger="physarum.test.refusals"):
        for i in range(10_000):
            book.refused(Refusal.PSK_MISMATCH, f"from 192.0.2.{i % 250}:4001", float(i) / 1000)
        book.refused(Refusal.HANDSHAKE_TIMEOUT, "from 192.0.2.9:4001", 9.0)
        book.flush(30.0)  # the interval has not ended: nothing yet
        assert len(caplog.records) == 2
        book.flush(61.0)
        book.flush(200.0)  # nothing new: no line
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0] == "refused connection from 192.0.2.0:4001: psk mismatch"
    assert lines[2] == "refused 10,001 connections in 61 s: psk mismatch 10,000, handshake timeout 1"
    assert caplog.records[2].levelno == logging.INFO
    assert book.totals == {Refusal.PSK_MISMATCH: 10_000, Refusal.HANDSHAKE_TIMEOUT: 1}


def test_a_capacity_summary_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    book = RefusalLog(logging.getLogger("physarum.test.cap"), "connections", interval=10)
    with caplog.at_level(logging.INFO, logger="physarum.test.cap"):
        for _ in range(3):
            book.refused(Refusal.CONNECTION_LIMIT, "from 192.0.2.1:1", 0.0)
        book.flush(10.0)
    assert caplog.records[-1].levelno == logging.WARNING


def test_inbound_streams_are_counted_per_peer_and_protocol() -> None:
    res = ResourceManager(ResourceLimits(max_inbound_streams_per_protocol=2, protocol_stream_limits={"/a": 1}))
    assert res.open_inbound_stream("p1", "/a")
    assert not res.open_inbound_stream("p1", "/a")
    assert res.open_inbound_stream("p2", "/a")
    assert res.open_inbound_stream("p1", "/b") and res.open_inbound_stream("p1", "/b")
    assert not res.open_inbound_stream("p1", "/b")
    res.close_inbound_stream("p1", "/a")
    assert res.open_inbound_stream("p1", "/a")
    for peer, proto in [("p1", "/a"), ("p2", "/a"), ("p1", "/b"), ("p1", "/b")]:
        res.close_inbound_stream(peer, proto)
    assert not res._inbound_streams


def test_peer_budgets_live_inside_the_system_budget_and_go_when_empty() -> None:
    res = ResourceManager(ResourceLimits(memory=100, memory_per_peer=80))
    p1, p2 = res.peer_memory("p1"), res.peer_memory("p2")
    assert res.peer_memory("p1") is p1
    assert p1.try_reserve(80) and not p2.try_reserve(21) and p2.try_reserve(20)
    res.forget_peer("p1")  # still holds memory: kept
    assert res.peer_memory("p1") is p1
    p1.release(80)
    res.forget_peer("p1")
    assert res.peer_memory("p1") is not p1
    assert res.memory.used == 20


def test_the_collector_exports_usage_limits_and_refusals() -> None:
    res = ResourceManager(ResourceLimits(max_connections=10))
    registry = CollectorRegistry()
    registry.register(
        ResourceCollector(res, lambda: Usage(inbound=2, outbound=1, dials=3, streams=7, memory_resets=4, pongs_dropped=5))
    )
    res.refuse_connection(Refusal.PSK_MISMATCH, "from x", 0.0)
    res.refuse_stream(Refusal.STREAM_LIMIT, "ping from y", 0.0)
    get = registry.get_sample_value
    assert get("physarum_resource_connections", {"state": "inbound"}) == 2
    assert get("physarum_resource_connections", {"state": "dialing"}) == 3
    assert get("physarum_resource_streams") == 7
    assert get("physarum_resource_limit", {"resource": "connections"}) == 10
    assert get("physarum_resource_refused_total", {"scope": "connection", "reason": "psk_mismatch"}) == 1
    assert get("physarum_resource_refused_total", {"scope": "stream", "reason": "protocol_stream_limit"}) == 1
    # yamux's own resets and dropped pongs, summed by the host over its sessions
    assert get("physarum_resource_refused_total", {"scope": "stream", "reason": "memory"}) == 4
    assert get("physarum_resource_pongs_dropped_total") == 5
