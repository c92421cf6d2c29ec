"""``hangup-listener outbox stats|list|retry|resend|purge``: the operator's view of the outbox file.

Safe while the daemon runs: SQLite WAL lets us read beside it, and every change is made in
short transactions of at most ``BATCH`` rows, so the daemon never waits long for us.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TextIO

from listener.config.settings import OutboxConfig
from listener.core.errors import OutboxError
from listener.core.exits import EX_IOERR, EX_NOINPUT, EX_OK, EX_TEMPFAIL, EX_USAGE
from listener.outbox.store import DEAD, DELIVERED, PENDING, Outbox, RejectedFrame

PREFIX = "hangup-listener: "
"""What every line on stderr begins with, as the other commands' do."""
ALL = "all"
"""``list --state all``: every undelivered row, pending and dead (delivered ones are listed on their own)."""


def _no_options() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def failed(exc: OutboxError) -> int:
    """The exit code of a command the outbox failed: 75 if the fault can clear (try again), else 74."""
    return EX_TEMPFAIL if exc.transient else EX_IOERR


def add_outbox_parser(subparsers: Any, common: Callable[[], argparse.ArgumentParser] = _no_options
                      ) -> argparse.ArgumentParser:
    """Add ``outbox`` and its sub-commands to the CLI's ``subparsers``; each takes ``common()``'s
    options (``--config``), before or after the sub-command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "outbox", parents=[common()], help="inspect and repair the webhook outbox")
    commands = parser.add_subparsers(dest="outbox_command", required=True, metavar="COMMAND")

    def add(name: str, **kw: Any) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = commands.add_parser(name, parents=[common()], **kw)
        return made

    stats = add("stats", help="pending, dead and oldest pending age per endpoint")
    stats.add_argument("--json", action="store_true", help="one JSON object per endpoint")
    listing = add("list", help="list deliveries, oldest first")
    listing.add_argument("--state", choices=(PENDING, DEAD, DELIVERED, ALL), default=ALL,
                         help="only this state (all, the default: pending and dead; delivered: those kept"
                              " for resend)")
    _add_selectors(listing)
    listing.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    listing.add_argument("--json", action="store_true", help="one JSON object per row")
    listing.add_argument("--rejected", action="store_true",
                         help="list the frames that held no usable event instead, newest first;"
                              " with --id, print their bodies as received")
    retry = add("retry", help="make dead deliveries pending again, due now")
    _add_selectors(retry)
    retry.add_argument("--all", action="store_true", help="every dead delivery")
    resend = add(
        "resend", help="deliver delivered messages again (kept for [outbox] keep_delivered_hours), due now")
    _add_selectors(resend)
    resend.add_argument("--since", metavar="ISO",
                        help="only those delivered at or after this time (ISO 8601; UTC unless it says)")
    resend.add_argument("--until", metavar="ISO", help="only those delivered before this time")
    resend.add_argument("--all", action="store_true", help="every delivered message kept (needs --yes)")
    resend.add_argument("--yes", action="store_true", help="needed with --all")
    purge = add("purge", help="delete deliveries for good (dead ones unless --pending)")
    _add_selectors(purge)
    purge.add_argument("--all", action="store_true", help="every matching delivery")
    purge.add_argument("--pending", action="store_true", help="purge pending deliveries instead of dead ones")
    purge.add_argument("--yes", action="store_true", help="needed with --pending: those were never delivered")
    return parser


def _add_selectors(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", help="only this endpoint (its name)")
    parser.add_argument("--id", dest="ids", action="append", default=[], metavar="ID",
                        help="only this event id (repeatable)")


def _instants(args: argparse.Namespace) -> str | None:
    """``--since`` and ``--until`` (ISO 8601, UTC unless they give an offset) as epoch seconds, in
    place; what is wrong with them, or None."""
    for name in ("since", "until"):
        text = getattr(args, name, None)
        if text is None:
            continue
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return f"outbox resend --{name}: not an ISO 8601 time: {text!r}"
        setattr(args, name, (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())
    return None


def _usage(args: argparse.Namespace) -> str | None:
    """What is wrong with the selection of a changing command, or None."""
    command = args.outbox_command
    if command == "resend" and not (args.all or args.endpoint or args.ids or args.since or args.until):
        return "outbox resend: give --id, --endpoint, --since/--until or --all"
    if command == "resend" and args.all and not args.yes:
        return "outbox resend --all sends every delivered message kept again: add --yes"
    if command == "resend" and None not in (args.since, args.until) and args.since >= args.until:
        return "outbox resend: --since must be before --until"
    if command in ("retry", "purge") and not (args.all or args.endpoint or args.ids):
        return f"outbox {command}: give --all, --endpoint or --id"
    if command == "purge" and args.pending and not args.yes:
        return "outbox purge --pending deletes undelivered messages: add --yes"
    return None


def run_outbox_command(args: argparse.Namespace, outbox_config: OutboxConfig, *, out: TextIO | None = None,
                       err: TextIO | None = None, now: Callable[[], float] = time.time) -> int:
    """Run the parsed ``outbox`` sub-command on the configured file; returns the exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    command = args.outbox_command
    if command == "list" and args.rejected:
        return _run_rejected(args, outbox_config, out, err)
    if (problem := _instants(args) or _usage(args)) is not None:
        print(f"{PREFIX}{problem}", file=err)
        return EX_USAGE
    run = _COMMANDS[command]
    return _on_outbox(outbox_config, command, err, lambda outbox: run(outbox, args, out, err, now()))


