"""A stand-in for ``hangup-listener deliver`` (tests/test_worker.py): it reports every frame it is sent.

usage: python tests/echo_deliverer.py [--unhealthy] [--garbage] [--deaf] --report-fd N

Each frame read from stdin becomes one report line with one attempt ``(kind, what, 0.0)``: for
settings ``what`` is the webhooks' URLs joined by spaces, for stop the deadline, else the payload.
With ``--unhealthy`` every report says healthy=false and the first endpoint crashed. Exits 0 on
the stop frame or at the end of stdin. ``--garbage`` first writes a line that is not a report;
``--deaf`` never reads its stdin (it waits to be killed), as a hung child would.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from listener.workerwire import SETTINGS, STOP, FrameReader, Report, read_settings, report_line


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--unhealthy", action="store_true")
    parser.add_argument("--garbage", action="store_true")
    parser.add_argument("--deaf", action="store_true")
    parser.add_argument("--report-fd", type=int, required=True)
    args = parser.parse_args()
    if args.garbage:
        os.write(args.report_fd, b"this is not a report\n")
    if args.deaf:
        signal.pause()
    reader = FrameReader()
    while data := os.read(0, 65536):
        for kind, payload in reader.feed(data):
            what = payload.decode(errors="replace")
            if kind == SETTINGS:
                what = " ".join(w.url for w in read_settings(payload).webhooks)
            crashed = ("crm",) if args.unhealthy else ()
            report = Report(((kind.decode(), what, 0.0),), not args.unhealthy, crashed)
            os.write(args.report_fd, report_line(report))
            if kind == STOP:
                return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
