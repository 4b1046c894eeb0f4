"""The Redis keys and channel of one cluster, all under `[cluster] prefix`.

Room names and identities are arbitrary text: they enter keys JSON-encoded, so no choice of
names can make two keys collide.
"""

from __future__ import annotations

import json


class Names:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes = f"{prefix}:nodes"  # sorted set: node id -> load
        self.node_prefix = f"{prefix}:node:"  # hash per live node, expiring
        self.boot = f"{prefix}:boot"  # changes when Redis lost its data
        self.bus = f"{prefix}:bus"  # pub/sub channel of cross-node actions
        self.revoked_prefix = f"{prefix}:revoked:"

    def node(self, node_id: str) -> str:
        return self.node_prefix + node_id

    def room(self, room: str) -> str:
        return f"{self.prefix}:room:{json.dumps(room)}"

    def revoked(self, room: str, identity: str) -> str:
        return self.revoked_prefix + json.dumps([room, identity])

    def revoked_pair(self, key: str) -> tuple[str, str] | None:
        """The (room, identity) a revocation key names; None for a key not made here."""
        try:
            pair = json.loads(key[len(self.revoked_prefix) :])
        except ValueError:
            return None
        if isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) for v in pair):
            return pair[0], pair[1]
        return None

    def jti(self, jti: str) -> str:
        return f"{self.prefix}:jti:{json.dumps(jti)}"

    def brake(self, key: str, bucket: int) -> str:
        return f"{self.prefix}:brake:{json.dumps(key)}:{bucket}"
