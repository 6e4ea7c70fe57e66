"""SRTP dictionaries and their FlatBuffers form (``srtpParameters.fbs``)."""

from __future__ import annotations

from typing import Any, Final, Literal, TypedDict

from mafalda.mediasoup._fbs.SrtpParameters.SrtpCryptoSuite import (
    SrtpCryptoSuite as FbsSrtpCryptoSuite,
)
from mafalda.mediasoup._fbs.SrtpParameters.SrtpParameters import SrtpParametersT
from mafalda.mediasoup.rtp_parameters import InvalidValueError

__all__ = [
    "SrtpCryptoSuite",
    "SrtpParameters",
    "crypto_suite_from_fbs",
    "crypto_suite_to_fbs",
    "parse_srtp_parameters",
    "serialize_srtp_parameters",
]

SrtpCryptoSuite = Literal[
    "AEAD_AES_256_GCM",
    "AEAD_AES_128_GCM",
    "AES_CM_128_HMAC_SHA1_80",
    "AES_CM_128_HMAC_SHA1_32",
]


class SrtpParameters(TypedDict):
    cryptoSuite: SrtpCryptoSuite
    keyBase64: str


_SUITE_BY_FBS: Final[dict[int, SrtpCryptoSuite]] = {
    FbsSrtpCryptoSuite.AEAD_AES_256_GCM: "AEAD_AES_256_GCM",
    FbsSrtpCryptoSuite.AEAD_AES_128_GCM: "AEAD_AES_128_GCM",
    FbsSrtpCryptoSuite.AES_CM_128_HMAC_SHA1_80: "AES_CM_128_HMAC_SHA1_80",
    FbsSrtpCryptoSuite.AES_CM_128_HMAC_SHA1_32: "AES_CM_128_HMAC_SHA1_32",
}

_FBS_BY_SUITE: Final[dict[str, int]] = {suite: fbs for fbs, suite in _SUITE_BY_FBS.items()}


def crypto_suite_from_fbs(crypto_suite: int) -> SrtpCryptoSuite:
    """The name of a ``FBS.SrtpParameters.SrtpCryptoSuite`` value."""
    try:
        return _SUITE_BY_FBS[crypto_suite]
    except KeyError:
        raise InvalidValueError(f"invalid SrtpCryptoSuite: {crypto_suite}") from None


def crypto_suite_to_fbs(crypto_suite: str) -> int:
    """The ``FBS.SrtpParameters.SrtpCryptoSuite`` value of a suite name."""
    try:
        return _FBS_BY_SUITE[crypto_suite]
    except KeyError:
        raise InvalidValueError(f"invalid SrtpCryptoSuite: {crypto_suite}") from None


def parse_srtp_parameters(data: Any) -> SrtpParameters:
    """An SRTP parameters dictionary from an ``SrtpParametersT``."""
    return {
        "cryptoSuite": crypto_suite_from_fbs(data.cryptoSuite),
        "keyBase64": data.keyBase64,
    }


def serialize_srtp_parameters(srtp_parameters: SrtpParameters) -> Any:
    """SRTP parameters as an ``SrtpParametersT``."""
    return SrtpParametersT(
        cryptoSuite=crypto_suite_to_fbs(srtp_parameters["cryptoSuite"]),
        keyBase64=srtp_parameters["keyBase64"],
    )
