"""The aiortc/aioice internals keyroom relies on are where it expects them (fails loudly)."""

from __future__ import annotations

import pytest
from aiortc.rtcdtlstransport import RTCDtlsTransport

from sfu import internals


def test_pinned_internals_are_present() -> None:
    internals.verify_internals()


def test_a_moved_internal_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(RTCDtlsTransport, "_handle_rtp_data")
    with pytest.raises(internals.InternalsMoved, match="_handle_rtp_data"):
        internals.verify_internals()
