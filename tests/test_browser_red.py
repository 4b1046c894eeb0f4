"""RED for audio with real Chromium (issue 12): negotiated both ways, forwarded as-is to a page,
unwrapped for the Python client; and, through a lossy uplink, what it saves a listener.

Reuses tests/test_browser.py's server, browser and Conference (loopback). The lossy comparison
runs loadtest.redbench on its impaired-network topology, CI-sized (docs/benchmarks.md has the
longer run).
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest

from loadtest import redbench
from signaling.client import count_frames
from tests.admin_helpers import call
from tests.conftest import ServerProcess, eventually
from tests.test_browser import (  # noqa: F401 (the module's fixtures)
    Conference,
    browser,
    collect_tracks,
    conference,
    received,
    receives,
    server,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

TREE = str(Path(__file__).resolve().parents[1])

# The subscriber's answer: the payload types of RED and Opus in its audio section.
ANSWER_JS = """() => {
  const sdp = window.keyroom.subscriber.localDescription?.sdp ?? "";
  const audio = sdp.split("m=").find((s) => s.startsWith("audio")) ?? "";
  return audio;
}"""


def red_counters(process: ServerProcess) -> tuple[float, float]:
    """(RED packets received, malformed RED dropped) from the server's /metrics."""
    with urllib.request.urlopen(process.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    received = re.search(r"^keyroom_rtp_red_received_total (\S+)", text, re.M)
    dropped = re.search(r'keyroom_rtp_packets_dropped_total\{reason="malformed_red"\} (\S+)', text)
    assert received and dropped, text
    return float(received.group(1)), float(dropped.group(1))


async def test_a_red_publisher_reaches_a_red_page_and_a_plain_python_client(
    conference: Conference,  # noqa: F811 (the fixture imported above)
) -> None:
    await conference.page("alice", canPublishSources=["microphone"])
    bob = await conference.page("bob", "&publish=0")
    carol = await conference.client("carol")
    await eventually(receives(bob, "alice/microphone"), 15, "bob hears alice")
    # Chromium sends RED (keyroom's answer listed it first); its getStats names the Opus inside.
    before = red_counters(conference.server)
    # bob's answer kept the RED keyroom offered him, over the Opus of his section.
    section = await bob.evaluate(ANSWER_JS)
    red = re.search(r"a=rtpmap:(\d+) red/48000/2", section)
    opus = re.search(r"a=rtpmap:(\d+) opus/48000/2", section)
    assert red and opus, section
    assert f"a=fmtp:{red.group(1)} {opus.group(1)}/{opus.group(1)}" in section
    got = (await received(bob))["alice/microphone"]
    assert got["samples"] > 0 and got["packets"] > 0, got
    # carol (aiortc: no RED) gets plain Opus, the primary blocks, and decodes it.
    (track,) = await collect_tracks(carol, 1, 10)
    assert track.kind == "audio"
    assert await count_frames(track.track, 2.0, enough=25) >= 25
    received_red, malformed = red_counters(conference.server)
    assert received_red > before[0] > 0 and malformed == 0


async def test_red_saves_a_listener_most_of_a_lossy_uplink() -> None:
    """15 % loss on the publisher's uplink: the RED subscriber conceals far fewer samples than
    the one that answered without RED, the same packets lost for both (under 60 % of them;
    25-35 % measured)."""
    result = await redbench.run(TREE, loss=0.15, seconds=8)
    summary = redbench.table(result, 0.15)
    red, plain = result["red"], result["plain"]
    assert red.lost > 0 and plain.lost > 0, summary  # the uplink lost packets for both
    assert red.samples > 0.8 * plain.samples, summary
    assert red.concealed_ratio < 0.6 * plain.concealed_ratio, summary


async def test_a_room_with_audio_red_off_negotiates_no_red_either_way(
    conference: Conference,  # noqa: F811 (the fixture imported above)
) -> None:
    process = conference.server
    creator = process.token("ops", room=conference.room, grants={"roomCreate": True})
    body = {"name": conference.room, "limits": {"audio_red": False}}
    assert (await call(process, "POST", "/api/rooms", creator, body))[0] == 201
    alice = await conference.page("alice", canPublishSources=["microphone"])
    bob = await conference.page("bob", "&publish=0")
    await eventually(receives(bob, "alice/microphone"), 15, "bob hears alice")
    answer = await alice.evaluate("window.keyroom.publisher.remoteDescription.sdp")
    offer = await bob.evaluate("window.keyroom.subscriber.remoteDescription.sdp")
    assert "a=rtpmap:111 opus/48000/2" in answer and "red/48000" not in answer, answer
    assert "opus/48000/2" in offer and "red/48000" not in offer, offer
