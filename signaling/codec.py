"""The JSON wire format of the signaling messages: pure, no I/O.

A valid frame decodes to its typed message in one pass, in C. Only a frame that fails is looked
at again, slowly, to name what is wrong the way a client developer can act on: the frame's `req`
is echoed when it can be read, the field and the shape it must have are named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin, get_type_hints

import msgspec
from msgspec import inspect

from signaling.messages import CLIENT_MESSAGES, MAX_REQ, AnyClientMessage, ServerMessage


class MessageError(Exception):
    """A frame the protocol refuses: `code` is the protocol error code."""

    def __init__(self, code: str, message: str, req: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.req = req


_decoder = msgspec.json.Decoder(AnyClientMessage)
_encoder = msgspec.json.Encoder()
_FIELD = re.compile(r"at `\$\.(\w+)")
_MISSING = re.compile(r"missing required field `(\w+)`")


def decode(data: str | bytes) -> AnyClientMessage:
    """Decode and validate one client frame; unknown fields are ignored (forward compatible)."""
    try:
        return _decoder.decode(data)
    except msgspec.MsgspecError:
        pass
    raise _explain(data)


def encode(message: ServerMessage | Mapping[str, Any]) -> str:
    return _encoder.encode(message).decode()


def _explain(data: str | bytes) -> MessageError:
    """Why `data` is not a valid client frame, checked in the order a reader would."""
    try:
        frame = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return MessageError("invalid_message", "frame is not valid JSON")
    if not isinstance(frame, dict):
        return MessageError("invalid_message", "frame must be a JSON object")
    req = frame.get("req")
    if req is not None and not (type(req) is int and 0 <= req < MAX_REQ):
        return MessageError("invalid_message", "req must be a non-negative integer")
    kind = frame.get("type")
    if not isinstance(kind, str):
        return MessageError("invalid_message", "frame has no string 'type'", req)
    cls = CLIENT_MESSAGES.get(kind)
    if cls is None:
        return MessageError("invalid_message", f"unknown frame type {kind[:64]!r}", req)
    # Fields in the schema's order: the first one that is wrong is the one named.
    names = cls.__struct_fields__
    try:
        msgspec.convert({n: frame[n] for n in names if n in frame}, cls)
    except msgspec.ValidationError as exc:
        return MessageError("invalid_message", _field_error(kind, cls, str(exc)), req)
    return MessageError("invalid_message", "frame is not valid", req)


def _field_error(kind: str, cls: type[msgspec.Struct], error: str) -> str:
    missing = _MISSING.search(error)
    if missing is not None:
        return f"{kind}: missing field {missing.group(1)!r}"
    found = _FIELD.search(error)
    name = found.group(1) if found is not None else "?"
    fields = {f.name: f.type for f in inspect.type_info(cls).fields}  # type: ignore[attr-defined]
    choices = _choices(get_type_hints(cls).get(name))
    if choices:
        shape = "one of " + ", ".join(repr(v) for v in choices)
    else:
        shape = describe(fields[name]) if name in fields else "valid"
    return f"{kind}.{name} must be {shape}"


def _choices(hint: Any) -> tuple[Any, ...]:
    """A Literal's values in the order written (msgspec's schema sorts them)."""
    if get_origin(hint) is Literal:
        return get_args(hint)
    return next((c for c in map(_choices, get_args(hint)) if c), ())


def describe(kind: inspect.Type) -> str:
    """A field's type in words, from its schema (`a string of 1..256 characters`)."""
    if isinstance(kind, inspect.StrType):
        return f"a string of {kind.min_length or 0}..{kind.max_length} characters"
    if isinstance(kind, inspect.ListType):
        if isinstance(kind.item_type, inspect.StrType):
            return f"a list of at most {kind.max_length} non-empty strings"
        return "a list"
    words = {inspect.BoolType: "a boolean", inspect.IntType: "an integer"}
    return words.get(type(kind), "an object")
