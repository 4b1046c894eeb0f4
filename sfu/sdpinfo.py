"""What an SDP says about its media sections (pure: SDP text in, dataclasses out).

The one reader of m= sections, for the server (`describe_offer`: a publisher's offer, checked) and
the Python client (`describe_sections`: any description, rejected sections included). It reads an
attribute the way aiortc, which applies the description, reads it: a section starts at each
`m=` line, and where an attribute that aiortc keeps once (mid, msid, direction) appears twice,
the last one counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from aiortc import sdp

MAX_SDP_BYTES = 64 * 1024
MAX_SECTIONS = 64
# Simulcast layers one video section may offer (Chromium and LiveKit send at most three).
MAX_SIMULCAST_LAYERS = 3
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
# RFC 8851: a rid-id is alpha-numeric plus "-" and "_"; kept short, it travels in every packet.
MAX_RID_LENGTH = 16
# RIDs whose meaning is known, lowest quality first (Chromium/LiveKit "q"uarter, "h"alf, "f"ull).
_KNOWN_RID_ORDER = ("q", "h", "f")

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class BadSdp(ValueError):
    """The SDP cannot be parsed or breaks a keyroom rule; the message says which."""


@dataclass(frozen=True)
class SimulcastOffer:
    """A section's `a=simulcast:send` layers (RFC 8853), lowest quality first, and the header
    extension ids that name a packet's layer (RID) and a repair stream's layer."""

    rids: tuple[str, ...]
    rid_ext: int | None
    repaired_rid_ext: int | None


@dataclass(frozen=True)
class MediaSection:
    """A section of a publisher's offer, as the server binds it to a track."""

    index: int
    kind: str
    mid: str
    direction: str
    stream_id: str | None
    track_id: str | None
    media_ssrc: int | None
    rtx_ssrc: int | None
    simulcast: SimulcastOffer | None = None


@dataclass(frozen=True)
class MediaSectionInfo:
    """What one m= section of an SDP says (see `describe_sections`)."""

    index: int
    kind: str
    port: int
    mid: str | None
    direction: str
    stream_id: str | None
    track_id: str | None
    ssrcs: tuple[int, ...]
    has_codecs: bool
    # The `a=ssrc-group:FID <media> <rtx>` pair, if the section has one.
    fid: tuple[int, int] | None = None

    @property
    def rejected(self) -> bool:
        """Port 0, or an inactive media section: the other side sends nothing here."""
        return self.port == 0 or (self.kind != "application" and self.direction == "inactive")


class MLine(NamedTuple):
    kind: str
    port: int
    proto: str
    formats: list[str]


def split_sdp(text: str) -> tuple[list[str], list[list[str]]]:
    """The session lines, and the lines of each m= section (its m= line first)."""
    session: list[str] = []
    sections: list[list[str]] = []
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            session.append(line)
    return session, sections


def join_sdp(session: list[str], sections: list[list[str]]) -> str:
    return "\r\n".join(session + [line for section in sections for line in section]) + "\r\n"


def attribute(lines: list[str], name: str) -> str | None:
    """The value of the last `a=<name>` line: None if there is none, or if it has no value."""
    value = None
    for line in lines:
        if line.startswith("a="):
            found, colon, text = line[2:].partition(":")
            if found == name:
                value = text if colon else None
    return value


def read_mline(line: str) -> MLine:
    """`m=<kind> <port>[/<count>] <proto> <format>...`; ValueError if it is not one."""
    kind, port, proto, *rest = line[2:].split(" ", 3)
    return MLine(kind, int(port.split("/")[0]), proto, rest[0].split() if rest else [])


def describe_sections(text: str) -> list[MediaSectionInfo]:
    """List the m= sections of `text` with their mid, direction, msid and SSRCs.

    The msid comes from `a=msid:<stream> <track>`, else from the first SSRC's
    `a=ssrc:<n> msid:<stream> <track>`; one without exactly these two parts names nothing. In a
    keyroom subscriber offer the stream id is the publisher's participant sid and the track id
    the track sid. Raises ValueError on an m= line or an SSRC that is not one.
    """
    return [_describe(index, lines) for index, lines in enumerate(split_sdp(text)[1])]


