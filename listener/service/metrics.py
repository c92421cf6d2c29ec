"""Prometheus metrics: one ``CollectorRegistry`` per ``Metrics`` (never the global one).

Names follow ``hangup_listener_<what>_<unit>``, ``_total`` on counters. Labels are bounded sets
only (node, endpoint, status, bye reason, outcome): never a call id or a phone number.
Counters are incremented where things happen (``call_classified``, ``delivery_attempted``);
everything else is read at scrape time from what the daemon already keeps (the ESL sources'
state and ``ESLStats``, the outbox statistics, readiness, each endpoint's circuit), so it can
never drift. Beside them: ``hangup_listener_build_info`` and prometheus_client's standard
``process_*`` and ``python_*`` collectors, registered on the same registry.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from listener import __version__
from listener.esl.source import ESLSource
from listener.service import logs
from listener.webhooks.endpoint import Attempted

PREFIX = "hangup_listener"
STATES = ("starting", "connecting", "connected", "backoff", "stopped")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class EndpointFigures(Protocol):
    """One endpoint's outbox figures (``listener.outbox.store.EndpointStats`` has this shape)."""

    @property
    def endpoint(self) -> str: ...
    @property
    def pending(self) -> int: ...
    @property
    def dead(self) -> int: ...
    @property
    def oldest_pending_age(self) -> float | None: ...


OutboxStats = Callable[[], Iterable[EndpointFigures]]


class CircuitState(Protocol):
    @property
    def open(self) -> bool: ...


class DeliveryLoop(Protocol):
    """One endpoint's delivery loop (``listener.webhooks.endpoint.EndpointDelivery`` has this shape)."""

    @property
    def circuit(self) -> CircuitState: ...


DeliveryLoops = Callable[[], Mapping[str, DeliveryLoop]]
"""Every configured endpoint's delivery loop, by endpoint name."""


