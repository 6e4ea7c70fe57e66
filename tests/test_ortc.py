"""Tests of mafalda.mediasoup.ortc (after mediasoup's test-ortc.ts, plus validation)."""

from __future__ import annotations

import re
from typing import Any

import flatbuffers
import pytest

from mafalda.mediasoup import h264_profile_level_id as h264
from mafalda.mediasoup import ortc
from mafalda.mediasoup._fbs.RtpParameters.RtpMapping import RtpMapping, RtpMappingT
from mafalda.mediasoup.errors import UnsupportedError
from mafalda.mediasoup.rtp_parameters import InvalidValueError
from mafalda.mediasoup.supported_rtp_capabilities import get_supported_rtp_capabilities

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
DEPENDENCY_DESCRIPTOR = (
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension"
)
VIDEO_ORIENTATION = "urn:3gpp:video-orientation"
TOFFSET = "urn:ietf:params:rtp-hdrext:toffset"


def opus() -> dict[str, Any]:
    return {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2}


def vp8() -> dict[str, Any]:
    return {"kind": "video", "mimeType": "video/VP8", "clockRate": 90000}


def h264_codec(**parameters: Any) -> dict[str, Any]:
    return {
        "kind": "video",
        "mimeType": "video/H264",
        "clockRate": 90000,
        "parameters": dict(parameters),
    }


def router_caps(*media_codecs: Any) -> Any:
    return ortc.generate_router_rtp_capabilities(list(media_codecs))


# generate_router_rtp_capabilities


def test_generate_router_rtp_capabilities_succeeds() -> None:
    media_codecs: list[Any] = [
        {**opus(), "parameters": {"useinbandfec": 1, "foo": "bar"}},
        {**vp8(), "preferredPayloadType": 125},
        {
            **h264_codec(**{"level-asymmetry-allowed": 1, "profile-level-id": "42e01f"}, foo="bar"),
            "rtcpFeedback": [],
        },
    ]

    caps = ortc.generate_router_rtp_capabilities(media_codecs)
    codecs = caps["codecs"]

    video_feedback = [
        {"type": "nack", "parameter": ""},
        {"type": "nack", "parameter": "pli"},
        {"type": "ccm", "parameter": "fir"},
        {"type": "goog-remb", "parameter": ""},
        {"type": "transport-cc", "parameter": ""},
    ]
    assert codecs == [
        {
            "kind": "audio",
            "mimeType": "audio/opus",
            "preferredPayloadType": 100,
            "clockRate": 48000,
            "channels": 2,
            "parameters": {"useinbandfec": 1, "foo": "bar"},
            "rtcpFeedback": [
                {"type": "nack", "parameter": ""},
                {"type": "transport-cc", "parameter": ""},
            ],
        },
        {
            "kind": "video",
            "mimeType": "video/VP8",
            "preferredPayloadType": 125,
            "clockRate": 90000,
            "parameters": {},
            "rtcpFeedback": video_feedback,
        },
        {
            "kind": "video",
            "mimeType": "video/rtx",
            "preferredPayloadType": 101,
            "clockRate": 90000,
            "parameters": {"apt": 125},
            "rtcpFeedback": [],
        },
        {
            "kind": "video",
            "mimeType": "video/H264",
            "preferredPayloadType": 102,
            "clockRate": 90000,
            # packetization-mode was not given and defaults to 0: not added.
            "parameters": {
                "level-asymmetry-allowed": 1,
                "profile-level-id": "42e01f",
                "foo": "bar",
            },
            "rtcpFeedback": video_feedback,
        },
        {
            "kind": "video",
            "mimeType": "video/rtx",
            "preferredPayloadType": 103,
            "clockRate": 90000,
            "parameters": {"apt": 102},
            "rtcpFeedback": [],
        },
    ]
    assert caps["headerExtensions"] == get_supported_rtp_capabilities()["headerExtensions"]


def test_generate_router_rtp_capabilities_with_unsupported_codecs_raises() -> None:
    chicken = {"kind": "audio", "mimeType": "audio/chicken", "clockRate": 8000, "channels": 4}
    with pytest.raises(UnsupportedError, match=re.escape("[mimeType:audio/chicken]")):
        router_caps(chicken)
    with pytest.raises(UnsupportedError):
        router_caps({**opus(), "channels": 1})
    # Without channels, audio codecs have one channel: not opus' two.
    mono = opus()
    del mono["channels"]
    with pytest.raises(UnsupportedError):
        router_caps(mono)


def test_generate_router_rtp_capabilities_with_too_many_codecs_raises() -> None:
    with pytest.raises(ValueError, match="cannot allocate"):
        router_caps(*(opus() for _ in range(100)))
    # 31 payload types taken, the last video codec gets one but its RTX does not.
    with pytest.raises(ValueError, match="cannot allocate"):
        router_caps(opus(), *(vp8() for _ in range(16)))


def test_generate_router_rtp_capabilities_payload_types() -> None:
    pcmu = {"kind": "audio", "mimeType": "audio/PCMU", "clockRate": 8000}
    caps = router_caps({**vp8(), "preferredPayloadType": 100}, opus(), pcmu)
    assert [(c["mimeType"], c["preferredPayloadType"]) for c in caps["codecs"]] == [
        ("video/VP8", 100),
        ("video/rtx", 101),
        ("audio/opus", 102),
        ("audio/PCMU", 0),
    ]


def test_generate_router_rtp_capabilities_refuses_what_is_no_payload_type() -> None:
    for wrong in (128, -5, 100.5):
        with pytest.raises(TypeError, match="codec.preferredPayloadType: .* not an integer"):
            router_caps({**opus(), "preferredPayloadType": wrong})


def test_generate_router_rtp_capabilities_with_duplicated_payload_type_raises() -> None:
    with pytest.raises(InvalidValueError, match="duplicated codec.preferredPayloadType"):
        router_caps({**opus(), "preferredPayloadType": 101}, {**vp8(), "preferredPayloadType": 101})
    # It is a ValueError and, as in mediasoup, a TypeError.
    with pytest.raises(ValueError):
        router_caps({**opus(), "preferredPayloadType": 8}, {**vp8(), "preferredPayloadType": 8})
    with pytest.raises(TypeError):
        router_caps({**opus(), "preferredPayloadType": 8}, {**vp8(), "preferredPayloadType": 8})


def test_generate_router_rtp_capabilities_without_media_codecs() -> None:
    caps = ortc.generate_router_rtp_capabilities()
    assert caps["codecs"] == []
    assert len(caps["headerExtensions"]) == 18
    assert ortc.generate_router_rtp_capabilities([]) == caps


def test_generate_router_rtp_capabilities_with_wrong_media_codecs_raises() -> None:
    with pytest.raises(TypeError, match="mediaCodecs must be an Array"):
        ortc.generate_router_rtp_capabilities({})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="missing codec.mimeType"):
        ortc.generate_router_rtp_capabilities([{"kind": "audio"}])  # type: ignore[typeddict-item]


def test_generate_router_rtp_capabilities_normalizes_media_codecs_in_place() -> None:
    codec: Any = {"kind": "video", "mimeType": "VIDEO/vp8", "clockRate": 90000, "channels": 2}
    caps = router_caps(codec)
    assert codec == {
        "kind": "video",
        "mimeType": "VIDEO/vp8",
        "clockRate": 90000,
        "parameters": {},
        "rtcpFeedback": [],
    }
    # The supported codec is what the router offers, not the given spelling.
    assert caps["codecs"][0]["mimeType"] == "video/VP8"


