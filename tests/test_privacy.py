"""Numbers in the call.classified line: shown, masked or keyed-hashed; other fields untouched."""

from __future__ import annotations

from listener.config import PrivacyConfig
from listener.privacy import Redactor, keyed_hash, mask

DOCUMENT = {"caller_number": "+4930123456", "destination_number": "1001", "caller_name": "Alice",
            "status": "busy"}
KEY = "0123456789abcdef-key"


def test_none_returns_the_document_itself() -> None:
    assert Redactor(PrivacyConfig())(DOCUMENT) is DOCUMENT


def test_mask_keeps_the_length_and_the_last_two_characters() -> None:
    redacted = Redactor(PrivacyConfig(mask_numbers="mask"))(DOCUMENT)
    assert redacted["caller_number"] == "*********56"
    assert redacted["destination_number"] == "**01"
    assert redacted["caller_name"] == "Alice"
    assert DOCUMENT["caller_number"] == "+4930123456"  # the sink's document is untouched
    assert mask("7") == "7"


def test_hash_is_stable_per_key_and_hides_the_number() -> None:
    redacted = Redactor(PrivacyConfig(mask_numbers="hash", hash_key=KEY))(DOCUMENT)
    token = redacted["caller_number"]
    assert token == keyed_hash("+4930123456", KEY)
    assert token.startswith("h:")
    assert len(token) == 18
    assert "30123456" not in token
    assert keyed_hash("+4930123456", KEY + "x") != token


def test_empty_or_missing_numbers_stay_as_they_are() -> None:
    redact = Redactor(PrivacyConfig(mask_numbers="mask"))
    assert redact({"caller_number": "", "destination_number": None}) == {
        "caller_number": "", "destination_number": None}
