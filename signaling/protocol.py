"""The wire protocol's constants, shared by the server and the Python client.

One place for what both ends must agree on: the protocol version, close codes (PROTOCOL 2.7 and
2.8), which refusal and leave reason closes with which code, and the data channel labels.
"""

from __future__ import annotations

from typing import Any

PROTOCOL_VERSION = 1
# Close codes of PROTOCOL 2.7 / 2.8.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_PROTOCOL = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_ROOM_FULL = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_JOIN_TIMEOUT = 4408
CLOSE_CONFLICT = 4409
CLOSE_REMOVED = 4410
# The client did not read what the server sent: its outbox overflowed (signaling/outbox.py).
CLOSE_TOO_SLOW = 4413
CLOSE_RATE_LIMITED = 4429
CLOSE_SERVER_FULL = 4503

JOIN_REFUSAL_CLOSE = {
    "unauthorized": CLOSE_UNAUTHORIZED,
    "room_full": CLOSE_ROOM_FULL,
    "conflict": CLOSE_CONFLICT,
    "not_found": CLOSE_NOT_FOUND,
    "server_full": CLOSE_SERVER_FULL,
    "rate_limited": CLOSE_RATE_LIMITED,
}
LEAVE_CLOSE = {
    "removed": CLOSE_REMOVED,
    "revoked": CLOSE_REMOVED,
    "token_expired": CLOSE_UNAUTHORIZED,
    "duplicate_identity": CLOSE_CONFLICT,
    "room_closed": CLOSE_NORMAL,
    "server_shutdown": CLOSE_GOING_AWAY,
    "too_slow": CLOSE_TOO_SLOW,
}

# Label -> RTCPeerConnection.createDataChannel keyword arguments (PROTOCOL 2.5).
DATA_CHANNELS: dict[str, dict[str, Any]] = {
    "_reliable": {"ordered": True},
    "_lossy": {"ordered": False, "maxRetransmits": 0},
}
