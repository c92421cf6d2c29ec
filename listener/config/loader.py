"""Load the TOML configuration into frozen, validated values; every problem reported together.

``HANGUP_LISTENER_<SECTION>__<KEY>`` variables override the file (``listener.config.environ``).

With no file at all the defaults apply: one node at 127.0.0.1:8021 with password ClueCon
(FreeSWITCH's stock ``event_socket.conf.xml``), JSON logs on stdout.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from listener.config.classification import parse_classification
from listener.config.environ import Overrides
from listener.config.reader import Problems, TableReader
from listener.config.settings import (
    CREDENTIALS_FOLDER,
    EVENT_FORMATS,
    LEVELS,
    LOG_FORMATS,
    MASK_MODES,
    CallsConfig,
    Config,
    ESLSettings,
    HealthConfig,
    LogConfig,
    Node,
    PrivacyConfig,
    credentials_folder,
)
from listener.config.variables import parse_selection, parse_variables
from listener.config.webhooks import parse_outbox, parse_webhooks
from listener.core.errors import ConfigError
from listener.core.frame import DEFAULT_MAX_FRAME_BYTES
from listener.core.variables import NUMBER_VARIABLES


def _node(reader: TableReader) -> Node:
    host = reader.string("host", "127.0.0.1")
    if not host.strip():
        reader.problem("host", "must not be empty")
    port = reader.number("port", int, 8021, minimum=1, maximum=65535)
    password = reader.secret("password", "ClueCon") or "ClueCon"
    name = reader.string("name", f"{host}:{port}")
    raw_cdr = reader.string("cdr_dir", "")
    cdr_dir = Path(raw_cdr) if raw_cdr else None
    if cdr_dir is not None and not cdr_dir.is_absolute():
        reader.problem("cdr_dir", "must be an absolute path (mod_json_cdr's log-dir)")
    reader.reject_unknown()
    return Node(name=name, host=host, port=port, password=password, cdr_dir=cdr_dir)


def _nodes(root: TableReader) -> tuple[Node, ...]:
    if not root.has("freeswitch"):
        return Config().nodes
    nodes = tuple(_node(reader) for reader in root.tables("freeswitch"))
    if not nodes and not root.problems:
        root.problem("freeswitch", "give at least one [[freeswitch]] node")
    names = [node.name for node in nodes]
    for name in sorted({n for n in names if names.count(n) > 1}):
        root.problem("freeswitch", f"node name {name!r} is used twice; give each node a unique name")
    return nodes


def _esl(reader: TableReader) -> ESLSettings:
    d = ESLSettings()

    def positive(key: str, default: float) -> float:
        return reader.number(key, float, default, minimum=0, exclusive_min=True)

    event_format = reader.string("format", d.event_format, choices=EVENT_FORMATS)
    settings = ESLSettings(
        connect_timeout=positive("connect_timeout", d.connect_timeout),
        command_timeout=positive("command_timeout", d.command_timeout),
        liveness_timeout=reader.number(
            "liveness_timeout", float, d.liveness_timeout, minimum=1, maximum=86_400
        ),
        max_frame_bytes=reader.number(
            "max_frame_bytes", int, DEFAULT_MAX_FRAME_BYTES, minimum=64 * 1024, maximum=1 << 30
        ),
        backoff_initial=positive("backoff_initial", d.backoff_initial),
        backoff_max=positive("backoff_max", d.backoff_max),
        queue_size=reader.number("queue_size", int, d.queue_size, minimum=1),
        event_format=event_format,
    )
    reader.removed("classify_process")
    if settings.backoff_max < settings.backoff_initial:
        reader.problem("backoff_max", "must be >= backoff_initial")
    reader.reject_unknown()
    return settings


def _log(reader: TableReader) -> LogConfig:
    level = reader.string("level", "info", choices=LEVELS)
    fmt = reader.string("format", "auto", choices=LOG_FORMATS)
    variables, max_bytes = parse_variables(reader)
    reader.reject_unknown()
    return LogConfig(level=level, variables=variables, variables_max_bytes=max_bytes, format=fmt)


def _health(reader: TableReader) -> HealthConfig:
    d = HealthConfig()
    enabled = reader.boolean("enabled", d.enabled)
    host = reader.string("host", d.host)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            reader.problem("host", f"must be an IP address (or localhost), got {host!r}")
            host = d.host
    port = reader.number("port", int, d.port, minimum=0, maximum=65535)
    reader.reject_unknown()
    return HealthConfig(enabled=enabled, host=host, port=port)


def _privacy(reader: TableReader) -> PrivacyConfig:
    mode = reader.string("mask_numbers", "none", choices=MASK_MODES)
    known = len(reader.problems.items)
    key = reader.secret("hash_key")
    if mode == "hash" and key is None and len(reader.problems.items) == known:
        reader.problem("hash_key", 'required when mask_numbers = "hash" (or hash_key_file, hash_key_env)')
    elif key is not None and len(key) < 16:
        reader.problem("hash_key", "must be at least 16 characters")
    number_variables = parse_selection(reader, "number_variables", NUMBER_VARIABLES)
    reader.reject_unknown()
    return PrivacyConfig(mask_numbers=mode, hash_key=key, number_variables=number_variables)


def _calls(reader: TableReader) -> CallsConfig:
    hours = reader.number("wait_hours", float, 4.0, minimum=0, exclusive_min=True, maximum=168.0)
    reader.reject_unknown()
    return CallsConfig(wait_s=hours * 3600.0)


def from_mapping(
    data: Mapping[str, Any], *, source: str | None = None, environ: Mapping[str, str] | None = None,
    credentials: Path | None = None,
) -> Config:
    """Validate a parsed TOML document (bare secret file names read from ``credentials``); raises
    ConfigError listing every problem."""
    problems = Problems()
    root = TableReader(data, "", problems, environ, credentials)
    config = Config(
        nodes=_nodes(root),
        esl=_esl(root.table_at("esl")),
        log=_log(root.table_at("log")),
        classifier=parse_classification(root.table_at("classification")),
        webhooks=parse_webhooks(root),
        outbox=parse_outbox(root),
        health=_health(root.table_at("health")),
        privacy=_privacy(root.table_at("privacy")),
        calls=_calls(root.table_at("calls")),
        source=source,
        credentials=credentials,
    )
    root.reject_unknown()
    if problems:
        raise ConfigError(problems.items)
    return dataclasses.replace(config, warnings=tuple(problems.warnings)) if problems.warnings else config


def load(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None, *,
         credentials: Path | None = None, credentials_default: Path = CREDENTIALS_FOLDER) -> Config:
    """Read a TOML file (None: the defaults), apply ``HANGUP_LISTENER_*`` variables, validate.

    Bare secret file names are read from ``credentials`` (``--credentials``), else from the folder
    ``settings.credentials_folder`` finds (``credentials_default``: /etc/hangup-listener/credentials).
    """
    env = os.environ if environ is None else environ
    if credentials is not None and not credentials.is_dir():
        raise ConfigError([f"credentials folder {credentials}: not a folder (--credentials)"])
    folder = credentials_folder(credentials, env, credentials_default)
    data = {} if path is None else _read(Path(path))
    overrides = Overrides(data, env)
    source = None if path is None else str(Path(path))
    try:
        config = from_mapping(overrides.data, source=source, environ=environ, credentials=folder)
    except ConfigError as exc:
        raise ConfigError([*overrides.problems, *overrides.annotate(exc.problems)]) from None
    if overrides.problems:
        raise ConfigError(overrides.problems)
    if config.warnings:
        config = dataclasses.replace(config, warnings=tuple(overrides.annotate(config.warnings)))
    return config


def _read(file: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{file}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{file}: not valid TOML: {exc}"]) from None
    return data
