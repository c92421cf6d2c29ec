"""The reference: greenswitch's bare receive loop, an ``InboundESL`` whose handler only counts.

    python -m bench.bare PORT COUNT

Connects to 127.0.0.1:PORT, subscribes to CHANNEL_HANGUP_COMPLETE, prints ``{"subscribed": true}``,
then ``{"count": COUNT, "last": t}`` (``time.monotonic()``) once COUNT events were handled, and
exits at the next line on stdin (``quit``): until then its CPU time can be read from ``/proc``.
"""

from __future__ import annotations

import json
import sys
import time

import gevent.event
from greenswitch.esl import InboundESL


def main() -> None:
    port, count = int(sys.argv[1]), int(sys.argv[2])
    done = gevent.event.Event()
    seen = 0

    def handler(_event: object) -> None:
        nonlocal seen
        seen += 1
        if seen == count:
            done.set()

    esl = InboundESL("127.0.0.1", port, "ClueCon")
    esl.connect()
    esl.register_handle("CHANNEL_HANGUP_COMPLETE", handler)
    esl.send("event plain CHANNEL_HANGUP_COMPLETE")
    print(json.dumps({"subscribed": True}), flush=True)
    done.wait()
    print(json.dumps({"count": seen, "last": time.monotonic()}), flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
