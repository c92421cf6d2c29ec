"""Liveness, readiness and the HTTP listener that serves them with the metrics.

``Liveness`` and ``Readiness`` are plain registries of named checks: the app registers the ESL
ones, the webhook subsystem adds its own (outbox writable, delivery loops, endpoints) with
``add``. ``HealthApp`` is a plain WSGI application (tested without a server); ``HealthServer``
is its gevent edge, on 127.0.0.1 by default.

* ``GET /livez``: 200 while every liveness check passes (the same checks gate systemd's
  ``WATCHDOG=1``), 503 with the problems otherwise.
* ``GET /readyz``: 200 when every required readiness check passes, 503 otherwise; a JSON body
  with every check's details (per node, per endpoint).
* ``GET /metrics``: the Prometheus text format.

The listener is bounded so that no local process can starve the daemon of file descriptors
(FreeSWITCH, the outbox and the webhooks need theirs):

- At most ``connection_cap(RLIMIT_NOFILE)`` connections are served at once: a quarter of the
  soft open-file limit, and never more than 64. One accepted beyond that is closed at once.
- A connection waits at most ``head_timeout_s`` (5 s) for a request line and its headers, the
  keep-alive idle time before them included; every read and write at most ``IO_TIMEOUT_S``.
  A connection that sends nothing, or half a request, is closed within seconds.
"""

from __future__ import annotations

import json
import logging
import resource
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.pool
import gevent.pywsgi

from listener.service.metrics import CONTENT_TYPE, Metrics

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
MAX_CONNECTIONS = 64
FD_SHARE = 4
"""The health listener holds at most 1/FD_SHARE of the open-file limit; the rest is the daemon's."""
HEAD_TIMEOUT_S = 5.0
IO_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Check:
    """One readiness check's answer: passed or not, with details for the JSON body."""

    ok: bool
    details: Any = None


ReadinessCheck = Callable[[], Check]
LivenessCheck = Callable[[], str | None]
"""Returns None when healthy, else a short description of what is stuck."""


class Readiness:
    """Ready when every required check passes; optional checks only add details."""

    def __init__(self) -> None:
        self._checks: dict[str, tuple[ReadinessCheck, bool]] = {}

    def add(self, name: str, check: ReadinessCheck, *, required: bool = True) -> None:
        """Register (or replace) a named check, e.g. ``outbox`` (required) or ``endpoints`` (not)."""
        self._checks[name] = (check, required)

    def report(self) -> dict[str, Any]:
        """``{"ready": bool, "<check>": {"ok", "required", "details"}, ...}``."""
        body: dict[str, Any] = {"ready": True}
        for name, (check, required) in self._checks.items():
            result = _run(check)
            body[name] = {"ok": result.ok, "required": required, "details": result.details}
            body["ready"] = body["ready"] and (result.ok or not required)
        return body

    def ready(self) -> bool:
        return bool(self.report()["ready"])


def _run(check: ReadinessCheck) -> Check:
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - a broken check means "not ready", never a crash
        return Check(ok=False, details={"error": type(exc).__name__})


class Liveness:
    """Healthy when no check reports a problem; what the watchdog and ``/livez`` ask."""

    def __init__(self) -> None:
        self._checks: dict[str, LivenessCheck] = {}

    def add(self, name: str, check: LivenessCheck) -> None:
        """Register (or replace) a named check, e.g. ``delivery`` for the webhook loops."""
        self._checks[name] = check

    def problems(self) -> list[str]:
        found = []
        for name, check in self._checks.items():
            try:
                problem = check()
            except Exception as exc:  # noqa: BLE001 - a broken check counts as a problem
                problem = f"check failed: {type(exc).__name__}"
            if problem:
                found.append(f"{name}: {problem}")
        return found


