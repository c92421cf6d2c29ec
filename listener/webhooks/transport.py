"""One endpoint's HTTP/1.1 transport: send one signed POST over a keep-alive connection, map what
happened to a ``DeliveryOutcome``.

Invariants:

- At most ``max_concurrency`` connections are open at once, idle and in use together.
- A connection goes back to the idle pool (last in, first out) only after a complete response that
  allows keep-alive; after ``Connection: close``, an error or a timeout it is closed.
- A failure before the request could be written (no free slot, connect, TLS handshake) is told from
  one after (``outcome_of_error(connected=...)``): the first never reached the server.
- A pooled connection the server closed while it was idle (the write fails with EPIPE or a reset,
  or the response ends before its first byte) is not a failed attempt: the request is sent once
  more, on a new connection. The same on a new connection is a failure. Resending is safe:
  receivers dedupe on ``webhook-id``.
- A pooled connection idle for ``idle_check_s`` or longer is checked before use: if the server
  wrote to it or closed it meanwhile (say, an unsolicited ``408`` before an idle close), it is
  dropped unused, so that answer is never read as ours. Under load connections are reused within
  milliseconds and skip the check (a select() per request costs as much as a tenth of the request).
- The whole request, a resend included, takes at most ``connect_timeout + timeout``: one monotonic
  deadline, checked before every read, and a ``gevent.Timeout`` for every wait.
- A response is read with every part bounded (``listener.webhooks.response``): its head in size,
  lines and time; its body at most 64 KiB, else the connection is closed, never reused. The status
  of a well-formed head is the outcome, whatever its body does: a 200 whose body never ends is
  delivered, and not sent again.

Sockets and TLS are gevent's, so the transport is cooperative with or without monkey-patching.
"""

from __future__ import annotations

import contextlib
import errno
import re
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.lock
import gevent.monkey
import gevent.socket
import gevent.ssl

from listener.config.settings import WebhookConfig
from listener.core.signing import DeliveryOutcome, Request, Retry, outcome_of_response
from listener.webhooks.response import (
    ClosedBeforeAnswerError,
    DeadlineExceededError,
    Response,
    read_response,
)

Clock = Callable[[], float]
Socket = Any  # gevent's socket or SSLSocket (gevent ships no type information)
DEFAULT_PORTS = {"http": 80, "https": 443}
_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f]")
_UNSAFE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters but tab: would split the head
_PEER_GONE = (BrokenPipeError, ConnectionResetError)
IDLE_CHECK_S = 1.0
"""A pooled connection idle this long is checked for data or EOF before it carries a request."""
_poll = gevent.monkey.get_original("select", "poll")
"""The system's poll(), even after monkey-patching: with a zero timeout it never blocks, and unlike
select() (gevent's calls it first) it takes descriptors from 1024 on, which LimitNOFILE allows."""


class _NotSentError(Exception):
    """Nothing was written: no slot or no connection (the cause is chained)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What one POST came to: its outcome and, when asked for, the first bytes of the answer's body."""

    outcome: DeliveryOutcome
    body_start: bytes = b""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an endpoint's requests go: the address to connect to and the ``Host`` header."""

    host: str
    port: int
    tls: bool
    authority: str


def origin_of(url: str) -> Origin:
    """The origin of an http(s) URL; the ``Host`` value carries the port only when not the default."""
    parts = urlsplit(url)
    host, default = parts.hostname or "", DEFAULT_PORTS[parts.scheme]
    port = parts.port or default
    name = f"[{host}]" if ":" in host else host
    return Origin(host, port, parts.scheme == "https", name if port == default else f"{name}:{port}")


def request_head(authority: str, request: Request) -> bytes:
    """The request line and header block of ``request``; ``ValueError`` if a value would break it."""
    if _UNSAFE_TARGET.search(request.target) or _UNSAFE_VALUE.search("".join(request.headers.values())):
        raise ValueError(f"a control character in the request target or a header value: {request!r}")
    fields = "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
    return (f"POST {request.target} HTTP/1.1\r\nhost: {authority}\r\n{fields}"
            f"content-length: {len(request.body)}\r\nconnection: keep-alive\r\n\r\n").encode("latin-1")


