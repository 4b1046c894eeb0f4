"""Validation of client frames (PROTOCOL section 2): pure, no I/O.

Each request type lists its fields and their types; a frame that breaks them raises FrameError
carrying the protocol error code and a message a client developer can act on.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_REQ = 2**53


class FrameError(Exception):
    def __init__(self, code: str, message: str, req: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.req = req


def _str(max_len: int, min_len: int = 0) -> Any:
    def check(value: Any) -> bool:
        return isinstance(value, str) and min_len <= len(value) <= max_len

    check.__doc__ = f"a string of {min_len}..{max_len} characters"
    return check


def _bool(value: Any) -> bool:
    return isinstance(value, bool)


_bool.__doc__ = "a boolean"


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_int.__doc__ = "an integer"


def _one_of(*options: str) -> Any:
    def check(value: Any) -> bool:
        return value in options

    check.__doc__ = "one of " + ", ".join(repr(o) for o in options)
    return check


def _dict(value: Any) -> bool:
    return isinstance(value, dict)


_dict.__doc__ = "an object"


def _str_list(max_items: int) -> Any:
    def check(value: Any) -> bool:
        return (
            isinstance(value, list)
            and len(value) <= max_items
            and all(isinstance(v, str) and 0 < len(v) <= 256 for v in value)
        )

    check.__doc__ = f"a list of at most {max_items} non-empty strings"
    return check


def _list(value: Any) -> bool:
    return isinstance(value, list)


_list.__doc__ = "a list"

SDP = _str(64 * 1024, 1)
TARGET = _one_of("publisher", "subscriber")

# type -> {field: (required, check)}
SCHEMAS: dict[str, dict[str, tuple[bool, Any]]] = {
    "join": {
        "token": (True, _str(64 * 1024, 1)),
        "protocol": (False, _int),
        "auto_subscribe": (False, _bool),
        "client": (False, _dict),
    },
    "resume": {"resume_token": (True, _str(512, 1)), "protocol": (False, _int)},
    "add_track": {
        "cid": (True, _str(256, 1)),
        "kind": (True, _one_of("audio", "video")),
        "source": (False, _one_of("camera", "microphone", "screen_share", "screen_share_audio")),
        "name": (False, _str(256)),
        "muted": (False, _bool),
        "simulcast": (False, _list),
    },
    "offer": {"target": (True, _one_of("publisher")), "sdp": (True, SDP)},
    "answer": {"target": (True, _one_of("subscriber")), "sdp": (True, SDP)},
    "trickle": {"target": (True, TARGET), "candidate": (True, _dict)},
    "unpublish": {"track_sid": (True, _str(64, 1))},
    "mute": {"track_sid": (True, _str(64, 1)), "muted": (True, _bool)},
    "subscribe": {"track_sids": (True, _str_list(256)), "subscribe": (False, _bool)},
    "set_quality": {
        "track_sid": (True, _str(64, 1)),
        "quality": (True, _one_of("low", "medium", "high")),
    },
    "refresh": {"token": (True, _str(64 * 1024, 1))},
    "update_metadata": {"metadata": (False, _str(64 * 1024)), "name": (False, _str(1024))},
    "ping": {},
    "leave": {},
}


def parse_frame(text: str | bytes) -> dict[str, Any]:
    """Decode and validate one client frame; unknown fields are ignored (forward compatible)."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise FrameError("invalid_message", "frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise FrameError("invalid_message", "frame must be a JSON object")
    req = frame.get("req")
    if req is not None and not (_int(req) and 0 <= req < MAX_REQ):
        raise FrameError("invalid_message", "req must be a non-negative integer")
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise FrameError("invalid_message", "frame has no string 'type'", req)
    schema = SCHEMAS.get(kind)
    if schema is None:
        raise FrameError("invalid_message", f"unknown frame type {kind[:64]!r}", req)
    for name, (required, check) in schema.items():
        if name not in frame:
            if required:
                raise FrameError("invalid_message", f"{kind}: missing field {name!r}", req)
            continue
        if not check(frame[name]):
            raise FrameError("invalid_message", f"{kind}.{name} must be {check.__doc__}", req)
    return frame
