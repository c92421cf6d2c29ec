"""Chaos: a steady stream of hangups while the ESL connection, the webhook endpoint and the daemon
itself fail at random; at the end nothing the daemon acknowledged is missing.

A fake FreeSWITCH sends ~150 CHANNEL_HANGUP_COMPLETE events a second (``event json``, as the daemon
subscribes) to the daemon (a real subprocess with an outbox and one webhook endpoint). Meanwhile,
chosen at random (seeded; the seed is printed): the ESL connection is reset (TCP RST), ended with a
disconnect-notice, or ended after a burst of 300 events; the endpoint answers 500, stalls past the
webhook timeout, refuses connections, or answers 200 with a body that never ends, for a while;
another SQLite client holds the outbox's write
lock past the daemon's busy timeout (ingestion pauses, FreeSWITCH queues); the daemon is SIGKILLed
and restarted.

What "read" means here, precisely. An event counts as *read* by the daemon once its
``leg.classified`` line was written: the daemon writes it only after the document is committed to
the outbox. An event still in a socket buffer or in the daemon's queue when SIGKILL lands is not
read (FreeSWITCH does not replay it either: it shows up as a gap). Checked strictly:

1. every read event is received by the endpoint and acknowledged (a 2xx, not a stalled answer) at
   least once, with a valid Standard Webhooks signature; every copy of a call carries the same
   ``webhook-id`` and a body whose ``id`` is that webhook-id;
2. a connection that FreeSWITCH ended gracefully (a disconnect-notice, or a burst then FIN) while the
   daemon lived on: every event sent on it was read (the daemon reconnects only after handling all
   it received);
3. at the clean end (a sentinel event read, then SIGTERM): every event sent on the last connection
   was read, the daemon exits 0 and its outbox holds nothing, pending or dead;
4. no daemon ever logged ``loop.blocked`` (conftest turns gevent's monitor on).

Default 40 s of chaos; ``--chaos-seconds 600`` (or ``CHAOS_SECONDS``) for a long run by hand,
``--chaos-seed N`` (or ``CHAOS_SEED``) to replay one.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import pytest
from standardwebhooks.webhooks import Webhook
from webhook_receiver import Flood, Receiver, Reply, Slow

from tests.fakeesl import FakeFreeSWITCH, Session, capture_bodies, frame

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RATE = 150  # events per second in the steady stream
WEBHOOK_TIMEOUT = 1.0


def option(config: pytest.Config, name: str, env: str, default: Any) -> Any:
    value = config.getoption(name)
    if value is None and os.environ.get(env):
        value = type(default)(os.environ[env])
    return default if value is None else value


def make_body() -> Callable[[str], bytes]:
    """A real busy hangup as ``event json`` sends it, its Unique-ID replaced (fast: split once)."""
    head, rest = capture_bodies("uas_486", "hangup_complete.json.txt")[0].split(b'"Unique-ID":"', 1)
    tail = rest.split(b'"', 1)[1]
    return lambda uid: head + b'"Unique-ID":"' + uid.encode() + b'"' + tail


def event_frame(body: bytes) -> bytes:
    return frame("text/event-json", body)


class Incarnation:
    """One daemon process; a real thread reads its log lines as they are written."""

    def __init__(self, config: Path, number: int) -> None:
        self.number = number
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "listener", "run", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.classified: list[str] = []  # channel uuids, in the order their lines were written
        self.ids: dict[str, str] = {}  # channel uuid -> document id
        self.lines: queue.Queue[str] = queue.Queue()  # the classified channel uuids, for waiting
        self.events: Counter[str] = Counter()
        self.gap_s = 0.0
        self.other: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                entry = json.loads(raw)
            except ValueError:
                self.other.append(raw.decode(errors="replace"))
                continue
            self.events[entry["event"]] += 1
            if entry["event"] == "leg.classified":
                uid = entry["leg"]["channel_uuid"]
                self.classified.append(uid)
                self.ids[uid] = entry["leg"]["id"]
                self.lines.put(uid)
            elif entry["event"] == "esl.gap":
                self.gap_s += entry["gap_s"]
            elif entry["event"] == "loop.blocked":
                self.other.append(raw.decode())

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = 30) -> int:
        code = gevent.get_hub().threadpool.apply(self.proc.wait, (timeout,))
        gevent.get_hub().threadpool.apply(self._reader.join, (timeout,))
        return int(code)

    def wait_classified(self, uid: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while uid not in self.ids:
            left = deadline - time.monotonic()
            assert left > 0, f"{uid} never classified; last lines: {self.other[-3:]}"
            try:
                gevent.get_hub().threadpool.apply(self.lines.get, (True, min(left, 1.0)))
            except queue.Empty:
                assert self.proc.poll() is None, f"the daemon exited: {self.other[-5:]}"


@dataclass
class Connection:
    """One accepted ESL connection: what was sent on it and how it ended."""

    session: Session
    kills_before: int
    sent: list[str] = field(default_factory=list)
    ended: str = ""


class Chaos:
    """The stream, the sessions, the daemon incarnations, and the random actions."""

    def __init__(self, fake: FakeFreeSWITCH, receiver: Receiver, config: Path, rng: random.Random) -> None:
        self.fake, self.receiver, self.config, self.rng = fake, receiver, config, rng
        self.body = make_body()
        self.acknowledged = Acknowledged(receiver)
        self.connections: list[Connection] = []
        self.incarnations: list[Incarnation] = []
        self.kills = 0
        self.actions: Counter[str] = Counter()
        self.next_id = 0
        self.streaming = True
        self.new_connection = gevent.event.Event()
        self.greenlets = [gevent.spawn(self._accept), gevent.spawn(self._stream)]

    @property
    def daemon(self) -> Incarnation:
        return self.incarnations[-1]

    @property
    def current(self) -> Connection | None:
        return self.connections[-1] if self.connections and not self.connections[-1].ended else None

    def start_daemon(self) -> None:
        self.incarnations.append(Incarnation(self.config, len(self.incarnations)))

    def _accept(self) -> None:
        while True:
            session = self.fake.sessions.get()
            if session.subscribed.wait(15):
                if self.current is not None:
                    self.current.ended = self.current.ended or "replaced"
                self.connections.append(Connection(session, self.kills))
                self.new_connection.set()

    def send(self, count: int) -> None:
        """Send ``count`` events in one write on the current connection (if any)."""
        conn = self.current
        if conn is None:
            return
        uids = [f"chaos-{self.next_id + n:07d}" for n in range(count)]
        self.next_id += count
        try:
            conn.session.send(b"".join(event_frame(self.body(uid)) for uid in uids))
        except OSError:
            conn.ended = conn.ended or "send failed"
            return
        conn.sent.extend(uids)

    def _stream(self) -> None:
        while True:
            if self.streaming:
                self.send(1)
            gevent.sleep(1 / RATE)  # the steady stream's pace (a stimulus, not a wait)

    def wait_connected(self) -> Connection:
        """The connection of the live daemon (it reconnects by itself)."""
        with gevent.Timeout(30, AssertionError("the daemon never reconnected")):
            while (conn := self.current) is None or conn.kills_before != self.kills:
                self.new_connection.clear()
                self.new_connection.wait()
        return conn

    # -- actions --------------------------------------------------------------------------------
    def act(self) -> None:
        name = self.rng.choice(["esl_reset", "esl_notice", "esl_burst_close", "hook_500", "hook_stall",
                                "hook_refuse", "hook_flood", "outbox_lock", "kill", "kill"])
        self.actions[name] += 1
        getattr(self, name)()

    def esl_reset(self) -> None:
        if (conn := self.current) is not None:
            conn.ended = "reset"
            conn.session.abort()

    def esl_notice(self) -> None:
        if (conn := self.current) is not None:
            conn.session.disconnect_notice()
            conn.ended = "notice"
            conn.session.close()

    def esl_burst_close(self) -> None:
        if self.current is not None:
            self.send(300)
        if (conn := self.current) is not None:
            conn.ended = "burst"
            conn.session.close()

    def _endpoint_down_for_a_while(self, down: Callable[[], None], up: Callable[[], None]) -> None:
        down()
        gevent.sleep(self.rng.uniform(0.5, 3.0))  # the outage itself: the stream goes on meanwhile
        up()

    def hook_500(self) -> None:
        self._endpoint_down_for_a_while(lambda: setattr(self.receiver, "default", Reply(500)),
                                        lambda: setattr(self.receiver, "default", Reply()))

    def hook_stall(self) -> None:
        stall = Slow(WEBHOOK_TIMEOUT + 0.5)
        self._endpoint_down_for_a_while(lambda: setattr(self.receiver, "default", stall),
                                        lambda: setattr(self.receiver, "default", Reply()))

    def hook_flood(self) -> None:
        self._endpoint_down_for_a_while(lambda: setattr(self.receiver, "default", Flood()),
                                        lambda: setattr(self.receiver, "default", Reply()))

    def hook_refuse(self) -> None:
        self._endpoint_down_for_a_while(self.receiver.refuse, self.receiver.listen_again)

    def outbox_lock(self) -> None:
        """An operator's shell, a backup or a VACUUM holds the write lock past the 5 s busy timeout."""
        other = sqlite3.connect(self.config.parent / "outbox.sqlite3", isolation_level=None, timeout=10)
        try:
            other.execute("BEGIN IMMEDIATE")
            gevent.sleep(self.rng.uniform(5.5, 8.0))  # the outage itself: the stream goes on meanwhile
            other.execute("COMMIT")
        finally:
            other.close()

    def kill(self) -> None:
        self.kills += 1
        if (conn := self.current) is not None:
            conn.ended = "killed"
        self.daemon.kill()
        self.start_daemon()

    def stop(self) -> None:
        gevent.killall(self.greenlets)