def _describe(index: int, lines: list[str]) -> MediaSectionInfo:
    mline = read_mline(lines[0])
    ssrc_msids = _ssrc_msids(lines)
    stream_id, track_id = _msid([attribute(lines, "msid"), *ssrc_msids.values()])
    return MediaSectionInfo(
        index=index,
        kind=mline.kind,
        port=mline.port,
        mid=attribute(lines, "mid"),
        direction=_direction(lines),
        stream_id=stream_id,
        track_id=track_id,
        ssrcs=tuple(ssrc_msids),
        has_codecs=any(line.startswith("a=rtpmap:") for line in lines),
        fid=_fid(lines),
    )


def _ssrc_msids(lines: list[str]) -> dict[int, str | None]:
    """Each SSRC in order of first mention, with its (last) `msid:` attribute."""
    ssrcs: dict[int, str | None] = {}
    for line in lines:
        if line.startswith("a=ssrc:"):
            ssrc_text, _, rest = line[len("a=ssrc:") :].partition(" ")
            ssrc = int(ssrc_text)
            ssrcs.setdefault(ssrc, None)
            if rest.startswith("msid:"):
                ssrcs[ssrc] = rest[len("msid:") :]
    return ssrcs


def _msid(candidates: list[str | None]) -> tuple[str | None, str | None]:
    for msid in candidates:
        parts = msid.split() if msid else []
        if len(parts) == 2:
            return parts[0], parts[1]
    return None, None


def _direction(lines: list[str]) -> str:
    named = [line[2:].split(":", 1)[0] for line in lines if line.startswith("a=")]
    return next((name for name in reversed(named) if name in DIRECTIONS), "sendrecv")


def _fid(lines: list[str]) -> tuple[int, int] | None:
    for line in lines:
        if line.startswith("a=ssrc-group:"):
            semantic, *items = line[len("a=ssrc-group:") :].split()
            ssrcs = [int(item) for item in items]
            if semantic == "FID" and len(ssrcs) == 2:
                return ssrcs[0], ssrcs[1]
    return None


def describe_offer(text: str) -> list[MediaSection]:
    """Parse an offer and list its sections; raise BadSdp with a precise reason."""
    if not isinstance(text, str) or not text.startswith("v=0"):
        raise BadSdp("SDP must start with v=0")
    if len(text.encode()) > MAX_SDP_BYTES:
        raise BadSdp(f"SDP larger than {MAX_SDP_BYTES} bytes")
    try:
        # aiortc's parse is the gate: what it cannot parse, the offer cannot be applied with.
        description = sdp.SessionDescription.parse(text)
        infos = describe_sections(text)
    except Exception as exc:  # aiortc's parser raises assorted errors on bad input
        raise BadSdp(f"unparsable SDP ({type(exc).__name__})") from None
    if not infos:
        raise BadSdp("SDP has no media sections")
    if len(infos) > MAX_SECTIONS:
        raise BadSdp(f"more than {MAX_SECTIONS} media sections")
    mids: set[str] = set()
    # Both split at the same m= lines, so the lists pair up.
    for info, media in zip(infos, description.media, strict=True):
        _check_section(info, media, mids)
    _check_bundle(description, mids)
    sections = split_sdp(text)[1]
    return [
        _offered(info, read_simulcast(lines)) for info, lines in zip(infos, sections, strict=True)
    ]


