"""Text the hub stores: the one rule for every string field, whichever surface sent it."""
from __future__ import annotations

import unicodedata

#: The API's limit for an adapter's description, wherever it comes from (metadata, README).
MAX_DESCRIPTION = 10_000
_LINE_BREAKS = "\n\t\r"


def unstorable_char(value: str, *, multiline: bool = False) -> str | None:
    """The first character of `value` the hub refuses to store, or None.

    PostgreSQL's text cannot hold NUL (SQLite can, so the backends would disagree), a lone
    surrogate has no UTF-8 encoding at all, and other control characters only disguise
    text on a terminal or a web page. Newlines and tabs pass in `multiline` fields.
    """
    for char in value:
        if unicodedata.category(char) in ("Cc", "Cs") and not (
                multiline and char in _LINE_BREAKS):
            return char
    return None


def describe_char(char: str) -> str:
    """A refused character as a reader can see it: it has no glyph to print."""
    kind = "a lone surrogate" if unicodedata.category(char) == "Cs" else "a control character"
    return f"U+{ord(char):04X} ({kind})"
