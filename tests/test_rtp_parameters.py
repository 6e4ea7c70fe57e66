"""Round trips of the wire dictionaries through their FlatBuffers tables.

dict -> object-API table -> packed bytes -> table -> dict, for the RTP parameters
(rtp_parameters), and likewise for the SCTP, SRTP and RTP stream stats modules.
"""

from __future__ import annotations

from typing import Any

import flatbuffers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mafalda.mediasoup._fastfbs import FastBuilder, packers
from mafalda.mediasoup._fbs.RtpParameters.Parameter import ParameterT
from mafalda.mediasoup._fbs.RtpParameters.RtpEncodingParameters import (
    RtpEncodingParameters,
    RtpEncodingParametersT,
)
from mafalda.mediasoup._fbs.RtpParameters.RtpParameters import RtpParameters, RtpParametersT
from mafalda.mediasoup._fbs.RtpParameters.Value import Value
from mafalda.mediasoup._fbs.RtpStream.BaseStats import BaseStatsT
from mafalda.mediasoup._fbs.RtpStream.BitrateByLayer import BitrateByLayerT
from mafalda.mediasoup._fbs.RtpStream.RecvStats import RecvStatsT
from mafalda.mediasoup._fbs.RtpStream.SendStats import SendStatsT
from mafalda.mediasoup._fbs.RtpStream.Stats import Stats, StatsT
from mafalda.mediasoup._fbs.RtpStream.StatsData import StatsData
from mafalda.mediasoup._fbs.SctpParameters.SctpParameters import SctpParameters, SctpParametersT
from mafalda.mediasoup._fbs.SctpParameters.SctpStreamParameters import (
    SctpStreamParameters,
    SctpStreamParametersT,
)
from mafalda.mediasoup._fbs.SrtpParameters.SrtpParameters import SrtpParameters, SrtpParametersT
from mafalda.mediasoup.rtp_parameters import (
    InvalidValueError,
    parse_parameters,
    parse_rtp_encoding_parameters,
    parse_rtp_parameters,
    rtp_header_extension_uri_from_fbs,
    rtp_header_extension_uri_to_fbs,
    serialize_parameters,
    serialize_rtp_encoding_parameters,
    serialize_rtp_parameters,
)
from mafalda.mediasoup.rtp_stream_stats import parse_rtp_stream_stats
from mafalda.mediasoup.sctp_parameters import (
    parse_sctp_parameters_dump,
    parse_sctp_stream_parameters,
    serialize_sctp_stream_parameters,
)
from mafalda.mediasoup.srtp_parameters import (
    crypto_suite_from_fbs,
    crypto_suite_to_fbs,
    parse_srtp_parameters,
    serialize_srtp_parameters,
)
from mafalda.mediasoup.supported_rtp_capabilities import get_supported_rtp_capabilities

INT32 = st.integers(-(2**31), 2**31 - 1)


def through_bytes(table: Any, reader: Any, object_class: Any) -> Any:
    """Pack an object-API table, then read it back as the worker's answer would be."""
    builder = flatbuffers.Builder(0)
    builder.Finish(table.Pack(builder))
    return object_class.InitFromObj(reader.GetRootAs(builder.Output(), 0))


def rtp_round_trip(params: Any) -> Any:
    table = through_bytes(serialize_rtp_parameters(params), RtpParameters, RtpParametersT)
    return parse_rtp_parameters(table)


FULL_RTP_PARAMETERS: Any = {
    "mid": "0",
    "codecs": [
        {
            "mimeType": "video/VP8",
            "payloadType": 101,
            "clockRate": 90000,
            "parameters": {"x-google-start-bitrate": 1000, "ratio": 0.5, "name": "x"},
            "rtcpFeedback": [
                {"type": "nack", "parameter": ""},
                {"type": "nack", "parameter": "pli"},
                {"type": "transport-cc"},
            ],
        },
        {
            "mimeType": "video/rtx",
            "payloadType": 102,
            "clockRate": 90000,
            "parameters": {"apt": 101},
            "rtcpFeedback": [],
        },
        {
            "mimeType": "audio/multiopus",
            "payloadType": 100,
            "clockRate": 48000,
            "channels": 6,
            "parameters": {"num_streams": 4, "coupled_streams": 2, "list": [1, -2, 3]},
            "rtcpFeedback": [],
        },
    ],
    "headerExtensions": [
        {
            "uri": "urn:ietf:params:rtp-hdrext:sdes:mid",
            "id": 1,
            "encrypt": False,
            "parameters": {},
        },
        {
            "uri": "urn:3gpp:video-orientation",
            "id": 8,
            "encrypt": True,
            "parameters": {"a": "b", "flag": True},
        },
    ],
    "encodings": [
        {
            "ssrc": 11111111,
            "codecPayloadType": 101,
            "rtx": {"ssrc": 11111112},
            "dtx": False,
            "scalabilityMode": "L1T3",
            "maxBitrate": 500000,
        },
        {"rid": "r1", "dtx": True, "maxBitrate": 0},
    ],
    "rtcp": {"cname": "abcd", "reducedSize": True},
    "msid": "stream track",
}