def write_config(tmp_path: Path, fake: FakeFreeSWITCH, url: str) -> Path:
    config = tmp_path / "listener.toml"
    schedule = ", ".join(["0.3"] * 100)  # 30 s of retries: no outage here exhausts it
    config.write_text(
        f'[[freeswitch]]\nname = "chaos"\nport = {fake.port}\n'
        f"[esl]\nbackoff_initial = 0.05\nbackoff_max = 0.3\n[health]\nport = 0\n"
        f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\nsynchronous = "normal"\n'
        f'[[webhooks]]\nname = "hook"\nurl = "{url}"\nsecret = "{SECRET}"\n'
        f"timeout = {WEBHOOK_TIMEOUT}\nconnect_timeout = 1\nretry_jitter = 0\ntypes = [\"leg.classified\"]\n"
        f"retry_schedule = [{schedule}]\n")
    return config


@pytest.mark.slow
@pytest.mark.timeout(0)  # bounded by --chaos-seconds plus the final phase's own timeouts
def test_chaos_loses_nothing_the_daemon_read(
    tmp_path: Path, receiver: Receiver, pytestconfig: pytest.Config
) -> None:
    seconds = option(pytestconfig, "--chaos-seconds", "CHAOS_SECONDS", 40.0)
    seed = option(pytestconfig, "--chaos-seed", "CHAOS_SEED", random.randrange(2**32))
    print(f"\nchaos: seed {seed}, {seconds:g} s (replay with --chaos-seed {seed})")
    rng = random.Random(seed)
    with FakeFreeSWITCH() as fake:
        chaos = Chaos(fake, receiver, write_config(tmp_path, fake, receiver.url()), rng)
        try:
            chaos.start_daemon()
            chaos.wait_connected()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                gevent.sleep(rng.uniform(0.3, 2.0))  # calm between two blows: the stream flows
                chaos.act()
                chaos.acknowledged.update()
            final = finish(chaos)
        finally:
            chaos.stop()
            for incarnation in chaos.incarnations:
                if incarnation.proc.poll() is None:
                    incarnation.proc.kill()
    report(chaos, final, seed)
    check(chaos, final, tmp_path)


