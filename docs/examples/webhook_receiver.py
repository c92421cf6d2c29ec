"""A complete receiver for hangup-listener's webhooks: verify, deduplicate, store, answer fast.

Run it with ``WEBHOOK_SECRET=whsec_... python docs/examples/webhook_receiver.py``. Settings come
from the environment: ``WEBHOOK_SECRET`` (one secret, or several separated by spaces while one is
rotated), ``DB_PATH`` (the SQLite file, default ``webhooks.sqlite3``), ``HOST`` (default
127.0.0.1) and ``PORT`` (default 8080). It needs only the standard library and ``standardwebhooks``.

What it promises the daemon, which delivers every message at least once:

- 204 once a message is stored (or was already): the daemon never sends it again.
- 401 when no secret verifies the signature, 400 when the body is not an envelope (411, 413 for
  a missing or too large content-length).
- 503 when its own storage fails: nothing was recorded, so the daemon's retry is processed.
- Each ``webhook-id`` is processed once: it is recorded in ``seen`` in the same transaction as the
  rows it produces, so a crash half-way records neither and the retry does the work.
- Unknown ``type`` values are answered 204 and ignored: new event types never break it.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

MAX_BODY = 4 * 1024 * 1024  # a call with many legs is tens of KB; anything near this is not ours
LOG = logging.getLogger("webhook_receiver")

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    webhook_id TEXT PRIMARY KEY, type TEXT NOT NULL, received_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS legs (
    id TEXT PRIMARY KEY, call_id TEXT, channel_uuid TEXT, leg TEXT, status TEXT,
    bye_reason TEXT, last_response_code INTEGER, hangup_by TEXT, caller_number TEXT,
    destination_number TEXT, ended_at TEXT, schema_version INTEGER, document TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calls (
    id TEXT PRIMARY KEY, complete INTEGER NOT NULL, missing_legs TEXT NOT NULL, status TEXT,
    bye_reason TEXT, last_response_code INTEGER, hangup_by TEXT, caller_number TEXT, callee_number TEXT,
    answered INTEGER, started_at TEXT, ended_at TEXT, talk_s REAL, document TEXT NOT NULL);
"""


def store_leg(db: sqlite3.Connection, leg: Mapping[str, Any], call_id: str | None = None) -> None:
    """One leg document (schema 1 or 2: the same fields); a call that names it later links it."""
    db.execute(
        "INSERT INTO legs VALUES (:id, :call_id, :channel_uuid, :leg, :status, :bye_reason,"
        " :last_response_code, :hangup_by, :caller_number, :destination_number, :ended_at,"
        " :schema_version, :document)"
        " ON CONFLICT (id) DO UPDATE SET call_id = coalesce(excluded.call_id, legs.call_id)",
        {**_fields(leg, "id channel_uuid leg status bye_reason last_response_code hangup_by"
                   " caller_number destination_number ended_at schema_version"),
         "call_id": call_id, "document": json.dumps(leg)},
    )


def store_call(db: sqlite3.Connection, call: Mapping[str, Any]) -> None:
    """One call document and its legs. ``complete`` is false when the daemon stopped waiting for
    some leg: ``missing_legs`` names those channels, whose own ``leg.classified`` may come later."""
    if not call["complete"]:
        LOG.warning("call %s is incomplete: missing legs %s", call["id"], call["missing_legs"])
    db.execute(
        "INSERT INTO calls VALUES (:id, :complete, :missing_legs, :status, :bye_reason,"
        " :last_response_code, :hangup_by, :caller_number, :callee_number, :answered, :started_at,"
        " :ended_at, :talk_s, :document)",
        {**_fields(call, "id complete status bye_reason last_response_code hangup_by caller_number"
                   " callee_number answered started_at ended_at talk_s"),
         "missing_legs": json.dumps(call["missing_legs"]), "document": json.dumps(call)},
    )
    for leg in call["legs"]:
        store_leg(db, leg, call["id"])


Handler = Callable[[sqlite3.Connection, Mapping[str, Any]], None]
HANDLERS: dict[str, Handler] = {"leg.classified": store_leg, "call.completed": store_call}


