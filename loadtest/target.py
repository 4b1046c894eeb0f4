"""The server a load test drives: its address, a key to mint tokens with, how to reach it."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from auth.tokens import mint_token
from loadtest import looptrace
from loadtest.clients import LoadClient
from loadtest.histogram import (
    FORWARD_METRIC,
    RECEIVE_TO_SEND_METRIC,
    ForwardHistogram,
    gc_pauses,
)
from loadtest.spawn import free_port, spawned
from signaling.client import KeyroomClient

OVERFLOWS_METRIC = "keyroom_shared_port_receive_overflows_total"


def counter(text: str, name: str) -> float | None:
    """An unlabelled sample's value in an exposition (None if absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@dataclass
class ServerSnapshot:
    """What one scrape of the server's `/metrics` said (None / empty: unreadable or absent)."""

    forward: ForwardHistogram | None
    received: ForwardHistogram | None
    gc: dict[str, ForwardHistogram]
    trace: looptrace.Counters
    # keyroom_shared_port_receive_overflows_total (None: not on this server's /metrics).
    overflows: float | None = None


@dataclass
class Target:
    url: str  # ws://host:port/rtc
    key: str
    secret: str
    pid: int | None  # the server's, for CPU/RSS sampling
    dev: bool  # /debug/runtime is available
    name: str = "keyroom"
    # How a participant talks to this server (a baseline's adapter, else keyroom's client).
    client_factory: Callable[[str, str, bool], LoadClient] = lambda url, token, subscribe: (
        KeyroomClient(url, token, auto_subscribe=subscribe)
    )
    # Whether packets reach subscribers byte for byte (a forwarding SFU), so the publishers'
    # trailer gives loss and latency; a re-encoding server gets `PlainSubscriber`s instead.
    forwards_payloads: bool = True
    # keyroom's `GET /metrics` (its `keyroom_forward_seconds` histogram gives the server-side
    # forwarding time); None for a server without it (the baselines).
    metrics_path: str | None = "/metrics"
    metrics_token: str | None = None  # `[metrics] bearer_token`, when the server has one
    # Several nodes of one cluster (repeated --url): joins go to each in turn (docs/cluster.md).
    urls: tuple[str, ...] = ()

    def url_for(self, n: int) -> str:
        """The address the `n`-th join goes to."""
        return self.urls[n % len(self.urls)] if self.urls else self.url

    def token(self, identity: str, room: str, **overrides: Any) -> str:
        return mint_token(
            key_id=overrides.get("key", self.key),
            secret=overrides.get("secret", self.secret),
            identity=identity,
            room=room,
            ttl=overrides.get("ttl", 3600),
            now=overrides.get("now", time.time()),
            bind=overrides.get("bind"),
        )

    def start_recording(self, room: str) -> None:
        """Record every track of `room` through the admin API (`roomRecord`); blocking."""
        token = mint_token(
            key_id=self.key, secret=self.secret, identity="loadtest-recorder", room=room,
            ttl=3600, now=time.time(), grants={"roomRecord": True, "roomJoin": False},
        )  # fmt: skip
        http = self.url.replace("ws://", "http://", 1).removesuffix("/rtc")
        request = urllib.request.Request(
            f"{http}/api/rooms/{room}/recordings", data=b"{}", method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def bad_token(self, kind: str, identity: str, room: str) -> str:
        if kind == "bad_signature":
            return self.token(identity, room, secret=self.secret + "x")
        if kind == "expired":
            return self.token(identity, room, ttl=60, now=time.time() - 7200)
        if kind == "unknown_key":
            return self.token(identity, room, key="no-such-key")
        return secrets.token_urlsafe(48)

    def runtime(self) -> dict[str, Any] | None:
        if not self.dev:
            return None
        http = self.url.replace("ws://", "http://", 1).removesuffix("/rtc")
        try:
            with urllib.request.urlopen(http + "/debug/runtime", timeout=5) as response:
                data: dict[str, Any] = json.loads(response.read())
                return data
        except OSError:
            return None

    def snapshot(self) -> ServerSnapshot:
        """The server's histograms and loop trace now, from one scrape of `/metrics` (each
        scrape holds the server's loop a few ms: one per edge of a measured window)."""
        text = self.scrape()
        if text is None:
            return ServerSnapshot(None, None, {}, {})
        return ServerSnapshot(
            forward=ForwardHistogram.parse(text, FORWARD_METRIC),
            received=ForwardHistogram.parse(text, RECEIVE_TO_SEND_METRIC),
            gc=gc_pauses(text),
            trace=looptrace.parse(text),
            overflows=counter(text, OVERFLOWS_METRIC),
        )

    def scrape(self) -> str | None:
        """The server's `/metrics` exposition, or None if it cannot be read."""
        if self.metrics_path is None:
            return None
        http = self.url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        request = urllib.request.Request(http.removesuffix("/rtc") + self.metrics_path)
        if self.metrics_token:
            request.add_header("Authorization", f"Bearer {self.metrics_token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                text: str = response.read().decode()
                return text
        except OSError:
            return None


@contextlib.contextmanager
def spawned_server(log_dir: str, extra: tuple[str, ...] = ()) -> Iterator[Target]:
    """A `keyroom serve --dev` on a free loopback port with a fresh key, stopped on exit;
    `extra`: more arguments (a `--config`)."""
    port = free_port()
    key, secret = "loadtest", secrets.token_urlsafe(32)
    command = [
        sys.executable, "-m", "sfu", "serve", "--dev", "--host", "127.0.0.1", "--port", str(port),
        "--rtc-ip", "127.0.0.1", "--key", f"{key}={secret}", "--log-level", "warning", *extra,
    ]  # fmt: skip
    log_path = os.path.join(log_dir, f"server-{port}.log")
    with spawned(command, port, log_path, "server") as pid:
        yield Target(f"ws://127.0.0.1:{port}/rtc", key, secret, pid, dev=True)
