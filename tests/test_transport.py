"""The webhook transport against real local servers: keep-alive reuse, stale connections, the cap,
timeouts told apart, answers mapped as before, close()."""

from __future__ import annotations

import queue
import resource
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import trustme
from webhook_receiver import refused_url
from wire_server import Answer, WireServer, wait

from listener.config.settings import WebhookConfig
from listener.core.circuit import UNREACHABLE
from listener.core.retry import RetrySchedule
from listener.core.signing import Delivered, Request, Retry, build_request
from listener.webhooks.transport import Transport, origin_of, request_head

KEY = b"k" * 24
CHUNKED = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")


def config(url: str, **kw: Any) -> WebhookConfig:
    kw.setdefault("timeout", 2.0)
    kw.setdefault("connect_timeout", 2.0)
    return WebhookConfig(name="t", url=url, keys=(KEY,), retry=RetrySchedule(delays=(5.0,)), **kw)


def request(url: str, n: int = 1, body: str = '{"id":"x"}') -> Request:
    return build_request(url, (KEY,), f"evt-{n}", body, int(time.time()))


@pytest.fixture
def server() -> Iterator[WireServer]:
    s = WireServer()
    yield s
    s.close()


@pytest.fixture
def transport(server: WireServer) -> Iterator[Transport]:
    t = Transport(config(server.url(), max_concurrency=4))
    yield t
    t.close()


def send(transport: Transport, n: int = 1) -> object:
    return transport.send(request(transport.config.url, n), time.time)


def test_many_requests_share_few_keep_alive_connections(server: WireServer, transport: Transport) -> None:
    senders = [gevent.spawn(lambda k=k: [send(transport, 10 * k + i) for i in range(10)]) for k in range(3)]
    gevent.joinall(senders, raise_error=True)
    assert [outcome for g in senders for outcome in g.value] == [Delivered(200)] * 30
    assert server.requests.qsize() == 30
    assert server.accepted <= 3


@pytest.mark.parametrize("then", ["close", "reset"])
def test_a_pooled_connection_the_server_closed_while_idle_is_resent_once_on_a_new_one(
    server: WireServer, transport: Transport, then: Any
) -> None:
    server.script(Answer(then=then))
    assert send(transport, 1) == Delivered(200)
    assert wait(server.server_closed) == 0  # the pooled connection is stale before the next request
    assert send(transport, 2) == Delivered(200)  # one call, one outcome: the attempt did not fail
    seen = [wait(server.requests), wait(server.requests)]
    assert [(s.connection, s.head["webhook-id"]) for s in seen] == [(0, "evt-1"), (1, "evt-2")]
    assert server.accepted == 2


def test_a_new_connection_closed_before_any_answer_is_a_failed_attempt_not_resent(
    server: WireServer, transport: Transport
) -> None:
    server.script(Answer(raw=b"", then="close"))
    outcome = send(transport)
    assert outcome == Retry("protocol_error")  # as with geventhttpclient's HTTPClient
    assert server.accepted == 1
    assert server.requests.qsize() == 1


def test_a_refused_connection_never_reached_the_server() -> None:
    t = Transport(config(refused_url()))
    outcome = send(t)
    assert outcome == Retry("connection_refused")
    assert outcome.reason in UNREACHABLE


def test_a_server_that_never_answers_is_a_read_timeout_and_its_connection_is_dropped(
    server: WireServer,
) -> None:
    t = Transport(config(server.url(), timeout=0.3))
    server.script(Answer(silent=True))
    outcome = send(t, 1)
    assert outcome == Retry("read_timeout")
    assert outcome.reason not in UNREACHABLE
    assert send(t, 2) == Delivered(200)
    assert server.accepted == 2


def test_an_answer_trickled_past_the_whole_request_deadline_is_cut_off(server: WireServer) -> None:
    t = Transport(config(server.url(), timeout=0.3, connect_timeout=0.2))  # deadline 0.5 s
    server.script(Answer(pace_s=0.05))  # each byte within the read timeout, the whole in ~2 s
    started = time.monotonic()
    assert send(t) == Retry("read_timeout")
    assert time.monotonic() - started < 1.5


