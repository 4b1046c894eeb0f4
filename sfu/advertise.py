"""1:1 NAT: the SDP keyroom sends names the public address instead of the one it bound.

aioice gathers on the bound (private) address; peers reach it through the NAT's public one, and
aioice learns their address peer-reflexively from their checks. Pure text rewrite of the
candidate and connection lines, nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping


def advertise(sdp: str, public: Mapping[str, str]) -> str:
    if not public:
        return sdp
    lines = sdp.split("\r\n")
    for n, line in enumerate(lines):
        if line.startswith("a=candidate:"):
            fields = line.split(" ")
            if len(fields) > 4 and fields[4] in public:
                fields[4] = public[fields[4]]
                lines[n] = " ".join(fields)
        elif line.startswith("c=IN IP"):
            fields = line.split(" ")
            if len(fields) == 3 and fields[2] in public:
                address = public[fields[2]]
                fields[1] = "IP6" if ":" in address else "IP4"
                fields[2] = address
                lines[n] = " ".join(fields)
    return "\r\n".join(lines)
