"""Chromium over secure transports: WSS with a self-signed certificate, and TURN-only rooms.

Reuses tests/test_browser.py's Conference helper and checks. The certificate is trusted the way an
operator would for a test deployment: `--ignore-certificate-errors-spki-list` with the hash of
its public key, nothing broader (a page from any other certificate still fails).
"""

from __future__ import annotations

import base64
import hashlib
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from playwright.async_api import Browser, Page, async_playwright

from signaling.client import KeyroomClient, count_frames
from signaling.media import SyntheticAudioTrack, SyntheticVideoTrack
from tests.conftest import ServerProcess, eventually, stop_server
from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS, Conference, collect_tracks, receives
from tests.test_tls import start_tls_server, trusting, write_self_signed
from tests.test_turn import JoinedServersClient, relay_server, running_coturn, selected_pair_types

pytestmark = pytest.mark.asyncio(loop_scope="module")


class TlsServer(ServerProcess):
    @property
    def http_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/rtc"


def spki_hash(cert_path: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)): what Chromium's SPKI allow-list takes."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("cert"), "keyroom-browser")


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, certificate: tuple[Path, Path]
) -> Iterator[TlsServer]:
    cert, key = certificate
    plain = start_tls_server(tmp_path_factory.mktemp("tls"), cert, key)
    server = TlsServer(port=plain.port, process=plain.process, log_path=plain.log_path)
    try:
        yield server
    finally:
        stop_server(server)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(certificate: tuple[Path, Path]) -> AsyncIterator[Browser]:
    trust = f"--ignore-certificate-errors-spki-list={spki_hash(certificate[0])}"
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_FLAGS, trust]
        )
        try:
            yield chromium
        finally:
            await chromium.close()


class TlsConference(Conference):
    """Python clients trust the test certificate through an `ssl.SSLContext`."""

    def __init__(self, server: TlsServer, browser: Browser, room: str, ssl: ssl.SSLContext):
        super().__init__(server, browser, room)
        self.ssl = ssl

    async def client(self, identity: str, *, publish: bool = False) -> KeyroomClient:
        client = KeyroomClient(
            self.server.ws_url, self.server.token(identity, self.room), ssl=self.ssl
        )
        self.clients.append(client)
        await client.connect()
        if publish:
            await client.publish(SyntheticAudioTrack(), source="microphone", name="mic")
            await client.publish(SyntheticVideoTrack(), source="camera", name="cam")
        return client


async def test_chromium_joins_over_wss_and_exchanges_media_with_python(
    tls_server: TlsServer, browser: Browser, certificate: tuple[Path, Path]
) -> None:
    conference = TlsConference(tls_server, browser, "wss", trusting(certificate[0]))
    try:
        carol = await conference.client("carol", publish=True)
        alice = await conference.page("alice")
        assert alice.url.startswith("https://127.0.0.1:")
        assert (await alice.evaluate("window.keyroom.ws.url")).startswith("wss://")
        await eventually(
            receives(alice, "carol/camera", "carol/microphone"), 10, "alice decodes carol"
        )
        tracks = await collect_tracks(carol, 2, 10)
        assert {(t.participant_identity, t.kind) for t in tracks} == {
            ("alice", "audio"),
            ("alice", "video"),
        }
        for track in tracks:
            assert await count_frames(track.track, 5.0, enough=1) > 0
    finally:
        await conference.close()


# The page's candidates and selected pairs, per peer connection, from getStats().
ICE_JS = """async () => {
  const out = {};
  for (const name of ["publisher", "subscriber"]) {
    const stats = await window.keyroom[name].getStats();
    const local = [], selected = [];
    for (const s of stats.values()) {
      if (s.type === "local-candidate") local.push(s.candidateType);
      if (s.type === "transport" && s.selectedCandidatePairId) {
        const pair = stats.get(s.selectedCandidatePairId);
        selected.push(stats.get(pair.localCandidateId).candidateType);
      }
    }
    out[name] = { local, selected };
  }
  return out;
}"""


async def page_ice(page: Page) -> dict[str, dict[str, list[str]]]:
    result: dict[str, dict[str, list[str]]] = await page.evaluate(ICE_JS)
    return result


async def test_chromium_and_python_connect_through_coturn_only_in_a_relay_only_room(
    browser: Browser, tmp_path: Path
) -> None:
    with running_coturn(tmp_path) as turn_port:
        server = relay_server(tmp_path, turn_port)
        conference = Conference(server, browser, "relay")
        python = JoinedServersClient(server.ws_url, server.token("python", "relay"))
        try:
            await python.connect()
            await python.publish(SyntheticVideoTrack(), source="camera")
            page = await conference.page("chromium")
            await eventually(receives(page, "python/camera"), 15, "the page decodes python")
            tracks = await collect_tracks(python, 2, 10)
            video = next(t for t in tracks if t.kind == "video")
            assert await count_frames(video.track, 5.0, enough=1) > 0

            ice: dict[str, Any] = await page_ice(page)
            for name in ("publisher", "subscriber"):
                assert ice[name]["local"] and set(ice[name]["local"]) == {"relay"}, ice
                assert ice[name]["selected"] == ["relay"], ice
            local, selected = selected_pair_types(python)
            assert local == {"relay"} and selected == "relay"
        finally:
            await conference.close()
            await python.leave()
            stop_server(server)
