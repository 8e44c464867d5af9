"""MonitorMetrics, node_registry and the exposition (formats, gzip, no ``_created``)."""

from __future__ import annotations

import gzip

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from physarum.monitor.metrics import (
    CONTENT_TYPE,
    DROP_REASONS,
    FAILURE_REASONS,
    PING_RTT_HELP,
    RTT_BUCKETS,
    MonitorMetrics,
    WithoutCreated,
    node_registry,
    render_exposition,
)

TARGET = "12D3KooWQrEbutuv991JegVdQhzqv6v3MKjckZRtkdKnKqvHuNVM"


def families(registry: CollectorRegistry) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    from prometheus_client.exposition import generate_latest

    out: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        out[fam.name] = [(s.name, s.labels, s.value) for s in fam.samples]
    return out


def test_physarumsm_names_help_and_labels() -> None:
    registry = CollectorRegistry()
    m = MonitorMetrics(registry, hostname="edge-7")
    m.observe(TARGET, 0.00125, 1.5)
    text = m.exposition().decode()
    assert f"# HELP ping_rtt {PING_RTT_HELP}" in text
    assert "# TYPE ping_rtt gauge" in text
    assert "# TYPE ping_ewma_rtt gauge" in text
    fams = families(registry)
    ((name, labels, rtt),) = fams["ping_rtt"]
    assert (name, labels) == ("ping_rtt", {"targetHost": TARGET, "host": "edge-7"})
    assert rtt == pytest.approx(1.25)
    assert fams["ping_ewma_rtt"] == [("ping_ewma_rtt", {"targetHost": TARGET, "host": "edge-7"}, 1.5)]


def test_histogram_buckets_cover_lan_to_edge() -> None:
    assert RTT_BUCKETS[0] == 0.00005 and RTT_BUCKETS[-1] == 5.0
    assert list(RTT_BUCKETS) == sorted(RTT_BUCKETS)
    registry = CollectorRegistry()
    m = MonitorMetrics(registry, hostname="h", peer_histograms=True)
    for rtt in (0.00004, 7.0):
        m.observe(TARGET, rtt, 0.04)
        m.ping_result("ok", rtt)
    for name in ("physarum_ping_rtt_seconds", "physarum_pings_rtt_seconds"):  # per peer, all together
        buckets = {s[1]["le"]: s[2] for s in families(registry)[name] if s[0].endswith("_bucket")}
        assert buckets["5e-05"] == 1
        assert buckets["5.0"] == 1
        assert buckets["+Inf"] == 2


def test_per_peer_histograms_are_optional_and_the_aggregate_stays() -> None:
    registry = CollectorRegistry()
    m = MonitorMetrics(registry, hostname="h")  # the default: no per-peer histograms
    for i in range(3):
        m.observe(f"peer-{i}", 0.001, 1.0)
        m.ping_result("ok", 0.001)
    fams = families(registry)
    assert fams.get("physarum_ping_rtt_seconds", []) == []
    assert registry.get_sample_value("physarum_pings_rtt_seconds_count") == 3
    assert registry.get_sample_value("physarum_pings_rtt_seconds_bucket", {"le": "0.001"}) == 3
    assert len(fams["ping_rtt"]) == 3  # the per-peer gauges stay


def test_failure_drops_rtt_gauges_and_counts() -> None:
    registry = CollectorRegistry()
    m = MonitorMetrics(registry, hostname="h")
    m.observe(TARGET, 0.001, 1.0)
    m.failed(TARGET, "timeout")
    m.failed(TARGET, "timeout")
    m.failed(TARGET, "closed")
    get = registry.get_sample_value
    assert get("ping_rtt", {"targetHost": TARGET, "host": "h"}) is None
    assert get("ping_ewma_rtt", {"targetHost": TARGET, "host": "h"}) is None
    assert get("physarum_peer_reachable", {"peer": TARGET}) == 0
    assert get("physarum_ping_failures_total", {"peer": TARGET, "reason": "timeout"}) == 2
    assert get("physarum_ping_failures_total", {"peer": TARGET, "reason": "closed"}) == 1


