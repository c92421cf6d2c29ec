"""The whole daemon as a subprocess: fake FreeSWITCH -> classify -> outbox -> signed webhooks.

SIGKILL mid-delivery then a restart loses nothing (duplicates only with the same webhook-id);
SIGTERM lets requests in flight finish and exits 0; a dead endpoint does not delay a healthy one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
from standardwebhooks.webhooks import Webhook
from webhook_receiver import Hold, Receiver, Reply, refused_url

from listener.core.event import HangupEvent
from tests.daemon import assert_never_blocked
from tests.fakeesl import FakeFreeSWITCH, Session, capture_bodies, event_frame, with_header

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def write_config(tmp_path: Path, fake: FakeFreeSWITCH, *urls: str, timeout: float = 2,
                 secrets: tuple[str, ...] = (SECRET,), types: str = '["leg.classified"]') -> Path:
    """The daemon's configuration; its endpoints get ``leg.classified`` only unless ``types`` says
    otherwise (these tests count legs; ``test_daemon_calls`` covers the calls)."""
    config = tmp_path / "listener.toml"
    secret = f'secret = "{SECRET}"' if secrets == (SECRET,) else f"secrets = {json.dumps(list(secrets))}"
    hooks = "".join(
        f'[[webhooks]]\nname = "hook{n}"\nurl = "{url}"\n{secret}\n'
        f"timeout = {timeout:g}\nretry_schedule = [0.2, 0.2, 0.2, 0.2, 0.2]\nretry_jitter = 0\n"
        f"types = {types}\n"
        for n, url in enumerate(urls)
    )
    config.write_text(
        f'[[freeswitch]]\nname = "lab"\nport = {fake.port}\n'
        f"[esl]\nbackoff_initial = 0.05\nbackoff_max = 0.2\n"
        f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\nsynchronous = "normal"\n'
        f"[health]\nport = 0\n{hooks}"  # never a fixed port
    )
    return config


def start_daemon(config: Path, *, read_log: bool = False, group: bool = False) -> subprocess.Popen[bytes]:
    """The daemon; with ``read_log`` its stdout is a pipe the test must keep reading, else a file
    beside the config that ``_loop_never_blocked`` reads after the test. With ``group`` it leads
    a process group of its own, as a systemd unit's control group."""
    with open(config.parent / f"daemon-{len(list(config.parent.glob('daemon-*.log')))}.log", "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "listener", "run", "--config", str(config)],
            stdout=subprocess.PIPE if read_log else out,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=group,
        )


@pytest.fixture(autouse=True)
def _loop_never_blocked(tmp_path: Path) -> Iterator[None]:
    yield
    for log in tmp_path.glob("daemon-*.log"):
        assert_never_blocked(log.read_text().splitlines())


def wait_classified(daemon: subprocess.Popen[bytes], count: int) -> None:
    """Read the daemon's log until ``count`` calls were classified (each logged after its commit)."""
    assert daemon.stdout is not None
    seen = 0
    while seen < count:
        line = gevent.get_hub().threadpool.apply(daemon.stdout.readline)
        assert line, "the daemon exited"
        event = json.loads(line)["event"]
        assert event != "loop.blocked", f"the daemon's loop was blocked: {line!r}"
        seen += event == "leg.classified"


def bodies(count: int) -> list[bytes]:
    """``count`` B legs of distinct calls (each names its own caller's leg, which never hangs up here:
    these tests count legs; ``test_daemon_calls`` covers the calls)."""
    template = capture_bodies("uas_486")[0]
    caller = HangupEvent.from_plain(template).other_leg_unique_id or ""
    assert caller
    assert template.count(caller.encode()) > 1
    return [with_header(template, "Unique-ID", f"call-{n:04d}").replace(caller.encode(), b"a-%06d" % n)
            for n in range(count)]


def send(session: Session, events: list[bytes]) -> None:
    session.send(b"".join(event_frame(body) for body in events))


def verified_ids(receiver: Receiver, path: str = "/hook", secret: str = SECRET) -> list[str]:
    """Every received webhook-id on ``path``, each signature checked by the reference library."""
    verifier = Webhook(secret)
    ids = []
    for request in [r for r in receiver.received if r.path == path]:
        payload = verifier.verify(request.body, request.headers)
        assert payload["data"]["id"] == request.webhook_id
        assert payload["timestamp"] == payload["data"]["ended_at"]
        ids.append(request.webhook_id)
    return ids


