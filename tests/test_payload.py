"""The document's helpers give exactly what the standard library's slower spelling of them gives."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listener.core import document as payload


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


def _reference_iso_utc(epoch_us: int | None) -> str | None:
    """iso_utc as first written (the datetime spelling); the fast one must agree everywhere."""
    if epoch_us is None:
        return None
    try:
        moment = datetime.fromtimestamp(epoch_us / 1_000_000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_FAST_EDGE = 2**32 * 1_000_000
_EDGES = [0, 1, 999, 1000, 999_999, 1_000_000, 59_999_999, 60_000_000, 86_399_999_999, 86_400_000_000,
          951_782_400_000_000, 1_700_000_000_123_999, 1_700_000_000_999_999, _FAST_EDGE - 1, _FAST_EDGE,
          253_402_300_799_999_999, 253_402_300_800_000_000, -1, -1000, -62_135_596_800_000_000,
          -62_135_596_800_000_001, 2**63 - 1, -(2**63)]


@settings(max_examples=3000)
@given(st.one_of(
    st.integers(min_value=1_500_000_000_000_000, max_value=2_000_000_000_000_000),  # real calls
    st.integers(min_value=_FAST_EDGE - 10**12, max_value=_FAST_EDGE + 10**12),  # around the fast range's end
    st.integers(min_value=-(10**18), max_value=10**18),  # years 1..9999 and beyond, negative epochs
    st.integers(),
    st.sampled_from(_EDGES).flatmap(lambda n: st.integers(min_value=n - 2000, max_value=n + 2000)),
    st.none(),
))
def test_iso_utc_gives_what_the_datetime_spelling_gives(epoch_us: int | None) -> None:
    assert payload.iso_utc(epoch_us) == _reference_iso_utc(epoch_us)


@pytest.mark.parametrize("epoch_us", _EDGES)
def test_iso_utc_agrees_at_the_edges(epoch_us: int) -> None:
    assert payload.iso_utc(epoch_us) == _reference_iso_utc(epoch_us)


def test_iso_utc_truncates_to_milliseconds() -> None:
    assert payload.iso_utc(1_700_000_000_123_999) == "2023-11-14T22:13:20.123Z"
    assert payload.iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert payload.iso_utc(-1) == "1969-12-31T23:59:59.999Z"
    assert payload.iso_utc(2**63 - 1) is None
