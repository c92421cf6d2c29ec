"""The classify process: parses and classifies hangup bodies for the daemon, on the second core.

Under a burst the daemon's one Python thread is the limit, and a third of its time went to parsing
JSON alone. With ``[esl] classify_process = true`` the daemon hands each batch of raw
CHANNEL_HANGUP_COMPLETE bodies to this process (``hangup-listener classify-process``, started and
watched by ``listener.offload``) and gets the documents back; it keeps the framing, the outbox
commit and the log line. This process is plain blocking code: no gevent, no logging, no files.

The pipe protocol (both ways: ``listener.workerwire``'s frames, one type byte, a 4-byte big-endian
length, the payload):

- daemon to process: ``K`` the pickled ``Classifier`` (first, and again on every reload);
  ``B`` a batch: the node name and the bodies (``encode_batch``);
- process to daemon: ``R`` for each ``B``, in order: a JSON array with, per body, its document,
  or null where this process could not make one (the daemon then does that body itself, so a
  malformed event is rejected and logged exactly as without this process).

End of file on stdin means stop; SIGTERM does not (``listener.cli``).
"""

from __future__ import annotations

import pickle
import queue
import struct
import sys
import threading
from collections.abc import Sequence
from typing import Any, BinaryIO

import orjson

from listener import payload
from listener.classify import Classifier, default_classifier
from listener.errors import WireError
from listener.event import HangupEvent
from listener.workerwire import HEAD, frame

CLASSIFIER, BATCH, REPLY = b"K", b"B", b"R"
_NAME = struct.Struct(">H")
_COUNT = struct.Struct(">I")


def encode_batch(node: str, bodies: Sequence[bytes]) -> bytes:
    """A ``B`` frame: the node name, how many bodies, each body's length, then the bodies."""
    name = node.encode()
    sizes = struct.pack(f">{len(bodies)}I", *map(len, bodies))
    return frame(BATCH, _NAME.pack(len(name)), name, _COUNT.pack(len(bodies)), sizes, *bodies)


def decode_batch(data: bytes) -> tuple[str, list[bytes]]:
    try:
        (size,) = _NAME.unpack_from(data)
        at = _NAME.size + size
        node = data[_NAME.size:at].decode()
        (count,) = _COUNT.unpack_from(data, at)
        at += _COUNT.size
        sizes = struct.unpack_from(f">{count}I", data, at)
    except (struct.error, UnicodeDecodeError) as exc:
        raise WireError(f"bad batch: {exc}") from None
    at += 4 * count
    bodies = []
    for length in sizes:
        bodies.append(data[at:at + length])
        at += length
    if at != len(data):
        raise WireError("bad batch: the body lengths do not add up")
    return node, bodies


def read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    """``size`` bytes, or None at end of file before the first; ``WireError`` if cut short."""
    data = stream.read(size)
    if not data and size:
        return None
    chunks = [data]
    got = len(data)
    while got < size:
        more = stream.read(size - got)
        if not more:
            raise WireError(f"end of file {size - got} bytes short of a frame")
        chunks.append(more)
        got += len(more)
    return b"".join(chunks) if len(chunks) > 1 else data


def read_frame(stream: BinaryIO) -> tuple[bytes, bytes] | None:
    head = read_exactly(stream, HEAD.size)
    if head is None:
        return None
    kind, size = HEAD.unpack(head)
    data = read_exactly(stream, size) or b""
    return kind, data


def documents(classifier: Classifier, node: str, bodies: Sequence[bytes]) -> list[dict[str, Any] | None]:
    """Each body's document, as the daemon's pipeline makes it; None for any it cannot make."""
    out: list[dict[str, Any] | None] = []
    for body in bodies:
        try:
            event = HangupEvent.from_json(body)
            out.append(payload.build(event, classifier.classify(event), node))
        except Exception:  # noqa: BLE001 - the daemon redoes it and logs why, as it would without us
            out.append(None)
    return out


def _classifier(data: bytes) -> Classifier:
    loaded = pickle.loads(data)  # noqa: S301 - written by our own parent, on a private pipe
    if not isinstance(loaded, Classifier):
        raise WireError(f"expected a Classifier, got {type(loaded).__name__}")
    return loaded


def _unknown(kind: bytes) -> None:
    raise WireError(f"unknown frame type {kind!r}")


def serve(stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Answer batches until end of file on ``stdin``; 0 then, 2 on a protocol error.

    A thread reads the frames ahead, so the daemon's next batch is taken off the pipe while this
    one is classified (its write never waits for us).
    """
    frames: queue.Queue[tuple[bytes, bytes] | WireError | None] = queue.Queue()
    threading.Thread(target=_read_ahead, args=(stdin, frames), daemon=True).start()
    classifier = default_classifier()
    while True:
        got = frames.get()
        try:
            if got is None:
                return 0
            if isinstance(got, WireError):
                raise got
            kind, data = got
            if kind == CLASSIFIER:
                classifier = _classifier(data)
            elif kind == BATCH:
                node, bodies = decode_batch(data)
                stdout.write(frame(REPLY, orjson.dumps(documents(classifier, node, bodies))))
                stdout.flush()
            else:
                _unknown(kind)
        except WireError as exc:
            print(f"hangup-listener classify-process: {exc}", file=sys.stderr, flush=True)
            return 2
        except BrokenPipeError:
            return 0


def _read_ahead(stdin: BinaryIO, frames: queue.Queue[tuple[bytes, bytes] | WireError | None]) -> None:
    try:
        while (got := read_frame(stdin)) is not None:
            frames.put(got)
    except WireError as exc:
        frames.put(exc)
    except (OSError, ValueError) as exc:
        frames.put(WireError(f"stdin failed: {exc}"))
    else:
        frames.put(None)


def main() -> int:
    """``hangup-listener classify-process``: serve the daemon on stdin/stdout until end of file.

    The CLI has made SIGTERM and SIGINT ignored first: the daemon, stopping, still hands us the
    batches it drains; it closes our stdin when done, and its death closes it too.
    """
    return serve(sys.stdin.buffer, sys.stdout.buffer)
