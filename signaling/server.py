"""The aiohttp application: `/rtc` signaling, `/healthz`, and the process life (`run_server`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
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
from sfu import gcpolicy, iceguard, internals, looptrace
from sfu.config import Config, ConfigError
from sfu.fanout.pool import FanoutPool
from sfu.fastpath import loader as fastpath_loader
from sfu.iceaddr import check_local_addresses, restrict_host_addresses
from sfu.metrics import build_registry, record_connection_refused, sample_loop_lag
from sfu.recording.manager import RecordingManager
from sfu.room import RoomRegistry
from signaling.admin import add_admin_routes
from signaling.cluster.adminroutes import add_cluster_middleware
from signaling.cluster.node import ClusterNode
from signaling.cluster.shared import ClusterAuthStore, ClusterBrake
from signaling.devjoin import DEV_ROOM, add_dev_routes, dev_token
from signaling.liveconfig import ConfigSource, LiveConfig, candidate_policy
from signaling.livekit.edge import is_livekit, serve_livekit
from signaling.livekit.routes import add_livekit_routes
from signaling.monitor import SecurityMonitor
from signaling.netpolicy import client_ip, origin_allowed, parse_networks, tls_context
from signaling.nonceroute import add_nonce_route
from signaling.pending import PER_IP, PendingConnections, PendingFull
from signaling.protocol import CLOSE_GOING_AWAY
from signaling.reload import key_table
from signaling.state import ServerState
from signaling.summary import startup_summary
from signaling.websocket import serve_socket

log = logging.getLogger("keyroom.server")

STATE = web.AppKey("state", ServerState)
METRICS = web.AppKey("metrics", CollectorRegistry)
PENDING = web.AppKey("pending", PendingConnections)
LIVE = web.AppKey("live", LiveConfig)

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
    store_path = os.path.join(config.server.data_dir, "auth.db")
    clustered = config.cluster.redis_url is not None
    # In a cluster the store and the brake also tell Redis (signaling/cluster/shared.py).
    store = ClusterAuthStore(store_path) if clustered else AuthStore(store_path)
    brake_type = ClusterBrake if clustered else FailureBrake
    audit, rooms = open_audit_log(config), RoomRegistry(config.limits)
    recordings = RecordingManager(config.recording, config.server.data_dir, audit)
    rooms.listeners.append(recordings.on_event)
    return ServerState(
        config=config,
        verifier=verifier,
        rooms=rooms,
        audit=audit,
        store=store,
        brake=brake_type(config.auth.max_failures, config.auth.failure_window),
        recordings=recordings,
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
        rotate_bytes=audit.rotate_bytes,
    )


def build_app(state: ServerState) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/rtc", rtc_handler)
    app.router.add_get("/healthz", healthz_handler)
    app[LIVE] = LiveConfig(state)
    app[LIVE].add_route(app)  # before the admin API's catch-all
    add_nonce_route(app, state)
    add_admin_routes(app, state)
    if isinstance(state.cluster, ClusterNode):
        add_cluster_middleware(app, state.cluster)
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
    lag = asyncio.create_task(sample_loop_lag())
    state, live = app[STATE], app[LIVE]
    live.start_webhooks()
    monitor = SecurityMonitor(state, live.send_alert)
    state.audit.listeners.append(monitor.observe)
    yield
    state.audit.listeners.remove(monitor.observe)
    monitor.close()
    await live.stop_webhooks()
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
    if state.recordings is not None:
        state.recordings.close()  # each gets its final chunk
    if state.cluster is not None:
        await state.cluster.close()  # leaves the registry: its rooms are placed again


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


def announce(config: Config, *, tls: bool) -> None:
    """The start-up log: where it listens, then what is in force (signaling/summary.py)."""
    server = config.server
    log.info(
        "keyroom listening on %s://%s:%d", "https" if tls else "http", server.host, server.port
    )
    for line in startup_summary(config):
        log.info("%s", line)
    for warning in config.auth.key_warnings:
        log.warning("%s", warning)
    if server.dev:
        print_dev_banner(config)


async def open_media_port(config: Config, state: ServerState) -> None:
    """`[rtc] udp_port`: one UDP port for every peer connection, bound before anyone joins."""
    rtc = config.rtc
    if rtc.udp_port:
        fanout = None if rtc.fanout == "python" else fastpath_loader.load()
        if fanout is None and rtc.fanout == "compiled":
            raise OSError(
                f"rtc.fanout = compiled: the extension cannot be built: {fastpath_loader.failure()}"
            )
        shared = await internals.open_shared_port(
            list(rtc.ips), rtc.udp_port, state.stats, fanout, rtc.udp_receive_buffer
        )
        if rtc.fanout_workers:
            pool = FanoutPool(rtc.fanout_workers, shared, state.stats)
            pool.start()
            await pool.wait_ready()


async def serve(config: Config, source: ConfigSource | None = None) -> int:
    state = build_state(config)
    iceguard.use_audit(state.audit)  # ICE refusals (relay-only rooms) are audited
    state.cluster = cluster = ClusterNode(state) if config.cluster.redis_url else None
    await open_media_port(config, state)
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
    announce(config, tls=context is not None)
    stop = _stop_on_signals(cluster)
    live = app[LIVE]
    live.source, live.tls = source, context
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGHUP, lambda: state.spawn(live.reload("SIGHUP"))
    )
    with gcpolicy.full_collections(state.rooms.participant_count):
        await stop.wait()
    log.info("shutting down")
    await shutdown(state)
    await runner.cleanup()
    state.audit.close()
    state.store.close()
    log.info("keyroom stopped")
    return 0


def _stop_on_signals(cluster: ClusterNode | None) -> asyncio.Event:
    """Set on SIGTERM or SIGINT; a cluster node drains on SIGTERM first (docs/cluster.md)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if cluster is not None:
        cluster.on_drained = stop.set
        loop.add_signal_handler(signal.SIGTERM, cluster.drain)
        cluster.start()
    return stop


def run_server(config: Config, source: ConfigSource | None = None) -> int:
    """Serve until SIGTERM; `source` reads the configuration again on a reload (liveconfig)."""
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # At DEBUG aiortc logs whole SDPs (ICE passwords, fingerprints) and aioice every candidate
    # pair with client addresses: never below WARNING, whatever --log-level says.
    for noisy in ("aiortc", "aioice"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.root.level))
    try:
        check_local_addresses(config.rtc.ips)
    except ConfigError as exc:
        print(f"keyroom: error: {exc}", file=sys.stderr)
        return 2
    internals.install_server_patches()
    restrict_host_addresses(list(config.rtc.ips))
    rtc = config.rtc
    if rtc.port_min:
        internals.bind_media_ports(rtc.port_min, rtc.port_max)
    iceguard.configure(candidate_policy(config))
    gcpolicy.apply()
    try:
        loop_factory = looptrace.loop_factory()
    except ValueError as exc:
        print(f"keyroom: error: {exc}", file=sys.stderr)
        return 2
    try:
        return uvloop.run(serve(config, source), loop_factory=loop_factory)
    except (AuditChainBroken, AuditKeyError, OSError) as exc:
        # The audit log or its key: the operator must look before anything is appended.
        print(f"keyroom: error: {exc}", file=sys.stderr)
        return 2
