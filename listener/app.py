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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.pool
import structlog

from listener.config import loader
from listener.config.settings import Config
from listener.core.calls import Call, Grouper
from listener.core.errors import ConfigError, OutboxError
from listener.core.exits import EX_IOERR, EX_OK, EX_TEMPFAIL
from listener.core.privacy import Redactor
from listener.core.variables import Selection
from listener.esl.cdr import CDRSource
from listener.esl.nodestate import NodeStateFile
from listener.esl.source import ESLSource
from listener.outbox.lock import OutboxLock
from listener.outbox.opening import old_outbox, open_outbox
from listener.outbox.reader import OutboxReader
from listener.outbox.store import EndpointStats, with_endpoints
from listener.outbox.writer import OutboxWriter
from listener.pipeline import Pipeline, Store
from listener.service import logs
from listener.service.health import Check
from listener.service.metrics import Metrics
from listener.service.runtime import PortInUseError, Service
from listener.webhooks.sink import WebhookSink

RELOADED = ("classifier", "privacy", "log", "webhooks")
"""What SIGHUP changes in place; every other section needs a restart."""


class App:
    """The daemon: owns every greenlet (one group) and stops them in order.

    Order of shutdown: stop reading FreeSWITCH (events already received are still classified and
    committed), then let webhook requests in flight finish within the deadline, then close the
    outbox. Everything not yet delivered stays in the outbox for the next start.
    """

    def __init__(self, config: Config, store: Store | None = None, *, lock: OutboxLock | None = None,
                 checked: bool = True, states: NodeStateFile | None = None) -> None:
        self.config = config
        self.writer = store if isinstance(store, OutboxWriter) else None
        self.lock = lock
        """The outbox's lock (``run`` holds it for the daemon's life), released after the outbox closes."""
        self._checked = checked
        self.reader = OutboxReader(self.writer.outbox.path) if self.writer is not None else None
        self.exit_code = EX_OK
        """What ``run`` exits with: EX_IOERR (74) after an outbox fault that cannot clear."""
        self.log = structlog.get_logger("listener")
        self.group = gevent.pool.Group()
        self.stopping = gevent.event.Event()
        self.metrics = Metrics()
        self._wakeup = gevent.event.Event()
        self._reload_requested = False
        self._watcher: gevent.Greenlet | None = None
        self.sink: WebhookSink | None = None
        if self.writer is not None and config.webhooks:
            self.sink = WebhookSink(self.writer, config.webhooks, clock=self.writer.clock,  # one steady clock
                                    metrics=self.metrics)
        self.sources: list[ESLSource] = []
        self.pipelines: list[Pipeline] = []
        redact = _redactor(config)
        self.calls = self.writer.grouper if self.writer is not None else Grouper(config.calls.wait_s)
        """The calls still open: the writer's (kept in the outbox too), else in memory only."""
        self.metrics.watch_calls(lambda: (self.calls.open_calls, self.calls.waiting_legs))
        for node in config.nodes:
            pipeline = Pipeline(
                node, config.classifier, self.log.bind(node=node.name), store=store, delivery=self.sink,
                metrics=self.metrics, redact=redact, on_outbox_failure=self._outbox_failed,
                calls=self.calls if self.writer is None else None,
                variables=kept_variables(config),
                log_variables=(config.log.variables, config.log.variables_max_bytes),
            )
            self.pipelines.append(pipeline)
            self.sources.append(ESLSource(node, config.esl, pipeline, self.log, states=states))
        self.cdr_sources = [
            CDRSource(node.name, node.cdr_dir, pipeline, self.writer, self.log, metrics=self.metrics,
                      reconnects=_reconnects_of(source))
            for node, pipeline, source in zip(config.nodes, self.pipelines, self.sources, strict=True)
            if node.cdr_dir is not None and self.writer is not None]
        self.metrics.watch_sources(self.sources)
        self.service = Service(self.sources, config.health, self.metrics, self.log)
        self.service.pauses.append(logs.paused_until)  # without webhooks a stuck stdout pauses ingestion
        self.service.notes.append(logs.stall_note)
        self.service.readiness.add("log", lambda: Check(ok=logs.stalled_since() is None,
                                   details=logs.stall_note()), required=not config.webhooks)
        if self.writer is not None:
            self.writer.on_calls = self._calls_completed
            self._watch_outbox(self.writer, self.sink)
            self.service.pauses.append(self.writer.paused_until)
            self.service.notes.append(lambda: _outbox_note(self.writer))

    @classmethod
    def from_config(cls, config: Config) -> App:
        """The daemon for ``config``: with webhooks, the outbox is locked, checked and opened first.

        Raises ``OutboxLockedError`` (another daemon has it) or ``OutboxError`` (``transient``: it
        stayed unavailable through the start-up wait; otherwise it cannot be used as it is).
        Each node's record of the previous run (``listener.esl.nodestate``) is read from the outbox's
        folder, with or without webhooks.
        """
        states = NodeStateFile.load(config.outbox.path.parent, structlog.get_logger("listener"))
        if not needs_outbox(config):
            return cls(config, states=states)
        opened = open_outbox(config.outbox, config.webhooks, structlog.get_logger("listener"))
        retention = config.outbox.taken_retention_s
        writer = OutboxWriter(opened.outbox, config.webhooks, taken_retention_s=retention,
                              keep_delivered_s=config.outbox.keep_delivered_s, wait_s=config.calls.wait_s)
        return cls(config, writer, lock=opened.lock, checked=opened.checked, states=states)

    def start(self) -> None:
        """The health listener first (``PortInUseError``), then delivery (pending messages resume), one
        greenlet per node, READY=1."""
        self.service.listen()
        if self.sink is not None:
            self.sink.start()
        self.log.info("listener.started", nodes=[node.name for node in self.config.nodes])
        loops = {source.node.name: self.group.spawn(source.run) for source in self.sources}
        self.service.start(loops)
        for cdr in self.cdr_sources:  # after READY: a scan of a large folder never delays start-up
            self.group.spawn(cdr.run)
        if self.writer is None:
            self.group.spawn(self._expire_calls)
        if self.writer is not None:
            self._watcher = gevent.spawn(self._watch_writer, self.writer)
            if not self._checked and self.reader is not None:
                self.group.spawn(self._check_later, self.writer, self.reader)

    def _calls_completed(self, calls: Sequence[Call]) -> None:
        """Calls the writer completed at their bound: logged by their node's pipeline, delivery woken."""
        by_node = {pipeline.node.name: pipeline for pipeline in self.pipelines}
        for call in calls:
            pipeline = by_node.get(call.legs[0].node) if call.legs else None
            (pipeline or self.pipelines[0]).calls_completed([call])
        if self.sink is not None:
            self.sink.wake()

    def _expire_calls(self) -> None:
        """Without an outbox: complete the calls open past their bound, in memory."""
        while not self.stopping.is_set():
            left = self.calls.expires_in(time.time())
            self.stopping.wait(60.0 if left is None else min(left + 0.01, 60.0))
            self._expire_now(time.time())

    def _expire_now(self, now: float) -> None:
        plan = self.calls.expire(now)
        self.calls.apply(plan, min(now, time.time()))
        if plan.completed:
            self._calls_completed(plan.completed)

    def _check_later(self, writer: OutboxWriter, reader: OutboxReader) -> None:
        """The integrity check of an outbox too large to check before READY, beside the commits."""
        try:
            findings = reader.quick_check()
        except OutboxError as exc:
            self.log.warning("outbox.check_failed", error=str(exc), code=exc.code)
            return
        if findings:
            writer.fail(OutboxError(f"{writer.outbox.path} is damaged: {'; '.join(findings)[:500]}",
                                    "SQLITE_CORRUPT", transient=False))
        else:
            self.log.info("outbox.checked", path=str(writer.outbox.path), integrity="ok")

    def _watch_writer(self, writer: OutboxWriter) -> None:
        """Follow the writer's state: STATUS= on each change; stop the daemon on a fault that cannot clear."""
        while True:
            writer.changed.wait()
            writer.changed.clear()
            self.service.refresh_status()
            if writer.failure is not None:
                self._fatal(writer.failure)
                return

    def _watch_outbox(self, writer: OutboxWriter, sink: WebhookSink | None) -> None:
        """Readiness, liveness and metrics of the outbox and (with webhooks) the endpoints' delivery loops."""
        self.service.readiness.add("outbox", lambda: Check(
            ok=writer.ready and (sink is None or sink.outbox_unavailable_since is None),
            details=_outbox_details(writer, sink)))
        if sink is None:
            return
        self.service.readiness.add("endpoints", lambda: Check(
            ok=sink.healthy,
            details={name: {"crashed": name in sink.crashed} for name in sink.endpoints}),
            required=False)
        self.service.liveness.add(
            "delivery", lambda: None if sink.healthy else "webhook delivery loop or outbox failed")

        reader = self.reader

        def outbox_stats() -> tuple[EndpointStats, ...]:  # a cache, never a scan on the commit thread
            return with_endpoints(reader.stats() if reader is not None else (), sink.endpoints)

        self.metrics.watch_outbox(outbox_stats)
        self.metrics.watch_circuits(lambda: sink.endpoints)

    def _outbox_failed(self, exc: OutboxError) -> None:
        """A batch could not be stored (each document was logged whole): stop if the fault cannot clear.

        A transient fault reaches the pipeline only at shutdown (the writer waits it out otherwise).
        """
        if not exc.transient:
            self._fatal(exc)

    def _fatal(self, exc: OutboxError) -> None:
        """The outbox failed for good (corrupt, read-only, ...): stop, loudly, with EX_IOERR (74)."""
        if self.exit_code != EX_OK:
            return
        self.exit_code = EX_IOERR
        path = self.config.outbox.path
        self.log.critical("listener.outbox_failed", reason=str(exc), code=exc.code, path=str(path),
                          exit_code=EX_IOERR, action=outbox_action(path, exc))
        self.stopping.set()
        self._wakeup.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading, let queued events finish, then in-flight deliveries, then close the outbox."""
        self.service.stopping()
        if self.writer is not None:  # an outbox fault still being waited out: give up within the deadline
            self.writer.give_up_after(timeout / 2)
        self._stop_reading(timeout)
        if self.writer is None:  # legs waiting in memory only: their calls are completed now, as they are
            self._expire_now(float("inf"))
        if self._watcher is not None:
            self._watcher.kill(block=False)
        if self.sink is not None:
            self.sink.stop(deadline_s=timeout)
        if self.reader is not None:  # first: the writer's connection must be the last, to remove the -wal
            self.reader.close()
        if self.writer is not None:
            self.writer.close(deadline_s=timeout / 2)
        if self.lock is not None and self.writer is not None:
            if self.writer.failure is None and _wal_gone(self.writer.outbox.path):
                self.lock.closed(self.writer.outbox.path)
            self.lock.release()
        self.service.stop()
        self.log.info("listener.stopped")

    def _stop_reading(self, timeout: float) -> None:
        """Stop the sources; the events already read are handled within ``timeout``."""
        for source in self.sources:
            source.stop()
        for cdr in self.cdr_sources:
            cdr.stop()
        if not self.group.join(timeout=timeout):
            for source in self.sources:  # what the deadline leaves unhandled is lost: say so
                if left := source.abandon():
                    self.log.error("listener.events_abandoned", node=source.node.name, queued=left,
                                   reason=f"not handled within the {timeout:g}s stop deadline")
        self.group.kill(timeout=1)

    def reload(self) -> bool:
        """Re-read and validate the configuration; apply it, or keep the old one and log every problem."""
        try:
            new = loader.load(self.config.source, credentials=self.config.credentials)
        except ConfigError as exc:
            self.log.error("config.reload_failed", source=self.config.source, problems=list(exc.problems))
            return False
        if new.log != self.config.log:
            logs.configure(new.log.level, fmt=new.log.format)
        warn_removed(self.log, new)
        redact = _redactor(new)
        for pipeline in self.pipelines:
            pipeline.classifier, pipeline.redact = new.classifier, redact
            pipeline.variables = kept_variables(new)
            pipeline.log_variables = (new.log.variables, new.log.variables_max_bytes)
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

    def run_forever(self) -> int:
        """Run until SIGTERM or SIGINT (or a fault that cannot clear); returns the exit code.

        The handlers only record the signal; this loop acts on it."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # before READY=1 is sent
            gevent.signal_handler(signum, self._on_signal, signum)
        try:
            self.start()
        except PortInUseError as exc:
            self.log.critical("listener.port_in_use", reason=str(exc), exit_code=EX_TEMPFAIL,
                              action="stop the other process, or set [health] port (or enabled = false)")
            self.stop(timeout=1.0)
            return EX_TEMPFAIL
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
        return self.exit_code

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


