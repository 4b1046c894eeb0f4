"""Following a cluster node's `redirect` (docs/protocol.md section 7): the same join, elsewhere."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from signaling.client.connection import Connection
from signaling.client.errors import Frame, KeyroomError

# A join is redirected at most once in a healthy cluster; more is a misconfiguration.
MAX_REDIRECTS = 3


async def join_following_redirects(
    connection: Connection,
    join: Frame,
    request: Callable[[Frame], Awaitable[Frame]],
    prove: Callable[[], Awaitable[str]] | None,
    timeout: float,
) -> Frame:
    """Send `join`; while the answer is a redirect, open its URL and send the join again there
    (with a fresh proof when the token is bound: nonces are per node). The final answer."""
    reply = await request(join)
    hops = 0
    while reply.get("type") == "redirect":
        url = str(reply.get("url"))
        if hops == MAX_REDIRECTS or not url.startswith(("ws://", "wss://")):
            raise KeyroomError("redirect_loop", "bad or repeated redirect", reply)
        hops += 1
        await connection.follow(url, timeout)
        if prove is not None:
            join["proof"] = await prove()
        reply = await request(join)
    return reply
