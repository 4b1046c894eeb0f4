"""Names and metadata: control, ANSI and bidi characters refused (frames) or removed (tokens)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from auth.displaytext import cleaned, problem
from auth.keys import KeyTable
from auth.tokens import TokenVerifier, mint_token
from signaling.messages import UpdateMetadata
from signaling.state import ServerState
from tests.conftest import KEY_ID, SECRET
from tests.signaling_helpers import NOW, WALL, close_all, join, make_state


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


# -- where names and metadata come in ---------------------------------------------------------


def test_token_names_and_metadata_lose_control_characters() -> None:
    verifier = TokenVerifier(KeyTable.from_secrets({KEY_ID: SECRET}), max_ttl=3600)
    token = mint_token(
        key_id=KEY_ID, secret=SECRET, identity="mallory", room="r", ttl=60, now=time.time(),
        name="\x1b[2Jadmin\u202e", metadata='{"a":\n"\x07b"}',
    )  # fmt: skip
    claims = verifier.verify_join(token, time.time())
    assert (claims.name, claims.metadata) == ("[2Jadmin", '{"a":\n"b"}')


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[ServerState]:
    state = make_state(tmp_path)
    yield state
    await close_all(state)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "ann\x1b[31m"}, "name contains the control character U+001B"),
        ({"name": "\u202eann"}, "name contains the control character U+202E"),
        ({"metadata": "\x00"}, "metadata contains the control character U+0000"),
    ],
)
async def test_update_metadata_refuses_control_characters(
    state: ServerState, fields: dict[str, str], message: str
) -> None:
    ann, wire, _ = join(state, "ann", grants={"canUpdateOwnMetadata": True})
    await ann.handle(UpdateMetadata(req=7, **fields), NOW, WALL)
    assert wire.of_type("error")[-1] == {
        "type": "error", "code": "invalid_message", "message": message, "req": 7
    }  # fmt: skip
    await ann.handle(UpdateMetadata(req=8, name="Ann", metadata='{"x":\n1}'), NOW, WALL)
    assert {"type": "ok", "req": 8} in wire.frames
