"""Wiring: one ESL source per FreeSWITCH node feeding the pipeline; signals; reload; orderly shutdown.

The per-event work (``Pipeline``) is plain synchronous code: classify, build the document, hand it
to the sink (the durable outbox, when configured), then write the one ``call.classified`` line.
Signal handlers only record the signal; ``run_forever`` acts on it: SIGTERM/SIGINT stop, SIGHUP
reloads the rules (and whatever registered in ``reload_hooks``) without touching the connections.
Health, metrics and systemd notifications are ``listener.service``'s.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

import gevent
import gevent.event
import gevent.pool
import structlog

from listener import config as configuration
from listener import logs, payload
from listener.config import Config
from listener.errors import ConfigError, OutboxError
from listener.esl import ESLSource, EventHandler, Node
from listener.event import HANGUP_COMPLETE, HEARTBEAT, HangupEvent, RawEvent
from listener.health import Check
from listener.metrics import Metrics
from listener.offload import ClassifyProcess
from listener.outbox import EndpointStats, with_endpoints
from listener.privacy import Redactor
from listener.service import Service
from listener.sink import OutboxWriter
from listener.worker import DeliveryWorker, InlineDelivery

Classify = Callable[[HangupEvent], payload.Outcome]
Document = dict[str, Any]
Redact = Callable[[Document], Any]
RELOADED = ("classifier", "privacy", "log", "webhooks")
"""What SIGHUP changes in place; every other section needs a restart."""


class Sink(Protocol):
    """Where documents go before they count as handled (the durable outbox)."""

    def put(self, documents: list[Document]) -> object: ...


class Pipeline:
    """The per-event work for one node: classify, build, store durably, log one line."""

    def __init__(
        self,
        classify: Classify,
        node: Node,
        log: Any,
        sink: Sink | None = None,
        *,
        on_sink_failure: Callable[[OutboxError], None] | None = None,
        metrics: Metrics | None = None,
        redact: Redact | None = None,
        offload: ClassifyProcess | None = None,
    ) -> None:
        self.classify = classify
        self.offload = offload
        self.node = node
        self.log = log
        self.sink = sink
        self.on_sink_failure = on_sink_failure
        self.metrics = metrics
        self.redact = redact

    def process(self, event: HangupEvent) -> Document:
        """The classified document for one event (pure)."""
        return payload.build(event, self.classify(event), self.node.name)

    prepare = process

    def presolve(self, events: list[HangupEvent | RawEvent]) -> Callable[[], list[Document | None]]:
        """Send the run's unparsed events to the classify process; the call returns their documents.

        Per event, its document, or None where ``prepare`` must make it (not unparsed, or the
        process could not).
        """
        raws = [(i, event.body) for i, event in enumerate(events) if isinstance(event, RawEvent)]
        none: list[Document | None] = [None] * len(events)
        if self.offload is None or not raws:
            return lambda: none
        collect = self.offload.submit(self.node.name, [body for _, body in raws])

        def documents() -> list[Document | None]:
            ready = none.copy()
            for (i, _), document in zip(raws, collect() or (), strict=False):
                ready[i] = document
            return ready

        return documents

    def __call__(self, event: HangupEvent) -> None:
        self.commit([self.process(event)])

    def commit(self, documents: list[Document]) -> None:
        """Store the documents in one outbox commit, then write one line per call (never before)."""
        if self.sink is not None and not self._store(documents):
            return
        with logs.held():  # the run's lines in one write, flushed when it ends
            for document in documents:
                if self.metrics is not None:
                    self.metrics.call_classified(self.node.name, document)
                self.log.info("call.classified", call=self.redact(document) if self.redact else document)

    def _store(self, documents: list[Document]) -> bool:
        """Commit the documents to the outbox; on failure log each whole (never lost silently)."""
        assert self.sink is not None
        try:
            self.sink.put(documents)
        except OutboxError as exc:
            for document in documents:
                self.log.error("outbox.write_failed", reason=str(exc), call=document)
            if self.on_sink_failure is not None:
                self.on_sink_failure(exc)
            return False
        return True


class NodeHealth:
    """What the last HEARTBEAT of a node said (its FreeSWITCH Core-UUID and host name)."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.core_uuid: str | None = None
        self.hostname: str | None = None
        self.heartbeats = 0

    def __call__(self, event: HangupEvent) -> None:
        self.heartbeats += 1
        self.core_uuid, self.hostname = event.core_uuid, event.hostname
        self.log.debug("esl.heartbeat_received", core_uuid=event.core_uuid)


