"""RED for audio (RFC 2198, `red/48000/2` over Opus) in keyroom's SDP, both ways (text, no aiortc
involvement: aiortc's codec list has no RED).

Publisher: an audio section that offers `a=rtpmap:<r> red/48000/2` with `a=fmtp:<r> <o>/<o>`,
`<o>` the Opus payload type keyroom chose, is answered with RED too, listed first: libwebrtc
sends RED only when it comes first in the answer. Subscriber: keyroom's offers list RED after
Opus in every audio section (the same payload type in all of a connection's offers); a section
whose answer kept it receives RED as the publisher sent it, the others plain Opus.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sfu.sdpinfo import attribute, join_sdp, read_mline, split_sdp

RED = "red/48000/2"
# Chromium's own number for audio RED; any free one where the offer uses it.
PREFERRED_PT = 63
# More blocks than a sane sender puts in one packet: an fmtp listing more is not accepted.
_MAX_FMTP_BLOCKS = 8


def _rtpmaps(lines: list[str]) -> dict[int, str]:
    maps = {}
    for line in lines:
        if line.startswith("a=rtpmap:"):
            pt, _, encoding = line[len("a=rtpmap:") :].partition(" ")
            if pt.isdigit():
                maps[int(pt)] = encoding.strip().lower()
    return maps


def _fmtp(lines: list[str], pt: int) -> str | None:
    prefix = f"a=fmtp:{pt} "
    return next((line[len(prefix) :].strip() for line in lines if line.startswith(prefix)), None)


def _red_over(lines: list[str], red_pt: int) -> int | None:
    """The payload type `red_pt`'s fmtp makes every block of (`<o>/<o>`), None otherwise."""
    value = _fmtp(lines, red_pt)
    if value is None:
        return None
    blocks = value.split("/")
    if len(blocks) > _MAX_FMTP_BLOCKS or not all(b.isdigit() for b in blocks):
        return None
    return int(blocks[0]) if len(set(blocks)) == 1 else None


def offered_red(sdp: str) -> dict[str, tuple[int, int]]:
    """mid -> (RED payload type, the Opus payload type it carries) for each audio section of
    `sdp` (an offer) that offers RED over Opus."""
    found = {}
    _, sections = split_sdp(sdp)
    for lines in sections:
        mline = read_mline(lines[0])
        mid = attribute(lines, "mid")
        if mline.kind != "audio" or mid is None:
            continue
        maps = _rtpmaps(lines)
        for pt, encoding in maps.items():
            inner = _red_over(lines, pt) if encoding == RED else None
            if inner is not None and maps.get(inner, "").startswith("opus/"):
                found[mid] = (pt, inner)
                break
    return found


def _with_red(lines: list[str], red_pt: int, opus_pt: int, first: bool) -> list[str]:
    """An audio section with RED over `opus_pt` added: first or last in the format list, its
    rtpmap and fmtp after the Opus ones."""
    kind, port, proto, formats = read_mline(lines[0])
    formats = [f for f in formats if f != str(red_pt)]
    formats = [str(red_pt), *formats] if first else [*formats, str(red_pt)]
    out = [f"m={kind} {port} {proto} {' '.join(formats)}"]
    added = [f"a=rtpmap:{red_pt} {RED}", f"a=fmtp:{red_pt} {opus_pt}/{opus_pt}"]
    stale = (f"a=rtpmap:{red_pt} ", f"a=fmtp:{red_pt} ")
    rest = [line for line in lines[1:] if not line.startswith(stale)]
    opus_lines = (f"a=rtpmap:{opus_pt} ", f"a=fmtp:{opus_pt} ")
    anchor = max(
        (i for i, line in enumerate(rest) if line.startswith(opus_lines)), default=len(rest) - 1
    )
    return out + rest[: anchor + 1] + added + rest[anchor + 1 :]


def answer_red(answer: str, accepted: dict[str, tuple[int, int]]) -> str:
    """`answer` (keyroom's, to a publisher) with RED first in the audio sections `accepted`
    names (mid -> (RED payload type, Opus payload type)) that answer with that Opus."""
    session, sections = split_sdp(answer)
    out = []
    for lines in sections:
        mline = read_mline(lines[0])
        mid = attribute(lines, "mid")
        chosen = accepted.get(mid or "") if mline.kind == "audio" and mline.port else None
        if chosen is not None and str(chosen[1]) in mline.formats:
            lines = _with_red(lines, chosen[0], chosen[1], first=True)
        out.append(lines)
    return join_sdp(session, out)


def free_payload_type(sdp: str) -> int | None:
    """A payload type no section of `sdp` uses: PREFERRED_PT, else the lowest free dynamic one."""
    _, sections = split_sdp(sdp)
    used = {f for lines in sections for f in read_mline(lines[0]).formats}
    candidates = [PREFERRED_PT, *range(96, 128)]
    return next((pt for pt in candidates if str(pt) not in used), None)


def offer_red(offer: str, red_pt: int) -> str:
    """`offer` (keyroom's, to a subscriber) with RED over Opus as `red_pt` in its audio
    sections that carry Opus."""
    session, sections = split_sdp(offer)
    out = []
    for lines in sections:
        mline = read_mline(lines[0])
        opus = next((pt for pt, e in _rtpmaps(lines).items() if e.startswith("opus/")), None)
        if mline.kind == "audio" and mline.port and opus is not None:
            lines = _with_red(lines, red_pt, opus, first=False)
        out.append(lines)
    return join_sdp(session, out)


def accepted_red(answer: str, red_pt: int) -> dict[str, int]:
    """mid -> the Opus payload type its blocks carry, for each audio section of `answer` (a
    subscriber's) that kept RED as `red_pt`."""
    found = {}
    try:
        _, sections = split_sdp(answer)
        for lines in sections:
            mline = read_mline(lines[0])
            mid = attribute(lines, "mid")
            if mline.kind != "audio" or mid is None or str(red_pt) not in mline.formats:
                continue
            maps = _rtpmaps(lines)
            if maps.get(red_pt) != RED:
                continue
            if _fmtp(lines, red_pt) is None:  # optional (RFC 2198): the section's Opus then
                inner = next((pt for pt, e in maps.items() if e.startswith("opus/")), None)
            else:
                inner = _red_over(lines, red_pt)
            if inner is not None:
                found[mid] = inner
    except ValueError:  # BadSdp included: refused further on
        return {}
    return found


@dataclass
class SubscriberRed:
    """One subscriber connection's RED: whether to offer it (the room's `audio_red`, read at the
    first offer), the payload type every offer then lists, and the sections the last answer
    kept it in (mid -> the subscriber's Opus payload type)."""

    allowed: Callable[[], bool] = lambda: True
    payload_type: int | None = None
    decided: bool = False
    accepted: dict[str, int] = field(default_factory=dict)

    def offer(self, sdp: str) -> str:
        """`sdp` (keyroom's offer) with RED where the connection offers it."""
        if not self.decided:
            self.decided = True
            self.payload_type = free_payload_type(sdp) if self.allowed() else None
        return sdp if self.payload_type is None else offer_red(sdp, self.payload_type)

    def answered(self, answer: str) -> None:
        if self.payload_type is not None:
            self.accepted = accepted_red(answer, self.payload_type)
