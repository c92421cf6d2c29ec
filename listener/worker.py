"""Webhook delivery in its own process, so that ingestion and delivery each get a core.

The daemon's one Python thread cannot both read, classify and commit several thousand calls a
second and POST them: under a burst the main thread sat at 100% of a core while the second core was
a third idle. ``DeliveryWorker`` starts ``hangup-listener deliver`` (``listener.deliverer``) and
watches it:

- it sends the settings first (again on every reload) and a wake after each outbox commit that
  created rows, so the child claims them at once;
- it reads the child's reports (attempts, health) into the daemon's metrics and health checks;
- if the child exits, it says so and starts a new one after a backoff (1 s doubling to 30 s);
  nothing is lost, rows stay in the outbox until acknowledged;
- ``stop`` asks the child to finish requests in flight within the deadline, then kills it.

The outbox is the only hand-off: the child claims every row from it, and deletes a row only once
its endpoint answered 2xx.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import gevent.event
import gevent.os
import gevent.subprocess
import structlog

from listener.backoff import reconnect_delay
from listener.sink import Attempted, OutboxWriter, WebhookSink
from listener.webhook_config import OutboxConfig, WebhookConfig
from listener.workerwire import Report, Settings, read_report, settings_frame, stop_frame, wake_frame

AttemptObserver = Callable[[str, str, float], None]
"""Called with (endpoint, outcome: delivered | failed | gave_up, latency_s) for each attempt."""
log = structlog.get_logger("listener.worker")
SEND_TIMEOUT_S = 5.0
"""Longest wait for the child to take a settings or stop frame."""
HEALTHY_RUN_S = 60.0
"""A child that ran this long before it exited restarts after the shortest backoff again."""


class DeliveryWorker:
    """The delivery process, seen from the daemon: ``start`` once, ``reconfigure`` on reload, ``stop``."""

    mode = "process"

    def __init__(self, writer: OutboxWriter, webhooks: Sequence[WebhookConfig], outbox: OutboxConfig,
                 log_level: str, *, command: Sequence[str] | None = None,
                 backoff_initial_s: float = 1.0, backoff_cap_s: float = 30.0) -> None:
        self._writer = writer
        self._settings = Settings(tuple(webhooks), outbox, log_level)
        self._command = list(command or (sys.executable, "-m", "listener", "deliver"))
        self._backoff = (backoff_initial_s, backoff_cap_s)
        self._failures = 0
        self.observers: list[AttemptObserver] = []
        self._proc: Any = None
        self._report: Report | None = None
        self._supervisor: gevent.Greenlet | None = None
        self._stopping = False
        self._writing = False
        self.started_count = 0
        self.running = gevent.event.Event()
        self._applied = gevent.event.Event()
        writer.on_commit(self._committed)

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(w.name for w in self._settings.webhooks)

    @property
    def crashed(self) -> tuple[str, ...]:
        """The endpoints whose loop crashed in the running child, by its last report."""
        return self._report.crashed if self._report else ()

    @property
    def healthy(self) -> bool:
        """The outbox has not failed here, and the child did not report a failure (a restart is not one)."""
        return self._writer.failure is None and (self._report is None or self._report.healthy)

    def start(self) -> None:
        self._supervisor = gevent.spawn(self._supervise)

    def reconfigure(self, webhooks: Sequence[WebhookConfig], log_level: str | None = None) -> None:
        """Route new documents by ``webhooks`` at once; the child applies them as its next frame."""
        self._writer.set_webhooks(webhooks)
        level = log_level or self._settings.log_level
        old = self._settings
        self._settings = Settings(tuple(webhooks), old.outbox, level, old.generation + 1)
        self._applied.clear()
        self._send(settings_frame(self._settings))

    def wait_applied(self, timeout: float) -> bool:
        """Wait until the running child reports the latest settings in force; False on timeout."""
        return bool(self._applied.wait(timeout))

    def stop(self, deadline_s: float) -> bool:
        """Let the child finish requests in flight within ``deadline_s``; True if it exited in time."""
        self._stopping = True
        proc = self._proc
        clean = True
        if proc is not None and proc.poll() is None:
            self._send(stop_frame(deadline_s))
            try:
                proc.wait(timeout=deadline_s + 2.0)
            except gevent.subprocess.TimeoutExpired:
                log.error("webhook.worker_killed", pid=proc.pid, reason=f"not stopped within {deadline_s:g}s")
                proc.kill()
                proc.wait()
                clean = False
        if self._supervisor is not None:  # it reads the child's last report, then ends
            self._supervisor.join(timeout=2.0)
            self._supervisor.kill(block=True, timeout=1.0)
        return clean and proc is not None and proc.returncode == 0

    # -- the child ----------------------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stopping:
            started = time.monotonic()
            code = self._run_child()
            if self._stopping:
                return
            if time.monotonic() - started >= HEALTHY_RUN_S:
                self._failures = 0
            initial, cap = self._backoff
            delay = reconnect_delay(self._failures, initial=initial, cap=cap)
            self._failures += 1
            log.error("webhook.worker_exited", code=code, restart_in_s=round(delay, 1))
            gevent.sleep(delay)

    def _run_child(self) -> int | None:
        read_fd, write_fd = os.pipe()
        try:
            proc = gevent.subprocess.Popen([*self._command, "--report-fd", str(write_fd)],
                                           stdin=subprocess.PIPE, pass_fds=(write_fd,))
        except OSError as exc:
            os.close(read_fd)
            log.error("webhook.worker_start_failed", reason=str(exc))
            return None
        finally:
            os.close(write_fd)
        self._proc, self._report = proc, None
        self.started_count += 1
        log.info("webhook.worker_started", pid=proc.pid)
        self._send(settings_frame(self._settings))
        self.running.set()
        try:
            self._read_reports(read_fd)
        finally:
            os.close(read_fd)
            self.running.clear()
        code: int | None = proc.wait()
        return code

    def _read_reports(self, fd: int) -> None:
        os.set_blocking(fd, False)
        pending = b""
        while data := gevent.os.nb_read(fd, 65536):
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                try:
                    report = read_report(line)
                except (ValueError, KeyError, TypeError) as exc:  # a bug in the child: say so, go on
                    log.error("webhook.worker_report_unreadable", reason=str(exc), line=line[:200].decode(
                        "utf-8", "replace"))
                    continue
                self._apply(report)

    def _apply(self, report: Report) -> None:
        self._report = report
        if report.applied >= self._settings.generation:
            self._applied.set()
        for endpoint, outcome, latency_s in report.attempts:
            for observe in self.observers:
                observe(endpoint, outcome, latency_s)

    def _committed(self, endpoints: frozenset[str]) -> None:
        """After a commit that created rows: wake the child, never waiting (this is the commit loop).

        When a frame is being written or the pipe is full, the wake is dropped: the child has unread
        frames already, and its loops also look for due rows every second.
        """
        proc = self._proc
        if not endpoints or self._writing or proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(OSError):  # BlockingIOError when full; a child gone is the supervisor's
            os.write(proc.stdin.fileno(), wake_frame())  # 5 bytes: written whole or not at all

    def _send(self, data: bytes) -> None:
        """Write a frame to the child; if it is gone, the supervisor sees it exit and restarts it.

        A child that does not take the frame within ``SEND_TIMEOUT_S`` (it stopped reading) is
        killed: its frames are cut, and the one started next gets the settings in force.
        """
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self._writing = True
        try:
            with gevent.Timeout(SEND_TIMEOUT_S):
                proc.stdin.write(data)
                proc.stdin.flush()
        except gevent.Timeout:
            reason = f"stopped reading for {SEND_TIMEOUT_S:g}s"
            log.error("webhook.worker_killed", pid=proc.pid, reason=reason)
            proc.kill()
        except OSError:
            pass
        finally:
            self._writing = False


class InlineDelivery:
    """Delivery on the daemon's own loop (``[outbox] delivery_process = false``): one process, less
    memory, and ingestion and delivery share one core. Same face as ``DeliveryWorker``."""

    mode = "inline"

    def __init__(self, writer: OutboxWriter, webhooks: Sequence[WebhookConfig]) -> None:
        self._sink = WebhookSink(writer, webhooks)
        self._sink.observers.append(self._attempted)
        self.observers: list[AttemptObserver] = []
        self.running = gevent.event.Event()
        self.started_count = 0

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(self._sink.endpoints)

    @property
    def crashed(self) -> tuple[str, ...]:
        return self._sink.crashed

    @property
    def healthy(self) -> bool:
        return self._sink.healthy

    def start(self) -> None:
        self._sink.start()
        self.started_count += 1
        self.running.set()

    def reconfigure(self, webhooks: Sequence[WebhookConfig], log_level: str | None = None) -> None:
        self._sink.reconfigure(webhooks)

    def stop(self, deadline_s: float) -> bool:
        self.running.clear()
        return self._sink.stop(deadline_s)

    def _attempted(self, attempt: Attempted) -> None:
        for observe in self.observers:
            observe(attempt.endpoint, attempt.kind, attempt.latency_s)
