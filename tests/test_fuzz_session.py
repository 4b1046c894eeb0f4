"""Fuzzing the session state machine: random frame sequences from three clients of one room,
fed to in-process `Session`s the way signaling/websocket.py feeds them (decode, `start` or
`refuse_first` for the first frame, `handle` or `refuse` after, `finish` when the connection
goes), with random time steps and timer firings.

Whatever the frames, no exception escapes; every frame with a readable `req` gets exactly one
reply carrying it (unless that frame ended the session); a session's deadlines never lie past
its token's expiry and are gone once it ends; and once every connection is gone and the parking
window has passed, no participant, parked session or session handle is left.

Offers carry junk, hand-made SDP, or real aiortc offers (whole or mutated) without their
candidates: the server answers them, but no ICE check or DTLS handshake ever starts (a connected
publisher is tests/test_publisher_offers.py's). Subscriber answers are junk: a valid one needs a
real client peer connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import currently_in_test_context, event, given
from hypothesis import strategies as st

from signaling import codec
from signaling.codec import MessageError
from signaling.messages import MAX_REQ, Answer
from signaling.session import Session
from signaling.state import ServerState
from tests.conftest import eventually
from tests.fuzzing import fuzz
from tests.signaling_helpers import NOW, WALL, Wire, close_all, join, make_state, token
from tests.test_fuzz_sdp import mutated_offers, real_offer_lines

IDENTITIES = ("alice", "bob", "carol")
LEEWAY = 60.0  # [auth] leeway's default
RESUME_WINDOW = 30.0

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
REQS = st.one_of(st.none(), st.integers(0, 50), st.integers(0, 50), st.just(MAX_REQ - 1))
BAD_REQS = st.sampled_from([-1, MAX_REQ, True, 1.5, "1", [1]])

# SDP a client may send: junk, text that starts right, hand-made offers that pass or nearly pass
# the offer check, real aiortc offers whole or mutated; none names a candidate, so no ICE check
# ever starts.
SESSION_LINES = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
TRANSPORT = "a=ice-ufrag:u\r\na=ice-pwd:" + "p" * 22 + "\r\na=setup:actpass\r\na=rtcp-mux\r\n"
FINGERPRINT = "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\n"


def hand_offer(mids: list[str], kind: str = "video", extra: str = "") -> str:
    text = SESSION_LINES
    for n, mid in enumerate(mids):
        text += f"m={kind} 9 UDP/TLS/RTP/SAVPF {96 + n}\r\nc=IN IP4 0.0.0.0\r\n" + TRANSPORT
        text += FINGERPRINT + f"a=rtpmap:{96 + n} VP8/90000\r\na=mid:{mid}\r\na=sendonly\r\n"
        text += f"a=msid:s{n} cid{n}\r\na=ssrc:{1000 + n} cname:x\r\n" + extra
    return text


def without_candidates(sdp: str) -> str:
    """A real offer whose ICE never starts checks: it names no address to check."""
    return "".join(line for line in sdp.splitlines(True) if not line.startswith("a=candidate"))


SDPS = st.one_of(
    st.text(max_size=40),
    st.text(max_size=40).map(lambda t: "v=0\r\n" + t),
    st.lists(st.sampled_from(["0", "1", "a", "0"]), min_size=1, max_size=3).map(hand_offer),
    st.just(hand_offer(["0"], kind="audio")),
    st.just(hand_offer(["0"]).replace("a=setup:actpass\r\n", "")),
    st.just(hand_offer(["0"], extra="a=ssrc-group:FID 1 2\r\n")),
    st.just(hand_offer(["0"]).replace("a=sendonly", "a=inactive")),
    st.builds(lambda: "\r\n".join(real_offer_lines()) + "\r\n").map(without_candidates),
    mutated_offers().map(without_candidates),
)
CANDIDATES = st.one_of(
    st.dictionaries(st.sampled_from(["candidate", "sdpMid", "sdpMLineIndex"]), JSON, max_size=3),
    st.fixed_dictionaries(
        {
            "candidate": st.sampled_from(
                [
                    "",
                    "candidate:1 1 udp 2122260223 192.0.2.7 5000 typ host",
                    "candidate:1 1 udp 2122260223 x.local 5000 typ host",
                    "candidate:junk",
                ]
            ),
            "sdpMid": st.sampled_from(["0", "1", None]),
            "sdpMLineIndex": st.sampled_from([0, 1, -1, None]),
        }
    ),
)
# A token by what it is: minted when the frame is sent, so `wall` is the send time.
TOKENS = st.sampled_from(
    ["valid", "short", "other_room", "other_identity", "garbage", "subscriber_only", "expired"]
)
TRACK_REFS = st.one_of(st.integers(0, 5).map(lambda n: f"$track{n}"), st.text(max_size=8))


def fields_of(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """A frame's fields with plausible values (`$token:...`, `$track...` filled in when sent)."""
    specs: dict[str, dict[str, st.SearchStrategy[Any]]] = {
        "join": {
            "token": TOKENS.map(lambda t: f"$token:{t}"),
            "protocol": st.sampled_from([1, 1, 1, 1, 2, 0]),
            "auto_subscribe": st.booleans(),
        },
        "resume": {"resume_token": st.sampled_from(["$resume", "$resume", "nope"])},
        "refresh": {"token": TOKENS.map(lambda t: f"$token:{t}")},
        "add_track": {
            "cid": st.sampled_from(["cid0", "cid1", "cid2"]),
            "kind": st.sampled_from(["audio", "video"]),
            "source": st.sampled_from(["camera", "microphone", "screen_share"]),
            "name": st.text(max_size=8),
            "muted": st.booleans(),
        },
        "offer": {"target": st.just("publisher"), "sdp": SDPS},
        "answer": {"target": st.just("subscriber"), "sdp": SDPS},
        "trickle": {
            "target": st.sampled_from(["publisher", "subscriber"]),
            "candidate": CANDIDATES,
        },
        "subscribe": {
            "track_sids": st.lists(TRACK_REFS, max_size=3),
            "subscribe": st.booleans(),
        },
        "unpublish": {"track_sid": TRACK_REFS},
        "mute": {"track_sid": TRACK_REFS, "muted": st.booleans()},
        "set_quality": {
            "track_sid": TRACK_REFS,
            "quality": st.sampled_from(["low", "medium", "high"]),
        },
        "update_metadata": {
            "metadata": st.text(max_size=12),
            "name": st.text(max_size=12) | st.just("\x1b[31mred\u202e"),
        },
        "ping": {},
        "leave": {},
    }
    required = {"token", "resume_token", "cid", "kind", "target", "sdp", "candidate", "track_sids",
                "track_sid", "muted", "quality"}  # fmt: skip
    spec = specs[kind]
    return st.fixed_dictionaries(
        {k: v for k, v in spec.items() if k in required},
        optional={k: v for k, v in spec.items() if k not in required},
    )


