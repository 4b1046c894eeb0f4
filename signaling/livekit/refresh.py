"""`SignalResponse.refresh_token` for a LiveKit session: sent after the join, after each change
of the participant's rights and after its own metadata update (auth/refreshed.py mints it; its
limits are there)."""

from __future__ import annotations

from livekit.protocol import rtc

from auth.refreshed import refreshed_token
from signaling.session import Session


def refresh_response(session: Session, wall: float) -> rtc.SignalResponse | None:
    """The refreshed token for `session` now, audited; None when none can be minted."""
    participant, claims = session.participant, session.claims
    if participant is None or claims is None:
        return None
    verifier = session.state.verifier
    token = None
    # The participant's current name and metadata; if they make the token larger than keyroom
    # admits (max_token_bytes), the application's own.
    for name, metadata in (
        (participant.name, participant.metadata),
        (claims.name, claims.metadata),
    ):
        token = refreshed_token(
            claims, participant.grant, verifier.keys, wall, name=name, metadata=metadata
        )
        if token is None or len(token) <= verifier.max_token_bytes:
            break
        token = None
    if token is None:
        return None
    session.state.audit.record(
        "token_refreshed", room=claims.room, identity=claims.identity,
        participant=participant.sid, key_id=claims.key_id,
    )  # fmt: skip
    return rtc.SignalResponse(refresh_token=token)
