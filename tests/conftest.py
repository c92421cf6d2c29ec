"""Suite-wide guards: the gevent loop never blocks for more than 0.1 s, and no greenlet dies unseen.

In process, gevent's monitor thread checks every 0.1 s whether the running greenlet switched; a
report while a greenlet other than the test's own (the main greenlet) runs fails the test. The
test's own synchronous code (hypothesis, building data) is not the daemon's and blocks nothing
the daemon owns. A greenlet that dies of an uncaught exception (reported to the hub) fails the
test too: the daemon must catch and log what it can survive.

Daemon subprocesses inherit ``GEVENT_MONITOR_THREAD_ENABLE`` and ``GEVENT_MAX_BLOCKING_TIME``;
the daemon then logs a ``loop.blocked`` error line (``listener.service.monitor``) and the helpers that
read its output (``tests/daemon.py``, ``tests/test_daemon_webhooks.py``, ``tests/test_cli.py``,
``tests/test_chaos.py``) fail on one.
"""

from __future__ import annotations

import os

os.environ["GEVENT_MONITOR_THREAD_ENABLE"] = "true"
os.environ["GEVENT_MAX_BLOCKING_TIME"] = "0.1"

from collections.abc import Iterator
from typing import Any

import gevent
import gevent._monitor
import gevent.hub
import greenlet
import pytest
from gevent.events import EventLoopBlocked, subscribers
from structlog.testing import capture_logs
from webhook_receiver import Receiver

gevent.config.monitor_thread = True
gevent.config.max_blocking_time = 0.1

MAIN = greenlet.getcurrent()
blocked: list[str] = []
uncaught: list[str] = []


def _on_event(event: object) -> None:
    """On the monitor thread: keep the report of a daemon greenlet that blocked the loop."""
    if (isinstance(event, EventLoopBlocked) and event.greenlet is not MAIN
            and not getattr(event.greenlet, "blocks_on_purpose", False)):  # tests/test_monitor.py's stall
        blocked.append("\n".join(str(line) for line in event.info))


subscribers.append(_on_event)
_show_report = gevent._monitor.PeriodicMonitoringThread._show_blocking_report


def _show_daemon_reports(monitor: Any, hub: Any, report: Any, active_greenlet: Any) -> Any:
    """gevent prints every report to stderr; the test's own greenlet's are noise (see above)."""
    if active_greenlet is MAIN:
        return None
    return _show_report(monitor, hub, report, active_greenlet)


gevent._monitor.PeriodicMonitoringThread._show_blocking_report = _show_daemon_reports
_handle_error = gevent.hub.Hub.handle_error


def _record_error(hub: Any, context: Any, type_: Any, value: Any, tb: Any) -> None:
    """A greenlet died of ``value``; thread-pool tasks are reported here too but raise to their caller."""
    if isinstance(context, gevent.Greenlet) and type_ is not None and not issubclass(type_, hub.NOT_ERROR):
        uncaught.append(f"{context!r}: {type_.__name__}: {value}")
    _handle_error(hub, context, type_, value, tb)


gevent.hub.Hub.handle_error = _record_error


def pytest_configure(config: pytest.Config) -> None:
    # the monitor would also watch memory with psutil (not installed, not needed here)
    config.addinivalue_line("filterwarnings", "ignore:Unable to monitor memory usage")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--chaos-seconds", type=float, default=None,
                     help="how long the chaos test runs (default 40, or $CHAOS_SECONDS)")
    parser.addoption("--chaos-seed", type=int, default=None,
                     help="the chaos test's random seed (default: random, printed; or $CHAOS_SEED)")


@pytest.fixture(autouse=True)
def _loop_never_blocks() -> Iterator[None]:
    blocked.clear()
    uncaught.clear()
    yield
    if uncaught:
        pytest.fail("a greenlet died of an uncaught exception:\n" + "\n".join(uncaught))
    if blocked:
        pytest.fail(f"the gevent loop was blocked for more than 0.1 s ({len(blocked)} reports):\n"
                    + blocked[0])


@pytest.fixture
def logs() -> Iterator[list[dict[str, object]]]:
    """Every structlog line the test's code logs, captured (structlog.testing)."""
    with capture_logs() as captured:
        yield captured


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A local webhook receiver on 127.0.0.1 (``webhook_receiver``), closed after the test."""
    r = Receiver()
    yield r
    r.close()