KINDS = st.sampled_from(
    ["join", "join", "resume", "refresh", "add_track", "offer", "answer", "trickle", "subscribe",
     "unpublish", "mute", "set_quality", "update_metadata", "ping", "leave", "nonsense"]
)  # fmt: skip


@st.composite
def frames(draw: st.DrawFn) -> dict[str, Any] | str:
    """One frame: a plausible one, one field replaced by any JSON, or not a frame at all."""
    how = draw(st.sampled_from(["plain"] * 6 + ["mutated", "dropped", "bad_req", "raw"]))
    if how == "raw":
        return draw(st.one_of(st.text(max_size=30), JSON.map(json.dumps)))
    kind = draw(KINDS)
    frame: dict[str, Any] = {"type": kind}
    if kind != "nonsense":
        frame.update(draw(fields_of(kind)))
    req = draw(REQS)
    if req is not None:
        frame["req"] = req
    if how == "mutated":
        name = draw(st.sampled_from([*frame, "extra"]))
        frame[name] = draw(JSON)
    elif how == "dropped":
        del frame[draw(st.sampled_from(list(frame)))]
    elif how == "bad_req":
        frame["req"] = draw(BAD_REQS)
    return frame


SLOTS = st.integers(0, len(IDENTITIES) - 1)
JOINS: st.SearchStrategy[dict[str, Any]] = st.builds(
    dict, fields_of("join"), type=st.just("join"), req=st.integers(0, 9)
)
RESUME = {"type": "resume", "resume_token": "$resume", "req": 1}
# A frame from a client (joining it first when it has no connection, if the last item says so),
# after a time step.
ANY_FRAME = st.tuples(st.just("frame"), SLOTS, frames(), st.floats(0, 5), st.booleans())
STEPS = st.lists(
    st.one_of(
        *[ANY_FRAME] * 5,  # most steps are frames
        st.tuples(st.just("frame"), SLOTS, JOINS, st.just(0.0), st.just(False)),
        st.tuples(st.just("frame"), SLOTS, st.just(RESUME), st.just(0.0), st.just(False)),
        st.tuples(st.just("publish"), SLOTS, SDPS),
        st.tuples(st.just("timer"), st.sampled_from([1.0, 30.0, 300.0, 700.0, 4000.0])),
        st.tuples(st.just("drop"), SLOTS),
    ),
    max_size=40,
)


