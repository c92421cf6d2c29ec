"""The delivery process: ``hangup-listener deliver``, started and watched by the daemon (``listener.worker``).

It opens the outbox on its own connection (WAL: the daemon keeps committing meanwhile), runs one
``WebhookSink`` loop per endpoint, and takes orders from its stdin (``listener.workerwire``):
settings, a wake after each commit, stop. The stop frame and the end of stdin (the daemon is gone)
stop it the same way: requests in flight finish within the deadline, the rest stays in the outbox.
SIGTERM and SIGINT do not stop it (the CLI ignores them in the daemon's children: the daemon,
draining what it has read, stops them after). Its log lines go to the stdout it shares with the
daemon; what it did goes back to the daemon on the report pipe, for metrics and health.
"""

from __future__ import annotations

import os
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.os
import gevent.queue
import structlog

from listener import logs
from listener.errors import OutboxError
from listener.sink import Attempted, OutboxWriter, WebhookSink
from listener.workerwire import (
    REPORT_S,
    SETTINGS,
    STOP,
    WAKE,
    FrameReader,
    Report,
    Settings,
    read_settings,
    report_line,
)

EX_OK, EX_SOFTWARE, EX_IOERR = 0, 70, 74
DEFAULT_DEADLINE_S = 10.0
log = structlog.get_logger("listener.deliverer")


class Deliverer:
    """One run of the delivery process, between its first settings frame and its stop."""

    def __init__(self, control_fd: int, report_fd: int) -> None:
        self._control = control_fd
        self._report = report_fd
        self._frames = FrameReader()
        self._attempts: list[tuple[str, str, float]] = []
        self._stop = gevent.event.Event()
        self._deadline_s = DEFAULT_DEADLINE_S
        self._applied = 0
        self._reporting = gevent.lock.Semaphore()  # one report line at a time, never torn
        self._settings: gevent.queue.Queue[Settings] = gevent.queue.Queue()
        self.sink: WebhookSink | None = None

    def serve(self) -> int:
        """Run until told to stop; the exit code says how it ended."""
        settings = self._first_settings()
        if settings is None:
            return EX_OK
        logs.configure(settings.log_level)
        self._applied = settings.generation
        try:
            writer = OutboxWriter.open(settings.outbox, settings.webhooks)
        except OutboxError as exc:
            log.critical("webhook.worker_failed", reason=str(exc))
            return EX_IOERR
        sink = self.sink = WebhookSink(writer, settings.webhooks)
        sink.observers.append(self._attempted)
        sink.start()
        readers = [gevent.spawn(self._read_control), gevent.spawn(self._report_loop),
                   gevent.spawn(self._apply_settings)]
        self._stop.wait()
        sink.stop(deadline_s=self._deadline_s)  # a reload still retiring an endpoint is cut short below
        writer.close()
        with self._reporting:  # not in the middle of a line
            gevent.killall(readers)
        self._send_report()
        return EX_OK if sink.healthy else EX_SOFTWARE

    def _first_settings(self) -> Settings | None:
        while True:
            data = gevent.os.nb_read(self._control, 65536)
            if not data:
                return None
            for kind, payload in self._frames.feed(data):
                if kind == SETTINGS:
                    return read_settings(payload)

    def _read_control(self) -> None:
        for kind, payload in self._frames.feed(b""):  # those that came in one read with the first settings
            self._apply(kind, payload)
        while data := gevent.os.nb_read(self._control, 1 << 20):
            for kind, payload in self._frames.feed(data):
                self._apply(kind, payload)
        self._stop.set()  # end of stdin: the daemon is gone

    def _apply(self, kind: bytes, payload: bytes) -> None:
        assert self.sink is not None
        if kind == WAKE:
            self.sink.wake()
        elif kind == SETTINGS:  # applied in order by _apply_settings: frames are still read meanwhile
            self._settings.put(read_settings(payload))
        elif kind == STOP:
            self._deadline_s = float(payload.decode())
            self._stop.set()

    def _apply_settings(self) -> None:
        """Apply reloads one after the other. Retiring an endpoint waits for its requests in flight
        (up to 10 s): here, so that a stop or a wake sent meanwhile is read at once."""
        assert self.sink is not None
        while True:
            settings = self._settings.get()
            logs.configure(settings.log_level)
            self.sink.reconfigure(settings.webhooks)
            self._applied = settings.generation
            self._send_report()  # the parent may be waiting for it

    def _attempted(self, attempt: Attempted) -> None:
        self._attempts.append((attempt.endpoint, attempt.kind, attempt.latency_s))

    def _report_loop(self) -> None:
        while True:
            self._send_report()
            gevent.sleep(REPORT_S)

    def _send_report(self) -> None:
        assert self.sink is not None
        attempts, self._attempts = tuple(self._attempts), []
        line = report_line(Report(attempts, self.sink.healthy, self.sink.crashed, self._applied))
        try:
            with self._reporting:
                _write_all(self._report, line)
        except OSError:
            self._stop.set()  # the daemon is gone


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[gevent.os.nb_write(fd, view):]


def main(report_fd: int, **_: Any) -> int:
    """Entry point of ``hangup-listener deliver`` (monkey-patched by the CLI first)."""
    os.set_blocking(0, False)
    os.set_blocking(report_fd, False)
    return Deliverer(0, report_fd).serve()