@dataclass
class Final:
    accepted: dict[str, int]  # webhook-id -> acknowledged copies
    requests: int
    exit_code: int


def finish(chaos: Chaos) -> Final:
    """Endpoint healthy, one live connection, a sentinel read, every read event acknowledged, SIGTERM."""
    chaos.receiver.default = Reply()
    conn = chaos.wait_connected()
    chaos.streaming = False
    gevent.sleep(0.1)  # let a send already under way finish before the sentinel follows it
    sentinel = f"sentinel-{chaos.next_id}"
    conn.session.send(event_frame(chaos.body(sentinel)))
    chaos.daemon.wait_classified(sentinel, timeout=30)
    conn.sent.append(sentinel)
    conn.ended = "final"
    want = {doc_id for inc in chaos.incarnations for doc_id in inc.ids.values()}
    deadline = time.monotonic() + 60
    while missing := want - set(chaos.acknowledged.update()):
        assert time.monotonic() < deadline, f"{len(missing)} read events never acknowledged"
        with contextlib.suppress(queue.Empty):
            chaos.receiver.get(timeout=1)
    chaos.daemon.proc.send_signal(signal.SIGTERM)
    code = chaos.daemon.wait()
    return Final(chaos.acknowledged.update(), len(chaos.receiver.received), code)


