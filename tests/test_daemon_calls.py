"""The whole daemon fed real captures: legs grouped into calls, end to end.

A real daemon process, the fake FreeSWITCH on port 0, a real HTTP receiver: every leg arrives once as
``leg.classified`` and every call once as ``call.completed`` with exactly the legs of its scenario, in
the webhooks and in the log lines; endpoint filters, secrets and variables apply per type; a leg
waiting for its call survives SIGKILL; a call open past ``[calls] wait_hours`` is completed
incomplete and its late leg completes nothing; without an outbox, calls are still logged, and SIGTERM
completes the open ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import gevent.event
from standardwebhooks.webhooks import Webhook
from webhook_receiver import Receiver

from listener.core.document import document_id
from listener.core.event import HangupEvent
from tests import schemas
from tests.daemon import assert_never_blocked, fetch
from tests.fakeesl import FakeFreeSWITCH, Session, capture_bodies, event_frame
from tests.fixture_loader import scenarios
from tests.test_daemon_webhooks import NEW_SECRET, SECRET

SINGLE_LEG = ("api_originate_486", "dialplan_respond_486", "park_caller_hangup")
Document = dict[str, Any]


# -- the daemon, its configuration and its log -------------------------------------------------------

def hook(name: str, url: str, *lines: str, secret: str = f'secret = "{SECRET}"') -> str:
    """One ``[[webhooks]]`` table (retries quick, a generous timeout: no duplicate from a slow answer)."""
    return (f'[[webhooks]]\nname = "{name}"\nurl = "{url}"\n{secret}\ntimeout = 10\n'
            "retry_schedule = [0.2, 0.2, 0.2, 0.2, 0.2]\nretry_jitter = 0\n"
            + "".join(f"{line}\n" for line in lines))


def write_config(tmp_path: Path, fake: FakeFreeSWITCH, *hooks: str, extra: str = "") -> Path:
    """The daemon's configuration: ``extra`` tables, then ``hooks`` (none: no outbox either)."""
    config = tmp_path / "listener.toml"
    outbox = f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\nsynchronous = "normal"\n' if hooks else ""
    config.write_text(
        f'[[freeswitch]]\nname = "lab"\nport = {fake.port}\n'
        f"[esl]\nbackoff_initial = 0.05\nbackoff_max = 0.2\n{outbox}[health]\nport = 0\n"
        + extra + "".join(hooks))
    return config


