"""Statistics of RTP streams, parsed from the worker's ``FBS.RtpStream.Stats``.

The dictionaries carry the keys mediasoup's Node library gives them; optional
statistics the worker does not report are absent keys.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from mafalda.mediasoup._fbs.RtpParameters.MediaKind import MediaKind as FbsMediaKind
from mafalda.mediasoup._fbs.RtpStream.StatsData import StatsData
from mafalda.mediasoup.rtp_parameters import MediaKind

__all__ = [
    "BaseRtpStreamStats",
    "BitrateByLayer",
    "RtpStreamRecvStats",
    "RtpStreamSendStats",
    "parse_rtp_stream_recv_stats",
    "parse_rtp_stream_stats",
    "parse_send_stream_stats",
]

BitrateByLayer = dict[str, int]


class BaseRtpStreamStats(TypedDict):
    timestamp: int
    ssrc: int
    rtxSsrc: NotRequired[int]
    rid: NotRequired[str]
    kind: MediaKind
    mimeType: str
    packetsLost: int
    fractionLost: int
    jitter: int
    packetsDiscarded: int
    packetsRetransmitted: int
    packetsRepaired: int
    nackCount: int
    nackPacketCount: int
    pliCount: int
    firCount: int
    roundTripTime: NotRequired[float]
    rtxPacketsDiscarded: NotRequired[int]
    score: int


class RtpStreamRecvStats(BaseRtpStreamStats):
    type: Literal["inbound-rtp"]
    packetCount: int
    byteCount: int
    bitrate: int
    bitrateByLayer: BitrateByLayer


class RtpStreamSendStats(BaseRtpStreamStats):
    type: Literal["outbound-rtp"]
    packetCount: int
    byteCount: int
    bitrate: int


def parse_rtp_stream_stats(data: Any) -> RtpStreamRecvStats | RtpStreamSendStats:
    """The statistics of a receiving or a sending stream, from a ``StatsT``."""
    if data.dataType == StatsData.RecvStats:
        return parse_rtp_stream_recv_stats(data)
    if data.dataType == StatsData.SendStats:
        return parse_send_stream_stats(data)
    raise TypeError(f"unexpected RTP stream stats type {data.dataType}")


def parse_rtp_stream_recv_stats(data: Any) -> RtpStreamRecvStats:
    """The statistics of a receiving stream, from a ``StatsT`` holding ``RecvStats``."""
    recv = data.data
    stats: RtpStreamRecvStats = {
        **_parse_base_stats(recv.base.data),
        "type": "inbound-rtp",
        "byteCount": recv.byteCount,
        "packetCount": recv.packetCount,
        "bitrate": recv.bitrate,
        "bitrateByLayer": {layer.layer: layer.bitrate for layer in recv.bitrateByLayer or ()},
    }
    return stats


def parse_send_stream_stats(data: Any) -> RtpStreamSendStats:
    """The statistics of a sending stream, from a ``StatsT`` holding ``SendStats``."""
    send = data.data
    stats: RtpStreamSendStats = {
        **_parse_base_stats(send.base.data),
        "type": "outbound-rtp",
        "byteCount": send.byteCount,
        "packetCount": send.packetCount,
        "bitrate": send.bitrate,
    }
    return stats


def _parse_base_stats(base: Any) -> BaseRtpStreamStats:
    stats: BaseRtpStreamStats = {
        "timestamp": base.timestamp,
        "ssrc": base.ssrc,
        "kind": "audio" if base.kind == FbsMediaKind.AUDIO else "video",
        "mimeType": base.mimeType,
        "packetsLost": base.packetsLost,
        "fractionLost": base.fractionLost,
        "jitter": base.jitter,
        "packetsDiscarded": base.packetsDiscarded,
        "packetsRetransmitted": base.packetsRetransmitted,
        "packetsRepaired": base.packetsRepaired,
        "nackCount": base.nackCount,
        "nackPacketCount": base.nackPacketCount,
        "pliCount": base.pliCount,
        "firCount": base.firCount,
        "roundTripTime": base.roundTripTime,
        "score": base.score,
    }
    if base.rtxSsrc is not None:
        stats["rtxSsrc"] = base.rtxSsrc
    if base.rid:
        stats["rid"] = base.rid
    # As mediasoup: zero RTX packets discarded is reported as "not known".
    if base.rtxPacketsDiscarded:
        stats["rtxPacketsDiscarded"] = base.rtxPacketsDiscarded
    return stats
