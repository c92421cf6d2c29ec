"""docs/examples/webhook_receiver.py does what docs/webhooks.md says, against the daemon's own signing.

Requests are built by ``listener.core.signing`` exactly as delivery builds them; the last test runs
the real daemon against the fake FreeSWITCH with the example as its endpoint.
"""

from __future__ import annotations

import base64
import http.client
import importlib.util
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any

import gevent
import pytest

from listener.core.classifier import default_classifier
from listener.core.document import build, document_id
from listener.core.event import HangupEvent
from listener.core.signing import Request, build_request, render
from tests.daemon import assert_never_blocked
from tests.fakeesl import FakeFreeSWITCH, capture_bodies, event_frame
from tests.test_daemon_webhooks import SECRET, start_daemon

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "webhook_receiver.py"
DOCS = ROOT / "docs" / "webhooks.md"
KEY = base64.b64decode(SECRET.removeprefix("whsec_"))
NEW_SECRET = "whsec_" + base64.b64encode(b"the new secret, 32 bytes long!!!").decode()
NEW_KEY = base64.b64decode(NEW_SECRET.removeprefix("whsec_"))
SCENARIOS = ("uas_486", "answered_caller_bye")


def load_example() -> ModuleType:
    """The example as a module (its name is not ``webhook_receiver``: tests/ has one of those)."""
    spec = importlib.util.spec_from_file_location("example_webhook_receiver", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = load_example()


class Running:
    """The example serving on 127.0.0.1, port 0, on a thread of its own."""

    def __init__(self, db: Path, secrets: Sequence[str] = (SECRET,), busy_timeout: float = 5.0) -> None:
        self.db = db
        self.server = example.make_server(list(secrets), str(db), busy_timeout=busy_timeout)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hooks/calls"

    def post(self, request: Request) -> int:
        """Send ``request`` as delivery does; the status of the answer."""
        host, port = self.server.server_address[:2]
        with closing(http.client.HTTPConnection(host, port, timeout=10)) as conn:
            conn.request("POST", request.target, request.body, dict(request.headers))
            answer = conn.getresponse()
            answer.read()
            return answer.status

    def rows(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.db)) as db:
            return db.execute(sql, params).fetchall()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Running]:
    running = Running(tmp_path / "receiver.sqlite3")
    yield running
    running.close()


def legs_of(scenario: str) -> list[dict[str, Any]]:
    """The leg documents the daemon makes of a real capture."""
    classifier = default_classifier()
    events = [HangupEvent.from_plain(body) for body in capture_bodies(scenario)]
    return [build(event, classifier.classify(event), "pbx1") for event in events]


def call_of(legs: list[dict[str, Any]], *, missing: Sequence[str] = ()) -> dict[str, Any]:
    """A call.completed document for these legs, as docs/payload.md describes one."""
    caller = next(leg for leg in legs if leg["leg"] == "a")
    fields = ("status", "status_label", "bye_reason", "last_response_code", "hangup_by", "caller_number",
              "caller_name", "direction", "answered", "answered_at", "ended_at", "ring_s", "duration_s",
              "node")
    return {
        "schema_version": 2, "id": str(uuid.uuid5(uuid.NAMESPACE_URL, caller["call_uuid"])),
        "complete": not missing, "missing_legs": list(missing), "caller_leg_id": caller["id"],
        "answered_leg_id": None, "callee_number": caller["destination_number"],
        "started_at": caller["created_at"], "talk_s": None,
        **{name: caller[name] for name in fields}, "legs": legs,
    }


def signed(kind: str, data: Mapping[str, Any], keys: Sequence[bytes] = (KEY,), *,
           msg_id: str | None = None) -> Request:
    """The request delivery sends for one document, enveloped."""
    body = render({"type": kind, "timestamp": data.get("ended_at"), "data": data})
    return build_request("http://receiver/hooks/calls", keys, msg_id or data["id"], body, int(time.time()))


