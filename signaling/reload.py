"""What SIGHUP reloads without dropping anyone: the TLS certificate and the signing keys.

Either is read in full and checked before it replaces what is in use, so a half-written or
broken file leaves the old one serving, with one log line saying so. Sessions are untouched:
a key change applies to the tokens presented from then on (joins, refreshes, admin calls).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

from auth.keys import KeyTable
from auth.tokens import TokenVerifier
from sfu.config import Config, ConfigError
from signaling.netpolicy import reload_certificate

log = logging.getLogger("keyroom.server")

ConfigSource = Callable[[], Config]


def key_table(config: Config) -> KeyTable:
    """The verification keys of `config`: `[auth] keys` (HS256) and `[auth] public_keys`."""
    return KeyTable.from_config(config.auth.keys, config.auth.public_keys)


def reload_keys(verifier: TokenVerifier, source: ConfigSource) -> None:
    """Read the configuration again (file, KEYROOM_KEYS, flags) and swap the verifier's keys."""
    try:
        config = source()
        if config.auth.generated_dev_key:
            raise ConfigError("no signing keys configured")
        keys = key_table(config)
    except (ConfigError, ValueError) as exc:
        log.error("SIGHUP: signing keys not reloaded, the old ones stay in use: %s", exc)
        return
    verifier.keys = keys  # one assignment on the loop: a token is checked against one table
    log.info("SIGHUP: signing keys reloaded: %s", ", ".join(sorted(keys)))


def reload_tls(context: ssl.SSLContext, config: Config) -> None:
    cert, key = config.server.tls_cert, config.server.tls_key
    assert cert is not None and key is not None
    try:
        reload_certificate(context, cert, key)
    except (OSError, ssl.SSLError) as exc:
        log.error("SIGHUP: certificate not reloaded, the old one stays in use: %s", exc)
        return
    log.info("SIGHUP: certificate reloaded from %s", cert)


def on_hangup(
    config: Config,
    verifier: TokenVerifier,
    context: ssl.SSLContext | None,
    source: ConfigSource | None,
) -> None:
    if context is not None:
        reload_tls(context, config)
    if source is not None:
        reload_keys(verifier, source)
