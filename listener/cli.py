"""Command line: ``run`` (the daemon), ``classify`` (ESL captures, JSON CDRs), ``check-config``, ``outbox``,
``webhook test``.

gevent's monkey-patching happens here, first, and only for ``run``. Exit codes are the one map of
``listener.core.exits`` (sysexits): 78 for an invalid configuration, 74 for an outbox that cannot be
used as it is, 75 when another process holds the outbox lock or the health port, 65 for unusable
``classify`` input (or input with no CHANNEL_HANGUP_COMPLETE in it). ``webhook test``: 0 on a 2xx
answer, 75 when the receiver was not reached or answered 5xx or 429, 65 for any other answer, 64
for an unknown endpoint name (``listener.webhooks.commands``). Every expected failure is one line on
stderr (a configuration with several problems: one line each, under a heading), never a traceback;
``run``'s are its last log line. A stdout closed by its reader (``| head``) ends a command quietly (74).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from listener import __version__
from listener.core.exits import (
    EX_CONFIG,
    EX_DATAERR,
    EX_INTERRUPTED,
    EX_IOERR,
    EX_NOINPUT,
    EX_OK,
    EX_TEMPFAIL,
)
from listener.outbox.commands import add_outbox_parser
from listener.webhooks.commands import add_webhook_parser

if TYPE_CHECKING:
    from listener.config.settings import Config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hangup-listener", parents=[common_options()],
        description="Classify every FreeSWITCH hangup into a call status, bye reason and SIP code.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.set_defaults(config=None, credentials=None)  # the top level's own: None when no parser read it
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", parents=[common_options()],
                              help="run the daemon (connects to every configured FreeSWITCH)")
    run.set_defaults(func=_run)

    classify = commands.add_parser(
        "classify", parents=[common_options()],
        help="classify saved ESL traffic (wire frames, plain or JSON events) or JSON CDR files")
    classify.add_argument("files", nargs="*", type=Path,
                          help="capture files, *.cdr.json files, directories of *.cdr.json (default: stdin)")
    classify.add_argument("--node", default="capture", help="node name written in each document")
    classify.add_argument("--calls", action="store_true",
                          help="print one call.completed document per call (its legs grouped from every "
                               "input) instead of one document per leg")
    classify.set_defaults(func=_classify)

    check = commands.add_parser("check-config", parents=[common_options()],
                                help="validate a configuration, report every problem")
    check.set_defaults(func=_check_config)

    outbox = add_outbox_parser(commands, common_options)
    outbox.set_defaults(func=_outbox)

    webhook = add_webhook_parser(commands, common_options)
    webhook.set_defaults(func=_webhook)
    return parser


def common_options() -> argparse.ArgumentParser:
    """The options every command and sub-command takes, before or after its sub-command
    (``outbox stats --config F`` and ``outbox --config F stats``): a fresh parser for each, whose
    options set nothing unless given, so a later, inner parser never resets what an outer one read."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                        help="the TOML configuration (default: the built-in defaults and HANGUP_LISTENER_* "
                             "variables)")
    common.add_argument("--credentials", type=Path, default=argparse.SUPPRESS, metavar="DIR",
                        help="the folder a bare password_file/secret_file name is read from (default: "
                             "$CREDENTIALS_DIRECTORY, else /etc/hangup-listener/credentials if it exists)")
    return common


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; its expected failures print a line and return a sysexits code, never a traceback."""
    args = build_parser().parse_args(argv)
    if args.command == "run":
        from gevent import monkey  # noqa: PLC0415 - patched first, before anything else is imported

        monkey.patch_all()
    try:
        code: int = args.func(args)
    except BrokenPipeError:  # stdout's reader went away (`outbox list | head`): stop quietly, as cat does
        _discard_stdout()
        return EX_IOERR
    except KeyboardInterrupt:
        print("hangup-listener: interrupted", file=sys.stderr)
        return EX_INTERRUPTED
    return code


def _discard_stdout() -> None:
    """Point fd 1 at /dev/null, so the interpreter's last flush of what is still buffered cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _load(args: argparse.Namespace, err: TextIO) -> object | None:
    """The validated configuration of ``--config`` (secrets from ``--credentials``), or None after
    printing every problem."""
    from listener.config import loader as config  # noqa: PLC0415 - imported after monkey-patching
    from listener.core.errors import ConfigError  # noqa: PLC0415

    path, credentials = args.config, args.credentials
    if credentials is not None and not credentials.is_dir():
        print(f"hangup-listener: --credentials {credentials}: not a folder", file=err)
        return None
    try:
        return config.load(path, credentials=credentials)
    except ConfigError as exc:
        _print_problems(path, exc.problems, err)
        return None


