"""The classify process (``[esl] classify_process``): same documents, nothing lost when it fails."""

from __future__ import annotations

import io
import os
import pickle
import signal
import sys
import tomllib
from typing import Any

import gevent
import gevent.queue
import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from listener import classifyproc, workerwire
from listener.app import App, Pipeline
from listener.classify import Classifier, default_classifier, parse_classification
from listener.config import Config, HealthConfig
from listener.confread import Problems, TableReader
from listener.errors import ConfigError, WireError
from listener.esl import ESLSettings, ESLSource, Node
from listener.event import HANGUP_COMPLETE, HangupEvent, RawEvent
from listener.offload import ClassifyProcess
from tests.fakeesl import FIXTURES, Collect, FakeFreeSWITCH, capture_bodies, frame

FAST = ESLSettings(connect_timeout=2, command_timeout=1, backoff_initial=0.01, backoff_max=0.05,
                   classify_process=True)
ANY_PORT = HealthConfig(port=0)
SCENARIOS = sorted(p.name for p in FIXTURES.iterdir() if (p / "hangup_complete.json.txt").exists())
HANGUPS = frozenset({HANGUP_COMPLETE})
BUSY_AS_DECLINED = """
[[classification.rules]]
id = "busy-is-declined-here"
when = { cause = "USER_BUSY" }
status = "declined"
bye_reason = "CALL_REJECTED"
"""


def json_bodies(scenario: str) -> list[bytes]:
    return capture_bodies(scenario, "hangup_complete.json.txt")


def all_json_bodies() -> list[bytes]:
    return [body for scenario in SCENARIOS for body in json_bodies(scenario)]


def local_documents(bodies: list[bytes], classifier: Classifier | None = None) -> list[dict[str, Any]]:
    pipeline = Pipeline((classifier or default_classifier()).classify, Node(name="lab"), log=None)
    return [pipeline.process(HangupEvent.from_json(body)) for body in bodies]


def user_classifier(text: str) -> Classifier:
    problems = Problems()
    classifier = parse_classification(TableReader(tomllib.loads(text)["classification"], "classification",
                                                  problems))
    assert problems.items == []
    return classifier


def frames_of(data: bytes) -> list[tuple[bytes, bytes]]:
    stream, out = io.BytesIO(data), []
    while (got := classifyproc.read_frame(stream)) is not None:
        out.append(got)
    return out


# -- the wire and the work, in process ---------------------------------------------------------

def test_a_batch_crosses_the_wire_byte_for_byte() -> None:
    bodies = [b"", b"\xff\xfe not utf-8", *json_bodies("uas_486")]
    ((kind, data),) = frames_of(classifyproc.encode_batch("n\u00e9ode", bodies))
    assert kind == classifyproc.BATCH
    assert classifyproc.decode_batch(data) == ("n\u00e9ode", bodies)


@pytest.mark.parametrize("data", [b"", b"\x00\x05ab", b"\x00\x01n\x00\x00\x00\x02\x00\x00\x00\x01",
                                  classifyproc.encode_batch("n", [b"abc"])[5:] + b"extra"])
def test_a_batch_that_does_not_add_up_is_a_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        classifyproc.decode_batch(data)


def test_a_frame_cut_short_is_a_wire_error() -> None:
    with pytest.raises(WireError, match="short"):
        classifyproc.read_frame(io.BytesIO(workerwire.frame(classifyproc.BATCH, b"abcdef")[:-2]))


def test_its_documents_are_the_pipelines_even_after_the_json_round_trip() -> None:
    """What the daemon logs and stores must not depend on where the event was classified."""
    bodies = all_json_bodies()
    made = classifyproc.documents(default_classifier(), "lab", bodies)
    assert orjson.loads(orjson.dumps(made)) == local_documents(bodies)
    assert len(made) == len(bodies) > 50


