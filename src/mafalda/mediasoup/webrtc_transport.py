"""WebRtcTransport: ICE + DTLS (+ SCTP) transport for WebRTC endpoints."""

from __future__ import annotations

import logging
import re
from typing import Any, Final, Literal, NotRequired, TypedDict

from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup._fbs.Request.Method import Method
from mafalda.mediasoup._fbs.WebRtcTransport.ConnectRequest import ConnectRequestT
from mafalda.mediasoup._fbs.WebRtcTransport.DtlsParameters import DtlsParametersT
from mafalda.mediasoup._fbs.WebRtcTransport.DtlsRole import DtlsRole as FbsDtlsRole
from mafalda.mediasoup._fbs.WebRtcTransport.DtlsState import DtlsState as FbsDtlsState
from mafalda.mediasoup._fbs.WebRtcTransport.Fingerprint import FingerprintT
from mafalda.mediasoup._fbs.WebRtcTransport.FingerprintAlgorithm import (
    FingerprintAlgorithm as FbsFingerprintAlgorithm,
)
from mafalda.mediasoup._fbs.WebRtcTransport.IceCandidateTcpType import (
    IceCandidateTcpType as FbsIceCandidateTcpType,
)
from mafalda.mediasoup._fbs.WebRtcTransport.IceCandidateType import (
    IceCandidateType as FbsIceCandidateType,
)
from mafalda.mediasoup._fbs.WebRtcTransport.IceRole import IceRole as FbsIceRole
from mafalda.mediasoup._fbs.WebRtcTransport.IceState import IceState as FbsIceState
from mafalda.mediasoup.channel import Channel
from mafalda.mediasoup.rtp_parameters import InvalidValueError
from mafalda.mediasoup.sctp_parameters import SctpParameters
from mafalda.mediasoup.transport import (
    BaseTransportDump,
    BaseTransportStats,
    RouterBook,
    SctpState,
    Transport,
    TransportProtocol,
    TransportTuple,
    parse_base_transport_dump,
    parse_base_transport_stats,
    parse_protocol,
    parse_sctp_state,
    parse_tuple,
)

__all__ = [
    "DtlsFingerprint",
    "DtlsParameters",
    "DtlsRole",
    "DtlsState",
    "FingerprintAlgorithm",
    "IceCandidate",
    "IceCandidateTcpType",
    "IceCandidateType",
    "IceParameters",
    "IceRole",
    "IceState",
    "WebRtcTransport",
    "WebRtcTransportDump",
    "WebRtcTransportStat",
    "parse_webrtc_transport_dump",
    "parse_webrtc_transport_stats",
    "validate_dtls_parameters",
]

logger = logging.getLogger("mafalda.mediasoup.webrtc_transport")

IceRole = Literal["controlled", "controlling"]
IceState = Literal["new", "connected", "completed", "disconnected", "closed"]
IceCandidateType = Literal["host"]
IceCandidateTcpType = Literal["passive"]
DtlsRole = Literal["auto", "client", "server"]
DtlsState = Literal["new", "connecting", "connected", "failed", "closed"]
FingerprintAlgorithm = Literal["sha-1", "sha-224", "sha-256", "sha-384", "sha-512"]


class IceParameters(TypedDict):
    usernameFragment: str
    password: str
    iceLite: NotRequired[bool]


class IceCandidate(TypedDict):
    foundation: str
    priority: int
    ip: str
    address: str
    protocol: TransportProtocol
    port: int
    type: IceCandidateType
    tcpType: NotRequired[IceCandidateTcpType]


class DtlsFingerprint(TypedDict):
    algorithm: FingerprintAlgorithm
    value: str


class DtlsParameters(TypedDict):
    role: NotRequired[DtlsRole]
    fingerprints: list[DtlsFingerprint]


class WebRtcTransportDump(BaseTransportDump):
    iceRole: Literal["controlled"]
    iceParameters: IceParameters
    iceCandidates: list[IceCandidate]
    iceState: IceState
    iceSelectedTuple: NotRequired[TransportTuple]
    dtlsParameters: DtlsParameters
    dtlsState: DtlsState
    dtlsRemoteCert: NotRequired[str]


class WebRtcTransportStat(BaseTransportStats):
    iceRole: str
    iceState: IceState
    iceSelectedTuple: NotRequired[TransportTuple]
    dtlsState: DtlsState


# -- enum mappings ---------------------------------------------------------------------