def _print_problems(path: Path | None, problems: Sequence[str], err: TextIO) -> None:
    """One line for one problem (the file's name once); a list under a heading for several."""
    where = f" ({path})" if path else ""
    if len(problems) == 1 and path is not None and problems[0].startswith(f"{path}: "):
        print(f"hangup-listener: {problems[0]}", file=err)
    elif len(problems) == 1:
        print(f"hangup-listener: invalid configuration{where}: {problems[0]}", file=err)
    else:
        print(f"hangup-listener: invalid configuration{where}:", file=err)
        for problem in problems:
            print(f"  {problem}", file=err)


def _run(args: argparse.Namespace) -> int:
    """The daemon; then what its log output still holds, written within a deadline (stdout may be stuck)."""
    from listener.service import logs  # noqa: PLC0415 - imported after monkey-patching

    try:
        return _serve(args)
    finally:
        logs.close(logs.CLOSE_S)


def _serve(args: argparse.Namespace) -> int:
    import structlog  # noqa: PLC0415 - imported after monkey-patching

    from listener import app  # noqa: PLC0415
    from listener.config.settings import Config  # noqa: PLC0415
    from listener.core.errors import OutboxError  # noqa: PLC0415
    from listener.outbox.lock import OutboxLockedError  # noqa: PLC0415
    from listener.service import logs, monitor  # noqa: PLC0415

    cfg = _load(args, sys.stderr)
    if not isinstance(cfg, Config):
        return EX_CONFIG
    # with webhooks the outbox is the durable record: a stuck stdout then drops log lines, never calls
    logs.buffer_output("drop" if cfg.webhooks else "wait")
    logs.configure(cfg.log.level, fmt=cfg.log.format)
    log = structlog.get_logger("listener")
    app.warn_removed(log, cfg)
    app.warn_old_outbox(log, cfg, Path.cwd())
    monitor.watch(log)
    try:
        daemon = app.App.from_config(cfg)
    except OutboxLockedError as exc:
        log.critical("listener.outbox_locked", reason=str(exc), path=str(exc.path), holder_pid=exc.pid,
                     exit_code=EX_TEMPFAIL, action="one daemon per outbox: stop the other one, or give this "
                     "one its own [outbox] path")
        return EX_TEMPFAIL
    except OutboxError as exc:
        code = EX_TEMPFAIL if exc.transient else EX_IOERR
        action = app.outbox_action(cfg.outbox.path, exc)
        log.critical("listener.outbox_unusable", reason=str(exc), code=exc.code, path=str(cfg.outbox.path),
                     exit_code=code, action=action)
        return code
    return daemon.run_forever()


def _classify(args: argparse.Namespace) -> int:
    """Every CHANNEL_HANGUP_COMPLETE of every input as one document a line; 65 for an input with none."""
    from listener.config.settings import Config  # noqa: PLC0415

    cfg = _load(args, sys.stderr)
    if not isinstance(cfg, Config):
        return EX_CONFIG
    code = EX_OK
    legs: list[Any] | None = [] if args.calls else None
    for name, path in _classify_inputs(args.files):
        code = max(code, _classify_input(name, path, cfg, args.node, legs))
    if legs:
        _print_calls(legs)
    sys.stdout.flush()
    return code


