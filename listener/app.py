"""Wiring: one ESL source per FreeSWITCH node feeding the pipeline; signals; orderly shutdown.

The per-event work (``Pipeline``) is plain synchronous code: classify, build the document, hand it
to the sink (the durable outbox, when configured), then write the one ``call.classified`` line.
Only this module and ``listener.esl`` touch gevent.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any, Protocol

import gevent
import gevent.event
import gevent.pool
import structlog

from listener import payload
from listener.config import Config
from listener.errors import OutboxError
from listener.esl import ESLSource, EventHandler, Node
from listener.event import HANGUP_COMPLETE, HEARTBEAT, HangupEvent
from listener.sink import OutboxWriter, WebhookSink

Classify = Callable[[HangupEvent], payload.Outcome]
Document = dict[str, Any]


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
        on_sink_failure: Callable[[OutboxError], None] | None = None,
    ) -> None:
        self.classify = classify
        self.node = node
        self.log = log
        self.sink = sink
        self.on_sink_failure = on_sink_failure

    def process(self, event: HangupEvent) -> Document:
        """The classified document for one event (pure)."""
        return payload.build(event, self.classify(event), self.node.name)

    def __call__(self, event: HangupEvent) -> None:
        document = self.process(event)
        if self.sink is not None and not self._store(document):
            return
        self.log.info("call.classified", call=document)

    def _store(self, document: Document) -> bool:
        """Commit the document to the outbox; on failure log it whole (never lost silently)."""
        assert self.sink is not None
        try:
            self.sink.put([document])
        except OutboxError as exc:
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
        delivery: WebhookSink | None = None,
    ) -> None:
        self.config = config
        self.sink = sink
        self.delivery = delivery
        self.ingesting = True
        self.log = structlog.get_logger("listener")
        self.group = gevent.pool.Group()
        self.stopping = gevent.event.Event()
        self.sources: list[ESLSource] = []
        self.health: dict[str, NodeHealth] = {}
        for node in config.nodes:
            node_log = self.log.bind(node=node.name)
            self.health[node.name] = NodeHealth(node_log)
            handlers: dict[str, EventHandler] = {
                HANGUP_COMPLETE: Pipeline(classify, node, node_log, sink, self._sink_failed),
                HEARTBEAT: self.health[node.name],
            }
            self.sources.append(ESLSource(node, config.esl, handlers, self.log))

    @classmethod
    def from_config(cls, config: Config) -> App:
        """The daemon for ``config``: with webhooks, the outbox is opened (and resumed) first."""
        if not config.webhooks:
            return cls(config, config.classifier.classify)
        writer = OutboxWriter.open(config.outbox, config.webhooks)
        return cls(config, config.classifier.classify, writer, WebhookSink(writer, config.webhooks))

    def start(self) -> None:
        """Start delivery (pending messages resume), then one greenlet per node."""
        if self.delivery is not None:
            self.delivery.start()
        self.log.info("listener.started", nodes=[node.name for node in self.config.nodes])
        for source in self.sources:
            self.group.spawn(source.run)

    def _sink_failed(self, exc: OutboxError) -> None:
        """The outbox cannot take documents: stop ingesting, loudly; delivery of what is stored goes on."""
        if self.ingesting:
            self.ingesting = False
            self.log.critical("listener.ingestion_stopped", reason=str(exc))
            for source in self.sources:
                source.stop()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading, let queued events finish, then in-flight deliveries, then close the outbox."""
        for source in self.sources:
            source.stop()
        self.group.join(timeout=timeout)
        self.group.kill(timeout=1)
        if self.delivery is not None:
            self.delivery.stop(deadline_s=timeout)
        if isinstance(self.sink, OutboxWriter):
            self.sink.close()
        self.log.info("listener.stopped")

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT; the handlers only record the signal, this loop acts on it."""
        self.start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, self._on_signal, signum)
        self.stopping.wait()
        self.stop()

    def _on_signal(self, signum: int) -> None:
        self.log.info("listener.signal_received", signal=signal.Signals(signum).name)
        self.stopping.set()