_ICE_STATES: Final[dict[int, IceState]] = {
    FbsIceState.NEW: "new",
    FbsIceState.CONNECTED: "connected",
    FbsIceState.COMPLETED: "completed",
    FbsIceState.DISCONNECTED: "disconnected",
}
_ICE_ROLES: Final[dict[int, IceRole]] = {
    FbsIceRole.CONTROLLED: "controlled",
    FbsIceRole.CONTROLLING: "controlling",
}
_ICE_CANDIDATE_TYPES: Final[dict[int, IceCandidateType]] = {FbsIceCandidateType.HOST: "host"}
_ICE_CANDIDATE_TCP_TYPES: Final[dict[int, IceCandidateTcpType]] = {
    FbsIceCandidateTcpType.PASSIVE: "passive"
}
_DTLS_STATES: Final[dict[int, DtlsState]] = {
    FbsDtlsState.NEW: "new",
    FbsDtlsState.CONNECTING: "connecting",
    FbsDtlsState.CONNECTED: "connected",
    FbsDtlsState.FAILED: "failed",
    FbsDtlsState.CLOSED: "closed",
}
_DTLS_ROLES: Final[dict[int, DtlsRole]] = {
    FbsDtlsRole.AUTO: "auto",
    FbsDtlsRole.CLIENT: "client",
    FbsDtlsRole.SERVER: "server",
}
_DTLS_ROLES_TO_FBS: Final[dict[str, int]] = {v: k for k, v in _DTLS_ROLES.items()}
_FINGERPRINT_ALGORITHMS: Final[dict[int, FingerprintAlgorithm]] = {
    FbsFingerprintAlgorithm.SHA1: "sha-1",
    FbsFingerprintAlgorithm.SHA224: "sha-224",
    FbsFingerprintAlgorithm.SHA256: "sha-256",
    FbsFingerprintAlgorithm.SHA384: "sha-384",
    FbsFingerprintAlgorithm.SHA512: "sha-512",
}
_FINGERPRINT_ALGORITHMS_TO_FBS: Final[dict[str, int]] = {
    v: k for k, v in _FINGERPRINT_ALGORITHMS.items()
}
#: Digest size in bytes of each fingerprint algorithm.
_DIGEST_SIZES: Final[dict[str, int]] = {
    "sha-1": 20,
    "sha-224": 28,
    "sha-256": 32,
    "sha-384": 48,
    "sha-512": 64,
}
_FINGERPRINT_VALUE = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*")


# -- validation ------------------------------------------------------------------------


def validate_dtls_parameters(value: Any, name: str = "dtls_parameters") -> None:
    """Raise TypeError naming the field when ``value`` is not DtlsParameters
    (InvalidValueError, also a ValueError, when a value of the right type is wrong).

    A fingerprint value must be colon-separated hex pairs (RFC 8122 syntax, any case)
    whose byte count matches its algorithm's digest size.
    """
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a dict")
    role = value.get("role")
    if role is not None:
        if not isinstance(role, str):
            raise TypeError(f"{name}.role must be a string")
        if role not in _DTLS_ROLES_TO_FBS:
            raise InvalidValueError(
                f"{name}.role must be 'auto', 'client' or 'server', got {role!r}"
            )
    fingerprints = value.get("fingerprints")
    if fingerprints is None:
        raise TypeError(f"missing {name}.fingerprints")
    if not isinstance(fingerprints, list):
        raise TypeError(f"{name}.fingerprints must be a list")
    if not fingerprints:
        raise InvalidValueError(f"{name}.fingerprints must not be empty")
    for i, fingerprint in enumerate(fingerprints):
        field = f"{name}.fingerprints[{i}]"
        if not isinstance(fingerprint, dict):
            raise TypeError(f"{field} must be a dict")
        algorithm = fingerprint.get("algorithm")
        if not isinstance(algorithm, str):
            raise TypeError(f"{field}.algorithm must be a string")
        if algorithm not in _FINGERPRINT_ALGORITHMS_TO_FBS:
            raise InvalidValueError(
                f"{field}.algorithm must be one of {sorted(_DIGEST_SIZES)}, got {algorithm!r}"
            )
        fp_value = fingerprint.get("value")
        if not isinstance(fp_value, str):
            raise TypeError(f"{field}.value must be a string")
        if not _FINGERPRINT_VALUE.fullmatch(fp_value):
            raise InvalidValueError(f"{field}.value must be colon-separated hex bytes")
        size = (len(fp_value) + 1) // 3
        if size != _DIGEST_SIZES[algorithm]:
            raise InvalidValueError(
                f"{field}.value has {size} bytes, {algorithm} needs {_DIGEST_SIZES[algorithm]}"
            )