def read_simulcast(lines: list[str]) -> SimulcastOffer | None:
    """The simulcast layers a section offers to send; None without `a=simulcast:send`.
    Raises BadSdp for more than MAX_SIMULCAST_LAYERS, a duplicate or malformed RID, or a layer
    `a=simulcast` names that no `a=rid:<id> send` declares."""
    value = attribute(lines, "simulcast")
    if value is None:
        return None
    direction, _, alternatives = value.strip().partition(" ")
    if direction != "send" or not alternatives:
        raise BadSdp(f"a=simulcast:{value} is not a send simulcast keyroom can receive")
    declared = _send_rids(lines)
    # Each ";" entry is one layer; "," separates alternatives of it: the first is taken, and a
    # leading "~" (initially paused) is irrelevant to a receiver.
    rids = [entry.split(",")[0].lstrip("~") for entry in alternatives.split(";")]
    if len(rids) > MAX_SIMULCAST_LAYERS:
        raise BadSdp(f"more than {MAX_SIMULCAST_LAYERS} simulcast layers")
    for rid in rids:
        if rid not in declared:
            raise BadSdp(f"a=simulcast names rid {rid!r}, which no a=rid:{rid} send declares")
    if len(set(rids)) != len(rids):
        raise BadSdp("a=simulcast names a rid twice")
    if set(rids) <= set(_KNOWN_RID_ORDER):
        rids.sort(key=_KNOWN_RID_ORDER.index)
    rid_ext = extmap_id(lines, RID_URI)
    if rid_ext is None:
        # Without the RID in the packets, nothing tells keyroom which layer an SSRC carries.
        raise BadSdp("a=simulcast without the rtp-stream-id header extension")
    return SimulcastOffer(tuple(rids), rid_ext, extmap_id(lines, REPAIRED_RID_URI))


def _send_rids(lines: list[str]) -> list[str]:
    """The RIDs `a=rid:<id> send` declares, in order."""
    declared: list[str] = []
    for line in lines:
        if line.startswith("a=rid:"):
            rid, _, rest = line[len("a=rid:") :].partition(" ")
            if rest.split(" ", 1)[0] != "send":
                continue
            _check_rid(rid)
            if rid in declared:
                raise BadSdp(f"duplicate a=rid:{rid}")
            declared.append(rid)
    return declared


def _check_rid(rid: str) -> None:
    if not (0 < len(rid) <= MAX_RID_LENGTH and rid.replace("-", "").replace("_", "").isalnum()):
        raise BadSdp(f"malformed rid {rid[:MAX_RID_LENGTH]!r}")
    if not rid.isascii():
        raise BadSdp("malformed rid (not ASCII)")


def extmap_id(lines: list[str], uri: str) -> int | None:
    for line in lines:
        if line.startswith("a=extmap:"):
            ident, _, rest = line[len("a=extmap:") :].partition(" ")
            if rest.split(" ")[0] == uri:
                number = ident.split("/")[0]
                if not (number.isdigit() and 1 <= int(number) <= 255):
                    raise BadSdp(f"malformed a=extmap for {uri}")
                return int(number)
    return None


def _check_bundle(description: sdp.SessionDescription, mids: set[str]) -> None:
    # aiortc bundles every section onto the transport of the group's first mid: a mid that names
    # no section leaves them on no transport, and its connect task fails.
    for group in description.group:
        missing = [str(mid) for mid in group.items if str(mid) not in mids]
        if group.semantic == "BUNDLE" and missing:
            raise BadSdp(f"a=group:BUNDLE names mid {missing[0]!r}, which no media section has")


def _check_section(info: MediaSectionInfo, media: sdp.MediaDescription, mids: set[str]) -> None:
    if not info.mid:
        raise BadSdp(f"media section {info.index} has no a=mid")
    if info.mid in mids:
        raise BadSdp(f"duplicate a=mid:{info.mid}")
    mids.add(info.mid)
    if info.kind not in ("audio", "video", "application"):
        raise BadSdp(f"media section {info.index} has unsupported kind {info.kind!r}")
    # aiortc's view of the transport: it includes session-level ICE and DTLS attributes.
    if info.kind != "application" and not (media.ice and media.ice.usernameFragment and media.dtls):
        raise BadSdp(f"media section {info.index} lacks ICE or DTLS parameters")


def _offered(info: MediaSectionInfo, simulcast: SimulcastOffer | None) -> MediaSection:
    media_ssrc, rtx_ssrc = info.fid or ((info.ssrcs[0], None) if info.ssrcs else (None, None))
    return MediaSection(
        index=info.index,
        kind=info.kind,
        mid=info.mid or "",
        direction=info.direction,
        stream_id=info.stream_id,
        track_id=info.track_id,
        media_ssrc=media_ssrc,
        rtx_ssrc=rtx_ssrc,
        simulcast=simulcast if info.kind == "video" else None,
    )
