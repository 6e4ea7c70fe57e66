"""Tests of mafalda.mediasoup.supported_rtp_capabilities."""

from __future__ import annotations

from mafalda.mediasoup import ortc
from mafalda.mediasoup.rtp_parameters import rtp_header_extension_uri_to_fbs
from mafalda.mediasoup.supported_rtp_capabilities import get_supported_rtp_capabilities


def test_returns_a_copy() -> None:
    caps = get_supported_rtp_capabilities()
    caps["codecs"].clear()
    caps["headerExtensions"][0]["preferredId"] = 99
    again = get_supported_rtp_capabilities()
    assert len(again["codecs"]) == 25
    assert again["headerExtensions"][0]["preferredId"] == 1
    assert again != caps


def test_content() -> None:
    caps = get_supported_rtp_capabilities()
    codecs = caps["codecs"]
    assert [(c["mimeType"], c["clockRate"], c.get("channels")) for c in codecs[:6]] == [
        ("audio/opus", 48000, 2),
        ("audio/multiopus", 48000, 4),
        ("audio/multiopus", 48000, 6),
        ("audio/multiopus", 48000, 8),
        ("audio/PCMU", 8000, None),
        ("audio/PCMA", 8000, None),
    ]
    assert {c["mimeType"] for c in codecs if c["kind"] == "video"} == {
        "video/VP8",
        "video/VP9",
        "video/H264",
        "video/AV1",
    }
    static = {
        c["mimeType"]: c["preferredPayloadType"] for c in codecs if "preferredPayloadType" in c
    }
    assert static == {"audio/PCMU": 0, "audio/PCMA": 8, "audio/G722": 9, "audio/CN": 13}
    h264 = next(c for c in codecs if c["mimeType"] == "video/H264")
    assert h264["parameters"] == {"level-asymmetry-allowed": 1}

    extensions = caps["headerExtensions"]
    assert len(extensions) == 18
    # Every URI is one the worker knows; ids follow the URIs.
    for ext in extensions:
        rtp_header_extension_uri_to_fbs(ext["uri"])
        assert ext["preferredEncrypt"] is False
    ids = {ext["uri"]: ext["preferredId"] for ext in extensions}
    assert sorted(ids.values()) == list(range(1, 13))
    recvonly = {(e["kind"], e["uri"]) for e in extensions if e["direction"] == "recvonly"}
    assert recvonly == {
        ("video", "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"),
        ("video", "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"),
        ("audio", "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"),
        (
            "video",
            "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension",
        ),
    }


def test_valid_capabilities() -> None:
    caps = get_supported_rtp_capabilities()
    ortc.validate_and_normalize_rtp_capabilities(caps)
    assert all("parameters" in c and "rtcpFeedback" in c for c in caps["codecs"])
    # Every supported codec can make a router.
    media_codecs = [
        {key: value for key, value in codec.items() if key != "preferredPayloadType"}
        for codec in get_supported_rtp_capabilities()["codecs"]
        if codec["mimeType"] != "audio/CN"
    ]
    router_caps = ortc.generate_router_rtp_capabilities(media_codecs)  # type: ignore[arg-type]
    assert len(router_caps["codecs"]) == len(media_codecs) + 4
