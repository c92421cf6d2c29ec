"""Log output: JSON lines with ISO-8601 UTC timestamps, stdlib (greenswitch) records in the same stream."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.socket
import pytest
import structlog

from listener.service import logs
from listener.service.metrics import Metrics


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.configure("info", stream=out)
    yield out
    structlog.reset_defaults()
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, logs.StdlibBridge):
            logging.getLogger().removeHandler(handler)


def entries(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_structlog_event_is_one_json_line_with_a_utc_timestamp(stream: io.StringIO) -> None:
    structlog.get_logger().info("call.classified", call={"status": "busy"})
    (entry,) = entries(stream)
    assert entry["event"] == "call.classified"
    assert entry["call"] == {"status": "busy"}
    assert entry["level"] == "info"
    assert str(entry["timestamp"]).endswith("Z")


def test_greenswitch_stdlib_logging_lands_in_the_same_json_stream(stream: io.StringIO) -> None:
    logging.getLogger("greenswitch.esl").warning("Socket should read %s bytes", 10)
    logging.getLogger("greenswitch.esl").debug("below the level: dropped")
    (entry,) = entries(stream)
    assert entry == {"logger": "greenswitch.esl", "event": "Socket should read 10 bytes",
                     "level": "warning", "timestamp": entry["timestamp"]}


def test_a_broken_stdlib_format_string_is_logged_not_raised(stream: io.StringIO) -> None:
    logging.getLogger("lib").error("bad %d format", "not-a-number")
    assert entries(stream)[0]["event"] == "bad %d format"


def test_debug_level_lets_debug_lines_through() -> None:
    out = io.StringIO()
    logs.configure("debug", stream=out)
    structlog.get_logger().debug("esl.heartbeat_received")
    structlog.reset_defaults()
    assert json.loads(out.getvalue())["level"] == "debug"


def test_a_new_level_reaches_loggers_bound_before_it(stream: io.StringIO) -> None:
    """A reload's level applies to every logger, also those each node's source, pipeline and endpoint
    bound at start (``log.bind(node=...)``), which kept the old level before."""
    logs.configure("warning", stream=stream)
    bound = structlog.get_logger("listener").bind(node="pbx1")
    bound.debug("esl.heartbeat_received")
    bound.info("not at warning")
    logs.configure("debug", stream=stream)  # the SIGHUP
    bound.debug("esl.heartbeat_received")
    bound.bind(endpoint="crm").debug("webhook.delivered")
    logs.configure("error", stream=stream)
    bound.warning("not at error")
    bound.exception("call.handler_failed")
    assert [(e["event"], e["level"]) for e in entries(stream)] == [
        ("esl.heartbeat_received", "debug"), ("webhook.delivered", "debug"), ("call.handler_failed", "error")]


def test_the_daemons_own_stdlib_loggers_follow_the_level_other_libraries_stay_at_info(
        stream: io.StringIO) -> None:
    logs.configure("debug", stream=stream)
    logging.getLogger("listener.service.metrics").debug("ours")
    logging.getLogger("greenswitch.esl").debug("theirs")
    logging.getLogger("greenswitch.esl").log(25, "a custom level")
    logs.configure("warning", stream=stream)
    logging.getLogger("listener.service.health").info("ours, below warning")
    assert [(e["event"], e["level"]) for e in entries(stream)] == [("ours", "debug"),
                                                                    ("a custom level", "warning")]


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_auto_renders_for_a_person_on_a_terminal_and_json_otherwise() -> None:
    tty, pipe = Terminal(), io.StringIO()
    logs.configure("info", stream=tty)
    structlog.get_logger().info("esl.connected", node="pbx1")
    logs.configure("info", stream=pipe)
    structlog.get_logger().info("esl.connected", node="pbx1")
    structlog.reset_defaults()
    line = tty.getvalue()
    assert not line.startswith("{")
    assert "esl.connected" in line
    assert "\x1b[" in line  # coloured: a terminal
    assert json.loads(pipe.getvalue())["node"] == "pbx1"


def test_the_format_can_be_forced_and_isatty_injected(stream: io.StringIO) -> None:
    log = structlog.get_logger().bind(node="pbx1")  # bound before: the format reaches it
    logs.configure("info", stream=stream, fmt="console")
    log.info("one")
    logs.configure("info", stream=stream, fmt="json", isatty=lambda: True)
    log.info("two")
    logs.configure("info", stream=stream, fmt="auto", isatty=lambda: True)
    log.info("three")
    first, second, third = stream.getvalue().splitlines()
    assert "one" in first
    assert "node=pbx1" in first
    assert "\x1b[" not in first  # forced on a stream that is no terminal: no colours
    assert json.loads(second)["event"] == "two"
    assert not third.startswith("{")


def test_an_exception_is_a_traceback_in_either_format(stream: io.StringIO) -> None:
    for fmt in ("console", "json"):
        logs.configure("info", stream=stream, fmt=fmt)
        try:
            raise ValueError("boom")
        except ValueError:
            structlog.get_logger().exception("call.handler_failed")
    console, json_line = stream.getvalue().split("\n{", 1)
    assert "ValueError: boom" in console
    assert "ValueError: boom" in json.loads("{" + json_line)["exception"]


class Flushes(io.StringIO):
    """A stream that records what had been written at each flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def test_each_line_is_flushed_as_written_and_held_lines_together_when_the_run_ends() -> None:
    out = Flushes()
    logs.configure("info", stream=out)
    log = structlog.get_logger()
    log.info("alone")
    assert [json.loads(line)["event"] for line in out.flushed[-1].splitlines()] == ["alone"]
    flushes = len(out.flushed)
    with logs.held():
        log.info("one")
        with logs.held():  # nested: still one flush, at the outer end
            log.info("two")
        log.info("three")
        assert len(out.flushed) == flushes  # written, not flushed yet
    assert len(out.flushed) == flushes + 1
    events = [json.loads(line)["event"] for line in out.flushed[-1].splitlines()]
    assert events == ["alone", "one", "two", "three"]
    log.info("after")
    assert len(out.flushed) == flushes + 2


