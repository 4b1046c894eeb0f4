"""Fuzzing the SDP reader (sfu/sdpinfo.py) with mutated real aiortc offers and random text.

`describe_offer` is the server's gate for a publisher's offer: whatever the text, it returns
sections that keep keyroom's rules or raises `BadSdp`, never anything else. The client's
`describe_sections` raises at most ValueError (a malformed m= line or SSRC), and `split_sdp` never
raises and reads the same sections back from what `join_sdp` writes.
"""

from __future__ import annotations

import asyncio
import functools
import re

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from sfu.sdpinfo import (
    MAX_SECTIONS,
    BadSdp,
    MediaSection,
    describe_offer,
    describe_sections,
    join_sdp,
    read_mline,
    split_sdp,
)
from tests.fuzzing import fuzz
from tests.test_sdpinfo import aiortc_offer


@functools.cache
def real_offer_lines() -> tuple[str, ...]:
    """An aiortc publisher's offer (audio, video, data channel), made once."""
    return tuple(asyncio.run(aiortc_offer()).splitlines())


NUMBERS = st.one_of(
    st.integers(-5, 300),
    st.sampled_from([0, 65535, 65536, 2**31, 2**32, 2**32 - 1, 2**64, -(2**31)]),
    st.integers(),
).map(str)
JUNK = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", " ", ":", "\x00", "\r", "\x0b", "\x1c", "\u2028", "\x85", "m=", "a="]),
)
ATTRIBUTES = st.sampled_from(
    ["mid", "msid", "ssrc", "ssrc-group", "rtpmap", "fmtp", "rtcp-fb", "extmap", "ice-ufrag",
     "ice-pwd", "fingerprint", "setup", "group", "sendonly", "inactive", "rtcp", "candidate",
     "sctp-port", "max-message-size", "rid", "simulcast", "rtcp-mux"]
)  # fmt: skip


@st.composite
def mutation(draw: st.DrawFn, lines: list[str]) -> list[str]:
    """One edit of an offer's lines, of the kinds a careless or hostile client makes."""
    lines = lines or [""]
    n = draw(st.integers(0, max(0, len(lines) - 1)))
    how = draw(
        st.sampled_from(
            ["delete", "duplicate", "swap", "number", "value", "insert", "section", "kind",
             "truncate", "chars"]
        )
    )  # fmt: skip
    line = lines[n]
    if how == "delete":
        del lines[n]
    elif how == "duplicate":
        lines.insert(n, line)
    elif how == "swap":
        m = draw(st.integers(0, len(lines) - 1))
        lines[n], lines[m] = lines[m], lines[n]
    elif how == "number":
        numbers = list(re.finditer(r"\d+", line))
        if numbers:
            found = draw(st.sampled_from(numbers))
            lines[n] = line[: found.start()] + draw(NUMBERS) + line[found.end() :]
    elif how == "value":
        lines[n] = line.partition(":")[0] + ":" + draw(JUNK)
    elif how == "insert":
        name, value = draw(ATTRIBUTES), draw(st.one_of(JUNK, NUMBERS))
        lines.insert(n, f"a={name}:{value}" if draw(st.booleans()) else f"a={name}")
    elif how in ("section", "kind"):
        lines = draw(section_mutation(lines, how, n))
    elif how == "truncate":
        cut = draw(st.integers(0, len(line)))
        lines[n : len(lines)] = [line[:cut]]
    elif how == "chars":
        at = draw(st.integers(0, len(line)))
        lines[n] = line[:at] + draw(JUNK) + line[at:]
    return lines


@st.composite
def section_mutation(draw: st.DrawFn, lines: list[str], how: str, n: int) -> list[str]:
    """A whole m= section repeated at the end, or an m= line's kind changed."""
    if how == "section":
        _, sections = split_sdp("\r\n".join(lines))
        if sections:
            lines.extend(draw(st.sampled_from(sections)))
    elif lines[n].startswith("m="):
        _, space, rest = lines[n].partition(" ")
        kind = draw(st.sampled_from(["audio", "video", "application", "text", ""]))
        lines[n] = f"m={kind}{space}{rest}"
    return lines


@st.composite
def mutated_offers(draw: st.DrawFn) -> str:
    lines = list(real_offer_lines())
    for _ in range(draw(st.integers(1, 6))):
        lines = draw(mutation(lines))
    return "\r\n".join(lines) + draw(st.sampled_from(["\r\n", "\n", ""]))


def check_offer(text: str) -> list[MediaSection] | None:
    """What the server's gate says: sections that keep its rules, or BadSdp."""
    try:
        sections = describe_offer(text)
    except BadSdp as exc:
        assert str(exc)
        event(f"refused: {re.sub(r'[0-9]+', 'N', str(exc))[:40]}")
        return None
    event("accepted")
    assert 0 < len(sections) <= MAX_SECTIONS
    mids = [s.mid for s in sections]
    assert all(mids) and len(set(mids)) == len(mids)
    assert all(s.kind in ("audio", "video", "application") for s in sections)
    return sections


def check_client_reader(text: str) -> None:
    """The client's reader raises at most ValueError; splitting is lossless."""
    session, sections = split_sdp(text)
    assert split_sdp(join_sdp(session, sections)) == (session, sections)
    try:
        infos = describe_sections(text)
    except ValueError:
        return
    assert [i.index for i in infos] == list(range(len(sections)))
    for info, lines in zip(infos, sections, strict=True):
        assert read_mline(lines[0]).kind == info.kind


def test_the_real_offer_passes() -> None:
    sections = describe_offer("\r\n".join(real_offer_lines()) + "\r\n")
    assert [s.kind for s in sections] == ["audio", "video", "application"]


def test_a_bundle_group_naming_a_missing_section_is_refused() -> None:
    """Found by tests/test_fuzz_session.py: with its first m= line deleted, a real offer's
    `a=group:BUNDLE 0 1 2` names a mid no section has; aiortc bundled the others onto no transport
    and its connect task failed with AttributeError, leaving the publisher connection unusable."""
    lines = list(real_offer_lines())
    del lines[next(n for n, line in enumerate(lines) if line.startswith("m=audio"))]
    text = "\r\n".join(lines) + "\r\n"
    assert "a=group:BUNDLE 0 1 2" in text
    with pytest.raises(BadSdp, match="a=group:BUNDLE names mid '0', which no media section has"):
        describe_offer(text)


@fuzz(300)
@given(mutated_offers())
def test_a_mutated_real_offer_is_read_or_refused_with_bad_sdp(text: str) -> None:
    check_offer(text)
    check_client_reader(text)


@fuzz(300)
@given(st.one_of(st.text(), st.text().map(lambda t: "v=0\r\n" + t)))
def test_random_text_is_refused_with_bad_sdp(text: str) -> None:
    check_offer(text)
    check_client_reader(text)


@fuzz(200)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(list(real_offer_lines())),
            st.builds(lambda a, v: f"a={a}:{v}", ATTRIBUTES, st.one_of(JUNK, NUMBERS)),
            st.builds(lambda k, p: f"m={k} {p} UDP/TLS/RTP/SAVPF 96", JUNK, NUMBERS),
        ),
        max_size=40,
    ).map(lambda lines: "v=0\r\n" + "\r\n".join(lines))
)
def test_lines_of_real_offers_in_any_order_are_read_or_refused(text: str) -> None:
    check_offer(text)
    check_client_reader(text)
