"""Tests of mafalda.mediasoup.h264_profile_level_id (after the npm package's tests)."""

from __future__ import annotations

from typing import Any

import pytest

from mafalda.mediasoup.h264_profile_level_id import (
    DEFAULT_PROFILE_LEVEL_ID,
    Level,
    Profile,
    ProfileLevelId,
    generate_profile_level_id_string_for_answer,
    is_same_profile,
    is_same_profile_and_level,
    level_to_string,
    parse_profile_level_id,
    parse_sdp_profile_level_id,
    profile_level_id_to_string,
    profile_to_string,
    supported_level,
)


@pytest.mark.parametrize(
    ("string", "level"),
    [
        ("42e01f", Level.L3_1),
        ("42e00b", Level.L1_1),
        ("42f00b", Level.L1_B),
        ("42C02A", Level.L4_2),
        ("640c34", Level.L5_2),
    ],
)
def test_parse_level(string: str, level: Level) -> None:
    parsed = parse_profile_level_id(string)
    assert parsed is not None
    assert parsed.level == level


@pytest.mark.parametrize(
    ("string", "profile"),
    [
        ("42e01f", Profile.CONSTRAINED_BASELINE),
        ("42C02A", Profile.CONSTRAINED_BASELINE),
        ("4de01f", Profile.CONSTRAINED_BASELINE),
        ("58f01f", Profile.CONSTRAINED_BASELINE),
        ("42a01f", Profile.BASELINE),
        ("58A01F", Profile.BASELINE),
        ("4D401f", Profile.MAIN),
        ("64001f", Profile.HIGH),
        ("640c1f", Profile.CONSTRAINED_HIGH),
        ("f4001f", Profile.PREDICTIVE_HIGH_444),
    ],
)
def test_parse_profile(string: str, profile: Profile) -> None:
    parsed = parse_profile_level_id(string)
    assert parsed is not None
    assert parsed.profile == profile


@pytest.mark.parametrize(
    "string",
    [
        # Malformed.
        None,
        42,
        "",
        " 42e01f",
        "4242e01f",
        "e01f",
        "gggggg",
        "000000",
        # Invalid level.
        "42e000",
        "42e00f",
        "42e0ff",
        # Invalid profile.
        "42e11f",
        "58601f",
        "64e01f",
    ],
)
def test_parse_invalid_profile_level_id(string: Any) -> None:
    assert parse_profile_level_id(string) is None


@pytest.mark.parametrize(
    ("profile", "level", "string"),
    [
        (Profile.CONSTRAINED_BASELINE, Level.L3_1, "42e01f"),
        (Profile.BASELINE, Level.L1, "42000a"),
        (Profile.MAIN, Level.L3_1, "4d001f"),
        (Profile.CONSTRAINED_HIGH, Level.L4_2, "640c2a"),
        (Profile.HIGH, Level.L4_2, "64002a"),
        (Profile.PREDICTIVE_HIGH_444, Level.L5_2, "f40034"),
        (Profile.CONSTRAINED_BASELINE, Level.L1_B, "42f00b"),
        (Profile.BASELINE, Level.L1_B, "42100b"),
        (Profile.MAIN, Level.L1_B, "4d100b"),
    ],
)
def test_profile_level_id_to_string(profile: Profile, level: Level, string: str) -> None:
    assert profile_level_id_to_string(ProfileLevelId(profile, level)) == string


@pytest.mark.parametrize("string", ["42e01f", "42E01F", "4d100b", "4D100B", "640c2a", "640C2A"])
def test_round_trip(string: str) -> None:
    parsed = parse_profile_level_id(string)
    assert parsed is not None
    assert profile_level_id_to_string(parsed) == string.lower()


def test_profile_level_id_to_string_invalid() -> None:
    assert profile_level_id_to_string(ProfileLevelId(Profile.HIGH, Level.L1_B)) is None
    assert profile_level_id_to_string(ProfileLevelId(Profile.CONSTRAINED_HIGH, Level.L1_B)) is None
    unknown: Any = 255
    assert profile_level_id_to_string(ProfileLevelId(unknown, Level.L3_1)) is None


def test_names() -> None:
    assert profile_to_string(Profile.CONSTRAINED_BASELINE) == "ConstrainedBaseline"
    assert profile_to_string(Profile.PREDICTIVE_HIGH_444) == "PredictiveHigh444"
    assert level_to_string(Level.L1_B) == "1b"
    assert level_to_string(Level.L3_1) == "3.1"
    assert level_to_string(Level.L5) == "5"
    unknown: Any = 255
    assert profile_to_string(unknown) is None
    assert level_to_string(unknown) is None
    assert all(profile_to_string(profile) for profile in Profile)
    assert all(level_to_string(level) for level in Level)


def test_parse_sdp_profile_level_id() -> None:
    assert parse_sdp_profile_level_id() == DEFAULT_PROFILE_LEVEL_ID
    assert DEFAULT_PROFILE_LEVEL_ID == ProfileLevelId(Profile.CONSTRAINED_BASELINE, Level.L3_1)
    assert parse_sdp_profile_level_id({"profile-level-id": "640c2a"}) == ProfileLevelId(
        Profile.CONSTRAINED_HIGH, Level.L4_2
    )
    assert parse_sdp_profile_level_id({"profile-level-id": "foobar"}) is None


