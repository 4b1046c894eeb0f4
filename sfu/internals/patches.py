"""Process-wide patches that turn aiortc into transport plumbing: no codec, no media tasks."""

from __future__ import annotations

import aioice.ice
import aiortc.codecs
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
from aiortc.rtcsctptransport import RTCSctpTransport

from sfu.internals.sctp import receive_data_chunk_bounded
from sfu.internals.verify import verify_internals


class CodecCreated(RuntimeError):
    """Raised if anything in the server tries to create a decoder or encoder."""


def _refuse_codec(*args: object, **kwargs: object) -> None:
    raise CodecCreated("keyroom forwards packets: no decoder or encoder may be created")


async def _receive_without_decoder(self: object, parameters: object) -> None:
    # Stock receive() starts a decoder thread and an RTCP task per transceiver; keyroom takes
    # plaintext RTP at the transport instead, so the receiver stays idle.
    return None


async def _send_without_encoder(self: object, parameters: object) -> None:
    # Stock send() starts an encoder loop polling its track 50 times a second and an RTCP task
    # sending zeroed Sender Reports; keyroom writes RTP and SRs for each down-track itself.
    return None


_stock_receiver_init = aiortc.rtcrtpreceiver.RTCRtpReceiver.__init__


def _receiver_init_without_estimator(self: object, kind: str, transport: object) -> None:
    # Stock __init__ gives each video receiver a remote bitrate estimator of 1,000 rate buckets
    # (~50 KB, 10 % of a subscribed track's memory) for REMB from its RTP path, which keyroom
    # bypasses (RTP is taken at the transport; sfu/feedback.py sends REMB). aiortc skips a None
    # estimator, as for audio.
    _stock_receiver_init(self, kind, transport)  # type: ignore[arg-type]
    self._RTCRtpReceiver__remote_bitrate_estimator = None  # type: ignore[attr-defined]


_stock_query_consent = aioice.ice.Connection.query_consent


async def _query_consent_unless_closed(self: aioice.ice.Connection) -> None:
    # aioice starts consent checks when connect() resumes, which can be after close() already
    # ran: that task would then sleep forever, one leaked task per such connection.
    if self._closing:
        return
    await _stock_query_consent(self)


def install_server_patches() -> None:
    """Turn aiortc into transport plumbing for this process: no codec, no media tasks, data
    channel reassembly bounded by the receive window."""
    verify_internals()
    RTCSctpTransport._receive_data_chunk = receive_data_chunk_bounded  # type: ignore[method-assign, assignment]
    aiortc.rtcrtpreceiver.RTCRtpReceiver.receive = _receive_without_decoder  # type: ignore[method-assign]
    aiortc.rtcrtpsender.RTCRtpSender.send = _send_without_encoder  # type: ignore[method-assign]
    aiortc.rtcrtpreceiver.RTCRtpReceiver.__init__ = _receiver_init_without_estimator  # type: ignore[method-assign]
    aioice.ice.Connection.query_consent = _query_consent_unless_closed  # type: ignore[method-assign]
    aiortc.rtcrtpreceiver.get_decoder = _refuse_codec  # type: ignore[attr-defined, assignment]
    aiortc.rtcrtpsender.get_encoder = _refuse_codec  # type: ignore[attr-defined, assignment]
    aiortc.codecs.get_decoder = _refuse_codec  # type: ignore[assignment]
    aiortc.codecs.get_encoder = _refuse_codec  # type: ignore[assignment]
