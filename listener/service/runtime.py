"""Running as a service: systemd notifications, the watchdog greenlet, the ESL health checks.

``Service`` owns the conversation with the supervisor. It registers the ESL checks: ready when at
least one node is connected; live while every node's loop runs, a connected reader keeps reading
(the liveness timeout should have closed a silent connection long before) and no handler is stuck.
``WATCHDOG=1`` is sent only while every liveness check passes, so systemd restarts a stuck daemon;
a blocked event loop sends nothing at all. ``STATUS=`` follows every node's connection state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gevent
import gevent.event

from listener.config.settings import HealthConfig
from listener.core.errors import ListenerError
from listener.esl.source import ESLSource
from listener.service import systemd
from listener.service.health import Check, HealthApp, HealthServer, Liveness, Readiness
from listener.service.metrics import Metrics

GRACE_S = 5.0


class PortInUseError(ListenerError):
    """The health port is taken (another daemon, or another program): exit 75 (EX_TEMPFAIL)."""


def status_line(sources: Sequence[ESLSource]) -> str:
    """``1/2 nodes connected: pbx1 connected, pbx2 backoff``."""
    connected = sum(source.state == "connected" for source in sources)
    states = ", ".join(f"{source.node.name} {source.state}" for source in sources)
    return f"{connected}/{len(sources)} nodes connected: {states}"


def source_problem(source: ESLSource, now: float, paused_until: float | None = None) -> str | None:
    """What is stuck in one node's ESL source, if anything.

    Time spent waiting on purpose (an outbox fault waited out, a stalled log output: ingestion paused
    until ``paused_until``) is not a stuck reader or handler: it counts from the end of the pause.
    """
    settings, stats = source.settings, source.stats
    since = max(stats.last_received, paused_until or 0.0)
    silent, limit = now - since, settings.liveness_timeout + settings.command_timeout + GRACE_S
    if source.state == "connected" and silent > limit:
        return f"{source.node.name}: connected but nothing read for {silent:.0f}s (reader stuck)"
    if stats.handling_since is not None:
        handling = now - max(stats.handling_since, paused_until or 0.0)
        if handling > settings.liveness_timeout:
            return f"{source.node.name}: one event handled for {handling:.0f}s (handler stuck)"
    return None


class Service:
    """Readiness, liveness, the health listener and systemd notifications for one ``App``."""

    def __init__(self, sources: Sequence[ESLSource], health: HealthConfig, metrics: Metrics, log: Any, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sources = sources
        self.log = log
        self.clock = clock
        self.liveness = Liveness()
        self.readiness = Readiness()
        self.readiness.add("nodes", self.nodes)
        self.liveness.add("esl", self.esl_problem)
        self.loops: dict[str, gevent.Greenlet] = {}
        self.pauses: list[Callable[[], float | None]] = []
        """Each says until when (monotonic; now while it lasts) ingestion was paused on purpose."""
        self.notes: list[Callable[[], str | None]] = []
        """Each adds a note to STATUS= while something needs the operator's eye (outbox unavailable)."""
        app = HealthApp(self.liveness, self.readiness, metrics)
        self.server = HealthServer(health.host, health.port, app) if health.enabled else None
        self._stopped = gevent.event.Event()
        self._watchdog: gevent.Greenlet | None = None
        self._withheld = False
        self._listening = False
        metrics.watch_ready(self.readiness.ready)

    # -- checks -------------------------------------------------------------------------------
    def nodes(self) -> Check:
        """Ready when at least one node is connected; details per node."""
        details = {source.node.name: self._node_details(source) for source in self.sources}
        return Check(ok=any(source.state == "connected" for source in self.sources), details=details)

    def _node_details(self, source: ESLSource) -> dict[str, Any]:
        stats = source.stats
        return {
            "state": source.state, "host": source.node.host, "port": source.node.port,
            "connections": source.connections, "heartbeats": stats.heartbeats,
            "core_uuid": stats.core_uuid, "hostname": stats.hostname,
        }

    def esl_problem(self) -> str | None:
        ended = [name for name, loop in self.loops.items() if loop.dead and not self._stopped.is_set()]
        if ended:
            return f"ESL loop ended for {', '.join(ended)}"
        now = self.clock()
        paused = max((mark for mark in (pause() for pause in self.pauses) if mark is not None), default=None)
        problems = [p for p in (source_problem(s, now, paused) for s in self.sources) if p]
        return "; ".join(problems) or None

    def status(self) -> str:
        """The STATUS= line: every node's state, then any note (outbox unavailable, ...)."""
        notes = [note for note in (n() for n in self.notes) if note]
        return "; ".join([status_line(self.sources), *notes])

    def refresh_status(self) -> None:
        systemd.status(self.status())

    # -- life ---------------------------------------------------------------------------------
    def listen(self) -> None:
        """Open the health listener (first, before anything starts); ``PortInUseError`` if it is taken."""
        if self.server is not None and not self._listening:
            self._listen(self.server)
            self._listening = True

    def start(self, loops: Mapping[str, gevent.Greenlet]) -> None:
        """Watch the node loops, open the health listener (if not yet), then tell systemd we are ready."""
        self.loops = dict(loops)
        for source in self.sources:
            source.on_state = self.state_changed
        self.listen()
        interval = systemd.watchdog_interval()
        if interval is not None:
            self._watchdog = gevent.spawn(self._watch, interval)
        systemd.ready(self.status())

    def _listen(self, server: HealthServer) -> None:
        try:
            server.start()
        except OSError as exc:
            self.log.error("health.listen_failed", reason=exc.strerror or str(exc), host=server.host,
                           port=server.requested_port)
            raise PortInUseError(f"cannot listen on {server.host}:{server.requested_port} for health and "
                                 f"metrics: {exc.strerror or exc}") from exc
        self.log.info("health.listening", host=server.server.server_host, port=server.port)

    def state_changed(self, _source: ESLSource) -> None:
        self.refresh_status()

    def _watch(self, interval: float) -> None:
        while not self._stopped.wait(timeout=interval):
            self.ping()

    def ping(self) -> bool:
        """Send WATCHDOG=1 if every liveness check passes; log when that starts or stops."""
        problems = self.liveness.problems()
        if problems and not self._withheld:
            self.log.error("watchdog.ping_withheld", problems=problems)
        elif not problems and self._withheld:
            self.log.info("watchdog.ping_resumed")
        self._withheld = bool(problems)
        return not problems and systemd.watchdog()

    def stopping(self) -> None:
        """STOPPING=1: the orderly shutdown begins."""
        self._stopped.set()
        systemd.stopping()

    def stop(self) -> None:
        """Stop the watchdog and the health listener (after the rest has stopped)."""
        self._stopped.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=1)
        if self.server is not None:
            self.server.stop()