def test_a_body_it_cannot_make_a_document_of_comes_back_as_none() -> None:
    good = json_bodies("uas_486")[0]
    cut = b'{"Event-Name":"CHANNEL_HANGUP_COMPLETE",'
    made = classifyproc.documents(default_classifier(), "lab", [cut, good])
    assert made[0] is None
    assert made[1] == local_documents([good])[0]


def test_serve_uses_the_classifier_it_was_sent_and_stops_at_end_of_file() -> None:
    body = json_bodies("uas_486")[0]
    custom = user_classifier(BUSY_AS_DECLINED)
    stdin = io.BytesIO(classifyproc.encode_batch("lab", [body])
                       + workerwire.frame(classifyproc.CLASSIFIER, pickle.dumps(custom))
                       + classifyproc.encode_batch("lab", [body]))
    stdout = io.BytesIO()
    assert classifyproc.serve(stdin, stdout) == 0
    first, second = [orjson.loads(data)[0] for kind, data in frames_of(stdout.getvalue())]
    assert (first["status"], first["rule"]) == ("busy", local_documents([body])[0]["rule"])
    assert (second["status"], second["bye_reason"], second["rule"]) == (
        "declined", "CALL_REJECTED", "busy-is-declined-here")
    assert second == local_documents([body], custom)[0]


def test_serve_refuses_a_frame_it_does_not_know(capsys: pytest.CaptureFixture[str]) -> None:
    assert classifyproc.serve(io.BytesIO(workerwire.frame(b"Z", b"?")), io.BytesIO()) == 2
    assert "unknown frame type" in capsys.readouterr().err


def test_a_classifier_pickles_as_its_rules() -> None:
    custom = user_classifier(BUSY_AS_DECLINED)
    body = json_bodies("uas_486")[0]
    twin = pickle.loads(pickle.dumps(custom))
    assert local_documents([body], twin) == local_documents([body], custom)


# -- the unparsed event ------------------------------------------------------------------------

def test_a_raw_event_knows_its_name_and_ids_without_parsing() -> None:
    for body in all_json_bodies():
        raw = RawEvent.of(body, HANGUPS)
        assert raw is not None
        event = raw.parse()
        assert (raw.event_name, raw.core_uuid, raw.unique_id) == (
            event.event_name, event.core_uuid, event.headers["Unique-ID"])


def test_only_the_named_events_written_as_freeswitch_does_stay_unparsed() -> None:
    body = json_bodies("uas_486")[0]
    assert RawEvent.of(body, frozenset({"HEARTBEAT"})) is None
    assert RawEvent.of(b" " + body, HANGUPS) is None
    assert RawEvent.of(b'{"Event-Name":"CHANNEL_HANGUP_COMPLETE"', HANGUPS) is not None


def test_an_id_is_never_read_from_inside_another_value() -> None:
    body = (b'{"Event-Name":"CHANNEL_HANGUP_COMPLETE","variable_x":"a\\"Core-UUID\\":\\"forged",'
            b'"Core-UUID":"real","Unique-ID":"esc\\u0061ped"}')
    raw = RawEvent.of(body, HANGUPS)
    assert raw is not None
    assert raw.core_uuid == "real"
    assert raw.unique_id == ""  # not plain: left to the parser
    assert raw.parse().unique_id == "escaped"


# -- the process, from the daemon ---------------------------------------------------------------

def test_the_process_answers_batches_and_takes_a_new_classifier() -> None:
    body = json_bodies("uas_486")[0]
    worker = ClassifyProcess(default_classifier())
    try:
        worker.start()
        first = worker.submit("lab", [body])
        second = worker.submit("lab", [body, body])  # two in flight
        assert first() == local_documents([body])
        assert second() == local_documents([body]) * 2
        custom = user_classifier(BUSY_AS_DECLINED)
        worker.set_classifier(custom)
        assert worker.submit("lab", [body])() == local_documents([body], custom)
        assert (worker.batches, worker.fallbacks, worker.started_count) == (3, 0, 1)
    finally:
        worker.stop()
    assert not worker.running