def test_forget_removes_every_series_and_tolerates_missing_ones() -> None:
    registry = CollectorRegistry()
    m = MonitorMetrics(registry, hostname="h")
    m.forget(TARGET)  # nothing there yet
    m.observe(TARGET, 0.001, 1.0)
    for reason in FAILURE_REASONS:
        m.failed(TARGET, reason)
    m.observe("other", 0.002, 2.0)
    m.forget(TARGET)
    for samples in families(registry).values():
        for _, labels, _ in samples:
            assert TARGET not in labels.values()
    assert registry.get_sample_value("ping_rtt", {"targetHost": "other", "host": "h"}) == 2.0


def test_forget_history_keeps_only_reachability() -> None:
    registry = CollectorRegistry()
    m = MonitorMetrics(registry, hostname="h")
    m.observe(TARGET, 0.001, 1.0)
    m.failed(TARGET, "timeout")
    m.forget_history(TARGET)
    named = [(name, labels) for samples in families(registry).values() for name, labels, _ in samples]
    assert [name for name, labels in named if TARGET in labels.values()] == ["physarum_peer_reachable"]
    assert registry.get_sample_value("physarum_peer_reachable", {"peer": TARGET}) == 0


def test_aggregates_start_at_zero_for_every_label() -> None:
    """Every ``result`` and drop ``reason`` is there from the start, so rate() sees the first increase."""
    registry = CollectorRegistry()
    m = MonitorMetrics(registry, hostname="h")
    get = registry.get_sample_value
    for result in ("ok", *FAILURE_REASONS):
        assert get("physarum_pings_total", {"result": result}) == 0
    for reason in DROP_REASONS:
        assert get("physarum_metrics_peers_dropped_total", {"reason": reason}) == 0
    assert get("physarum_peers_reachable") == 0 and get("physarum_metrics_peers") == 0
    m.ping_result("ok")
    m.ping_result("timeout")
    m.ping_result("ok")
    assert get("physarum_pings_total", {"result": "ok"}) == 2
    assert get("physarum_pings_total", {"result": "timeout"}) == 1


def test_label_names() -> None:
    registry = CollectorRegistry()
    m = MonitorMetrics(registry, hostname="h", peer_histograms=True)
    m.observe(TARGET, 0.001, 1.0)
    m.failed(TARGET, "timeout")
    m.observe(TARGET, 0.001, 1.0)
    labels = {name: set(samples[0][1]) for name, samples in families(registry).items() if samples}
    assert labels["ping_rtt"] == labels["ping_ewma_rtt"] == {"targetHost", "host"}
    assert labels["physarum_ping_rtt_seconds"] == {"peer", "le"}
    assert labels["physarum_ping_failures"] == {"peer", "reason"}
    assert labels["physarum_peer_reachable"] == {"peer"}
    assert labels["physarum_build_info"] == {"version", "python"}
    assert "physarum_routing_table_peers" not in families(registry)


# -- node_registry: process metrics --


def test_node_registry_has_process_platform_and_gc_metrics() -> None:
    registry = node_registry()
    names = {s.name for m in registry.collect() for s in m.samples}
    if REGISTRY.get_sample_value("process_resident_memory_bytes") is not None:  # /proc is there
        assert {
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        } <= names
        assert (registry.get_sample_value("process_resident_memory_bytes") or 0) > 0
    assert "python_info" in names
    assert "python_gc_collections_total" in names
    MonitorMetrics(registry, hostname="h")  # the monitor's metrics go on the same registry


def test_node_registries_are_independent() -> None:
    a, b = node_registry(), node_registry()
    MonitorMetrics(a, hostname="a")
    MonitorMetrics(b, hostname="b")  # no "Duplicated timeseries": a fresh registry each time
    assert a is not b


# -- the exposition --


