"""The aiortc/aioice internals keyroom relies on are where it expects them (fails loudly)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from aiortc.rtcdtlstransport import RTCDtlsTransport
from pylibsrtp import Policy, Session

from sfu import internals


def test_pinned_internals_are_present() -> None:
    internals.verify_internals()


def test_a_moved_internal_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(RTCDtlsTransport, "_handle_rtp_data")
    with pytest.raises(internals.InternalsMoved, match="_handle_rtp_data"):
        internals.verify_internals()


KEY = os.urandom(28)


def session(direction: int) -> Session:
    return Session(
        Policy(key=KEY, ssrc_type=direction, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM)
    )


def test_lean_srtp_protect_matches_pylibsrtp() -> None:
    stock, lean = session(Policy.SSRC_ANY_OUTBOUND), session(Policy.SSRC_ANY_OUTBOUND)
    protector = internals.SrtpProtector(lean)
    receiver = session(Policy.SSRC_ANY_INBOUND)
    for seq in range(5):
        packet = bytes([0x80, 0x60, 0, seq]) + bytes(8) + os.urandom(200)
        protected = protector.protect(packet)
        assert protected == stock.protect(packet)
        assert receiver.unprotect(protected) == packet
    assert protector.protect(bytes([0x80, 0x60, 0, 4]) + bytes(8) + bytes(200)) is None  # replay
    assert protector.protect(bytes(1500)) is None  # too long for the session's buffer


def test_lean_srtp_unprotect_matches_pylibsrtp_and_refuses_without_raising() -> None:
    sender, stock = session(Policy.SSRC_ANY_OUTBOUND), session(Policy.SSRC_ANY_INBOUND)
    lean = internals.SrtpProtector(session(Policy.SSRC_ANY_INBOUND))
    packets = [bytes([0x80, 0x60, 0, seq]) + bytes(8) + os.urandom(200) for seq in range(5)]
    protected = [sender.protect(p) for p in packets]
    for packet, srtp in zip(packets, protected, strict=True):
        assert lean.unprotect(srtp) == stock.unprotect(srtp) == packet
    assert lean.unprotect(protected[2]) is None  # a replay
    forged = protected[-1][:-1] + bytes([protected[-1][-1] ^ 1])
    assert lean.unprotect(forged) is None  # a forgery (the tag does not verify)
    assert lean.unprotect(bytes(5000)) is None  # larger than the session's buffer
    late = sender.protect(bytes([0x80, 0x60, 0, 9]) + bytes(8) + b"after refusals")
    assert lean.unprotect(late) == bytes([0x80, 0x60, 0, 9]) + bytes(8) + b"after refusals"


def test_server_receivers_hold_no_bitrate_estimator() -> None:
    """A video receiver's stock REMB estimator (1,000 rate buckets) is not built on the server.
    In a child process: the server patches refuse codecs, which this process's clients need."""
    check = """
from types import SimpleNamespace
from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from sfu import internals
internals.install_server_patches()
transport = SimpleNamespace(state="new")
video = RTCRtpReceiver("video", transport)
assert not any(isinstance(v, RemoteBitrateEstimator) for v in vars(video).values())
assert video.transport is transport  # the rest of the receiver is built as before
"""
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
