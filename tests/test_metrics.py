"""Metrics: names, labels, values read at scrape time, and a registry of its own per instance."""

from __future__ import annotations

import os
import platform
import re
import time
from collections import Counter
from pathlib import Path

from exported import ROOT, Stats, every_metric, families, source
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from listener import __version__
from listener.config.settings import WebhookConfig
from listener.core.signing import Delivered, Retry
from listener.service.metrics import Metrics, ProcessFigures
from listener.webhooks.endpoint import Attempted, EndpointDelivery


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_esl_state_reconnects_and_rejections_are_read_from_the_sources() -> None:
    metrics = Metrics()
    up, down = source("pbx1", "connected", 3), source("pbx2", "backoff", 0)
    up.stats.frames_rejected, down.stats.connect_failures = 2, 5
    up.stats.events_received.update({"HEARTBEAT": 4, "CHANNEL_HANGUP_COMPLETE": 1})
    metrics.watch_sources([up, down])
    got = samples(metrics)
    state = "hangup_listener_esl_connection_state"
    assert got[(state, (("node", "pbx1"), ("state", "connected")))] == 1
    assert got[(state, (("node", "pbx1"), ("state", "backoff")))] == 0
    assert got[(state, (("node", "pbx2"), ("state", "backoff")))] == 1
    assert got[("hangup_listener_esl_reconnects_total", (("node", "pbx1"),))] == 2
    assert got[("hangup_listener_esl_connect_failures_total", (("node", "pbx2"),))] == 5
    assert got[("hangup_listener_esl_frames_rejected_total", (("node", "pbx1"),))] == 2
    assert got[("hangup_listener_events_received_total", (("event", "HEARTBEAT"), ("node", "pbx1")))] == 4


def test_gaps_and_freeswitch_restarts_are_exposed_per_node() -> None:
    metrics = Metrics()
    node = source("pbx1", "connected", 2)
    node.stats.gaps, node.stats.gap_seconds, node.stats.freeswitch_restarts = 2, 7.5, 1
    metrics.watch_sources([node])
    got = samples(metrics)
    assert got[("hangup_listener_esl_gaps_total", (("node", "pbx1"),))] == 2
    assert got[("hangup_listener_esl_gap_seconds_total", (("node", "pbx1"),))] == 7.5
    assert got[("hangup_listener_freeswitch_restarts_total", (("node", "pbx1"),))] == 1


def test_a_classified_call_counts_by_status_and_bye_reason_never_by_number_or_id() -> None:
    metrics = Metrics()
    document = {"status": "busy", "bye_reason": "USER_BUSY", "caller_number": "+4930123456",
                "channel_uuid": "7f3c-uuid", "id": "doc-id"}
    metrics.call_classified("pbx1", document)
    metrics.call_classified("pbx1", document)
    text = metrics.render().decode()
    key = ("hangup_listener_calls_classified_total",
           (("bye_reason", "USER_BUSY"), ("node", "pbx1"), ("status", "busy")))
    assert samples(metrics)[key] == 2
    for private in ("+4930123456", "7f3c-uuid", "doc-id"):
        assert private not in text


def test_each_node_status_and_bye_reason_counts_on_its_own() -> None:
    metrics = Metrics()
    calls = [("pbx1", "busy", "USER_BUSY"), ("pbx2", "busy", "USER_BUSY"), ("pbx1", "busy", "USER_BUSY"),
             ("pbx1", "answered", "USER_BUSY"), ("pbx1", "busy", "CALL_REJECTED"), ("pbx1", None, None)]
    for node, status, reason in calls:
        metrics.call_classified(node, {"status": status, "bye_reason": reason})
    got = {labels: value for (name, labels), value in samples(metrics).items()
           if name == "hangup_listener_calls_classified_total"}
    assert got == {
        (("bye_reason", "USER_BUSY"), ("node", "pbx1"), ("status", "busy")): 2,
        (("bye_reason", "USER_BUSY"), ("node", "pbx2"), ("status", "busy")): 1,
        (("bye_reason", "USER_BUSY"), ("node", "pbx1"), ("status", "answered")): 1,
        (("bye_reason", "CALL_REJECTED"), ("node", "pbx1"), ("status", "busy")): 1,
        (("bye_reason", "None"), ("node", "pbx1"), ("status", "None")): 1,
    }


def test_webhook_deliveries_latency_and_outbox_figures() -> None:
    metrics = Metrics()
    metrics.delivery_attempted(Attempted("crm", "m1", 1, Delivered(200), 0.2))
    metrics.delivery_attempted(Attempted("crm", "m2", 1, Retry("server_error", 500), 0.1))
    metrics.watch_outbox(lambda: [Stats("crm", 3, 1, 42.5), Stats("bi", 0, 0, None)])
    got = samples(metrics)
    deliveries = "hangup_listener_webhook_deliveries_total"
    assert got[(deliveries, (("endpoint", "crm"), ("outcome", "delivered")))] == 1
    assert got[(deliveries, (("endpoint", "crm"), ("outcome", "failed")))] == 1
    assert got[("hangup_listener_webhook_delivery_latency_seconds_count", (("endpoint", "crm"),))] == 2
    assert got[("hangup_listener_outbox_pending_messages", (("endpoint", "crm"),))] == 3
    assert got[("hangup_listener_outbox_dead_messages", (("endpoint", "crm"),))] == 1
    assert got[("hangup_listener_outbox_oldest_pending_age_seconds", (("endpoint", "crm"),))] == 42.5
    assert got[("hangup_listener_outbox_oldest_pending_age_seconds", (("endpoint", "bi"),))] == 0


