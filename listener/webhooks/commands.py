"""``hangup-listener webhook test``: a signed sample of each event type the endpoint gets (``leg.classified``,
``call.completed``) POSTed to a configured endpoint, each answer shown.

The request is built and sent exactly as delivery does it (``build_request`` with every secret, the
endpoint's own ``Transport``, timeouts and TLS settings), once: no outbox, no retry. The document is
``listener.core.sample``'s, classified by the configured rules, with the fixed id ``SAMPLE_ID``.

Exit codes (``listener.core.exits``): 0 the receiver answered 2xx; 75 it could not be reached (refused,
timeout, DNS, TLS, reset) or answered 5xx or 429: try again later; 65 any other answer (3xx, 4xx,
410): the receiver refused this request, and sending it again will not change that; 64 no endpoint
has that name. With both types, the worse answer decides.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from listener.config.settings import WebhookConfig
from listener.core.classifier import Classifier
from listener.core.document import CALL_COMPLETED, LEG_CLASSIFIED, TYPES, envelope
from listener.core.exits import EX_DATAERR, EX_OK, EX_TEMPFAIL, EX_USAGE
from listener.core.sample import sample_call, sample_document
from listener.core.signing import Delivered, DeliveryOutcome, GiveUp, build_request, render, safe_url
from listener.webhooks.transport import Transport

SHOWN_BYTES = 512
"""How much of the answer's body is printed."""


def add_webhook_parser(subparsers: Any, common: Callable[[], argparse.ArgumentParser]
                       ) -> argparse.ArgumentParser:
    """Add ``webhook`` and its sub-command ``test`` to the CLI's ``subparsers``; both take ``common()``'s
    options (``--config``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "webhook", parents=[common()], help="try a configured webhook endpoint")
    commands = parser.add_subparsers(dest="webhook_command", required=True, metavar="COMMAND")
    test = commands.add_parser(
        "test", parents=[common()],
        help="POST a signed sample of each event type to an endpoint, once, and show the answers")
    test.add_argument("--endpoint", required=True, metavar="NAME", help="the endpoint's name")
    return parser


def run_webhook_test(name: str, webhooks: Sequence[WebhookConfig], classifier: Classifier, *,
                     out: TextIO, err: TextIO) -> int:
    """Test the endpoint called ``name``; an unknown name lists the configured ones (exit 64)."""
    endpoint = next((w for w in webhooks if w.name == name), None)
    if endpoint is None:
        known = ", ".join(repr(w.name) for w in webhooks) or "none ([[webhooks]] is empty)"
        print(f"hangup-listener: no webhook endpoint named {name!r}; configured: {known}", file=err)
        return EX_USAGE
    return try_endpoint(endpoint, classifier, out)


def try_endpoint(config: WebhookConfig, classifier: Classifier, out: TextIO,
                  wall: Callable[[], float] = time.time) -> int:
    """POST a sample of each type ``config`` gets, once each, print what came back; the exit code
    (the worse of them: 75 before 65 before 0)."""
    samples = {LEG_CLASSIFIED: sample_document, CALL_COMPLETED: sample_call}
    codes = [_try(config, kind, samples[kind](classifier), out, wall)
             for kind in TYPES if kind in config.types]
    return max(codes, key=lambda code: (code == EX_TEMPFAIL, code == EX_DATAERR))


def _try(config: WebhookConfig, kind: str, document: dict[str, Any], out: TextIO,
         wall: Callable[[], float]) -> int:
    body = render(envelope(kind, document))
    request = build_request(config.url, config.keys, document["id"], body, int(wall()))
    print(f"{config.name}: POST {kind} {safe_url(config.url)} webhook-id {document['id']} "
          f"({len(request.body)} bytes, {len(config.keys)} signature{'s' * (len(config.keys) > 1)})",
          file=out)
    transport = Transport(config)
    started = time.monotonic()
    try:
        answer = transport.post(request, wall, keep=SHOWN_BYTES)
    finally:
        transport.close()
    latency_ms = (time.monotonic() - started) * 1000
    print(f"{describe(answer.outcome)} in {latency_ms:.1f} ms", file=out)
    if answer.body_start:
        more = "..." if len(answer.body_start) >= SHOWN_BYTES else ""
        print(f"{printable(answer.body_start)}{more}", file=out)
    return exit_code(answer.outcome)


def describe(outcome: DeliveryOutcome) -> str:
    """What the answer means, as the daemon would take it."""
    if isinstance(outcome, Delivered):
        return f"{outcome.status}: delivered"
    if isinstance(outcome, GiveUp):
        return f"{outcome.status}: gone (the daemon would keep such a message as dead)"
    if outcome.status is None:
        return f"no answer: {outcome.reason}"
    return f"{outcome.status}: {outcome.reason} (the daemon would retry)"


def exit_code(outcome: DeliveryOutcome) -> int:
    """0 for 2xx; 75 for no answer, 5xx or 429 (try again later); 65 for any other answer."""
    if isinstance(outcome, Delivered):
        return EX_OK
    if outcome.status is None or outcome.status >= 500 or outcome.status == 429:
        return EX_TEMPFAIL
    return EX_DATAERR


def printable(data: bytes) -> str:
    """The answer's bytes as text that cannot move a terminal's cursor: control characters escaped."""
    text = data.decode("utf-8", "replace")
    return "".join(c if c.isprintable() or c in "\n\t" else c.encode("unicode_escape").decode() for c in text)
