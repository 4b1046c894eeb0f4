"""Opus in-band FEC and DTX in keyroom's SDP (aiortc writes no Opus parameters of its own).

In an answer, `a=fmtp` parameters describe what the answerer wants to receive: `useinbandfec=1`
asks the publisher to carry forward error correction in each Opus packet (a lost packet is
rebuilt from the next one, no retransmission round trip), `usedtx=1` lets it send next to
nothing during silence. keyroom forwards Opus untouched, so subscribers' decoders get the FEC.
"""

from __future__ import annotations

from sfu.sdpinfo import join_sdp, read_mline, split_sdp

PARAMETERS = {"useinbandfec": "1", "usedtx": "1"}


def _opus_payload_types(lines: list[str]) -> list[str]:
    types = []
    for line in lines:
        if line.startswith("a=rtpmap:"):
            pt, _, encoding = line[len("a=rtpmap:") :].partition(" ")
            if encoding.lower().startswith("opus/"):
                types.append(pt)
    return types


def _with_parameters(value: str) -> str:
    params = dict((item.split("=", 1) + [""])[:2] for item in value.split(";") if item.strip())
    params = {k.strip(): v.strip() for k, v in params.items()}
    params.update(PARAMETERS)
    return ";".join(f"{k}={v}" if v else k for k, v in params.items())


def _section(lines: list[str]) -> list[str]:
    out = list(lines)
    for pt in _opus_payload_types(lines):
        prefix = f"a=fmtp:{pt} "
        index = next((i for i, line in enumerate(out) if line.startswith(prefix)), None)
        if index is None:
            rtpmap = next(i for i, line in enumerate(out) if line.startswith(f"a=rtpmap:{pt} "))
            out.insert(rtpmap + 1, prefix + _with_parameters(""))
        else:
            out[index] = prefix + _with_parameters(out[index][len(prefix) :])
    return out


def enable_fec_and_dtx(sdp: str) -> str:
    """`sdp` with `useinbandfec=1;usedtx=1` on every Opus payload type of its audio sections."""
    session, sections = split_sdp(sdp)
    return join_sdp(
        session,
        [_section(s) if read_mline(s[0]).kind == "audio" else s for s in sections],
    )