def test_generate_router_rtp_capabilities_does_not_alter_supported_capabilities() -> None:
    before = get_supported_rtp_capabilities()
    caps = router_caps(opus(), vp8())
    caps["codecs"][0]["parameters"]["x"] = 1
    caps["headerExtensions"].clear()
    assert get_supported_rtp_capabilities() == before
    assert router_caps(opus(), vp8())["codecs"][0]["parameters"] == {}
    # The supported data is mediasoup's as written, not the normalized form.
    assert before["codecs"][0]["rtcpFeedback"] == [{"type": "nack"}, {"type": "transport-cc"}]


def test_generate_router_rtp_capabilities_multiopus() -> None:
    surround = {
        "kind": "audio",
        "mimeType": "audio/multiopus",
        "clockRate": 48000,
        "channels": 6,
        "parameters": {"num_streams": 4, "coupled_streams": 2},
    }
    caps = router_caps(surround)
    assert caps["codecs"][0]["parameters"] == {
        "channel_mapping": "0,4,1,2,3,5",
        "num_streams": 4,
        "coupled_streams": 2,
    }
    with pytest.raises(UnsupportedError):
        router_caps({**surround, "parameters": {"num_streams": 4, "coupled_streams": 3}})
    with pytest.raises(UnsupportedError):
        router_caps({**surround, "parameters": {"num_streams": 5, "coupled_streams": 2}})


# Producer mapping, consumable, consumer and pipe consumer parameters


def test_producer_consumable_consumer_and_pipe_consumer_rtp_parameters() -> None:
    caps = router_caps(
        opus(),
        h264_codec(
            **{
                "level-asymmetry-allowed": 1,
                "packetization-mode": 1,
                "profile-level-id": "4d0032",
            },
            bar="lalala",
        ),
    )
    rtp_parameters: Any = {
        "codecs": [
            {
                "mimeType": "video/H264",
                "payloadType": 111,
                "clockRate": 90000,
                "parameters": {
                    "foo": 1234,
                    "packetization-mode": 1,
                    "profile-level-id": "4d0032",
                },
                "rtcpFeedback": [
                    {"type": "nack", "parameter": ""},
                    {"type": "nack", "parameter": "pli"},
                    {"type": "goog-remb", "parameter": ""},
                ],
            },
            {
                "mimeType": "video/rtx",
                "payloadType": 112,
                "clockRate": 90000,
                "parameters": {"apt": 111},
                "rtcpFeedback": [],
            },
        ],
        "headerExtensions": [
            {"uri": MID, "id": 1},
            {"uri": VIDEO_ORIENTATION, "id": 2},
        ],
        "encodings": [
            {
                "ssrc": 11111111,
                "rtx": {"ssrc": 11111112},
                "maxBitrate": 111111,
                "scalabilityMode": "L1T3",
            },
            {
                "ssrc": 21111111,
                "rtx": {"ssrc": 21111112},
                "maxBitrate": 222222,
                "scalabilityMode": "L1T3",
            },
            {"rid": "high", "maxBitrate": 333333, "scalabilityMode": "L1T3"},
        ],
        "rtcp": {"cname": "qwerty1234"},
    }

    rtp_mapping = ortc.get_producer_rtp_parameters_mapping(rtp_parameters, caps)

    assert rtp_mapping["codecs"] == [
        {"payloadType": 111, "mappedPayloadType": 101},
        {"payloadType": 112, "mappedPayloadType": 102},
    ]
    encodings_mapping = rtp_mapping["encodings"]
    assert encodings_mapping[0]["ssrc"] == 11111111
    assert "rid" not in encodings_mapping[0]
    assert encodings_mapping[1]["ssrc"] == 21111111
    assert "rid" not in encodings_mapping[1]
    assert "ssrc" not in encodings_mapping[2]
    assert encodings_mapping[2]["rid"] == "high"
    assert all(e["scalabilityMode"] == "L1T3" for e in encodings_mapping)
    first_ssrc = encodings_mapping[0]["mappedSsrc"]
    assert 100_000_000 <= first_ssrc < 999_999_999
    assert [e["mappedSsrc"] for e in encodings_mapping] == [first_ssrc + i for i in range(3)]

    consumable = ortc.get_consumable_rtp_parameters("video", rtp_parameters, caps, rtp_mapping)

    assert consumable["codecs"][0]["mimeType"] == "video/H264"
    assert consumable["codecs"][0]["payloadType"] == 101
    assert consumable["codecs"][0]["clockRate"] == 90000
    assert consumable["codecs"][0]["parameters"] == {
        "foo": 1234,
        "packetization-mode": 1,
        "profile-level-id": "4d0032",
    }
    assert consumable["codecs"][1]["mimeType"] == "video/rtx"
    assert consumable["codecs"][1]["payloadType"] == 102
    assert consumable["codecs"][1]["clockRate"] == 90000
    assert consumable["codecs"][1]["parameters"] == {"apt": 101}
    assert consumable["encodings"] == [
        {
            "ssrc": encodings_mapping[0]["mappedSsrc"],
            "maxBitrate": 111111,
            "scalabilityMode": "L1T3",
        },
        {
            "ssrc": encodings_mapping[1]["mappedSsrc"],
            "maxBitrate": 222222,
            "scalabilityMode": "L1T3",
        },
        {
            "ssrc": encodings_mapping[2]["mappedSsrc"],
            "maxBitrate": 333333,
            "scalabilityMode": "L1T3",
        },
    ]
    assert consumable["rtcp"] == {"cname": "qwerty1234", "reducedSize": True}
    assert "msid" not in consumable
    # Video header extensions the router may send.
    assert [ext["uri"] for ext in consumable["headerExtensions"]] == [
        MID,
        ABS_SEND_TIME,
        TRANSPORT_CC,
        VIDEO_ORIENTATION,
        TOFFSET,
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time",
        "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
        "urn:mediasoup:params:rtp-hdrext:packet-id",
    ]

    remote_caps: Any = {
        "codecs": [
            {
                "kind": "audio",
                "mimeType": "audio/opus",
                "preferredPayloadType": 100,
                "clockRate": 48000,
                "channels": 2,
                "parameters": {},
                "rtcpFeedback": [],
            },
            {
                "kind": "video",
                "mimeType": "video/H264",
                "preferredPayloadType": 101,
                "clockRate": 90000,
                "parameters": {
                    "packetization-mode": 1,
                    "profile-level-id": "4d0032",
                    "baz": "LOLOLO",
                },
                "rtcpFeedback": [
                    {"type": "nack", "parameter": ""},
                    {"type": "nack", "parameter": "pli"},
                    {"type": "foo", "parameter": "FOO"},
                ],
            },
            {
                "kind": "video",
                "mimeType": "video/rtx",
                "preferredPayloadType": 102,
                "clockRate": 90000,
                "parameters": {"apt": 101},
                "rtcpFeedback": [],
            },
        ],
        "headerExtensions": [
            {
                "kind": "audio",
                "uri": MID,
                "preferredId": 1,
                "preferredEncrypt": False,
                "direction": "sendrecv",
            },
            {
                "kind": "video",
                "uri": MID,
                "preferredId": 1,
                "preferredEncrypt": False,
                "direction": "sendrecv",
            },
            {
                "kind": "video",
                "uri": "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
                "preferredId": 2,
                "preferredEncrypt": False,
                "direction": "sendrecv",
            },
            {
                "kind": "audio",
                "uri": "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
                "preferredId": 6,
                "preferredEncrypt": False,
                "direction": "sendrecv",
            },
            {
                "kind": "video",
                "uri": VIDEO_ORIENTATION,
                "preferredId": 8,
                "preferredEncrypt": False,
                "direction": "sendrecv",
            },
            {
                "kind": "video",
                "uri": TOFFSET,
                "preferredId": 9,
                "preferredEncrypt": False,
                "direction": "sendrecv",
            },
        ],
    }

    consumer = ortc.get_consumer_rtp_parameters(
        consumable_rtp_parameters=consumable,
        remote_rtp_capabilities=remote_caps,
        pipe=False,
        enable_rtx=True,
    )

    assert consumer["codecs"] == [
        {
            "mimeType": "video/H264",
            "payloadType": 101,
            "clockRate": 90000,
            "parameters": {"foo": 1234, "packetization-mode": 1, "profile-level-id": "4d0032"},
            "rtcpFeedback": [
                {"type": "nack", "parameter": ""},
                {"type": "nack", "parameter": "pli"},
                {"type": "foo", "parameter": "FOO"},
            ],
        },
        {
            "mimeType": "video/rtx",
            "payloadType": 102,
            "clockRate": 90000,
            "parameters": {"apt": 101},
            "rtcpFeedback": [],
        },
    ]
    assert len(consumer["encodings"]) == 1
    encoding = consumer["encodings"][0]
    assert isinstance(encoding["ssrc"], int)
    assert encoding["rtx"] == {"ssrc": encoding["ssrc"] + 1}
    # Three simulcast streams are three spatial layers for the consumer.
    assert encoding["scalabilityMode"] == "L3T3"
    assert encoding["maxBitrate"] == 333333
    assert consumer["headerExtensions"] == [
        {"uri": MID, "id": 1, "encrypt": False, "parameters": {}},
        {"uri": VIDEO_ORIENTATION, "id": 8, "encrypt": False, "parameters": {}},
        {"uri": TOFFSET, "id": 9, "encrypt": False, "parameters": {}},
    ]
    assert consumer["rtcp"] == {"cname": "qwerty1234", "reducedSize": True}

    pipe_consumer = ortc.get_pipe_consumer_rtp_parameters(
        consumable_rtp_parameters=consumable, enable_rtx=False
    )

    assert pipe_consumer["codecs"] == [
        {
            "mimeType": "video/H264",
            "payloadType": 101,
            "clockRate": 90000,
            "parameters": {"foo": 1234, "packetization-mode": 1, "profile-level-id": "4d0032"},
            "rtcpFeedback": [
                {"type": "nack", "parameter": "pli"},
                {"type": "ccm", "parameter": "fir"},
            ],
        }
    ]
    assert len(pipe_consumer["encodings"]) == 3
    base_ssrc = pipe_consumer["encodings"][0]["ssrc"]
    for index, pipe_encoding in enumerate(pipe_consumer["encodings"]):
        assert pipe_encoding["ssrc"] == base_ssrc + index
        assert "rtx" not in pipe_encoding
        assert isinstance(pipe_encoding["maxBitrate"], int)
        assert pipe_encoding["scalabilityMode"] == "L1T3"
    assert pipe_consumer["rtcp"] == {"cname": "qwerty1234", "reducedSize": True}
    # No MID nor BWE extensions; the dependency descriptor one, in id order.
    assert [(ext["uri"], ext["id"]) for ext in pipe_consumer["headerExtensions"]] == [
        (DEPENDENCY_DESCRIPTOR, 7),
        (VIDEO_ORIENTATION, 8),
        (TOFFSET, 9),
        ("http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time", 10),
        ("http://www.webrtc.org/experiments/rtp-hdrext/playout-delay", 11),
        ("urn:mediasoup:params:rtp-hdrext:packet-id", 12),
    ]

    # The consumable parameters were not touched by the consumers.
    assert consumable["codecs"][0]["rtcpFeedback"] == caps["codecs"][1]["rtcpFeedback"]
    assert "rtx" not in consumable["encodings"][0]


