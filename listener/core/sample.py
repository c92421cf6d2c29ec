"""The samples ``hangup-listener webhook test`` sends: a real capture, classified like any other.

``listener/data/sample-hangup.json`` is the caller's leg of a call the callee refused with 486 Busy
Here (FreeSWITCH 1.10.12, the ``uas_486`` capture of the tests), as its ``text/event-json`` body.
Its document gets a fixed id, ``SAMPLE_ID``, so a receiver can tell the test from a real call; the
``call.completed`` sample is that leg as a call of its own, id ``SAMPLE_CALL_ID``.
"""

from __future__ import annotations

import uuid
from importlib import resources
from typing import Any

from listener.core.calls import CALL_NAMESPACE, Leg
from listener.core.calls import build as build_call
from listener.core.classifier import Classifier
from listener.core.document import ID_NAMESPACE, build
from listener.core.event import HangupEvent

SAMPLE_FILE = "sample-hangup.json"
SAMPLE_ID = str(uuid.uuid5(ID_NAMESPACE, "hangup-listener test"))
"""``0cdd4746-603e-5f30-87ec-d65a16cfcf4e``: uuid5 of "hangup-listener test" in the ids' namespace."""
SAMPLE_NODE = "webhook-test"
SAMPLE_CALL_ID = str(uuid.uuid5(CALL_NAMESPACE, "hangup-listener test"))
"""The sample call's id: uuid5 of "hangup-listener test" in the calls' namespace."""


def sample_document(classifier: Classifier) -> dict[str, Any]:
    """The sample call's document, classified by ``classifier`` (the configured rules), id ``SAMPLE_ID``."""
    body = resources.files("listener").joinpath("data", SAMPLE_FILE).read_bytes()
    event = HangupEvent.from_json(body)
    return {**build(event, classifier.classify(event), SAMPLE_NODE), "id": SAMPLE_ID}


def sample_call(classifier: Classifier) -> dict[str, Any]:
    """The sample call's ``call.completed`` document: the sample leg as a call of its own, id
    ``SAMPLE_CALL_ID``."""
    leg = sample_document(classifier)
    return {**build_call([Leg(leg, SAMPLE_NODE, frozenset(), 0.0)]), "id": SAMPLE_CALL_ID}
