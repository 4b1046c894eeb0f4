"""The aiohttp application: `/rtc` signaling, `/healthz`, and the process life (`run_server`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import ipaddress
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from auth.audit import AuditKeyError, AuditLog, audit_key_file, load_or_create_key
from auth.auditchain import AuditChainBroken
from auth.brake import FailureBrake
from auth.store import AuthStore
from auth.tokens import TokenVerifier
from sfu import iceguard, internals
from sfu.candidates import CandidatePolicy
from sfu.config import Config
from sfu.iceaddr import restrict_host_addresses
from sfu.metrics import build_registry, record_connection_refused, sample_loop_lag
from sfu.room import RoomRegistry
from signaling.admin import add_admin_routes
from signaling.devjoin import DEV_ROOM, add_dev_routes, dev_token
from signaling.livekit.edge import is_livekit, serve_livekit
from signaling.livekit.routes import add_livekit_routes
from signaling.netpolicy import client_ip, origin_allowed, parse_networks, tls_context
from signaling.pending import PER_IP, PendingConnections, PendingFull
from signaling.protocol import CLOSE_GOING_AWAY
from signaling.reload import ConfigSource, key_table, on_hangup
from signaling.state import ServerState
from signaling.webhooks import WebhookSender
from signaling.websocket import serve_socket

log = logging.getLogger("keyroom.server")

STATE = web.AppKey("state", ServerState)
METRICS = web.AppKey("metrics", CollectorRegistry)
PENDING = web.AppKey("pending", PendingConnections)

# HTTP request heads: aiohttp's own limits, named here so they are a choice (docs/security.md).
MAX_LINE_BYTES = 8190
MAX_HEADER_FIELD_BYTES = 8190
MAX_HEADERS = 128

# The conference page (docs/browser.md): same-origin scripts, styles and sockets only, no inline
# code, no framing; the page may carry a token in its address, so it is never sent as a referrer.
STATIC_DIR = Path(__file__).with_name("static")
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; media-src 'self' blob: mediastream:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def build_state(config: Config) -> ServerState:
    verifier = TokenVerifier(
        key_table(config),
        max_ttl=config.auth.max_token_ttl,
        leeway=config.auth.leeway,
        max_name_bytes=config.limits.max_name_bytes,
        max_metadata_bytes=config.limits.max_metadata_bytes,
        roles=config.roles,
    )
    return ServerState(
        config=config,
        verifier=verifier,
        rooms=RoomRegistry(config.limits),
        audit=open_audit_log(config),
        store=AuthStore(os.path.join(config.server.data_dir, "auth.db")),
        brake=FailureBrake(config.auth.max_failures, config.auth.failure_window),
    )


def open_audit_log(config: Config) -> AuditLog:
    audit = config.audit
    if audit.path is None:
        return AuditLog(None)
    key = load_or_create_key(audit_key_file(audit.key_file, config.server.data_dir))
    return AuditLog(
        audit.path,
        key,
        checkpoint_interval=audit.checkpoint_interval,
        refusal_window=audit.refusal_window,
    )


def build_app(state: ServerState) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/rtc", rtc_handler)
    app.router.add_get("/healthz", healthz_handler)
    add_admin_routes(app, state)
    add_livekit_routes(app, state)
    server = state.config.server
    app[PENDING] = PendingConnections(server.max_pending, server.max_pending_per_ip)
    app[METRICS] = build_registry(state.rooms, state.stats, app[PENDING])
    app.router.add_get("/metrics", metrics_handler)
    app.cleanup_ctx.append(background)
    app.router.add_get("/", page_handler)
    app.router.add_static("/static", STATIC_DIR)
    if state.config.server.dev:
        app.router.add_get("/debug/runtime", runtime_handler)
        add_dev_routes(app, state.config)
    return app


def _nothing() -> None:
    pass


async def rtc_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if not origin_allowed(request, state.config.server.allowed_origins):
        raise web.HTTPForbidden(text="origin not allowed")
    if not state.accepting:
        raise web.HTTPServiceUnavailable(text="server shutting down")
    server = state.config.server
    peer = client_ip(request, parse_networks(server.trusted_proxies))
    try:
        slot = request.app[PENDING].admit(peer)
    except PendingFull as full:
        # Counted, not audited: anyone can open sockets, and each refusal costs nothing here.
        record_connection_refused(full.reason)
        refusal = web.HTTPTooManyRequests if full.reason == PER_IP else web.HTTPServiceUnavailable
        retry = str(math.ceil(server.join_timeout))
        raise refusal(
            text="too many connections not yet joined", headers={"Retry-After": retry}
        ) from None
    if is_livekit(request):
        transport = request.transport
        abort = transport.abort if transport is not None else _nothing
        try:
            return await serve_livekit(state, request, peer, abort, slot.release)
        finally:
            slot.release()
    try:
        ws = web.WebSocketResponse(max_msg_size=server.max_frame_bytes, heartbeat=20, autoping=True)
        await ws.prepare(request)
        transport = request.transport
        abort = transport.abort if transport is not None else _nothing
        await serve_socket(state, ws, peer, abort, slot.release)
    finally:
        slot.release()
    return ws


async def page_handler(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


async def healthz_handler(request: web.Request) -> web.Response:
    state = request.app[STATE]
    # 503 only while draining: a full node is alive and serving, it just admits nobody new (a
    # health check that failed on "full" would get a busy server restarted).
    status = 200 if state.accepting else 503
    if not state.accepting:
        health = "draining"
    elif state.node_full(new_room=False):
        health = "full"
    else:
        health = "ok"
    # The state only: counts are for /metrics (behind its token) and the admin API.
    return web.json_response({"status": health}, status=status)


async def metrics_handler(request: web.Request) -> web.Response:
    """Prometheus text; with `[metrics] bearer_token`, only for `Authorization: Bearer <it>`."""
    token = request.app[STATE].config.metrics.bearer_token
    if token is not None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": "Bearer"})
    body = generate_latest(request.app[METRICS])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def background(app: web.Application) -> AsyncIterator[None]:
    """The event-loop lag sampler and, with `[webhooks] urls`, the webhook sender."""
    state = app[STATE]
    lag = asyncio.create_task(sample_loop_lag())
    hooks = state.config.webhooks
    sender = None
    if hooks.urls and hooks.key is not None:
        sender = WebhookSender(hooks, state.config.auth.keys[hooks.key])
        sender.start()
        state.rooms.listeners.append(sender.on_event)
    yield
    if sender is not None:
        state.rooms.listeners.remove(sender.on_event)
        await sender.close()
    lag.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await lag


async def runtime_handler(request: web.Request) -> web.Response:
    """Dev-mode introspection for leak and no-codec tests: tasks, threads, sockets, codecs."""
    state = request.app[STATE]
    from aiortc.codecs.base import Decoder, Encoder

    codecs = sum(1 for o in gc.get_objects() if isinstance(o, Decoder | Encoder))
    tasks = asyncio.all_tasks()
    return web.json_response(
        {
            "tasks": len(tasks),
            "task_kinds": dict(Counter(_task_kind(t) for t in tasks)),
            "threads": [t.name for t in threading.enumerate()],
            "open_fds": len(os.listdir("/proc/self/fd")),
            "udp_sockets": _count_udp_sockets(),
            "codecs": codecs,
            "rooms": len(state.rooms.rooms),
            "participants": state.rooms.participant_count(),
            "peer_connections": _count_peer_connections(),
            "stats": state.stats.snapshot(),
        }
    )


def _task_kind(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", type(coro).__name__)


def _count_udp_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            count += 1
    return count


def _count_peer_connections() -> int:
    from aiortc import RTCPeerConnection

    return sum(
        1
        for o in gc.get_objects()
        if isinstance(o, RTCPeerConnection) and o.connectionState != "closed"
    )


async def shutdown(state: ServerState) -> None:
    """Tell every participant `server_shutdown`, then close their sessions."""
    state.accepting = False
    for session in list(state.sessions):
        session.end("server_shutdown", close_code=CLOSE_GOING_AWAY)
    deadline = time.monotonic() + max(state.config.server.shutdown_timeout - 1.0, 0.5)
    while state.sessions and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for parked in state.parking.take_all():
        await parked.room.remove(parked.participant, "server_shutdown")
    for room in list(state.rooms.rooms.values()):
        state.rooms.remove(room)  # room_finished for webhooks and metrics


def print_dev_banner(config: Config) -> None:
    key_id, secret = next(iter(config.auth.keys.items()))
    token = dev_token(config, identity="dev-user", name="Dev User")
    base = f"http://{config.server.host}:{config.server.port}"
    lines = ["keyroom dev mode: plaintext, loopback only."]
    if config.auth.generated_dev_key:
        # A throw-away key made for this run only; printing it is the point of --dev.
        lines.append(f"dev key: {key_id}={secret}")
    lines += [
        f"dev token (identity 'dev-user', room '{DEV_ROOM}', 1 h): {token}",
        f"join link (each visitor picks a name): {base}/?dev",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)


async def serve(config: Config, source: ConfigSource | None = None) -> int:
    state = build_state(config)
    iceguard.use_audit(state.audit)  # ICE refusals (relay-only rooms) are audited
    app = build_app(state)
    server = config.server
    # aiohttp has no header-read timeout of its own, but (3.14.5 here; aio-libs/aiohttp#13681)
    # arms the keep-alive timer when a connection opens and closes the connection if, when it
    # fires, no complete request head has arrived; bytes of a partial head do not move it. So
    # one timeout bounds an idle keep-alive connection and a slow (slowloris) request head alike.
    # Older aiohttp armed it only after a response: tests/test_pending_sockets.py catches that.
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        keepalive_timeout=server.keepalive_timeout,
        max_line_size=MAX_LINE_BYTES,
        max_field_size=MAX_HEADER_FIELD_BYTES,
        max_headers=MAX_HEADERS,
    )
    await runner.setup()
    context = None
    if server.tls_cert is not None and server.tls_key is not None:
        context = tls_context(server.tls_cert, server.tls_key)
    elif server.insecure_plaintext:
        log.warning(
            "serving plain HTTP/WS (--insecure-plaintext): tokens and SDP cross the network"
            " readable unless a TLS-terminating proxy is in front of %s:%d",
            server.host,
            server.port,
        )
    site = web.TCPSite(runner, server.host, server.port, ssl_context=context)
    await site.start()
    log.info(
        "keyroom listening on %s://%s:%d", "https" if context else "http", server.host, server.port
    )
    if config.server.dev:
        print_dev_banner(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hangup, config, state.verifier, context, source)
    await stop.wait()
    log.info("shutting down")
    await shutdown(state)
    await runner.cleanup()
    state.audit.close()
    state.store.close()
    return 0


def run_server(config: Config, source: ConfigSource | None = None) -> int:
    """Serve until SIGTERM; `source` reads the configuration again on SIGHUP (signing keys)."""
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # At DEBUG aiortc logs whole SDPs (ICE passwords, fingerprints) and aioice every candidate
    # pair with client addresses: never below WARNING, whatever --log-level says.
    for noisy in ("aiortc", "aioice"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.root.level))
    internals.install_server_patches()
    restrict_host_addresses(list(config.rtc.ips))
    rtc = config.rtc
    if rtc.port_min:
        internals.bind_media_ports(rtc.port_min, rtc.port_max)
    iceguard.configure(
        CandidatePolicy(
            max_remote_candidates=rtc.max_remote_candidates,
            allow_private=bool(rtc.allow_private_candidates),
            allow_loopback=any(ipaddress.ip_address(ip).is_loopback for ip in rtc.ips),
            relay_addresses=frozenset(config.turn.relay_addresses),
        )
    )
    try:
        return uvloop.run(serve(config, source))
    except (AuditChainBroken, AuditKeyError, OSError) as exc:
        # The audit log or its key: the operator must look before anything is appended.
        print(f"keyroom: error: {exc}", file=sys.stderr)
        return 2
