"""Export: a decrypted recording remuxed by PyAV into WebM/Matroska/Ogg, without re-encoding.

Each track's frames are placed on one wall clock: its RTP timestamps mapped through the
publisher's sender reports (NTP time <-> RTP time), else through the arrival of its first
packet; the earliest frame of the recording is time zero, so audio and video keep the offset
they had when they were sent. Tracks of an end-to-end encrypted room hold ciphertext frames:
export refuses them unless given the room's E2EE passphrase, and then decrypts each frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import orjson

from sfu.recording.container import NOTE, RTP, SENDER_REPORT, SENDER_REPORT_BODY, TRACK, Record
from sfu.recording.depacketize import Depacketized, Frame, opus_frames, vp8_frames, vp8_size

NTP_UNIX_OFFSET = 2208988800
CODECS = {"video/vp8": "vp8", "audio/opus": "opus"}
AUDIO_ONLY = (".ogg", ".opus")


class ExportError(Exception):
    pass


@dataclass
class TrackData:
    info: dict[str, Any]
    packets: list[bytes] = field(default_factory=list)
    first_arrival: float | None = None
    sender_report: tuple[int, int] | None = None  # the first one: (NTP, RTP timestamp)

    @property
    def kind(self) -> str:
        return str(self.info.get("kind"))

    @property
    def clock_rate(self) -> int:
        return int(self.info.get("clock_rate") or (90000 if self.kind == "video" else 48000))


@dataclass
class ExportReport:
    streams: list[dict[str, Any]]
    stopped: str | None


def collect(records: Iterable[Record]) -> tuple[dict[int, TrackData], str | None]:
    tracks: dict[int, TrackData] = {}
    stopped = None
    for record in records:
        if record.kind == TRACK:
            tracks[record.track] = TrackData(orjson.loads(record.body))
        elif record.kind == RTP and record.track in tracks:
            track = tracks[record.track]
            if track.first_arrival is None:
                track.first_arrival = record.arrival
            track.packets.append(record.body)
        elif record.kind == SENDER_REPORT and record.track in tracks:
            track = tracks[record.track]
            if track.sender_report is None and len(record.body) == SENDER_REPORT_BODY.size:
                track.sender_report = SENDER_REPORT_BODY.unpack(record.body)
        elif record.kind == NOTE:
            stopped = orjson.loads(record.body).get("stopped")
    return tracks, stopped


def _frames(track: TrackData) -> Depacketized:
    mime = str(track.info.get("mime_type", "")).lower()
    if mime == "video/vp8":
        return vp8_frames(track.packets)
    if mime == "audio/opus":
        return opus_frames(track.packets)
    raise ExportError(f"track {track.info.get('sid')}: cannot export {mime or 'unknown codec'}")


def _wall(track: TrackData, frames: list[Frame]) -> float:
    """Wall time of the first frame."""
    first = frames[0].timestamp
    if track.sender_report is not None:
        ntp, rtp = track.sender_report
        ntp_unix = (ntp >> 32) - NTP_UNIX_OFFSET + (ntp & 0xFFFFFFFF) / 2**32
        delta = (first - rtp + 2**31) % 2**32 - 2**31
        return ntp_unix + delta / track.clock_rate
    return track.first_arrival or 0.0


def _decrypt(track: TrackData, frames: list[Frame], cryptor: Any) -> list[Frame]:
    from signaling.client.e2ee import E2EEError

    identity = str(track.info.get("participant", {}).get("identity", ""))
    out = []
    for frame in frames:
        try:
            data = cryptor.decrypt(identity, track.kind, frame.data)
        except E2EEError:
            continue
        out.append(Frame(frame.timestamp, data, frame.keyframe))
    return out


def export(
    tracks: dict[int, TrackData], output: str, *, cryptor: Any = None
) -> list[dict[str, Any]]:
    """Write `output`; one line per stream: kind, frames, start offset (s), dropped frames."""
    audio_only = output.lower().endswith(AUDIO_ONLY)
    chosen = [t for t in tracks.values() if t.packets and not (audio_only and t.kind == "video")]
    encrypted = [t for t in chosen if t.info.get("encryption") == "e2ee"]
    if encrypted and cryptor is None:
        raise ExportError(
            "this recording holds end-to-end encrypted media: the server never had its key;"
            " give the room's E2EE passphrase (--e2ee-passphrase) to decrypt it"
        )
    prepared, skipped = [], []
    for track in chosen:
        result = _frames(track)
        frames = result.frames
        if track.info.get("encryption") == "e2ee":
            frames = _decrypt(track, frames, cryptor)
            if not frames:  # another key (a participant with another passphrase)
                skipped.append({**_line(track, 0, 0.0, 0), "skipped": "no frame decrypts"})
                continue
        if track.kind == "video":
            while frames and not frames[0].keyframe:
                frames.pop(0)  # a decoder starts at a keyframe
        if frames:
            prepared.append((track, frames, result.dropped, _wall(track, frames)))
    if not prepared:
        why = " (no frame decrypts with this E2EE key)" if skipped else ""
        raise ExportError(f"no exportable media in this recording{why}")
    prepared = _from_first_picture(_best_layers(prepared))
    start = min(p[3] for p in prepared)
    summary = []
    with av.open(output, "w") as container:
        # Every stream exists before the first packet goes in (the header is written then).
        streams = [_stream(container, track, frames) for track, frames, _d, _w in prepared]
        for stream, (track, frames, dropped, wall) in zip(streams, prepared, strict=True):
            summary.append(_mux(container, stream, track, frames, wall - start, dropped))
    return summary + skipped


Prepared = tuple[TrackData, list[Frame], int, float]  # track, frames, dropped, first wall time


def _best_layers(prepared: list[Prepared]) -> list[Prepared]:
    """A simulcast track was recorded layer by layer: keep, per track, its highest layer that
    has pictures (layers are numbered lowest quality first)."""
    best: dict[str, Prepared] = {}
    for entry in prepared:
        info = entry[0].info
        key = str(info.get("sid", id(entry)))
        kept = best.get(key)
        if kept is None or int(info.get("layer", 0)) > int(kept[0].info.get("layer", 0)):
            best[key] = entry
    return list(best.values())


def _from_first_picture(prepared: list[Prepared]) -> list[Prepared]:
    """Audio before the first video keyframe is cut, so the file starts with a picture and its
    streams start together (video waits for a keyframe after the recording began)."""
    walls = [wall for track, _f, _d, wall in prepared if track.kind == "video"]
    if not walls:
        return prepared
    begin = min(walls)
    out = []
    for track, frames, dropped, wall in prepared:
        first = frames[0].timestamp
        kept = [f for f in frames if wall + (f.timestamp - first) / track.clock_rate >= begin]
        if kept:
            out.append(
                (track, kept, dropped, wall + (kept[0].timestamp - first) / track.clock_rate)
            )
    return out


def _stream(container: Any, track: TrackData, frames: list[Frame]) -> Any:
    mime = str(track.info.get("mime_type", "")).lower()
    # Streams without an encoder: the packets go in as they are.
    if mime == "video/vp8":
        width, height = vp8_size(frames[0].data) or (640, 480)
        stream = container.add_mux_stream("vp8", width=width, height=height)
    else:
        # Opus needs its OpusHead in the container: the (unused) encoder context writes it.
        stream = container.add_stream("libopus", rate=48000)
    stream.time_base = Fraction(1, track.clock_rate)
    return stream


def _mux(
    container: Any,
    stream: Any,
    track: TrackData,
    frames: list[Frame],
    offset: float,
    dropped: int,
) -> dict[str, Any]:
    rate = track.clock_rate
    time_base = Fraction(1, rate)
    base = frames[0].timestamp - round(offset * rate)
    for frame in frames:
        packet = av.Packet(frame.data)
        packet.stream = stream
        packet.time_base = time_base
        packet.pts = packet.dts = frame.timestamp - base
        packet.is_keyframe = frame.keyframe
        container.mux(packet)
    return _line(track, len(frames), offset, dropped)


def _line(track: TrackData, frames: int, offset: float, dropped: int) -> dict[str, Any]:
    mime = str(track.info.get("mime_type", "")).lower()
    return {
        "sid": track.info.get("sid"),
        "kind": track.kind,
        "identity": track.info.get("participant", {}).get("identity"),
        "codec": CODECS.get(mime, mime),
        "frames": frames,
        "start": round(offset, 3),
        "dropped": dropped,
    }
