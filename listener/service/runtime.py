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
from listener.esl.source import ESLSource
from listener.service import systemd
from listener.service.health import Check, HealthApp, HealthServer, Liveness, Readiness
from listener.service.metrics import Metrics

GRACE_S = 5.0


def status_line(sources: Sequence[ESLSource]) -> str:
    """``1/2 nodes connected: pbx1 connected, pbx2 backoff``."""
    connected = sum(source.state == "connected" for source in sources)
    states = ", ".join(f"{source.node.name} {source.state}" for source in sources)
    return f"{connected}/{len(sources)} nodes connected: {states}"


def source_problem(source: ESLSource, now: float) -> str | None:
    """What is stuck in one node's ESL source, if anything."""
    settings, stats = source.settings, source.stats
    silent, limit = now - stats.last_received, settings.liveness_timeout + settings.command_timeout + GRACE_S
    if source.state == "connected" and silent > limit:
        return f"{source.node.name}: connected but nothing read for {silent:.0f}s (reader stuck)"
    if stats.handling_since is not None and now - stats.handling_since > settings.liveness_timeout:
        return f"{source.node.name}: one event handled for {now - stats.handling_since:.0f}s (handler stuck)"
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
        app = HealthApp(self.liveness, self.readiness, metrics)
        self.server = HealthServer(health.host, health.port, app) if health.enabled else None
        self._stopped = gevent.event.Event()
        self._watchdog: gevent.Greenlet | None = None
        self._withheld = False
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
        problems = [p for p in (source_problem(s, now) for s in self.sources) if p]
        return "; ".join(problems) or None

    # -- life ---------------------------------------------------------------------------------
    def start(self, loops: Mapping[str, gevent.Greenlet]) -> None:
        """Watch the node loops, open the health listener, then tell systemd we are ready."""
        self.loops = dict(loops)
        for source in self.sources:
            source.on_state = self.state_changed
        if self.server is not None:
            self._listen(self.server)
        interval = systemd.watchdog_interval()
        if interval is not None:
            self._watchdog = gevent.spawn(self._watch, interval)
        systemd.ready(status_line(self.sources))

    def _listen(self, server: HealthServer) -> None:
        try:
            server.start()
        except OSError as exc:
            self.log.error("health.listen_failed", reason=exc.strerror or str(exc))
            raise
        self.log.info("health.listening", host=server.server.server_host, port=server.port)

    def state_changed(self, _source: ESLSource) -> None:
        systemd.status(status_line(self.sources))

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