class Running:
    """``hangup-listener run`` whose stdout is read all along on a greenlet (a pipe left unread would
    stall its log): every JSON line kept in ``lines``, in order; stderr goes to a file."""

    def __init__(self, config: Path) -> None:
        self.stderr = config.parent / f"daemon-{len(list(config.parent.glob('daemon-*.stderr')))}.stderr"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "listener", "run", "--config", str(config)],
                stdout=subprocess.PIPE, stderr=err,
                env={"STATE_DIRECTORY": str(config.parent), **os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[Document] = []
        self.raw: list[str] = []
        self._news = gevent.event.Event()
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := gevent.get_hub().threadpool.apply(self.proc.stdout.readline):
            self.raw.append(line.decode())
            if line.startswith(b"{"):
                self.lines.append(json.loads(line))
            self._news.set()
        self._news.set()

    def events(self, name: str) -> list[Document]:
        return [line for line in self.lines if line["event"] == name]

    def until(self, done: Callable[[], bool], what: str, timeout: float = 30) -> None:
        """Until ``done()`` holds (checked at each new line), the daemon still running."""
        with gevent.Timeout(timeout, AssertionError(f"no {what}; last lines: {self.raw[-3:]}")):
            while not done():
                assert not self._reader.dead, f"the daemon exited before {what}: {self.raw[-3:]}"
                self._news.wait()
                self._news.clear()

    def line(self, event: str, key: str, channel_uuid: str) -> Document:
        """The first ``event`` line whose document (under ``key``) is of ``channel_uuid``'s leg, or (a
        call) has it among its legs; waited for."""
        def found() -> Document | None:
            return next((line for line in self.events(event) if channel_uuid in uuids_of(line[key])), None)
        self.until(lambda: found() is not None, f"{event} of {channel_uuid}")
        line = found()
        assert line is not None
        return line

    def stop(self, signum: signal.Signals = signal.SIGTERM, timeout: float = 20) -> int:
        """Send ``signum``; the exit code once the log is read to its end."""
        self.proc.send_signal(signum)
        code = gevent.get_hub().threadpool.apply(self.proc.wait, (timeout,))
        self._reader.join(timeout)
        assert self._reader.dead
        assert_never_blocked(self.raw)
        assert b"Traceback" not in self.stderr.read_bytes()
        return int(code)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            gevent.get_hub().threadpool.apply(self.proc.wait, (10,))
        self._reader.join(5)


def uuids_of(document: Document) -> set[str]:
    """The channel uuids of a leg document, or of a call document's legs."""
    if "legs" in document:
        return {leg["channel_uuid"] for leg in document["legs"]}
    return {document["channel_uuid"]}


# -- the receiver's side ------------------------------------------------------------------------------

def envelopes(receiver: Receiver, path: str = "/hook", secret: str = SECRET) -> list[Document]:
    """Every body received on ``path``, each verified by the reference library and checked against its
    type's JSON Schema; webhook-id is the document's id."""
    verifier = Webhook(secret)
    found = []
    for request in [r for r in receiver.received if r.path == path]:
        payload: Document = verifier.verify(request.body, request.headers)
        errors = [e.message for e in schemas.body(payload["type"]).iter_errors(payload)]
        assert not errors, f"{payload['type']} {request.webhook_id}: {errors[:3]}"
        assert payload["data"]["id"] == request.webhook_id
        found.append(payload)
    return found


def of_type(receiver: Receiver, kind: str, path: str = "/hook") -> list[Document]:
    """The ``data`` of every ``kind`` body received on ``path``, in arrival order."""
    return [e["data"] for e in envelopes(receiver, path) if e["type"] == kind]


def until_received(receiver: Receiver, done: Callable[[], bool], what: str, timeout: float = 30) -> None:
    with gevent.Timeout(timeout, AssertionError(f"never received {what}; got {len(receiver.received)}")):
        while not done():
            receiver.get(timeout=timeout)


def undelivered(config: Path) -> list[str]:
    """The ids of messages still pending or dead in the outbox (the daemon stopped): none means every
    message routed to an endpoint was received."""
    listed = subprocess.run(
        [sys.executable, "-m", "listener", "outbox", "--config", str(config), "list", "--json"],
        capture_output=True, check=True, timeout=30)
    return [json.loads(line)["id"] for line in listed.stdout.decode().splitlines()]


# -- the captures ---------------------------------------------------------------------------------------

def events_of(scenario: str) -> list[HangupEvent]:
    return [HangupEvent.from_plain(body) for body in capture_bodies(scenario)]


def leg_id(event: HangupEvent) -> str:
    return document_id(event.core_uuid, event.unique_id)


def send(session: Session, bodies: list[bytes]) -> None:
    session.send(b"".join(event_frame(body) for body in bodies))


def caller_of(call: Document) -> tuple[str, str]:
    """The id and status of the call's caller leg: of its ``a`` legs, the one created first."""
    callers = sorted((leg["created_at"], leg["channel_uuid"], leg["id"], leg["status"])
                     for leg in call["legs"] if leg["leg"] == "a")
    return callers[0][2], callers[0][3]


# -- 1. every call of the captures ----------------------------------------------------------------------

def test_every_leg_arrives_once_and_every_call_once_with_exactly_its_scenario_s_legs(
        tmp_path: Path, receiver: Receiver) -> None:
    chosen = [s for s in scenarios() if len(capture_bodies(s)) > 1] + list(SINGLE_LEG)
    wanted = {s: {e.unique_id for e in events_of(s)} for s in chosen}
    leg_ids = {leg_id(e) for s in chosen for e in events_of(s)}
    with FakeFreeSWITCH() as fake:
        config = write_config(tmp_path, fake, hook("both", receiver.url()))
        daemon = Running(config)
        try:
            send(fake.next_session(timeout=15), [body for s in chosen for body in capture_bodies(s)])
            until_received(receiver, lambda: (
                {d["id"] for d in of_type(receiver, "leg.classified")} == leg_ids
                and len({d["id"] for d in of_type(receiver, "call.completed")}) == len(chosen)),
                "every leg and call", timeout=60)
            daemon.until(lambda: len(daemon.events("call.completed")) == len(chosen), "every call's line")
            assert daemon.stop() == 0
        finally:
            daemon.kill()
    assert undelivered(config) == []  # nothing routed that the receiver did not get
    assert not daemon.events("webhook.delivery_failed")  # so no retry could have sent a duplicate

    legs = of_type(receiver, "leg.classified")
    calls = of_type(receiver, "call.completed")
    assert Counter(d["channel_uuid"] for d in legs) == Counter(u for s in chosen for u in wanted[s])
    assert sorted(map(sorted, map(uuids_of, calls))) == sorted(map(sorted, wanted.values()))
    for call in calls:
        assert call["complete"] is True
        assert call["missing_legs"] == []
        assert len(call["legs"]) == len(uuids_of(call))
        caller_id, status = caller_of(call)
        assert (call["caller_leg_id"], call["status"]) == (caller_id, status)
        assert call["id"] not in leg_ids
        assert {leg["id"] for leg in call["legs"]} <= leg_ids
    assert len({call["id"] for call in calls}) == len(chosen)

    leg_lines = [line["leg"] for line in daemon.events("leg.classified")]
    call_lines = [line["call"] for line in daemon.events("call.completed")]
    assert Counter(d["channel_uuid"] for d in leg_lines) == Counter(d["channel_uuid"] for d in legs)
    assert sorted(map(sorted, map(uuids_of, call_lines))) == sorted(map(sorted, wanted.values()))
    assert {c["id"] for c in call_lines} == {c["id"] for c in calls}
    by_id = {c["id"]: c for c in calls}
    for line in call_lines:
        assert line == by_id[line["id"]]  # the line and the webhook tell the same call
        assert not list(schemas.call_document().iter_errors(line))
    for leg in leg_lines:
        assert not list(schemas.leg_document().iter_errors(leg))


# -- 2. endpoint filters by type ------------------------------------------------------------------------

def test_each_endpoint_gets_only_its_types_and_statuses_filter_legs_not_calls(
        tmp_path: Path, receiver: Receiver) -> None:
    """/legs takes leg.classified; /calls call.completed with ``statuses = ["busy"]`` (every call still
    comes: statuses filter legs only); /busy both types with ``statuses = ["busy"]`` (the busy legs,
    every call)."""
    chosen = ("uas_486", "answered_caller_bye")  # a busy call and an ended one
    events = [e for s in chosen for e in events_of(s)]
    busy = {leg_id(e) for e in events_of("uas_486")}
    with FakeFreeSWITCH() as fake:
        config = write_config(
            tmp_path, fake,
            hook("legs", receiver.url("/legs"), 'types = ["leg.classified"]'),
            hook("calls", receiver.url("/calls"), 'types = ["call.completed"]', 'statuses = ["busy"]'),
            hook("busy", receiver.url("/busy"), 'statuses = ["busy"]'))
        daemon = Running(config)
        try:
            send(fake.next_session(timeout=15), [body for s in chosen for body in capture_bodies(s)])
            until_received(receiver, lambda: (
                len({d["id"] for d in of_type(receiver, "leg.classified", "/legs")}) == len(events)
                and len({d["id"] for d in of_type(receiver, "call.completed", "/calls")}) == len(chosen)
                and len({d["id"] for d in of_type(receiver, "call.completed", "/busy")}) == len(chosen)
                and {d["id"] for d in of_type(receiver, "leg.classified", "/busy")} == busy),
                "every endpoint's share")
            assert daemon.stop() == 0
        finally:
            daemon.kill()
    assert undelivered(config) == []  # every message routed was received: nothing else is on its way
    assert {e["type"] for e in envelopes(receiver, "/legs")} == {"leg.classified"}
    assert {e["type"] for e in envelopes(receiver, "/calls")} == {"call.completed"}
    statuses = {d["status"] for d in of_type(receiver, "call.completed", "/calls")}
    assert statuses == {"busy", "ended"}
    assert {d["id"] for d in of_type(receiver, "leg.classified", "/busy")} == busy
    assert {d["id"] for d in of_type(receiver, "call.completed", "/busy")} == {
        d["id"] for d in of_type(receiver, "call.completed", "/calls")}


# -- 3. two secrets ---------------------------------------------------------------------------------------

def test_a_call_completed_request_verifies_with_each_of_two_secrets(
        tmp_path: Path, receiver: Receiver) -> None:
    secrets = f'secrets = ["{SECRET}", "{NEW_SECRET}"]'
    with FakeFreeSWITCH() as fake:
        config = write_config(tmp_path, fake,
                              hook("calls", receiver.url(), 'types = ["call.completed"]', secret=secrets))
        daemon = Running(config)
        try:
            send(fake.next_session(timeout=15), capture_bodies("uas_486"))
            request = receiver.get(timeout=30)
            assert daemon.stop() == 0
        finally:
            daemon.kill()
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, NEW_SECRET):
        payload = Webhook(secret).verify(request.body, request.headers)
        assert payload["type"] == "call.completed"
        assert uuids_of(payload["data"]) == {e.unique_id for e in events_of("uas_486")}


