"""ICE restart on a connected aioice connection (aiortc and aioice have no code for it).

A restart changes the ICE credentials on both sides and keeps DTLS and SRTP. aiortc reads the
local credentials from the aioice connection each time it writes a description, and ignores the
remote ones of a later description, so the restart is two swaps on the live connection:
- `renew_local_credentials`: a new ufrag/password before keyroom writes its offer or answer;
- `adopt_remote_credentials`: the peer's new ones from its offer or answer.
The peer's checks on its new path then reach aioice, which pairs the new (peer-reflexive)
address, checks it with the new password and nominates it (as controlled agent on the peer's
USE-CANDIDATE, as controlling agent by its aggressive nomination). Media follows the nominated
pair (sfu/internals/egress.py and ingress.py read it per packet), consent checks too.
"""

from __future__ import annotations

import aioice.ice
from aioice.utils import random_string
from aiortc import RTCPeerConnection

from sfu.internals.peerconnection import bundle_transport
from sfu.internals.sharedport import follow_local_ufrag


def _connection(pc: RTCPeerConnection) -> aioice.ice.Connection | None:
    dtls = bundle_transport(pc)
    return None if dtls is None else dtls.transport._connection


def ice_credentials(sdp: str) -> tuple[str, str] | None:
    """The first `a=ice-ufrag` / `a=ice-pwd` of a description (bundle: one pair for all)."""
    ufrag = pwd = None
    for line in sdp.splitlines():
        if ufrag is None and line.startswith("a=ice-ufrag:"):
            ufrag = line[len("a=ice-ufrag:") :].strip()
        elif pwd is None and line.startswith("a=ice-pwd:"):
            pwd = line[len("a=ice-pwd:") :].strip()
    return (ufrag, pwd) if ufrag and pwd else None


def renew_local_credentials(pc: RTCPeerConnection) -> bool:
    connection = _connection(pc)
    if connection is None or connection.remote_username is None:
        return False  # not started: the first description carries fresh credentials anyway
    connection._local_username = random_string(4)
    connection._local_password = random_string(22)
    follow_local_ufrag(connection)
    return True


def adopt_remote_credentials(pc: RTCPeerConnection, sdp: str) -> bool:
    """Take the peer's credentials from `sdp` if they changed (the peer restarted ICE)."""
    connection = _connection(pc)
    credentials = ice_credentials(sdp)
    if connection is None or credentials is None or connection.remote_username is None:
        return False
    if credentials == (connection.remote_username, connection.remote_password):
        return False
    connection.remote_username, connection.remote_password = credentials
    return True