def test_the_process_outlives_a_sigterm_to_the_group_until_the_daemon_is_done() -> None:
    """systemd signals every process of the unit; the daemon, stopping, still sends batches."""
    body = json_bodies("uas_486")[0]
    worker = ClassifyProcess(default_classifier())
    try:
        worker.start()
        assert worker.submit("lab", [body])() == local_documents([body])  # serving
        os.kill(worker._proc.pid, signal.SIGTERM)
        assert worker.submit("lab", [body])() == local_documents([body])
        assert (worker.batches, worker.fallbacks) == (2, 0)
    finally:
        worker.stop()
    assert not worker.running


def test_a_process_that_never_answers_is_replaced_and_its_batch_done_here() -> None:
    mute = [sys.executable, "-c", "import sys; sys.stdin.buffer.read()"]
    worker = ClassifyProcess(default_classifier(), command=mute, timeout_s=0.5, backoff_initial_s=60)
    with capture_logs() as logs:
        worker.start()
        assert worker.submit("lab", [json_bodies("uas_486")[0]])() is None
        assert worker.submit("lab", [b"{}"])() is None  # in backoff: not restarted yet
        worker.stop()
    assert (worker.fallbacks, worker.started_count) == (2, 1)
    (failed,) = [e for e in logs if e["event"] == "classify.process_failed"]
    assert failed["reason"] == "no answer within 0.5s"
    assert failed["log_level"] == "error"


def test_a_batch_cut_off_mid_write_retires_the_process_quietly() -> None:
    """A greenlet killed while writing (a stop) leaves half a frame: that pipe is never used again."""
    deaf = [sys.executable, "-c", "import time; time.sleep(60)"]  # never reads: the pipe fills up
    worker = ClassifyProcess(default_classifier(), command=deaf)
    with capture_logs() as logs:
        worker.start()
        proc = worker._proc
        writer = gevent.spawn(worker.submit, "lab", [json_bodies("uas_486")[0]] * 100)
        gevent.idle()  # the writer ran until the full pipe blocked it, holding the lock
        assert worker._lock.locked()
        writer.kill(block=True, timeout=5)
        assert proc.poll() is not None  # killed with its half frame
        assert not worker.running
        worker.stop()
    assert not [e for e in logs if e["event"] == "classify.process_failed"]


def test_a_process_that_answers_nonsense_is_replaced() -> None:
    liar = [sys.executable, "-c",
            "import sys; sys.stdin.buffer.read(9); sys.stdout.buffer.write(b'R\\x00\\x00\\x00\\x02{}');"
            "sys.stdout.flush(); sys.stdin.buffer.read()"]
    worker = ClassifyProcess(default_classifier(), command=liar, backoff_initial_s=60)
    with capture_logs() as logs:
        worker.start()
        assert worker.submit("lab", [json_bodies("uas_486")[0]])() is None
        worker.stop()
    (failed,) = [e for e in logs if e["event"] == "classify.process_failed"]
    assert "fits no batch" in failed["reason"]


# -- the daemon with the process ------------------------------------------------------------------

def run_app(bodies_per_send: list[list[bytes]], worker: ClassifyProcess, between: Any = None,
            rejected: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]], App]:
    """Each list of bodies sent at once, its documents awaited (all but ``rejected`` of them)."""
    with FakeFreeSWITCH() as fake:
        sink = Collect()
        app = App(Config(nodes=(Node("lab", port=fake.port),), esl=FAST, health=ANY_PORT),
                  default_classifier().classify, sink, offload=worker)
        with capture_logs() as logs:
            app.start()
            session = fake.next_session()
            documents = []
            for i, bodies in enumerate(bodies_per_send):
                if i and between is not None:
                    between()
                session.send(b"".join(frame("text/event-json", body) for body in bodies))
                documents += sink.take(len(bodies) - rejected, timeout=10)
            app.stop(timeout=5)
    return documents, logs, app


