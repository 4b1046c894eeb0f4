"""Puts the remote-candidate policy (sfu/candidates.py) and the media-source guard on a
participant's peer connections.

The policy is process-wide like the gathering addresses (sfu/iceaddr.py): `configure` runs once
at start-up from the `[rtc]` and `[turn]` options, `use_audit` once the server's audit log is open;
each participant's guards read them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from aiortc import RTCPeerConnection

from auth.audit import AuditLog
from sfu import internals
from sfu.candidates import CandidatePolicy, RemoteCandidateGuard, governing_setting

_policy = CandidatePolicy()
# Until the server's own log is set: records go to the `keyroom.audit` logger only.
_audit = AuditLog(None)


def configure(policy: CandidatePolicy) -> None:
    global _policy
    _policy = policy


def use_audit(audit: AuditLog) -> None:
    global _audit
    _audit = audit


def guard_peer_connections(
    participant_sid: str,
    relay_only: Callable[[], bool],
    pcs: dict[str, RTCPeerConnection],
    drops: Counter[str],
    refusals: list[str] | None = None,
) -> None:
    """One guard of each kind per connection; `pcs` maps a label (publisher/subscriber) to its
    PC; datagrams from unverified sources are counted in `drops` (`Stats.dropped`). Each
    refusal's governing setting is appended to `refusals` (for the client, if the PC fails)."""
    for label, pc in pcs.items():

        def refused(reason: str, address: str, label: str = label) -> None:
            setting = governing_setting(reason, address, _policy)
            _audit.record(
                "ice_refused",
                participant=participant_sid,
                pc=label,
                reason=reason,
                address=address,
                setting=setting,
            )
            if refusals is not None and setting not in refusals:
                refusals.append(setting)

        internals.guard_remote_candidates(pc, RemoteCandidateGuard(_policy, relay_only, refused))
        internals.guard_media_sources(pc, drops)
