"""Who is the client: `X-Forwarded-For` is believed only from configured proxies.

Anyone can send the header, so trusting it from any peer would let a client choose the address
the rate limits and the audit log see. Only hops inside `[server] trusted_proxies` are skipped.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """`10.0.0.0/8`, `192.0.2.7` or `2001:db8::/32`; raises ValueError for anything else."""
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # An IPv4 client seen through a dual-stack socket is the IPv4 address, for matching and logs.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, proxies: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def resolve_client_ip(peer: str, forwarded_for: Sequence[str], proxies: Sequence[Network]) -> str:
    """The client address: walk `X-Forwarded-For` from the right while the hop is a trusted proxy.

    `peer` is the TCP peer; `forwarded_for` the header values in order. The first untrusted hop
    is the client. A malformed entry stops the walk at the last trusted hop, which is returned:
    its claim about what came before cannot be read.
    """
    current = _address(peer)
    if current is None:
        return peer
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    while _trusted(current, proxies) and hops:
        previous = _address(hops.pop())
        if previous is None:
            break
        current = previous
    return str(current)


def client_ip(request: web.BaseRequest, trusted_proxies: Sequence[Network]) -> str:
    """The client address of `request`, for logs, rate limits and the audit log."""
    return resolve_client_ip(
        request.remote or "?", request.headers.getall("X-Forwarded-For", []), trusted_proxies
    )


# TLS 1.2 suites with forward secrecy and AEAD only (Mozilla "intermediate"); TLS 1.3's are all so.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for HTTPS/WSS: TLS 1.2 or newer, modern ciphers, the given PEM files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(cert, key)
    return context


def reload_certificate(context: ssl.SSLContext, cert: str, key: str) -> None:
    """Make new handshakes use the PEM files' current contents (SIGHUP after a renewal).

    The pair is first loaded into a scratch context, so a half-written or mismatched pair
    raises (ssl.SSLError, OSError) and leaves the serving certificate untouched.
    """
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    context.load_cert_chain(cert, key)


def origin_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """Same-origin or listed origins only; clients that send no Origin are not browsers."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin in allowed:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == request.host
