"""Names and metadata that other participants' screens and operators' terminals show.

Control characters (ANSI escapes start with ESC) can rewrite an operator's terminal or a log
viewer, and bidirectional overrides make "alice\u202egnp.exe" read as another name. Both are
refused in what a client or admin sends (`problem`), and removed from what a token carries
(`cleaned`: the application minted the token, its user cannot fix it). Tab and line breaks stay
allowed in metadata, which is often JSON or text.
"""

from __future__ import annotations

import unicodedata

# Bidirectional embeddings, overrides, isolates and marks.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
METADATA_WHITESPACE = frozenset("\t\n\r")


def _refused(char: str, allowed: frozenset[str]) -> bool:
    if char in allowed:
        return False
    return char in BIDI_CONTROLS or unicodedata.category(char) == "Cc"


def check(text: str, max_bytes: int, *, metadata: bool = False) -> str | None:
    """Why `text` cannot be a name (or metadata): too long, or a refused character; else None."""
    if len(text.encode()) > max_bytes:
        return f"over {max_bytes} bytes"
    return problem(text, metadata=metadata)


def problem(text: str, *, metadata: bool = False) -> str | None:
    """Why `text` cannot be shown as a name (or metadata), or None if it can."""
    allowed = METADATA_WHITESPACE if metadata else frozenset()
    for char in text:
        if _refused(char, allowed):
            return f"contains the control character U+{ord(char):04X}"
    return None


def cleaned(text: str, *, metadata: bool = False) -> str:
    """`text` without the characters `problem` refuses."""
    allowed = METADATA_WHITESPACE if metadata else frozenset()
    return "".join(char for char in text if not _refused(char, allowed))
