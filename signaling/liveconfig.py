"""Reloading the configuration without dropping a call: `LiveConfig.apply_config(new)` is the
one entry point (SIGHUP, `POST /api/reload` and `keyroom reload` all end there).

Applied live: the signing keys and token rules (`[auth]`, `[roles]`), `[limits]` and
`[rooms.NAME]` (rooms whose limits were not changed by an admin take the new ones at once;
lower limits refuse newcomers, nobody inside is removed), `[node]`, `[webhooks]` (the sender is
replaced), `[turn]` (the next `joined` hands out the new servers), `[metrics]`, and the remote
candidate rules (`rtc.allow_private_candidates`, `rtc.max_remote_candidates`, the relays'
addresses) for connections made from then on. The TLS certificate is read again from its path.

Not live (listed in the log, kept as running until a restart): every `[server]` option but the
certificate's contents, the media addresses and ports (`rtc.ips`, `public_ips`, `port_min`,
`port_max`, `keyframe_interval`) and `[audit]`. A file that does not load keeps the whole old
configuration, with one log line saying why.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from aiohttp import web

from auth.policy import Decision, may_create_room, may_list_rooms
from auth.tokens import Claims
from sfu import iceguard
from sfu.candidates import CandidatePolicy
from sfu.config import Config, ConfigError, room_limits
from signaling.admin import AdminApi
from signaling.reload import key_table, reload_tls
from signaling.state import ServerState
from signaling.webhooks import WebhookSender

log = logging.getLogger("keyroom.server")

ConfigSource = Callable[[], Config]
# Options bound to sockets, files or threads made at start-up.
RESTART_ONLY_RTC = ("ips", "public_ips", "port_min", "port_max", "keyframe_interval")


@dataclass
class ReloadResult:
    ok: bool
    changed: list[str] = field(default_factory=list)  # options applied now
    restart_needed: list[str] = field(default_factory=list)  # changed, kept until a restart
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "changed": self.changed,
            "restart_needed": self.restart_needed,
            "error": self.error,
        }


def candidate_policy(config: Config) -> CandidatePolicy:
    rtc = config.rtc
    return CandidatePolicy(
        max_remote_candidates=rtc.max_remote_candidates,
        allow_private=bool(rtc.allow_private_candidates),
        allow_loopback=any(ipaddress.ip_address(ip).is_loopback for ip in rtc.ips),
        relay_addresses=frozenset(config.turn.relay_addresses),
    )


def changed_options(old: Config, new: Config) -> list[str]:
    """`section.option` for each option that differs (`rooms.NAME`, `roles.NAME` whole)."""
    names: list[str] = []
    for section in fields(Config):
        before, after = getattr(old, section.name), getattr(new, section.name)
        if isinstance(before, dict):
            keys = sorted({*before, *after})
            names += [f"{section.name}.{k}" for k in keys if before.get(k) != after.get(k)]
            continue
        for option in fields(before):
            if getattr(before, option.name) != getattr(after, option.name):
                names.append(f"{section.name}.{option.name}")
    return [n for n in names if n not in ("auth.key_sources", "auth.key_warnings")]


def _restart_only(name: str) -> bool:
    section, _, option = name.partition(".")
    return section in ("server", "audit") or (section == "rtc" and option in RESTART_ONLY_RTC)


def _live_part(old: Config, new: Config) -> Config:
    """`new` with what cannot change live kept as it runs."""
    rtc = replace(new.rtc, **{name: getattr(old.rtc, name) for name in RESTART_ONLY_RTC})
    auth = new.auth
    if auth.generated_dev_key:  # --dev without keys: a fresh key per read, keep the one in use
        auth = replace(auth, keys=old.auth.keys, generated_dev_key=True)
    return replace(new, server=old.server, audit=old.audit, rtc=rtc, auth=auth)


def may_reload(grant: Any) -> Decision:
    """The server-wide admin token (`keyroom token --admin`): roomList and roomCreate, no room."""
    if grant.room is not None:
        return Decision(False, "reload needs a token without video.room")
    for decision in (may_list_rooms(grant), may_create_room(grant)):
        if not decision.allowed:
            return decision
    return Decision(True, "roomList and roomCreate")


class LiveConfig:
    """The configuration in force and what was built from it that a reload replaces."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.source: ConfigSource | None = None  # set once serving: reads file, env, flags
        self.tls: ssl.SSLContext | None = None
        self.webhooks: WebhookSender | None = None

    # -- the webhook sender, replaced when [webhooks] or its key changes -------------------------

    def start_webhooks(self) -> None:
        config = self.state.config
        hooks = config.webhooks
        if hooks.urls and hooks.key is not None:
            self.webhooks = WebhookSender(hooks, config.auth.keys[hooks.key])
            self.webhooks.start()
            self.state.rooms.listeners.append(self.webhooks.on_event)

    def send_alert(self, alert: Mapping[str, Any]) -> None:
        """A security alert to the webhook targets, when `[security] webhook_alerts` says so."""
        if self.webhooks is not None and self.state.config.security.webhook_alerts:
            self.webhooks.on_alert(alert)

    async def stop_webhooks(self) -> None:
        sender, self.webhooks = self.webhooks, None
        if sender is not None:
            self.state.rooms.listeners.remove(sender.on_event)
            await sender.close()

    # -- reload --------------------------------------------------------------------------------

    async def reload(self, trigger: str) -> ReloadResult:
        """Read the configuration again (`trigger` names who asked, for the log) and apply it."""
        if self.tls is not None:
            reload_tls(self.tls, self.state.config)
        if self.source is None:
            return ReloadResult(False, error="this server has no configuration source to read")
        try:
            new = self.source()
        except ConfigError as exc:
            log.error("%s: configuration not reloaded, the old one stays in use: %s", trigger, exc)
            return ReloadResult(False, error=str(exc))
        return await self.apply_config(new, trigger)

    async def apply_config(self, new: Config, trigger: str = "reload") -> ReloadResult:
        """Put `new` (a finalized Config) in force for everything that can change live."""
        state, old = self.state, self.state.config
        try:
            keys = key_table(new) if not new.auth.generated_dev_key else state.verifier.keys
        except ValueError as exc:
            log.error("%s: configuration not reloaded, the old one stays in use: %s", trigger, exc)
            return ReloadResult(False, error=str(exc))
        changed = changed_options(old, new)
        restart = [n for n in changed if _restart_only(n)]
        applied = _live_part(old, new)
        self._apply_auth(applied, keys)
        self._apply_limits(old, applied)
        iceguard.configure(candidate_policy(applied))
        state.config = applied
        if old.webhooks != applied.webhooks or _webhook_secret(old) != _webhook_secret(applied):
            await self.stop_webhooks()
            self.start_webhooks()
        live = [n for n in changed if not _restart_only(n)]
        self._log(trigger, live, restart, sorted(keys) if "auth.keys" in live else None)
        state.audit.record("config_reloaded", trigger=trigger, changed=live, restart=restart)
        return ReloadResult(True, live, restart)

    def _apply_auth(self, config: Config, keys: Any) -> None:
        verifier, auth = self.state.verifier, config.auth
        verifier.keys = keys  # one assignment on the loop: a token is checked against one table
        verifier.max_ttl, verifier.leeway = auth.max_token_ttl, auth.leeway
        verifier.max_name_bytes = config.limits.max_name_bytes
        verifier.max_metadata_bytes = config.limits.max_metadata_bytes
        verifier.roles = dict(config.roles)
        self.state.brake.max_failures = auth.max_failures
        self.state.brake.window = auth.failure_window

    def _apply_limits(self, old: Config, new: Config) -> None:
        rooms = self.state.rooms
        rooms.default_limits = new.limits
        for room in list(rooms.rooms.values()):
            # A room whose limits an admin changed keeps them: the admin's decision stands.
            if room.limits == room_limits(old, room.name):
                limits = room_limits(new, room.name)
                if limits != room.limits:
                    room.limits = limits  # lower limits refuse newcomers; nobody is removed
                    room.broadcast({"type": "room_updated", "room": room.info()})

    @staticmethod
    def _log(trigger: str, live: list[str], restart: list[str], keys: list[str] | None) -> None:
        shown = ", ".join(live) or "nothing"
        log.info("%s: configuration reloaded; changed: %s", trigger, shown)
        if keys is not None:
            log.info("%s: signing keys reloaded: %s", trigger, ", ".join(keys))
        if restart:
            log.warning(
                "%s: not applied until a restart (they cannot change live): %s",
                trigger,
                ", ".join(restart),
            )

    # -- the admin call ------------------------------------------------------------------------

    def add_route(self, app: web.Application) -> None:
        """`POST /api/reload` with the server admin token; before the admin API's catch-all."""
        api = AdminApi(self.state)

        async def handler(request: web.Request, claims: Claims) -> web.Response:
            api.authorize(request, claims, may_reload(claims.grant))
            result = await self.reload("admin reload")
            return web.json_response(result.as_json(), status=200 if result.ok else 422)

        app.router.add_post("/api/reload", api.wrap(handler))


def _webhook_secret(config: Config) -> str | None:
    key = config.webhooks.key
    return config.auth.keys.get(key) if key is not None else None
