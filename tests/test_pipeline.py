"""End to end in process: fake FreeSWITCH nodes -> App -> classified documents and log lines."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jsonschema
import pytest
import structlog
from structlog.testing import capture_logs

from listener.app import App
from listener.config.settings import Config, ESLSettings, HealthConfig, Node
from listener.core import document as payload
from listener.core.classifier import Classification, Classifier, default_classifier
from listener.core.errors import OutboxError
from listener.core.event import HangupEvent
from listener.core.frame import Frame
from listener.pipeline import Pipeline
from tests import schemas
from tests.fakeesl import FIXTURES, Collect, FakeFreeSWITCH, capture_bodies

SCENARIOS = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
FAST = ESLSettings(connect_timeout=2, command_timeout=1, backoff_initial=0.01, backoff_max=0.05)
ANY_PORT = HealthConfig(port=0)  # the health listener on a free port, never a fixed one


def validator() -> jsonschema.Draft202012Validator:
    return schemas.leg_document()


def documents_of(scenario: str) -> list[dict[str, Any]]:
    pipeline = Pipeline(Node(name="lab"), default_classifier(), log=None)
    return [pipeline.document(HangupEvent.from_plain(b)) for b in capture_bodies(scenario)]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_document_from_real_captures_matches_the_schema(scenario: str) -> None:
    for document in documents_of(scenario):
        validator().validate(document)


def test_a_document_reports_the_facts_of_a_refused_call() -> None:
    by_leg = {d["leg"]: d for d in documents_of("uas_486")}
    a, b = by_leg["a"], by_leg["b"]
    assert (a["status"], a["bye_reason"], a["last_response_code"]) == ("busy", "USER_BUSY", 486)
    assert a["status_label"] == "Busy"
    assert a["partner_sip_status"] == 486
    assert a["hangup_by"] == "callee"
    assert b["sip_status"] == 486
    assert b["hangup_disposition"] == "recv_refuse"
    assert a["call_uuid"] == b["call_uuid"] == a["channel_uuid"]
    assert a["answered"] is False
    assert a["answered_at"] is None
    assert a["billsec"] == 0
    assert a["ended_at"].endswith("Z")
    assert a["duration_s"] >= 0
    assert a["node"] == {"name": "lab", "hostname": "vm", "core_uuid": a["node"]["core_uuid"]}
    assert a["node"]["core_uuid"] == "1b8e5af5-676a-4b2e-91a0-1ac1b56080da"


def test_an_answered_call_has_answer_time_billsec_and_ring_time() -> None:
    a = next(d for d in documents_of("answered_caller_bye") if d["leg"] == "a")
    assert a["status"] == "ended"
    assert a["answered"] is True
    assert a["answered_at"] is not None
    assert a["billsec"] == 3
    assert a["ring_s"] is not None
    assert a["ring_s"] < a["duration_s"]
    assert a["hangup_by"] == "caller"


def test_the_id_is_stable_and_derived_from_core_uuid_and_unique_id() -> None:
    first, second = documents_of("uas_603"), documents_of("uas_603")
    assert [d["id"] for d in first] == [d["id"] for d in second]
    assert first[0]["id"] == payload.document_id(first[0]["node"]["core_uuid"], first[0]["channel_uuid"])
    assert len({d["id"] for s in SCENARIOS for d in documents_of(s)}) == sum(
        len(capture_bodies(s)) for s in SCENARIOS
    )


@pytest.fixture
def two_nodes() -> Iterator[tuple[FakeFreeSWITCH, FakeFreeSWITCH]]:
    with FakeFreeSWITCH() as one, FakeFreeSWITCH(password="other") as two:
        yield one, two


def test_two_nodes_at_once_each_document_names_its_node(two_nodes: tuple[FakeFreeSWITCH, ...]) -> None:
    one, two = two_nodes
    nodes = (Node("east", port=one.port), Node("west", port=two.port, password="other"))
    sink = Collect()
    app = App(Config(nodes=nodes, esl=FAST, health=ANY_PORT), sink)
    with capture_logs() as logs:
        app.start()
        one.next_session().send(b"".join(_frames("uas_486")))
        two.next_session().send(b"".join(_frames("uas_603")))
        documents = sink.take(4)
        app.stop(timeout=5)
    by_node = {(d["node"]["name"], d["status"]) for d in documents}
    assert by_node == {("east", "busy"), ("west", "declined")}
    lines = [e for e in logs if e["event"] == "leg.classified"]
    assert len(lines) == 4
    assert {e["node"] for e in lines} == {"east", "west"}
    assert all(e["leg"]["node"]["name"] == e["node"] for e in lines)


def _frames(scenario: str) -> list[bytes]:
    raw = (FIXTURES / scenario / "hangup_complete.plain.txt").read_bytes()
    return [raw]


def test_a_classification_failure_is_logged_and_the_stream_goes_on() -> None:
    class Flaky(Classifier):
        calls = 0

        def classify(self, event: HangupEvent) -> Classification:
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise ValueError("rule bug")
            return super().classify(event)

    with FakeFreeSWITCH() as fake:
        sink = Collect()
        flaky = Flaky(default_classifier().book)
        config = Config(nodes=(Node("n", port=fake.port),), esl=FAST, health=ANY_PORT, classifier=flaky)
        app = App(config, sink)
        with capture_logs() as logs:
            app.start()
            fake.next_session().send(b"".join(_frames("uas_486")))
            (document,) = sink.take(1)
            app.stop(timeout=5)
    assert document["status"] == "busy"
    failure = next(e for e in logs if e["event"] == "call.handler_failed")
    assert failure["log_level"] == "error"
    assert failure["channel_uuid"]


class CorruptOutbox:
    """A sink whose file is damaged: every put fails as the outbox would, with a fault that cannot clear."""

    def __init__(self) -> None:
        self.calls = 0

    def put(self, documents: Sequence[Mapping[str, Any]]) -> frozenset[str]:
        self.calls += 1
        raise OutboxError("outbox put failed: database disk image is malformed", "SQLITE_CORRUPT")


def test_an_outbox_fault_that_cannot_clear_stops_the_daemon_with_74_and_logs_each_unstored_call_whole(
) -> None:
    with FakeFreeSWITCH() as fake:
        config = Config(nodes=(Node("n", port=fake.port),), esl=FAST, health=ANY_PORT)
        app = App(config, CorruptOutbox())
        with capture_logs() as logs:
            app.start()
            session = fake.next_session()
            session.send(b"".join(_frames("uas_486")))
            assert app.stopping.wait(5)  # the daemon decided to stop
            app.stop(timeout=5)
    assert app.exit_code == 74
    failed = [e for e in logs if e["event"] == "outbox.write_failed"]
    assert len(failed) == 2  # both legs already read: each logged whole, none silently dropped
    assert {e["leg"]["status"] for e in failed} == {"busy"}
    assert all(e["log_level"] == "error" for e in failed)
    (stopped,) = [e for e in logs if e["event"] == "listener.outbox_failed"]
    assert stopped["log_level"] == "critical"
    assert stopped["exit_code"] == 74
    assert "integrity_check" in stopped["action"]
    assert not [e for e in logs if e["event"] == "leg.classified"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_json_and_plain_captures_of_a_call_give_identical_documents(scenario: str) -> None:
    """The daemon subscribes to event json by default: it must say exactly what plain would."""
    pipeline = Pipeline(Node(name="lab"), default_classifier(), log=None)
    plain = {d["channel_uuid"]: d for d in documents_of(scenario)}
    bodies = capture_bodies(scenario, "hangup_complete.json.txt")
    json_docs = [pipeline.document(HangupEvent.from_json(b)) for b in bodies]
    assert {d["channel_uuid"]: d for d in json_docs} == plain


class Woken:
    """Delivery as the pipeline sees it: which endpoints it was told got rows."""

    def __init__(self) -> None:
        self.woken: list[frozenset[str] | None] = []

    def wake(self, endpoints: frozenset[str] | None = None) -> None:
        self.woken.append(endpoints)


class Routed(Collect):
    """A store whose every document makes a row for the endpoint ``crm``."""

    def put(self, documents: Sequence[Mapping[str, Any]]) -> frozenset[str]:
        super().put(documents)
        return frozenset({"crm"})


def test_a_batch_goes_through_the_whole_chain_and_the_source_gets_only_a_tally() -> None:
    plain = [Frame({"Content-Type": "text/event-plain"}, body) for body in capture_bodies("uas_486")]
    heartbeat = Frame({"Content-Type": "text/event-plain"},
                      b"Event-Name: HEARTBEAT\nCore-UUID: c0\nFreeSWITCH-Hostname: pbx\n")
    garbage = Frame({"Content-Type": "text/event-json"}, b"{not json")
    store, delivery = Routed(), Woken()
    pipeline = Pipeline(Node("lab"), default_classifier(), structlog.get_logger(),
                        store=store, delivery=delivery)
    with capture_logs() as logs:
        tally = pipeline([plain[0], heartbeat, garbage, plain[1]])
    assert tally.received == {"CHANNEL_HANGUP_COMPLETE": 2, "HEARTBEAT": 1}
    assert (tally.rejected, tally.failed, tally.heartbeats, tally.hostname) == (1, 0, 1, "pbx")
    core = "1b8e5af5-676a-4b2e-91a0-1ac1b56080da"
    assert tally.core_uuids == [core, "c0", core]
    assert [d["status"] for d in store.take(2)] == ["busy", "busy"]
    assert delivery.woken == [frozenset({"crm"})]
    events = [e["event"] for e in logs]
    assert events.count("leg.classified") == 2
    assert events.count("esl.event_rejected") == 1


def test_the_log_lines_come_only_after_the_commit_returned() -> None:
    order: list[str] = []

    class Slow(Collect):
        def put(self, documents: Sequence[Mapping[str, Any]]) -> frozenset[str]:
            order.append("committed")
            return super().put(documents)

    class Log:
        def info(self, event: str, **_: Any) -> None:
            order.append(event)

    frames = [Frame({"Content-Type": "text/event-plain"}, body) for body in capture_bodies("uas_486")]
    Pipeline(Node("lab"), default_classifier(), Log(), store=Slow())(frames)
    assert order == ["committed", "leg.classified", "leg.classified"]
