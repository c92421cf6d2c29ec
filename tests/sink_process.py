"""A stand-in daemon for the crash and shutdown tests: outbox + webhook sink, as the daemon wires them.

usage: python tests/sink_process.py DB URL [--put N] [--deadline S]

Monkey-patches first (as the daemon does), optionally stores N documents (call-0 .. call-N-1),
runs the sink against URL, prints ``ready`` on stdout once the sink is started, and on SIGTERM
stops within the deadline (requests in flight finish, the rest stays pending) and exits 0.
The signal handler only records the signal; the main greenlet acts on it.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import structlog  # noqa: E402

from listener.retry import RetrySchedule  # noqa: E402
from listener.sink import OutboxWriter, WebhookSink  # noqa: E402
from listener.webhook_config import OutboxConfig, WebhookConfig, decode_secret  # noqa: E402

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("db", type=Path)
    parser.add_argument("url")
    parser.add_argument("--put", type=int, default=0)
    parser.add_argument("--deadline", type=float, default=5.0)
    args = parser.parse_args()
    structlog.configure(processors=[structlog.processors.JSONRenderer()],
                        logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    webhook = WebhookConfig(name="receiver", url=args.url, key=decode_secret(SECRET) or b"", timeout=10.0,
                            max_concurrency=4, retry=RetrySchedule(delays=(0.1,) * 50, jitter=0.0))
    writer = OutboxWriter.open(OutboxConfig(args.db), [webhook])
    if args.put:
        docs = [{"id": f"call-{n}", "status": "answered", "leg": "a", "direction": "inbound"}
                for n in range(args.put)]
        writer.put(docs)
    sink = WebhookSink(writer, [webhook], poll_interval_s=0.1)
    terminated = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, terminated.set)
    sink.start()
    print("ready", flush=True)
    terminated.wait()
    finished = sink.stop(args.deadline)
    writer.close()
    print("stopped" if finished else "stopped-abandoning", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