@pytest.mark.parametrize("fast", [False, True])
def test_prepacked_codecs_and_header_extensions_read_back_the_same(fast: bool) -> None:
    # Packed once, copied after: twice (the second from the cache), with the stock
    # builder and Pack() or with the compiled packers.
    expected = rtp_round_trip(FULL_RTP_PARAMETERS)
    for _ in range(2):
        table = serialize_rtp_parameters(FULL_RTP_PARAMETERS, prepacked=True)
        builder = FastBuilder(0) if fast else flatbuffers.Builder(0)
        builder.Finish(packers[RtpParametersT](table, builder) if fast else table.Pack(builder))
        read = RtpParametersT.InitFromObj(RtpParameters.GetRootAs(builder.Output(), 0))
        assert parse_rtp_parameters(read) == expected


def test_rtp_parameters_round_trip() -> None:
    assert rtp_round_trip(FULL_RTP_PARAMETERS) == FULL_RTP_PARAMETERS


def test_rtp_parameters_serialize_gives_tables() -> None:
    table = serialize_rtp_parameters(FULL_RTP_PARAMETERS)
    assert isinstance(table, RtpParametersT)
    assert table.codecs[0].channels is None
    assert table.codecs[2].channels == 6
    assert [p.valueType for p in table.codecs[0].parameters] == [
        Value.Integer32,
        Value.Double,
        Value.String,
    ]
    assert table.codecs[2].parameters[2].valueType == Value.Integer32Array
    assert table.headerExtensions[1].parameters[1].valueType == Value.Boolean


def test_rtp_parameters_minimal_round_trip() -> None:
    # Required vectors and rtcp are always sent; rtcp defaults to reduced size.
    parsed = rtp_round_trip({"codecs": []})
    assert parsed == {
        "codecs": [],
        "headerExtensions": [],
        "encodings": [],
        "rtcp": {"reducedSize": True},
    }
    table = serialize_rtp_parameters({"codecs": []})
    assert table.headerExtensions == [] and table.encodings == []


def test_parse_rtp_parameters_without_rtcp() -> None:
    assert parse_rtp_parameters(RtpParametersT(codecs=[])) == {
        "codecs": [],
        "headerExtensions": [],
        "encodings": [],
    }


def test_rtp_parameters_node_quirks() -> None:
    params: Any = {
        "mid": "",
        "codecs": [{"mimeType": "audio/opus", "payloadType": 100, "clockRate": 48000}],
        # As mediasoup: zero SSRC/payload type and empty strings are "not given"...
        "encodings": [{"ssrc": 0, "codecPayloadType": 0, "rid": "", "scalabilityMode": ""}],
        # ... and a given rtcp without reducedSize sends False.
        "rtcp": {},
        "msid": "",
    }
    assert rtp_round_trip(params) == {
        "codecs": [
            {
                "mimeType": "audio/opus",
                "payloadType": 100,
                "clockRate": 48000,
                "parameters": {},
                "rtcpFeedback": [],
            }
        ],
        "headerExtensions": [],
        "encodings": [{"dtx": False}],
        "rtcp": {"reducedSize": False},
    }


def test_rtp_encoding_parameters_round_trip() -> None:
    encodings = FULL_RTP_PARAMETERS["encodings"]
    tables = serialize_rtp_encoding_parameters(encodings)
    parsed = [
        parse_rtp_encoding_parameters(
            through_bytes(table, RtpEncodingParameters, RtpEncodingParametersT)
        )
        for table in tables
    ]
    assert parsed == encodings
    assert serialize_rtp_encoding_parameters() == []


def test_rtp_encoding_without_dtx_parses_with_dtx_false() -> None:
    (table,) = serialize_rtp_encoding_parameters([{"ssrc": 5}])
    parsed = parse_rtp_encoding_parameters(
        through_bytes(table, RtpEncodingParameters, RtpEncodingParametersT)
    )
    assert parsed == {"ssrc": 5, "dtx": False}