def _print_calls(legs: list[Any]) -> None:
    """Every call of these legs, one document a line: grouped as the daemon groups them; a call still
    waiting for a leg no input holds is printed ``complete: false`` at the end."""
    from listener.core.calls import Grouper  # noqa: PLC0415

    grouper = Grouper(wait_s=0.0)
    for leg in legs:
        plan = grouper.add([leg])
        grouper.apply(plan, 0.0)
        for call in plan.completed:
            sys.stdout.write(json.dumps(call.document, ensure_ascii=False) + "\n")
    for call in grouper.expire(float("inf")).completed:
        sys.stdout.write(json.dumps(call.document, ensure_ascii=False) + "\n")


def _classify_inputs(files: Sequence[Path]) -> list[tuple[str, Path | None]]:
    """The inputs by name: each file, every ``*.cdr.json`` below each directory (sorted), else stdin."""
    from listener.core.cdr import SUFFIX  # noqa: PLC0415

    inputs: list[tuple[str, Path | None]] = []
    for path in files:
        found = sorted(path.rglob("*" + SUFFIX)) if path.is_dir() else [path]
        inputs.extend((str(p), p) for p in found or [path])
    return inputs or [("<stdin>", None)]


def _classify_input(name: str, path: Path | None, cfg: Config, node: str, legs: list[Any] | None) -> int:
    """Read one input (None: stdin) and classify it; a directory here has no CDR file below it."""
    if path is not None and path.is_dir():
        return _no_hangup(name)
    try:
        data = path.read_bytes() if path is not None else sys.stdin.buffer.read()
    except OSError as exc:
        print(f"hangup-listener: {name}: {exc.strerror or exc}", file=sys.stderr)
        return EX_NOINPUT
    return _classify_one(name, data, cfg, node, legs)


def _classify_one(name: str, data: bytes, cfg: Config, node: str, legs: list[Any] | None) -> int:
    """Print the documents of one input (or, with ``legs``, keep its legs for the calls); EX_DATAERR
    when it is unusable or holds no hangup."""
    from listener.core import calls, capture, cdr, document  # noqa: PLC0415
    from listener.core.errors import ListenerError  # noqa: PLC0415

    count = 0
    try:
        events = [cdr.event_from_cdr(data)] if name.endswith(cdr.SUFFIX) else capture.read_events(data)
        for event in events:
            if event.is_hangup_complete:
                built = document.build(event, cfg.classifier.classify(event), node)
                if legs is not None:
                    legs.append(calls.Leg(built, node, calls.partners(event), 0.0))
                else:
                    sys.stdout.write(json.dumps(built, ensure_ascii=False) + "\n")
                count += 1
    except ListenerError as exc:
        print(f"hangup-listener: {name}: {exc}", file=sys.stderr)
        return EX_DATAERR
    return EX_OK if count else _no_hangup(name)


def _no_hangup(name: str) -> int:
    print(f"hangup-listener: {name}: no CHANNEL_HANGUP_COMPLETE event in it", file=sys.stderr)
    return EX_DATAERR


def _outbox(args: argparse.Namespace) -> int:
    from listener.config.settings import Config  # noqa: PLC0415
    from listener.outbox.commands import run_outbox_command  # noqa: PLC0415

    cfg = _load(args, sys.stderr)
    if not isinstance(cfg, Config):
        return EX_CONFIG
    return run_outbox_command(args, cfg.outbox)


def _webhook(args: argparse.Namespace) -> int:
    from listener.config.settings import Config  # noqa: PLC0415
    from listener.webhooks.commands import run_webhook_test  # noqa: PLC0415

    cfg = _load(args, sys.stderr)
    if not isinstance(cfg, Config):
        return EX_CONFIG
    return run_webhook_test(args.endpoint, cfg.webhooks, cfg.classifier, out=sys.stdout, err=sys.stderr)


def _check_config(args: argparse.Namespace) -> int:
    from listener.config.settings import Config  # noqa: PLC0415

    cfg = _load(args, sys.stderr)
    if not isinstance(cfg, Config):
        return EX_CONFIG
    for warning in cfg.warnings:
        print(f"hangup-listener: warning: {warning}", file=sys.stderr)
    secrets = f" (bare secret file names read from {cfg.credentials})" if cfg.credentials else ""
    print(f"configuration {'in ' + str(args.config) if args.config else '(defaults)'} is valid{secrets}")
    return EX_OK
