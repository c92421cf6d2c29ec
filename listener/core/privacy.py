"""Caller and callee numbers (and the caller's name) in log lines: shown, masked, or replaced by a keyed hash.

Applied to every log line that carries a document (``leg.classified``, ``call.completed``,
``outbox.write_failed``); the document handed to the sink is untouched. The caller's name is masked
like the numbers: it is often the number itself, or a person's name. So are the channel variables a
document carries (``variables``) whose names are number variables (``variables.NUMBER_VARIABLES``
unless configured), and the same fields of every leg document in a call document's ``legs``.
``hash`` gives the same token for the same number and key (calls can still be correlated) but
cannot be reversed without the key: HMAC-SHA256, the first 16 hex digits, prefixed ``h:``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from typing import Any

from listener.core.variables import NUMBER_VARIABLES, Selection, mask_variables

NUMBER_FIELDS = ("caller_number", "caller_name", "callee_number", "destination_number")
"""The fields masked or hashed: the numbers, and the caller's name."""
KEEP_DIGITS = 2

Document = Mapping[str, Any]


def mask(number: str) -> str:
    """Every character but the last two becomes ``*`` (the length stays)."""
    hidden = max(len(number) - KEEP_DIGITS, 0)
    return "*" * hidden + number[hidden:]


def keyed_hash(number: str, key: str) -> str:
    """A stable, irreversible token for ``number`` under ``key``."""
    digest = hmac.new(key.encode(), number.encode(), hashlib.sha256).hexdigest()
    return "h:" + digest[:16]


class Redactor:
    """Returns a copy of a document with its numbers masked or hashed (``none``: the document itself)."""

    def __init__(self, mask_numbers: str = "none", hash_key: str | None = None,
                 number_variables: Selection = NUMBER_VARIABLES) -> None:
        self.mode = mask_numbers
        self.number_variables = number_variables
        key = hash_key or ""
        self._hide: Callable[[str], str] = mask if self.mode == "mask" else lambda n: keyed_hash(n, key)

    def __call__(self, document: Document) -> Document:
        if self.mode == "none":
            return document
        return self._redact(document)

    def _redact(self, document: Document) -> dict[str, Any]:
        copy = dict(document)
        for name in NUMBER_FIELDS:
            value = copy.get(name)
            if isinstance(value, str) and value:
                copy[name] = self._hide(value)
        variables = copy.get("variables")
        if isinstance(variables, Mapping):
            copy["variables"] = mask_variables(variables, self.number_variables, self._hide)
        legs = copy.get("legs")
        if isinstance(legs, list):
            copy["legs"] = [self._redact(leg) if isinstance(leg, Mapping) else leg for leg in legs]
        return copy