def test_a_leg_and_a_call_are_stored_with_their_key_fields(receiver: Running) -> None:
    legs = legs_of("uas_486")
    call = call_of(legs)
    assert receiver.post(signed("leg.classified", legs[0])) == 204
    assert receiver.post(signed("call.completed", call)) == 204
    assert receiver.rows("SELECT id, call_id, status, last_response_code FROM legs ORDER BY id") == sorted(
        (leg["id"], call["id"], leg["status"], leg["last_response_code"]) for leg in legs)
    assert receiver.rows("SELECT id, complete, missing_legs, status FROM calls") == [
        (call["id"], 1, "[]", "busy")]


def test_a_leg_sent_after_its_call_keeps_its_link_to_the_call(receiver: Running) -> None:
    legs = legs_of("answered_caller_bye")
    call = call_of(legs)
    assert receiver.post(signed("call.completed", call)) == 204
    assert receiver.post(signed("leg.classified", legs[1])) == 204
    assert receiver.rows("SELECT DISTINCT call_id FROM legs") == [(call["id"],)]
    assert len(receiver.rows("SELECT id FROM legs")) == 2


def test_an_incomplete_call_and_its_late_leg_are_found_by_the_query_in_the_docs(receiver: Running) -> None:
    legs = legs_of("uas_486")
    callee = next(leg for leg in legs if leg["leg"] == "b")
    call = call_of([leg for leg in legs if leg is not callee], missing=[callee["channel_uuid"]])
    assert receiver.post(signed("call.completed", call)) == 204
    assert receiver.rows("SELECT complete, missing_legs FROM calls") == [
        (0, json.dumps([callee["channel_uuid"]]))]
    assert receiver.rows(docs_block("sql")) == []
    assert receiver.post(signed("leg.classified", callee)) == 204  # late: on its own only
    assert receiver.rows(docs_block("sql")) == [(call["id"], callee["id"])]


def docs_block(language: str) -> str:
    """The one ``language`` code block of docs/webhooks.md's receiver section."""
    section = DOCS.read_text().split("### A complete receiver", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(rf"```{language}\n(.*?)```", section, re.DOTALL)
    return textwrap.dedent(block)


def test_the_excerpt_in_the_docs_is_the_example_s_code() -> None:
    def code(text: str) -> list[str]:
        return [line.split("  # ")[0].strip() for line in text.splitlines()]
    excerpt, example_code = code(docs_block("python")), set(code(EXAMPLE.read_text()))
    assert [line for line in excerpt if line not in example_code] == []


@pytest.mark.parametrize("kind", ["leg.classified", "call.completed"])
def test_the_same_webhook_id_twice_is_answered_2xx_both_times_and_stored_once(
    receiver: Running, kind: str
) -> None:
    legs = legs_of("uas_486")
    data = legs[0] if kind == "leg.classified" else call_of(legs)
    first = signed(kind, data)
    assert receiver.post(first) == 204
    assert receiver.post(first) == 204  # a retry: the same request
    assert receiver.post(signed(kind, data)) == 204  # a resend: the same id and body, signed again
    table = "legs" if kind == "leg.classified" else "calls"
    assert len(receiver.rows(f"SELECT id FROM {table}")) == 1
    assert receiver.rows("SELECT webhook_id, type FROM seen") == [(data["id"], kind)]


def test_schema_version_1_legs_from_an_older_daemon_are_stored_too(receiver: Running) -> None:
    leg = {**legs_of("uas_486")[0], "schema_version": 1}
    assert receiver.post(signed("leg.classified", leg)) == 204
    assert receiver.rows("SELECT id, schema_version FROM legs") == [(leg["id"], 1)]


def test_a_bad_signature_is_401_and_nothing_is_stored(receiver: Running) -> None:
    leg = legs_of("uas_486")[0]
    assert receiver.post(signed("leg.classified", leg, (NEW_KEY,))) == 401
    request = signed("leg.classified", leg)
    tampered = Request(request.target, request.headers, request.body.replace(b"busy", b"ended"))
    assert receiver.post(tampered) == 401
    unsigned = Request(request.target, {"content-type": "application/json"}, request.body)
    assert receiver.post(unsigned) == 401
    assert receiver.rows("SELECT * FROM seen") == []


@pytest.mark.parametrize("keys", [(NEW_KEY,), (KEY, NEW_KEY), (NEW_KEY, KEY)],
                         ids=["new_only", "both", "new_first"])
def test_while_a_secret_is_rotated_a_request_signed_with_either_verifies(
    tmp_path: Path, keys: tuple[bytes, ...]
) -> None:
    running = Running(tmp_path / "receiver.sqlite3", secrets=(SECRET, NEW_SECRET))
    try:
        assert running.post(signed("leg.classified", legs_of("uas_486")[0], keys)) == 204
        assert len(running.rows("SELECT id FROM legs")) == 1
    finally:
        running.close()


def test_an_unknown_type_is_acknowledged_and_ignored(receiver: Running) -> None:
    request = signed("call.transferred", {"id": "transfer-1", "from": "a", "to": "b"})
    assert receiver.post(request) == 204
    assert receiver.rows("SELECT * FROM seen") == []


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"type": "leg.classified"}',
                                  b'{"type": "leg.classified", "data": {"status": "busy"}}'],
                         ids=["not_json", "not_an_object", "no_data", "no_id"])