def test_is_same_profile() -> None:
    assert is_same_profile({"foo": "foo"}, {"bar": "bar"})
    assert is_same_profile({"profile-level-id": "42e01f"}, {"profile-level-id": "42C02A"})
    assert is_same_profile({"profile-level-id": "42a01f"}, {"profile-level-id": "58A01F"})
    assert is_same_profile({"profile-level-id": "42e01f"}, None)

    assert not is_same_profile(None, {"profile-level-id": "4d001f"})
    assert not is_same_profile({"profile-level-id": "42a01f"}, {"profile-level-id": "640c1f"})
    assert not is_same_profile({"profile-level-id": "42000a"}, {"profile-level-id": "64002a"})
    assert not is_same_profile({"profile-level-id": "bad"}, {"profile-level-id": "bad"})


def test_is_same_profile_and_level() -> None:
    assert is_same_profile_and_level({"foo": "foo"}, {"bar": "bar"})
    assert is_same_profile_and_level({"profile-level-id": "42e01f"}, {"profile-level-id": "42f01f"})
    assert is_same_profile_and_level({"profile-level-id": "42a01f"}, {"profile-level-id": "58A01F"})
    assert is_same_profile_and_level({"profile-level-id": "42e01f"}, None)

    assert not is_same_profile_and_level(None, {"profile-level-id": "4d001f"})
    assert not is_same_profile_and_level(
        {"profile-level-id": "42a01f"}, {"profile-level-id": "640c1f"}
    )
    assert not is_same_profile_and_level(
        {"profile-level-id": "42000a"}, {"profile-level-id": "64002a"}
    )
    assert not is_same_profile_and_level(
        {"profile-level-id": "42e01f"}, {"profile-level-id": "42e015"}
    )
    assert not is_same_profile_and_level({"profile-level-id": "x"}, {"profile-level-id": "x"})


def test_generate_profile_level_id_string_for_answer() -> None:
    assert generate_profile_level_id_string_for_answer() is None
    assert generate_profile_level_id_string_for_answer({"foo": 1}, {"bar": 2}) is None

    low = {"profile-level-id": "42e015"}
    high = {"profile-level-id": "42e01f"}
    # Without level asymmetry, the lowest level.
    assert generate_profile_level_id_string_for_answer(low, high) == "42e015"
    assert generate_profile_level_id_string_for_answer(high, low) == "42e015"

    # With level asymmetry on both sides, the local level.
    for allowed in ("1", 1, True):
        local = {"profile-level-id": "42e01f", "level-asymmetry-allowed": allowed}
        remote = {"profile-level-id": "42e015", "level-asymmetry-allowed": "1"}
        assert generate_profile_level_id_string_for_answer(local, remote) == "42e01f"
    # Only on one side: the lowest level.
    local = {"profile-level-id": "42e01f", "level-asymmetry-allowed": 1}
    assert generate_profile_level_id_string_for_answer(local, low) == "42e015"
    not_allowed = {"profile-level-id": "42e01f", "level-asymmetry-allowed": 0}
    assert generate_profile_level_id_string_for_answer(not_allowed, low) == "42e015"

    # One side without profile-level-id has the default one (Constrained Baseline 3.1).
    assert generate_profile_level_id_string_for_answer({}, low) == "42e015"


def test_generate_profile_level_id_string_for_answer_level_1b() -> None:
    level_1b = {"profile-level-id": "42f00b"}
    level_1 = {"profile-level-id": "42e00a"}
    level_1_1 = {"profile-level-id": "42e00b"}
    # The comparison of WebRTC's IsLessLevel, as the npm package: asymmetric around 1b
    # (values checked against h264-profile-level-id 2.3.2).
    assert generate_profile_level_id_string_for_answer(level_1b, level_1_1) == "42f00b"
    assert generate_profile_level_id_string_for_answer(level_1_1, level_1b) == "42e00b"
    assert generate_profile_level_id_string_for_answer(level_1b, level_1) == "42e00a"
    assert generate_profile_level_id_string_for_answer(level_1, level_1b) == "42f00b"
    assert generate_profile_level_id_string_for_answer(level_1b, level_1b) == "42f00b"


@pytest.mark.parametrize(
    ("local", "remote", "message"),
    [
        ({"profile-level-id": "xxxxxx"}, {}, "invalid local_profile_level_id"),
        ({}, {"profile-level-id": "xxxxxx"}, "invalid remote_profile_level_id"),
        ({"profile-level-id": "42e01f"}, {"profile-level-id": "640c1f"}, "H264 Profile mismatch"),
    ],
)
def test_generate_profile_level_id_string_for_answer_errors(
    local: dict[str, Any], remote: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        generate_profile_level_id_string_for_answer(local, remote)


def test_supported_level() -> None:
    assert supported_level(640 * 480, 25) == Level.L2_1
    assert supported_level(1280 * 720, 30) == Level.L3_1
    assert supported_level(1920 * 1280, 60) == Level.L4_2

    assert supported_level(0, 0) is None
    # Every level supports more than 5 fps.
    assert supported_level(1280 * 720, 5) is None
    # Every level supports frames larger than 183 x 137.
    assert supported_level(183 * 137, 30) is None