# -- 4. channel variables per endpoint and in the log -----------------------------------------------------

def selected(event: HangupEvent, wanted: Callable[[str], bool]) -> dict[str, str]:
    """The event's channel variables whose names (without ``variable_``) ``wanted`` accepts."""
    return {name: value for key, value in event.headers.items()
            if key.startswith("variable_") and wanted(name := key.removeprefix("variable_"))}


def masked(value: str) -> str:
    return "*" * (len(value) - 2) + value[-2:]


def test_variables_go_to_the_endpoint_that_asked_and_to_the_log_line_masked_as_numbers(
        tmp_path: Path, receiver: Receiver) -> None:
    events = {e.unique_id: e for e in events_of("uas_486")}
    for_a = {uid: selected(e, lambda n: n == "sip_call_id" or n.startswith("sip_from_"))
             for uid, e in events.items()}
    assert all(len(v) > 2 and "sip_from_user" in v for v in for_a.values())
    for_log = {uid: {"sip_call_id": e.variable("sip_call_id") or "",
                     "sip_from_user": masked(e.variable("sip_from_user") or "")} for uid, e in events.items()}
    with FakeFreeSWITCH() as fake:
        config = write_config(
            tmp_path, fake,
            hook("a", receiver.url("/a"), 'variables = ["sip_call_id", "sip_from_*"]'),
            hook("b", receiver.url("/b")),
            extra='[log]\nvariables = ["sip_call_id", "sip_from_user"]\n[privacy]\nmask_numbers = "mask"\n')
        daemon = Running(config)
        try:
            send(fake.next_session(timeout=15), capture_bodies("uas_486"))
            until_received(receiver, lambda: all(
                len(of_type(receiver, "leg.classified", path)) == len(events)
                and of_type(receiver, "call.completed", path) for path in ("/a", "/b")),
                "both endpoints' share")
            daemon.until(lambda: bool(daemon.events("call.completed")), "the call's line")
            assert daemon.stop() == 0
        finally:
            daemon.kill()
    for leg in of_type(receiver, "leg.classified", "/a"):
        assert leg["variables"] == for_a[leg["channel_uuid"]]
    (call_a,) = of_type(receiver, "call.completed", "/a")
    assert {leg["channel_uuid"]: leg["variables"] for leg in call_a["legs"]} == for_a
    for leg in of_type(receiver, "leg.classified", "/b"):
        assert "variables" not in leg
    (call_b,) = of_type(receiver, "call.completed", "/b")
    assert "variables" not in call_b
    assert all("variables" not in leg for leg in call_b["legs"])
    logged = [line["leg"] for line in daemon.events("leg.classified")]
    assert {leg["channel_uuid"]: leg["variables"] for leg in logged} == for_log
    (call_line,) = daemon.events("call.completed")
    assert {leg["channel_uuid"]: leg["variables"] for leg in call_line["call"]["legs"]} == for_log
    assert "variables" not in call_line["call"]