def expected_ids(events: list[bytes]) -> set[str]:
    from listener.core.document import document_id  # noqa: PLC0415

    return {document_id(e.core_uuid, e.unique_id) for e in map(HangupEvent.from_plain, events)}


def test_sigkill_mid_delivery_then_restart_loses_nothing(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/hook", *[Reply(200)] * 5, *[Hold()] * 4)
    events = bodies(30)
    with FakeFreeSWITCH() as fake:
        config = write_config(tmp_path, fake, receiver.url())
        daemon = start_daemon(config, read_log=True)
        try:
            send(fake.next_session(timeout=15), events)
            wait_classified(daemon, len(events))  # every event read is committed
            for _ in range(9):
                receiver.get(timeout=15)  # 5 answered, 4 held in flight: kill now
            daemon.send_signal(signal.SIGKILL)
            assert daemon.wait(timeout=10) == -signal.SIGKILL
        finally:
            daemon.kill()
        receiver.release()
        restarted = start_daemon(config)
        try:
            fake.next_session(timeout=15)
            want = expected_ids(events)
            while set(verified_ids(receiver)) != want:
                receiver.get(timeout=15)
            restarted.send_signal(signal.SIGTERM)
            assert restarted.wait(timeout=15) == 0
        finally:
            restarted.kill()
    ids = verified_ids(receiver)
    assert set(ids) == want
    # duplicates (same webhook-id, at-least-once): at most the 4 in flight and the 5 answered whose
    # acks were not yet settled (acks are recorded in batches, once per loop turn) when killed
    assert len(ids) - len(want) <= 9


@pytest.mark.parametrize("whole_group", [False, True], ids=["to_the_daemon", "to_every_process"])
def test_sigterm_lets_requests_in_flight_finish_keeps_the_rest(
    tmp_path: Path, receiver: Receiver, whole_group: bool
) -> None:
    """SIGTERM to the daemon, or to every process of its group as ``systemctl stop`` sends it (one
    process: the same thing)."""
    receiver.script("/hook", *[Hold()] * 4)
    events = bodies(10)
    with FakeFreeSWITCH() as fake:
        config = write_config(tmp_path, fake, receiver.url())
        daemon = start_daemon(config, group=whole_group)
        try:
            send(fake.next_session(timeout=15), events)
            for _ in range(4):
                receiver.get(timeout=15)
            if whole_group:
                os.killpg(daemon.pid, signal.SIGTERM)
            else:
                daemon.send_signal(signal.SIGTERM)
            receiver.release()
            assert daemon.wait(timeout=20) == 0
        finally:
            daemon.kill()
    answered = [receiver.answers.get(timeout=5) for _ in range(4)]
    assert all(status == 200 for _, status in answered)
    stats = subprocess.run(
        [sys.executable, "-m", "listener", "outbox", "--config", str(tmp_path / "listener.toml"), "list",
         "--state", "all", "--json"],
        capture_output=True, check=True, timeout=30,
    )
    delivered = set(verified_ids(receiver))
    left = {json.loads(line)["id"] for line in stats.stdout.decode().splitlines()}
    assert delivered | left == expected_ids(events)  # nothing lost: delivered, or still pending
    assert not delivered & left
    lines = [json.loads(line) for line in (tmp_path / "daemon-0.log").read_text().splitlines()]
    names = [line["event"] for line in lines]
    assert names.count("listener.started") == 1
    assert [line for line in lines if line["level"] in ("error", "critical")] == []
    assert names[-1] == "listener.stopped"


def test_a_dead_endpoint_does_not_delay_a_healthy_one(
    tmp_path: Path, receiver: Receiver
) -> None:
    events = bodies(20)
    with FakeFreeSWITCH() as fake:
        daemon = start_daemon(write_config(tmp_path, fake, refused_url(), receiver.url()))
        try:
            send(fake.next_session(timeout=15), events)
            while len(set(verified_ids(receiver))) < len(events):
                receiver.get(timeout=15)
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=20) == 0
        finally:
            daemon.kill()
    assert set(verified_ids(receiver)) == expected_ids(events)


def _http_get(port: int, path: str) -> tuple[int, bytes]:
    import http.client  # noqa: PLC0415

    def fetch() -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    result: tuple[int, bytes] = gevent.get_hub().threadpool.apply(fetch)
    return result