class HealthApp:
    """The WSGI application behind the health listener."""

    def __init__(self, liveness: Liveness, readiness: Readiness, metrics: Metrics) -> None:
        self.liveness = liveness
        self.readiness = readiness
        self.metrics = metrics

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _reply(start_response, "405 Method Not Allowed", b"GET only\n", allow="GET, HEAD")
        path = environ.get("PATH_INFO", "")
        if path == "/livez":
            return self._livez(start_response)
        if path == "/readyz":
            report = self.readiness.report()
            status = "200 OK" if report["ready"] else "503 Service Unavailable"
            return _json(start_response, status, report)
        if path == "/metrics":
            return _reply(start_response, "200 OK", self.metrics.render(), CONTENT_TYPE)
        return _reply(start_response, "404 Not Found", b"try /livez, /readyz or /metrics\n")

    def _livez(self, start_response: StartResponse) -> Iterable[bytes]:
        problems = self.liveness.problems()
        if problems:
            return _json(start_response, "503 Service Unavailable", {"live": False, "problems": problems})
        return _json(start_response, "200 OK", {"live": True})


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body, sort_keys=False).encode() + b"\n"
    return _reply(start_response, status, data, "application/json")


def _reply(start_response: StartResponse, status: str, body: bytes,
           content_type: str = "text/plain; charset=utf-8", **extra: str) -> list[bytes]:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-store"), *((k.capitalize(), v) for k, v in extra.items())]
    start_response(status, headers)
    return [body]


def connection_cap(soft_limit: int) -> int:
    """How many health connections may be open at once under an open-file limit of ``soft_limit``."""
    if soft_limit == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft_limit // FD_SHARE))


class HealthServer:
    """The HTTP listener (gevent.pywsgi); ``start`` binds, so ``port`` is known after it (port 0 too).

    Bounded as the module says; ``refused`` counts the connections closed because the cap was reached.
    """

    def __init__(self, host: str, port: int, app: HealthApp, *, max_connections: int | None = None,
                 head_timeout_s: float = HEAD_TIMEOUT_S) -> None:
        error_log = logging.getLogger("listener.service.health")
        self.host, self.requested_port = host, port
        cap = max_connections or connection_cap(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.server = _BoundedServer((host, port), app, max_connections=cap, head_timeout_s=head_timeout_s,
                                     log=None, error_log=error_log)

    def start(self) -> None:
        self.server.start()

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @property
    def max_connections(self) -> int:
        return int(self.server.max_connections)

    @property
    def refused(self) -> int:
        return int(self.server.refused)

    def stop(self, timeout: float = 2.0) -> None:
        self.server.stop(timeout=timeout)


class _BoundedServer(gevent.pywsgi.WSGIServer):  # type: ignore[misc]
    """A WSGIServer that closes a connection accepted while ``max_connections`` are being served.

    Its pool is unbounded on purpose: a full ``Pool(n)`` stops accepting, and new connections (a
    probe's among them) would queue in the backlog behind the idle ones, round after round.
    """

    def __init__(self, address: tuple[str, int], app: HealthApp, *, max_connections: int,
                 head_timeout_s: float, **options: Any) -> None:
        super().__init__(address, app, spawn=gevent.pool.Pool(None), handler_class=_BoundedHandler,
                         **options)
        self.max_connections = max_connections
        self.head_timeout_s = head_timeout_s
        self.refused = 0

    def do_handle(self, sock: Any, address: Any) -> None:
        if len(self.pool) >= self.max_connections:
            self.refused += 1
            sock.close()  # at once: its file descriptor is back before the next accept
            return
        super().do_handle(sock, address)


class _BoundedHandler(gevent.pywsgi.WSGIHandler):  # type: ignore[misc]
    """Each request's head, and the idle time before it, within ``head_timeout_s``; each read and write
    within ``IO_TIMEOUT_S``."""

    _head_timer: Any = None

    def handle(self) -> None:
        self.socket.settimeout(IO_TIMEOUT_S)
        super().handle()

    def handle_one_request(self) -> Any:
        timer = self._head_timer = gevent.Timeout.start_new(self.server.head_timeout_s)
        try:
            return super().handle_one_request()
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            return None  # no complete head in time: the connection is closed
        finally:
            timer.close()

    def get_environ(self) -> Any:
        if self._head_timer is not None:
            self._head_timer.close()  # the head is in: what follows is the application's
        return super().get_environ()
