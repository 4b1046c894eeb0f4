"""The pieces of a reload that touch files: the verification keys a config names, and the TLS
certificate read again from its path (a half-written or broken one leaves the old one serving,
with one log line saying so). The reload itself is `signaling/liveconfig.py`'s.
"""

from __future__ import annotations

import logging
import ssl

from auth.keys import KeyTable
from sfu.config import Config
from signaling.netpolicy import reload_certificate

log = logging.getLogger("keyroom.server")


def key_table(config: Config) -> KeyTable:
    """The verification keys of `config`: `[auth] keys` (HS256) and `[auth] public_keys`."""
    return KeyTable.from_config(config.auth.keys, config.auth.public_keys)


def reload_tls(context: ssl.SSLContext, config: Config) -> None:
    cert, key = config.server.tls_cert, config.server.tls_key
    assert cert is not None and key is not None
    try:
        reload_certificate(context, cert, key)
    except (OSError, ssl.SSLError) as exc:
        log.error("reload: certificate not reloaded, the old one stays in use: %s", exc)
        return
    log.info("reload: certificate reloaded from %s", cert)