def warn_old_outbox(log: Any, config: Config, cwd: Path) -> None:
    """One ``outbox.old_location`` warning when the current folder holds an outbox with pending
    deliveries that is not the configured one (the default was ./outbox.sqlite3 before 0.2.0)."""
    found = old_outbox(config.outbox.path, cwd, time.time())
    if found is None:
        return
    old, pending, new = found[0].absolute(), found[1], config.outbox.path
    log.warning("outbox.old_location", path=str(old), pending=pending, outbox=str(new),
                action=f"its deliveries are not sent from there: stop the daemon, move {old} (with its -wal "
                       f"and -shm, if any) to {new} if nothing is there yet, and start it again; or set "
                       f'[outbox] path = "{old}"')


def _wal_gone(path: Path) -> bool:
    """The outbox's ``-wal`` was checkpointed and removed (or left empty) when it closed."""
    try:
        return path.with_name(path.name + "-wal").stat().st_size == 0
    except FileNotFoundError:
        return True


def outbox_action(path: Path, exc: OutboxError) -> str:
    """What the operator does about an outbox the daemon stopped on, or would not start with."""
    guide = 'docs/operations.md, "When the outbox cannot be used"'
    if exc.transient:
        return (f"{path} stayed unavailable through the start-up wait (another client holds its write lock, "
                f"the disk is full, no file descriptor left): free it and start again ({guide})")
    if exc.code == "FOREIGN_WAL":
        return (f"move {path}-wal and {path}-shm aside (keep them until you know whose they are), "
                "then start again")
    if exc.code.startswith("SQLITE_READONLY") or exc.code == "SQLITE_PERM":
        return (f"make {path}, its folder and its -wal/-shm writable by the service's user "
                f"(chown them to it), then start again ({guide})")
    return (f"stop, keep the file; check it with `sqlite3 {path} 'PRAGMA integrity_check'`; if it is "
            "damaged, move it and its -wal/-shm aside, recover its rows with "
            f"`sqlite3 <moved file> .recover | sqlite3 {path}`, then start again ({guide})")


