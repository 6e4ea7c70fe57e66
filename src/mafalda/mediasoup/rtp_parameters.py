"""RTP dictionaries (capabilities and parameters) and their FlatBuffers form.

The dictionaries are the camelCase wire objects mediasoup and mediasoup-client
exchange, typed as TypedDicts. The ``serialize_*`` functions turn them into the
object-API tables of the worker's ``rtpParameters.fbs`` (the channel packs them);
the ``parse_*`` functions turn tables read from the worker back into dictionaries.
Fields that mediasoup leaves ``undefined`` are absent keys here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, NotRequired, TypedDict

from mafalda.mediasoup._fastfbs import PrepackedCache
from mafalda.mediasoup._fbs.RtpParameters.Boolean import BooleanT
from mafalda.mediasoup._fbs.RtpParameters.Double import DoubleT
from mafalda.mediasoup._fbs.RtpParameters.Integer32 import Integer32T
from mafalda.mediasoup._fbs.RtpParameters.Integer32Array import Integer32ArrayT
from mafalda.mediasoup._fbs.RtpParameters.Parameter import ParameterT
from mafalda.mediasoup._fbs.RtpParameters.RtcpFeedback import RtcpFeedbackT
from mafalda.mediasoup._fbs.RtpParameters.RtcpParameters import RtcpParametersT
from mafalda.mediasoup._fbs.RtpParameters.RtpCodecParameters import RtpCodecParametersT
from mafalda.mediasoup._fbs.RtpParameters.RtpEncodingParameters import RtpEncodingParametersT
from mafalda.mediasoup._fbs.RtpParameters.RtpHeaderExtensionParameters import (
    RtpHeaderExtensionParametersT,
)
from mafalda.mediasoup._fbs.RtpParameters.RtpHeaderExtensionUri import (
    RtpHeaderExtensionUri as FbsRtpHeaderExtensionUri,
)
from mafalda.mediasoup._fbs.RtpParameters.RtpParameters import RtpParametersT
from mafalda.mediasoup._fbs.RtpParameters.Rtx import RtxT
from mafalda.mediasoup._fbs.RtpParameters.String import StringT
from mafalda.mediasoup._fbs.RtpParameters.Value import Value
from mafalda.mediasoup.errors import InvalidValueError

__all__ = [
    "InvalidValueError",
    "MediaKind",
    "RouterRtpCapabilities",
    "RouterRtpCodecCapability",
    "RtcpFeedback",
    "RtcpParameters",
    "RtpCapabilities",
    "RtpCodecCapability",
    "RtpCodecParameters",
    "RtpEncodingParameters",
    "RtpEncodingRtx",
    "RtpHeaderExtension",
    "RtpHeaderExtensionDirection",
    "RtpHeaderExtensionParameters",
    "RtpHeaderExtensionUri",
    "RtpParameters",
    "parse_parameters",
    "parse_rtcp_feedback",
    "parse_rtp_codec_parameters",
    "parse_rtp_encoding_parameters",
    "parse_rtp_header_extension_parameters",
    "parse_rtp_parameters",
    "rtp_header_extension_uri_from_fbs",
    "rtp_header_extension_uri_to_fbs",
    "serialize_parameters",
    "serialize_rtp_encoding_parameters",
    "serialize_rtp_parameters",
]


MediaKind = Literal["audio", "video"]

RtpHeaderExtensionUri = Literal[
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension",
    "urn:3gpp:video-orientation",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time",
    "urn:ietf:params:rtp-hdrext:toffset",
    "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
    "urn:mediasoup:params:rtp-hdrext:packet-id",
]

RtpHeaderExtensionDirection = Literal["sendrecv", "sendonly", "recvonly", "inactive"]


class RtcpFeedback(TypedDict):
    type: str
    parameter: NotRequired[str]


class _RtpCodecCapabilityBase(TypedDict):
    kind: MediaKind
    mimeType: str
    clockRate: int
    channels: NotRequired[int]
    parameters: NotRequired[dict[str, Any]]
    rtcpFeedback: NotRequired[list[RtcpFeedback]]


class RtpCodecCapability(_RtpCodecCapabilityBase):
    """A codec a router or an endpoint can handle."""

    preferredPayloadType: int


class RouterRtpCodecCapability(_RtpCodecCapabilityBase):
    """A media codec given to create a router: the payload type may be left to it."""

    preferredPayloadType: NotRequired[int]


class RtpHeaderExtension(TypedDict):
    kind: MediaKind
    uri: RtpHeaderExtensionUri
    preferredId: int
    preferredEncrypt: NotRequired[bool]
    direction: NotRequired[RtpHeaderExtensionDirection]


class RtpCapabilities(TypedDict, total=False):
    codecs: list[RtpCodecCapability]
    headerExtensions: list[RtpHeaderExtension]


class RouterRtpCapabilities(TypedDict, total=False):
    codecs: list[RouterRtpCodecCapability]
    headerExtensions: list[RtpHeaderExtension]


class RtpCodecParameters(TypedDict):
    mimeType: str
    payloadType: int
    clockRate: int
    channels: NotRequired[int]
    parameters: NotRequired[dict[str, Any]]
    rtcpFeedback: NotRequired[list[RtcpFeedback]]


class RtpEncodingRtx(TypedDict):
    ssrc: int


class RtpEncodingParameters(TypedDict, total=False):
    ssrc: int
    rid: str
    codecPayloadType: int
    rtx: RtpEncodingRtx
    dtx: bool
    scalabilityMode: str
    maxBitrate: int


class RtpHeaderExtensionParameters(TypedDict):
    uri: RtpHeaderExtensionUri
    id: int
    encrypt: NotRequired[bool]
    parameters: NotRequired[dict[str, Any]]


class RtcpParameters(TypedDict, total=False):
    cname: str
    reducedSize: bool


class RtpParameters(TypedDict):
    codecs: list[RtpCodecParameters]
    mid: NotRequired[str]
    headerExtensions: NotRequired[list[RtpHeaderExtensionParameters]]
    encodings: NotRequired[list[RtpEncodingParameters]]
    rtcp: NotRequired[RtcpParameters]
    msid: NotRequired[str]


_URI_BY_FBS: Final[dict[int, RtpHeaderExtensionUri]] = {
    FbsRtpHeaderExtensionUri.Mid: "urn:ietf:params:rtp-hdrext:sdes:mid",
    FbsRtpHeaderExtensionUri.RtpStreamId: "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    FbsRtpHeaderExtensionUri.RepairRtpStreamId: (
        "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
    ),
    FbsRtpHeaderExtensionUri.AbsSendTime: (
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
    ),
    FbsRtpHeaderExtensionUri.TransportWideCcDraft01: (
        "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
    ),
    FbsRtpHeaderExtensionUri.SsrcAudioLevel: "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    FbsRtpHeaderExtensionUri.DependencyDescriptor: (
        "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension"
    ),
    FbsRtpHeaderExtensionUri.VideoOrientation: "urn:3gpp:video-orientation",
    FbsRtpHeaderExtensionUri.TimeOffset: "urn:ietf:params:rtp-hdrext:toffset",
    FbsRtpHeaderExtensionUri.AbsCaptureTime: (
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time"
    ),
    FbsRtpHeaderExtensionUri.PlayoutDelay: (
        "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
    ),
    FbsRtpHeaderExtensionUri.MediasoupPacketId: "urn:mediasoup:params:rtp-hdrext:packet-id",
}

_FBS_BY_URI: Final[dict[str, int]] = {uri: fbs for fbs, uri in _URI_BY_FBS.items()}

_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1


def rtp_header_extension_uri_from_fbs(uri: int) -> RtpHeaderExtensionUri:
    """The URI string of a ``FBS.RtpParameters.RtpHeaderExtensionUri`` value."""
    try:
        return _URI_BY_FBS[uri]
    except KeyError:
        raise InvalidValueError(f"invalid RtpHeaderExtensionUri: {uri}") from None


def rtp_header_extension_uri_to_fbs(uri: str) -> int:
    """The ``FBS.RtpParameters.RtpHeaderExtensionUri`` value of a URI string."""
    try:
        return _FBS_BY_URI[uri]
    except KeyError:
        raise InvalidValueError(f"invalid RtpHeaderExtensionUri: {uri}") from None


def _is_int32(value: int) -> bool:
    return _INT32_MIN <= value <= _INT32_MAX


def _serialize_value(key: str, value: object) -> tuple[int, Any]:
    # bool before int: bool is an int in Python but its own union member on the wire.
    if isinstance(value, bool):
        return Value.Boolean, BooleanT(value=int(value))
    if isinstance(value, int | float):
        # JavaScript has a single number type: mediasoup sends whole numbers as
        # Integer32 and the others as Double. Whole numbers beyond int32 would wrap
        # there; they go as Double here so that their value survives.
        if (isinstance(value, int) or value.is_integer()) and _is_int32(int(value)):
            return Value.Integer32, Integer32T(value=int(value))
        return Value.Double, DoubleT(value=float(value))
    if isinstance(value, str):
        return Value.String, StringT(value=value)
    if isinstance(value, list | tuple) and all(
        isinstance(item, int) and not isinstance(item, bool) and _is_int32(item) for item in value
    ):
        return Value.Integer32Array, Integer32ArrayT(value=list(value))
    raise TypeError(f"invalid parameter type [key:'{key}', value:{value!r}]")


def serialize_parameters(parameters: Mapping[str, Any]) -> list[Any]:
    """Codec or header extension parameters as a list of ``ParameterT``."""
    serialized = []
    for key, value in parameters.items():
        value_type, fbs_value = _serialize_value(key, value)
        serialized.append(ParameterT(name=key, valueType=value_type, value=fbs_value))
    return serialized


def parse_parameters(parameters: Sequence[Any] | None) -> dict[str, Any]:
    """The parameters dictionary of a list of ``ParameterT``."""
    parsed: dict[str, Any] = {}
    for parameter in parameters or ():
        value_type = parameter.valueType
        value = parameter.value
        if value_type == Value.Boolean:
            parsed[parameter.name] = bool(value.value)
        elif value_type == Value.Integer32:
            parsed[parameter.name] = int(value.value)
        elif value_type == Value.Double:
            parsed[parameter.name] = float(value.value)
        elif value_type == Value.String:
            parsed[parameter.name] = value.value
        elif value_type == Value.Integer32Array:
            # Without numpy the runtime gives a list, with numpy an ndarray.
            parsed[parameter.name] = [int(item) for item in (value.value or ())]
    return parsed


def _serialize_rtcp_feedback(feedback: RtcpFeedback) -> Any:
    return RtcpFeedbackT(type=feedback["type"], parameter=feedback.get("parameter"))


def parse_rtcp_feedback(data: Any) -> RtcpFeedback:
    """An RTCP feedback dictionary from an ``RtcpFeedbackT``."""
    feedback: RtcpFeedback = {"type": data.type}
    if data.parameter is not None:
        feedback["parameter"] = data.parameter
    return feedback


def _serialize_rtp_codec_parameters(codec: RtpCodecParameters) -> Any:
    channels = codec.get("channels")
    return RtpCodecParametersT(
        mimeType=codec["mimeType"],
        payloadType=int(codec["payloadType"]),
        clockRate=int(codec["clockRate"]),
        channels=None if channels is None else int(channels),
        parameters=serialize_parameters(codec.get("parameters") or {}),
        rtcpFeedback=[_serialize_rtcp_feedback(fb) for fb in codec.get("rtcpFeedback") or ()],
    )


def parse_rtp_codec_parameters(data: Any) -> RtpCodecParameters:
    """An RTP codec parameters dictionary from an ``RtpCodecParametersT``."""
    codec: RtpCodecParameters = {
        "mimeType": data.mimeType,
        "payloadType": data.payloadType,
        "clockRate": data.clockRate,
    }
    if data.channels is not None:
        codec["channels"] = data.channels
    codec["parameters"] = parse_parameters(data.parameters)
    codec["rtcpFeedback"] = [parse_rtcp_feedback(fb) for fb in data.rtcpFeedback or ()]
    return codec


def _serialize_rtp_header_extension_parameters(ext: RtpHeaderExtensionParameters) -> Any:
    return RtpHeaderExtensionParametersT(
        uri=rtp_header_extension_uri_to_fbs(ext["uri"]),
        id=int(ext["id"]),
        encrypt=bool(ext.get("encrypt")),
        parameters=serialize_parameters(ext.get("parameters") or {}),
    )


def parse_rtp_header_extension_parameters(data: Any) -> RtpHeaderExtensionParameters:
    """An RTP header extension parameters dictionary from its table."""
    return {
        "uri": rtp_header_extension_uri_from_fbs(data.uri),
        "id": data.id,
        "encrypt": data.encrypt,
        "parameters": parse_parameters(data.parameters),
    }


def serialize_rtp_encoding_parameters(
    encodings: Sequence[RtpEncodingParameters] = (),
) -> list[Any]:
    """RTP encodings as a list of ``RtpEncodingParametersT``."""
    serialized = []
    for encoding in encodings:
        fbs_encoding = RtpEncodingParametersT()
        # As mediasoup: a zero SSRC or payload type means "not given".
        if ssrc := encoding.get("ssrc"):
            fbs_encoding.ssrc = int(ssrc)
        fbs_encoding.rid = encoding.get("rid")
        if codec_payload_type := encoding.get("codecPayloadType"):
            fbs_encoding.codecPayloadType = int(codec_payload_type)
        if rtx := encoding.get("rtx"):
            fbs_encoding.rtx = RtxT(ssrc=int(rtx["ssrc"]))
        if (dtx := encoding.get("dtx")) is not None:
            fbs_encoding.dtx = bool(dtx)
        if scalability_mode := encoding.get("scalabilityMode"):
            fbs_encoding.scalabilityMode = scalability_mode
        if (max_bitrate := encoding.get("maxBitrate")) is not None:
            fbs_encoding.maxBitrate = int(max_bitrate)
        serialized.append(fbs_encoding)
    return serialized


def parse_rtp_encoding_parameters(data: Any) -> RtpEncodingParameters:
    """An RTP encoding dictionary from an ``RtpEncodingParametersT``."""
    encoding: RtpEncodingParameters = {}
    if data.ssrc is not None:
        encoding["ssrc"] = data.ssrc
    if data.rid:
        encoding["rid"] = data.rid
    if data.codecPayloadType is not None:
        encoding["codecPayloadType"] = data.codecPayloadType
    if data.rtx is not None:
        encoding["rtx"] = {"ssrc": data.rtx.ssrc}
    encoding["dtx"] = data.dtx
    if data.scalabilityMode:
        encoding["scalabilityMode"] = data.scalabilityMode
    if data.maxBitrate is not None:
        encoding["maxBitrate"] = data.maxBitrate
    return encoding


#: Codecs and header extensions packed once: every consumer of a producer (and most
#: producers) repeats the same ones, and their parameter lists cost the most to pack.
_prepacked = PrepackedCache(256).get_list


def serialize_rtp_parameters(rtp_parameters: RtpParameters, *, prepacked: bool = False) -> Any:
    """RTP parameters as an ``RtpParametersT`` (ready for a request body).

    ``prepacked``: its codecs and header extensions are ``Prepacked`` (already packed,
    only for a request body), not tables."""
    rtcp = rtp_parameters.get("rtcp")
    if rtcp is None:
        rtcp = {"reducedSize": True}
    codecs = rtp_parameters["codecs"]
    header_extensions = rtp_parameters.get("headerExtensions") or ()

    def build() -> list[Any]:  # the codecs' tables, then the extensions'
        return [_serialize_rtp_codec_parameters(c) for c in codecs] + [
            _serialize_rtp_header_extension_parameters(e) for e in header_extensions
        ]

    # Prepacked: one cache lookup for both lists.
    tables = _prepacked((codecs, header_extensions), build) if prepacked else build()
    codec_tables = tables[: len(codecs)]
    extension_tables = tables[len(codecs) :]
    return RtpParametersT(
        mid=rtp_parameters.get("mid"),
        codecs=codec_tables,
        headerExtensions=extension_tables,
        encodings=serialize_rtp_encoding_parameters(rtp_parameters.get("encodings") or ()),
        rtcp=RtcpParametersT(cname=rtcp.get("cname"), reducedSize=bool(rtcp.get("reducedSize"))),
        msid=rtp_parameters.get("msid"),
    )


def parse_rtp_parameters(data: Any) -> RtpParameters:
    """An RTP parameters dictionary from an ``RtpParametersT``."""
    rtp_parameters: RtpParameters = {
        "codecs": [parse_rtp_codec_parameters(codec) for codec in data.codecs or ()],
    }
    if data.mid:
        rtp_parameters["mid"] = data.mid
    rtp_parameters["headerExtensions"] = [
        parse_rtp_header_extension_parameters(ext) for ext in data.headerExtensions or ()
    ]
    rtp_parameters["encodings"] = [
        parse_rtp_encoding_parameters(encoding) for encoding in data.encodings or ()
    ]
    if data.rtcp is not None:
        rtcp: RtcpParameters = {}
        if data.rtcp.cname:
            rtcp["cname"] = data.rtcp.cname
        rtcp["reducedSize"] = data.rtcp.reducedSize
        rtp_parameters["rtcp"] = rtcp
    if data.msid:
        rtp_parameters["msid"] = data.msid
    return rtp_parameters
