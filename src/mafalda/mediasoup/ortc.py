"""ORTC: validation of RTP/SCTP dictionaries and the RTP negotiation of mediasoup.

A port of mediasoup's ``ortc.js``. The router's RTP capabilities come from the media
codecs it is created with (:func:`generate_router_rtp_capabilities`); a producer's
RTP parameters are mapped onto them (:func:`get_producer_rtp_parameters_mapping`,
:func:`get_consumable_rtp_parameters`); consumers get parameters reduced to what the
remote endpoint can receive (:func:`get_consumer_rtp_parameters`,
:func:`get_pipe_consumer_rtp_parameters`).

The ``validate_and_normalize_*`` functions check dictionaries given by the
application and, as mediasoup does, complete them in place with default values.
They raise TypeError for a wrong type or a missing field and
:class:`~mafalda.mediasoup.rtp_parameters.InvalidValueError` (a TypeError and a
ValueError) for a wrong value, with mediasoup's messages.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, Final, NotRequired, TypedDict, TypeVar, cast

from mafalda.mediasoup import h264_profile_level_id as h264
from mafalda.mediasoup._fbs.RtpParameters.CodecMapping import CodecMappingT
from mafalda.mediasoup._fbs.RtpParameters.EncodingMapping import EncodingMappingT
from mafalda.mediasoup._fbs.RtpParameters.RtpMapping import RtpMappingT
from mafalda.mediasoup.errors import UnsupportedError
from mafalda.mediasoup.rtp_parameters import (
    InvalidValueError,
    MediaKind,
    RouterRtpCapabilities,
    RouterRtpCodecCapability,
    RtcpFeedback,
    RtcpParameters,
    RtpCapabilities,
    RtpCodecCapability,
    RtpCodecParameters,
    RtpEncodingParameters,
    RtpHeaderExtension,
    RtpHeaderExtensionParameters,
    RtpParameters,
)
from mafalda.mediasoup.scalability_modes import parse_scalability_mode
from mafalda.mediasoup.sctp_parameters import (
    NumSctpStreams,
    SctpCapabilities,
    SctpParameters,
    SctpStreamParameters,
)
from mafalda.mediasoup.supported_rtp_capabilities import get_supported_rtp_capabilities

__all__ = [
    "RtpCodecMapping",
    "RtpCodecsEncodingsMapping",
    "RtpEncodingMapping",
    "can_consume",
    "generate_router_rtp_capabilities",
    "get_consumable_rtp_parameters",
    "get_consumer_rtp_parameters",
    "get_pipe_consumer_rtp_parameters",
    "get_producer_rtp_parameters_mapping",
    "serialize_rtp_mapping",
    "validate_and_normalize_num_sctp_streams",
    "validate_and_normalize_rtcp_feedback",
    "validate_and_normalize_rtcp_parameters",
    "validate_and_normalize_rtp_capabilities",
    "validate_and_normalize_rtp_codec_capability",
    "validate_and_normalize_rtp_codec_parameters",
    "validate_and_normalize_rtp_encoding_parameters",
    "validate_and_normalize_rtp_header_extension",
    "validate_and_normalize_rtp_header_extension_parameters",
    "validate_and_normalize_rtp_parameters",
    "validate_and_normalize_sctp_capabilities",
    "validate_and_normalize_sctp_parameters",
    "validate_and_normalize_sctp_stream_parameters",
]


class RtpCodecMapping(TypedDict):
    payloadType: int
    mappedPayloadType: int


class RtpEncodingMapping(TypedDict):
    ssrc: NotRequired[int]
    rid: NotRequired[str]
    scalabilityMode: NotRequired[str]
    mappedSsrc: int


class RtpCodecsEncodingsMapping(TypedDict):
    """How a producer's payload types and SSRCs map onto the router's."""

    codecs: list[RtpCodecMapping]
    encodings: list[RtpEncodingMapping]


# The order in which mediasoup hands out dynamic payload types.
_DYNAMIC_PAYLOAD_TYPES: Final = (*range(100, 128), *range(96, 100))

_MIME_TYPE_RE: Final = re.compile(r"(audio|video)/(.+)", re.IGNORECASE)
_RTX_MIME_TYPE_RE: Final = re.compile(r".+/rtx\Z", re.IGNORECASE)

_URI_MID: Final = "urn:ietf:params:rtp-hdrext:sdes:mid"
_URI_ABS_SEND_TIME: Final = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
_URI_TRANSPORT_WIDE_CC: Final = (
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
)
_URI_DEPENDENCY_DESCRIPTOR: Final = (
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension"
)

_JsonT = TypeVar("_JsonT")


# Helpers reproducing the JavaScript checks mediasoup's validation relies on.


def _is_number(value: object) -> bool:
    """JavaScript's ``typeof value === 'number'``, but finite: NaN and the infinities
    have no place in any field the worker reads."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and -math.inf < value < math.inf
    )


#: The largest values of the worker's unsigned fields (FlatBuffers uint8/16/32).
UINT8: Final = 0xFF
UINT16: Final = 0xFFFF
UINT32: Final = 0xFFFF_FFFF


