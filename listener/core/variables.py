"""Channel variables on request: which names (``Selection``), read from an event, narrowed to one
reader's choice within a size cap, and masked where they carry numbers. Pure: no I/O.

Names are matched without the ``variable_`` prefix ESL headers carry (``sip_call_id`` reads
``variable_sip_call_id``), exactly or by fnmatch-style globs (``*``, ``?``, ``[...]``), case-sensitively.
Every function returns its variables in sorted name order, so the same event always gives the same
JSON object, and the same cap keeps the same variables.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from listener.core.event import HangupEvent

PREFIX = "variable_"
GLOB_CHARACTERS = frozenset("*?[")
DEFAULT_MAX_BYTES = 8192
MIN_MAX_BYTES = 256
MAX_MAX_BYTES = 1 << 20

_NAME = r"[A-Za-z0-9_.\-]"
_PATTERN = re.compile(rf"(?:{_NAME}|[*?]|\[!?{_NAME}+\])+")
"""What a pattern may hold: the characters FreeSWITCH variable names use in practice (``sip_h_X-Foo``,
``RFC2822_DATE``, ``Event-Calling-File``: letters, digits, ``_``, ``-``, ``.``), ``*``, ``?`` and
closed ``[...]`` / ``[!...]`` sets of those characters (ranges such as ``[0-9]`` included)."""


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a variable name or glob (None when it is one)."""
    if not pattern:
        return "must not be empty"
    if pattern.startswith(PREFIX):
        return f"names are given without the {PREFIX} prefix of ESL headers: {pattern[len(PREFIX):]!r}"
    if not _PATTERN.fullmatch(pattern):
        return (f"{pattern!r} is not a variable name (letters, digits, _ - .) "
                "nor a glob of one (* ? [...])")
    return None


