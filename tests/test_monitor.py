"""``listener.service.monitor``: gevent's report of a blocked loop becomes one ``loop.blocked`` error line."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
import structlog
from gevent.events import subscribers
from structlog.testing import capture_logs

import tests.conftest
from listener.service import monitor


@pytest.fixture
def watched() -> Iterator[list[dict[str, Any]]]:
    before = list(subscribers)
    with capture_logs() as logs:
        assert monitor.watch(structlog.get_logger())
        yield logs
    subscribers[:] = before
    tests.conftest.blocked.clear()  # this test blocks the loop on purpose


def test_a_greenlet_that_blocks_the_loop_is_logged_with_where_it_was(watched: list[dict[str, Any]]) -> None:
    def stall() -> None:
        time.sleep(0.35)  # the stimulus: a greenlet that blocks the loop without yielding

    staller = gevent.Greenlet(stall)
    staller.blocks_on_purpose = True  # type: ignore[attr-defined]  # its late reports never fail a later test
    staller.start()
    staller.join()
    with gevent.Timeout(5, AssertionError(f"no loop.blocked line: {watched}")):
        while not [e for e in watched if e["event"] == "loop.blocked"]:
            gevent.sleep(0.01)  # the report reaches the hub as a callback: let it run
    entry = next(e for e in watched if e["event"] == "loop.blocked")
    assert entry["log_level"] == "error"
    assert entry["threshold_s"] == 0.1
    assert "in stall" in str(entry["stack"])
    assert watched[0]["event"] == "loop.monitored"