@dataclass
class Client:
    """One client slot: its current connection, and the resume token it last got."""

    identity: str
    session: Session | None = None
    wire: Wire = field(default_factory=Wire)
    started: bool = False
    resume_token: str = ""


class Run:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.now = NOW
        self.clients = [Client(identity) for identity in IDENTITIES]
        self.tracks: list[str] = []

    @property
    def wall(self) -> float:
        return WALL + (self.now - NOW)

    def connection(self, client: Client) -> Session:
        if client.session is None:
            client.wire = Wire()
            client.session = Session(self.state, "192.0.2.1", client.wire)
            client.started = False
        return client.session

    def fill(self, client: Client, value: Any) -> Any:
        if isinstance(value, list):
            return [self.fill(client, v) for v in value]
        if not isinstance(value, str):
            return value
        if value.startswith("$token:"):
            return self.token(client, value.removeprefix("$token:"))
        if value == "$resume":
            return client.resume_token or "none-yet"
        if value.startswith("$track"):
            n = int(value.removeprefix("$track"))
            return self.tracks[n] if n < len(self.tracks) else value
        return value

    def token(self, client: Client, variant: str) -> str:
        identity, room, ttl, wall = client.identity, "room1", 600.0, self.wall
        grants: dict[str, Any] | None = None
        if variant == "garbage":
            return "a.b.c"
        if variant == "short":
            ttl = 5
        elif variant == "other_room":
            room = "room2"
        elif variant == "other_identity":
            identity = "mallory"
        elif variant == "subscriber_only":
            grants = {"canPublish": False, "canPublishData": False}
        elif variant == "expired":
            wall -= 1000
        return token(identity, room, ttl=ttl, wall=wall, grants=grants)

    async def frame(self, client: Client, frame: dict[str, Any] | str) -> None:
        session = self.connection(client)
        if isinstance(frame, dict):
            frame = {k: self.fill(client, v) for k, v in frame.items()}
            try:
                data = json.dumps(frame, allow_nan=False)
            except ValueError:  # NaN/Infinity: not JSON, so its `req` is unreadable too
                frame = data = json.dumps(frame)
        else:
            data = frame
        sent_before = len(client.wire.frames)
        try:
            message = codec.decode(data)
        except MessageError as exc:
            assert exc.code == "invalid_message"
            if client.started:
                session.refuse(exc, self.now)
            else:
                session.refuse_first(exc)
        else:
            if client.started:
                await session.handle(message, self.now, self.wall)
            else:
                client.started = True
                outcome = session.start(message, self.now, self.wall)
                assert outcome.accepted == (not session.ending)
        await run_ready_callbacks()  # what the frame set off in the background runs now
        self.check_replies(client, frame, client.wire.frames[sent_before:], session.ending)
        if session.ending or not client.started:
            await self.drop(client)
        else:
            self.check_deadlines(session)
        self.learn(client)

    def check_replies(
        self, client: Client, frame: Any, sent: list[dict[str, Any]], ended: bool
    ) -> None:
        """A frame with a readable `req` gets exactly one reply with it; nothing else has it."""
        req = frame.get("req") if isinstance(frame, dict) else None
        readable = type(req) is int and 0 <= req < MAX_REQ
        replies = [f for f in sent if "req" in f]
        kind = str(frame.get("type"))[:12] if isinstance(frame, dict) else "raw"
        for f in sent:
            if currently_in_test_context():  # the explicit regression tests use this too
                event(f"{kind} -> {f['type']} {f.get('code', '')}")
        if not readable:
            assert replies == [], (frame, sent)
            return
        assert all(f["req"] == req for f in replies), (frame, sent)
        if ended:
            assert len(replies) <= 1, (frame, sent)
        else:
            assert len(replies) == 1, (frame, sent)
        for reply in replies:
            if reply["type"] == "error":
                assert reply["code"] in ERROR_CODES, reply

    def check_deadlines(self, session: Session) -> None:
        """A live joined session is due at the latest at its token's expiry, plus the leeway."""
        deadline = session.next_deadline()
        if session.ending or session.claims is None:
            assert deadline is None or session.claims is not None
            return
        expiry = expiry_of(session)
        assert deadline is not None and deadline <= max(expiry, self.now), (deadline, expiry)

    def learn(self, client: Client) -> None:
        session = client.session
        if session is not None and session.resume_token:
            client.resume_token = session.resume_token
        for other in self.clients:
            for published in other.wire.of_type("track_published"):
                sid = published["track"]["sid"]
                if sid not in self.tracks:
                    self.tracks.append(sid)

    async def publish(self, client: Client, sdp: str) -> None:
        """A joined client adds a video track and offers `sdp` (the hand-made offers name it)."""
        if client.session is None:
            await self.frame(client, {"type": "join", "token": "$token:valid"})
        track = {"type": "add_track", "req": 2, "cid": "cid0", "kind": "video", "source": "camera"}
        await self.frame(client, track)
        if client.session is not None:
            await self.frame(client, {"type": "offer", "req": 3, "target": "publisher", "sdp": sdp})

    async def timer(self, step: float) -> None:
        self.now += step
        for client in self.clients:
            session = client.session
            if session is None or not client.started:
                continue
            deadline = session.next_deadline()
            if deadline is not None and deadline <= self.now:
                session.handle_timer(self.now)
                after = session.next_deadline()
                assert after is None or after > self.now
            claims = session.claims
            if claims is not None and self.now >= expiry_of(session):
                assert session.ending, "a session outlived its token's expiry"
            if session.ending:
                assert session.next_deadline() is None
                await self.drop(client)
        parking = self.state.parking.next_deadline()
        if parking is not None and parking <= self.now:
            self.state.parking.handle_timer(self.now)
        await self.settle()

    async def settle(self) -> None:
        """Let the server's background tasks (a parked participant's removal) run to their end."""
        tasks = self.state.tasks._tasks  # noqa: SLF001
        while tasks:
            await asyncio.wait(set(tasks))

    async def drop(self, client: Client) -> None:
        """The connection goes (or ended): the edge calls `finish`, the client reconnects later."""
        if client.session is not None:
            await client.session.finish(self.now)
            client.session = None
            await self.settle()

    async def end(self) -> None:
        for client in self.clients:
            await self.drop(client)
        await self.timer(RESUME_WINDOW + 1)
        state = self.state
        assert len(state.parking) == 0
        assert state.sessions_by_participant == {}
        left = [p.sid for room in state.rooms.rooms.values() for p in room.participants.values()]
        assert left == []