def wait_log(daemon: subprocess.Popen[bytes], event: str) -> dict[str, object]:
    return wait_logs(daemon, event)[event]


def wait_logs(daemon: subprocess.Popen[bytes], *events: str) -> dict[str, dict[str, object]]:
    """The first line of each of ``events``, in whatever order the daemon's two processes wrote them."""
    assert daemon.stdout is not None
    seen: dict[str, dict[str, object]] = {}
    while len(seen) < len(events):
        line = gevent.get_hub().threadpool.apply(daemon.stdout.readline)
        assert line, "the daemon exited"
        entry = json.loads(line)
        assert entry["event"] != "loop.blocked", f"the daemon's loop was blocked: {entry}"
        if entry["event"] in events:
            seen.setdefault(entry["event"], dict(entry))
    return seen


def test_metrics_and_readiness_report_deliveries_and_the_outbox(
    tmp_path: Path, receiver: Receiver
) -> None:
    events = bodies(6)
    receiver.script("/hook", Reply(500))  # the first attempt fails, its retry succeeds
    with FakeFreeSWITCH() as fake:
        config = write_config(tmp_path, fake, receiver.url())
        daemon = start_daemon(config, read_log=True)
        try:
            port = int(str(wait_log(daemon, "health.listening")["port"]))
            send(fake.next_session(timeout=15), events)
            wait_classified(daemon, len(events))
            while set(verified_ids(receiver)) != expected_ids(events):
                receiver.get(timeout=15)
            delivered = 'hangup_listener_webhook_deliveries_total{endpoint="hook0",outcome="delivered"} 6.0'
            empty = 'hangup_listener_outbox_pending_messages{endpoint="hook0"} 0.0'
            with gevent.Timeout(15, AssertionError("deliveries never counted")):
                while not {delivered, empty} <= set(
                        (metrics := _http_get(port, "/metrics")[1].decode()).splitlines()):
                    gevent.sleep(0.05)  # the ack follows the receiver's answer, the outbox figures are
                    # refreshed at most every 2 s: scrape until both show
            status, body = _http_get(port, "/readyz")
            ready = json.loads(body)
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=20) == 0
        finally:
            daemon.kill()
    assert status == 200
    assert ready["ready"] is True
    assert ready["outbox"]["details"] == {"state": "available", "writable": True, "code": None, "error": None,
                                         "unavailable_for_s": None}
    assert ready["endpoints"]["details"] == {"hook0": {"crashed": False}}
    assert "delivery" not in ready  # a check of the removed delivery process
    assert "classify_process" not in ready
    assert 'hangup_listener_outbox_pending_messages{endpoint="hook0"} 0.0' in metrics
    assert 'hangup_listener_webhook_deliveries_total{endpoint="hook0",outcome="failed"} 1.0' in metrics
    assert 'hangup_listener_outbox_pending_messages{endpoint="hook0"}' in metrics
    assert "hangup_listener_webhook_delivery_latency_seconds_count" in metrics
    assert 'hangup_listener_webhook_circuit_open{endpoint="hook0"} 0.0' in metrics
    assert "hangup_listener_build_info{" in metrics
    assert "process_resident_memory_bytes " in metrics


def test_sighup_reloads_webhook_endpoints_keeps_freeswitch(
    tmp_path: Path, receiver: Receiver
) -> None:
    with FakeFreeSWITCH() as fake:
        config = write_config(tmp_path, fake, receiver.url("/first"))
        daemon = start_daemon(config, read_log=True)
        try:
            session = fake.next_session(timeout=15)
            first = bodies(2)
            send(session, first)
            wait_classified(daemon, 2)
            while set(verified_ids(receiver, "/first")) != expected_ids(first):
                receiver.get(timeout=15)
            config.write_text(config.read_text().replace("/first", "/second"))
            daemon.send_signal(signal.SIGHUP)
            lines = wait_logs(daemon, "webhook.reconfigured", "config.reloaded")  # delivery's, the daemon's
            assert lines["webhook.reconfigured"]["started"] == ["hook0"]
            assert lines["config.reloaded"]["restart_required_for"] == []
            second = [with_header(b, "Unique-ID", f"after-{n}") for n, b in enumerate(bodies(2))]
            send(session, second)
            wait_classified(daemon, 2)
            while set(verified_ids(receiver, "/second")) != expected_ids(second):
                receiver.get(timeout=15)
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=20) == 0
        finally:
            daemon.kill()
        assert fake.accepted == 1  # the FreeSWITCH connection was never dropped
    assert not set(verified_ids(receiver, "/first")) & expected_ids(second)