def serialize_dtls_parameters(dtls_parameters: DtlsParameters) -> Any:
    """DtlsParameters as a ``DtlsParametersT`` (validate first)."""
    result = DtlsParametersT()
    fingerprints = []
    for fp in dtls_parameters["fingerprints"]:
        fingerprint = FingerprintT()
        fingerprint.algorithm = _FINGERPRINT_ALGORITHMS_TO_FBS[fp["algorithm"]]
        fingerprint.value = fp["value"]
        fingerprints.append(fingerprint)
    result.fingerprints = fingerprints
    role = dtls_parameters.get("role")
    result.role = _DTLS_ROLES_TO_FBS[role] if role is not None else FbsDtlsRole.AUTO
    return result


# -- parsing ---------------------------------------------------------------------------


def parse_ice_parameters(t: Any) -> IceParameters:
    return {
        "usernameFragment": t.usernameFragment,
        "password": t.password,
        "iceLite": bool(t.iceLite),
    }


def parse_ice_candidate(t: Any) -> IceCandidate:
    candidate: IceCandidate = {
        "foundation": t.foundation,
        "priority": t.priority,
        "ip": t.address,
        "address": t.address,
        "protocol": parse_protocol(t.protocol),
        "port": t.port,
        "type": _ICE_CANDIDATE_TYPES[t.type],
    }
    if t.tcpType is not None:
        candidate["tcpType"] = _ICE_CANDIDATE_TCP_TYPES[t.tcpType]
    return candidate


def parse_dtls_parameters(t: Any) -> DtlsParameters:
    # role is a scalar with a default (auto): always there once decoded.
    return {
        "fingerprints": [
            {"algorithm": _FINGERPRINT_ALGORITHMS[fp.algorithm], "value": fp.value}
            for fp in t.fingerprints or []
        ],
        "role": _DTLS_ROLES[t.role],
    }


def parse_webrtc_transport_dump(body: Any) -> WebRtcTransportDump:
    """A WebRtcTransport dump from a ``WebRtcTransport.DumpResponseT``."""
    dump: WebRtcTransportDump = {
        **parse_base_transport_dump(body.base),  # type: ignore[typeddict-item]
        "iceRole": "controlled",
        "iceParameters": parse_ice_parameters(body.iceParameters),
        "iceCandidates": [parse_ice_candidate(c) for c in body.iceCandidates or []],
        "iceState": _ICE_STATES[body.iceState],
        "dtlsParameters": parse_dtls_parameters(body.dtlsParameters),
        "dtlsState": _DTLS_STATES[body.dtlsState],
    }
    if body.iceSelectedTuple is not None:
        dump["iceSelectedTuple"] = parse_tuple(body.iceSelectedTuple)
    return dump


def parse_webrtc_transport_stats(body: Any) -> WebRtcTransportStat:
    """WebRtcTransport stats from a ``WebRtcTransport.GetStatsResponseT``."""
    stats: WebRtcTransportStat = {
        **parse_base_transport_stats(body.base, "webrtc-transport"),  # type: ignore[typeddict-item]
        "iceRole": _ICE_ROLES[body.iceRole],
        "iceState": _ICE_STATES[body.iceState],
        "dtlsState": _DTLS_STATES[body.dtlsState],
    }
    if body.iceSelectedTuple is not None:
        stats["iceSelectedTuple"] = parse_tuple(body.iceSelectedTuple)
    return stats


# -- the transport ---------------------------------------------------------------------


