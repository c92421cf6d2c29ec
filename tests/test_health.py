"""Health: the checks, the WSGI app, and /livez, /readyz, /metrics over HTTP as FreeSWITCH comes and goes."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.queue
import gevent.socket
import pytest
from structlog.testing import capture_logs

from listener.app import App
from listener.config.settings import Config, ESLSettings, HealthConfig, Node
from listener.esl.source import ESLSource, Tally
from listener.service.health import (
    Check,
    HealthApp,
    HealthServer,
    Liveness,
    Readiness,
    connection_cap,
)
from listener.service.metrics import Metrics
from listener.service.runtime import source_problem, status_line
from tests.daemon import fetch
from tests.fakeesl import FakeFreeSWITCH

FAST = ESLSettings(connect_timeout=2, command_timeout=1, backoff_initial=0.01, backoff_max=0.05)


def call(app: HealthApp, path: str, method: str = "GET") -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(app({"REQUEST_METHOD": method, "PATH_INFO": path}, start_response))
    return seen["status"], seen["headers"], body


def test_ready_needs_every_required_check_optional_ones_only_inform() -> None:
    readiness = Readiness()
    readiness.add("nodes", lambda: Check(True, {"pbx1": "connected"}))
    readiness.add("endpoints", lambda: Check(False, {"crm": "failing"}), required=False)
    assert readiness.report() == {
        "ready": True,
        "nodes": {"ok": True, "required": True, "details": {"pbx1": "connected"}},
        "endpoints": {"ok": False, "required": False, "details": {"crm": "failing"}},
    }
    readiness.add("outbox", lambda: Check(False, {"writable": False}))
    assert readiness.ready() is False


def test_a_check_that_raises_is_a_failed_check_without_its_message() -> None:
    def broken() -> Check:
        raise OSError("password=hunter2")

    readiness, liveness = Readiness(), Liveness()
    readiness.add("outbox", broken)
    liveness.add("delivery", broken)  # type: ignore[arg-type]
    assert readiness.report()["outbox"]["details"] == {"error": "OSError"}
    assert liveness.problems() == ["delivery: check failed: OSError"]


def test_the_wsgi_app_answers_livez_readyz_metrics_and_nothing_else() -> None:
    liveness, readiness = Liveness(), Readiness()
    app = HealthApp(liveness, readiness, Metrics())
    assert call(app, "/livez")[0] == "200 OK"
    status, headers, body = call(app, "/readyz")
    assert (status, headers["Content-Type"]) == ("200 OK", "application/json")
    assert json.loads(body) == {"ready": True}
    status, headers, _ = call(app, "/metrics")
    assert status == "200 OK"
    assert headers["Content-Type"].startswith("text/plain; version=")
    assert call(app, "/")[0] == "404 Not Found"
    assert call(app, "/livez", "POST")[0] == "405 Method Not Allowed"
    liveness.add("delivery", lambda: "loop crashed")
    status, _, body = call(app, "/livez")
    assert status == "503 Service Unavailable"
    assert json.loads(body) == {"live": False, "problems": ["delivery: loop crashed"]}


def test_a_connected_source_that_reads_nothing_or_a_stuck_handler_is_a_liveness_problem() -> None:
    settings = ESLSettings(liveness_timeout=60, command_timeout=5)
    source = ESLSource(Node("pbx1"), settings, lambda frames: Tally(), _Log())
    source.state = "connected"
    source.stats.last_received = 1000.0
    assert source_problem(source, now=1060.0) is None
    assert "reader stuck" in str(source_problem(source, now=1071.0))
    source.state = "backoff"
    assert source_problem(source, now=5000.0) is None
    source.stats.handling_since = 5000.0
    assert "handler stuck" in str(source_problem(source, now=5061.0))
    assert status_line([source]) == "0/1 nodes connected: pbx1 backoff"


class _Log:
    def bind(self, **_: object) -> _Log:
        return self


# -- over HTTP, in process, against a fake FreeSWITCH ------------------------------------------



@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[gevent.socket.socket]:
    sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with sock:
        yield sock


def until(sock: gevent.socket.socket, prefix: str) -> str:
    """The next notification starting with ``prefix`` (others, e.g. WATCHDOG=1, are skipped)."""
    while not (message := sock.recv(4096).decode()).startswith(prefix):
        pass
    return message


def wait_state(states: gevent.queue.Queue[str], want: str) -> None:
    with gevent.Timeout(10, AssertionError(f"never {want}")):
        while states.get() != want:
            pass


def test_health_endpoints_and_notifications_follow_a_node_connecting_and_going_away(
    notify_socket: gevent.socket.socket,
) -> None:
    with capture_logs() as logs, FakeFreeSWITCH() as fake:
        config = Config(nodes=(Node("pbx1", port=fake.port),), esl=FAST, health=HealthConfig(port=0))
        app = App(config)
        states: gevent.queue.Queue[str] = gevent.queue.Queue()
        notified = app.service.state_changed
        app.service.state_changed = lambda s: (notified(s), states.put(s.state))  # type: ignore[method-assign]
        app.start()
        port = next(e["port"] for e in logs if e["event"] == "health.listening")
        assert until(notify_socket, "READY=1").startswith("READY=1\nSTATUS=")
        session = fake.next_session()
        wait_state(states, "connected")
        assert until(notify_socket, "STATUS=1/1") == "STATUS=1/1 nodes connected: pbx1 connected"
        assert until(notify_socket, "WATCHDOG=1") == "WATCHDOG=1"
        status, body = fetch(port, "/readyz")
        assert status == 200
        assert json.loads(body)["nodes"]["details"]["pbx1"]["state"] == "connected"
        session.close()
        wait_state(states, "connected")
        metrics = fetch(port, "/metrics")[1].decode()
        assert 'hangup_listener_esl_reconnects_total{node="pbx1"} 1.0' in metrics
        assert "hangup_listener_ready 1.0" in metrics
        again = fake.next_session()
    again.close()  # FreeSWITCH is gone: no listener any more, the connection closed
    wait_state(states, "backoff")
    status, body = fetch(port, "/readyz")
    assert status == 503
    assert json.loads(body)["ready"] is False
    assert fetch(port, "/livez")[0] == 200
    assert 'hangup_listener_esl_connection_state{node="pbx1",state="connected"} 0.0' in (
        fetch(port, "/metrics")[1].decode())
    app.stop(timeout=5)
    assert until(notify_socket, "STOPPING=1") == "STOPPING=1"
    with pytest.raises(OSError):
        fetch(port, "/livez")


def test_the_health_listener_can_be_turned_off() -> None:
    app = App(Config(nodes=(Node("n", port=1),), esl=FAST, health=HealthConfig(enabled=False)))
    with capture_logs() as logs:
        app.start()
        app.stop(timeout=5)
    assert app.service.server is None
    assert not [e for e in logs if e["event"] == "health.listening"]


def test_the_watchdog_is_withheld_while_a_liveness_check_fails_and_resumes_after(
    notify_socket: gevent.socket.socket,
) -> None:
    app = App(Config(nodes=(Node("n", port=1),), esl=FAST, health=HealthConfig(enabled=False)))
    stuck = {"delivery": "loop stuck"}
    app.service.liveness.add("delivery", lambda: stuck.get("delivery"))
    with capture_logs() as logs:
        assert app.service.ping() is False
        assert app.service.ping() is False
        del stuck["delivery"]
        assert app.service.ping() is True
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    events = [e["event"] for e in logs]
    assert events == ["watchdog.ping_withheld", "watchdog.ping_resumed"]
    assert logs[0]["problems"] == ["delivery: loop stuck"]


# -- bounded: a cap on connections, a deadline for each request's head -------------------------


@pytest.fixture
def bounded() -> Iterator[HealthServer]:
    server = HealthServer("127.0.0.1", 0, HealthApp(Liveness(), Readiness(), Metrics()),
                          max_connections=4, head_timeout_s=1.0)
    server.start()
    yield server
    server.stop()


def connect(port: int) -> gevent.socket.socket:
    return gevent.socket.create_connection(("127.0.0.1", port), timeout=5)


def closed_by_server(sock: gevent.socket.socket) -> None:
    """Read until the server closes ``sock`` (EOF or reset); at most 5 s."""
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    sock.close()


def test_the_cap_is_a_quarter_of_the_open_file_limit_and_at_most_64() -> None:
    assert [connection_cap(n) for n in (1, 8, 128, 1024, 65536)] == [1, 2, 32, 64, 64]
    assert connection_cap(resource.RLIM_INFINITY) == 64


def test_a_connection_beyond_the_cap_is_closed_at_once_idle_ones_at_the_head_timeout(
    bounded: HealthServer,
) -> None:
    started = time.monotonic()
    idle = [connect(bounded.port) for _ in range(4)]
    extra = connect(bounded.port)
    closed_by_server(extra)
    assert time.monotonic() - started < 0.8  # at once, not after the head timeout
    assert bounded.refused == 1
    for sock in idle:
        closed_by_server(sock)
    assert 0.95 < time.monotonic() - started < 3.0
    assert fetch(bounded.port, "/livez")[0] == 200
    assert bounded.refused == 1


def test_a_request_head_still_trickling_in_is_closed_at_the_head_timeout(bounded: HealthServer) -> None:
    sock = connect(bounded.port)

    def trickle() -> None:
        with contextlib.suppress(OSError):
            for byte in b"GET /livez HTTP/1.1\r\nx-slow: " + b"a" * 100:
                sock.sendall(bytes([byte]))
                gevent.sleep(0.05)  # the client's pace: each byte well within any read timeout

    sender = gevent.spawn(trickle)
    started = time.monotonic()
    closed_by_server(sock)
    assert 0.9 < time.monotonic() - started < 3.0  # the whole head would take 6 s
    sender.kill()


def test_a_keep_alive_connection_left_idle_after_an_answer_is_closed_at_the_head_timeout(
    bounded: HealthServer,
) -> None:
    sock = connect(bounded.port)
    sock.sendall(b"GET /livez HTTP/1.1\r\nHost: h\r\n\r\n")
    answer = b""
    while not answer.endswith(b'{"live": true}\n'):
        answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    started = time.monotonic()
    closed_by_server(sock)
    assert 0.9 < time.monotonic() - started < 3.0