def test_held_lines_are_flushed_when_the_run_fails() -> None:
    out = Flushes()
    logs.configure("info", stream=out)
    def fail() -> None:
        with logs.held():
            structlog.get_logger().info("before the failure")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail()
    assert "before the failure" in out.flushed[-1]


# -- the daemon's output: a stuck stdout never blocks the daemon ----------------------------------


@dataclass
class Pipe:
    """An ``os.pipe()`` as the daemon's stdout; the test is its reader, and reads only when it says so."""

    read: int
    write: int
    _partial: bytes = b""
    _unread: list[dict[str, Any]] = field(default_factory=list)

    def fill(self) -> None:
        """Fill the pipe's buffer (64 KiB) with a line nobody reads: from now on a write blocks."""
        os.set_blocking(self.write, False)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(self.write, b"filler\n")
        os.set_blocking(self.write, True)

    def read_until(self, last: Callable[[dict[str, Any]], bool], timeout: float = 10) -> list[dict[str, Any]]:
        """Read as a reader that resumes, until a JSON line satisfies ``last``; the JSON lines up to it."""
        os.set_blocking(self.read, False)
        with gevent.Timeout(timeout, AssertionError(f"no such line; got {self._unread[-3:]}")):
            while not any(last(entry) for entry in self._unread):
                gevent.socket.wait_read(self.read)
                *complete, self._partial = (self._partial + os.read(self.read, 1 << 16)).split(b"\n")
                self._unread += [json.loads(line) for line in complete if line.startswith(b"{")]
        end = next(n for n, entry in enumerate(self._unread) if last(entry)) + 1
        entries, self._unread = self._unread[:end], self._unread[end:]
        return entries


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    read, write = os.pipe()
    p = Pipe(read, write)
    yield p
    logs.close(0)
    structlog.reset_defaults()
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, logs.StdlibBridge):
            logging.getLogger().removeHandler(handler)
    os.close(p.read)  # a write still blocked fails (EPIPE) and its thread ends
    os.close(p.write)


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail instead of hanging when the block takes longer, even if it blocks the whole thread."""
    def expire(_signum: int, _frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds:g}s: the thread was blocked")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_drop_mode_a_stuck_reader_costs_a_log_call_nothing_lines_beyond_the_buffer_are_dropped_and_counted(
    pipe: Pipe,
) -> None:
    pipe.fill()
    logs.buffer_output("drop", fd=pipe.write, capacity=64 << 10)
    logs.configure("info")
    log = structlog.get_logger()
    with within(5):
        started = time.monotonic()
        for n in range(10_000):
            log.info("call.classified", n=n)
        took = time.monotonic() - started
    assert took < 1.0
    dropped = logs.dropped_total()
    assert 0 < dropped < 10_000
    entries = pipe.read_until(lambda entry: entry["event"] == "log.lines_dropped")
    kept = [entry["n"] for entry in entries if entry["event"] == "call.classified"]
    assert kept == list(range(10_000 - dropped))  # in order up to the gap; the report stands at the gap
    report = entries[-1]
    assert (report["count"], report["level"]) == (dropped, "warning")
    assert report["since"].endswith("Z")
    assert "stdout not read" in report["reason"]
    log.info("call.classified", n="after")
    assert pipe.read_until(lambda entry: True)[-1]["n"] == "after"
    assert logs.stalled_since() is None


def test_wait_mode_a_full_buffer_pauses_the_logging_greenlet_only_and_nothing_is_lost(pipe: Pipe) -> None:
    pipe.fill()
    logs.buffer_output("wait", fd=pipe.write, capacity=16 << 10)
    logs.configure("info")
    log = structlog.get_logger()
    turns = 0

    def spin() -> None:
        nonlocal turns
        while True:
            turns += 1
            gevent.sleep(0)

    def produce() -> None:  # as the pipeline commits: one held run per batch
        for n in range(2_000):
            with logs.held():
                log.info("call.classified", n=n)

    with within(10):
        spinner, producer = gevent.spawn(spin), gevent.spawn(produce)
        gevent.sleep(0)  # both ran their first turn: the producer filled the buffer and waits
        assert logs.paused_until() == pytest.approx(time.monotonic(), abs=1.0)  # now, while it lasts
        assert "ingestion paused" in str(logs.stall_note())
        before = turns
        for _ in range(100):
            gevent.sleep(0)
        assert turns >= before + 100  # the other greenlets run meanwhile
        assert not producer.dead
        entries = pipe.read_until(lambda entry: entry["n"] == 1_999)
        producer.join()
        log.info("call.classified", n="after")  # written once the writer has taken stock of the last write
        pipe.read_until(lambda entry: entry["n"] == "after")
    spinner.kill()
    assert [entry["n"] for entry in entries] == list(range(2_000))
    assert logs.dropped_total() == 0
    assert logs.stalled_since() is None
    assert logs.stall_note() is None


def test_held_lines_enter_the_daemon_buffer_together_when_the_run_ends(pipe: Pipe) -> None:
    output = logs.buffer_output("drop", fd=pipe.write)
    logs.configure("info")
    log = structlog.get_logger()
    with logs.held():
        log.info("one")
        log.info("two")
        assert output.size == 0
    assert output.size > 0
    entries = pipe.read_until(lambda entry: entry["event"] == "two")
    assert [entry["event"] for entry in entries] == ["one", "two"]


def test_close_writes_what_is_buffered_then_returns(pipe: Pipe) -> None:
    logs.buffer_output("wait", fd=pipe.write)
    logs.configure("info")
    structlog.get_logger().info("last words")
    assert logs.close(5) is True
    assert json.loads(os.read(pipe.read, 1 << 16))["event"] == "last words"


def test_close_gives_up_on_a_stuck_reader_at_its_deadline(pipe: Pipe) -> None:
    pipe.fill()
    logs.buffer_output("wait", fd=pipe.write)
    logs.configure("info")
    structlog.get_logger().info("never read")
    with within(5):
        started = time.monotonic()
        assert logs.close(0.2) is False
        assert time.monotonic() - started < 1.0


def test_a_reader_gone_loses_the_lines_counted_and_never_fails_the_caller(pipe: Pipe) -> None:
    output = logs.buffer_output("wait", fd=pipe.write)
    logs.configure("info")
    os.close(pipe.read)
    pipe.read, _ = os.pipe()  # the fixture closes a pipe's read end either way
    structlog.get_logger().info("nobody reads this")
    assert logs.close(5) is True
    assert output.dropped_total == 1


def test_wait_mode_a_line_outside_a_held_run_never_waits_it_is_kept_over_the_cap(pipe: Pipe) -> None:
    pipe.fill()
    output = logs.buffer_output("wait", fd=pipe.write, capacity=4 << 10)
    logs.configure("info")
    log = structlog.get_logger()
    with logs.held():
        log.info("call.classified", pad="x" * 4000)  # now the buffer is full
    with within(5):
        log.info("listener.signal_received", signal="SIGTERM")  # returns at once
        gevent.get_hub().loop.run_callback(log.info, "loop.blocked")  # from the hub, as the monitor's
        gevent.sleep(0)
    assert output.size > output.capacity
    assert logs.dropped_total() == 0
    events = [entry["event"] for entry in pipe.read_until(lambda entry: entry["event"] == "loop.blocked")]
    assert events == ["call.classified", "listener.signal_received", "loop.blocked"]


def test_wait_mode_a_held_run_whose_wait_is_cut_short_is_kept(pipe: Pipe) -> None:
    pipe.fill()
    logs.buffer_output("wait", fd=pipe.write, capacity=1 << 10)
    logs.configure("info")
    log = structlog.get_logger()

    def commit(n: int) -> None:
        with logs.held():
            log.info("call.classified", n=n, pad="x" * 600)

    with within(5):
        commit(0)
        waiting = gevent.spawn(commit, 1)
        gevent.sleep(0)
        assert not waiting.dead
        waiting.kill()  # as the app's group at the stop deadline
        assert [entry["n"] for entry in pipe.read_until(lambda entry: entry["n"] == 1)] == [0, 1]
    assert logs.dropped_total() == 0


def test_a_line_logged_on_another_thread_is_handed_to_the_hub(pipe: Pipe) -> None:
    logs.buffer_output("drop", fd=pipe.write)
    logs.configure("info")
    gevent.get_hub().threadpool.apply(structlog.get_logger().info, ("from a thread",))
    assert pipe.read_until(lambda entry: True)[0]["event"] == "from a thread"


def test_configuring_again_without_a_stream_keeps_the_daemon_output(pipe: Pipe) -> None:
    logs.buffer_output("drop", fd=pipe.write)
    logs.configure("info")
    logs.configure("debug")  # a reload
    structlog.get_logger().debug("after the reload")
    assert pipe.read_until(lambda entry: True)[0]["event"] == "after the reload"


def test_dropped_lines_are_a_prometheus_counter(pipe: Pipe) -> None:
    pipe.fill()
    logs.buffer_output("drop", fd=pipe.write, capacity=1 << 10)
    logs.configure("info")
    for n in range(100):
        structlog.get_logger().info("call.classified", n=n)
    assert logs.dropped_total() > 0
    body = Metrics().render().decode()
    assert f"hangup_listener_log_lines_dropped_total {float(logs.dropped_total())}" in body


def test_wait_mode_lines_outside_held_runs_are_dropped_and_counted_beyond_twice_the_cap(pipe: Pipe) -> None:
    pipe.fill()
    output = logs.buffer_output("wait", fd=pipe.write, capacity=1 << 10)
    logs.configure("info")
    with within(5):
        for n in range(100):
            structlog.get_logger().info("esl.event_rejected", n=n)
    assert output.size <= logs.OVER_CAP * output.capacity
    assert logs.dropped_total() > 0
