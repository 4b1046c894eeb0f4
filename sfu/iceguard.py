"""Puts the remote-candidate policy (sfu/candidates.py) on a participant's peer connections.

The policy is process-wide like the gathering addresses (sfu/iceaddr.py): `configure` runs once
at start-up from the `[rtc]` and `[turn]` options; each participant's guards read it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiortc import RTCPeerConnection

from sfu import internals
from sfu.candidates import CandidatePolicy, RemoteCandidateGuard

# The audit log proper comes with its own issue; refusals go to this logger meanwhile.
audit = logging.getLogger("keyroom.audit")

_policy = CandidatePolicy()


def configure(policy: CandidatePolicy) -> None:
    global _policy
    _policy = policy


def guard_peer_connections(
    participant_sid: str, relay_only: Callable[[], bool], pcs: dict[str, RTCPeerConnection]
) -> None:
    """One guard per connection; `pcs` maps a label (publisher/subscriber) to its PC."""
    for label, pc in pcs.items():

        def refused(reason: str, address: str, label: str = label) -> None:
            audit.warning(
                "ice_refused participant=%s pc=%s reason=%s address=%s",
                participant_sid,
                label,
                reason,
                address,
            )

        internals.guard_remote_candidates(pc, RemoteCandidateGuard(_policy, relay_only, refused))
