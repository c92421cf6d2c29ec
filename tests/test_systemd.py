"""sd_notify against a real AF_UNIX datagram socket that the test binds, as systemd does."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from listener.service import systemd


@pytest.fixture
def listener_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(5)
    with sock:
        yield sock, {"NOTIFY_SOCKET": str(path)}


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_each_message_arrives_as_one_datagram(listener_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = listener_socket
    assert systemd.ready("2 of 2 nodes connected", env)
    assert received(sock) == "READY=1\nSTATUS=2 of 2 nodes connected"
    assert systemd.status("pbx1: connected,\npbx2: backoff", env)
    assert received(sock) == "STATUS=pbx1: connected, pbx2: backoff"
    assert systemd.watchdog(env)
    assert received(sock) == "WATCHDOG=1"
    assert systemd.stopping(env)
    assert received(sock) == "STOPPING=1"


def test_an_abstract_namespace_socket_is_supported() -> None:
    name = f"hangup-listener-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert systemd.notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert received(sock) == "READY=1"


@pytest.mark.parametrize("value", [None, "", "relative/path"])
def test_without_a_usable_notify_socket_nothing_is_sent(value: str | None) -> None:
    env = {} if value is None else {"NOTIFY_SOCKET": value}
    assert systemd.notify("READY=1", env) is False


def test_a_socket_nobody_listens_on_never_raises(tmp_path: Path) -> None:
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": "@\0bad"}) is False


def test_the_default_environment_is_the_process_one(
    listener_socket: tuple[socket.socket, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, env = listener_socket
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    assert systemd.watchdog()
    assert received(sock) == "WATCHDOG=1"


def test_the_watchdog_interval_is_half_of_watchdog_usec_for_our_pid() -> None:
    pid = os.getpid()
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid)}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7"}, pid=7) == 1.0


@pytest.mark.parametrize(
    "env",
    [{}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "soon"}, {"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}],
)
def test_no_watchdog_without_a_valid_interval_for_this_process(env: dict[str, str]) -> None:
    assert systemd.watchdog_interval(env, pid=4242) is None
