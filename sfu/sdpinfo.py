"""What a publisher's offer says about its media sections (pure: SDP text in, dataclasses out)."""

from __future__ import annotations

from dataclasses import dataclass

from aiortc import sdp

MAX_SDP_BYTES = 64 * 1024
MAX_SECTIONS = 64


class BadSdp(ValueError):
    """The SDP cannot be parsed or breaks a keyroom rule; the message says which."""


@dataclass(frozen=True)
class MediaSection:
    index: int
    kind: str
    mid: str
    direction: str
    stream_id: str | None
    track_id: str | None
    media_ssrc: int | None
    rtx_ssrc: int | None


def describe_offer(text: str) -> list[MediaSection]:
    """Parse an offer and list its sections; raise BadSdp with a precise reason."""
    if not isinstance(text, str) or not text.startswith("v=0"):
        raise BadSdp("SDP must start with v=0")
    if len(text.encode()) > MAX_SDP_BYTES:
        raise BadSdp(f"SDP larger than {MAX_SDP_BYTES} bytes")
    try:
        description = sdp.SessionDescription.parse(text)
    except Exception as exc:  # aiortc's parser raises assorted errors on bad input
        raise BadSdp(f"unparsable SDP ({type(exc).__name__})") from None
    if not description.media:
        raise BadSdp("SDP has no media sections")
    if len(description.media) > MAX_SECTIONS:
        raise BadSdp(f"more than {MAX_SECTIONS} media sections")
    sections = []
    mids: set[str] = set()
    for index, media in enumerate(description.media):
        mid = media.rtp.muxId
        if not mid:
            raise BadSdp(f"media section {index} has no a=mid")
        if mid in mids:
            raise BadSdp(f"duplicate a=mid:{mid}")
        mids.add(mid)
        if media.kind not in ("audio", "video", "application"):
            raise BadSdp(f"media section {index} has unsupported kind {media.kind!r}")
        if media.kind != "application" and not (
            media.ice and media.ice.usernameFragment and media.dtls
        ):
            raise BadSdp(f"media section {index} lacks ICE or DTLS parameters")
        stream_id, track_id = _msid(media)
        media_ssrc, rtx_ssrc = _ssrcs(media)
        sections.append(
            MediaSection(
                index=index,
                kind=media.kind,
                mid=mid,
                direction=media.direction or "sendrecv",
                stream_id=stream_id,
                track_id=track_id,
                media_ssrc=media_ssrc,
                rtx_ssrc=rtx_ssrc,
            )
        )
    return sections


def _msid(media: sdp.MediaDescription) -> tuple[str | None, str | None]:
    if media.msid:
        parts = media.msid.split()
        if len(parts) == 2:
            return parts[0], parts[1]
    for ssrc in media.ssrc:
        if ssrc.msid:
            parts = ssrc.msid.split()
            if len(parts) == 2:
                return parts[0], parts[1]
    return None, None


def _ssrcs(media: sdp.MediaDescription) -> tuple[int | None, int | None]:
    for group in media.ssrc_group:
        if group.semantic == "FID" and len(group.items) == 2:
            return int(group.items[0]), int(group.items[1])
    if media.ssrc:
        return int(media.ssrc[0].ssrc), None
    return None, None