def test_header_extension_uris() -> None:
    uris = {ext["uri"] for ext in get_supported_rtp_capabilities()["headerExtensions"]}
    assert len(uris) == 12
    assert sorted(rtp_header_extension_uri_to_fbs(uri) for uri in uris) == list(range(12))
    for uri in uris:
        assert rtp_header_extension_uri_from_fbs(rtp_header_extension_uri_to_fbs(uri)) == uri
    with pytest.raises(InvalidValueError, match="invalid RtpHeaderExtensionUri: urn:foo"):
        rtp_header_extension_uri_to_fbs("urn:foo")
    with pytest.raises(InvalidValueError, match="invalid RtpHeaderExtensionUri: 12"):
        rtp_header_extension_uri_from_fbs(12)
    with pytest.raises(TypeError):
        serialize_rtp_parameters({"codecs": [], "headerExtensions": [{"uri": "urn:foo", "id": 1}]})  # type: ignore[typeddict-item]


@pytest.mark.parametrize("value", [{"a": 1}, None, ["1"], [True], [2**31], [1.5], object()])
def test_serialize_parameters_rejects_other_types(value: Any) -> None:
    with pytest.raises(TypeError, match="invalid parameter type \\[key:'k'"):
        serialize_parameters({"k": value})


def test_parameter_numbers() -> None:
    tables = serialize_parameters(
        {"int": 7, "whole": 7.0, "half": 0.5, "big": 2**40, "neg": -(2**31), "bool": False}
    )
    assert [(p.name, p.valueType) for p in tables] == [
        ("int", Value.Integer32),
        ("whole", Value.Integer32),
        ("half", Value.Double),
        ("big", Value.Double),
        ("neg", Value.Integer32),
        ("bool", Value.Boolean),
    ]
    parsed = parse_parameters(tables)
    assert parsed == {
        "int": 7,
        "whole": 7,
        "half": 0.5,
        "big": 2**40,
        "neg": -(2**31),
        "bool": False,
    }
    assert type(parsed["whole"]) is int
    assert parsed["bool"] is False


def test_parse_parameters_skips_unknown_values() -> None:
    assert parse_parameters([ParameterT(name="x", valueType=Value.NONE, value=None)]) == {}
    assert parse_parameters(None) == {}


PARAMETER_VALUES = st.one_of(
    st.booleans(),
    INT32,
    # Whole numbers beyond int32 travel as doubles: exact up to 2**53.
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False),
    st.text(),
    st.lists(INT32, max_size=8),
)


@settings(database=None, max_examples=200)
@given(parameters=st.dictionaries(st.text(), PARAMETER_VALUES, max_size=8))
def test_codec_parameters_round_trip(parameters: dict[str, Any]) -> None:
    params: Any = {
        "codecs": [
            {
                "mimeType": "video/H264",
                "payloadType": 125,
                "clockRate": 90000,
                "parameters": parameters,
                "rtcpFeedback": [],
            }
        ],
        "headerExtensions": [
            {
                "uri": "urn:ietf:params:rtp-hdrext:toffset",
                "id": 9,
                "encrypt": False,
                "parameters": parameters,
            }
        ],
    }
    parsed = rtp_round_trip(params)
    assert parsed["codecs"][0]["parameters"] == parameters
    assert parsed["headerExtensions"][0]["parameters"] == parameters
    for key, value in parameters.items():
        assert kind_of(parsed["codecs"][0]["parameters"][key]) == kind_of(value)


def kind_of(value: Any) -> str:
    # Numbers may come back int for float and vice versa; nothing else changes type.
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, int | float) else type(value).__name__


# SCTP


def test_sctp_stream_parameters_round_trip() -> None:
    for params in (
        {"streamId": 1, "ordered": True},
        {"streamId": 2, "ordered": False, "maxPacketLifeTime": 100},
        {"streamId": 3, "ordered": False, "maxRetransmits": 5},
        {"streamId": 4},
    ):
        table = serialize_sctp_stream_parameters(params)  # type: ignore[arg-type]
        assert isinstance(table, SctpStreamParametersT)
        parsed = parse_sctp_stream_parameters(
            through_bytes(table, SctpStreamParameters, SctpStreamParametersT)
        )
        assert parsed == params


def test_sctp_parameters_dump() -> None:
    table = SctpParametersT(
        port=5000,
        os=1024,
        mis=512,
        maxMessageSize=262144,
        sendBufferSize=262144,
        sctpBufferedAmount=10,
        isDataChannel=True,
    )
    assert parse_sctp_parameters_dump(through_bytes(table, SctpParameters, SctpParametersT)) == {
        "port": 5000,
        "OS": 1024,
        "MIS": 512,
        "maxMessageSize": 262144,
        "sendBufferSize": 262144,
        "sctpBufferedAmount": 10,
        "isDataChannel": True,
    }