def _fields(document: Mapping[str, Any], names: str) -> dict[str, Any]:
    return {name: document.get(name) for name in names.split()}


class Store:
    """The SQLite file: a fresh connection per message, so every request thread has its own."""

    def __init__(self, path: str, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode = WAL")  # readers do not block the receiver
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=self.busy_timeout)

    def process(self, webhook_id: str, kind: str, data: Mapping[str, Any]) -> bool:
        """Store one message unless its webhook-id was seen; False for a duplicate. Raises
        ``sqlite3.Error`` with nothing recorded, the id included."""
        with closing(self._connect()) as db, db:  # one transaction: committed, or rolled back
            seen = "INSERT OR IGNORE INTO seen (webhook_id, type) VALUES (?, ?)"
            if db.execute(seen, (webhook_id, kind)).rowcount == 0:
                return False
            HANDLERS[kind](db, data)
            return True


class WebhookServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], secrets: Sequence[str], store: Store) -> None:
        if not secrets:
            raise ValueError("at least one secret is needed")
        self.verifiers = [Webhook(secret) for secret in secrets]
        self.store = store
        super().__init__(address, WebhookHandler)

    def receive(self, headers: Mapping[str, str], body: bytes) -> int:
        """The HTTP status for one request."""
        if not any(_verifies(verifier, body, headers) for verifier in self.verifiers):
            return 401
        envelope = parse_envelope(body)
        if envelope is None:
            return 400
        if envelope["type"] not in HANDLERS:
            return 204  # a type this receiver does not know yet: acknowledged, ignored
        try:
            fresh = self.store.process(headers["webhook-id"], envelope["type"], envelope["data"])
        except sqlite3.Error:
            LOG.exception("could not store %s: the daemon will retry it", headers["webhook-id"])
            return 503
        LOG.info("%s %s %s", envelope["type"], headers["webhook-id"], "stored" if fresh else "duplicate")
        return 204


def parse_envelope(body: bytes) -> dict[str, Any] | None:
    """``{"type": str, "timestamp": str, "data": {"id": str, ...}}``, or None for anything else."""
    try:
        envelope = json.loads(body)
    except ValueError:
        return None
    valid = (isinstance(envelope, dict) and isinstance(envelope.get("type"), str)
             and isinstance(envelope.get("data"), dict) and isinstance(envelope["data"].get("id"), str))
    return envelope if valid else None


def _verifies(verifier: Webhook, body: bytes, headers: Mapping[str, str]) -> bool:
    try:
        verifier.verify(body, dict(headers), json_parse=False)  # over the raw bytes, before parsing
    except WebhookVerificationError:
        return False
    return True


class WebhookHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the daemon reuses its connections
    server: WebhookServer

    def do_POST(self) -> None:
        try:
            length = int(self.headers["content-length"])
        except (TypeError, ValueError):  # missing or not a number
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True  # the body, if any, stays unread
            self._answer(413 if length > MAX_BODY else 411)
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        self._answer(self.server.receive(headers, self.rfile.read(length)))

    def _answer(self, status: int) -> None:
        self.send_response(status)
        if status != 204:
            self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug(format, *args)


def make_server(secrets: Sequence[str], db_path: str, host: str = "127.0.0.1", port: int = 0,
                busy_timeout: float = 5.0) -> WebhookServer:
    """A bound server (port 0: any free port), not yet serving."""
    return WebhookServer((host, port), secrets, Store(db_path, busy_timeout))


def serve(environ: Mapping[str, str] = os.environ) -> None:
    """Serve forever with the settings of the environment."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    secrets = environ.get("WEBHOOK_SECRET", "").split()
    if not secrets:
        raise SystemExit("WEBHOOK_SECRET is not set: whsec_... (two, space-separated, while rotating)")
    server = make_server(secrets, environ.get("DB_PATH", "webhooks.sqlite3"),
                         environ.get("HOST", "127.0.0.1"), int(environ.get("PORT", "8080")))
    LOG.info("listening on http://%s:%d/", *server.server_address[:2])
    with server, suppress(KeyboardInterrupt):
        server.serve_forever()  # killed at any moment, it loses nothing: what was not committed is retried


if __name__ == "__main__":
    serve()