# -- 5. a restart keeps the legs that wait for their call -------------------------------------------------

def test_a_leg_waiting_for_its_call_survives_sigkill_and_the_call_completes_after_the_restart(
        tmp_path: Path, receiver: Receiver) -> None:
    b_body, a_body = capture_bodies("uas_486")
    b, a = HangupEvent.from_plain(b_body), HangupEvent.from_plain(a_body)
    assert b.other_type == "originator"  # the B leg hangs up first, its caller's leg is still up
    with FakeFreeSWITCH() as fake:
        config = write_config(tmp_path, fake, hook("both", receiver.url()))
        first = Running(config)
        try:
            send(fake.next_session(timeout=15), [b_body])
            first.line("leg.classified", "leg", b.unique_id)  # committed, waiting in call_wait
            assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        finally:
            first.kill()
        again = Running(config)
        try:
            send(fake.next_session(timeout=15), [a_body])
            until_received(receiver, lambda: bool(of_type(receiver, "call.completed"))
                           and leg_id(a) in {d["id"] for d in of_type(receiver, "leg.classified")}
                           and leg_id(b) in {d["id"] for d in of_type(receiver, "leg.classified")},
                           "the call and both legs")
            again.line("call.completed", "call", a.unique_id)
            assert again.stop() == 0
        finally:
            again.kill()
    assert undelivered(config) == []
    assert not first.events("call.completed")
    assert [line["legs"] for line in again.events("calls.restored")] == [1]
    (call,) = of_type(receiver, "call.completed")
    assert uuids_of(call) == {a.unique_id, b.unique_id}
    assert (call["complete"], call["missing_legs"], call["caller_leg_id"]) == (True, [], leg_id(a))
    delivered = Counter(d["id"] for d in of_type(receiver, "leg.classified"))
    assert set(delivered) == {leg_id(a), leg_id(b)}
    assert delivered[leg_id(a)] == 1
    assert delivered[leg_id(b)] <= 2  # at least once: again after the restart if its ack was not recorded
    (line,) = again.events("call.completed")
    assert line["call"]["id"] == call["id"]