def test_a_signed_body_that_is_not_an_envelope_is_400(receiver: Running, body: bytes) -> None:
    request = build_request("http://r/hooks", (KEY,), "msg-1", body.decode(), int(time.time()))
    assert receiver.post(request) == 400
    assert receiver.rows("SELECT * FROM seen") == []


@pytest.mark.parametrize(("length", "status"), [
    (f"content-length: {example.MAX_BODY + 1}\r\n", 413), ("", 411), ("content-length: abc\r\n", 411)],
    ids=["over_the_limit", "missing", "not_a_number"])
def test_a_body_too_large_or_of_unknown_length_is_refused_unread(receiver: Running, length: str,
                                                                 status: int) -> None:
    head = f"POST /hooks/calls HTTP/1.1\r\nhost: r\r\n{length}\r\n"
    with socket.create_connection(receiver.server.server_address[:2], timeout=10) as sock:
        sock.sendall(head.encode())
        assert sock.recv(100).startswith(f"HTTP/1.1 {status} ".encode())


def test_a_locked_database_is_503_and_the_same_request_succeeds_later(tmp_path: Path) -> None:
    running = Running(tmp_path / "receiver.sqlite3", busy_timeout=0.1)
    request = signed("leg.classified", legs_of("uas_486")[0])
    try:
        with closing(sqlite3.connect(running.db, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the busy timeout
            assert running.post(request) == 503
            other.execute("ROLLBACK")
        assert running.post(request) == 204
        assert len(running.rows("SELECT id FROM legs")) == 1
    finally:
        running.close()


def test_work_that_fails_after_the_id_was_recorded_leaves_the_id_unseen(receiver: Running) -> None:
    """The id and the rows commit together: a failure half-way must not turn the retry into a duplicate."""
    legs = legs_of("uas_486")
    request = signed("call.completed", call_of(legs))
    with closing(sqlite3.connect(receiver.db)) as db:
        db.execute("ALTER TABLE calls RENAME TO calls_away")  # the seen row is written, then this fails
    assert receiver.post(request) == 503
    assert receiver.rows("SELECT * FROM seen") == []
    with closing(sqlite3.connect(receiver.db)) as db:
        db.execute("ALTER TABLE calls_away RENAME TO calls")
    assert receiver.post(request) == 204
    assert len(receiver.rows("SELECT id FROM calls")) == 1
    assert len(receiver.rows("SELECT id FROM legs")) == 2


def test_it_runs_as_a_script_configured_by_the_environment(tmp_path: Path) -> None:
    env = {**os.environ, "WEBHOOK_SECRET": f"{SECRET} {NEW_SECRET}", "PORT": "0",
           "DB_PATH": str(tmp_path / "script.sqlite3")}
    proc = subprocess.Popen([sys.executable, str(EXAMPLE)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "listening on http://127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1].strip(" /\n"))
        request = signed("leg.classified", legs_of("uas_486")[0], (NEW_KEY,))
        with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=10)) as conn:
            conn.request("POST", request.target, request.body, dict(request.headers))
            assert conn.getresponse().status == 204
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    with closing(sqlite3.connect(tmp_path / "script.sqlite3")) as db:
        assert len(db.execute("SELECT id FROM legs").fetchall()) == 1


def test_without_a_secret_the_script_says_so_and_exits_1(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "WEBHOOK_SECRET"}
    result = subprocess.run([sys.executable, str(EXAMPLE)], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=30, check=False)
    assert (result.returncode, result.stderr) == (1, "WEBHOOK_SECRET is not set: whsec_... (two, "
                                                     "space-separated, while rotating)\n")
    assert list(tmp_path.iterdir()) == []


def test_the_example_is_ruff_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(EXAMPLE)],
                            capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stdout


# -- the real daemon, the example as its endpoint ------------------------------------------------

def write_config(tmp_path: Path, fake: FakeFreeSWITCH, url: str) -> Path:
    """One endpoint with no ``types``: it gets every type, as a new endpoint does."""
    config = tmp_path / "listener.toml"
    config.write_text(
        f'[[freeswitch]]\nname = "lab"\nport = {fake.port}\n[esl]\nbackoff_initial = 0.05\n'
        f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\nsynchronous = "normal"\n[health]\nport = 0\n'
        f'[[webhooks]]\nname = "example"\nurl = "{url}"\nsecret = "{SECRET}"\n'
        f"retry_schedule = [0.2, 0.2, 0.2, 0.2, 0.2]\nretry_jitter = 0\n"
    )
    return config


def _rejections(log: Path) -> list[dict[str, Any]]:
    """The daemon's delivery failures the example answered 4xx: it sent what the example refuses."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if "webhook.delivery_failed" in line]
    return [line for line in lines if 400 <= (line.get("status") or 0) < 500]


def _wait_stored(receiver: Running, log: Path, legs: int, calls: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rejected = _rejections(log)
        assert not rejected, f"the example refused what the daemon sent: {rejected[0]}"
        stored = (len(receiver.rows("SELECT id FROM legs")), len(receiver.rows("SELECT id FROM calls")))
        if stored[0] >= legs and stored[1] >= calls:
            return
        gevent.sleep(0.1)


@pytest.mark.slow
def test_the_daemon_fed_real_captures_stores_every_leg_and_call_once(
    tmp_path: Path, receiver: Running
) -> None:
    bodies = [body for scenario in SCENARIOS for body in capture_bodies(scenario)]
    events = [HangupEvent.from_plain(body) for body in bodies]
    calls: dict[str, set[str]] = {}
    for event in events:
        calls.setdefault(event.call_uuid, set()).add(event.unique_id)
    with FakeFreeSWITCH() as fake:
        daemon = start_daemon(write_config(tmp_path, fake, receiver.url()))
        try:
            fake.next_session(timeout=15).send(b"".join(map(event_frame, bodies)))
            _wait_stored(receiver, tmp_path / "daemon-0.log", len(events), len(calls))
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=20) == 0
        finally:
            daemon.kill()
    assert sorted(receiver.rows("SELECT id FROM legs")) == sorted(
        (document_id(e.core_uuid, e.unique_id),) for e in events)
    stored = receiver.rows("SELECT id, complete, missing_legs, document FROM calls")
    assert [(complete, missing) for _, complete, missing, _ in stored] == [(1, "[]")] * len(calls)
    linked = "SELECT channel_uuid FROM legs WHERE call_id = ?"
    grouped = {json.loads(document)["legs"][0]["call_uuid"]: {u for (u,) in receiver.rows(linked, call_id)}
               for call_id, _, _, document in stored}
    assert grouped == calls
    assert_never_blocked((tmp_path / "daemon-0.log").read_text().splitlines())
