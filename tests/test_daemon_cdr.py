"""The daemon with ``cdr_dir``: the legs the Event Socket did not deliver are recovered from
mod_json_cdr's files, every leg delivered exactly once (by webhook-id), whichever source came first.

Real captures (``tests/data/fixtures-cdr``): each scenario's ESL frames and the CDR files FreeSWITCH
wrote for the same legs in the same run.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections import Counter
from pathlib import Path

import gevent
import pytest
from webhook_receiver import Receiver

from listener.core.document import document_id
from listener.core.event import HangupEvent
from tests.daemon import Daemon
from tests.fakeesl import FakeFreeSWITCH, frame, split_frames
from tests.test_daemon_webhooks import SECRET

FIXTURES = Path(__file__).parent / "data" / "fixtures-cdr"
SCENARIOS = ("answered_caller_bye", "answered_callee_bye", "caller_cancel_while_ringing", "api_originate_486")


def esl_bodies(scenario: str) -> list[bytes]:
    return [body for _, body in split_frames((FIXTURES / scenario / "hangup_complete.json.txt").read_bytes())]


def ids_of(bodies: list[bytes]) -> set[str]:
    events = [HangupEvent.from_json(body) for body in bodies]
    return {document_id(e.core_uuid, e.unique_id) for e in events}


def config_for(tmp_path: Path, fake: FakeFreeSWITCH, url: str, cdr_dir: Path | None) -> Path:
    config = tmp_path / "listener.toml"
    cdr = f'cdr_dir = "{cdr_dir}"\n' if cdr_dir is not None else ""
    config.write_text(
        f'[[freeswitch]]\nname = "lab"\nport = {fake.port}\n{cdr}'
        f"[esl]\nbackoff_initial = 0.05\nbackoff_max = 0.2\n"
        f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\nsynchronous = "normal"\n[health]\nport = 0\n'
        f'[[webhooks]]\nname = "hook0"\nurl = "{url}"\nsecret = "{SECRET}"\ntimeout = 2\n'
        f"retry_schedule = [0.2, 0.2, 0.2]\nretry_jitter = 0\ntypes = [\"leg.classified\"]\n")
    return config


def copy_cdrs(scenario: str, cdr_dir: Path) -> int:
    files = sorted((FIXTURES / scenario / "json_cdr").glob("*.cdr.json"))
    for path in files:
        shutil.copy(path, cdr_dir / path.name)
    return len(files)


def delivered(receiver: Receiver) -> Counter[str]:
    return Counter(r.webhook_id for r in receiver.received if 200 <= r.status < 300)


def until_delivered(receiver: Receiver, want: set[str], timeout: float = 30) -> None:
    """Until every id in ``want`` (and no other) was answered 2xx."""
    with gevent.Timeout(timeout, AssertionError(f"delivered {dict(delivered(receiver))}, want {want}")):
        while set(delivered(receiver)) != want:
            receiver.get(timeout=timeout)


def test_legs_the_event_socket_missed_are_recovered_from_cdr_files_and_each_delivered_once(
        tmp_path: Path, receiver: Receiver) -> None:
    cdr_dir = tmp_path / "json_cdr"
    cdr_dir.mkdir()
    everything = {s: esl_bodies(s) for s in SCENARIOS}
    want = set().union(*(ids_of(bodies) for bodies in everything.values()))
    with FakeFreeSWITCH() as fake:
        daemon = Daemon(config_for(tmp_path, fake, receiver.url(), cdr_dir))
        try:
            daemon.expect("listener.started")
            session = fake.next_session(timeout=15)
            sent = SCENARIOS[:2]  # the Event Socket delivers two calls; FreeSWITCH wrote files for all four
            session.send(b"".join(frame("text/event-json", body) for s in sent for body in everything[s]))
            for scenario in SCENARIOS:  # mod_json_cdr writes its files as the calls end
                copy_cdrs(scenario, cdr_dir)
            until_delivered(receiver, want)
            daemon.send(signal.SIGTERM)
            assert daemon.finish() == 0
        finally:
            daemon.kill()
    assert set(delivered(receiver).values()) == {1}  # each leg exactly once, whichever source came first
    lines = [json.loads(line) for line in daemon.output if line.startswith("{")]
    classified = Counter(line["leg"]["id"] for line in lines if line["event"] == "leg.classified")
    assert set(classified) == want
    assert set(classified.values()) == {1}  # and logged once


def test_files_written_while_the_daemon_was_away_are_recovered_at_start(
        tmp_path: Path, receiver: Receiver) -> None:
    cdr_dir = tmp_path / "json_cdr"
    cdr_dir.mkdir()
    with FakeFreeSWITCH() as fake:
        config = config_for(tmp_path, fake, receiver.url(), cdr_dir)
        first = Daemon(config)
        try:
            first.expect("listener.started")
            session = fake.next_session(timeout=15)
            session.send(b"".join(frame("text/event-json", body) for body in esl_bodies(SCENARIOS[0])))
            first.expect("leg.classified")
            first.kill()  # SIGKILL: away
        finally:
            first.kill()
        before = set(delivered(receiver))  # delivered, but maybe not yet recorded so when it was killed
        for scenario in SCENARIOS:  # hangups while nobody listened (and the first call's files, again)
            copy_cdrs(scenario, cdr_dir)
        again = Daemon(config)
        try:
            recovered = again.expect("cdr.recovered", timeout=30)
            assert recovered["reason"] == "start"
            want = set().union(*(ids_of(esl_bodies(s)) for s in SCENARIOS))
            until_delivered(receiver, want)
            again.send(signal.SIGTERM)
            assert again.finish() == 0
        finally:
            again.kill()
    copies = delivered(receiver)
    assert set(copies) == want
    # at least once: only a message the killed daemon had sent may come again, once
    assert {i: n for i, n in copies.items() if n != 1 and not (n == 2 and i in before)} == {}


def test_a_freeswitch_restart_while_calls_go_on_loses_nothing_with_cdr_dir(
        tmp_path: Path, receiver: Receiver) -> None:
    cdr_dir = tmp_path / "json_cdr"
    cdr_dir.mkdir()
    first, during, after = SCENARIOS[0], SCENARIOS[1:3], SCENARIOS[3]
    with FakeFreeSWITCH() as fake:
        daemon = Daemon(config_for(tmp_path, fake, receiver.url(), cdr_dir))
        try:
            daemon.expect("listener.started")
            session = fake.next_session(timeout=15)
            session.send(b"".join(frame("text/event-json", body) for body in esl_bodies(first)))
            copy_cdrs(first, cdr_dir)
            daemon.expect("leg.classified")
            fake.core_uuid = "7c1d5e4f-0b7a-4e63-9a51-2f3c4d5e6f70"  # the new instance: set first
            session.disconnect_notice()  # FreeSWITCH shuts down (the daemon may reconnect at once)
            session.close()
            for scenario in during:  # calls ended meanwhile: only their CDR files have them
                copy_cdrs(scenario, cdr_dir)
            session = fake.next_session(timeout=15)
            session.send(b"".join(frame("text/event-json", body) for body in esl_bodies(after)))
            copy_cdrs(after, cdr_dir)
            want = set().union(*(ids_of(esl_bodies(s)) for s in SCENARIOS))
            until_delivered(receiver, want)
            daemon.send(signal.SIGTERM)
            assert daemon.finish() == 0
        finally:
            daemon.kill()
    assert set(delivered(receiver).values()) == {1}
    lines = [json.loads(line) for line in daemon.output if line.startswith("{")]
    assert any(line["event"] == "esl.freeswitch_restarted" for line in lines)


def test_cdr_dir_is_an_absolute_path_and_opens_the_outbox_even_without_webhooks(tmp_path: Path) -> None:
    from listener.app import needs_outbox  # noqa: PLC0415
    from listener.config import loader  # noqa: PLC0415
    from listener.core.errors import ConfigError  # noqa: PLC0415

    good = tmp_path / "good.toml"
    good.write_text(f'[[freeswitch]]\nname = "lab"\ncdr_dir = "{tmp_path}"\n'
                    "[outbox]\ntaken_retention_hours = 48\n")
    config = loader.load(good)
    assert config.nodes[0].cdr_dir == tmp_path
    assert config.outbox.taken_retention_s == 48 * 3600
    assert needs_outbox(config)  # the record of legs taken lives there
    bad = tmp_path / "bad.toml"
    bad.write_text('[[freeswitch]]\nname = "lab"\ncdr_dir = "json_cdr"\n'
                   "[outbox]\ntaken_retention_hours = 0\n")
    with pytest.raises(ConfigError) as caught:
        loader.load(bad)
    problems = " ".join(caught.value.problems)
    assert "freeswitch[0].cdr_dir" in problems
    assert "absolute" in problems
    assert "outbox.taken_retention_hours" in problems
