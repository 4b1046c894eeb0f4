"""Fuzzing the signaling frame codec (signaling/codec.py).

`decode` turns any bytes or text into a typed client message or raises `MessageError` with a
code the protocol knows, a message, and the frame's `req` when it can be read: never anything
else. A frame that is valid but for one field is refused naming that field. `encode` writes every
server message so that it reads back the same.
"""

from __future__ import annotations

import json
from typing import Any, get_args

import msgspec
from hypothesis import event, given
from hypothesis import strategies as st
from msgspec import UNSET, inspect

from signaling import codec
from signaling.codec import MessageError
from signaling.messages import (
    CLIENT_MESSAGES,
    MAX_REQ,
    AnyClientMessage,
    AnyServerMessage,
    ClientMessage,
)
from tests.fuzzing import fuzz

# PROTOCOL 2.8: the error codes a client may be sent.
ERROR_CODES = {
    "unauthorized", "forbidden", "room_full", "limit_exceeded", "invalid_message", "not_found",
    "conflict", "rate_limited", "server_full", "internal",
}  # fmt: skip

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
# JSON a server writes: integers within what msgspec encodes (64 bits).
SERVER_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def readable_req(frame: object) -> int | None:
    req = frame.get("req") if isinstance(frame, dict) else None
    return req if type(req) is int and 0 <= req < MAX_REQ else None


def decoded(data: str | bytes) -> AnyClientMessage | MessageError:
    """`decode`'s result, or the MessageError it raised (checked); nothing else may escape."""
    try:
        message = codec.decode(data)
    except MessageError as exc:
        assert exc.code in ERROR_CODES and exc.message and str(exc) == exc.message
        assert exc.req is None or (type(exc.req) is int and 0 <= exc.req < MAX_REQ)
        event(f"refused: {exc.message.split(' ')[0][:24]}")
        return exc
    assert isinstance(message, ClientMessage)
    event(f"decoded: {type(message).__name__}")
    return message


@fuzz(300)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_message_error(data: bytes) -> None:
    decoded(data)


@fuzz(300)
@given(st.text(max_size=200))
def test_any_text_decodes_or_raises_message_error(text: str) -> None:
    decoded(text)


@fuzz(300)
@given(st.one_of(JSON, st.dictionaries(st.sampled_from(["type", "req", "sdp", "token"]), JSON)))
def test_any_json_value_decodes_or_raises_message_error(value: Any) -> None:
    result = decoded(json.dumps(value))
    if isinstance(result, MessageError):
        assert result.req == readable_req(value)


# -- valid frames, one field replaced --------------------------------------------------------------

VALID_FIELDS: dict[str, dict[str, Any]] = {
    "join": {"token": "t.t.t", "protocol": 1, "auto_subscribe": True, "client": {"sdk": "x"}},
    "resume": {"resume_token": "abc", "protocol": 1},
    "add_track": {"cid": "c1", "kind": "video", "source": "camera", "name": "cam", "muted": False,
                  "simulcast": []},
    "offer": {"target": "publisher", "sdp": "v=0"},
    "answer": {"target": "subscriber", "sdp": "v=0"},
    "trickle": {"target": "publisher", "candidate": {"candidate": ""}},
    "unpublish": {"track_sid": "TR_1"},
    "mute": {"track_sid": "TR_1", "muted": True},
    "subscribe": {"track_sids": ["TR_1"], "subscribe": True},
    "set_quality": {"track_sid": "TR_1", "quality": "low"},
    "refresh": {"token": "t.t.t"},
    "update_metadata": {"metadata": "{}", "name": "Alice"},
    "ice_restart": {},
    "ping": {},
    "leave": {},
}  # fmt: skip


def test_every_client_message_has_a_valid_frame_here() -> None:
    assert set(VALID_FIELDS) == set(CLIENT_MESSAGES)
    for kind, fields in VALID_FIELDS.items():
        assert isinstance(
            codec.decode(json.dumps({"type": kind, "req": 1, **fields})), ClientMessage
        )


@st.composite
def frames_with_one_field_replaced(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    kind = draw(st.sampled_from(sorted(VALID_FIELDS)))
    frame: dict[str, Any] = {"type": kind, **VALID_FIELDS[kind]}
    if draw(st.booleans()):
        frame["req"] = draw(st.integers(0, MAX_REQ - 1))
    name = draw(st.sampled_from([*frame, "req", "unknown"]))
    if draw(st.integers(0, 5)) == 0:
        frame.pop(name, None)
    else:
        frame[name] = draw(JSON)
    return frame, name


@fuzz(500)
@given(frames_with_one_field_replaced())
def test_a_frame_wrong_in_one_field_is_refused_naming_it(case: tuple[dict[str, Any], str]) -> None:
    frame, name = case
    result = decoded(json.dumps(frame))
    if not isinstance(result, MessageError):
        # Accepted: the value was one the schema allows, and it reads back as sent.
        if name in frame and name not in ("type", "unknown"):
            assert msgspec.to_builtins(result).get(name, UNSET) in (frame[name], UNSET)
        return
    assert result.req == readable_req(frame)
    if name in ("type", "req"):
        return
    kind = frame["type"]
    assert f"{kind}.{name} must be" in result.message or (
        result.message == f"{kind}: missing field {name!r}"
    ), (frame, result.message)


# -- server messages round-trip --------------------------------------------------------------------


def strategy_for(kind: inspect.Type) -> st.SearchStrategy[Any]:  # noqa: C901
    """Values of a server message field's type, as the server could fill it."""
    if isinstance(kind, inspect.StrType):
        return st.text(max_size=20)
    if isinstance(kind, inspect.BoolType):
        return st.booleans()
    if isinstance(kind, inspect.IntType):
        return st.integers(-(2**63), 2**63 - 1)
    if isinstance(kind, inspect.FloatType):
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(kind, inspect.NoneType):
        return st.none()
    if isinstance(kind, inspect.LiteralType):
        return st.sampled_from(kind.values)
    if isinstance(kind, inspect.UnionType):
        return st.one_of(*(strategy_for(t) for t in kind.types))
    if isinstance(kind, inspect.ListType):
        return st.lists(strategy_for(kind.item_type), max_size=3)
    if isinstance(kind, inspect.DictType):
        return st.dictionaries(st.text(max_size=8), SERVER_JSON, max_size=4)
    if isinstance(kind, inspect.StructType):
        return struct_strategy(kind)
    raise AssertionError(f"no strategy for {kind}")


def struct_strategy(kind: inspect.StructType) -> st.SearchStrategy[Any]:
    """A struct with its required fields, and any of its optional ones (left out: UNSET)."""
    required = {f.name: strategy_for(f.type) for f in kind.fields if f.required}
    optional = {f.name: strategy_for(f.type) for f in kind.fields if not f.required}
    cls = kind.cls
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: cls(**kw))


SERVER_TYPES = get_args(AnyServerMessage)
SERVER_MESSAGES = st.one_of(*(strategy_for(inspect.type_info(t)) for t in SERVER_TYPES))


@fuzz(500)
@given(SERVER_MESSAGES)
def test_every_server_message_reads_back_as_sent(message: Any) -> None:
    text = codec.encode(message)
    assert msgspec.json.decode(text, type=AnyServerMessage) == message
    frame = json.loads(text)
    assert frame["type"] == type(message).__struct_config__.tag
    assert ("req" in frame) == (message.req is not None)
    event(frame["type"])


def test_every_server_message_type_is_covered() -> None:
    tags = {t.__struct_config__.tag for t in SERVER_TYPES}
    assert len(tags) == len(SERVER_TYPES) >= 17
