"""Every settings value of the daemon, frozen, in one place.

The loader (``listener.config.loader``) builds these from TOML, the environment and credentials;
everything else receives them as values: no module outside ``listener.config`` reads a file or a
variable for its settings. Secrets never appear in a ``repr``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from listener.core.classifier import Classifier, default_classifier
from listener.core.document import LEG_CLASSIFIED, TYPES
from listener.core.frame import DEFAULT_MAX_FRAME_BYTES
from listener.core.retry import RetrySchedule
from listener.core.variables import DEFAULT_MAX_BYTES, NO_VARIABLES, NUMBER_VARIABLES, Selection

LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("auto", "json", "console")
MASK_MODES = ("none", "mask", "hash")
DEFAULT_EVENTS = ("CHANNEL_HANGUP_COMPLETE", "HEARTBEAT")
EVENT_FORMATS = ("json", "plain")
LEGS = ("a", "b")
DIRECTIONS = ("inbound", "outbound")
SYNCHRONOUS = ("full", "normal")
STATE_DIRECTORY = Path("/var/lib/hangup-listener")
OUTBOX_FILE = "outbox.sqlite3"
APP_FOLDER = "hangup-listener"
CREDENTIALS_FOLDER = Path("/etc/hangup-listener/credentials")
"""Where the operator keeps the secrets: the files the unit's ``LoadCredential=`` lines read."""


@dataclass(frozen=True, slots=True)
class Node:
    """One FreeSWITCH node to listen to."""

    name: str
    host: str = "127.0.0.1"
    port: int = 8021
    password: str = field(default="ClueCon", repr=False)
    cdr_dir: Path | None = None
    """mod_json_cdr's ``log-dir`` for this node: hangups the Event Socket missed are recovered from it."""


@dataclass(frozen=True, slots=True)
class ESLSettings:
    """How every FreeSWITCH connection behaves."""

    connect_timeout: float = 5.0
    command_timeout: float = 5.0
    liveness_timeout: float = 60.0
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    queue_size: int = 500
    events: tuple[str, ...] = DEFAULT_EVENTS
    event_format: str = "json"
    """``event json`` (default): orjson parses a whole hangup in C, values arrive decoded, so there is
    no URL-decoding layer at all; the pipeline runs ~2x faster than on ``plain``. Both are read."""


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """One endpoint: where to POST, how to sign, which documents, how hard to try."""

    name: str
    url: str
    keys: tuple[bytes, ...] = field(repr=False)
    """The HMAC keys, in order: every request carries one signature per key (several while rotating)."""
    types: frozenset[str] = frozenset(TYPES)
    """The event types this endpoint gets: ``leg.classified``, ``call.completed`` (default both)."""
    statuses: frozenset[str] = frozenset()
    legs: frozenset[str] = frozenset()
    directions: frozenset[str] = frozenset()
    timeout: float = 10.0
    connect_timeout: float = 5.0
    retry: RetrySchedule = field(default_factory=RetrySchedule)
    max_concurrency: int = 4
    ca_bundle: Path | None = None
    variables: Selection = NO_VARIABLES
    """The channel variables copied into this endpoint's documents (``variables``), by name or glob."""
    variables_max_bytes: int = DEFAULT_MAX_BYTES
    """The cap on their names and values, in UTF-8 bytes: whole variables are kept in name order."""

    def matches(self, document: Mapping[str, Any], kind: str = LEG_CLASSIFIED) -> bool:
        """Whether this endpoint wants ``document`` of type ``kind``: ``types`` first; ``statuses``,
        ``legs`` and ``directions`` filter ``leg.classified`` only (an empty filter accepts everything)."""
        if kind not in self.types:
            return False
        if kind != LEG_CLASSIFIED:
            return True
        return (
            (not self.statuses or document.get("status") in self.statuses)
            and (not self.legs or document.get("leg") in self.legs)
            and (not self.directions or document.get("direction") in self.directions)
        )


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    """Where the SQLite outbox lives and how hard each commit is pushed to the disk."""

    path: Path
    synchronous: str = "full"
    taken_retention_s: float = 7 * 86400.0
    """How long the id of every leg taken (from the Event Socket or a CDR file) is remembered, so a
    leg seen on both sources is logged and delivered once. Longer than any CDR scan reaches back."""
    keep_delivered_s: float = 86400.0
    """How long a delivered message is kept, so ``outbox resend`` can send it again (0: deleted at once)."""


