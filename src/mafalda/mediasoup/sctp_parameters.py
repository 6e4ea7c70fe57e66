"""SCTP dictionaries and their FlatBuffers form (``sctpParameters.fbs``)."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from mafalda.mediasoup._fbs.SctpParameters.SctpStreamParameters import SctpStreamParametersT

__all__ = [
    "NumSctpStreams",
    "SctpCapabilities",
    "SctpParameters",
    "SctpParametersDump",
    "SctpStreamParameters",
    "parse_sctp_parameters_dump",
    "parse_sctp_stream_parameters",
    "serialize_sctp_stream_parameters",
]


class NumSctpStreams(TypedDict):
    OS: int
    MIS: int


class SctpCapabilities(TypedDict):
    numStreams: NumSctpStreams


class SctpParameters(TypedDict):
    port: int
    OS: int
    MIS: int
    maxMessageSize: int


class SctpStreamParameters(TypedDict):
    streamId: int
    ordered: NotRequired[bool]
    maxPacketLifeTime: NotRequired[int]
    maxRetransmits: NotRequired[int]


class SctpParametersDump(TypedDict):
    port: int
    OS: int
    MIS: int
    maxMessageSize: int
    sendBufferSize: int
    sctpBufferedAmount: int
    isDataChannel: bool


def parse_sctp_parameters_dump(data: Any) -> SctpParametersDump:
    """The SCTP parameters of a transport dump, from an ``SctpParametersT``."""
    return {
        "port": data.port,
        "OS": data.os,
        "MIS": data.mis,
        "maxMessageSize": data.maxMessageSize,
        "sendBufferSize": data.sendBufferSize,
        "sctpBufferedAmount": data.sctpBufferedAmount,
        "isDataChannel": data.isDataChannel,
    }


def serialize_sctp_stream_parameters(parameters: SctpStreamParameters) -> Any:
    """SCTP stream parameters as an ``SctpStreamParametersT``."""
    max_packet_life_time = parameters.get("maxPacketLifeTime")
    max_retransmits = parameters.get("maxRetransmits")
    return SctpStreamParametersT(
        streamId=int(parameters["streamId"]),
        ordered=parameters.get("ordered"),
        maxPacketLifeTime=None if max_packet_life_time is None else int(max_packet_life_time),
        maxRetransmits=None if max_retransmits is None else int(max_retransmits),
    )


def parse_sctp_stream_parameters(data: Any) -> SctpStreamParameters:
    """An SCTP stream parameters dictionary from an ``SctpStreamParametersT``."""
    parameters: SctpStreamParameters = {"streamId": data.streamId}
    if data.ordered is not None:
        parameters["ordered"] = data.ordered
    if data.maxPacketLifeTime is not None:
        parameters["maxPacketLifeTime"] = data.maxPacketLifeTime
    if data.maxRetransmits is not None:
        parameters["maxRetransmits"] = data.maxRetransmits
    return parameters