def test_the_daemon_with_the_process_logs_and_stores_what_it_makes_alone() -> None:
    bodies = all_json_bodies()
    worker = ClassifyProcess(default_classifier())
    documents, logs, app = run_app([bodies], worker)
    assert documents == local_documents(bodies)
    assert [e["call"] for e in logs if e["event"] == "call.classified"] == documents
    assert worker.batches >= 1
    assert worker.fallbacks == 0
    assert app.sources[0].stats.events_received[HANGUP_COMPLETE] == len(bodies)


def test_a_process_killed_between_batches_is_said_and_replaced() -> None:
    bodies = json_bodies("uas_486")
    worker = ClassifyProcess(default_classifier(), backoff_initial_s=0, backoff_cap_s=0)
    killed = []

    def kill_once() -> None:
        if not killed:
            killed.append(worker._proc.pid)
            os.kill(worker._proc.pid, signal.SIGKILL)
            worker._proc.wait()

    documents, logs, app = run_app([bodies, bodies, bodies], worker, between=kill_once)
    assert documents == local_documents(bodies) * 3
    assert (worker.batches, worker.fallbacks, worker.started_count) == (3, 0, 2)
    metrics = app.metrics.render().decode()
    assert "hangup_listener_classify_process_starts_total 2.0" in metrics
    assert 'hangup_listener_classify_batches_total{by="process"} 3.0' in metrics
    failed = [e for e in logs if e["event"] == "classify.process_failed"]
    assert [(e["reason"], e["code"]) for e in failed] == [("exited", -signal.SIGKILL)], failed


def test_a_process_that_dies_on_every_batch_loses_no_call() -> None:
    """Killed mid-batch, every time: each batch is done by the daemon instead, none is lost."""
    bodies = json_bodies("uas_486")
    dies = [sys.executable, "-c", "import os, sys; sys.stdin.buffer.read(1); os._exit(9)"]
    worker = ClassifyProcess(default_classifier(), command=dies, backoff_initial_s=0, backoff_cap_s=0)
    documents, logs, _ = run_app([bodies, bodies, bodies], worker)
    assert documents == local_documents(bodies) * 3
    assert worker.batches == 0
    assert worker.fallbacks >= 3
    assert worker.started_count >= 3
    assert all(e["log_level"] == "error" for e in logs if e["event"] == "classify.process_failed")
    assert len([e for e in logs if e["event"] == "classify.process_failed"]) >= 3
    assert len([e for e in logs if e["event"] == "call.classified"]) == 3 * len(bodies)


def test_a_malformed_hangup_is_rejected_as_without_the_process() -> None:
    good = json_bodies("uas_486")[0]
    worker = ClassifyProcess(default_classifier())
    documents, logs, app = run_app([[b'{"Event-Name":"CHANNEL_HANGUP_COMPLETE",', good]], worker, rejected=1)
    assert documents == local_documents([good])
    (rejected,) = [e for e in logs if e["event"] == "esl.event_rejected"]
    assert rejected["content_type"] == "text/event-json"
    stats = app.sources[0].stats
    assert (stats.events_rejected, stats.events_received[HANGUP_COMPLETE]) == (1, 1)


def test_a_reload_reaches_the_process(tmp_path: Any) -> None:
    body = json_bodies("uas_486")[0]
    config_file = tmp_path / "listener.toml"
    config_file.write_text("[esl]\nclassify_process = true\n" + BUSY_AS_DECLINED)
    worker = ClassifyProcess(default_classifier())
    with FakeFreeSWITCH() as fake:
        sink = Collect()
        config = Config(nodes=(Node("lab", port=fake.port),), esl=FAST, health=ANY_PORT,
                        source=str(config_file))
        app = App(config, default_classifier().classify, sink, offload=worker)
        app.start()
        session = fake.next_session()
        session.send(frame("text/event-json", body))
        (before,) = sink.take(1)
        assert app.reload()
        session.send(frame("text/event-json", body))
        (after,) = sink.take(1)
        app.stop(timeout=5)
    assert (before["status"], after["status"]) == ("busy", "declined")
    assert worker.fallbacks == 0