def _reconnects_of(source: ESLSource) -> Callable[[], tuple[int, float | None]]:
    """What a CDR source watches of its node's ESL source: connections made, the last gap's length."""
    return lambda: (source.connections, source.stats.last_gap_seconds)


def kept_variables(config: Config) -> Selection:
    """The channel variables each leg keeps: those any endpoint or the log line asked for (each takes
    its own share when its request or line is written)."""
    return config.log.variables.union(*(w.variables for w in config.webhooks))


def needs_outbox(config: Config) -> bool:
    """Webhooks need it (the durable hand-off); a node's ``cdr_dir`` too (the record of legs taken)."""
    return bool(config.webhooks) or any(node.cdr_dir is not None for node in config.nodes)


def _outbox_details(writer: OutboxWriter, sink: WebhookSink | None) -> dict[str, Any]:
    """The outbox as ingestion (the writer) and delivery (the endpoints' loops) find it."""
    fault = writer.failure or writer.unavailable
    delivery = sink.outbox_unavailable_since if sink is not None else None
    unavailable = writer.unavailable is not None or delivery is not None
    state = "failed" if writer.failure else "unavailable" if unavailable else "available"
    durations = [time.monotonic() - writer.paused_since if writer.paused_since is not None else None,
                 sink.clock() - delivery if sink is not None and delivery is not None else None]
    longest = max((d for d in durations if d is not None), default=None)
    return {"state": state, "writable": writer.ready, "code": fault.code if fault else None,
            "error": str(fault) if fault else None,
            "unavailable_for_s": round(longest, 1) if longest is not None else None}


def _outbox_note(writer: OutboxWriter | None) -> str | None:
    """The STATUS= note while the outbox is not writable."""
    if writer is None or writer.ready:
        return None
    if writer.failure is not None:
        return f"outbox failed ({writer.failure.code or 'error'})"
    fault = writer.unavailable
    return f"outbox unavailable ({fault.code if fault else 'closing'}), ingestion paused"


def _redactor(config: Config) -> Redactor:
    return Redactor(config.privacy.mask_numbers, config.privacy.hash_key, config.privacy.number_variables)


def _restart_required(old: Config, new: Config) -> list[str]:
    """The sections that changed but are only read at start (nodes, esl, health, ...)."""
    kept = (*RELOADED, "source", "credentials", "warnings")
    fixed = [f.name for f in dataclasses.fields(Config) if f.name not in kept]
    return [name for name in fixed if getattr(new, name) != getattr(old, name)]
