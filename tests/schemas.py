"""Test helper: validators of the JSON Schemas shipped in listener/data (one per webhook type).

Each schema describes a whole webhook body (the envelope); ``leg_document``/``call_document``
validate the ``data`` alone, with the same definitions.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

DATA = Path(__file__).parent.parent / "listener" / "data"
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def schema(kind: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / f"{kind}.schema.json").read_text())
    return loaded


def _validator(document_schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(document_schema)
    return jsonschema.Draft202012Validator(document_schema, format_checker=jsonschema.FormatChecker())


@cache
def body(kind: str) -> jsonschema.Draft202012Validator:
    """The validator of a whole ``kind`` webhook body."""
    return _validator(schema(kind))


@cache
def leg_document() -> jsonschema.Draft202012Validator:
    return _validator({"$schema": DRAFT, "$defs": schema("leg.classified")["$defs"], "$ref": "#/$defs/leg"})


@cache
def call_document() -> jsonschema.Draft202012Validator:
    return _validator({"$schema": DRAFT, "$defs": schema("call.completed")["$defs"], "$ref": "#/$defs/call"})
