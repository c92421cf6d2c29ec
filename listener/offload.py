"""The classify process, seen from the daemon: batches of raw hangups out, their documents back.

``ClassifyProcess`` starts ``hangup-listener classify-process`` (``listener.classifyproc``) and asks
it for the documents of a batch of unparsed CHANNEL_HANGUP_COMPLETE bodies. It never costs an
event: whenever the process cannot answer (not started yet, exited, too slow, spoke nonsense) the
answer is None and the pipeline does the batch itself, as it does without this process; the
process is then restarted after a backoff (1 s doubling to 30 s). A body the process could not
make a document of comes back as None too and is done (and rejected, or logged) by the daemon.

Requests are written one at a time (several nodes share the process) and answered in order, so
several may be in flight: one greenlet per process reads the answers and hands each to the oldest
request waiting. The pipe is the only hand-off.
"""

from __future__ import annotations

import contextlib
import pickle
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.subprocess
import orjson
import structlog

from listener.backoff import reconnect_delay
from listener.classify import Classifier
from listener.classifyproc import CLASSIFIER, REPLY, encode_batch, read_frame
from listener.errors import WireError
from listener.workerwire import frame

log = structlog.get_logger("listener.offload")
Document = dict[str, Any]


class ClassifyProcess:
    """``start`` once, ``submit`` per batch, ``set_classifier`` on reload, ``stop`` once.

    Several batches may be in flight (the pipe is in order): the daemon commits one batch while the
    process classifies the next.
    """

    def __init__(self, classifier: Classifier, *, timeout_s: float = 10.0,
                 command: Sequence[str] | None = None, backoff_initial_s: float = 1.0,
                 backoff_cap_s: float = 30.0) -> None:
        self._classifier = pickle.dumps(classifier)
        self._classifier_sent = False
        self._command = list(command or (sys.executable, "-m", "listener", "classify-process"))
        self._timeout = timeout_s
        self._backoff = (backoff_initial_s, backoff_cap_s)
        self._failures = 0
        self._retry_at = 0.0
        self._proc: Any = None
        self._waiting: deque[tuple[int, gevent.event.AsyncResult]] = deque()
        self._lock = gevent.lock.Semaphore()
        self._stopped = False
        self.started_count = 0
        self.batches = 0
        """Batches answered by the process."""
        self.fallbacks = 0
        """Batches the pipeline did itself because the process could not answer."""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the process now (it imports while the daemon connects)."""
        with self._lock:
            self._start()

    def set_classifier(self, classifier: Classifier) -> None:
        """Classify with ``classifier`` from the next batch on (a reload): it goes just before it.

        No I/O here: a reload never waits for the pipe (and never yields to the loop for it).
        """
        self._classifier = pickle.dumps(classifier)
        self._classifier_sent = False

    def submit(self, node: str, bodies: Sequence[bytes]) -> Callable[[], list[Document | None] | None]:
        """Send a batch now; the returned call waits for its documents (None: do them all here).

        Per body, its document, or None where the process could not make one.
        """
        result = gevent.event.AsyncResult()
        with self._lock:
            if self._proc is not None and not self.running:  # died between batches
                self._failed("exited")
            if (self.running or self._start()) and self._send_classifier():
                self._waiting.append((len(bodies), result))  # before the write: the answer may be quick
                self._write(encode_batch(node, bodies))  # on failure, _failed answers None
            else:
                result.set(None)
        return lambda: self._collect(result)

    def _collect(self, result: gevent.event.AsyncResult) -> list[Document | None] | None:
        try:
            answer: list[Document | None] | None = result.get(timeout=self._timeout)
        except gevent.Timeout:
            with self._lock:
                if not result.ready():  # (a failed write may have given up on it meanwhile)
                    self._failed(f"no answer within {self._timeout:g}s")
            answer = result.get()
        if answer is None:
            self.fallbacks += 1
        else:
            self.batches += 1
        return answer

    def stop(self, timeout_s: float = 5.0) -> None:
        """End of file on its stdin: the process exits; killed if it does not within ``timeout_s``."""
        self._stopped = True
        with self._lock:
            proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=timeout_s)
        except gevent.subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with self._lock:
            if self._proc is proc:
                self._failed("stopped", restart=False)

    # -- the process (callers hold the lock) --------------------------------------------------

    def _start(self) -> bool:
        if self._stopped or time.monotonic() < self._retry_at:
            return False
        try:
            proc = gevent.subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except OSError as exc:
            self._failed(f"cannot start: {exc.strerror or exc}")
            return False
        self._proc = proc
        self.started_count += 1
        log.info("classify.process_started", pid=proc.pid)
        gevent.spawn(self._read_replies, proc)
        self._classifier_sent = False
        return self._send_classifier()

    def _send_classifier(self) -> bool:
        """Send the classifier if the process does not have it yet; False if the pipe failed."""
        if not self._classifier_sent:
            self._classifier_sent = self._write(frame(CLASSIFIER, self._classifier))
            return self._classifier_sent
        return True

    def _write(self, data: bytes) -> bool:
        """Write one frame; False (the process then gone) if the pipe fails or stays full too long."""
        try:
            with gevent.Timeout(self._timeout, TimeoutError):
                self._proc.stdin.write(data)
                self._proc.stdin.flush()
        except TimeoutError:
            self._failed(f"took no input for {self._timeout:g}s")
            return False
        except (OSError, ValueError) as exc:
            self._failed(f"pipe failed: {exc}")
            return False
        except gevent.GreenletExit:  # killed mid-frame (a stop): the pipe is out of step, never reuse it
            self._failed("interrupted", restart=False)
            raise
        return True

    def _read_replies(self, proc: Any) -> None:
        """Hand each reply to the oldest batch waiting (one greenlet per process)."""
        reason = "exited"
        try:
            while (got := read_frame(proc.stdout)) is not None:
                kind, data = got
                answer = orjson.loads(data) if kind == REPLY else None
                if not self._waiting or not isinstance(answer, list) or len(answer) != self._waiting[0][0]:
                    reason = f"answered a {kind!r} frame that fits no batch"
                    break
                self._failures = 0
                self._waiting.popleft()[1].set([doc if isinstance(doc, dict) else None for doc in answer])
        except (OSError, ValueError, WireError) as exc:  # orjson.JSONDecodeError is a ValueError
            reason = f"reply unreadable: {exc}"
        with self._lock:
            if self._proc is proc:
                self._failed(reason, restart=not self._stopped)  # stop closed its stdin: not a failure

    def _failed(self, reason: str, *, restart: bool = True) -> None:
        """The process is gone (killed if need be): every batch waiting is done here.

        Without ``restart`` nothing is logged and the next batch may start a new one at once.
        """
        proc, self._proc = self._proc, None
        while self._waiting:
            self._waiting.popleft()[1].set(None)
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            code = proc.wait()
        if not restart:
            return
        initial, cap = self._backoff
        delay = reconnect_delay(self._failures, initial=initial, cap=cap)
        self._failures += 1
        self._retry_at = time.monotonic() + delay
        log.error("classify.process_failed", reason=reason, code=code, restart_in_s=round(delay, 1),
                  effect="batches are classified in the daemon meanwhile")