@dataclass(frozen=True, slots=True)
class LogConfig:
    """The log level and format, and the channel variables the ``leg.classified`` and
    ``call.completed`` lines carry (capped as an endpoint's)."""

    level: str = "info"
    variables: Selection = NO_VARIABLES
    variables_max_bytes: int = DEFAULT_MAX_BYTES
    format: str = "auto"
    """``json``, ``console`` (structlog's columns, for a person), or ``auto``: console on a terminal."""


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """The HTTP listener for /livez, /readyz and /metrics."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9468


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    """How caller and callee numbers appear in the ``leg.classified`` and ``call.completed`` log lines."""

    mask_numbers: str = "none"
    hash_key: str | None = field(default=None, repr=False)
    number_variables: Selection = NUMBER_VARIABLES
    """Channel variables masked like the numbers (the operator's list replaces the default)."""


def default_outbox_path(environ: Mapping[str, str], uid: int | None = None) -> Path:
    """Where the outbox is when ``[outbox] path`` is not set; never the current folder (it moved with
    whatever folder the daemon happened to be started from):

    ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``), else /var/lib/hangup-listener for root
    (``uid``: the effective user's), else the user's XDG state folder: ``$XDG_STATE_HOME/hangup-listener``,
    by default ``~/.local/state/hangup-listener``.
    """
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / OUTBOX_FILE
    if (os.geteuid() if uid is None else uid) == 0:
        return STATE_DIRECTORY / OUTBOX_FILE
    xdg = environ.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():  # a relative one is invalid (the XDG spec): ignored
        return Path(xdg) / APP_FOLDER / OUTBOX_FILE
    home = environ.get("HOME") or _home()
    if not home:  # a user without a home folder: the system's
        return STATE_DIRECTORY / OUTBOX_FILE
    return Path(home) / ".local" / "state" / APP_FOLDER / OUTBOX_FILE


def _home() -> str | None:
    """The user's home folder from the password database; None for a user without one."""
    try:
        return str(Path.home())
    except (KeyError, RuntimeError):
        return None


def credentials_folder(given: Path | None, environ: Mapping[str, str],
                       default: Path = CREDENTIALS_FOLDER) -> Path | None:
    """The folder a bare ``password_file``/``secret_file`` name is read from: ``given``
    (``--credentials``), else ``$CREDENTIALS_DIRECTORY`` (the service's, systemd's
    ``LoadCredential=``), else ``default`` where it exists (what an operator's command finds); None
    when there is none (a bare name is then relative to the current folder)."""
    if given is not None:
        return given
    if folder := environ.get("CREDENTIALS_DIRECTORY"):
        return Path(folder)
    return default if default.is_dir() else None


@dataclass(frozen=True, slots=True)
class CallsConfig:
    """How legs are grouped into calls (``listener.core.calls``)."""

    wait_s: float = 4 * 3600.0
    """How long a call waits for the legs its legs name before it is completed anyway
    (``complete: false``): counted from its first leg's hangup."""


@dataclass(frozen=True, slots=True)
class Config:
    """The whole, validated configuration."""

    nodes: tuple[Node, ...] = (Node(name="127.0.0.1:8021"),)
    esl: ESLSettings = field(default_factory=ESLSettings)
    log: LogConfig = field(default_factory=LogConfig)
    classifier: Classifier = field(default_factory=default_classifier)
    webhooks: tuple[WebhookConfig, ...] = ()
    outbox: OutboxConfig = field(default_factory=lambda: OutboxConfig(path=default_outbox_path(os.environ)))
    health: HealthConfig = field(default_factory=HealthConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    calls: CallsConfig = field(default_factory=CallsConfig)
    source: str | None = None
    credentials: Path | None = None
    """The credentials folder the secrets were read from; a reload reads from it again."""
    warnings: tuple[str, ...] = field(default=(), compare=False)
    """What the loader accepted but wants the operator to know (a removed key, ignored)."""
