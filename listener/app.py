"""The composition root: build everything from the configuration, own every greenlet, act on signals.

One process. Per FreeSWITCH node, an ESL source (``listener.esl``) hands batches of event frames to
that node's pipeline (``listener.pipeline``), which commits the documents to the outbox
(``listener.outbox``); the webhook sink (``listener.webhooks``) delivers from the outbox, the only
hand-off between ingestion and delivery. Health, metrics and systemd notifications are
``listener.service``'s. Signal handlers only record the signal; ``run_forever`` acts on it:
SIGTERM/SIGINT stop, SIGHUP reloads the rules, privacy, log level and webhook endpoints without
touching the connections.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any

import gevent
import gevent.event
import gevent.pool
import structlog

from listener.config import loader
from listener.config.settings import Config
from listener.core.errors import ConfigError, OutboxError
from listener.core.privacy import Redactor
from listener.esl.source import ESLSource
from listener.outbox.store import EndpointStats, with_endpoints
from listener.outbox.writer import OutboxWriter
from listener.pipeline import Pipeline, Store
from listener.service import logs
from listener.service.health import Check
from listener.service.metrics import Metrics
from listener.service.runtime import Service
from listener.webhooks.sink import WebhookSink

RELOADED = ("classifier", "privacy", "log", "webhooks")
"""What SIGHUP changes in place; every other section needs a restart."""


class App:
    """The daemon: owns every greenlet (one group) and stops them in order.

    Order of shutdown: stop reading FreeSWITCH (events already received are still classified and
    committed), then let webhook requests in flight finish within the deadline, then close the
    outbox. Everything not yet delivered stays in the outbox for the next start.
    """

    def __init__(self, config: Config, store: Store | None = None) -> None:
        self.config = config
        self.writer = store if isinstance(store, OutboxWriter) else None
        self.ingesting = True
        self.log = structlog.get_logger("listener")
        self.group = gevent.pool.Group()
        self.stopping = gevent.event.Event()
        self.metrics = Metrics()
        self._wakeup = gevent.event.Event()
        self._reload_requested = False
        self.sink: WebhookSink | None = None
        if self.writer is not None:
            self.sink = WebhookSink(self.writer, config.webhooks, metrics=self.metrics)
        self.sources: list[ESLSource] = []
        self.pipelines: list[Pipeline] = []
        redact = _redactor(config)
        for node in config.nodes:
            pipeline = Pipeline(
                node, config.classifier, self.log.bind(node=node.name), store=store, delivery=self.sink,
                metrics=self.metrics, redact=redact, on_outbox_failure=self._outbox_failed,
            )
            self.pipelines.append(pipeline)
            self.sources.append(ESLSource(node, config.esl, pipeline, self.log))
        self.metrics.watch_sources(self.sources)
        self.service = Service(self.sources, config.health, self.metrics, self.log)
        if self.writer is not None and self.sink is not None:
            self._watch_delivery(self.writer, self.sink)

    @classmethod
    def from_config(cls, config: Config) -> App:
        """The daemon for ``config``: with webhooks, the outbox is opened (and resumed) first."""
        if not config.webhooks:
            return cls(config)
        return cls(config, OutboxWriter.open(config.outbox, config.webhooks))

    def start(self) -> None:
        """Start delivery (pending messages resume), one greenlet per node, the health listener, READY=1."""
        if self.sink is not None:
            self.sink.start()
        self.log.info("listener.started", nodes=[node.name for node in self.config.nodes])
        loops = {source.node.name: self.group.spawn(source.run) for source in self.sources}
        self.service.start(loops)

    def _watch_delivery(self, writer: OutboxWriter, sink: WebhookSink) -> None:
        """Readiness, liveness and metrics of the outbox and the endpoints' delivery loops."""
        self.service.readiness.add("outbox", lambda: Check(
            ok=writer.ready and self.ingesting,
            details={"writable": writer.ready, "ingesting": self.ingesting,
                     "failure": type(writer.failure).__name__ if writer.failure else None}))
        self.service.readiness.add("endpoints", lambda: Check(
            ok=sink.healthy,
            details={name: {"crashed": name in sink.crashed} for name in sink.endpoints}),
            required=False)
        self.service.liveness.add(
            "delivery", lambda: None if sink.healthy else "webhook delivery loop or outbox failed")

        def outbox_stats() -> tuple[EndpointStats, ...]:
            return with_endpoints(writer.call(writer.outbox.stats, time.time()), sink.endpoints)

        self.metrics.watch_outbox(outbox_stats)

    def _outbox_failed(self, exc: OutboxError) -> None:
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
        if self.sink is not None:
            self.sink.stop(deadline_s=timeout)
        if self.writer is not None:
            self.writer.close()
        self.service.stop()
        self.log.info("listener.stopped")

    def reload(self) -> bool:
        """Re-read and validate the configuration; apply it, or keep the old one and log every problem."""
        try:
            new = loader.load(self.config.source)
        except ConfigError as exc:
            self.log.error("config.reload_failed", source=self.config.source, problems=list(exc.problems))
            return False
        if new.log != self.config.log:
            logs.configure(new.log.level)
        warn_removed(self.log, new)
        redact = _redactor(new)
        for pipeline in self.pipelines:
            pipeline.classifier, pipeline.redact = new.classifier, redact
        if self.sink is not None and new.webhooks:
            self.sink.reconfigure(new.webhooks)
        elif new.webhooks != self.config.webhooks:  # opening or closing the outbox needs a restart
            new = dataclasses.replace(new, webhooks=self.config.webhooks)
            self.log.warning("config.reload_partial", reason="adding the first or removing the last "
                             "webhook opens or closes the outbox: restart to apply")
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


def warn_removed(log: Any, config: Config) -> None:
    """One ``config.key_removed`` warning line per removed key the configuration still sets."""
    for warning in config.warnings:
        key, _, message = warning.partition(": ")
        log.warning("config.key_removed", key=key, reason=message)


def _redactor(config: Config) -> Redactor:
    return Redactor(config.privacy.mask_numbers, config.privacy.hash_key)


def _restart_required(old: Config, new: Config) -> list[str]:
    """The sections that changed but are only read at start (nodes, esl, health, ...)."""
    fixed = [f.name for f in dataclasses.fields(Config) if f.name not in (*RELOADED, "source", "warnings")]
    return [name for name in fixed if getattr(new, name) != getattr(old, name)]