def _on_outbox(outbox_config: OutboxConfig, command: str, err: TextIO, work: Callable[[Outbox], None]) -> int:
    """Open the configured outbox (never creating one), do ``work`` on it, close it: the exit code."""
    path = outbox_config.path
    if not path.exists():
        print(f"{PREFIX}no outbox at {path}", file=err)
        return EX_NOINPUT
    if not path.is_file():
        print(f"{PREFIX}outbox {command}: {path} is not a file ([outbox] path names the file)", file=err)
        return EX_IOERR
    try:
        outbox = Outbox.open(outbox_config.path, synchronous=outbox_config.synchronous)
        try:
            work(outbox)
        finally:
            outbox.close()
    except OutboxError as exc:
        print(f"{PREFIX}outbox {command} failed: {exc}", file=err)
        return failed(exc)
    return EX_OK


def _stats(outbox: Outbox, args: argparse.Namespace, out: TextIO, err: TextIO, now: float) -> None:
    stats = outbox.stats(now)
    if args.json:  # one object keyed by endpoint: {} when the outbox holds nothing undelivered
        by_endpoint = {s.endpoint: {k: v for k, v in asdict(s).items() if k != "endpoint"} for s in stats}
        print(json.dumps(by_endpoint), file=out)
        return
    print(f"{'endpoint':40} {'pending':>9} {'dead':>9} {'oldest pending':>15}", file=out)
    for s in stats:
        print(f"{s.endpoint:40} {s.pending:>9} {s.dead:>9} {_age(s.oldest_pending_age):>15}", file=out)
    if not stats:
        print("(empty: everything was delivered)", file=out)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _list(outbox: Outbox, args: argparse.Namespace, out: TextIO, err: TextIO, now: float) -> None:
    state = None if args.state == ALL else args.state
    rows = [{"id": row.event_id, "endpoint": row.endpoint, "state": row.state, "attempts": row.attempts,
             "created": _when(row.created_at),
             "next_attempt": _when(row.next_at) if row.state == PENDING else None,
             "delivered": _when(row.delivered_at) if row.delivered_at is not None else None,
             "last_error": row.last_error}
            for row in outbox.list(state=state, endpoint=args.endpoint, event_ids=args.ids, limit=args.limit)]
    if args.json:
        for fields in rows:
            print(json.dumps(fields), file=out)
    else:
        _table(LIST_COLUMNS, rows, out, empty="(no deliveries match)")


LIST_COLUMNS = ("id", "endpoint", "state", "attempts", "created", "next_attempt", "delivered", "last_error")
REJECTED_COLUMNS = ("id", "received_at", "node", "content_type", "size", "reason")


