"""The command line, as a user runs it: real subprocesses against a fake FreeSWITCH."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import gevent
import pytest

from tests.fakeesl import FIXTURES, FakeFreeSWITCH

ROOT = Path(__file__).parent.parent


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "listener", *args], input=stdin, capture_output=True, timeout=60, check=False
    )


def lines(out: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.decode().splitlines()]


def test_classify_reads_wire_captures_and_skips_other_events() -> None:
    result = cli("classify", str(FIXTURES / "uas_486" / "plain.txt"))
    assert result.returncode == 0, result.stderr
    documents = lines(result.stdout)
    assert [d["status"] for d in documents] == ["busy", "busy"]
    assert {d["node"]["name"] for d in documents} == {"capture"}


def test_classify_gives_the_same_documents_for_plain_json_and_bare_inputs() -> None:
    plain = lines(cli("classify", str(FIXTURES / "uas_603" / "hangup_complete.plain.txt")).stdout)
    json_wire = lines(cli("classify", str(FIXTURES / "uas_603" / "hangup_complete.json.txt")).stdout)
    json_lines = b"\n".join(
        json.dumps({"Event-Name": "CHANNEL_HANGUP_COMPLETE", **_headers(d)}).encode() for d in plain
    )
    assert plain == json_wire
    assert len(lines(cli("classify", stdin=json_lines).stdout)) == 2


def _headers(document: dict[str, object]) -> dict[str, str]:
    return {"Unique-ID": str(document["channel_uuid"]), "Hangup-Cause": str(document["hangup_cause"])}


def test_classify_reads_a_bare_plain_event_from_stdin() -> None:
    body = (FIXTURES / "uas_486" / "hangup_complete.plain.txt").read_bytes().split(b"\n\n", 1)[1]
    result = cli("classify", stdin=body)
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout)[0]["bye_reason"] == "USER_BUSY"


def test_classify_reports_unusable_input_and_a_missing_file() -> None:
    broken = cli("classify", stdin=b"Content-Length: 99\nContent-Type: text/event-plain\n\nshort")
    assert broken.returncode == 65
    assert b"closed inside a frame" in broken.stderr
    missing = cli("classify", "/nonexistent/capture.txt")
    assert missing.returncode == 66


CDR_CALL = ROOT / "tests" / "data" / "fixtures-cdr" / "answered_caller_bye"


def test_classify_reads_json_cdr_files_like_the_esl_events_of_their_legs() -> None:
    cdrs = sorted((CDR_CALL / "json_cdr").glob("*.cdr.json"))
    from_cdr = lines(cli("classify", *map(str, cdrs)).stdout)
    from_esl = {d["id"]: d for d in lines(cli("classify", str(CDR_CALL / "hangup_complete.json.txt")).stdout)}
    assert [d["channel_uuid"] for d in from_cdr] == ["24d4c6f3-1e21-4034-aa25-18e3afcc66f8",
                                                    "596e6d5e-a9ff-49b4-88b1-aeaf25db2f0f"]
    assert [d["status"] for d in from_cdr] == [from_esl[d["id"]]["status"] for d in from_cdr]
    from_stdin = cli("classify", stdin=cdrs[0].read_bytes())
    assert lines(from_stdin.stdout) == from_cdr[:1], from_stdin.stderr


def test_classify_reads_every_cdr_file_below_a_directory_sorted_rotated_ones_too(tmp_path: Path) -> None:
    cdrs = sorted((CDR_CALL / "json_cdr").glob("*.cdr.json"))
    rotated = tmp_path / "2026" / "12" / "05" / "15"
    rotated.mkdir(parents=True)
    (rotated / cdrs[0].name).write_bytes(cdrs[0].read_bytes())
    (tmp_path / cdrs[1].name).write_bytes(cdrs[1].read_bytes())
    (tmp_path / "notes.txt").write_text("not a CDR")
    result = cli("classify", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert [d["channel_uuid"] for d in lines(result.stdout)] == ["24d4c6f3-1e21-4034-aa25-18e3afcc66f8",
                                                                "596e6d5e-a9ff-49b4-88b1-aeaf25db2f0f"]


def test_classify_says_a_cdr_file_is_incomplete_and_goes_on_with_the_others(tmp_path: Path) -> None:
    cdr = next((CDR_CALL / "json_cdr").glob("a_*.cdr.json"))
    partial = tmp_path / "partial.cdr.json"
    partial.write_bytes(cdr.read_bytes()[:500])
    result = cli("classify", str(partial), str(cdr))
    assert result.returncode == 65
    assert b"partial.cdr.json: CDR ends before its JSON does" in result.stderr
    assert len(lines(result.stdout)) == 1


def test_classify_says_when_an_input_holds_no_hangup_event_and_exits_65(tmp_path: Path) -> None:
    answer = b"Event-Name: CHANNEL_ANSWER\nUnique-ID: x\n\n"
    for args, stdin in (((), b""), ((), answer), ((str(tmp_path),), None)):
        result = cli("classify", *args, stdin=stdin)
        assert result.returncode == 65, (args, stdin)
        assert b"no CHANNEL_HANGUP_COMPLETE event" in result.stderr
        assert result.stdout == b""


def test_check_config_exits_78_and_names_each_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[freeswitch]]\nport = "x"\npassword = "hunter2"\n[esl]\nqueue_size = 0\n')
    result = cli("check-config", "--config", str(bad))
    assert result.returncode == 78
    err = result.stderr.decode()
    assert "freeswitch[0].port: must be an integer, got str" in err
    assert "esl.queue_size: must be >= 1, got 0" in err
    assert "hunter2" not in err
    assert cli("check-config").returncode == 0


def test_run_refuses_an_invalid_config_with_exit_78(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[log]\nlevel = 3\n")
    result = cli("run", "--config", str(bad))
    assert result.returncode == 78
    assert b"log.level: must be a string" in result.stderr


def _read_json_line(stream: IO[bytes], want: str, timeout: float = 10) -> dict[str, object]:
    """Read daemon log lines until one has event ``want`` (each line is flushed as written)."""
    with gevent.Timeout(timeout, AssertionError(f"no {want} line")):
        while True:
            line = gevent.get_hub().threadpool.apply(stream.readline)
            assert line, f"daemon exited before {want}"
            entry = json.loads(line)
            assert entry["event"] != "loop.blocked", f"the daemon's loop was blocked: {entry}"
            if entry["event"] == want:
                return dict(entry)


@pytest.mark.slow
def test_run_prints_one_classified_line_per_hangup_and_stops_on_sigterm(tmp_path: Path) -> None:
    with FakeFreeSWITCH() as fake:
        config = tmp_path / "c.toml"
        config.write_text(f'[[freeswitch]]\nname = "lab"\nport = {fake.port}\n[health]\nport = 0\n')
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "STATE_DIRECTORY": str(tmp_path)}  # as systemd
        daemon = subprocess.Popen(
            [sys.executable, "-m", "listener", "run", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        try:
            assert daemon.stdout is not None
            assert _read_json_line(daemon.stdout, "loop.monitored")["threshold_s"] == 0.1  # conftest's
            session = fake.next_session(timeout=15)
            assert _read_json_line(daemon.stdout, "esl.connected")["node"] == "lab"
            session.send((FIXTURES / "uas_486" / "hangup_complete.plain.txt").read_bytes())
            first = _read_json_line(daemon.stdout, "leg.classified")
            second = _read_json_line(daemon.stdout, "leg.classified")
            assert {first["leg"]["leg"], second["leg"]["leg"]} == {"a", "b"}  # type: ignore[index]
            assert str(first["timestamp"]).endswith("Z")
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=15) == 0
        finally:
            daemon.kill()
            daemon.wait()
