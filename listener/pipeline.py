"""The transform, as one chain per node: event frames -> parse -> classify -> document -> outbox -> log line.

The ESL source hands each batch of event frames, as read, to its node's ``Pipeline``; everything a
hangup goes through happens here, in order, and the source learns of it only through the ``Tally``
returned. A frame that holds no usable event is rejected alone (``esl.event_rejected``) and kept:
in the outbox's ``rejected`` table, or without one in that line; an event whose handling raises is
skipped alone (``call.handler_failed``); the rest of the batch goes on.
The batch's documents are committed to the outbox together (one transaction, when webhooks are
configured) and only then logged, one ``leg.classified`` line per leg, then one ``call.completed``
line per call those legs completed (``listener.core.calls`` groups them: in the outbox writer, in the
same transaction, or here when there is no outbox); the delivery loops of the endpoints that got rows
are woken. If the outbox cannot take them, each is logged whole (``outbox.write_failed``) and
``on_outbox_failure`` is told: nothing is lost silently.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from listener.config.settings import Node
from listener.core import document as documents
from listener.core.calls import Call, Grouper, Leg, partners
from listener.core.classifier import Classifier
from listener.core.document import CALL_COMPLETED, LEG_CLASSIFIED
from listener.core.errors import EventError, OutboxError
from listener.core.event import HANGUP_COMPLETE, HEARTBEAT, HangupEvent
from listener.core.frame import Frame
from listener.core.rejection import Rejection
from listener.core.variables import DEFAULT_MAX_BYTES, NO_VARIABLES, Selection, attach, from_event
from listener.esl.connection import TimeSlice
from listener.esl.source import Tally
from listener.service import logs

Document = dict[str, Any]
Redact = Callable[[Mapping[str, Any]], Any]


class Store(Protocol):
    """Where documents go before they count as handled (``listener.outbox.writer.OutboxWriter``)."""

    def put(self, documents: Sequence[Leg]) -> frozenset[str]: ...


@runtime_checkable
class RejectionStore(Protocol):
    """A store that also keeps rejected frames (``listener.outbox.writer.OutboxWriter``)."""

    def reject(self, rejection: Rejection) -> int: ...


class Wakeable(Protocol):
    """Delivery that can be told which endpoints just got rows (``listener.webhooks.sink.WebhookSink``)."""

    def wake(self, endpoints: frozenset[str] | None = None) -> None: ...


@runtime_checkable
class Handing(Wakeable, Protocol):
    """Delivery that takes the rows a commit created as they are, without claiming them from the outbox."""

    def hand(self, rows: Sequence[Any]) -> None: ...


class CallMetrics(Protocol):
    """Where each classified call is counted (``listener.service.metrics.Metrics``)."""

    def call_classified(self, node: str, document: Mapping[str, Any]) -> None: ...

    def call_completed(self, node: str, document: Mapping[str, Any]) -> None: ...


def parse(frame: Frame) -> HangupEvent:
    """The event in one ``text/event-plain`` or ``text/event-json`` frame; ``EventError`` if none."""
    if frame.content_type == "text/event-plain":
        return HangupEvent.from_plain(frame.body)
    return HangupEvent.from_json(frame.body)


class Pipeline:
    """One node's transform; ``classifier`` and ``redact`` may be replaced between batches (a reload)."""

    def __init__(
        self,
        node: Node,
        classifier: Classifier,
        log: Any,
        *,
        store: Store | None = None,
        delivery: Wakeable | None = None,
        metrics: CallMetrics | None = None,
        redact: Redact | None = None,
        on_outbox_failure: Callable[[OutboxError], None] | None = None,
        calls: Grouper | None = None,
        clock: Callable[[], float] = time.time,
        variables: Selection = NO_VARIABLES,
        log_variables: tuple[Selection, int] = (NO_VARIABLES, DEFAULT_MAX_BYTES),
    ) -> None:
        self.node = node
        self.classifier = classifier
        self.log = log
        self.store = store
        self.delivery = delivery
        self.metrics = metrics
        self.redact = redact
        self.on_outbox_failure = on_outbox_failure
        self.calls = calls
        """Groups legs into calls when there is no outbox (the writer does it otherwise), in memory."""
        self.clock = clock
        self.variables = variables
        """The channel variables every leg keeps (what any endpoint or the log line asked for)."""
        self.log_variables = log_variables
        """The log line's share of them, and its cap."""

    def document(self, event: HangupEvent) -> Document:
        """The classified document of one hangup (pure)."""
        return documents.build(event, self.classifier.classify(event), self.node.name)

    def leg(self, event: HangupEvent) -> Leg:
        """The leg of one hangup as the outbox and the grouping into calls take it (pure)."""
        kept = from_event(event, self.variables) if self.variables else {}
        return Leg(self.document(event), self.node.name, partners(event), 0.0, kept)

    def __call__(self, frames: Sequence[Frame]) -> Tally:
        """Take one batch of event frames through the whole chain; what happened, counted."""
        tally = Tally()
        ready: list[Leg] = []
        running = TimeSlice()
        for frame in frames:
            event = self._parsed(frame, tally)
            if event is not None:
                self.take(event, tally, ready)
            running.check()
        if ready:
            self._commit(ready, tally)
        return tally

    def _parsed(self, frame: Frame, tally: Tally) -> HangupEvent | None:
        try:
            event = parse(frame)
        except EventError as exc:  # framing intact: skip this event, keep the connection
            tally.rejected += 1
            self._reject(Rejection.of(frame, self.node.name, str(exc)))
            return None
        tally.received[event.event_name] += 1
        core_uuid = event.core_uuid
        if core_uuid and (not tally.core_uuids or tally.core_uuids[-1] != core_uuid):
            tally.core_uuids.append(core_uuid)
        return event

    def _reject(self, rejection: Rejection) -> None:
        """Account for a frame that held no event: kept in the outbox, else its body in the line."""
        fields = {"reason": rejection.reason, "content_type": rejection.content_type, "id": rejection.id,
                  "size": len(rejection.body), "node": rejection.node}
        if not isinstance(self.store, RejectionStore):
            self.log.error("esl.event_rejected", **fields, kept="log", **self._body_of(rejection))
            return
        try:
            dropped = self.store.reject(rejection)
        except OutboxError as exc:
            self.log.error("esl.event_rejected", **fields, kept="log", outbox_error=str(exc),
                           **self._body_of(rejection))
            if self.on_outbox_failure is not None:
                self.on_outbox_failure(exc)
            return
        self.log.error("esl.event_rejected", **fields, kept="outbox", rejected_dropped=dropped)

    def _body_of(self, rejection: Rejection) -> dict[str, Any]:
        """The body for a line that is its only record; withheld while numbers are masked (it holds them)."""
        if self.redact is not None and getattr(self.redact, "mode", "unknown") != "none":
            return {"body_withheld": "masking on"}
        text, cut = rejection.preview()
        return {"body": text, "body_truncated": True} if cut else {"body": text}

    def recover(self, events: Sequence[HangupEvent]) -> int:
        """Hangups read from another source (CDR files) through the same chain; how many were new
        (a leg the Event Socket delivered already is neither stored nor logged again)."""
        tally, ready = Tally(), list[Leg]()
        for event in events:
            self.take(event, tally, ready)
        return self.commit(ready) if ready else 0

    def reject_file(self, path: Path, body: bytes, reason: str) -> None:
        """A CDR file that is complete JSON but not a CDR: said once; the file itself stays where it is."""
        self.log.error("cdr.file_rejected", file=str(path), reason=reason, size=len(body))

    def take(self, event: HangupEvent, tally: Tally, ready: list[Leg]) -> None:
        """A hangup becomes its document; a heartbeat is counted; any other event is only counted."""
        name = event.event_name
        if name == HEARTBEAT:
            tally.heartbeats += 1
            tally.hostname = event.hostname
            self.log.debug("esl.heartbeat_received", core_uuid=event.core_uuid)
        elif name == HANGUP_COMPLETE:
            try:
                ready.append(self.leg(event))
            except Exception:
                tally.failed += 1
                self.log.exception("call.handler_failed", channel_uuid=event.unique_id, event_name=name)

    def _commit(self, ready: list[Leg], tally: Tally) -> None:
        try:
            self.commit(ready)
        except Exception:
            tally.failed += len(ready)
            for leg in ready:
                self.log.exception("call.handler_failed", channel_uuid=leg.document.get("channel_uuid"),
                                   event_name=HANGUP_COMPLETE)

    def commit(self, ready: list[Leg]) -> int:
        """Store the legs in one outbox commit, then write one line per leg and one per call those legs
        completed (never before the commit).

        A leg taken before, from either source (the Event Socket, a CDR file), is neither stored nor
        logged again. Returns how many legs were new."""
        completed: Sequence[Call] = ()
        if self.store is not None:
            try:
                created = self.store.put(ready)
            except OutboxError as exc:
                self._not_stored(ready, exc)
                return 0
            if created and self.delivery is not None:
                rows = getattr(created, "rows", ())  # a writer's Stored: the rows, for the first caller
                if rows and isinstance(self.delivery, Handing):
                    self.delivery.hand(rows)
                else:
                    self.delivery.wake(created)
            duplicates: frozenset[str] = getattr(created, "duplicates", frozenset())  # a writer's Stored
            completed = getattr(created, "calls", ())
            if duplicates:
                ready = [leg for leg in ready if leg.id not in duplicates]
        elif self.calls is not None:
            now = self.clock()
            plan = self.calls.add([leg.arriving(now) for leg in ready])
            self.calls.apply(plan, now)
            completed = plan.completed
        with logs.held():  # the batch's lines in one write, flushed when it ends
            for leg in ready:
                if self.metrics is not None:
                    self.metrics.call_classified(self.node.name, leg.document)
                self.log.info(LEG_CLASSIFIED, leg=self._shown(leg.document, leg.variables))
            self._log_calls(completed)
        return len(ready)

    def calls_completed(self, calls: Sequence[Call]) -> None:
        """Calls completed at their bound (by the writer's clock or ``expire``): one line each."""
        with logs.held():
            self._log_calls(calls)

    def _log_calls(self, calls: Sequence[Call]) -> None:
        for call in calls:
            if self.metrics is not None:
                self.metrics.call_completed(self.node.name, call.document)
            shares = {leg.id: leg.variables for leg in call.legs if leg.variables}
            self.log.info(CALL_COMPLETED, call=self._shown(call.document, shares))

    def _shown(self, document: Mapping[str, Any], variables: Mapping[str, Any]) -> Any:
        """A document as its log line shows it: with the log's variables, masked as configured."""
        selection, max_bytes = self.log_variables
        if selection:
            document = attach(document, variables, selection, max_bytes)
        return self.redact(document) if self.redact else document

    def _not_stored(self, ready: list[Leg], exc: OutboxError) -> None:
        """The outbox refused the batch: each document logged whole (never lost silently), masked as the
        ``leg.classified`` line would be."""
        for leg in ready:
            self.log.error("outbox.write_failed", reason=str(exc),
                           leg=self._shown(leg.document, leg.variables))
        if self.on_outbox_failure is not None:
            self.on_outbox_failure(exc)