# -- 6. the bound on waiting ------------------------------------------------------------------------------

def open_calls(port: int) -> float:
    """``hangup_listener_calls_open`` as /metrics shows it now."""
    status, body = fetch(port, "/metrics")
    assert status == 200
    (value,) = [line.split()[-1] for line in body.decode().splitlines()
                if line.startswith("hangup_listener_calls_open ")]
    return float(value)


def test_a_call_open_past_wait_hours_is_completed_incomplete_and_its_late_leg_completes_nothing(
        tmp_path: Path, receiver: Receiver) -> None:
    b_body, a_body = capture_bodies("uas_486")
    b, a = HangupEvent.from_plain(b_body), HangupEvent.from_plain(a_body)
    (other,) = events_of("api_originate_486")
    with FakeFreeSWITCH() as fake:
        config = write_config(tmp_path, fake, hook("both", receiver.url()),
                              extra="[calls]\nwait_hours = 0.0005\n")  # 1.8 s
        daemon = Running(config)
        try:
            daemon.until(lambda: bool(daemon.events("health.listening")), "health.listening")
            port = int(daemon.events("health.listening")[0]["port"])
            session = fake.next_session(timeout=15)
            send(session, [b_body])
            cut = daemon.line("call.completed", "call", b.unique_id)["call"]  # after 1.8 s
            send(session, [a_body])
            daemon.line("leg.classified", "leg", a.unique_id)
            send(session, capture_bodies("api_originate_486"))
            daemon.line("call.completed", "call", other.unique_id)  # logged after anything A's leg completed
            assert open_calls(port) == 0  # A's leg waits for nothing: no call completes later either
            until_received(receiver, lambda: len(of_type(receiver, "call.completed")) >= 2
                           and leg_id(a) in {d["id"] for d in of_type(receiver, "leg.classified")},
                           "both calls and the late leg")
            assert daemon.stop() == 0
        finally:
            daemon.kill()
    assert undelivered(config) == []
    assert (cut["complete"], cut["missing_legs"], uuids_of(cut)) == (False, [a.unique_id], {b.unique_id})
    assert cut["caller_leg_id"] is None
    calls = of_type(receiver, "call.completed")
    assert Counter(c["id"] for c in calls) == Counter({cut["id"]: 1, calls[-1]["id"]: 1})
    assert [uuids_of(c) for c in calls] == [{b.unique_id}, {other.unique_id}]
    assert calls[0] == cut
    assert [uuids_of(line["call"]) for line in daemon.events("call.completed")] == [{b.unique_id},
                                                                                 {other.unique_id}]
    assert Counter(d["channel_uuid"] for d in of_type(receiver, "leg.classified")) == Counter(
        {b.unique_id: 1, a.unique_id: 1, other.unique_id: 1})


# -- 7. without webhooks and without an outbox -----------------------------------------------------------

def test_without_an_outbox_calls_are_logged_and_sigterm_completes_the_open_ones(tmp_path: Path) -> None:
    chosen = ("forked_ring_one_answers", "uas_603")
    open_b = HangupEvent.from_plain(capture_bodies("uas_486")[0])
    caller = HangupEvent.from_plain(capture_bodies("uas_486")[1]).unique_id
    with FakeFreeSWITCH() as fake:
        config = write_config(tmp_path, fake)
        daemon = Running(config)
        try:
            session = fake.next_session(timeout=15)
            send(session, [body for s in chosen for body in capture_bodies(s)])
            daemon.until(lambda: len(daemon.events("call.completed")) == len(chosen), "both calls' lines")
            send(session, capture_bodies("uas_486")[:1])
            daemon.line("leg.classified", "leg", open_b.unique_id)
            assert daemon.stop() == 0
        finally:
            daemon.kill()
    assert not (tmp_path / "outbox.sqlite3").exists()
    calls = [line["call"] for line in daemon.events("call.completed")]
    assert [uuids_of(c) for c in calls] == [
        *({e.unique_id for e in events_of(s)} for s in chosen), {open_b.unique_id}]
    assert [(c["complete"], c["missing_legs"]) for c in calls] == [(True, []), (True, []), (False, [caller])]
    assert daemon.events("listener.stopped")
    assert daemon.lines.index(daemon.events("call.completed")[-1]) < daemon.lines.index(
        daemon.events("listener.stopped")[0])
