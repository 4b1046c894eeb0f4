"""The one SDP reader (sfu.sdpinfo): the server's offer check and the client's section list."""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection, sdp

from sfu.sdpinfo import BadSdp, describe_offer, describe_sections, read_mline
from signaling.media import SyntheticAudioTrack, SyntheticVideoTrack

SESSION = ["v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0"]
TRANSPORT = ["a=ice-ufrag:u", "a=ice-pwd:" + "p" * 22, "a=setup:actpass"]


def offer(*sections: list[str]) -> str:
    lines = list(SESSION)
    for n, section in enumerate(sections):
        lines += [f"m=video 9 UDP/TLS/RTP/SAVPF {96 + n}", *TRANSPORT]
        lines += [f"a=rtpmap:{96 + n} VP8/90000", *section]
    return "\r\n".join(lines) + "\r\n"


async def aiortc_offer() -> str:
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver(SyntheticAudioTrack(), direction="sendonly")
        pc.addTransceiver(SyntheticVideoTrack(), direction="sendonly")
        pc.createDataChannel("_reliable")
        return str((await pc.createOffer()).sdp)
    finally:
        await pc.close()


async def test_an_aiortc_offer_reads_as_aiortc_parses_it() -> None:
    text = await aiortc_offer()
    parsed = sdp.SessionDescription.parse(text).media
    sections = describe_offer(text)
    assert [s.kind for s in sections] == ["audio", "video", "application"]
    for section, media in zip(sections, parsed, strict=True):
        assert section.mid == media.rtp.muxId
        assert section.direction == (media.direction or "sendrecv")
        assert f"{section.stream_id} {section.track_id}" == (media.msid or "None None")
    video = sections[1]
    fid = next(g for g in parsed[1].ssrc_group if g.semantic == "FID")
    assert (video.media_ssrc, video.rtx_ssrc) == (fid.items[0], fid.items[1])
    # The client's list of the same offer says the same.
    infos = describe_sections(text)
    assert [(i.mid, i.kind, i.direction, i.track_id) for i in infos] == [
        (s.mid, s.kind, s.direction, s.track_id) for s in sections
    ]
    assert infos[1].ssrcs == tuple(s.ssrc for s in parsed[1].ssrc)


def test_without_an_fid_group_the_first_ssrc_is_the_media_ssrc() -> None:
    (section,) = describe_offer(offer(["a=mid:0", "a=ssrc:7 cname:x", "a=ssrc:8 cname:x"]))
    assert (section.media_ssrc, section.rtx_ssrc) == (7, None)
    (section,) = describe_offer(offer(["a=mid:0", "a=ssrc-group:FID 5 6", "a=ssrc:5 cname:x"]))
    assert (section.media_ssrc, section.rtx_ssrc) == (5, 6)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("x=0\r\n", "SDP must start with v=0"),
        ("v=0\r\n" + "a=x\r\n" * 20000, "SDP larger than 65536 bytes"),
        ("v=0\r\nm=video x\r\n", "unparsable SDP (AssertionError)"),
        ("\r\n".join(SESSION) + "\r\n", "SDP has no media sections"),
        (offer(*[[f"a=mid:{n}"] for n in range(65)]), "more than 64 media sections"),
        (offer([]), "media section 0 has no a=mid"),
        (offer(["a=mid:0"], ["a=mid:0"]), "duplicate a=mid:0"),
        (offer(["a=mid:0"]).replace("m=video", "m=text"), "unsupported kind 'text'"),
        (offer(["a=mid:0"]).replace("a=setup:actpass\r\n", ""), "lacks ICE or DTLS parameters"),
    ],
)
def test_a_bad_offer_is_refused_with_its_reason(text: str, reason: str) -> None:
    with pytest.raises(BadSdp, match=reason.replace("(", r"\(").replace(")", r"\)")):
        describe_offer(text)


def test_an_attribute_given_twice_counts_as_aiortc_counts_it() -> None:
    # The client's own reader used to take the first a=mid/a=msid and rank directions by name;
    # aiortc, which applies the description, keeps the last of each.
    text = offer(["a=mid:0", "a=mid:1", "a=msid:s1 t1", "a=msid:s2 t2", "a=inactive", "a=sendonly"])
    (info,) = describe_sections(text)
    (media,) = sdp.SessionDescription.parse(text).media
    assert (
        (info.mid, info.stream_id, info.track_id)
        == ("1", "s2", "t2")
        == (
            media.rtp.muxId,
            *str(media.msid).split(),
        )
    )
    assert info.direction == "sendonly" == media.direction
    (info,) = describe_sections(offer(["a=mid:0", "a=mid"]))
    assert info.mid is None


def test_an_msid_names_a_track_only_with_two_parts() -> None:
    # A one- or three-part a=msid names nothing; the SSRC-level msid is read instead.
    for msid in ("a=msid:s1", "a=msid:s1 t1 x"):
        (info,) = describe_sections(offer(["a=mid:0", msid, "a=ssrc:9 msid:s2 t2"]))
        assert (info.stream_id, info.track_id) == ("s2", "t2")
    (info,) = describe_sections(offer(["a=mid:0", "a=msid:s1"]))
    assert (info.stream_id, info.track_id) == (None, None)


def test_a_rejected_section_without_formats_is_read() -> None:
    (info,) = describe_sections("v=0\r\nm=video 0 UDP/TLS/RTP/SAVPF\r\na=mid:1\r\n")
    assert (info.kind, info.port, info.mid, info.has_codecs, info.rejected) == (
        "video",
        0,
        "1",
        False,
        True,
    )
    assert read_mline("m=audio 9/2 RTP/AVP 0  8") == ("audio", 9, "RTP/AVP", ["0", "8"])
