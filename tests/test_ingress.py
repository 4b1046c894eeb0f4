"""A publisher's RTP demux without sockets: SSRC table, MID-extension learning, drop accounting."""

from __future__ import annotations

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from sfu.forwarder import AUDIO_LEVEL, SDES_MID, CodecInfo, PublishedTrack
from sfu.ingress import MAX_FORGOTTEN_SSRCS, Ingress
from sfu.stats import DropReason, Stats

EXTENSIONS = {3: SDES_MID, 4: AUDIO_LEVEL}


def packet(ssrc: int, mid: str | None = None, seq: int = 1, payload_type: int = 96) -> bytes:
    rtp = RtpPacket(payload_type=payload_type, sequence_number=seq, timestamp=0, ssrc=ssrc)
    rtp.payload = b"\x00" * 20
    rtp.extensions.mid = mid
    ext_map = HeaderExtensionsMap()
    ext_map.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=i, uri=u) for i, u in EXTENSIONS.items()
            ]
        )
    )
    return rtp.serialize(ext_map)


def published(sid: str, kind: str = "video") -> PublishedTrack:
    return PublishedTrack(
        sid=sid, cid=sid, kind=kind, source="camera", name="", publisher_sid="PA_p"
    )


VP8 = CodecInfo(mime_type="video/VP8", clock_rate=90000, payload_type=96)


def test_announced_ssrcs_are_forwarded_and_the_rest_counted_by_reason() -> None:
    stats = Stats()
    track = published("TR_v")
    tracks = {track.sid: track}
    ingress = Ingress(tracks, stats)
    ingress.bind(track, "0", 1111, 2222, VP8, dict(EXTENSIONS))
    assert track.mid == "0" and track.codec is VP8 and track.audio_level_id == 4

    ingress.on_rtp(packet(1111))
    ingress.on_rtp(packet(2222))  # the publisher's RTX: known, never forwarded
    ingress.on_rtp(packet(3333))  # announced nowhere, and no MID to learn it from
    ingress.on_rtp(b"\x80\x60")
    assert track.counters.packets_in == 1 and stats.packets_in == 1
    assert stats.dropped[DropReason.NOT_GRANTED.value] == 1
    assert stats.dropped[DropReason.UNKNOWN_SSRC.value] == 1
    assert stats.dropped[DropReason.MALFORMED.value] == 1

    del tracks[track.sid]
    ingress.forget(track)
    ingress.on_rtp(packet(1111))  # unpublished: "not granted", not "unknown"
    assert stats.dropped[DropReason.NOT_GRANTED.value] == 2 and stats.packets_in == 1


def test_an_ssrc_without_a_ssrc_line_is_learnt_from_the_mid_extension_once() -> None:
    stats = Stats()
    track = published("TR_v")
    ingress = Ingress({track.sid: track}, stats)
    ingress.bind(track, "1", None, None, VP8, dict(EXTENSIONS))
    ingress.on_rtp(packet(5555, mid="0"))  # a MID nothing is bound to
    assert stats.dropped[DropReason.UNKNOWN_SSRC.value] == 1
    ingress.on_rtp(packet(5555, mid="1", seq=2))
    assert track.ssrc == 5555 and stats.packets_in == 1
    ingress.on_rtp(packet(5555, seq=3))  # later packets need no MID
    ingress.on_rtp(packet(6666, mid="1"))  # the MID is taken: a second SSRC is not learnt
    assert stats.packets_in == 2 and stats.dropped[DropReason.UNKNOWN_SSRC.value] == 2


def test_an_rtx_stream_naming_the_mid_is_not_learnt_as_the_media() -> None:
    """Simulcast offers by rid carry no SSRCs: Chromium's RTX padding probes name the MID
    before the media does (LiveKit's JS SDK publishes so)."""
    stats = Stats()
    track = published("TR_v")
    ingress = Ingress({track.sid: track}, stats)
    rtx_vp8 = CodecInfo(mime_type="video/VP8", clock_rate=90000, payload_type=96,
                        rtx_payload_type=97)  # fmt: skip
    ingress.bind(track, "1", None, None, rtx_vp8, dict(EXTENSIONS))
    ingress.on_rtp(packet(7777, mid="1", payload_type=97))
    assert track.ssrc is None and stats.packets_in == 0
    ingress.on_rtp(packet(5555, mid="1", seq=2))
    assert track.ssrc == 5555 and stats.packets_in == 1


def test_a_churning_publisher_grows_no_table() -> None:
    """Unpublished SSRCs are remembered (their late packets are `no_right`), the latest only."""
    stats = Stats()
    tracks: dict[str, PublishedTrack] = {}
    ingress = Ingress(tracks, stats)
    for n in range(500):
        track = published(f"TR_{n}")
        tracks[track.sid] = track
        ingress.bind(track, str(n), 10_000 + n, None, VP8, dict(EXTENSIONS))
        del tracks[track.sid]
        ingress.forget(track)
    assert len(ingress._tracks_by_ssrc) <= MAX_FORGOTTEN_SSRCS
    ingress.on_rtp(packet(10_499))  # the latest: still known
    ingress.on_rtp(packet(10_000))  # long gone: unknown now
    assert stats.dropped[DropReason.NOT_GRANTED.value] == 1
    assert stats.dropped[DropReason.UNKNOWN_SSRC.value] == 1