def test_one_process_exposes_no_metrics_of_the_removed_children() -> None:
    metrics = Metrics()
    metrics.watch_sources([source("pbx1", "connected", 1)])
    metrics.watch_outbox(lambda: [Stats("crm", 0, 0, None)])
    names = {name for name, _ in samples(metrics)}
    assert not [name for name in names if "classify_process" in name or "classify_batches" in name]


def test_a_failing_outbox_provider_does_not_break_the_scrape() -> None:
    metrics = Metrics()

    def broken() -> list[Stats]:
        raise RuntimeError("disk gone")

    metrics.watch_outbox(broken)
    metrics.watch_ready(lambda: False)
    got = samples(metrics)
    assert got[("hangup_listener_ready", ())] == 0
    assert not any(name.startswith("hangup_listener_outbox") for name, _ in got)


def test_each_instance_has_its_own_registry_and_the_global_one_stays_clean() -> None:
    first, second = Metrics(), Metrics()
    first.call_classified("n", {"status": "busy", "bye_reason": "USER_BUSY"})
    assert "hangup_listener_calls_classified_total" in first.render().decode()
    assert 'status="busy"' not in second.render().decode()
    assert not [m for m in REGISTRY.collect() if m.name.startswith("hangup_listener")]


def test_process_and_python_figures_are_on_the_daemons_own_registry() -> None:
    got = samples(Metrics())
    assert got[("process_resident_memory_bytes", ())] > 1_000_000
    assert got[("process_cpu_seconds_total", ())] > 0
    assert got[("process_open_fds", ())] >= 1
    assert abs(got[("process_start_time_seconds", ())] - time.time()) < 24 * 3600
    python = [dict(labels) for (name, labels), value in got.items() if name == "python_info" and value == 1]
    assert [p["version"] for p in python] == [platform.python_version()]
    assert ("python_gc_collections_total", (("generation", "0"),)) in got
    assert not [m for m in REGISTRY.collect() if m.name.startswith("hangup_listener")]


def test_process_figures_need_only_proc_self_as_under_the_units_proc_subset(tmp_path: Path) -> None:
    proc = tmp_path / "proc"  # ProcSubset=pid: /proc/self is there, /proc/stat (the boot time) is not
    (proc / "self" / "fd").mkdir(parents=True)
    (proc / "self" / "stat").write_bytes(Path("/proc/self/stat").read_bytes())
    (proc / "self" / "limits").write_bytes(Path("/proc/self/limits").read_bytes())
    registry = CollectorRegistry()
    ProcessFigures(proc=str(proc), registry=registry)
    started = registry.get_sample_value("process_start_time_seconds")
    assert started is not None
    assert abs(started - real_start_time()) < 2.0
    assert registry.get_sample_value("process_resident_memory_bytes")


def real_start_time() -> float:
    """This process's start time as the stock collector computes it, from /proc/stat's boot time."""
    btime = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                 if line.startswith("btime "))
    ticks = Path("/proc/self/stat").read_bytes().split(b")")[-1].split()[19]
    return btime + float(ticks) / os.sysconf("SC_CLK_TCK")


def test_build_info_names_the_version_and_the_python_running_it() -> None:
    labels = (("python", platform.python_version()), ("version", __version__))
    assert samples(Metrics())[("hangup_listener_build_info", labels)] == 1


def loop(name: str) -> EndpointDelivery:
    config = WebhookConfig(name=name, url="http://127.0.0.1:9/hook", keys=(b"k" * 32,))
    return EndpointDelivery(config, writer=None, clock=time.monotonic,  # type: ignore[arg-type]
                            rng=lambda: 0.5, max_sleep_s=1.0, counts=Counter())


def test_an_open_circuit_is_one_and_every_configured_endpoint_is_present() -> None:
    metrics = Metrics()
    loops = {"crm": loop("crm"), "bi": loop("bi")}
    metrics.watch_circuits(lambda: loops)
    circuit = "hangup_listener_webhook_circuit_open"
    assert {k: v for k, v in samples(metrics).items() if k[0] == circuit} == {
        (circuit, (("endpoint", "bi"),)): 0, (circuit, (("endpoint", "crm"),)): 0}
    assert loops["crm"].circuit.unreachable(100.0, probe=False)  # opened, as a refused request does
    got = samples(metrics)
    assert got[(circuit, (("endpoint", "crm"),))] == 1
    assert got[(circuit, (("endpoint", "bi"),))] == 0
    loops["crm"].circuit.reached()
    loops["new"] = loop("new")  # asked at each scrape: a reload's endpoints show at once
    got = samples(metrics)
    assert got[(circuit, (("endpoint", "crm"),))] == 0
    assert got[(circuit, (("endpoint", "new"),))] == 0


def test_the_operations_guide_lists_every_metric_of_the_daemon() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    table = guide[guide.index("### Metrics"):guide.index("### Alerts")]
    listed = set(re.findall(r"^\| `(\w+)", table, re.MULTILINE))
    ours = {name for name in families(every_metric()) if name.startswith("hangup_listener_")}
    assert ours - listed == set()
    assert listed - ours == set()  # nothing documented that is gone
