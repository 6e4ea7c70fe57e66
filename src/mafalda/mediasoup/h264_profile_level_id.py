"""H264 profile-level-id handling (RFC 6184), as the npm package ``h264-profile-level-id``.

mediasoup's ORTC uses it to decide whether two H264 codecs are compatible and which
profile-level-id to answer with. Parameters mappings are SDP fmtp-style dictionaries
(``{"profile-level-id": "42e01f", "level-asymmetry-allowed": 1, ...}``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

__all__ = [
    "DEFAULT_PROFILE_LEVEL_ID",
    "Level",
    "Profile",
    "ProfileLevelId",
    "generate_profile_level_id_string_for_answer",
    "is_same_profile",
    "is_same_profile_and_level",
    "level_to_string",
    "parse_profile_level_id",
    "parse_sdp_profile_level_id",
    "profile_level_id_to_string",
    "profile_to_string",
    "supported_level",
]

logger = logging.getLogger(__name__)


class Profile(IntEnum):
    CONSTRAINED_BASELINE = 1
    BASELINE = 2
    MAIN = 3
    CONSTRAINED_HIGH = 4
    HIGH = 5
    PREDICTIVE_HIGH_444 = 6


class Level(IntEnum):
    """H264 levels: the value is level_idc, except for level 1b."""

    L1_B = 0
    L1 = 10
    L1_1 = 11
    L1_2 = 12
    L1_3 = 13
    L2 = 20
    L2_1 = 21
    L2_2 = 22
    L3 = 30
    L3_1 = 31
    L3_2 = 32
    L4 = 40
    L4_1 = 41
    L4_2 = 42
    L5 = 50
    L5_1 = 51
    L5_2 = 52


@dataclass(frozen=True, slots=True)
class ProfileLevelId:
    profile: Profile
    level: Level


# RFC 6184 says Baseline 1 is the default, but WebRTC implementations treat a
# codec without profile-level-id as Constrained Baseline 3.1 (crbug/webrtc/6337).
DEFAULT_PROFILE_LEVEL_ID: Final = ProfileLevelId(Profile.CONSTRAINED_BASELINE, Level.L3_1)

# With level_idc 11, constraint_set3_flag tells level 1b from level 1.1.
_CONSTRAINT_SET3_FLAG: Final = 0x10


def _bit_pattern(pattern: str) -> tuple[int, int]:
    """(mask, value) matching a pattern such as "x1xx0000" where x may be 0 or 1."""
    mask = int("".join("0" if c == "x" else "1" for c in pattern), 2)
    value = int("".join("1" if c == "1" else "0" for c in pattern), 2)
    return mask, value


# (profile_idc, profile_iop pattern, profile), from RFC 6184 section 8.1; first match wins.
_PROFILE_PATTERNS: Final = tuple(
    (profile_idc, *_bit_pattern(iop_pattern), profile)
    for profile_idc, iop_pattern, profile in (
        (0x42, "x1xx0000", Profile.CONSTRAINED_BASELINE),
        (0x4D, "1xxx0000", Profile.CONSTRAINED_BASELINE),
        (0x58, "11xx0000", Profile.CONSTRAINED_BASELINE),
        (0x42, "x0xx0000", Profile.BASELINE),
        (0x58, "10xx0000", Profile.BASELINE),
        (0x4D, "0x0x0000", Profile.MAIN),
        (0x64, "00000000", Profile.HIGH),
        (0x64, "00001100", Profile.CONSTRAINED_HIGH),
        (0xF4, "00000000", Profile.PREDICTIVE_HIGH_444),
    )
)

# (max macroblocks per second, max frame size in macroblocks, level), from
# ITU-T H.264 (02/2016) table A-1, lowest level first.
_LEVEL_CONSTRAINTS: Final = (
    (1485, 99, Level.L1),
    (1485, 99, Level.L1_B),
    (3000, 396, Level.L1_1),
    (6000, 396, Level.L1_2),
    (11880, 396, Level.L1_3),
    (11880, 396, Level.L2),
    (19800, 792, Level.L2_1),
    (20250, 1620, Level.L2_2),
    (40500, 1620, Level.L3),
    (108000, 3600, Level.L3_1),
    (216000, 5120, Level.L3_2),
    (245760, 8192, Level.L4),
    (245760, 8192, Level.L4_1),
    (522240, 8704, Level.L4_2),
    (589824, 22080, Level.L5),
    (983040, 36864, Level.L5_1),
    (2073600, 36864, Level.L5_2),
)

_PROFILE_IDC_IOP: Final = {
    Profile.CONSTRAINED_BASELINE: "42e0",
    Profile.BASELINE: "4200",
    Profile.MAIN: "4d00",
    Profile.CONSTRAINED_HIGH: "640c",
    Profile.HIGH: "6400",
    Profile.PREDICTIVE_HIGH_444: "f400",
}

# Level 1b is only defined for these profiles, with its own profile_iop.
_LEVEL_1B_STRINGS: Final = {
    Profile.CONSTRAINED_BASELINE: "42f00b",
    Profile.BASELINE: "42100b",
    Profile.MAIN: "4d100b",
}

_PROFILE_NAMES: Final = {
    Profile.CONSTRAINED_BASELINE: "ConstrainedBaseline",
    Profile.BASELINE: "Baseline",
    Profile.MAIN: "Main",
    Profile.CONSTRAINED_HIGH: "ConstrainedHigh",
    Profile.HIGH: "High",
    Profile.PREDICTIVE_HIGH_444: "PredictiveHigh444",
}

_LEVEL_NAMES: Final = {
    Level.L1_B: "1b",
    Level.L1: "1",
    Level.L1_1: "1.1",
    Level.L1_2: "1.2",
    Level.L1_3: "1.3",
    Level.L2: "2",
    Level.L2_1: "2.1",
    Level.L2_2: "2.2",
    Level.L3: "3",
    Level.L3_1: "3.1",
    Level.L3_2: "3.2",
    Level.L4: "4",
    Level.L4_1: "4.1",
    Level.L4_2: "4.2",
    Level.L5: "5",
    Level.L5_1: "5.1",
    Level.L5_2: "5.2",
}

# Level 1b has no level_idc of its own (see _CONSTRAINT_SET3_FLAG).
_LEVEL_IDCS: Final = frozenset(int(level) for level in Level if level is not Level.L1_B)

_HEX6: Final = re.compile(r"[0-9a-fA-F]{6}")


def parse_profile_level_id(profile_level_id: object) -> ProfileLevelId | None:
    """Parse a profile-level-id (three bytes in hexadecimal); None if not recognized."""
    if not isinstance(profile_level_id, str) or not _HEX6.fullmatch(profile_level_id):
        return None
    numeric = int(profile_level_id, 16)
    if numeric == 0:
        return None
    level_idc = numeric & 0xFF
    profile_iop = (numeric >> 8) & 0xFF
    profile_idc = (numeric >> 16) & 0xFF

    level: Level
    if level_idc == Level.L1_1:
        level = Level.L1_B if profile_iop & _CONSTRAINT_SET3_FLAG else Level.L1_1
    elif level_idc in _LEVEL_IDCS:
        level = Level(level_idc)
    else:
        logger.debug(
            "unrecognized level_idc %d in profile-level-id %r", level_idc, profile_level_id
        )
        return None

    for pattern_idc, mask, value, profile in _PROFILE_PATTERNS:
        if profile_idc == pattern_idc and profile_iop & mask == value:
            return ProfileLevelId(profile, level)
    logger.debug(
        "unrecognized profile_idc/profile_iop %d/%d in profile-level-id %r",
        profile_idc,
        profile_iop,
        profile_level_id,
    )
    return None


def profile_level_id_to_string(profile_level_id: ProfileLevelId) -> str | None:
    """The canonical profile-level-id string; None if the combination is invalid."""
    profile, level = profile_level_id.profile, profile_level_id.level
    if level == Level.L1_B:
        return _LEVEL_1B_STRINGS.get(profile)
    profile_idc_iop = _PROFILE_IDC_IOP.get(profile)
    if profile_idc_iop is None:
        return None
    return f"{profile_idc_iop}{int(level):02x}"


def profile_to_string(profile: Profile) -> str | None:
    """A human-friendly profile name ("ConstrainedBaseline", "High"...)."""
    return _PROFILE_NAMES.get(profile)


def level_to_string(level: Level) -> str | None:
    """A human-friendly level name ("1b", "3.1"...)."""
    return _LEVEL_NAMES.get(level)


def parse_sdp_profile_level_id(
    params: Mapping[str, Any] | None = None,
) -> ProfileLevelId | None:
    """The profile-level-id of codec parameters: the default one if absent, None if invalid."""
    profile_level_id = (params or {}).get("profile-level-id")
    if not profile_level_id:
        return DEFAULT_PROFILE_LEVEL_ID
    return parse_profile_level_id(profile_level_id)


def is_same_profile(
    params1: Mapping[str, Any] | None = None, params2: Mapping[str, Any] | None = None
) -> bool:
    """Whether both codec parameters have a valid profile-level-id of the same profile."""
    first = parse_sdp_profile_level_id(params1)
    second = parse_sdp_profile_level_id(params2)
    return first is not None and second is not None and first.profile == second.profile


def is_same_profile_and_level(
    params1: Mapping[str, Any] | None = None, params2: Mapping[str, Any] | None = None
) -> bool:
    """Whether both codec parameters have the same valid profile and level."""
    first = parse_sdp_profile_level_id(params1)
    second = parse_sdp_profile_level_id(params2)
    return first is not None and first == second


def generate_profile_level_id_string_for_answer(
    local_supported_params: Mapping[str, Any] | None = None,
    remote_offered_params: Mapping[str, Any] | None = None,
) -> str | None:
    """The profile-level-id to answer with, given local and remote codec parameters.

    Both must have the same profile (check with :func:`is_same_profile` first): only
    the level is negotiated. None when neither side states a profile-level-id.
    Raises ValueError when either is invalid or the profiles differ.
    """
    local_params = local_supported_params or {}
    remote_params = remote_offered_params or {}
    if not local_params.get("profile-level-id") and not remote_params.get("profile-level-id"):
        return None

    local = parse_sdp_profile_level_id(local_params)
    remote = parse_sdp_profile_level_id(remote_params)
    if local is None:
        raise ValueError("invalid local_profile_level_id")
    if remote is None:
        raise ValueError("invalid remote_profile_level_id")
    if local.profile != remote.profile:
        raise ValueError("H264 Profile mismatch")

    # Without level asymmetry the answer may not exceed the offered level.
    if _is_level_asymmetry_allowed(local_params) and _is_level_asymmetry_allowed(remote_params):
        answer_level = local.level
    else:
        answer_level = _min_level(local.level, remote.level)
    return profile_level_id_to_string(ProfileLevelId(local.profile, answer_level))


def supported_level(max_frame_pixel_count: int, max_fps: float) -> Level | None:
    """The highest level a decoder of that frame size and frame rate fully supports."""
    pixels_per_macroblock = 16 * 16
    for max_macroblocks_per_second, max_frame_size, level in reversed(_LEVEL_CONSTRAINTS):
        if (
            max_frame_size * pixels_per_macroblock <= max_frame_pixel_count
            and max_macroblocks_per_second <= max_fps * max_frame_size
        ):
            return level
    return None


def _is_less_level(a: Level, b: Level) -> bool:
    # Level 1b sorts between 1 and 1.1 although its value is 0.
    if a == Level.L1_B:
        return b not in (Level.L1, Level.L1_B)
    if b == Level.L1_B:
        return a != Level.L1
    return a < b


def _min_level(a: Level, b: Level) -> Level:
    return a if _is_less_level(a, b) else b


def _is_level_asymmetry_allowed(params: Mapping[str, Any]) -> bool:
    # True == 1 in Python, so this accepts true, 1 and "1" as the npm package does.
    return params.get("level-asymmetry-allowed") in (1, "1")
