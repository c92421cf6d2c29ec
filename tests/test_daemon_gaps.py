"""The daemon killed with SIGKILL and started again: the gap across the restart is logged.

FreeSWITCH does not replay what a listener missed; the daemon's state file (``esl-state.json``
beside the outbox) lets the next run say how long it was blind, and whether FreeSWITCH restarted.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.daemon import Daemon
from tests.fakeesl import FakeFreeSWITCH, Session, capture_bodies, with_header

CORE = "1b8e5af5-676a-4b2e-91a0-1ac1b56080da"
NEW_CORE = "2c9f6a10-0000-4000-8000-000000000001"


def write_config(tmp_path: Path, fake: FakeFreeSWITCH) -> Path:
    """No webhooks: the state file goes in the outbox's folder all the same."""
    config = tmp_path / "listener.toml"
    config.write_text(
        f'[[freeswitch]]\nname = "lab"\nport = {fake.port}\n'
        f"[esl]\nbackoff_initial = 0.05\nbackoff_max = 0.2\n"
        f'[outbox]\npath = "{tmp_path / "state" / "outbox.sqlite3"}"\n'
        f"[health]\nport = 0\n"
    )
    return config


def connected(daemon: Daemon, fake: FakeFreeSWITCH) -> Session:
    session = fake.next_session(timeout=15)
    daemon.expect("esl.connected")
    return session


@pytest.mark.parametrize(("core_after", "restarted"), [(CORE, False), (NEW_CORE, True)])
def test_a_daemon_killed_and_started_again_logs_the_gap_across_the_restart(
    tmp_path: Path, core_after: str, restarted: bool
) -> None:
    with FakeFreeSWITCH() as fake:
        config = write_config(tmp_path, fake)
        first = Daemon(config)
        try:
            session = connected(first, fake)
            for uid in ("before-kill-1", "before-kill-2"):  # the 2nd line: the 1st batch and its record done
                session.send_event(with_header(capture_bodies("uas_486")[0], "Unique-ID", uid))
                first.expect("leg.classified")
            killed_at = time.time()
        finally:
            first.kill()  # SIGKILL
        assert first.proc.returncode == -9
        assert session.closed.wait(5)
        fake.core_uuid = core_after
        restarted_at = time.time()
        second = Daemon(config)
        try:
            connected(second, fake)
            gap = second.expect("esl.gap")
        finally:
            second.kill()
    assert gap["across_restart"] is True
    assert gap["gap_s"] >= restarted_at - killed_at - 0.001  # rounded to the millisecond
    assert gap["measured_from"] == "last_write"  # killed: no record of the connection's end
    assert (gap["previous_core_uuid"], gap["freeswitch_restarted"]) == (CORE, restarted)
    assert "set [[freeswitch]] cdr_dir" in gap["note"]
    assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"
