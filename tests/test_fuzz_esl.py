"""Fuzzing the whole ESL edge: garbage on a live connection, then valid events, through the App.

Each example, on the connection the daemon holds: a valid hangup A, then generated garbage, then a
valid hangup B, then FreeSWITCH closes. The daemon must classify A (it came whole before the
garbage), reconnect (broken framing or the close ends the connection), and classify C, sent on the
new connection. B may be swallowed by the garbage (a body it announced); nothing may crash or hang.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import gevent
import gevent.queue
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from listener.app import App
from listener.config.settings import Config, ESLSettings, HealthConfig, Node
from tests.fakeesl import Collect, FakeFreeSWITCH, Session, capture_bodies, event_frame, with_header
from tests.test_fuzz_frame import envelopes

SETTINGS = ESLSettings(connect_timeout=2, command_timeout=1, liveness_timeout=5,
                       max_frame_bytes=64 * 1024, backoff_initial=0.01, backoff_max=0.05)


@dataclass
class Rig:
    fake: FakeFreeSWITCH
    sink: Collect
    session: Session
    calls: int = 0

    def hangup(self, tag: str) -> tuple[str, bytes]:
        self.calls += 1
        uid = f"{tag}-{self.calls:05d}"
        return uid, event_frame(with_header(capture_bodies("uas_486")[0], "Unique-ID", uid))

    def wait_for(self, *uids: str) -> set[str]:
        """Documents until every uid in ``uids`` was classified; returns every uid seen."""
        seen: set[str] = set()
        while not set(uids) <= seen:
            try:
                seen.add(self.sink.documents.get(timeout=10)["channel_uuid"])
            except gevent.queue.Empty:
                raise AssertionError(f"never classified: {set(uids) - seen}") from None
        return seen


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with FakeFreeSWITCH() as fake:
        sink = Collect()
        config = Config(nodes=(Node("fuzz", port=fake.port),), esl=SETTINGS, health=HealthConfig(port=0))
        app = App(config, sink)
        app.start()
        try:
            yield Rig(fake, sink, fake.next_session())
        finally:
            app.stop(timeout=5)


def send_quietly(session: Session, data: bytes) -> None:
    """The daemon may already have dropped the connection (broken framing): that is fine."""
    with contextlib.suppress(OSError):
        session.send(data)


garbage = st.one_of(st.binary(min_size=1, max_size=3000), envelopes())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage)
def test_valid_events_around_garbage_are_classified_after_the_reconnect(rig: Rig, junk: bytes) -> None:
    before, a = rig.hangup("before")
    _, b = rig.hangup("swallowable")
    after, c = rig.hangup("after")
    send_quietly(rig.session, a)
    send_quietly(rig.session, junk)
    send_quietly(rig.session, b)
    rig.session.close()
    rig.session = rig.fake.next_session(timeout=10)
    rig.session.send(c)
    rig.wait_for(before, after)


def test_an_event_in_the_same_read_as_broken_framing_is_still_classified(rig: Rig) -> None:
    """Found by this fuzz test: FrameDecoder.feed raised on the broken frame and dropped the
    complete frames it had decoded before it in the same read."""
    before, a = rig.hangup("same-read")
    rig.session.send(a + b"Content-Length: nope\n\n")
    rig.session = rig.fake.next_session(timeout=10)
    after, c = rig.hangup("after")
    rig.session.send(c)
    rig.wait_for(before, after)