# SRTP


@pytest.mark.parametrize(
    "suite",
    [
        "AEAD_AES_256_GCM",
        "AEAD_AES_128_GCM",
        "AES_CM_128_HMAC_SHA1_80",
        "AES_CM_128_HMAC_SHA1_32",
    ],
)
def test_srtp_parameters_round_trip(suite: Any) -> None:
    params: Any = {"cryptoSuite": suite, "keyBase64": "ZnJlZWRvbQ=="}
    table = serialize_srtp_parameters(params)
    assert parse_srtp_parameters(through_bytes(table, SrtpParameters, SrtpParametersT)) == params
    assert crypto_suite_from_fbs(crypto_suite_to_fbs(suite)) == suite


def test_srtp_crypto_suite_errors() -> None:
    with pytest.raises(InvalidValueError, match="invalid SrtpCryptoSuite: AES"):
        crypto_suite_to_fbs("AES")
    with pytest.raises(InvalidValueError, match="invalid SrtpCryptoSuite: 9"):
        crypto_suite_from_fbs(9)


# RTP stream stats


def base_stats(**overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "timestamp": 2**40,
        "ssrc": 1234,
        "kind": 1,
        "mimeType": "video/VP8",
        "packetsLost": -2,
        "fractionLost": 3,
        "jitter": 4,
        "packetsDiscarded": 5,
        "packetsRetransmitted": 6,
        "packetsRepaired": 7,
        "nackCount": 8,
        "nackPacketCount": 9,
        "pliCount": 10,
        "firCount": 11,
        "roundTripTime": 0.5,
        "score": 10,
    }
    fields.update(overrides)
    return StatsT(dataType=StatsData.BaseStats, data=BaseStatsT(**fields))


EXPECTED_BASE = {
    "timestamp": 2**40,
    "ssrc": 1234,
    "kind": "video",
    "mimeType": "video/VP8",
    "packetsLost": -2,
    "fractionLost": 3,
    "jitter": 4,
    "packetsDiscarded": 5,
    "packetsRetransmitted": 6,
    "packetsRepaired": 7,
    "nackCount": 8,
    "nackPacketCount": 9,
    "pliCount": 10,
    "firCount": 11,
    "roundTripTime": 0.5,
    "score": 10,
}


def test_recv_stats() -> None:
    recv = RecvStatsT(
        base=base_stats(rid="r0", rtxSsrc=4321, rtxPacketsDiscarded=12),
        packetCount=100,
        byteCount=2**33,
        bitrate=300000,
        bitrateByLayer=[
            BitrateByLayerT(layer="0.0", bitrate=100000),
            BitrateByLayerT(layer="0.1", bitrate=200000),
        ],
    )
    table = through_bytes(StatsT(dataType=StatsData.RecvStats, data=recv), Stats, StatsT)
    assert parse_rtp_stream_stats(table) == {
        **EXPECTED_BASE,
        "rid": "r0",
        "rtxSsrc": 4321,
        "rtxPacketsDiscarded": 12,
        "type": "inbound-rtp",
        "packetCount": 100,
        "byteCount": 2**33,
        "bitrate": 300000,
        "bitrateByLayer": {"0.0": 100000, "0.1": 200000},
    }


def test_send_stats() -> None:
    send = SendStatsT(base=base_stats(kind=0, mimeType="audio/opus"), packetCount=1, byteCount=2)
    table = through_bytes(StatsT(dataType=StatsData.SendStats, data=send), Stats, StatsT)
    # No rid, RTX SSRC nor discarded RTX packets: absent, as undefined in mediasoup.
    assert parse_rtp_stream_stats(table) == {
        **EXPECTED_BASE,
        "kind": "audio",
        "mimeType": "audio/opus",
        "type": "outbound-rtp",
        "packetCount": 1,
        "byteCount": 2,
        "bitrate": 0,
    }


def test_recv_stats_without_layers() -> None:
    recv = RecvStatsT(base=base_stats(), bitrateByLayer=[])
    table = through_bytes(StatsT(dataType=StatsData.RecvStats, data=recv), Stats, StatsT)
    assert parse_rtp_stream_stats(table)["bitrateByLayer"] == {}  # type: ignore[typeddict-item]


def test_base_stats_alone_is_unexpected() -> None:
    with pytest.raises(TypeError, match="unexpected RTP stream stats type"):
        parse_rtp_stream_stats(base_stats())
