"""Transport-wide congestion control in the subscriber's SDP (text, no aiortc involvement).

aiortc neither offers nor understands the transport-cc extension, so keyroom adds it to the
subscriber offer it sends (`a=extmap` in every audio and video section, one id for all, as
BUNDLE requires, and `a=rtcp-fb:<pt> transport-cc` for each media payload type) and reads the
answer itself: the subscriber accepted it when its answer's audio or video sections carry the
extension with that id. aiortc's own state never learns of it; keyroom's rewriter writes the
element and the sink stamps it (sfu/twcc.py).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from sfu.sdpinfo import extmap_id, join_sdp, read_mline, split_sdp
from sfu.twcc import URI

_MEDIA = ("audio", "video")


@dataclass
class TransportCcState:
    """One subscriber connection's transport-cc: whether to offer it (the room's `transport_cc`),
    the id its offers carry, the id its first answer accepted, and whether that answer came (it
    settles the connection: a down-track configured without the slot must never meet a stamping
    sink)."""

    allowed: Callable[[], bool] = lambda: True
    offered: int | None = None
    accepted: int | None = None
    decided: bool = False


def offer_transport_cc(
    sdp: str, reserved: Collection[int] = (), ext_id: int | None = None
) -> tuple[str, int | None]:
    """`sdp` (an offer) with transport-cc added to its media sections, and the extension id:
    `ext_id` where the connection settled one, else the lowest one-byte id (1..14) that neither
    the offer nor `reserved` (the ids later sections will carry, sfu/internals) uses: a first
    offer with audio alone must not take the id a video section added later gives another
    extension (the rewriter refuses that down-track, and the subscriber never decodes it).
    Unchanged and None when no id is free, or `ext_id` is taken by another extension."""
    session, sections = split_sdp(sdp)
    used = {
        int(line[len("a=extmap:") :].split(" ")[0].split("/")[0])
        for section in sections
        for line in section
        if line.startswith("a=extmap:")
        and line[len("a=extmap:") :].split(" ")[0][:1].isdigit()
        and not line.endswith(f" {URI}")
    }
    if ext_id is not None:
        chosen = ext_id if ext_id not in used else None
    else:
        chosen = next((n for n in range(1, 15) if n not in used and n not in reserved), None)
    if chosen is None:
        return sdp, None
    for section in sections:
        mline = read_mline(section[0])
        if mline.kind not in _MEDIA:
            continue
        rtx = {
            line[len("a=rtpmap:") :].split(" ")[0]
            for line in section
            if line.startswith("a=rtpmap:") and " rtx/" in line.lower()
        }
        added = [f"a=extmap:{chosen} {URI}"]
        added += [f"a=rtcp-fb:{pt} transport-cc" for pt in mline.formats if pt not in rtx]
        # After the last attribute of its kind, or at the end: aiortc writes no order that
        # matters here, and browsers accept the attributes anywhere in the section.
        section.extend(added)
    return join_sdp(session, sections), chosen


def has_media(answer: str) -> bool:
    """Whether `answer` has an audio or video section: only such an answer settles transport-cc
    (one with a data channel alone, as a first subscriber's in an empty room, says nothing)."""
    try:
        _, sections = split_sdp(answer)
        return any(read_mline(section[0]).kind in _MEDIA for section in sections)
    except ValueError:  # BadSdp included
        return True  # refused further on; nothing to wait for


def accepted_transport_cc(answer: str, ext_id: int) -> bool:
    """Whether `answer` accepted transport-cc with `ext_id` in its audio or video sections."""
    try:
        _, sections = split_sdp(answer)
        return any(
            extmap_id(section, URI) == ext_id
            for section in sections
            if read_mline(section[0]).kind in _MEDIA
        )
    except ValueError:  # BadSdp included
        return False