def is_glob(pattern: str) -> bool:
    return not GLOB_CHARACTERS.isdisjoint(pattern)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which variables: exact names (looked up directly) and globs (one compiled regex), built once."""

    patterns: tuple[str, ...] = ()
    names: frozenset[str] = field(init=False, repr=False, compare=False)
    """The exact names among ``patterns``."""
    glob: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    """Every glob among ``patterns`` in one regex; None when there is none."""

    def __post_init__(self) -> None:
        patterns = tuple(sorted(set(self.patterns)))  # equal selections compare equal, whatever the order
        globs = [p for p in patterns if is_glob(p)]
        regex = "|".join(f"(?:{fnmatch.translate(g)})" for g in globs)
        object.__setattr__(self, "patterns", patterns)
        object.__setattr__(self, "names", frozenset(p for p in patterns if not is_glob(p)))
        object.__setattr__(self, "glob", re.compile(regex) if globs else None)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, name: str) -> bool:
        """Whether the variable ``name`` (no ``variable_`` prefix) is selected."""
        return name in self.names or (self.glob is not None and self.glob.match(name) is not None)

    def union(self, *others: Selection) -> Selection:
        """A selection of every variable this one or any of ``others`` selects."""
        return Selection(self.patterns + tuple(p for other in others for p in other.patterns))


NO_VARIABLES = Selection()
"""The empty selection: no variable is copied (the default of every reader)."""


def from_event(event: HangupEvent, selection: Selection) -> dict[str, str]:
    """The event's selected variables (decoded values), by sorted name.

    Exact names only: each is looked up directly (a plain event decodes just those values). With a
    glob every header is looked at once.
    """
    headers = event.headers
    if selection.glob is None:
        keys: Iterable[str] = (PREFIX + name for name in selection.names)
    else:
        keys = (key for key in headers if key.startswith(PREFIX) and selection.matches(key[len(PREFIX):]))
    found = {key[len(PREFIX):]: value for key in keys if (value := headers.get(key)) is not None}
    return dict(sorted(found.items()))


def narrow(variables: Mapping[str, str], selection: Selection, max_bytes: int) -> tuple[dict[str, str], bool]:
    """The selected ``variables`` by sorted name, while their names and values total at most
    ``max_bytes`` of UTF-8; and whether any was left out.

    Whole variables only, and the first one that does not fit ends the list: what is kept is always
    a prefix of the selected names in order, so a reader knows every later name was left out.
    """
    kept: dict[str, str] = {}
    total = 0
    for name in sorted(n for n in variables if selection.matches(n)):
        value = variables[name]
        total += utf8_size(name) + utf8_size(value)
        if total > max_bytes:
            return kept, True
        kept[name] = value
    return kept, False


def utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (a lone surrogate counted as its 3 bytes, never an error)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def mask_variables(
    variables: Mapping[str, str], number_names: Selection, hide: Callable[[str], str]
) -> dict[str, str]:
    """A copy of ``variables`` with the values of ``number_names`` hidden (empty values stay empty)."""
    return {name: hide(value) if value and number_names.matches(name) else value
            for name, value in variables.items()}


NUMBER_VARIABLES = Selection((
    # The parties' numbers and names, in every copy FreeSWITCH and its applications keep:
    # caller_id_*, effective_/origination_/outbound_/original_/pre_transfer_caller_id_*,
    # callee_id_*, last_sent_callee_id_* (names are often the number itself, or a person's name,
    # as privacy.NUMBER_FIELDS has them).
    "*caller_id_number", "*caller_id_name", "*callee_id_number", "*callee_id_name",
    "caller_id",  # '"sipp UAC" <5551001>'
    "*destination_number",  # original_destination_number, as the caller dialled it
    "DP_MATCH",  # the dialplan condition's captures: the number dialled, or part of it
    "ani", "aniii", "rdnis", "dialed_user", "dialed_extension", "presence_id", "voicemail_account",
    # The SIP identities sofia records: users, URIs and whole headers carry the numbers.
    "sip_from_user", "sip_from_user_stripped", "sip_from_uri", "sip_from_display", "sip_full_from",
    "sip_to_user", "sip_to_uri", "sip_to_display", "sip_full_to",
    "sip_req_user", "sip_req_uri", "sip_contact_user", "sip_contact_uri", "sip_recover_contact",
    "sip_destination_url", "sip_refer_to", "sip_redirected_to", "sip_redirect_contact_*",
    "sip_redirect_dialstring*",
    "sip_*P-Asserted-Identity", "sip_*P-Preferred-Identity", "sip_*Remote-Party-ID", "sip_*Diversion",
    "sip_*Referred-By", "sip_h_P-Charge-Info",
    # Dial strings, channel names and transfer records name the party they reach:
    # 'sofia/external/5551000@127.0.0.1:5070', 'bl_xfer:7000/public/XML', 'blind:7014'.
    "channel_name", "bridge_channel", "last_arg", "current_application_data", "originated_legs",
    "transfer_history", "transfer_source", "transfer_destination", "transfer_fallback_extension",
))
"""Variables masked like the numbers by default (``[privacy] number_variables`` replaces the list).

Chosen from the real FreeSWITCH 1.10.12 captures (tests/data/fixtures-cdr): every variable whose
value held a caller's or callee's number, user or name there, and the same families' names sofia
and the core set on other calls (P-Asserted-Identity, Remote-Party-ID, Diversion). Globs are used
only where every match carries a party (``*caller_id_number``); the rest are exact, so
``sip_from_host`` or ``sip_to_tag`` stay readable.
"""


def attach(document: Mapping[str, Any], variables: Mapping[str, Any], selection: Selection,
           max_bytes: int) -> dict[str, Any]:
    """A copy of a document with its share of the kept ``variables`` (``selection``, at most
    ``max_bytes``) under ``variables`` (and ``variables_truncated: true`` when the cap cut some off).

    A leg document takes ``variables`` as they are (name -> value); a call document (one with
    ``legs``) takes them by leg id, and each of its legs gets its own share.
    """
    legs = document.get("legs")
    if isinstance(legs, list):
        return {**document, "legs": [
            _attached(leg, variables.get(str(leg.get("id")), {}), selection, max_bytes)
            if isinstance(leg, Mapping) else leg for leg in legs]}
    return _attached(document, variables, selection, max_bytes)


def _attached(document: Mapping[str, Any], variables: Any, selection: Selection,
              max_bytes: int) -> dict[str, Any]:
    kept, cut = narrow(variables if isinstance(variables, Mapping) else {}, selection, max_bytes)
    extra: dict[str, Any] = {"variables": kept}
    if cut:
        extra["variables_truncated"] = True
    return {**document, **extra}
