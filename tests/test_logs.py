"""Log output: JSON lines with ISO-8601 UTC timestamps, stdlib (greenswitch) records in the same stream."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from listener.service import logs


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
