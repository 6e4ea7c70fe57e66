"""Tests of mafalda.mediasoup.scalability_modes."""

from __future__ import annotations

import pytest

from mafalda.mediasoup.scalability_modes import parse_scalability_mode


@pytest.mark.parametrize(
    ("mode", "spatial", "temporal", "ksvc"),
    [
        ("L1T3", 1, 3, False),
        ("L3T2_KEY", 3, 2, True),
        ("S2T3", 2, 3, False),
        ("L10T10", 10, 10, False),
        ("L99T99_KEY", 99, 99, True),
        # Suffixes after the layers are ignored, as in mediasoup.
        ("L2T2h", 2, 2, False),
        ("L3T3_KEY_SHIFT", 3, 3, True),
    ],
)
def test_parse_scalability_mode(mode: str, spatial: int, temporal: int, ksvc: bool) -> None:
    assert parse_scalability_mode(mode) == {
        "spatialLayers": spatial,
        "temporalLayers": temporal,
        "ksvc": ksvc,
    }


@pytest.mark.parametrize(
    "mode",
    [None, "", "foo", "L0T3", "L1T0", "L100T3", "l1t3", "XL1T3", "T3", "L1", "L\u0663T2"],
)
def test_parse_unknown_scalability_mode(mode: str | None) -> None:
    assert parse_scalability_mode(mode) == {"spatialLayers": 1, "temporalLayers": 1, "ksvc": False}


def test_parse_scalability_mode_without_argument() -> None:
    assert parse_scalability_mode() == {"spatialLayers": 1, "temporalLayers": 1, "ksvc": False}