class WebRtcTransport(Transport):
    """A transport to a WebRTC endpoint (browser, mediasoup-client, aiortc...).

    Events: ``icestatechange`` (state), ``iceselectedtuplechange`` (tuple),
    ``dtlsstatechange`` (state), ``sctpstatechange`` (state), ``trace`` (data),
    ``routerclose``, ``listenserverclose``; the observer emits the same plus ``close``,
    ``newproducer``, ``newconsumer``, ``newdataproducer``, ``newdataconsumer``.
    """

    type = "webrtc"

    def __init__(
        self,
        *,
        router_id: str,
        transport_id: str,
        channel: Channel,
        app_data: dict[str, Any] | None,
        book: RouterBook,
        data: WebRtcTransportDump,
    ) -> None:
        super().__init__(
            router_id=router_id,
            transport_id=transport_id,
            channel=channel,
            app_data=app_data,
            book=book,
            sctp_parameters=data.get("sctpParameters"),
        )
        self._ice_role: Literal["controlled"] = data["iceRole"]
        self._ice_parameters: IceParameters = data["iceParameters"]
        self._ice_candidates: list[IceCandidate] = data["iceCandidates"]
        self._ice_state: IceState = data["iceState"]
        self._ice_selected_tuple: TransportTuple | None = data.get("iceSelectedTuple")
        self._dtls_parameters: DtlsParameters = data["dtlsParameters"]
        self._dtls_state: DtlsState = data["dtlsState"]
        self._dtls_remote_cert: str | None = data.get("dtlsRemoteCert")
        self._sctp_parameters: SctpParameters | None = data.get("sctpParameters")
        self._sctp_state: SctpState | None = data.get("sctpState")

    # -- properties ------------------------------------------------------------------

    @property
    def ice_role(self) -> Literal["controlled"]:
        return self._ice_role

    @property
    def ice_parameters(self) -> IceParameters:
        return self._ice_parameters

    @property
    def ice_candidates(self) -> list[IceCandidate]:
        return self._ice_candidates

    @property
    def ice_state(self) -> IceState:
        return self._ice_state

    @property
    def ice_selected_tuple(self) -> TransportTuple | None:
        return self._ice_selected_tuple

    @property
    def dtls_parameters(self) -> DtlsParameters:
        return self._dtls_parameters

    @property
    def dtls_state(self) -> DtlsState:
        return self._dtls_state

    @property
    def dtls_remote_cert(self) -> str | None:
        """The remote certificate in PEM format, once DTLS is connected."""
        return self._dtls_remote_cert

    @property
    def sctp_parameters(self) -> SctpParameters | None:
        return self._sctp_parameters

    @property
    def sctp_state(self) -> SctpState | None:
        return self._sctp_state

    # -- closing ---------------------------------------------------------------------

    def _mark_closed(self) -> None:
        self._ice_state = "closed"
        self._ice_selected_tuple = None
        self._dtls_state = "closed"
        if self._sctp_state:
            self._sctp_state = "closed"

    # -- requests --------------------------------------------------------------------

    async def dump(self) -> WebRtcTransportDump:
        return parse_webrtc_transport_dump(await self._dump_body())

    async def get_stats(self) -> list[WebRtcTransportStat]:
        return [parse_webrtc_transport_stats(await self._stats_body())]

    async def connect(self, *, dtls_parameters: DtlsParameters) -> None:
        """Give the remote DTLS parameters; the local DTLS role is then decided."""
        self._check_open()
        validate_dtls_parameters(dtls_parameters)
        request = ConnectRequestT()
        request.dtlsParameters = serialize_dtls_parameters(dtls_parameters)
        response = await self._request(Method.WEBRTCTRANSPORT_CONNECT, request)
        self._dtls_parameters["role"] = _DTLS_ROLES[response.dtlsLocalRole]

    async def restart_ice(self) -> IceParameters:
        """Generate new local ICE username fragment and password; returns them."""
        response = await self._request(Method.TRANSPORT_RESTART_ICE)
        ice_parameters = parse_ice_parameters(response)
        self._ice_parameters = ice_parameters
        return ice_parameters

    # -- notifications ---------------------------------------------------------------

    def _on_notification(self, event: int, body: Any) -> None:
        if event == Event.WEBRTCTRANSPORT_ICE_STATE_CHANGE:
            ice_state = _ICE_STATES[body.iceState]
            self._ice_state = ice_state
            self.events.emit("icestatechange", ice_state)
            self.observer.emit("icestatechange", ice_state)
        elif event == Event.WEBRTCTRANSPORT_ICE_SELECTED_TUPLE_CHANGE:
            ice_selected_tuple = parse_tuple(body.tuple)
            self._ice_selected_tuple = ice_selected_tuple
            self.events.emit("iceselectedtuplechange", ice_selected_tuple)
            self.observer.emit("iceselectedtuplechange", ice_selected_tuple)
        elif event == Event.WEBRTCTRANSPORT_DTLS_STATE_CHANGE:
            dtls_state = _DTLS_STATES[body.dtlsState]
            self._dtls_state = dtls_state
            if dtls_state == "connected":
                self._dtls_remote_cert = body.remoteCert
            self.events.emit("dtlsstatechange", dtls_state)
            self.observer.emit("dtlsstatechange", dtls_state)
        elif event == Event.TRANSPORT_SCTP_STATE_CHANGE:
            sctp_state = parse_sctp_state(body.sctpState)
            self._sctp_state = sctp_state
            self.events.emit("sctpstatechange", sctp_state)
            self.observer.emit("sctpstatechange", sctp_state)
        else:
            super()._on_notification(event, body)
