"""sd_notify without a dependency: readiness, status, watchdog pings and stopping, for ``Type=notify``.

Modelled on gunicorn's ``systemd.py``: a no-op without ``NOTIFY_SOCKET``, never raises (a
notification that cannot be sent is reported as ``False``, the daemon carries on). A socket
name starting with ``@`` is in the abstract namespace. Plain ``socket`` is used; under gevent's
monkey-patching it is cooperative.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

SEND_TIMEOUT_S = 1.0


def _address(name: str) -> str | bytes:
    """The AF_UNIX address for ``NOTIFY_SOCKET`` (``@name``: abstract namespace)."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send one datagram to systemd; False when there is no socket or sending failed."""
    name = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not name or name[0] not in "/@":
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT_S)
            sock.connect(_address(name))
            sock.sendall(message.encode("utf-8"))
    except (OSError, ValueError):
        return False
    return True


def ready(status: str = "", environ: Mapping[str, str] | None = None) -> bool:
    """READY=1: configuration valid, outputs open, the daemon is serving."""
    return notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""), environ)


def status(text: str, environ: Mapping[str, str] | None = None) -> bool:
    """STATUS=: the one line ``systemctl status`` shows."""
    return notify(f"STATUS={_one_line(text)}", environ)


def watchdog(environ: Mapping[str, str] | None = None) -> bool:
    """WATCHDOG=1: everything is healthy (send only then; systemd restarts us otherwise)."""
    return notify("WATCHDOG=1", environ)


def stopping(environ: Mapping[str, str] | None = None) -> bool:
    """STOPPING=1: an orderly shutdown has begun."""
    return notify("STOPPING=1", environ)


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """How often to ping, in seconds (half of ``WATCHDOG_USEC``); None when no watchdog is asked of us.

    ``WATCHDOG_PID``, when set, must be our pid (the variables may be inherited by a child).
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
        owner = int(env.get("WATCHDOG_PID", "") or (os.getpid() if pid is None else pid))
    except ValueError:
        return None
    if usec <= 0 or owner != (os.getpid() if pid is None else pid):
        return None
    return usec / 2_000_000


def _one_line(text: str) -> str:
    return " ".join(text.split())