def _fits(value: object, high: int) -> bool:
    """A finite number that an unsigned wire field up to ``high`` holds (a fraction is
    truncated there, as by mediasoup's FlatBuffers builder)."""
    return _is_number(value) and 0 <= value <= high  # type: ignore[operator]


def _check_fits(obj: Mapping[str, Any], key: str, high: int, field: str) -> None:
    """TypeError naming ``field`` unless ``obj[key]`` is absent (None) or fits."""
    value = obj.get(key)
    if value is not None and not _fits(value, high):
        raise TypeError(f"invalid {field}: {value!r} is not a number in [0, {high}]")


def _check_string(obj: Mapping[str, Any], key: str, message: str) -> None:
    """TypeError with ``message`` unless ``obj[key]`` is absent (None) or a string (an
    empty one is absent for mediasoup; any other value has no wire form)."""
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise TypeError(message)


def _is_array(value: object) -> bool:
    return isinstance(value, list | tuple)


def _truthy(value: object) -> bool:
    """JavaScript truthiness: containers are true even when empty, NaN is false."""
    if value is None or isinstance(value, bool | int | float | str):
        return bool(value) and value == value
    return True


def _as_object(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{name} is not an object")
    return value


_CONTAINERS = (dict, list, tuple)


def _clone(value: _JsonT) -> _JsonT:
    """Deep copy of JSON-like data, faster than copy.deepcopy; tuples become lists."""
    copied: _JsonT = _deep_copy(value)
    return copied


def _deep_copy(value: Any) -> Any:
    # Leaves (most items) are kept without a call, and no cast() call per level: half
    # the time of a plain recursion; a dict is copied whole (in C), then its containers
    # replaced by their copies (assigning existing keys while iterating is safe).
    if isinstance(value, dict):
        copied = dict(value)
        for key, item in copied.items():
            if isinstance(item, _CONTAINERS):
                copied[key] = _deep_copy(item)
        return copied
    if isinstance(value, list | tuple):
        return [_deep_copy(item) if isinstance(item, _CONTAINERS) else item for item in value]
    return value


def _generate_random_number() -> int:
    # SSRCs are not secrets: no need for a cryptographic generator.
    return random.randrange(100_000_000, 999_999_999)


# Validation.


def validate_and_normalize_rtp_capabilities(
    caps: RtpCapabilities | RouterRtpCapabilities,
) -> None:
    """Validate RTP capabilities, filling missing lists and codec/extension defaults."""
    obj = _as_object(caps, "caps")

    codecs = obj.get("codecs")
    if _truthy(codecs) and not _is_array(codecs):
        raise TypeError("caps.codecs is not an array")
    if not _truthy(codecs):
        obj["codecs"] = codecs = []
    for codec in cast(Sequence[Any], codecs):
        validate_and_normalize_rtp_codec_capability(codec)

    header_extensions = obj.get("headerExtensions")
    if _truthy(header_extensions) and not _is_array(header_extensions):
        raise TypeError("caps.headerExtensions is not an array")
    if not _truthy(header_extensions):
        obj["headerExtensions"] = header_extensions = []
    for ext in cast(Sequence[Any], header_extensions):
        validate_and_normalize_rtp_header_extension(ext)


def validate_and_normalize_rtp_parameters(params: RtpParameters) -> None:
    """Validate RTP parameters, filling missing lists, ``rtcp`` and their defaults."""
    obj = _as_object(params, "params")

    _check_string(obj, "mid", "params.mid is not a string")

    codecs = obj.get("codecs")
    if not _is_array(codecs):
        raise TypeError("missing params.codecs")
    for codec in cast(Sequence[Any], codecs):
        validate_and_normalize_rtp_codec_parameters(codec)

    header_extensions = obj.get("headerExtensions")
    if _truthy(header_extensions) and not _is_array(header_extensions):
        raise TypeError("params.headerExtensions is not an array")
    if not _truthy(header_extensions):
        obj["headerExtensions"] = header_extensions = []
    for ext in cast(Sequence[Any], header_extensions):
        validate_and_normalize_rtp_header_extension_parameters(ext)

    encodings = obj.get("encodings")
    if _truthy(encodings) and not _is_array(encodings):
        raise TypeError("params.encodings is not an array")
    if not _truthy(encodings):
        obj["encodings"] = encodings = []
    for encoding in cast(Sequence[Any], encodings):
        validate_and_normalize_rtp_encoding_parameters(encoding)

    rtcp = obj.get("rtcp")
    if _truthy(rtcp) and not isinstance(rtcp, dict):
        raise TypeError("params.rtcp is not an object")
    if not _truthy(rtcp):
        obj["rtcp"] = rtcp = {}

    _check_string(obj, "msid", "params.msid is not a string")

    validate_and_normalize_rtcp_parameters(cast(RtcpParameters, rtcp))


def validate_and_normalize_sctp_stream_parameters(params: SctpStreamParameters) -> None:
    """Validate SCTP stream parameters, deciding ``ordered`` when not given."""
    obj = _as_object(params, "params")

    if not _is_number(obj.get("streamId")):
        raise TypeError("missing params.streamId")
    _check_fits(obj, "streamId", UINT16, "params.streamId")

    ordered_given = isinstance(obj.get("ordered"), bool)
    if not ordered_given:
        obj["ordered"] = True

    max_packet_life_time = obj.get("maxPacketLifeTime")
    _check_fits(obj, "maxPacketLifeTime", UINT16, "params.maxPacketLifeTime")
    max_retransmits = obj.get("maxRetransmits")
    _check_fits(obj, "maxRetransmits", UINT16, "params.maxRetransmits")

    # Zero means "not given" for both, as in mediasoup.
    partially_reliable = _truthy(max_packet_life_time) or _truthy(max_retransmits)
    if _truthy(max_packet_life_time) and _truthy(max_retransmits):
        raise InvalidValueError("cannot provide both maxPacketLifeTime and maxRetransmits")
    if ordered_given and obj["ordered"] and partially_reliable:
        raise InvalidValueError("cannot be ordered with maxPacketLifeTime or maxRetransmits")
    if not ordered_given and partially_reliable:
        obj["ordered"] = False


def validate_and_normalize_sctp_capabilities(caps: SctpCapabilities) -> None:
    """Validate SCTP capabilities (``numStreams`` with ``OS`` and ``MIS``)."""
    obj = _as_object(caps, "caps")
    num_streams = obj.get("numStreams")
    if not isinstance(num_streams, dict):
        raise TypeError("missing caps.numStreams")
    validate_and_normalize_num_sctp_streams(cast(NumSctpStreams, num_streams))


def validate_and_normalize_num_sctp_streams(num_streams: NumSctpStreams) -> None:
    """Validate a number of SCTP streams (``OS`` and ``MIS``)."""
    obj = _as_object(num_streams, "numStreams")
    if not _is_number(obj.get("OS")):
        raise TypeError("missing numStreams.OS")
    if not _is_number(obj.get("MIS")):
        raise TypeError("missing numStreams.MIS")


def validate_and_normalize_sctp_parameters(params: SctpParameters) -> None:
    """Validate SCTP parameters (``port``, ``OS``, ``MIS`` and ``maxMessageSize``)."""
    obj = _as_object(params, "params")
    for field in ("port", "OS", "MIS", "maxMessageSize"):
        if not _is_number(obj.get(field)):
            raise TypeError(f"missing params.{field}")


def _validate_mime_type(codec: dict[str, Any]) -> MediaKind:
    mime_type = codec.get("mimeType")
    if not isinstance(mime_type, str) or not mime_type:
        raise TypeError("missing codec.mimeType")
    match = _MIME_TYPE_RE.match(mime_type)
    if match is None:
        raise InvalidValueError("invalid codec.mimeType")
    return cast(MediaKind, match[1].lower())


def _normalize_channels(codec: dict[str, Any], kind: MediaKind) -> None:
    if kind == "audio":
        if not _is_number(codec.get("channels")):
            codec["channels"] = 1
        _check_fits(codec, "channels", UINT8, "codec.channels")
    else:
        codec.pop("channels", None)


def _normalize_codec_parameters_and_feedback(codec: dict[str, Any]) -> None:
    parameters = codec.get("parameters")
    if not isinstance(parameters, dict):
        codec["parameters"] = parameters = {}
    for key, value in parameters.items():
        if not isinstance(key, str):  # (a JavaScript object's keys are strings)
            raise TypeError(f"invalid codec parameter key {key!r}")
        if value is None:
            parameters[key] = value = ""
        if not isinstance(value, str) and not _is_number(value):
            # Message (including its stray "s") kept as mediasoup's.
            raise TypeError(f"invalid codec parameter [key:{key}s, value:{value}]")
        if key == "apt" and not _is_number(value):
            raise TypeError("invalid codec apt parameter")

    rtcp_feedback = codec.get("rtcpFeedback")
    if not _is_array(rtcp_feedback):
        codec["rtcpFeedback"] = rtcp_feedback = []
    for fb in cast(Sequence[Any], rtcp_feedback):
        validate_and_normalize_rtcp_feedback(fb)


def validate_and_normalize_rtp_codec_capability(
    codec: RtpCodecCapability | RouterRtpCodecCapability,
) -> None:
    """Validate a codec capability; ``kind`` is set from its MIME type."""
    obj = _as_object(codec, "codec")
    kind = _validate_mime_type(obj)
    obj["kind"] = kind

    preferred_payload_type = obj.get("preferredPayloadType")
    if _truthy(preferred_payload_type) and not _is_number(preferred_payload_type):
        raise TypeError("invalid codec.preferredPayloadType")
    if _is_number(preferred_payload_type) and not (
        isinstance(preferred_payload_type, int) and 0 <= preferred_payload_type <= 127
    ):
        # An RTP payload type (7 bits): mediasoup's encoder would wrap or truncate it,
        # and the router would advertise what the worker does not use.
        raise TypeError(
            f"invalid codec.preferredPayloadType: {preferred_payload_type!r} is not an "
            "integer in [0, 127]"
        )

    if not _is_number(obj.get("clockRate")):
        raise TypeError("missing codec.clockRate")

    _normalize_channels(obj, kind)
    _normalize_codec_parameters_and_feedback(obj)


def validate_and_normalize_rtcp_feedback(fb: RtcpFeedback) -> None:
    """Validate an RTCP feedback entry; a missing ``parameter`` becomes ""."""
    obj = _as_object(fb, "fb")
    fb_type = obj.get("type")
    if not isinstance(fb_type, str) or not fb_type:
        raise TypeError("missing fb.type")
    parameter = obj.get("parameter")
    if not isinstance(parameter, str) or not parameter:
        obj["parameter"] = ""


def validate_and_normalize_rtp_header_extension(ext: RtpHeaderExtension) -> None:
    """Validate a header extension capability, defaulting encryption and direction."""
    obj = _as_object(ext, "ext")

    if obj.get("kind") not in ("audio", "video"):
        raise InvalidValueError("invalid ext.kind")

    uri = obj.get("uri")
    if not isinstance(uri, str) or not uri:
        raise TypeError("missing ext.uri")

    if not _is_number(obj.get("preferredId")):
        raise TypeError("missing ext.preferredId")

    preferred_encrypt = obj.get("preferredEncrypt")
    if _truthy(preferred_encrypt) and not isinstance(preferred_encrypt, bool):
        raise TypeError("invalid ext.preferredEncrypt")
    if not _truthy(preferred_encrypt):
        obj["preferredEncrypt"] = False

    direction = obj.get("direction")
    if _truthy(direction) and not isinstance(direction, str):
        raise TypeError("invalid ext.direction")
    if not _truthy(direction):
        obj["direction"] = "sendrecv"


def validate_and_normalize_rtp_codec_parameters(codec: RtpCodecParameters) -> None:
    """Validate codec parameters, defaulting channels, parameters and feedback."""
    obj = _as_object(codec, "codec")
    kind = _validate_mime_type(obj)

    if not _is_number(obj.get("payloadType")):
        raise TypeError("missing codec.payloadType")
    _check_fits(obj, "payloadType", UINT8, "codec.payloadType")

    if not _is_number(obj.get("clockRate")):
        raise TypeError("missing codec.clockRate")
    _check_fits(obj, "clockRate", UINT32, "codec.clockRate")

    _normalize_channels(obj, kind)
    _normalize_codec_parameters_and_feedback(obj)


def validate_and_normalize_rtp_header_extension_parameters(
    ext: RtpHeaderExtensionParameters,
) -> None:
    """Validate header extension parameters, defaulting encryption and parameters."""
    obj = _as_object(ext, "ext")

    uri = obj.get("uri")
    if not isinstance(uri, str) or not uri:
        raise TypeError("missing ext.uri")

    if not _is_number(obj.get("id")):
        raise TypeError("missing ext.id")
    _check_fits(obj, "id", UINT8, "ext.id")

    encrypt = obj.get("encrypt")
    if _truthy(encrypt) and not isinstance(encrypt, bool):
        raise TypeError("invalid ext.encrypt")
    if not _truthy(encrypt):
        obj["encrypt"] = False

    parameters = obj.get("parameters")
    if not isinstance(parameters, dict):
        obj["parameters"] = parameters = {}
    for key, value in parameters.items():
        if not isinstance(key, str):
            raise TypeError(f"invalid header extension parameter key {key!r}")
        if value is None:
            parameters[key] = value = ""
        if not isinstance(value, str) and not _is_number(value):
            raise TypeError("invalid header extension parameter")


def validate_and_normalize_rtp_encoding_parameters(encoding: RtpEncodingParameters) -> None:
    """Validate an RTP encoding; ``dtx`` defaults to False."""
    obj = _as_object(encoding, "encoding")

    _check_fits(obj, "ssrc", UINT32, "encoding.ssrc")
    _check_string(obj, "rid", "invalid encoding.rid")
    _check_fits(obj, "codecPayloadType", UINT8, "encoding.codecPayloadType")
    _check_fits(obj, "maxBitrate", UINT32, "encoding.maxBitrate")

    rtx = obj.get("rtx")
    if _truthy(rtx):
        if not isinstance(rtx, dict):
            raise TypeError("invalid encoding.rtx")
        if not _is_number(rtx.get("ssrc")):
            raise TypeError("missing encoding.rtx.ssrc")
        _check_fits(rtx, "ssrc", UINT32, "encoding.rtx.ssrc")

    if not isinstance(obj.get("dtx"), bool):
        obj["dtx"] = False

    _check_string(obj, "scalabilityMode", "invalid encoding.scalabilityMode")


def validate_and_normalize_rtcp_parameters(rtcp: RtcpParameters) -> None:
    """Validate RTCP parameters; ``reducedSize`` is always made True, as in mediasoup."""
    obj = _as_object(rtcp, "rtcp")

    _check_string(obj, "cname", "invalid rtcp.cname")

    # mediasoup's check (!reducedSize) turns a given False into True too: kept as is.
    if obj.get("reducedSize") is not True:
        obj["reducedSize"] = True


# Negotiation.


@cache
def _normalized_supported_rtp_capabilities() -> RtpCapabilities:
    # Normalized once, on a copy: the data of supported_rtp_capabilities stays as written.
    caps = get_supported_rtp_capabilities()
    validate_and_normalize_rtp_capabilities(caps)
    return cast(RtpCapabilities, caps)


def _pipe_consumer_extra_header_extensions() -> list[RtpHeaderExtensionParameters]:
    # The dependency descriptor extension is recvonly in the router capabilities, so
    # consumable parameters never carry it; a pipe consumer must forward it anyway.
    return [
        {
            "uri": ext["uri"],
            "id": ext["preferredId"],
            "encrypt": ext.get("preferredEncrypt", False),
            "parameters": {},
        }
        for ext in _normalized_supported_rtp_capabilities()["headerExtensions"]
        if ext["uri"] == _URI_DEPENDENCY_DESCRIPTOR and ext.get("direction") != "sendrecv"
    ]


def _take_dynamic_payload_type(dynamic_payload_types: list[int]) -> int:
    if not dynamic_payload_types:
        raise ValueError("cannot allocate more dynamic codec payload types")
    return dynamic_payload_types.pop(0)


def generate_router_rtp_capabilities(
    media_codecs: Sequence[RouterRtpCodecCapability] | None = None,
) -> RtpCapabilities:
    """The RTP capabilities of a router created with the given media codecs.

    Each codec must match one of mediasoup's supported codecs (UnsupportedError
    otherwise); it gets a payload type (its own, the supported one, or a dynamic
    one) and video codecs get an RTX codec. The media codecs are normalized in place.
    """
    if media_codecs is None:
        media_codecs = []
    if not _is_array(media_codecs):
        raise TypeError("mediaCodecs must be an Array")

    supported = _clone(_normalized_supported_rtp_capabilities())
    supported_codecs: list[dict[str, Any]] = cast(Any, supported["codecs"])
    dynamic_payload_types = list(_DYNAMIC_PAYLOAD_TYPES)
    codecs: list[dict[str, Any]] = []

    for media_codec in media_codecs:
        validate_and_normalize_rtp_codec_capability(media_codec)
        media: dict[str, Any] = cast(Any, media_codec)

        matched = next((s for s in supported_codecs if _match_codecs(media, s)), None)
        if matched is None:
            raise UnsupportedError(f"media codec not supported [mimeType:{media['mimeType']}]")
        codec = _clone(matched)

        preferred_payload_type = media.get("preferredPayloadType")
        if _is_number(preferred_payload_type):
            codec["preferredPayloadType"] = preferred_payload_type
            if preferred_payload_type in dynamic_payload_types:
                dynamic_payload_types.remove(preferred_payload_type)
        elif not _is_number(codec.get("preferredPayloadType")):
            codec["preferredPayloadType"] = _take_dynamic_payload_type(dynamic_payload_types)

        if any(c["preferredPayloadType"] == codec["preferredPayloadType"] for c in codecs):
            raise InvalidValueError("duplicated codec.preferredPayloadType")

        codec["parameters"] = {**codec["parameters"], **media["parameters"]}
        codecs.append(codec)

        if codec["kind"] == "video":
            codecs.append(
                {
                    "kind": codec["kind"],
                    "mimeType": f"{codec['kind']}/rtx",
                    "preferredPayloadType": _take_dynamic_payload_type(dynamic_payload_types),
                    "clockRate": codec["clockRate"],
                    "parameters": {"apt": codec["preferredPayloadType"]},
                    "rtcpFeedback": [],
                }
            )

    return {
        "codecs": cast(Any, codecs),
        "headerExtensions": supported["headerExtensions"],
    }


def get_producer_rtp_parameters_mapping(
    params: RtpParameters, caps: RtpCapabilities
) -> RtpCodecsEncodingsMapping:
    """Map a producer's payload types and encodings onto the router's capabilities.

    H264 codecs in ``params`` get the negotiated profile-level-id. Raises
    UnsupportedError when a codec (or its RTX) is not in the capabilities.
    """
    params_codecs: list[dict[str, Any]] = cast(Any, params["codecs"])
    caps_codecs: list[dict[str, Any]] = cast(Any, caps.get("codecs", []))

    # Media codecs first, then RTX ones, each with the capability codec it maps to.
    mapped: list[tuple[dict[str, Any], dict[str, Any]]] = []
    cap_codec_of: dict[int, dict[str, Any]] = {}

    for codec in params_codecs:
        if _is_rtx_codec(codec):
            continue
        matched = next(
            (cap for cap in caps_codecs if _match_codecs(codec, cap, strict=True, modify=True)),
            None,
        )
        if matched is None:
            raise UnsupportedError(
                f"unsupported codec [mimeType:{codec['mimeType']}, "
                f"payloadType:{codec['payloadType']}]"
            )
        mapped.append((codec, matched))
        cap_codec_of[id(codec)] = matched

    for codec in params_codecs:
        if not _is_rtx_codec(codec):
            continue
        apt = codec.get("parameters", {}).get("apt")
        associated = next((c for c in params_codecs if c["payloadType"] == apt), None)
        cap_media_codec = None if associated is None else cap_codec_of.get(id(associated))
        if cap_media_codec is None:
            raise InvalidValueError(f"missing media codec found for RTX PT {codec['payloadType']}")
        media_pt = cap_media_codec["preferredPayloadType"]
        cap_rtx_codec = next(
            (
                cap
                for cap in caps_codecs
                if _is_rtx_codec(cap) and cap["parameters"].get("apt") == media_pt
            ),
            None,
        )
        if cap_rtx_codec is None:
            raise UnsupportedError(f"no RTX codec for capability codec PT {media_pt}")
        mapped.append((codec, cap_rtx_codec))
        cap_codec_of[id(codec)] = cap_rtx_codec

    mapping: RtpCodecsEncodingsMapping = {
        "codecs": [
            {"payloadType": codec["payloadType"], "mappedPayloadType": cap["preferredPayloadType"]}
            for codec, cap in mapped
        ],
        "encodings": [],
    }

    mapped_ssrc = _generate_random_number()
    for encoding in params.get("encodings", []):
        entry: RtpEncodingMapping = {"mappedSsrc": mapped_ssrc}
        if (ssrc := encoding.get("ssrc")) is not None:
            entry["ssrc"] = ssrc
        if (rid := encoding.get("rid")) is not None:
            entry["rid"] = rid
        if (scalability_mode := encoding.get("scalabilityMode")) is not None:
            entry["scalabilityMode"] = scalability_mode
        mapping["encodings"].append(entry)
        mapped_ssrc += 1

    return mapping


def get_consumable_rtp_parameters(
    kind: MediaKind,
    params: RtpParameters,
    caps: RtpCapabilities,
    rtp_mapping: RtpCodecsEncodingsMapping,
) -> RtpParameters:
    """The RTP parameters consumers of a producer start from, in the router's terms.

    Codecs and payload types are the router's (the producer's codec parameters are
    kept), header extensions are those the router can send for ``kind``, and each
    encoding has its mapped SSRC.
    """
    caps_codecs: list[dict[str, Any]] = cast(Any, caps.get("codecs", []))
    codecs: list[dict[str, Any]] = []

    for codec in params["codecs"]:
        if _is_rtx_codec(codec):
            continue
        mapped_pt = next(
            (
                entry["mappedPayloadType"]
                for entry in rtp_mapping["codecs"]
                if entry["payloadType"] == codec["payloadType"]
            ),
            None,
        )
        matched = next(
            (cap for cap in caps_codecs if cap["preferredPayloadType"] == mapped_pt), None
        )
        if matched is None:
            raise TypeError(f"no mapped capability codec for payload type {codec['payloadType']}")

        consumable: dict[str, Any] = {
            "mimeType": matched["mimeType"],
            "payloadType": matched["preferredPayloadType"],
            "clockRate": matched["clockRate"],
        }
        if "channels" in matched:
            consumable["channels"] = matched["channels"]
        consumable["parameters"] = _clone(codec.get("parameters", {}))
        consumable["rtcpFeedback"] = _clone(matched.get("rtcpFeedback", []))
        codecs.append(consumable)

        cap_rtx = next(
            (
                cap
                for cap in caps_codecs
                if _is_rtx_codec(cap) and cap["parameters"].get("apt") == consumable["payloadType"]
            ),
            None,
        )
        if cap_rtx is not None:
            codecs.append(
                {
                    "mimeType": cap_rtx["mimeType"],
                    "payloadType": cap_rtx["preferredPayloadType"],
                    "clockRate": cap_rtx["clockRate"],
                    "parameters": _clone(cap_rtx["parameters"]),
                    "rtcpFeedback": _clone(cap_rtx.get("rtcpFeedback", [])),
                }
            )

    header_extensions: list[RtpHeaderExtensionParameters] = [
        {
            "uri": cap_ext["uri"],
            "id": cap_ext["preferredId"],
            "encrypt": cap_ext.get("preferredEncrypt", False),
            "parameters": {},
        }
        for cap_ext in caps.get("headerExtensions", [])
        if cap_ext["kind"] == kind and cap_ext.get("direction") in ("sendrecv", "sendonly")
    ]

    encodings = _clone(params.get("encodings", []))
    if len(rtp_mapping["encodings"]) < len(encodings):
        raise TypeError("missing mapped encodings")
    for encoding, encoding_mapping in zip(encodings, rtp_mapping["encodings"], strict=False):
        encoding.pop("rid", None)
        encoding.pop("rtx", None)
        encoding.pop("codecPayloadType", None)
        encoding["ssrc"] = encoding_mapping["mappedSsrc"]

    rtcp: RtcpParameters = {}
    cname = params.get("rtcp", {}).get("cname")
    if cname is not None:
        rtcp["cname"] = cname
    rtcp["reducedSize"] = True

    consumable_params: RtpParameters = {
        "codecs": cast(Any, codecs),
        "headerExtensions": header_extensions,
        "encodings": encodings,
        "rtcp": rtcp,
    }
    if (msid := params.get("msid")) is not None:
        consumable_params["msid"] = msid
    return consumable_params


def can_consume(consumable_params: RtpParameters, caps: RtpCapabilities) -> bool:
    """Whether an endpoint with ``caps`` can receive media of a producer.

    ``caps`` is validated and normalized in place (TypeError/ValueError if invalid).
    """
    validate_and_normalize_rtp_capabilities(caps)
    caps_codecs: list[dict[str, Any]] = cast(Any, caps["codecs"])

    matching = [
        codec
        for codec in cast(list[dict[str, Any]], consumable_params["codecs"])
        if any(_match_codecs(cap_codec, codec, strict=True) for cap_codec in caps_codecs)
    ]
    return bool(matching) and not _is_rtx_codec(matching[0])


def get_consumer_rtp_parameters(
    *,
    consumable_rtp_parameters: RtpParameters,
    remote_rtp_capabilities: RtpCapabilities,
    pipe: bool,
    enable_rtx: bool,
    normalized: bool = False,
) -> RtpParameters:
    """The RTP parameters of a consumer for a remote endpoint of the given capabilities.

    Codecs, RTCP feedback and header extensions are reduced to what the endpoint
    supports. A regular consumer gets a single encoding (simulcast streams become
    spatial layers of its scalability mode); a pipe consumer (``pipe``) keeps all the
    consumable encodings. RTX only when ``enable_rtx`` and the endpoint supports it.
    The codecs of ``remote_rtp_capabilities`` are normalized in place, unless
    ``normalized`` says that they are already (by validate_and_normalize_rtp_capabilities):
    then ``remote_rtp_capabilities`` is only read (the result shares nothing with it), so
    it may be shared. Raises UnsupportedError when no media codec is compatible.
    """
    remote_codecs: list[dict[str, Any]] = cast(Any, remote_rtp_capabilities.get("codecs", []))
    if not normalized:
        for cap_codec in remote_codecs:
            validate_and_normalize_rtp_codec_capability(cast(RtpCodecCapability, cap_codec))

    codecs: list[dict[str, Any]] = []
    for original in cast(list[dict[str, Any]], consumable_rtp_parameters["codecs"]):
        if not enable_rtx and _is_rtx_codec(original):
            continue
        matched = next(
            (cap for cap in remote_codecs if _match_codecs(cap, original, strict=True)), None
        )
        if matched is None:
            continue
        # A copy of what is kept (its feedback is replaced just below, in its place).
        codec = {
            key: _deep_copy(value)
            if key != "rtcpFeedback" and isinstance(value, _CONTAINERS)
            else value
            for key, value in original.items()
        }
        codec["rtcpFeedback"] = [
            _clone(fb)
            for fb in matched["rtcpFeedback"]
            if enable_rtx or fb["type"] != "nack" or fb.get("parameter")
        ]
        codecs.append(codec)

    # Drop RTX codecs whose media codec did not make it (backwards, as mediasoup).
    rtx_supported = False
    for index in range(len(codecs) - 1, -1, -1):
        codec = codecs[index]
        if not _is_rtx_codec(codec):
            continue
        apt = codec["parameters"].get("apt")
        if any(c["payloadType"] == apt for c in codecs):
            rtx_supported = True
        else:
            del codecs[index]

    if not codecs or _is_rtx_codec(codecs[0]):
        raise UnsupportedError("no compatible media codecs")

    remote_header_extensions = remote_rtp_capabilities.get("headerExtensions", [])
    try:
        # What the remote supports, for a lookup per extension (as == compares).
        supported: Any = {(cap["preferredId"], cap["uri"]) for cap in remote_header_extensions}
    except TypeError:  # unhashable values (capabilities not normalized): compare each
        supported = [(cap["preferredId"], cap["uri"]) for cap in remote_header_extensions]
    header_extensions = [
        _clone(ext)
        for ext in consumable_rtp_parameters.get("headerExtensions", [])
        if (ext["id"], ext["uri"]) in supported
    ]

    # Transport-wide CC if negotiated, else REMB if abs-send-time is, else neither.
    uris = {ext["uri"] for ext in header_extensions}
    if _URI_TRANSPORT_WIDE_CC in uris:
        dropped_feedback: tuple[str, ...] = ("goog-remb",)
    elif _URI_ABS_SEND_TIME in uris:
        dropped_feedback = ("transport-cc",)
    else:
        dropped_feedback = ("transport-cc", "goog-remb")
    for codec in codecs:
        codec["rtcpFeedback"] = [
            fb for fb in codec["rtcpFeedback"] if fb["type"] not in dropped_feedback
        ]

    consumable_encodings = consumable_rtp_parameters.get("encodings", [])
    encodings: list[RtpEncodingParameters] = []
    if not pipe:
        encoding: RtpEncodingParameters = {"ssrc": _generate_random_number()}
        if rtx_supported:
            encoding["rtx"] = {"ssrc": encoding["ssrc"] + 1}

        # Encodings are assumed to share one scalability mode.
        scalability_mode = next(
            (e["scalabilityMode"] for e in consumable_encodings if e.get("scalabilityMode")),
            None,
        )
        # Simulcast streams are seen by the consumer as spatial layers.
        if len(consumable_encodings) > 1:
            temporal_layers = parse_scalability_mode(scalability_mode)["temporalLayers"]
            scalability_mode = f"L{len(consumable_encodings)}T{temporal_layers}"
        if scalability_mode:
            encoding["scalabilityMode"] = scalability_mode

        max_bitrate = max(
            (e.get("maxBitrate") or 0 for e in consumable_encodings),
            default=0,
        )
        if max_bitrate:
            encoding["maxBitrate"] = max_bitrate
        encodings.append(encoding)
    else:
        encodings = _resend_encodings(consumable_encodings, with_rtx=rtx_supported)

    consumer_params: RtpParameters = {
        "codecs": cast(Any, codecs),
        "headerExtensions": header_extensions,
        "encodings": encodings,
    }
    if "rtcp" in consumable_rtp_parameters:
        consumer_params["rtcp"] = _clone(consumable_rtp_parameters["rtcp"])
    if (msid := consumable_rtp_parameters.get("msid")) is not None:
        consumer_params["msid"] = msid
    return consumer_params


def get_pipe_consumer_rtp_parameters(
    *,
    consumable_rtp_parameters: RtpParameters,
    enable_rtx: bool,
) -> RtpParameters:
    """The RTP parameters of a consumer on a pipe transport.

    All consumable encodings are kept, bandwidth estimation is removed and, without
    ``enable_rtx``, RTX and NACK as well.
    """
    codecs: list[dict[str, Any]] = []
    for codec in cast(list[dict[str, Any]], _clone(consumable_rtp_parameters["codecs"])):
        if not enable_rtx and _is_rtx_codec(codec):
            continue
        codec["rtcpFeedback"] = [
            fb
            for fb in codec.get("rtcpFeedback", [])
            if (fb["type"] == "nack" and fb.get("parameter") == "pli")
            or (fb["type"] == "ccm" and fb.get("parameter") == "fir")
            or (enable_rtx and fb["type"] == "nack" and not fb.get("parameter"))
        ]
        codecs.append(codec)

    header_extensions = [
        _clone(ext)
        for ext in consumable_rtp_parameters.get("headerExtensions", [])
        if ext["uri"] not in (_URI_MID, _URI_ABS_SEND_TIME, _URI_TRANSPORT_WIDE_CC)
    ]
    header_extensions.extend(_pipe_consumer_extra_header_extensions())
    header_extensions.sort(key=lambda ext: ext["id"])

    consumer_params: RtpParameters = {
        "codecs": cast(Any, codecs),
        "headerExtensions": header_extensions,
        "encodings": _resend_encodings(
            consumable_rtp_parameters.get("encodings", []), with_rtx=enable_rtx
        ),
    }
    if "rtcp" in consumable_rtp_parameters:
        consumer_params["rtcp"] = _clone(consumable_rtp_parameters["rtcp"])
    if (msid := consumable_rtp_parameters.get("msid")) is not None:
        consumer_params["msid"] = msid
    return consumer_params


def _resend_encodings(
    encodings: Sequence[RtpEncodingParameters], *, with_rtx: bool
) -> list[RtpEncodingParameters]:
    """Copies of the encodings with consecutive new SSRCs (and RTX SSRCs if ``with_rtx``)."""
    base_ssrc = _generate_random_number()
    base_rtx_ssrc = _generate_random_number()
    resent = _clone(list(encodings))
    for index, encoding in enumerate(resent):
        encoding["ssrc"] = base_ssrc + index
        if with_rtx:
            encoding["rtx"] = {"ssrc": base_rtx_ssrc + index}
        else:
            encoding.pop("rtx", None)
    return resent


def serialize_rtp_mapping(rtp_mapping: RtpCodecsEncodingsMapping) -> Any:
    """An RTP mapping as an ``RtpMappingT`` (for the produce request)."""
    return RtpMappingT(
        codecs=[
            CodecMappingT(
                payloadType=int(codec["payloadType"]),
                mappedPayloadType=int(codec["mappedPayloadType"]),
            )
            for codec in rtp_mapping["codecs"]
        ],
        encodings=[
            EncodingMappingT(
                rid=encoding.get("rid"),
                ssrc=encoding.get("ssrc"),
                scalabilityMode=encoding.get("scalabilityMode"),
                mappedSsrc=int(encoding["mappedSsrc"]),
            )
            for encoding in rtp_mapping["encodings"]
        ],
    )


def _is_rtx_codec(codec: Mapping[str, Any]) -> bool:
    return _RTX_MIME_TYPE_RE.search(codec["mimeType"]) is not None


def _match_codecs(
    a: dict[str, Any], b: dict[str, Any], *, strict: bool = False, modify: bool = False
) -> bool:
    """Whether two codecs are the same; with ``strict``, codec-specific checks as well.

    With ``modify``, the H264 profile-level-id of ``a`` becomes the negotiated one.
    """
    mime_type = a["mimeType"].lower()
    if mime_type != b["mimeType"].lower():
        return False
    if a.get("clockRate") != b.get("clockRate") or a.get("channels") != b.get("channels"):
        return False

    a_params: dict[str, Any] = a.get("parameters") or {}
    b_params: dict[str, Any] = b.get("parameters") or {}
    if modify:
        # The negotiated profile-level-id must land in a's own dict, even if it was empty.
        a["parameters"] = a_params

    if mime_type == "audio/multiopus":
        for key in ("num_streams", "coupled_streams"):
            if a_params.get(key) != b_params.get(key):
                return False
    elif mime_type == "video/h264" and strict:
        if (a_params.get("packetization-mode") or 0) != (b_params.get("packetization-mode") or 0):
            return False
        if not h264.is_same_profile(a_params, b_params):
            return False
        try:
            selected = h264.generate_profile_level_id_string_for_answer(a_params, b_params)
        except ValueError:
            return False
        if modify:
            if selected:
                a_params["profile-level-id"] = selected
            else:
                a_params.pop("profile-level-id", None)
    elif mime_type == "video/vp9" and strict:
        if (a_params.get("profile-id") or 0) != (b_params.get("profile-id") or 0):
            return False

    return True