class App:
    """The daemon: owns every greenlet (one group) and stops them in order.

    Order of shutdown: stop reading FreeSWITCH (events already received are still classified and
    committed), then let webhook requests in flight finish within the deadline, then close the
    outbox. Everything not yet delivered stays in the outbox for the next start.
    """

    def __init__(
        self,
        config: Config,
        classify: Classify,
        sink: Sink | None = None,
        delivery: DeliveryWorker | InlineDelivery | None = None,
        offload: ClassifyProcess | None = None,
    ) -> None:
        self.config = config
        self.sink = sink
        self.delivery = delivery
        self.offload = offload
        self.ingesting = True
        self.log = structlog.get_logger("listener")
        self.group = gevent.pool.Group()
        self.stopping = gevent.event.Event()
        self.metrics = Metrics()
        self.sources: list[ESLSource] = []
        self.pipelines: list[Pipeline] = []
        self.health: dict[str, NodeHealth] = {}
        self.reload_hooks: list[Callable[[Config], None]] = []
        self._wakeup = gevent.event.Event()
        self._reload_requested = False
        redact = Redactor(config.privacy)
        for node in config.nodes:
            node_log = self.log.bind(node=node.name)
            self.health[node.name] = NodeHealth(node_log)
            pipeline = Pipeline(
                classify, node, node_log, sink,
                on_sink_failure=self._sink_failed, metrics=self.metrics, redact=redact, offload=offload,
            )
            self.pipelines.append(pipeline)
            handlers: dict[str, EventHandler] = {HANGUP_COMPLETE: pipeline, HEARTBEAT: self.health[node.name]}
            deferred = frozenset({HANGUP_COMPLETE}) if offload is not None else frozenset()
            self.sources.append(ESLSource(node, config.esl, handlers, self.log, deferred=deferred))
        self.metrics.watch_sources(self.sources)
        self.service = Service(self.sources, self.health, config.health, self.metrics, self.log)
        if delivery is not None and isinstance(sink, OutboxWriter):
            self._watch_delivery(sink, delivery)
        if offload is not None:
            self.metrics.watch_classify(offload)
            self.service.readiness.add("classify_process", lambda: Check(
                ok=offload.running, details={"running": offload.running, "started": offload.started_count,
                                             "batches": offload.batches, "fallbacks": offload.fallbacks}),
                required=False)

    @classmethod
    def from_config(cls, config: Config) -> App:
        """The daemon for ``config``: with webhooks, the outbox is opened (and resumed) first."""
        offload = ClassifyProcess(config.classifier) if config.esl.classify_process else None
        if not config.webhooks:
            return cls(config, config.classifier.classify, offload=offload)
        writer = OutboxWriter.open(config.outbox, config.webhooks)
        delivery: DeliveryWorker | InlineDelivery
        if config.outbox.delivery_process:
            delivery = DeliveryWorker(writer, config.webhooks, config.outbox, config.log.level)
        else:
            delivery = InlineDelivery(writer, config.webhooks)
        return cls(config, config.classifier.classify, writer, delivery, offload)

    def start(self) -> None:
        """Start delivery (pending messages resume), one greenlet per node, the health listener, READY=1."""
        if self.delivery is not None:
            self.delivery.start()
        if self.offload is not None:
            self.offload.start()
        self.log.info("listener.started", nodes=[node.name for node in self.config.nodes])
        loops = {source.node.name: self.group.spawn(source.run) for source in self.sources}
        self.service.start(loops)

    def _watch_delivery(self, writer: OutboxWriter, delivery: DeliveryWorker | InlineDelivery) -> None:
        """Readiness, liveness and metrics of the outbox, the delivery process and its endpoints."""
        self.service.readiness.add("outbox", lambda: Check(
            ok=writer.ready and self.ingesting,
            details={"writable": writer.ready, "ingesting": self.ingesting,
                     "failure": type(writer.failure).__name__ if writer.failure else None}))
        self.service.readiness.add("endpoints", lambda: Check(
            ok=delivery.healthy,
            details={name: {"crashed": name in delivery.crashed} for name in delivery.endpoints}),
            required=False)
        self.service.readiness.add("delivery", lambda: Check(
            ok=delivery.running.is_set(),
            details={"mode": delivery.mode, "running": delivery.running.is_set(),
                     "started": delivery.started_count}),
            required=False)
        self.service.liveness.add(
            "delivery", lambda: None if delivery.healthy else "webhook delivery loop or outbox failed")
        delivery.observers.append(self.metrics.delivery_attempted)

        def outbox_stats() -> tuple[EndpointStats, ...]:
            return with_endpoints(writer.call(writer.outbox.stats, time.time()), delivery.endpoints)

        self.metrics.watch_outbox(outbox_stats)

    def _sink_failed(self, exc: OutboxError) -> None:
        """The outbox cannot take documents: stop ingesting, loudly; delivery of what is stored goes on."""
        if self.ingesting:
            self.ingesting = False
            self.log.critical("listener.ingestion_stopped", reason=str(exc))
            for source in self.sources:
                source.stop()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading, let queued events finish, then in-flight deliveries, then close the outbox."""
        self.service.stopping()
        for source in self.sources:
            source.stop()
        if not self.group.join(timeout=timeout):
            for source in self.sources:  # what the deadline leaves unhandled is lost: say so
                if left := source.abandon():
                    self.log.error("listener.events_abandoned", node=source.node.name, queued=left,
                                   reason=f"not handled within the {timeout:g}s stop deadline")
        self.group.kill(timeout=1)
        if self.offload is not None:
            self.offload.stop()
        if self.delivery is not None:
            self.delivery.stop(deadline_s=timeout)
        if isinstance(self.sink, OutboxWriter):
            self.sink.close()
        self.service.stop()
        self.log.info("listener.stopped")

    def reload(self) -> bool:
        """Re-read and validate the configuration; apply it, or keep the old one and log every problem."""
        try:
            new = configuration.load(self.config.source)
        except ConfigError as exc:
            self.log.error("config.reload_failed", source=self.config.source, problems=list(exc.problems))
            return False
        if new.log != self.config.log:
            logs.configure(new.log.level)
        redact = Redactor(new.privacy)
        for pipeline in self.pipelines:
            pipeline.classify, pipeline.redact = new.classifier.classify, redact
        if self.offload is not None:
            self.offload.set_classifier(new.classifier)
        if self.delivery is not None and new.webhooks:
            self.delivery.reconfigure(new.webhooks, new.log.level)
        elif new.webhooks != self.config.webhooks:  # opening or closing the outbox needs a restart
            new = dataclasses.replace(new, webhooks=self.config.webhooks)
            self.log.warning("config.reload_partial", reason="adding the first or removing the last "
                             "webhook opens or closes the outbox: restart to apply")
        for hook in self.reload_hooks:
            hook(new)
        restart = _restart_required(self.config, new)
        self.config = dataclasses.replace(self.config, **{name: getattr(new, name) for name in RELOADED})
        self.log.info("config.reloaded", source=self.config.source, restart_required_for=restart)
        return True

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT; the handlers only record the signal, this loop acts on it."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # before READY=1 is sent
            gevent.signal_handler(signum, self._on_signal, signum)
        self.start()
        reloading: gevent.Greenlet | None = None
        while not self.stopping.is_set():
            self._wakeup.wait()
            self._wakeup.clear()
            idle = reloading is None or reloading.dead
            if self._reload_requested and idle and not self.stopping.is_set():
                self._reload_requested = False
                reloading = gevent.spawn(self._reload_in_turn)
        if reloading is not None and not reloading.dead:  # e.g. waiting for a retired endpoint's requests
            reloading.kill(block=True, timeout=1.0)
            self.log.warning("config.reload_interrupted", reason="stopping")
        self.stop()

    def _reload_in_turn(self) -> None:
        """One reload, beside the loop (a SIGTERM meanwhile is acted on at once); then the next, if asked."""
        try:
            self.reload()
        finally:
            self._wakeup.set()

    def _on_signal(self, signum: int) -> None:
        """Record the signal; ``run_forever`` acts on it."""
        self.log.info("listener.signal_received", signal=signal.Signals(signum).name)
        if signum == signal.SIGHUP:
            self._reload_requested = True
        else:
            self.stopping.set()
        self._wakeup.set()


def _restart_required(old: Config, new: Config) -> list[str]:
    """The sections that changed but are only read at start (nodes, esl, health, ...)."""
    fixed = [f.name for f in dataclasses.fields(Config) if f.name not in (*RELOADED, "source")]
    return [name for name in fixed if getattr(new, name) != getattr(old, name)]
