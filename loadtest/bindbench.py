"""The server's join path with and without bound tokens, in-process (issue 15).

`keyroom loadtest --scenario auth-storm --bound-share 0.5` measures joins as clients see them
(the nonce request included); this measures what the server spends: `Session.start` for a
`join` frame (token check, proof check and nonce, admission, the participant's place), bearer
and bound joins alternating in one run, so both meet the same machine state:

    python -m loadtest.bindbench --joins 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from auth.keybinding import make_proof, public_jwk, thumbprint
from auth.keys import PrivateKey
from auth.tokens import mint_token
from loadtest.report import percentiles
from sfu.config import AuditConfig, AuthConfig, Config, ServerConfig
from signaling.binding import bind_join
from signaling.messages import Join, ServerMessage
from signaling.server import build_state
from signaling.session import Session

KEY_ID, SECRET = "bench", "bench-secret-that-is-long-enough-0123456789"
ROOM_SIZE = 10


class _Discard:
    def send(self, message: ServerMessage | Mapping[str, Any]) -> None:
        pass

    def close(self, code: int) -> None:
        pass


def _proof_check_ms(state: Any, join: Join, key: PrivateKey) -> float:
    """What a bound token adds to the join path: `bind_join` (proof and nonce), timed alone on
    a second proof of the same key for the same token."""
    claims = state.verifier.verify_join(join.token, time.time())
    nonce = state.nonces.issue(time.time())
    proof = make_proof(key, nonce=nonce, credential=join.token, client="python")
    started = time.perf_counter()
    bind_join(state, claims, proof, join.token, time.time())
    return 1000 * (time.perf_counter() - started)


def _join(n: int, state: Any, key: PrivateKey | None) -> Join:
    token = mint_token(
        key_id=KEY_ID, secret=SECRET, identity=f"u{n}", room=f"bench-{n // ROOM_SIZE}",
        ttl=600, now=time.time(),
        bind=None if key is None else thumbprint(public_jwk(key.public_key())),
    )  # fmt: skip
    if key is None:
        return Join(token=token, req=1)
    nonce = state.nonces.issue(time.time())
    proof = make_proof(key, nonce=nonce, credential=token, client="python")
    return Join(token=token, proof=proof, req=1)


async def measure(joins: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="keyroom-bindbench-") as data_dir:
        config = Config(
            server=ServerConfig(data_dir=data_dir),
            auth=AuthConfig(keys={KEY_ID: SECRET}),
            audit=AuditConfig(),
        )
        state = build_state(config)
        times: dict[str, list[float]] = {"bearer": [], "bound": [], "proof_check": []}
        try:
            for n in range(joins):
                bound = n % 2 == 1
                key = ec.generate_private_key(ec.SECP256R1()) if bound else None
                join = _join(n, state, key)  # keys, tokens and proofs are the client's work
                if key is not None:
                    times["proof_check"].append(_proof_check_ms(state, join, key))
                session = Session(state, "127.0.0.1", _Discard())
                started = time.perf_counter()
                outcome = session.start(join, loop.time(), time.time())
                elapsed = time.perf_counter() - started
                if not outcome.accepted:
                    raise RuntimeError(f"join {n} refused: {outcome.reason}")
                times["bound" if bound else "bearer"].append(1000 * elapsed)
        finally:
            for room in list(state.rooms.rooms.values()):
                for participant in list(room.participants.values()):
                    await room.remove(participant, "server_shutdown")
                state.rooms.remove(room)
            await state.tasks.close()
            state.audit.close()
            state.store.close()
    return {name: percentiles(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bindbench", description=__doc__)
    parser.add_argument("--joins", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.joins))
    if args.json:
        print(json.dumps(result))
    else:
        for name, p in result.items():
            print(f"{name:<11} p50 {p['p50']} p95 {p['p95']} p99 {p['p99']} ms (n={p['count']})")
        print(f"bound - bearer at p95: {result['bound']['p95'] - result['bearer']['p95']:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