class Transport:
    """One endpoint's keep-alive HTTP client; never raises for a failed request, returns a DeliveryOutcome."""

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self.origin = origin_of(config.url)
        self._tls = _tls_context(config) if self.origin.tls else None
        self._idle: list[tuple[Socket, float]] = []  # with when each went idle (monotonic)
        self.idle_check_s = IDLE_CHECK_S
        self._slots = gevent.lock.BoundedSemaphore(config.max_concurrency)
        self._closed = False

    def send(self, request: Request, clock: Clock) -> DeliveryOutcome:
        """POST ``request`` and read the answer, within connect_timeout + timeout."""
        return self.post(request, clock).outcome

    def post(self, request: Request, clock: Clock, *, keep: int = 0) -> Answer:
        """``send``, keeping the first ``keep`` bytes of the answer's body (``webhook test`` shows them)."""
        cfg = self.config
        budget = cfg.timeout + cfg.connect_timeout
        try:
            with gevent.Timeout(budget, DeadlineExceededError):
                head = request_head(self.origin.authority, request)
                response = self._exchange(head + request.body, time.monotonic() + budget, keep)
        except _NotSentError as exc:
            return Answer(outcome_of_error(exc.__cause__ or exc, connected=False))
        except Exception as exc:  # noqa: BLE001 - every transport failure is an outcome, mapped there
            return Answer(outcome_of_error(exc, connected=True))
        outcome = outcome_of_response(response.status, response.retry_after, clock())
        return Answer(outcome, response.body_start)

    def _exchange(self, data: bytes, deadline: float, keep: int) -> Response:
        """Within one of the ``max_concurrency`` slots: a connection, the request, its response."""
        try:
            self._slots.acquire()
        except Exception as exc:
            raise _NotSentError from exc
        try:
            pooled = self._pooled()
            if pooled is None:
                return self._roundtrip(self._connect(), data, deadline, keep)
            try:
                return self._roundtrip(pooled, data, deadline, keep)
            except ClosedBeforeAnswerError:
                pass  # closed by the server while idle: once more, on a new connection
            return self._roundtrip(self._connect(), data, deadline, keep)
        finally:
            self._slots.release()

    def _pooled(self) -> Socket | None:
        """The most recently used idle connection that is still quiet, if any."""
        while self._idle:
            sock, since = self._idle.pop()
            if time.monotonic() - since < self.idle_check_s or _quiet(sock):
                return sock
            sock.close()  # the server wrote or closed while it was idle: never read that as our answer
        return None

    def _roundtrip(self, sock: Socket, data: bytes, deadline: float, keep: int) -> Response:
        """Write ``data``, read the response (bounded); keep the socket only if it may be reused."""
        try:
            _write(sock, data)
            response = read_response(sock, deadline, keep=keep)
        except BaseException:
            sock.close()
            raise
        if response.reusable and not self._closed:
            self._idle.append((sock, time.monotonic()))
        else:
            sock.close()
        return response

    def _connect(self) -> Socket:
        """A new connection, TLS for https; any failure is a ``_NotSentError``."""
        try:
            return self._open()
        except Exception as exc:
            raise _NotSentError from exc

    def _open(self) -> Socket:
        origin, cfg = self.origin, self.config
        sock = gevent.socket.create_connection((origin.host, origin.port), timeout=cfg.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=origin.host)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(cfg.timeout)
        return sock

    def close(self) -> None:
        """Close the idle connections; those in use are closed when their request ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for sock, _ in idle:
            sock.close()


def _quiet(sock: Socket) -> bool:
    """Nothing to read on an idle connection: no stray bytes, no EOF."""
    poller = _poll()
    try:
        poller.register(sock, select.POLLIN)  # hang-ups and errors are reported whatever the mask
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


def _write(sock: Socket, data: bytes) -> None:
    """Send ``data`` whole; a peer that is gone is left for the response read to find out."""
    with contextlib.suppress(*_PEER_GONE):  # it may have answered first (an early 4xx); or the read sees EOF
        sock.sendall(data)


def _tls_context(config: WebhookConfig) -> Any:
    """Verify against the system store, or only the endpoint's ``ca_bundle``; hostname checked."""
    return gevent.ssl.create_default_context(cafile=str(config.ca_bundle) if config.ca_bundle else None)


_CONNECT_ERRNOS = {errno.ECONNREFUSED: "connection_refused", errno.EHOSTUNREACH: "host_unreachable",
                   errno.ENETUNREACH: "network_unreachable"}


def outcome_of_error(exc: BaseException, *, connected: bool) -> Retry:
    """What a transport failure means; ``connected`` says whether the request may have been sent."""
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return Retry("tls_error")
    if isinstance(exc, socket.gaierror):
        return Retry("dns_error")
    if isinstance(exc, TimeoutError | socket.timeout):
        return Retry("read_timeout" if connected else "connect_timeout")
    if isinstance(exc, OSError) and exc.errno in _CONNECT_ERRNOS:
        return Retry(_CONNECT_ERRNOS[exc.errno])
    if isinstance(exc, ConnectionError | OSError):
        return Retry("connection_reset" if connected else "connect_error")
    return Retry("protocol_error")