def test_get_producer_rtp_parameters_mapping_with_incompatible_params_raises() -> None:
    caps = router_caps(
        opus(), h264_codec(**{"packetization-mode": 1, "profile-level-id": "640032"})
    )
    rtp_parameters: Any = {
        "codecs": [
            {
                "mimeType": "video/VP8",
                "payloadType": 120,
                "clockRate": 90000,
                "rtcpFeedback": [
                    {"type": "nack", "parameter": ""},
                    {"type": "nack", "parameter": "fir"},
                ],
            }
        ],
        "headerExtensions": [],
        "encodings": [{"ssrc": 11111111}],
        "rtcp": {"cname": "qwerty1234"},
    }
    with pytest.raises(
        UnsupportedError, match=re.escape("unsupported codec [mimeType:video/VP8, payloadType:120]")
    ):
        ortc.get_producer_rtp_parameters_mapping(rtp_parameters, caps)


def rtx(payload_type: int, apt: int) -> dict[str, Any]:
    return {
        "mimeType": "video/rtx",
        "payloadType": payload_type,
        "clockRate": 90000,
        "parameters": {"apt": apt},
    }


def test_get_producer_rtp_parameters_mapping_rtx_errors() -> None:
    caps = router_caps(opus(), vp8())
    vp8_params = {"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000, "parameters": {}}
    opus_params = {
        "mimeType": "audio/opus",
        "payloadType": 111,
        "clockRate": 48000,
        "channels": 2,
        "parameters": {},
    }

    orphan: Any = {"codecs": [vp8_params, rtx(97, 95)]}
    with pytest.raises(InvalidValueError, match="missing media codec found for RTX PT 97"):
        ortc.get_producer_rtp_parameters_mapping(orphan, caps)

    # An RTX codec associated with another RTX codec has no media codec either.
    chained: Any = {"codecs": [vp8_params, rtx(97, 98), rtx(98, 96)]}
    with pytest.raises(InvalidValueError, match="missing media codec found for RTX PT 97"):
        ortc.get_producer_rtp_parameters_mapping(chained, caps)

    # The router has no RTX for audio.
    audio_rtx: Any = {"codecs": [opus_params, rtx(112, 111)]}
    with pytest.raises(UnsupportedError, match="no RTX codec for capability codec PT 100"):
        ortc.get_producer_rtp_parameters_mapping(audio_rtx, caps)


def test_get_producer_rtp_parameters_mapping_without_encodings() -> None:
    caps = router_caps(vp8())
    params: Any = {"codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}]}
    mapping = ortc.get_producer_rtp_parameters_mapping(params, caps)
    assert mapping == {"codecs": [{"payloadType": 96, "mappedPayloadType": 100}], "encodings": []}


def test_h264_profile_level_id_negotiation_in_mapping() -> None:
    caps = router_caps(
        h264_codec(**{"packetization-mode": 1, "profile-level-id": "42e01f"}),
        h264_codec(**{"packetization-mode": 1, "profile-level-id": "640032"}),
    )

    def produce(**parameters: Any) -> tuple[dict[str, Any], Any]:
        codec = {
            "mimeType": "video/H264",
            "payloadType": 125,
            "clockRate": 90000,
            "parameters": dict(parameters),
        }
        return codec, ortc.get_producer_rtp_parameters_mapping({"codecs": [codec]}, caps)  # type: ignore[list-item]

    # Higher level than the router without level asymmetry: lowered to the router's.
    codec, mapping = produce(**{"packetization-mode": 1, "profile-level-id": "42e034"})
    assert mapping["codecs"] == [{"payloadType": 125, "mappedPayloadType": 100}]
    assert codec["parameters"]["profile-level-id"] == "42e01f"

    codec, mapping = produce(**{"packetization-mode": 1, "profile-level-id": "64001f"})
    assert mapping["codecs"] == [{"payloadType": 125, "mappedPayloadType": 102}]
    assert codec["parameters"]["profile-level-id"] == "64001f"

    # Other packetization mode or profile: no match.
    with pytest.raises(UnsupportedError):
        produce(**{"profile-level-id": "42e01f"})
    with pytest.raises(UnsupportedError):
        produce(**{"packetization-mode": 1, "profile-level-id": "4d001f"})
    with pytest.raises(UnsupportedError):
        produce(**{"packetization-mode": 1, "profile-level-id": "zzzzzz"})


def test_h264_without_profile_level_id_on_both_sides() -> None:
    caps = router_caps(h264_codec())
    codec: Any = {"mimeType": "video/H264", "payloadType": 125, "clockRate": 90000}
    ortc.validate_and_normalize_rtp_codec_parameters(codec)
    mapping = ortc.get_producer_rtp_parameters_mapping({"codecs": [codec]}, caps)
    assert mapping["codecs"] == [{"payloadType": 125, "mappedPayloadType": 100}]
    assert "profile-level-id" not in codec["parameters"]


def test_h264_negotiated_profile_level_id_fills_empty_parameters() -> None:
    caps = router_caps(h264_codec(**{"profile-level-id": "42e01f"}))
    codec: Any = {"mimeType": "video/H264", "payloadType": 125, "clockRate": 90000}
    ortc.validate_and_normalize_rtp_codec_parameters(codec)
    ortc.get_producer_rtp_parameters_mapping({"codecs": [codec]}, caps)
    assert codec["parameters"] == {"profile-level-id": "42e01f"}


def test_h264_answer_failure_means_no_match(monkeypatch: pytest.MonkeyPatch) -> None:
    caps = router_caps(h264_codec(**{"profile-level-id": "42e01f"}))

    def refuse(*_: Any) -> str:
        raise ValueError("H264 Profile mismatch")

    monkeypatch.setattr(h264, "generate_profile_level_id_string_for_answer", refuse)
    codec: Any = {
        "mimeType": "video/H264",
        "payloadType": 125,
        "clockRate": 90000,
        "parameters": {"profile-level-id": "42e01f"},
    }
    with pytest.raises(UnsupportedError):
        ortc.get_producer_rtp_parameters_mapping({"codecs": [codec]}, caps)


def test_vp9_profile_id_must_match() -> None:
    caps = router_caps({"kind": "video", "mimeType": "video/VP9", "clockRate": 90000})

    def codec(**parameters: Any) -> Any:
        return {
            "mimeType": "video/VP9",
            "payloadType": 98,
            "clockRate": 90000,
            "parameters": parameters,
        }

    for same in (codec(), codec(**{"profile-id": 0})):
        mapping = ortc.get_producer_rtp_parameters_mapping({"codecs": [same]}, caps)
        assert mapping["codecs"] == [{"payloadType": 98, "mappedPayloadType": 100}]
    with pytest.raises(UnsupportedError):
        ortc.get_producer_rtp_parameters_mapping({"codecs": [codec(**{"profile-id": 2})]}, caps)
    # Not strict when creating a router: any VP9 profile matches the supported VP9.
    profile_2 = router_caps(
        {
            "kind": "video",
            "mimeType": "video/VP9",
            "clockRate": 90000,
            "parameters": {"profile-id": 2},
        }
    )
    assert profile_2["codecs"][0]["parameters"] == {"profile-id": 2}


def test_get_consumable_rtp_parameters_audio() -> None:
    caps = router_caps(opus())
    params: Any = {
        "codecs": [
            {
                "mimeType": "audio/opus",
                "payloadType": 111,
                "clockRate": 48000,
                "channels": 2,
                "parameters": {"useinbandfec": 1},
            }
        ],
        "encodings": [{"ssrc": 1234, "dtx": True, "codecPayloadType": 111}],
        "rtcp": {},
        "msid": "stream track",
    }
    mapping = ortc.get_producer_rtp_parameters_mapping(params, caps)
    consumable = ortc.get_consumable_rtp_parameters("audio", params, caps, mapping)
    assert consumable["codecs"] == [
        {
            "mimeType": "audio/opus",
            "payloadType": 100,
            "clockRate": 48000,
            "channels": 2,
            "parameters": {"useinbandfec": 1},
            "rtcpFeedback": [
                {"type": "nack", "parameter": ""},
                {"type": "transport-cc", "parameter": ""},
            ],
        }
    ]
    assert consumable["encodings"] == [{"ssrc": mapping["encodings"][0]["mappedSsrc"], "dtx": True}]
    assert consumable["rtcp"] == {"reducedSize": True}
    assert consumable["msid"] == "stream track"
    # Audio extensions the router may send (transport-wide CC only received for audio).
    assert [ext["uri"] for ext in consumable["headerExtensions"]] == [
        MID,
        ABS_SEND_TIME,
        "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time",
        "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
        "urn:mediasoup:params:rtp-hdrext:packet-id",
    ]
    # Copies: the producer's parameters and the router's capabilities stay apart.
    consumable["codecs"][0]["parameters"]["x"] = 1
    consumable["codecs"][0]["rtcpFeedback"].clear()
    assert params["codecs"][0]["parameters"] == {"useinbandfec": 1}
    assert len(caps["codecs"][0]["rtcpFeedback"]) == 2


def test_get_consumable_rtp_parameters_with_inconsistent_mapping_raises() -> None:
    caps = router_caps(vp8())
    params: Any = {
        "codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}],
        "encodings": [{"ssrc": 1}, {"ssrc": 2}],
    }
    mapping = ortc.get_producer_rtp_parameters_mapping(params, caps)

    wrong_codecs: Any = {**mapping, "codecs": [{"payloadType": 96, "mappedPayloadType": 50}]}
    with pytest.raises(TypeError, match="payload type 96"):
        ortc.get_consumable_rtp_parameters("video", params, caps, wrong_codecs)

    missing_encoding: Any = {**mapping, "encodings": mapping["encodings"][:1]}
    with pytest.raises(TypeError, match="missing mapped encodings"):
        ortc.get_consumable_rtp_parameters("video", params, caps, missing_encoding)


def consumable_video() -> Any:
    """Consumable parameters of a VP8 + H264 producer (with RTX) of a VP8/H264 router."""
    caps = router_caps(vp8(), h264_codec(**{"packetization-mode": 1, "profile-level-id": "42e01f"}))
    params: Any = {
        "codecs": [
            {"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000},
            rtx(97, 96),
            {
                "mimeType": "video/H264",
                "payloadType": 98,
                "clockRate": 90000,
                "parameters": {"packetization-mode": 1, "profile-level-id": "42e01f"},
            },
            rtx(99, 98),
        ],
        "encodings": [{"ssrc": 1111, "rtx": {"ssrc": 1112}, "scalabilityMode": "L1T2"}],
        "rtcp": {"cname": "cname"},
    }
    ortc.validate_and_normalize_rtp_parameters(params)
    mapping = ortc.get_producer_rtp_parameters_mapping(params, caps)
    return ortc.get_consumable_rtp_parameters("video", params, caps, mapping)


def remote_caps(*codecs: dict[str, Any], header_extensions: list[Any] | None = None) -> Any:
    return {"codecs": list(codecs), "headerExtensions": header_extensions or []}


def remote_codec(mime_type: str, payload_type: int, **parameters: Any) -> dict[str, Any]:
    return {
        "kind": "video",
        "mimeType": mime_type,
        "preferredPayloadType": payload_type,
        "clockRate": 90000,
        "parameters": parameters,
        "rtcpFeedback": [
            {"type": "nack"},
            {"type": "nack", "parameter": "pli"},
            {"type": "goog-remb"},
            {"type": "transport-cc"},
        ],
    }


def ext(uri: str, preferred_id: int) -> dict[str, Any]:
    return {"kind": "video", "uri": uri, "preferredId": preferred_id}


def test_get_consumer_rtp_parameters_drops_rtx_of_unsupported_codecs() -> None:
    consumable = consumable_video()
    caps = remote_caps(remote_codec("video/VP8", 96), remote_codec("video/rtx", 97, apt=96))
    consumer = ortc.get_consumer_rtp_parameters(
        consumable_rtp_parameters=consumable,
        remote_rtp_capabilities=caps,
        pipe=False,
        enable_rtx=True,
    )
    # The remote RTX matches both RTX codecs, but H264's goes with H264.
    assert [(c["mimeType"], c["payloadType"]) for c in consumer["codecs"]] == [
        ("video/VP8", 100),
        ("video/rtx", 101),
    ]
    encoding = consumer["encodings"][0]
    assert encoding["rtx"] == {"ssrc": encoding["ssrc"] + 1}
    assert encoding["scalabilityMode"] == "L1T2"
    assert "maxBitrate" not in encoding
    # The remote capabilities were normalized in place.
    assert caps["codecs"][0]["rtcpFeedback"][0] == {"type": "nack", "parameter": ""}


def test_get_consumer_rtp_parameters_without_rtx() -> None:
    consumable = consumable_video()
    caps = remote_caps(
        remote_codec("video/H264", 102, **{"packetization-mode": 1, "profile-level-id": "42e01f"}),
        remote_codec("video/rtx", 103, apt=102),
    )
    consumer = ortc.get_consumer_rtp_parameters(
        consumable_rtp_parameters=consumable,
        remote_rtp_capabilities=caps,
        pipe=False,
        enable_rtx=False,
    )
    assert [c["mimeType"] for c in consumer["codecs"]] == ["video/H264"]
    # Plain NACK goes with RTX; no BWE extension negotiated: no BWE feedback either.
    assert consumer["codecs"][0]["rtcpFeedback"] == [{"type": "nack", "parameter": "pli"}]
    assert "rtx" not in consumer["encodings"][0]


@pytest.mark.parametrize(
    ("uris", "feedback_types"),
    [
        ([TRANSPORT_CC, ABS_SEND_TIME], ["nack", "nack", "transport-cc"]),
        ([ABS_SEND_TIME], ["nack", "nack", "goog-remb"]),
        ([], ["nack", "nack"]),
    ],
)
def test_get_consumer_rtp_parameters_bwe_feedback(
    uris: list[str], feedback_types: list[str]
) -> None:
    consumable = consumable_video()
    ids = {ABS_SEND_TIME: 4, TRANSPORT_CC: 5}
    caps = remote_caps(
        remote_codec("video/VP8", 96), header_extensions=[ext(uri, ids[uri]) for uri in uris]
    )
    consumer = ortc.get_consumer_rtp_parameters(
        consumable_rtp_parameters=consumable,
        remote_rtp_capabilities=caps,
        pipe=False,
        enable_rtx=True,
    )
    assert [fb["type"] for fb in consumer["codecs"][0]["rtcpFeedback"]] == feedback_types
    assert sorted(e["uri"] for e in consumer["headerExtensions"]) == sorted(uris)


def test_get_consumer_rtp_parameters_header_extension_needs_same_id() -> None:
    consumable = consumable_video()
    caps = remote_caps(remote_codec("video/VP8", 96), header_extensions=[ext(MID, 3)])
    consumer = ortc.get_consumer_rtp_parameters(
        consumable_rtp_parameters=consumable,
        remote_rtp_capabilities=caps,
        pipe=False,
        enable_rtx=True,
    )
    assert consumer["headerExtensions"] == []


def test_get_consumer_rtp_parameters_with_unhashable_header_extension_values() -> None:
    """Capabilities that were not normalized may hold any JSON value (as the Node library
    takes them): an extension whose uri is an object matches nothing, the others still
    match, nothing raises."""
    consumable = consumable_video()
    bad = {"kind": "video", "uri": {"not": "a string"}, "preferredId": 4}
    caps = remote_caps(remote_codec("video/VP8", 96), header_extensions=[bad, ext(TRANSPORT_CC, 5)])
    consumer = ortc.get_consumer_rtp_parameters(
        consumable_rtp_parameters=consumable,
        remote_rtp_capabilities=caps,
        pipe=False,
        enable_rtx=True,
    )
    assert [e["uri"] for e in consumer["headerExtensions"]] == [TRANSPORT_CC]
    assert [fb["type"] for fb in consumer["codecs"][0]["rtcpFeedback"]] == [
        "nack",
        "nack",
        "transport-cc",
    ]


def test_get_consumer_rtp_parameters_without_compatible_codecs_raises() -> None:
    consumable = consumable_video()
    for caps in (
        remote_caps(remote_codec("video/VP9", 96)),
        # Only RTX in common is no media codec at all.
        remote_caps(remote_codec("video/rtx", 97, apt=96)),
    ):
        with pytest.raises(UnsupportedError, match="no compatible media codecs"):
            ortc.get_consumer_rtp_parameters(
                consumable_rtp_parameters=consumable,
                remote_rtp_capabilities=caps,
                pipe=False,
                enable_rtx=True,
            )


def test_get_consumer_rtp_parameters_with_invalid_remote_codec_raises() -> None:
    with pytest.raises(TypeError, match="missing codec.clockRate"):
        ortc.get_consumer_rtp_parameters(
            consumable_rtp_parameters=consumable_video(),
            remote_rtp_capabilities={"codecs": [{"mimeType": "video/VP8"}]},  # type: ignore[typeddict-item]
            pipe=False,
            enable_rtx=True,
        )


def test_get_consumer_rtp_parameters_for_pipe() -> None:
    consumable = consumable_video()
    consumable["encodings"] = [
        {"ssrc": 1, "scalabilityMode": "L1T2"},
        {"ssrc": 2, "scalabilityMode": "L1T2", "rtx": {"ssrc": 5}},
    ]
    consumable["msid"] = "a b"
    caps = remote_caps(remote_codec("video/VP8", 96), remote_codec("video/rtx", 97, apt=96))
    for enable_rtx in (True, False):
        consumer = ortc.get_consumer_rtp_parameters(
            consumable_rtp_parameters=consumable,
            remote_rtp_capabilities=caps,
            pipe=True,
            enable_rtx=enable_rtx,
        )
        encodings = consumer["encodings"]
        assert len(encodings) == 2
        assert encodings[1]["ssrc"] == encodings[0]["ssrc"] + 1
        assert all(e["scalabilityMode"] == "L1T2" for e in encodings)
        if enable_rtx:
            assert encodings[1]["rtx"]["ssrc"] == encodings[0]["rtx"]["ssrc"] + 1
        else:
            assert all("rtx" not in e for e in encodings)
        assert consumer["msid"] == "a b"
    assert consumable["encodings"][0] == {"ssrc": 1, "scalabilityMode": "L1T2"}


def test_get_consumer_rtp_parameters_encoding_max_bitrate_and_scalability() -> None:
    consumable = consumable_video()
    caps = remote_caps(remote_codec("video/VP8", 96))
    consumable["encodings"] = [{"ssrc": 1, "maxBitrate": 5000}, {"ssrc": 2}]
    consumer = ortc.get_consumer_rtp_parameters(
        consumable_rtp_parameters=consumable,
        remote_rtp_capabilities=caps,
        pipe=False,
        enable_rtx=True,
    )
    assert consumer["encodings"][0]["maxBitrate"] == 5000
    assert consumer["encodings"][0]["scalabilityMode"] == "L2T1"

    consumable["encodings"] = [{"ssrc": 1}]
    del consumable["rtcp"]
    consumer = ortc.get_consumer_rtp_parameters(
        consumable_rtp_parameters=consumable,
        remote_rtp_capabilities=caps,
        pipe=False,
        enable_rtx=True,
    )
    assert set(consumer["encodings"][0]) == {"ssrc"}
    assert "rtcp" not in consumer


def test_get_pipe_consumer_rtp_parameters_with_rtx() -> None:
    consumable = consumable_video()
    consumable["msid"] = "x y"
    consumer = ortc.get_pipe_consumer_rtp_parameters(
        consumable_rtp_parameters=consumable, enable_rtx=True
    )
    assert [c["mimeType"] for c in consumer["codecs"]] == [
        "video/VP8",
        "video/rtx",
        "video/H264",
        "video/rtx",
    ]
    assert consumer["codecs"][0]["rtcpFeedback"] == [
        {"type": "nack", "parameter": ""},
        {"type": "nack", "parameter": "pli"},
        {"type": "ccm", "parameter": "fir"},
    ]
    encoding = consumer["encodings"][0]
    assert encoding["scalabilityMode"] == "L1T2"
    assert isinstance(encoding["rtx"]["ssrc"], int)
    assert consumer["msid"] == "x y"
    assert consumer["rtcp"] == {"cname": "cname", "reducedSize": True}
    # Each pipe consumer gets its own dictionaries.
    other = ortc.get_pipe_consumer_rtp_parameters(
        consumable_rtp_parameters=consumable, enable_rtx=True
    )
    assert other["headerExtensions"] == consumer["headerExtensions"]
    assert other["headerExtensions"][0] is not consumer["headerExtensions"][0]


def test_get_pipe_consumer_rtp_parameters_minimal() -> None:
    consumer = ortc.get_pipe_consumer_rtp_parameters(
        consumable_rtp_parameters={
            "codecs": [{"mimeType": "audio/opus", "payloadType": 100, "clockRate": 48000}]
        },
        enable_rtx=False,
    )
    assert consumer == {
        "codecs": [
            {"mimeType": "audio/opus", "payloadType": 100, "clockRate": 48000, "rtcpFeedback": []}
        ],
        "headerExtensions": [
            {"uri": DEPENDENCY_DESCRIPTOR, "id": 7, "encrypt": False, "parameters": {}}
        ],
        "encodings": [],
    }


def test_can_consume() -> None:
    consumable = consumable_video()
    assert ortc.can_consume(consumable, remote_caps(remote_codec("video/VP8", 96)))
    assert ortc.can_consume(
        consumable,
        remote_caps(
            remote_codec(
                "video/H264", 96, **{"packetization-mode": 1, "profile-level-id": "42e01f"}
            )
        ),
    )
    assert not ortc.can_consume(consumable, remote_caps(remote_codec("video/VP9", 96)))
    assert not ortc.can_consume(consumable, {})
    # An RTX codec alone is not enough.
    assert not ortc.can_consume(consumable, remote_caps(remote_codec("video/rtx", 97, apt=96)))
    # H264 of another packetization mode.
    assert not ortc.can_consume(
        consumable, remote_caps(remote_codec("video/H264", 96, **{"profile-level-id": "42e01f"}))
    )
    with pytest.raises(TypeError, match="caps.codecs is not an array"):
        ortc.can_consume(consumable, {"codecs": "VP8"})  # type: ignore[typeddict-item]


def test_serialize_rtp_mapping() -> None:
    mapping: ortc.RtpCodecsEncodingsMapping = {
        "codecs": [
            {"payloadType": 96, "mappedPayloadType": 100},
            {"payloadType": 97, "mappedPayloadType": 101},
        ],
        "encodings": [
            {"ssrc": 1111, "mappedSsrc": 200000000},
            {"rid": "r1", "scalabilityMode": "L1T3", "mappedSsrc": 200000001},
        ],
    }
    builder = flatbuffers.Builder(0)
    builder.Finish(ortc.serialize_rtp_mapping(mapping).Pack(builder))
    parsed = RtpMappingT.InitFromObj(RtpMapping.GetRootAs(builder.Output(), 0))
    assert [(c.payloadType, c.mappedPayloadType) for c in parsed.codecs] == [(96, 100), (97, 101)]
    assert [(e.rid, e.ssrc, e.scalabilityMode, e.mappedSsrc) for e in parsed.encodings] == [
        (None, 1111, None, 200000000),
        ("r1", None, "L1T3", 200000001),
    ]


# Validation


def test_validate_and_normalize_rtp_capabilities_fills_defaults() -> None:
    caps: Any = {
        "codecs": [
            {"mimeType": "Audio/Opus", "clockRate": 48000, "parameters": {"x": None}},
            {"mimeType": "video/VP8", "clockRate": 90000, "channels": 3, "rtcpFeedback": "no"},
        ],
        "headerExtensions": [{"kind": "audio", "uri": MID, "preferredId": 1}],
    }
    ortc.validate_and_normalize_rtp_capabilities(caps)
    assert caps == {
        "codecs": [
            {
                "kind": "audio",
                "mimeType": "Audio/Opus",
                "clockRate": 48000,
                "channels": 1,
                "parameters": {"x": ""},
                "rtcpFeedback": [],
            },
            {
                "kind": "video",
                "mimeType": "video/VP8",
                "clockRate": 90000,
                "parameters": {},
                "rtcpFeedback": [],
            },
        ],
        "headerExtensions": [
            {
                "kind": "audio",
                "uri": MID,
                "preferredId": 1,
                "preferredEncrypt": False,
                "direction": "sendrecv",
            }
        ],
    }

    empty: Any = {"codecs": None}
    ortc.validate_and_normalize_rtp_capabilities(empty)
    assert empty == {"codecs": [], "headerExtensions": []}

    as_tuples: Any = {"codecs": (), "headerExtensions": ()}
    ortc.validate_and_normalize_rtp_capabilities(as_tuples)
    assert as_tuples == {"codecs": (), "headerExtensions": ()}


@pytest.mark.parametrize(
    ("caps", "error", "message"),
    [
        ("caps", TypeError, "caps is not an object"),
        ({"codecs": {"a": 1}}, TypeError, "caps.codecs is not an array"),
        ({"headerExtensions": "x"}, TypeError, "caps.headerExtensions is not an array"),
        ({"codecs": ["opus"]}, TypeError, "codec is not an object"),
        ({"codecs": [{"clockRate": 1}]}, TypeError, "missing codec.mimeType"),
        ({"codecs": [{"mimeType": 5}]}, TypeError, "missing codec.mimeType"),
        ({"codecs": [{"mimeType": "opus"}]}, InvalidValueError, "invalid codec.mimeType"),
        ({"codecs": [{"mimeType": "text/x"}]}, InvalidValueError, "invalid codec.mimeType"),
        (
            {"codecs": [{"mimeType": "audio/opus", "preferredPayloadType": "100"}]},
            TypeError,
            "invalid codec.preferredPayloadType",
        ),
        (
            {"codecs": [{"mimeType": "audio/opus", "preferredPayloadType": 1000}]},
            TypeError,
            "invalid codec.preferredPayloadType: 1000 is not an integer in [0, 127]",
        ),
        (
            {"codecs": [{"mimeType": "audio/opus", "preferredPayloadType": 100.5}]},
            TypeError,
            "invalid codec.preferredPayloadType: 100.5",
        ),
        (
            {"codecs": [{"mimeType": "audio/opus", "clockRate": 1, "parameters": {1: "x"}}]},
            TypeError,
            "invalid codec parameter key 1",
        ),
        ({"codecs": [{"mimeType": "audio/opus"}]}, TypeError, "missing codec.clockRate"),
        (
            {"codecs": [{"mimeType": "audio/opus", "clockRate": True}]},
            TypeError,
            "missing codec.clockRate",
        ),
        (
            {"codecs": [{"mimeType": "audio/opus", "clockRate": 1, "parameters": {"k": [1]}}]},
            TypeError,
            "invalid codec parameter [key:ks, value:[1]]",
        ),
        (
            {"codecs": [{"mimeType": "audio/opus", "clockRate": 1, "parameters": {"k": False}}]},
            TypeError,
            "invalid codec parameter [key:ks, value:False]",
        ),
        (
            {"codecs": [{"mimeType": "video/rtx", "clockRate": 1, "parameters": {"apt": "96"}}]},
            TypeError,
            "invalid codec apt parameter",
        ),
        (
            {"codecs": [{"mimeType": "video/VP8", "clockRate": 1, "rtcpFeedback": ["nack"]}]},
            TypeError,
            "fb is not an object",
        ),
        (
            {"codecs": [{"mimeType": "video/VP8", "clockRate": 1, "rtcpFeedback": [{}]}]},
            TypeError,
            "missing fb.type",
        ),
        ({"headerExtensions": [1]}, TypeError, "ext is not an object"),
        ({"headerExtensions": [{"uri": MID}]}, InvalidValueError, "invalid ext.kind"),
        ({"headerExtensions": [{"kind": "data"}]}, InvalidValueError, "invalid ext.kind"),
        ({"headerExtensions": [{"kind": "audio"}]}, TypeError, "missing ext.uri"),
        (
            {"headerExtensions": [{"kind": "audio", "uri": MID}]},
            TypeError,
            "missing ext.preferredId",
        ),
        (
            {
                "headerExtensions": [
                    {"kind": "audio", "uri": MID, "preferredId": 1, "preferredEncrypt": "yes"}
                ]
            },
            TypeError,
            "invalid ext.preferredEncrypt",
        ),
        (
            {"headerExtensions": [{"kind": "audio", "uri": MID, "preferredId": 1, "direction": 1}]},
            TypeError,
            "invalid ext.direction",
        ),
    ],
)
def test_validate_and_normalize_rtp_capabilities_errors(
    caps: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        ortc.validate_and_normalize_rtp_capabilities(caps)


def test_validate_and_normalize_rtcp_feedback() -> None:
    fb: Any = {"type": "nack", "parameter": 5}
    ortc.validate_and_normalize_rtcp_feedback(fb)
    assert fb == {"type": "nack", "parameter": ""}
    fb = {"type": "nack", "parameter": "pli"}
    ortc.validate_and_normalize_rtcp_feedback(fb)
    assert fb == {"type": "nack", "parameter": "pli"}


def test_validate_and_normalize_rtp_header_extension_keeps_given_values() -> None:
    ext: Any = {
        "kind": "video",
        "uri": MID,
        "preferredId": 1,
        "preferredEncrypt": True,
        "direction": "recvonly",
    }
    ortc.validate_and_normalize_rtp_header_extension(ext)
    assert ext["preferredEncrypt"] is True
    assert ext["direction"] == "recvonly"


def test_validate_and_normalize_rtp_parameters_fills_defaults() -> None:
    params: Any = {
        "mid": "",
        "codecs": [
            {"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2},
            {"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000, "channels": 2},
        ],
        "headerExtensions": [{"uri": MID, "id": 1, "parameters": {"a": None, "b": 2}}],
        "encodings": [{"ssrc": 1, "dtx": "yes"}, {"rid": "r", "dtx": True, "rtx": {"ssrc": 2}}],
    }
    ortc.validate_and_normalize_rtp_parameters(params)
    assert params == {
        "mid": "",
        "codecs": [
            {
                "mimeType": "audio/opus",
                "payloadType": 111,
                "clockRate": 48000,
                "channels": 2,
                "parameters": {},
                "rtcpFeedback": [],
            },
            {
                "mimeType": "video/VP8",
                "payloadType": 96,
                "clockRate": 90000,
                "parameters": {},
                "rtcpFeedback": [],
            },
        ],
        "headerExtensions": [
            {"uri": MID, "id": 1, "encrypt": False, "parameters": {"a": "", "b": 2}}
        ],
        "encodings": [{"ssrc": 1, "dtx": False}, {"rid": "r", "dtx": True, "rtx": {"ssrc": 2}}],
        "rtcp": {"reducedSize": True},
    }

    minimal: Any = {"codecs": [], "rtcp": {"reducedSize": True}}
    ortc.validate_and_normalize_rtp_parameters(minimal)
    assert minimal == {
        "codecs": [],
        "headerExtensions": [],
        "encodings": [],
        "rtcp": {"reducedSize": True},
    }

    # As mediasoup, reduced size RTCP is forced; a CNAME is kept; zero means "not given"
    # (NaN too for mediasoup, whose encoder then writes 0: refused here, see below).
    rtcp: Any = {
        "codecs": [],
        "rtcp": {"cname": "c", "reducedSize": False},
        "encodings": [{"ssrc": 0}, {"ssrc": None}],
        "headerExtensions": [{"uri": MID, "id": 1, "encrypt": True}],
    }
    ortc.validate_and_normalize_rtp_parameters(rtcp)
    assert rtcp["rtcp"] == {"cname": "c", "reducedSize": True}
    assert rtcp["headerExtensions"][0]["encrypt"] is True


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        (None, TypeError, "params is not an object"),
        ({"mid": 1, "codecs": []}, TypeError, "params.mid is not a string"),
        ({}, TypeError, "missing params.codecs"),
        ({"codecs": "x"}, TypeError, "missing params.codecs"),
        ({"codecs": [None]}, TypeError, "codec is not an object"),
        ({"codecs": [{"mimeType": ""}]}, TypeError, "missing codec.mimeType"),
        ({"codecs": [{"mimeType": "audio/"}]}, InvalidValueError, "invalid codec.mimeType"),
        ({"codecs": [{"mimeType": "audio/opus"}]}, TypeError, "missing codec.payloadType"),
        (
            {"codecs": [{"mimeType": "audio/opus", "payloadType": 100}]},
            TypeError,
            "missing codec.clockRate",
        ),
        (
            {
                "codecs": [
                    {
                        "mimeType": "audio/opus",
                        "payloadType": 100,
                        "clockRate": 48000,
                        "parameters": {"x": {}},
                    }
                ]
            },
            TypeError,
            "invalid codec parameter [key:xs, value:{}]",
        ),
        (
            {"codecs": [], "headerExtensions": {}},
            TypeError,
            "params.headerExtensions is not an array",
        ),
        ({"codecs": [], "headerExtensions": [[]]}, TypeError, "ext is not an object"),
        ({"codecs": [], "headerExtensions": [{"id": 1}]}, TypeError, "missing ext.uri"),
        ({"codecs": [], "headerExtensions": [{"uri": MID}]}, TypeError, "missing ext.id"),
        (
            {"codecs": [], "headerExtensions": [{"uri": MID, "id": 1, "encrypt": 1}]},
            TypeError,
            "invalid ext.encrypt",
        ),
        (
            {"codecs": [], "headerExtensions": [{"uri": MID, "id": 1, "parameters": {"p": []}}]},
            TypeError,
            "invalid header extension parameter",
        ),
        (
            {"codecs": [], "headerExtensions": [{"uri": MID, "id": 1, "parameters": {("a",): 1}}]},
            TypeError,
            "invalid header extension parameter key ('a',)",
        ),
        ({"codecs": [], "encodings": {"ssrc": 1}}, TypeError, "params.encodings is not an array"),
        ({"codecs": [], "encodings": [1]}, TypeError, "encoding is not an object"),
        ({"codecs": [], "encodings": [{"ssrc": "1"}]}, TypeError, "invalid encoding.ssrc"),
        ({"codecs": [], "encodings": [{"rid": 1}]}, TypeError, "invalid encoding.rid"),
        ({"codecs": [], "encodings": [{"rtx": 1}]}, TypeError, "invalid encoding.rtx"),
        ({"codecs": [], "encodings": [{"rtx": {}}]}, TypeError, "missing encoding.rtx.ssrc"),
        (
            {"codecs": [], "encodings": [{"scalabilityMode": 3}]},
            TypeError,
            "invalid encoding.scalabilityMode",
        ),
        ({"codecs": [], "rtcp": "x"}, TypeError, "params.rtcp is not an object"),
        ({"codecs": [], "rtcp": {"cname": 1}}, TypeError, "invalid rtcp.cname"),
        ({"codecs": [], "msid": ["a"]}, TypeError, "params.msid is not a string"),
        # Beyond mediasoup's checks: what the wire cannot carry, named before encoding
        # (mediasoup's JavaScript would write NaN as 0 and wrap out of range numbers).
        ({"codecs": [], "mid": False}, TypeError, "params.mid is not a string"),
        ({"codecs": [], "msid": 0}, TypeError, "params.msid is not a string"),
        *[
            ({"codecs": [], "encodings": [{"ssrc": bad}]}, TypeError, "invalid encoding.ssrc")
            for bad in (float("nan"), float("inf"), -1, 2**32, False, "")
        ],
        (
            {"codecs": [], "encodings": [{"rtx": {"ssrc": float("-inf")}}]},
            TypeError,
            "missing encoding.rtx.ssrc",
        ),
        (
            {"codecs": [], "encodings": [{"rtx": {"ssrc": 2**40}}]},
            TypeError,
            "invalid encoding.rtx.ssrc: 1099511627776 is not a number in [0, 4294967295]",
        ),
        ({"codecs": [], "encodings": [{"rid": 0}]}, TypeError, "invalid encoding.rid"),
        (
            {"codecs": [], "encodings": [{"scalabilityMode": False}]},
            TypeError,
            "invalid encoding.scalabilityMode",
        ),
        (
            {"codecs": [], "encodings": [{"maxBitrate": {}}]},
            TypeError,
            "invalid encoding.maxBitrate: {} is not a number in [0, 4294967295]",
        ),
        (
            {"codecs": [], "encodings": [{"maxBitrate": float("nan")}]},
            TypeError,
            "invalid encoding.maxBitrate",
        ),
        (
            {"codecs": [], "encodings": [{"codecPayloadType": 256}]},
            TypeError,
            "invalid encoding.codecPayloadType: 256 is not a number in [0, 255]",
        ),
        ({"codecs": [], "rtcp": {"cname": 0}}, TypeError, "invalid rtcp.cname"),
        (
            {"codecs": [{"mimeType": "audio/opus", "payloadType": 256, "clockRate": 48000}]},
            TypeError,
            "invalid codec.payloadType: 256 is not a number in [0, 255]",
        ),
        (
            {"codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": -9e99}]},
            TypeError,
            "invalid codec.clockRate",
        ),
        (
            {"codecs": [{"mimeType": "audio/opus", "payloadType": 96, "clockRate": float("inf")}]},
            TypeError,
            "missing codec.clockRate",
        ),
        (
            {
                "codecs": [
                    {"mimeType": "audio/opus", "payloadType": 9, "clockRate": 8000, "channels": 300}
                ]
            },
            TypeError,
            "invalid codec.channels: 300 is not a number in [0, 255]",
        ),
        (
            {"codecs": [], "headerExtensions": [{"uri": MID, "id": 256}]},
            TypeError,
            "invalid ext.id: 256 is not a number in [0, 255]",
        ),
    ],
)
def test_validate_and_normalize_rtp_parameters_errors(
    params: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        ortc.validate_and_normalize_rtp_parameters(params)


def test_validate_and_normalize_rtcp_parameters_direct() -> None:
    with pytest.raises(TypeError, match="rtcp is not an object"):
        ortc.validate_and_normalize_rtcp_parameters([])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"streamId": 1}, {"streamId": 1, "ordered": True}),
        ({"streamId": 1, "ordered": "x"}, {"streamId": 1, "ordered": True}),
        ({"streamId": 1, "ordered": False}, {"streamId": 1, "ordered": False}),
        (
            {"streamId": 1, "maxPacketLifeTime": 100},
            {"streamId": 1, "maxPacketLifeTime": 100, "ordered": False},
        ),
        (
            {"streamId": 1, "maxRetransmits": 3},
            {"streamId": 1, "maxRetransmits": 3, "ordered": False},
        ),
        (
            {"streamId": 1, "ordered": False, "maxRetransmits": 3},
            {"streamId": 1, "ordered": False, "maxRetransmits": 3},
        ),
        # Zero is "not given", as in mediasoup.
        (
            {"streamId": 1, "maxPacketLifeTime": 0, "maxRetransmits": 0},
            {"streamId": 1, "maxPacketLifeTime": 0, "maxRetransmits": 0, "ordered": True},
        ),
    ],
)
def test_validate_and_normalize_sctp_stream_parameters(params: Any, expected: Any) -> None:
    ortc.validate_and_normalize_sctp_stream_parameters(params)
    assert params == expected


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        ([], TypeError, "params is not an object"),
        ({}, TypeError, "missing params.streamId"),
        ({"streamId": "1"}, TypeError, "missing params.streamId"),
        (
            {"streamId": 1, "maxPacketLifeTime": "1"},
            TypeError,
            "invalid params.maxPacketLifeTime",
        ),
        ({"streamId": 1, "maxRetransmits": "1"}, TypeError, "invalid params.maxRetransmits"),
        ({"streamId": 70000}, TypeError, "invalid params.streamId: 70000 is not a number in"),
        ({"streamId": float("nan")}, TypeError, "missing params.streamId"),
        ({"streamId": 1, "maxRetransmits": -1}, TypeError, "invalid params.maxRetransmits"),
        (
            {"streamId": 1, "maxPacketLifeTime": float("nan")},
            TypeError,
            "invalid params.maxPacketLifeTime",
        ),
        ({"streamId": 1, "maxPacketLifeTime": ""}, TypeError, "invalid params.maxPacketLifeTime"),
        (
            {"streamId": 1, "maxPacketLifeTime": 1, "maxRetransmits": 1},
            InvalidValueError,
            "cannot provide both maxPacketLifeTime and maxRetransmits",
        ),
        (
            {"streamId": 1, "ordered": True, "maxPacketLifeTime": 1},
            InvalidValueError,
            "cannot be ordered with maxPacketLifeTime or maxRetransmits",
        ),
    ],
)
def test_validate_and_normalize_sctp_stream_parameters_errors(
    params: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        ortc.validate_and_normalize_sctp_stream_parameters(params)


def test_validate_and_normalize_sctp_capabilities() -> None:
    ortc.validate_and_normalize_sctp_capabilities({"numStreams": {"OS": 1024, "MIS": 1024}})
    ortc.validate_and_normalize_sctp_parameters(
        {"port": 5000, "OS": 1024, "MIS": 1024, "maxMessageSize": 262144}
    )


@pytest.mark.parametrize(
    ("function", "value", "message"),
    [
        (ortc.validate_and_normalize_sctp_capabilities, 1, "caps is not an object"),
        (ortc.validate_and_normalize_sctp_capabilities, {}, "missing caps.numStreams"),
        (
            ortc.validate_and_normalize_sctp_capabilities,
            {"numStreams": {"MIS": 1}},
            "missing numStreams.OS",
        ),
        (
            ortc.validate_and_normalize_sctp_capabilities,
            {"numStreams": {"OS": 1}},
            "missing numStreams.MIS",
        ),
        (ortc.validate_and_normalize_num_sctp_streams, None, "numStreams is not an object"),
        (ortc.validate_and_normalize_sctp_parameters, "p", "params is not an object"),
        (ortc.validate_and_normalize_sctp_parameters, {}, "missing params.port"),
        (ortc.validate_and_normalize_sctp_parameters, {"port": 1}, "missing params.OS"),
        (
            ortc.validate_and_normalize_sctp_parameters,
            {"port": 1, "OS": 1},
            "missing params.MIS",
        ),
        (
            ortc.validate_and_normalize_sctp_parameters,
            {"port": 1, "OS": 1, "MIS": 1},
            "missing params.maxMessageSize",
        ),
    ],
)
def test_validate_sctp_errors(function: Any, value: Any, message: str) -> None:
    with pytest.raises(TypeError, match=re.escape(message)):
        function(value)
