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
from listener.esl import ESLSource, EventHandler, Node
from listener.event import HANGUP_COMPLETE, HEARTBEAT, HangupEvent

Classify = Callable[[HangupEvent], payload.Outcome]
Document = dict[str, Any]


class Sink(Protocol):
    """Where documents go before they count as handled (the durable outbox)."""

    def put(self, documents: list[Document]) -> None: ...


class Pipeline:
    """The per-event work for one node: classify, build, hand over, log one line."""

    def __init__(self, classify: Classify, node: Node, log: Any, sink: Sink | None = None) -> None:
        self.classify = classify
        self.node = node
        self.log = log
        self.sink = sink

    def process(self, event: HangupEvent) -> Document:
        """The classified document for one event (pure)."""
        return payload.build(event, self.classify(event), self.node.name)

    def __call__(self, event: HangupEvent) -> None:
        document = self.process(event)
        if self.sink is not None:
            self.sink.put([document])
        self.log.info("call.classified", call=document)


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
    """The daemon: owns every greenlet (one group) and stops them in order."""

    def __init__(self, config: Config, classify: Classify, sink: Sink | None = None) -> None:
        self.config = config
        self.log = structlog.get_logger("listener")
        self.group = gevent.pool.Group()
        self.stopping = gevent.event.Event()
        self.sources: list[ESLSource] = []
        self.health: dict[str, NodeHealth] = {}
        for node in config.nodes:
            node_log = self.log.bind(node=node.name)
            self.health[node.name] = NodeHealth(node_log)
            handlers: dict[str, EventHandler] = {
                HANGUP_COMPLETE: Pipeline(classify, node, node_log, sink),
                HEARTBEAT: self.health[node.name],
            }
            self.sources.append(ESLSource(node, config.esl, handlers, self.log))

    def start(self) -> None:
        """Start one greenlet per node."""
        self.log.info("listener.started", nodes=[node.name for node in self.config.nodes])
        for source in self.sources:
            self.group.spawn(source.run)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reconnecting, drop connections, let queued events finish (within ``timeout``)."""
        for source in self.sources:
            source.stop()
        self.group.join(timeout=timeout)
        self.group.kill(timeout=1)
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
