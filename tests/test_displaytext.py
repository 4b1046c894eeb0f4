"""Names and metadata: control, ANSI and bidi characters refused (frames) or removed (tokens)."""

from __future__ import annotations

import pytest

from auth.displaytext import cleaned, problem


@pytest.mark.parametrize(
    "text",
    ["\x1b[31mroot\x1b[0m", "alice\u202egnp.exe", "a\x00b", "bell\x07", "\u2066x\u2069", "c1\x9b"],
)
def test_controls_ansi_and_bidi_are_refused_in_names(text: str) -> None:
    assert problem(text) is not None
    assert problem(cleaned(text)) is None


@pytest.mark.parametrize("text", ["Zoë", "李雷", "محمد", "👨\u200d👩\u200d👧", "O'Brien - ops"])
def test_ordinary_names_in_any_script_pass(text: str) -> None:
    assert problem(text) is None and cleaned(text) == text


def test_metadata_keeps_tabs_and_line_breaks_only() -> None:
    assert problem('{"a":\n\t1}\r\n', metadata=True) is None
    assert problem("line\nbreak") is not None  # not in a name
    assert problem("\x1b]0;pwned\x07", metadata=True) == "contains the control character U+001B"
    assert cleaned("x\x1b[2Jy\n", metadata=True) == "x[2Jy\n"