class Acknowledged:
    """webhook-id -> copies answered 2xx in time; each request's signature and body checked once,
    soon after it arrived (the reference verifier refuses timestamps older than five minutes)."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.verifier = Webhook(SECRET)
        self.copies: Counter[str] = Counter()
        self.webhook_ids: dict[str, set[str]] = {}  # channel uuid -> every webhook-id it came under
        self.checked = 0

    def update(self) -> dict[str, int]:
        arrived = list(self.receiver.received)
        for request in arrived[self.checked:]:
            payload = self.verifier.verify(request.body, request.headers)
            assert payload["type"] == "leg.classified"
            payload = payload["data"]
            assert payload["id"] == request.webhook_id
            self.webhook_ids.setdefault(payload["channel_uuid"], set()).add(request.webhook_id)
            if 200 <= request.status < 300 and not request.stalled:
                self.copies[request.webhook_id] += 1
        self.checked = len(arrived)
        return dict(self.copies)


def report(chaos: Chaos, final: Final, seed: int) -> None:
    read = {uid for inc in chaos.incarnations for uid in inc.classified}
    sent = sum(len(c.sent) for c in chaos.connections)
    copies = sum(final.accepted.values())
    reconnects = sum(max(inc.events["esl.connected"] - 1, 0) for inc in chaos.incarnations)
    print(f"chaos seed {seed}: sent {sent} / read {len(read)} / received {len(final.accepted)} / "
          f"duplicates {copies - len(final.accepted)} (requests {final.requests}) / kills {chaos.kills} / "
          f"reconnects {reconnects} / gaps "
          f"{sum(inc.events['esl.gap'] for inc in chaos.incarnations)} "
          f"({sum(inc.gap_s for inc in chaos.incarnations):.1f} s)")
    print("chaos actions:", dict(chaos.actions), "connections ended:",
          dict(Counter(c.ended for c in chaos.connections)))


def check(chaos: Chaos, final: Final, tmp_path: Path) -> None:
    ids: dict[str, set[str]] = {}
    for inc in chaos.incarnations:
        for uid, doc_id in inc.ids.items():
            ids.setdefault(uid, set()).add(doc_id)
    assert all(len(doc_ids) == 1 for doc_ids in ids.values()), "a call was logged under two ids"
    twice = {uid for uid, hooks in chaos.acknowledged.webhook_ids.items() if len(hooks) > 1}
    assert not twice, f"calls received under two webhook-ids: {sorted(twice)[:5]}"
    missing = {doc_id for (doc_id,) in ids.values()} - set(final.accepted)
    assert not missing, f"{len(missing)} read events never acknowledged"
    read = set(ids)
    for n, conn in enumerate(chaos.connections):
        after = chaos.connections[n + 1] if n + 1 < len(chaos.connections) else None
        survived = after is not None and after.kills_before == conn.kills_before
        if (conn.ended in ("notice", "burst") and survived) or conn.ended == "final":
            lost = [uid for uid in conn.sent if uid not in read]
            assert not lost, f"connection {n} ({conn.ended}): {len(lost)} sent events never read"
    assert final.exit_code == 0
    for inc in chaos.incarnations:
        assert not [line for line in inc.other if "loop.blocked" in line], inc.other
    left = subprocess.run(
        [sys.executable, "-m", "listener", "outbox", "--config", str(tmp_path / "listener.toml"), "list",
         "--state", "all", "--json"], capture_output=True, check=True, timeout=30)
    assert left.stdout.decode().strip() == "", "the outbox still holds messages"