def test_sigterm_during_a_reload_that_waits_for_a_changed_endpoint_stops_at_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script("/first", Hold())  # the changed endpoint's request is never answered
    events = bodies(1)
    with FakeFreeSWITCH() as fake:
        config = write_config(tmp_path, fake, receiver.url("/first"), timeout=30)
        daemon = start_daemon(config, read_log=True)
        try:
            send(fake.next_session(timeout=15), events)
            wait_classified(daemon, 1)
            receiver.get(timeout=15)
            config.write_text(config.read_text().replace("/first", "/second"))
            daemon.send_signal(signal.SIGHUP)  # hook0 changes: the reload waits up to 10 s for its request
            assert wait_log(daemon, "listener.signal_received")["signal"] == "SIGHUP"
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=6) == 0  # not after the reload's 10 s
        finally:
            daemon.kill()
    stats = subprocess.run(
        [sys.executable, "-m", "listener", "outbox", "--config", str(config), "list", "--json"],
        capture_output=True, check=True, timeout=30,
    )
    assert {json.loads(line)["id"] for line in stats.stdout.decode().splitlines()} == expected_ids(events)


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_the_daemon_is_one_process_while_it_ingests_and_delivers(tmp_path: Path, receiver: Receiver) -> None:
    events = bodies(5)
    with FakeFreeSWITCH() as fake:
        daemon = start_daemon(write_config(tmp_path, fake, receiver.url()), read_log=True)
        try:
            send(fake.next_session(timeout=15), events)
            wait_classified(daemon, len(events))
            while set(verified_ids(receiver)) != expected_ids(events):
                receiver.get(timeout=15)
            assert _children(daemon.pid) == []
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=20) == 0
        finally:
            daemon.kill()


NEW_SECRET = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def test_with_two_secrets_every_request_verifies_with_each_and_no_secret_is_logged(
    tmp_path: Path, receiver: Receiver
) -> None:
    events = bodies(3)
    with FakeFreeSWITCH() as fake:
        config = write_config(tmp_path, fake, receiver.url(), secrets=(SECRET, NEW_SECRET))
        config.write_text(config.read_text() + '[log]\nlevel = "debug"\n')
        daemon = start_daemon(config)
        try:
            send(fake.next_session(timeout=15), events)
            while len(set(verified_ids(receiver))) < len(events):
                receiver.get(timeout=15)
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=20) == 0
        finally:
            daemon.kill()
    assert set(verified_ids(receiver, secret=SECRET)) == expected_ids(events)
    assert set(verified_ids(receiver, secret=NEW_SECRET)) == expected_ids(events)
    assert all(len(r.headers["webhook-signature"].split(" ")) == 2 for r in receiver.received)
    log = "".join(p.read_text() for p in tmp_path.glob("daemon-*.log"))
    assert '"webhook.delivered"' in log
    signatures = [s for r in receiver.received for s in r.headers["webhook-signature"].split(" ")]
    for secret in (SECRET, NEW_SECRET, SECRET[6:], NEW_SECRET[6:], *(s[3:] for s in signatures)):
        assert secret not in log


def resend(config: Path, event_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "listener", "outbox", "--config", str(config), "resend", "--id", event_id],
        capture_output=True, text=True, timeout=30, check=False)


def test_a_delivered_message_resent_while_the_daemon_runs_arrives_again_with_its_webhook_id(
    tmp_path: Path, receiver: Receiver,
) -> None:
    events = bodies(1)
    (event_id,) = expected_ids(events)
    with FakeFreeSWITCH() as fake:
        config = write_config(tmp_path, fake, receiver.url())
        daemon = start_daemon(config)
        try:
            send(fake.next_session(timeout=15), events)
            assert receiver.get(timeout=15).webhook_id == event_id
            done = resend(config, event_id)
            for _ in range(50):  # the daemon records its ack a moment after the 200
                if done.returncode or not done.stdout.startswith("0 "):
                    break
                gevent.sleep(0.1)
                done = resend(config, event_id)
            assert (done.returncode, done.stdout.split()[0]) == (0, "1")
            assert receiver.get(timeout=15).webhook_id == event_id  # within the loop's 10 s sleep
            assert verified_ids(receiver) == [event_id, event_id]
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=15) == 0
        finally:
            daemon.kill()
