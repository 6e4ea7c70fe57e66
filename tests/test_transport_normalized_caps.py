"""transport.normalized_rtp_capabilities: consume()'s validation of remote capabilities."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mafalda.mediasoup import ortc, transport
from mafalda.mediasoup.transport import normalized_rtp_capabilities

CAPS: dict[str, Any] = {
    "codecs": [
        {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2},
        {
            "kind": "video",
            "mimeType": "video/VP8",
            "clockRate": 90000,
            "rtcpFeedback": [{"type": "nack"}, {"type": "goog-remb"}],
        },
    ],
    "headerExtensions": [
        {"kind": "audio", "uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "preferredId": 1},
    ],
}


def _reference(caps: Any) -> Any:
    expected = copy.deepcopy(caps)
    ortc.validate_and_normalize_rtp_capabilities(expected)
    return expected


def test_same_result_as_validating_a_copy_and_input_untouched() -> None:
    caps = copy.deepcopy(CAPS)
    for _ in range(3):
        assert normalized_rtp_capabilities(caps) == _reference(CAPS)
    assert caps == CAPS


def test_every_call_returns_a_private_copy() -> None:
    first = normalized_rtp_capabilities(CAPS)
    first["codecs"].clear()
    second = normalized_rtp_capabilities(CAPS)
    assert second == _reference(CAPS)
    assert second is not first


def test_tuples_and_lists_are_told_apart() -> None:
    as_tuple = {**CAPS, "codecs": tuple(CAPS["codecs"])}
    assert normalized_rtp_capabilities(as_tuple) == _reference(CAPS)


def test_invalid_capabilities_raise_every_time() -> None:
    bad = {"codecs": [{"kind": "audio", "mimeType": "audio/opus"}]}  # no clockRate
    for _ in range(2):
        with pytest.raises(TypeError):
            normalized_rtp_capabilities(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        normalized_rtp_capabilities(None)  # type: ignore[arg-type]


def test_unpicklable_content_is_validated_without_cache() -> None:
    with pytest.raises(TypeError):
        normalized_rtp_capabilities({"codecs": [lambda: None]})  # type: ignore[list-item]
    # Plain objects that cannot be pickled but are valid are still validated.
    caps = {**copy.deepcopy(CAPS), "unknownKey": lambda: None}
    result = normalized_rtp_capabilities(caps)  # type: ignore[arg-type]
    assert result["codecs"] == _reference(CAPS)["codecs"]


def test_cache_stays_bounded() -> None:
    for i in range(100):
        caps = copy.deepcopy(CAPS)
        caps["codecs"][0]["clockRate"] = 8000 + i
        normalized_rtp_capabilities(caps)
    assert len(transport._normalized_caps) <= 64


def test_values_equal_in_python_but_of_another_type_are_validated_again() -> None:
    assert normalized_rtp_capabilities(CAPS) == _reference(CAPS)  # cached now
    as_float = copy.deepcopy(CAPS)
    as_float["codecs"][0]["clockRate"] = 48000.0  # == 48000: valid, but kept as it came
    assert type(normalized_rtp_capabilities(as_float)["codecs"][0]["clockRate"]) is float
    as_bool = copy.deepcopy(CAPS)
    as_bool["headerExtensions"][0]["preferredId"] = True  # == 1, but a bool
    with pytest.raises(TypeError, match="preferredId"):
        normalized_rtp_capabilities(as_bool)


def test_subclassed_values_are_validated_without_cache() -> None:
    class Text(str):
        pass

    caps = copy.deepcopy(CAPS)
    caps["codecs"][0]["mimeType"] = Text("audio/opus")
    before = dict(transport._normalized_caps)
    assert normalized_rtp_capabilities(caps) == _reference(CAPS)
    assert transport._normalized_caps == before
