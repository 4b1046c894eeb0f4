"""Chromium as the benchmarks and tests run it (Debian's package, Playwright driving it)."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
# Headless in a throw-away namespace: no sandbox, GPU, QUIC or background traffic; a fake camera
# and microphone granted without asking; media plays without a user gesture.
BASE_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