def test_the_process_needs_json_events() -> None:
    from listener import config  # noqa: PLC0415

    with pytest.raises(ConfigError) as caught:
        config.from_mapping({"esl": {"classify_process": True, "format": "plain"}})
    assert any("esl.classify_process" in p and "json" in p for p in caught.value.problems)


def test_plain_events_turn_the_process_off_unless_asked_for() -> None:
    from listener import config  # noqa: PLC0415

    assert config.from_mapping({}).esl.classify_process is True
    assert config.from_mapping({"esl": {"format": "plain"}}).esl.classify_process is False
    assert config.from_mapping({"esl": {"classify_process": False}}).esl.classify_process is False


def test_the_daemon_starts_and_stops_its_process_by_default() -> None:
    from listener import config  # noqa: PLC0415

    app = App.from_config(config.from_mapping({"health": {"port": 0}}))
    assert app.offload is not None
    app.start()
    try:
        assert app.offload.running  # started (and sent its rules) before the nodes connect
    finally:
        app.stop(timeout=2)
    assert not app.offload.running
    assert App.from_config(config.from_mapping({"esl": {"classify_process": False}})).offload is None


def test_a_plain_handler_of_a_deferred_event_gets_it_parsed() -> None:
    """Only a presolving handler sees a body unparsed; any other gets the ``HangupEvent`` as ever."""
    seen: gevent.queue.Queue[HangupEvent] = gevent.queue.Queue()
    good = json_bodies("uas_486")[0]
    with FakeFreeSWITCH() as fake, capture_logs() as logs:
        source = ESLSource(Node("lab", port=fake.port), FAST, {HANGUP_COMPLETE: seen.put},
                           structlog.get_logger(), deferred=HANGUPS)
        greenlet = gevent.spawn(source.run)
        session = fake.next_session()
        session.send(frame("text/event-json", b'{"Event-Name":"CHANNEL_HANGUP_COMPLETE",') +
                     frame("text/event-json", good))
        event = seen.get(timeout=5)
        source.stop()
        greenlet.join(timeout=5)
    assert isinstance(event, HangupEvent)
    assert event == HangupEvent.from_json(good)
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["esl.event_rejected"]
    assert (source.stats.events_rejected, source.stats.events_received[HANGUP_COMPLETE]) == (1, 1)


class Presolver:
    """A batch handler whose presolve is broken in a chosen way; prepare and commit work."""

    def __init__(self, broken: str) -> None:
        self.broken = broken
        self.committed: gevent.queue.Queue[str] = gevent.queue.Queue()

    def presolve(self, events: list[HangupEvent | RawEvent]) -> Any:
        if self.broken == "raises":
            raise RuntimeError("presolve bug")
        if self.broken == "collect raises":
            def fail() -> list[Any]:
                raise RuntimeError("collect bug")
            return fail
        return lambda: [{"wrong": "length"}] * (len(events) + 1)

    def prepare(self, event: HangupEvent) -> str:
        return event.unique_id

    def commit(self, prepared: list[str]) -> None:
        for unique_id in prepared:
            self.committed.put(unique_id)


@pytest.mark.parametrize("broken", ["raises", "collect raises", "wrong length"])
def test_a_broken_presolve_leaves_every_event_to_prepare(broken: str) -> None:
    bodies = json_bodies("uas_486")
    handler = Presolver(broken)
    with FakeFreeSWITCH() as fake, capture_logs() as logs:
        source = ESLSource(Node("lab", port=fake.port), FAST, {HANGUP_COMPLETE: handler},
                           structlog.get_logger(), deferred=HANGUPS)
        greenlet = gevent.spawn(source.run)
        fake.next_session().send(b"".join(frame("text/event-json", body) for body in bodies))
        got = [handler.committed.get(timeout=5) for _ in bodies]
        source.stop()
        greenlet.join(timeout=5)
    assert got == [HangupEvent.from_json(body).unique_id for body in bodies]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["call.presolve_failed"]
