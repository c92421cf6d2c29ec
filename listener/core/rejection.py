"""A frame that held no usable event: named by its content, kept whole with the reason, for recovery.

Framing was intact (the connection goes on) but the body was no event: JSON cut short, not an
object. Its id is made as a document's id is for an event with no Unique-ID,
``uuid5(ID_NAMESPACE, "sha256:<hex SHA-256 of the body>")``: the same bytes always get the same id.
"""

from __future__ import annotations

from dataclasses import dataclass

from listener.core.document import content_digest, content_id
from listener.core.frame import Frame

LOG_BODY_CAP = 64 * 1024
"""Bytes of a rejected body written into its log line when the line is its only record."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """One rejected frame: its id and digest, where it came from, why, and its body as received."""

    id: str
    digest: str
    node: str
    reason: str
    content_type: str
    body: bytes

    @classmethod
    def of(cls, frame: Frame, node: str, reason: str) -> Rejection:
        """The rejection of ``frame``, received from ``node``, refused for ``reason``."""
        digest = content_digest(frame.body)
        return cls(content_id(digest), digest, node, reason, frame.content_type, frame.body)

    def preview(self, cap: int = LOG_BODY_CAP) -> tuple[str, bool]:
        """The body as text for a log line (UTF-8 with replacement), at most ``cap`` bytes of it;
        and whether it was cut."""
        return self.body[:cap].decode("utf-8", "replace"), len(self.body) > cap
