"""Congestion control towards a transport-cc subscriber (sfu/congestion.py) recovering from an
estimate that came out low, fed synthetic transport feedback with time passed in.

The flake that kept `transport_cc` off by default had another cause (sfu/twccsdp.py), but the
traces of the loaded runs showed this one too: a stall of a loaded machine reads as a queue,
the first delay-based estimate is what arrived meanwhile (tens of kbit/s), and every video of
the subscriber is paused. Nothing then flows to show the link is fine, so it is up to the
probes: a paused single-layer video must come back (with a keyframe request) and stay.
"""

from __future__ import annotations

from sfu.congestion import Congestion
from sfu.forwarder import SDES_MID, DownTrack, PublishedTrack
from sfu.twcc import PacketResult
from tests.sink_helpers import ListSink

VIDEO = 500_000  # each single-layer camera's bit/s
AUDIO = 40_000
PACKET = 1_200


def subscription(kind: str, bitrate: int, name: str) -> DownTrack:
    track = PublishedTrack(
        sid=f"TR_{name}", cid=name, kind=kind, source="camera", name="", publisher_sid="PA"
    )
    track.bitrate = bitrate
    down = DownTrack(track, "PA_s")
    down.configure(
        sink=ListSink(), out_ssrc=9, mid="0", payload_types={96: 96}, extensions={SDES_MID: 1}
    )
    track.down_tracks.append(down)
    return down


class Subscriber:
    """A paced subscriber of `audios` audio and `videos` single-layer video tracks (VIDEO bit/s
    each) on a link of `capacity` bit/s (a FIFO queue): what keyroom sends each 100 ms, the
    transport feedback on it, and the keyframes requested."""

    def __init__(self, capacity: float, videos: int = 1, audios: int = 1) -> None:
        self.capacity = capacity
        self.videos = [subscription("video", VIDEO, f"v{n}") for n in range(videos)]
        self.audios = [subscription("audio", AUDIO, f"a{n}") for n in range(audios)]
        self.congestion = Congestion({d.track.sid: d for d in self.videos + self.audios})
        self.congestion.paced = True
        self.keyframes: list[tuple[float, str]] = []
        self.sequence = 0
        self.free_at = 0.0

    def step(self, now: float) -> None:
        """100 ms: send (video unless paused, the probe's padding), feedback, react, tick."""
        sent = [(down, AUDIO * 0.1 / 8) for down in self.audios]
        for down in self.videos:
            if not down.paused:
                padding = down.padding * PACKET * (VIDEO * 0.1 / 8 / PACKET)
                down.padding_sent += int(padding)
                sent.append((down, VIDEO * 0.1 / 8 + padding))
        results = []
        for down, size in sent:
            assert down.rewriter is not None
            packets = max(1, int(size) // PACKET)
            down.rewriter.octets += int(size)
            down.rewriter.packets += packets
            for n in range(packets):
                send = now - 0.1 + n * 0.1 / packets
                leaves = max(send, self.free_at) + PACKET * 8 / self.capacity
                self.free_at = leaves
                arrival = int((leaves + 0.02) * 1e6)
                results.append(PacketResult(self.sequence, send, PACKET, arrival))
                self.sequence += 1
        results.sort(key=lambda r: r.send_time)
        self.congestion.on_transport_feedback(results, now)
        changed = self.congestion.react(now)
        if round(now * 10) % 10 == 0:
            changed += self.congestion.tick(now)
        self.keyframes += [(now, down.track.sid) for down in changed]


def run(subscriber: Subscriber, start: float, seconds: float) -> list[int]:
    """How many videos flowed at each 100 ms step."""
    flowing = []
    for n in range(1, int(seconds * 10) + 1):
        subscriber.step(start + n / 10)
        flowing.append(sum(not down.paused for down in subscriber.videos))
    return flowing


def stall(subscriber: Subscriber, estimate: int, now: float, lossy: bool = True) -> None:
    """A stall of the loaded machine: the first estimate is what arrived meanwhile; `lossy`:
    with it two receiver reports over 10 % loss, which make the link `congested` (a flowing
    video is paused only then, sfu/allocator.py)."""
    estimator = subscriber.congestion.estimator
    estimator.on_delay_based(estimate, now)
    for _ in range(2 if lossy else 0):
        estimator.on_loss(0.3, estimate, now)
    subscriber.congestion.reallocate(now)


def test_a_low_estimate_without_loss_does_not_pause_a_flowing_video() -> None:
    subscriber = Subscriber(capacity=5_000_000)
    run(subscriber, 0.0, 2.0)
    stall(subscriber, 50_000, 2.0, lossy=False)
    assert not subscriber.videos[0].paused
    assert all(run(subscriber, 2.0, 10.0))


def test_a_single_layer_video_paused_by_an_early_low_estimate_comes_back_and_stays() -> None:
    subscriber = Subscriber(capacity=5_000_000)
    run(subscriber, 0.0, 2.0)
    stall(subscriber, 50_000, 2.0)
    assert subscriber.videos[0].paused
    flowing = run(subscriber, 2.0, 30.0)
    back = flowing.index(1)
    assert back <= 60, back  # within 6 s
    assert subscriber.keyframes[0][0] <= 2.0 + (back + 1) / 10  # resumed with a keyframe
    assert all(flowing[back + 30 :]), flowing  # and it stays


def test_every_video_of_a_room_comes_back_whatever_the_audio_reserve() -> None:
    """Three others in the room (three audio tracks reserved, three videos): the probes must
    ask for what the next video needs on top of the audio and the videos already flowing."""
    subscriber = Subscriber(capacity=10_000_000, videos=3, audios=3)
    run(subscriber, 0.0, 2.0)
    stall(subscriber, 60_000, 2.0)
    assert not any(run(subscriber, 2.0, 0.1))
    flowing = run(subscriber, 2.1, 40.0)
    assert 3 in flowing, flowing
    assert all(n == 3 for n in flowing[flowing.index(3) + 30 :]), flowing
