"""The document's helpers give exactly what the standard library's slower spelling of them gives."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listener import payload


def _reference_document_id(core_uuid: str, unique_id: str) -> str:
    return str(uuid.uuid5(payload.ID_NAMESPACE, f"{core_uuid}/{unique_id}"))


@settings(max_examples=2000)
@given(st.text(), st.text())
def test_document_id_is_the_uuid5_of_core_uuid_slash_unique_id(core_uuid: str, unique_id: str) -> None:
    assert payload.document_id(core_uuid, unique_id) == _reference_document_id(core_uuid, unique_id)


@given(st.uuids().map(str), st.uuids().map(str))
def test_document_id_of_real_uuids_is_the_uuid5(core_uuid: str, unique_id: str) -> None:
    assert payload.document_id(core_uuid, unique_id) == _reference_document_id(core_uuid, unique_id)


def test_document_id_of_a_known_event_never_changes() -> None:
    got = payload.document_id("1b8e5af5-676a-4b2e-91a0-1ac1b56080da", "0b7e9a52-1111-2222-3333-444455556666")
    assert got == _reference_document_id(
        "1b8e5af5-676a-4b2e-91a0-1ac1b56080da", "0b7e9a52-1111-2222-3333-444455556666"
    )
    assert uuid.UUID(got).version == 5
    assert uuid.UUID(got).variant == uuid.RFC_4122


def test_document_id_refuses_a_lone_surrogate_as_uuid5_does() -> None:
    # Cannot come from the wire (values are decoded UTF-8 with replacement); raised like uuid5 if it did.
    with pytest.raises(UnicodeEncodeError):
        _reference_document_id("core", "\ud800")
    with pytest.raises(UnicodeEncodeError):
        payload.document_id("core", "\ud800")