def _gauge(what: str, doc: str, labels: Sequence[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{what}", doc, labels=list(labels))


def _counter(what: str, doc: str, labels: Sequence[str]) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{what}", doc, labels=list(labels))


class ESLCollector(Collector):
    """Connection state, reconnects and rejections of every FreeSWITCH node, read at scrape time."""

    def __init__(self, sources: Sequence[ESLSource]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        state = _gauge("esl_connection_state", "1 for the node's current connection state", ["node", "state"])
        counters = {
            "reconnects": _counter("esl_reconnects", "Connections established after the first", ["node"]),
            "connect_failures": _counter("esl_connect_failures", "Failed connection attempts", ["node"]),
            "frames_rejected": _counter("esl_frames_rejected", "Malformed ESL frames", ["node"]),
            "events_rejected": _counter("esl_events_rejected", "Well-framed but unusable events", ["node"]),
            "handler_failures": _counter("call_handler_failures", "Events whose handling raised", ["node"]),
            "gaps": _counter("esl_gaps", "Reconnections after a lost connection (events missed)", ["node"]),
            "gap_seconds": _counter(
                "esl_gap_seconds", "Time without a connection between losing and regaining one", ["node"]),
            "freeswitch_restarts": _counter(
                "freeswitch_restarts", "Core-UUID changes seen: FreeSWITCH restarted", ["node"]),
        }
        received = _counter("events_received", "ESL events received, by event name", ["node", "event"])
        for source in self.sources:
            name, stats = source.node.name, source.stats
            for event, count in sorted(stats.events_received.items()):
                received.add_metric([name, event], count)
            for value in STATES:
                state.add_metric([name, value], 1.0 if source.state == value else 0.0)
            counters["reconnects"].add_metric([name], max(source.connections - 1, 0))
            counters["connect_failures"].add_metric([name], stats.connect_failures)
            counters["frames_rejected"].add_metric([name], stats.frames_rejected)
            counters["events_rejected"].add_metric([name], stats.events_rejected)
            counters["handler_failures"].add_metric([name], stats.handler_failures)
            counters["gaps"].add_metric([name], stats.gaps)
            counters["gap_seconds"].add_metric([name], stats.gap_seconds)
            counters["freeswitch_restarts"].add_metric([name], stats.freeswitch_restarts)
        yield from (received, state, *counters.values())


class ProviderCollector(Collector):
    """Readiness and the outbox figures, asked of their owners at scrape time."""

    def __init__(self) -> None:
        self.ready: Callable[[], bool] | None = None
        self.outbox: OutboxStats | None = None
        self.waiting: Callable[[], tuple[int, int]] | None = None
        """(open calls, legs waiting for them)."""
        self.loops: DeliveryLoops | None = None
        self.log = logging.getLogger("listener.service.metrics")

    def collect(self) -> Iterator[Metric]:
        if self.ready is not None:
            ready = _gauge("ready", "1 when /readyz answers 200", [])
            ready.add_metric([], 1.0 if self.ready() else 0.0)
            yield ready
        if self.outbox is not None:
            yield from self._outbox(self.outbox)
        if self.waiting is not None:
            calls, legs = self.waiting()
            open_calls = _gauge("calls_open", "Calls with a leg hung up, waiting for the legs they name", [])
            open_calls.add_metric([], float(calls))
            waiting = _gauge("calls_waiting_legs", "Legs hung up whose call is not over yet", [])
            waiting.add_metric([], float(legs))
            yield from (open_calls, waiting)
        if self.loops is not None:
            yield self._circuits(self.loops())

    @staticmethod
    def _circuits(loops: Mapping[str, DeliveryLoop]) -> Metric:
        circuit = _gauge("webhook_circuit_open",
                         "1 while the endpoint cannot be reached: its messages wait, one is sent as a probe",
                         ["endpoint"])
        for name, loop in sorted(loops.items()):
            circuit.add_metric([name], 1.0 if loop.circuit.open else 0.0)
        return circuit

    def _outbox(self, provider: OutboxStats) -> Iterator[Metric]:
        try:
            rows = list(provider())
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because the outbox did
            self.log.warning("outbox statistics unavailable: %s", type(exc).__name__)
            return
        labels = ["endpoint"]
        pending = _gauge("outbox_pending_messages", "Messages waiting for delivery", labels)
        dead = _gauge("outbox_dead_messages", "Messages given up on (kept for the operator)", labels)
        oldest = _gauge("outbox_oldest_pending_age_seconds", "Age of the oldest pending message", labels)
        for row in rows:
            pending.add_metric([row.endpoint], row.pending)
            dead.add_metric([row.endpoint], row.dead)
            oldest.add_metric([row.endpoint], row.oldest_pending_age or 0.0)
        yield from (pending, dead, oldest)


class LogCollector(Collector):
    """Log lines the daemon's output dropped (``listener.service.logs``), read at scrape time."""

    def collect(self) -> Iterator[Metric]:
        dropped = _counter("log_lines_dropped", "Log lines dropped: stdout not read in time, or failing", [])
        dropped.add_metric([], logs.dropped_total())
        yield dropped


class ProcessFigures(ProcessCollector):
    """prometheus_client's ``process_*`` collector, which also works under the unit's ``ProcSubset=pid``.

    The stock one reads the boot time from ``/proc/stat``, which ``ProcSubset=pid`` hides, and then
    exports nothing at all. Here the boot time comes from ``CLOCK_BOOTTIME``; every other figure is
    read from ``/proc/self``, which the unit leaves visible.
    """

    def _boot_time(self) -> float:
        if not hasattr(time, "CLOCK_BOOTTIME"):  # not Linux: no /proc/self either, nothing is exported
            raise OSError("no CLOCK_BOOTTIME")
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class Metrics:
    """The daemon's metrics; ``render()`` is the body of ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.providers = ProviderCollector()
        self.registry.register(self.providers)
        self.registry.register(LogCollector())
        ProcessFigures(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes...
        PlatformCollector(registry=self.registry)  # python_info
        GCCollector(registry=self.registry)  # python_gc_*
        build = Info(f"{PREFIX}_build", "The daemon's version and the Python running it (always 1)",
                     registry=self.registry)
        build.info({"version": __version__, "python": platform.python_version()})
        self.calls = Counter(
            f"{PREFIX}_calls_classified", "Call legs classified, by node, status and bye reason",
            ["node", "status", "bye_reason"], registry=self.registry,
        )
        self._children: dict[tuple[Any, ...], Any] = {}
        """The label children of the per-call and per-attempt metrics (``_child``), one per combination."""
        self.completed = Counter(
            f"{PREFIX}_calls_completed",
            "Calls completed (call.completed), by node, status and whether every leg was seen",
            ["node", "status", "complete"], registry=self.registry,
        )
        self.deliveries = Counter(
            f"{PREFIX}_webhook_deliveries", "Webhook delivery attempts, by endpoint and outcome",
            ["endpoint", "outcome"], registry=self.registry,
        )
        self.recovered = Counter(
            f"{PREFIX}_cdr_recovered", "Legs recovered from CDR files (missed by the Event Socket)",
            ["node"], registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_webhook_delivery_latency_seconds", "Time from sending a webhook to its answer",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )

    def cdr_recovered(self, node: str, count: int) -> None:
        """Legs taken from CDR files that the Event Socket had not delivered."""
        self.recovered.labels(node=node).inc(count)

    def watch_sources(self, sources: Sequence[ESLSource]) -> None:
        """Expose the state and counters of these ESL sources."""
        self.registry.register(ESLCollector(sources))

    def watch_ready(self, ready: Callable[[], bool]) -> None:
        """Expose ``hangup_listener_ready`` (alert when 0 for more than a minute)."""
        self.providers.ready = ready

    def watch_outbox(self, stats: OutboxStats) -> None:
        """Expose pending/dead counts and the oldest pending age per endpoint (called at each scrape)."""
        self.providers.outbox = stats

    def watch_circuits(self, loops: DeliveryLoops) -> None:
        """Expose whether each endpoint's circuit is open (asked of its delivery loop at each scrape)."""
        self.providers.loops = loops

    def call_classified(self, node: str, document: Mapping[str, Any]) -> None:
        status, bye_reason = str(document.get("status")), str(document.get("bye_reason"))
        self._child(self.calls, node=node, status=status, bye_reason=bye_reason).inc()

    def call_completed(self, node: str, document: Mapping[str, Any]) -> None:
        complete = "true" if document.get("complete") else "false"
        self._child(self.completed, node=node, status=str(document.get("status")), complete=complete).inc()

    def watch_calls(self, waiting: Callable[[], tuple[int, int]]) -> None:
        """Expose the calls still open and their waiting legs (asked at each scrape)."""
        self.providers.waiting = waiting

    def delivery_attempted(self, attempt: Attempted) -> None:
        """One webhook attempt, counted by its kind: a small fixed set (delivered, failed, gave_up)."""
        self._child(self.deliveries, endpoint=attempt.endpoint, outcome=attempt.kind).inc()
        self._child(self.latency, endpoint=attempt.endpoint).observe(attempt.latency_s)

    def _child(self, metric: Any, **labels: str) -> Any:
        """``metric.labels(**labels)``, kept, one per combination: ``labels()`` takes a lock and checks every
        value each call (~2 us)."""
        key = (id(metric), *labels.values())
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(**labels)
        return child

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return bytes(generate_latest(self.registry))