ERROR_CODES = {
    "invalid_message", "unauthorized", "forbidden", "not_found", "conflict", "limit_exceeded",
    "rate_limited", "room_full", "server_full", "internal",
}  # fmt: skip


async def run_ready_callbacks(rounds: int = 10) -> None:
    """Let the loop run what is ready (tasks a frame woke) for a few iterations; no time passes."""
    loop = asyncio.get_running_loop()
    for _ in range(rounds):
        turn = loop.create_future()
        loop.call_soon(turn.set_result, None)
        await turn


def expiry_of(session: Session) -> float:
    """When the session's token expires (plus the leeway) on the loop clock, give or take the
    float rounding of converting it from the wall clock at another instant."""
    assert session.claims is not None
    return NOW + (session.claims.exp + LEEWAY - WALL) + 1e-6


class Failures(logging.Handler):
    """Every background task failure, logged error (a failed timer or listener) and unretrieved
    task exception: none is allowed (attached to the `keyroom` logger)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.name == "keyroom.tasks":
            self.seen.append(f"{record.name}: {record.getMessage()}")

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.seen.append(str(context.get("exception") or context.get("message")))


async def play(steps: list[tuple[Any, ...]]) -> None:
    failures = Failures()
    asyncio.get_running_loop().set_exception_handler(failures.loop_exception)
    logging.getLogger("keyroom").addHandler(failures)
    try:
        await play_steps(steps)
    finally:
        logging.getLogger("keyroom").removeHandler(failures)
    assert failures.seen == []


async def play_steps(steps: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = make_state(
            Path(tmp),
            limits={"max_bad_frames": 5, "bad_frame_window": 10.0},
            server={"resume_window": RESUME_WINDOW},
        )
        run = Run(state)
        try:
            for step in steps:
                if step[0] == "frame":
                    _, slot, frame, dt, join_first = step
                    run.now += dt
                    client = run.clients[slot]
                    if join_first and client.session is None:
                        await run.frame(client, {"type": "join", "token": "$token:valid"})
                    await run.frame(client, frame)
                elif step[0] == "publish":  # add_track, then an offer (req 2, 3)
                    _, slot, sdp = step
                    await run.publish(run.clients[slot], sdp)
                elif step[0] == "timer":
                    await run.timer(step[1])
                else:
                    await run.drop(run.clients[step[1]])
            await run.end()
        finally:
            await close_all(state)
        assert state.rooms.rooms == {}


async def test_a_junk_subscriber_answer_gets_the_offer_again(tmp_path: Path) -> None:
    """Found by the fuzz above: aiortc refused a junk answer inside the subscriber's negotiation
    task, the exception escaped that task, and the subscriber connection stayed waiting on an
    offer nobody would answer again (no later track could ever be sent to that participant)."""
    state = make_state(tmp_path)
    failures = Failures()
    logging.getLogger("keyroom").addHandler(failures)
    try:
        alice, wire, outcome = join(state, "alice")
        assert outcome.accepted
        await wire.next_of_type("offer")
        await alice.handle(Answer(target="subscriber", sdp="v=0\r\njunk", req=2), NOW, WALL)
        assert wire.frames[-1] == {"type": "ok", "req": 2}
        await eventually(lambda: len(wire.of_type("offer")) == 2, what="a second offer")
        assert failures.seen == []
    finally:
        logging.getLogger("keyroom").removeHandler(failures)
        await close_all(state)


async def test_an_offer_bundling_a_missing_section_fails_nothing_in_the_background(
    tmp_path: Path,
) -> None:
    """Found by the fuzz below: an offer whose BUNDLE group names a missing mid was answered by
    aiortc with an error, but its connect task then failed unretrieved (AttributeError) and the
    publisher connection was left bundled onto no transport."""
    lines = [line for line in real_offer_lines() if not line.startswith("m=audio")]
    failures = Failures()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(failures.loop_exception)
    state = make_state(tmp_path)
    try:
        run = Run(state)
        client = run.clients[0]
        await run.publish(client, without_candidates("\r\n".join(lines) + "\r\n"))
        reply = client.wire.frames[-1]
        assert (reply["type"], reply["req"]) == ("error", 3)
        assert "BUNDLE" in reply["message"]
    finally:
        await close_all(state)
        loop.set_exception_handler(None)
    assert failures.seen == []


@fuzz(200)
@given(STEPS)
def test_random_frame_sequences_leave_the_server_consistent(steps: list[tuple[Any, ...]]) -> None:
    asyncio.run(play(steps))
