"""Scalability modes ("L3T3", "S2T3", "L1T3_KEY"...) of RTP encodings."""

from __future__ import annotations

import re
from typing import Final, TypedDict

__all__ = ["ScalabilityMode", "parse_scalability_mode"]


class ScalabilityMode(TypedDict):
    spatialLayers: int
    temporalLayers: int
    ksvc: bool


# Not anchored at the end, as mediasoup: suffixes such as "h" in "L2T2h" are ignored.
_SCALABILITY_MODE_RE: Final = re.compile(r"[LS]([1-9][0-9]?)T([1-9][0-9]?)(_KEY)?")


def parse_scalability_mode(scalability_mode: str | None = None) -> ScalabilityMode:
    """The layers of a scalability mode; one spatial and one temporal layer if unknown."""
    match = _SCALABILITY_MODE_RE.match(scalability_mode or "")
    if match is None:
        return {"spatialLayers": 1, "temporalLayers": 1, "ksvc": False}
    return {
        "spatialLayers": int(match[1]),
        "temporalLayers": int(match[2]),
        "ksvc": match[3] is not None,
    }