def _table(columns: Sequence[str], rows: Sequence[dict[str, Any]], out: TextIO, *, empty: str) -> None:
    """A header row, then each row, every column as wide as its widest value ("-" for none or empty);
    ``empty`` under the header when there is no row."""
    cells = [[("-" if row[c] in (None, "") else str(row[c])) for c in columns] for row in rows]
    widths = [max(len(text) for text in column) for column in zip(columns, *cells, strict=True)]
    for line in ([*columns], *cells):
        padded = (text.ljust(width) for text, width in zip(line, widths, strict=True))
        print("  ".join(padded).rstrip(), file=out)
    if not rows:
        print(empty, file=out)


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _progress(err: TextIO, verb: str) -> Callable[[int], None]:
    return lambda done: print(f"{verb} {done}...", file=err, flush=True)


def _retry(outbox: Outbox, args: argparse.Namespace, out: TextIO, err: TextIO, now: float) -> None:
    progress = _progress(err, "retried")
    count = outbox.retry_dead(now, endpoint=args.endpoint, event_ids=args.ids, progress=progress)
    print(f"{count} dead deliveries made pending again", file=out)


def _resend(outbox: Outbox, args: argparse.Namespace, out: TextIO, err: TextIO, now: float) -> None:
    progress = _progress(err, "resent")
    count = outbox.resend(now, endpoint=args.endpoint, event_ids=args.ids, since=args.since, until=args.until,
                          progress=progress)
    print(f"{count} delivered deliveries made pending again (sent within seconds if the daemon runs)",
          file=out)


def _purge(outbox: Outbox, args: argparse.Namespace, out: TextIO, err: TextIO, now: float) -> None:
    state = PENDING if args.pending else DEAD
    progress = _progress(err, "purged")
    count = outbox.purge(state=state, endpoint=args.endpoint, event_ids=args.ids, progress=progress)
    print(f"{count} {state} deliveries purged", file=out)


def _run_rejected(args: argparse.Namespace, outbox_config: OutboxConfig, out: TextIO, err: TextIO) -> int:
    """``outbox list --rejected``: the kept frames that held no usable event; with ``--id``, their bodies."""
    if args.endpoint or args.state != ALL:
        print(f"{PREFIX}outbox list --rejected: --state and --endpoint select deliveries, not frames",
              file=err)
        return EX_USAGE
    rows: list[RejectedFrame] = []

    def read(outbox: Outbox) -> None:
        rows.extend(outbox.rejected(ids=args.ids, limit=len(args.ids) or args.limit, bodies=bool(args.ids)))

    code = _on_outbox(outbox_config, "list", err, read)
    if code != EX_OK:
        return code
    if not args.ids and not args.json:
        _table(REJECTED_COLUMNS, [_rejected_fields(row) for row in rows], out, empty="(no rejected frames)")
    for row in rows:
        _print_rejected(row, args, out)
    missing = [i for i in args.ids if i not in {row.id for row in rows}]
    for event_id in missing:
        print(f"{PREFIX}no rejected frame {event_id}", file=err)
    return EX_NOINPUT if missing else EX_OK


def _rejected_fields(row: RejectedFrame) -> dict[str, Any]:
    return {"id": row.id, "received_at": _when(row.received_at), "node": row.node,
            "content_type": row.content_type, "size": row.size, "reason": row.reason}


def _print_rejected(row: RejectedFrame, args: argparse.Namespace, out: TextIO) -> None:
    """One rejected frame as a JSON object, or its body exactly as received (``--id``); the table of
    them is printed whole before."""
    if args.json:
        body = {"body": row.body.decode("utf-8", "replace")} if args.ids else {}
        print(json.dumps({**_rejected_fields(row), **body}), file=out)
    elif not args.ids:
        return
    elif (raw := getattr(out, "buffer", None)) is not None:
        out.flush()
        raw.write(row.body)
        raw.flush()
    else:
        out.write(row.body.decode("utf-8", "replace"))


_COMMANDS: dict[str, Callable[[Outbox, argparse.Namespace, TextIO, TextIO, float], None]] = {
    "stats": _stats, "list": _list, "retry": _retry, "resend": _resend, "purge": _purge}