def scraped(body: bytes, content_type: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    parse = openmetrics_families if content_type.startswith("application/openmetrics-text") else None
    text = body.decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in (parse or text_string_to_metric_families)(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def busy_registry() -> CollectorRegistry:
    registry = node_registry()
    m = MonitorMetrics(registry, hostname="h", peer_histograms=True)
    m.observe(TARGET, 0.001, 1.0)
    m.failed("other", "timeout")
    return registry


PROMETHEUS_2_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_3_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,"
    "text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)


@pytest.mark.parametrize("accept", ["", "*/*", "text/plain", "text/plain;version=0.0.4", "text/html"])
def test_classic_format_keeps_the_0_0_4_content_type(accept: str) -> None:
    body, headers = render_exposition(busy_registry(), accept=accept)
    assert headers == [("Content-Type", CONTENT_TYPE)]
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert b"# EOF" not in body
    assert scraped(body, CONTENT_TYPE)["ping_rtt"] == [({"targetHost": TARGET, "host": "h"}, 1.0)]


@pytest.mark.parametrize("accept", ["application/openmetrics-text", PROMETHEUS_2_ACCEPT, PROMETHEUS_3_ACCEPT])
def test_openmetrics_when_asked(accept: str) -> None:
    body, headers = render_exposition(busy_registry(), accept=accept)
    ((name, content_type),) = headers
    assert name == "Content-Type"
    assert content_type.startswith("application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert body.endswith(b"# EOF\n")
    metrics = scraped(body, content_type)
    assert metrics["ping_rtt"] == [({"targetHost": TARGET, "host": "h"}, 1.0)]
    assert metrics["physarum_ping_failures_total"] == [({"peer": "other", "reason": "timeout"}, 1.0)]
    assert "process_cpu_seconds_total" in metrics or "python_info" in metrics


@pytest.mark.parametrize(
    "accept", ["application/openmetrics-text", PROMETHEUS_2_ACCEPT, PROMETHEUS_3_ACCEPT, "text/plain"]
)
@pytest.mark.parametrize("odd_name", [None, "recorded:by_rule", "dotted.name"])
def test_the_same_bytes_as_prometheus_clients_own_encoder(accept: str, odd_name: str | None) -> None:
    """OpenMetrics is rendered without prometheus_client's per-character escaping of names when every
    name is plain: the bytes must be those of its own encoder all the same, and so when a name is not."""
    registry = CollectorRegistry()  # no process metrics: they change between two collections
    m = MonitorMetrics(registry, hostname="h")
    m.observe(TARGET, 0.001, 1.0)
    m.failed("other", "timeout")
    if odd_name == "recorded:by_rule":
        Counter(odd_name, "a name with a colon", registry=registry).inc()
    elif odd_name is not None:
        Counter(odd_name, "UTF-8 names", ["label.name"], registry=registry).labels("x").inc()
    body, headers = render_exposition(registry, accept=accept)
    encoder, content_type = choose_encoder(accept)
    assert body == encoder(WithoutCreated(registry))
    if accept != "text/plain":
        assert headers == [("Content-Type", content_type)]


def test_text_format_1_0_0_when_asked_for_it() -> None:
    """A scraper that names version 1.0.0 of the text format gets prometheus_client's label for it."""
    _, headers = render_exposition(busy_registry(), accept="text/plain;version=1.0.0")
    assert headers[0][1].startswith("text/plain; version=1.0.0")


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate, gzip;q=0.8", "GZIP"])
def test_gzip_when_accepted(accept: str, encoding: str) -> None:
    registry = busy_registry()
    plain, plain_headers = render_exposition(registry, accept=accept)
    body, headers = render_exposition(registry, accept=accept, accept_encoding=encoding)
    assert headers == [*plain_headers, ("Content-Encoding", "gzip")]
    assert b"ping_rtt{" in gzip.decompress(body)
    assert len(body) < len(plain)


@pytest.mark.parametrize("encoding", ["", "identity", "deflate", "br"])
def test_no_gzip_unless_accepted(encoding: str) -> None:
    body, headers = render_exposition(busy_registry(), accept_encoding=encoding)
    assert [h for h, _ in headers] == ["Content-Type"]
    assert body.startswith(b"# HELP")


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text"])
def test_no_created_series_in_either_format(accept: str) -> None:
    registry = busy_registry()
    body, _ = render_exposition(registry, accept=accept)
    assert b"_created" not in body
    assert b"physarum_ping_failures_total{" in body and b"physarum_ping_rtt_seconds_count{" in body
    assert b"_created" not in MonitorMetrics(CollectorRegistry(), hostname="h").exposition()
    # prometheus_client itself still makes them: nothing global was switched off
    raw = {s.name for m in registry.collect() for s in m.samples}
    assert {"physarum_pings_created", "physarum_metrics_peers_dropped_created"} <= raw
    c = Counter("embedder_events", "An embedding program's counter.", registry=CollectorRegistry())
    assert any(s.name == "embedder_events_created" for m in c.collect() for s in m.samples)


def test_without_created_keeps_a_gauge_named_created_and_never_mutates() -> None:
    from prometheus_client import Gauge

    registry = CollectorRegistry()
    Gauge("job_created", "A gauge whose name ends in _created.", registry=registry).set(3)
    counter = Counter("jobs", "Jobs.", registry=registry)
    counter.inc()
    view = WithoutCreated(registry)
    samples = {s.name for m in view.collect() for s in m.samples}
    assert samples == {"job_created", "jobs_total"}
    assert {s.name for m in registry.collect() for s in m.samples} == {
        "job_created",
        "jobs_total",
        "jobs_created",
    }


def test_name_filter_as_prometheus_client() -> None:
    body, _ = render_exposition(busy_registry(), names=["ping_rtt", "physarum_peer_reachable"])
    metrics = scraped(body, CONTENT_TYPE)
    assert set(metrics) == {"ping_rtt", "physarum_peer_reachable"}


# -- per-peer series: compact, and safe to scrape from another thread --


def test_a_peer_costs_well_under_a_kilobyte_of_series() -> None:
    """prometheus_client's labelled children cost ~6.4 KB a peer (a value and a lock per number)."""
    import tracemalloc

    m = MonitorMetrics(CollectorRegistry(), hostname="h")
    peers = [f"12D3KooW{i:044d}" for i in range(1000)]
    m.observe("warm-up", 0.001, 1.0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for peer in peers:
            m.observe(peer, 0.001, 1.0)
            m.failed(peer, "timeout")
            m.observe(peer, 0.002, 1.1)
        per_peer = (tracemalloc.get_traced_memory()[0] - before) / len(peers)
    finally:
        tracemalloc.stop()
    assert per_peer < 1024
    assert len(m.peer_series) == 1001


def test_scrapes_in_another_thread_while_series_change() -> None:
    """The exposition is rendered in a worker thread while the trio thread changes the series."""
    import sys
    import threading

    registry = CollectorRegistry()
    m = MonitorMetrics(registry, hostname="h")
    for i in range(500):
        m.observe(f"stays-{i}", 0.001, 1.0)
    stop = threading.Event()
    errors: list[BaseException] = []
    scrapes = 0

    def scrape() -> None:
        nonlocal scrapes
        while not stop.is_set():
            try:
                render_exposition(registry, accept="")
            except BaseException as e:  # what the test looks for
                errors.append(e)
                return
            scrapes += 1

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so a scrape overlaps the changes
    thread = threading.Thread(target=scrape)
    thread.start()
    try:
        round_ = 0
        while (scrapes < 5 and not errors) or round_ < 5:
            for i in range(100):
                m.observe(f"p{round_}-{i}", 0.001, 1.0)
                if i % 2:
                    m.failed(f"p{round_}-{i}", "closed")
            for i in range(100):
                m.forget(f"p{round_}-{i}")
            round_ += 1
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(switch)
    assert errors == [] and scrapes > 0
