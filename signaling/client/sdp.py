"""Rewrite remote descriptions that aiortc 1.16 cannot apply (pure: SDP text in, text out)."""

from __future__ import annotations

from sfu.sdpinfo import attribute, join_sdp, read_mline, split_sdp

_CODEC_PREFIXES = ("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")
_TRANSPORT_PREFIXES = ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:", "a=setup:")
_SCTP_PREFIXES = ("a=sctp-port:", "a=max-message-size:", "a=sctpmap:")
_DEFAULT_CODECS = {
    "audio": (["111"], ["a=rtpmap:111 opus/48000/2"]),
    "video": (["96"], ["a=rtpmap:96 VP8/90000"]),
}


def make_rejected_sections_applicable(sdp: str, reference: str | None = None) -> str:
    """Rewrite rejected sections of a remote description so that aiortc can apply it.

    aiortc raises on a section with port 0 and no codecs (no rtpmap, or no format at all), and
    on one without ICE credentials or DTLS setup; a rejected section also drops out of the
    BUNDLE group, so aiortc would give it a transport of its own. Each such section becomes an
    inactive, bundled section: codecs are taken from the section itself, else from the same
    section of `reference` (our own offer when `sdp` is an answer, our previous answer when it is
    a re-offer), else a default codec of the kind; transport attributes from the first live
    section. Sections that are fine are left byte for byte.
    """
    session, sections = split_sdp(sdp)
    broken = [i for i, lines in enumerate(sections) if _unappliable(lines)]
    if not broken:
        return sdp
    ref_sections = split_sdp(reference)[1] if reference else []
    live = next((s for i, s in enumerate(sections) if i not in broken), [])
    for i in broken:
        ref = ref_sections[i] if i < len(ref_sections) else []
        sections[i] = _inactive_section(sections[i], ref, live, session)
    fixed_mids = {mid for i in broken if (mid := attribute(sections[i], "mid")) is not None}
    _rebundle(session, sections, fixed_mids)
    return join_sdp(session, sections)


def _has_codecs(lines: list[str]) -> bool:
    return any(line.startswith("a=rtpmap:") for line in lines)


def _unappliable(lines: list[str]) -> bool:
    mline = read_mline(lines[0])
    return mline.port == 0 or (mline.kind in _DEFAULT_CODECS and not _has_codecs(lines))


def _inactive_section(
    old: list[str], ref: list[str], live: list[str], session: list[str]
) -> list[str]:
    """`old` as an inactive section on the bundle's transport."""
    kind, _, proto, formats = read_mline(old[0])
    if ref and read_mline(ref[0]).kind != kind:
        ref = []
    mid = attribute(old, "mid") or attribute(ref, "mid")
    body = ["c=IN IP4 0.0.0.0"]
    if kind in _DEFAULT_CODECS:
        formats, codecs = _codecs(kind, formats, old, ref)
        body += ["a=inactive", "a=rtcp-mux", *codecs]
    else:
        body += [line for line in old if line.startswith(_SCTP_PREFIXES)] or [
            line for line in ref if line.startswith(_SCTP_PREFIXES)
        ]
    if mid is not None:
        body.append(f"a=mid:{mid}")
    for prefix in _TRANSPORT_PREFIXES:
        if any(line.startswith(prefix) for line in session):
            continue
        own = [line for line in old if line.startswith(prefix)]
        body += own or [line for line in live if line.startswith(prefix)]
    return [f"m={kind} 9 {proto} {' '.join(formats)}".rstrip(), *body]


def _codecs(
    kind: str, formats: list[str], old: list[str], ref: list[str]
) -> tuple[list[str], list[str]]:
    """The formats and codec lines of the section itself, else of `ref`, else the default."""
    codecs = [line for line in old if line.startswith(_CODEC_PREFIXES)]
    if not _has_codecs(codecs):
        codecs = [line for line in ref if line.startswith(_CODEC_PREFIXES)]
        formats = read_mline(ref[0]).formats if ref else []
    if not _has_codecs(codecs):
        return _DEFAULT_CODECS[kind]
    return formats, codecs


def _rebundle(session: list[str], sections: list[list[str]], fixed_mids: set[str]) -> None:
    # In m-line order, as aiortc bundles: it takes the first mid as the transport of all, and
    # a change of that first mid would move every section onto a new, unconnected transport.
    for n, line in enumerate(session):
        if line.startswith("a=group:BUNDLE"):
            items = set(line.split()[1:]) | fixed_mids
            mids = [mid for lines in sections if (mid := attribute(lines, "mid")) in items]
            session[n] = " ".join(["a=group:BUNDLE", *mids])