def test_connection_close_in_the_answer_is_honoured(server: WireServer, transport: Transport) -> None:
    server.script(Answer(raw=b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"))
    assert send(transport, 1) == Delivered(200)
    assert wait(server.client_closed) == 0  # the server kept it open; the client closed it
    assert send(transport, 2) == Delivered(200)
    assert server.accepted == 2


def test_a_chunked_answer_is_drained_and_its_connection_reused(
    server: WireServer, transport: Transport
) -> None:
    server.script(Answer(raw=CHUNKED), Answer(raw=CHUNKED))
    assert [send(transport, 1), send(transport, 2), send(transport, 3)] == [Delivered(200)] * 3
    assert server.accepted == 1


def test_throttled_and_unavailable_answers_map_as_before(server: WireServer, transport: Transport) -> None:
    server.script(
        Answer(raw=b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 0\r\n\r\n"),
        Answer(raw=b"HTTP/1.1 503 Unavailable\r\ncontent-length: 4\r\n\r\nbusy"),
        Answer(raw=b"HTTP/1.1 503 Unavailable\r\nretry-after: 30\r\ncontent-length: 0\r\n\r\n"),
    )
    assert send(transport, 1) == Retry("throttled", 429, 7.0)
    assert send(transport, 2) == Retry("server_error", 503, None)
    assert send(transport, 3) == Retry("server_error", 503, 30.0)
    assert server.accepted == 1


def test_at_most_max_concurrency_connections_are_open(server: WireServer) -> None:
    t = Transport(config(server.url(), max_concurrency=2))
    server.default = Answer(hold=True)
    senders = [gevent.spawn(send, t, n) for n in range(6)]
    first = {wait(server.requests).connection, wait(server.requests).connection}
    with pytest.raises(queue.Empty):
        wait(server.requests, timeout=0.3)  # the other four wait for a slot
    server.release()
    gevent.joinall(senders, raise_error=True)
    assert [g.value for g in senders] == [Delivered(200)] * 6
    assert first == {0, 1}
    assert (server.accepted, server.most_open) == (2, 2)


def test_the_request_carries_host_with_its_port_and_the_signed_headers(
    server: WireServer, transport: Transport
) -> None:
    body = '{"id":"evt-1","caller":"Zoë"}'
    sent = request(server.url(), 1, body)
    assert transport.send(sent, time.time) == Delivered(200)
    seen = wait(server.requests)
    assert seen.line == "POST /hook HTTP/1.1"
    assert seen.head["host"] == f"127.0.0.1:{server.port}"
    assert seen.head["connection"] == "keep-alive"
    assert seen.head["content-length"] == str(len(body.encode()))
    assert {k: seen.head[k] for k in sent.headers} == dict(sent.headers)
    assert seen.body == body.encode()


@pytest.mark.parametrize(("url", "host", "port", "authority"), [
    ("http://example.com/hook", "example.com", 80, "example.com"),
    ("https://example.com:443/hook", "example.com", 443, "example.com"),
    ("https://example.com:8443/hook?a=1", "example.com", 8443, "example.com:8443"),
    ("http://[::1]:8080/hook", "::1", 8080, "[::1]:8080"),
])
def test_the_host_header_names_the_port_only_when_not_the_default(
    url: str, host: str, port: int, authority: str
) -> None:
    origin = origin_of(url)
    assert (origin.host, origin.port, origin.authority) == (host, port, authority)


def test_a_header_value_that_would_split_the_head_is_refused_and_not_sent(server: WireServer) -> None:
    bad = request(server.url(), 1)
    bad = Request(bad.target, {**bad.headers, "webhook-id": "evt-1\r\nx-injected: 1"}, bad.body)
    with pytest.raises(ValueError, match="control character"):
        request_head("h", bad)
    t = Transport(config(server.url()))
    assert t.send(bad, time.time) == Retry("protocol_error")
    assert server.accepted == 0


def test_close_closes_the_idle_connections(server: WireServer, transport: Transport) -> None:
    assert send(transport) == Delivered(200)
    transport.close()
    assert wait(server.client_closed) == 0


def test_a_connection_in_use_at_close_is_closed_when_its_request_ends(
    server: WireServer, transport: Transport
) -> None:
    server.script(Answer(hold=True))
    sender = gevent.spawn(send, transport)
    wait(server.requests)
    transport.close()
    server.release()
    assert sender.get(timeout=5) == Delivered(200)
    assert wait(server.client_closed) == 0


def test_over_tls_a_pooled_connection_is_reused_and_a_stale_one_resent(tmp_path: Path) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    server = WireServer(tls=context)
    t = Transport(config(server.url(scheme="https"), ca_bundle=bundle))
    try:
        server.script(Answer(), Answer(then="close"))
        assert [send(t, 1), send(t, 2)] == [Delivered(200)] * 2
        assert wait(server.server_closed) == 0
        assert send(t, 3) == Delivered(200)
        assert server.accepted == 2
    finally:
        t.close()
        server.close()


def test_an_idle_connection_the_server_wrote_to_is_dropped_unused(
    server: WireServer, transport: Transport
) -> None:
    transport.idle_check_s = 0.0  # check every pooled connection (in service: those idle for 1 s)
    timeout = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    server.script(Answer(after_release=timeout, then="close"))  # 200; later a 408 on its own, and close
    assert send(transport, 1) == Delivered(200)
    server.release()
    assert wait(server.server_closed) == 0
    assert send(transport, 2) == Delivered(200)  # not the stray 408, and not a failed attempt
    seen = [wait(server.requests), wait(server.requests)]
    assert [(s.connection, s.head["webhook-id"]) for s in seen] == [(0, "evt-1"), (1, "evt-2")]


def test_the_idle_check_works_for_a_descriptor_above_1024(server: WireServer, transport: Transport) -> None:
    """select() refuses descriptors from FD_SETSIZE (1024) on; under LimitNOFILE=65536 the daemon may
    hold such a one, and the check must neither fail nor drop a good connection."""
    transport.idle_check_s = 0.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100:
        pytest.skip(f"the open-file limit ({hard}) leaves no descriptor above 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100), hard))
    filler = [socket.socket() for _ in range(1030)]
    try:
        assert [send(transport, 1), send(transport, 2)] == [Delivered(200)] * 2
        seen = [wait(server.requests), wait(server.requests)]
        assert seen[0].connection == seen[1].connection == 0  # checked, found quiet, reused
        assert server.accepted == 1
    finally:
        for sock in filler:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
