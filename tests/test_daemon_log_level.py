"""A SIGHUP that changes ``[log] level`` reaches every part of the running daemon: the loggers each
node's pipeline and each webhook endpoint bound at start too."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from webhook_receiver import Receiver

from tests.daemon import Daemon
from tests.fakeesl import FakeFreeSWITCH, event_frame
from tests.test_daemon_webhooks import bodies

pytestmark = pytest.mark.slow

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HEARTBEAT = (b"Event-Name: HEARTBEAT\nCore-UUID: 1b8e5af5-676a-4b2e-91a0-1ac1b56080da\n"
             b"FreeSWITCH-Hostname: pbx\n")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def write_config(path: Path, fake: FakeFreeSWITCH, url: str, level: str) -> None:
    path.write_text(
        f'[[freeswitch]]\nname = "lab"\nport = {fake.port}\n[log]\nlevel = "{level}"\n'
        f'[outbox]\npath = "{path.parent / "outbox.sqlite3"}"\nsynchronous = "normal"\n[health]\nport = 0\n'
        f'[[webhooks]]\nname = "crm"\nurl = "{url}"\nsecret = "{SECRET}"\ntypes = ["leg.classified"]\n')


def test_a_reload_from_warning_to_debug_shows_the_debug_lines_of_the_pipeline_and_the_endpoints(
        tmp_path: Path, receiver: Receiver) -> None:
    config = tmp_path / "listener.toml"
    first, second = bodies(2)
    with FakeFreeSWITCH() as fake:
        write_config(config, fake, receiver.url(), "warning")
        daemon = Daemon(config)
        try:
            session = fake.next_session(timeout=15)
            session.send(event_frame(HEARTBEAT) + event_frame(first))
            receiver.get(timeout=15)  # delivered at warning: no line says so
            write_config(config, fake, receiver.url(), "debug")
            daemon.send(signal.SIGHUP)
            daemon.expect("config.reloaded")
            before = [json.loads(line) for line in daemon.output]
            session.send(event_frame(HEARTBEAT) + event_frame(second))
            heartbeat = daemon.expect("esl.heartbeat_received")
            delivered = daemon.expect("webhook.delivered")
            daemon.send(signal.SIGTERM)
            assert daemon.finish() == 0
        finally:
            daemon.kill()
    assert before[-1]["event"] == "config.reloaded"
    assert [line["level"] for line in before] == ["info"] * len(before)  # the reload's own lines only
    assert (heartbeat["level"], heartbeat["node"]) == ("debug", "lab")  # the pipeline's, bound at start
    assert (delivered["level"], delivered["endpoint"]) == ("debug", "crm")  # the endpoint's
