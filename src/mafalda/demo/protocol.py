"""The demo's signaling protocol: JSON text messages over one WebSocket per client.

Pure functions (no I/O): parse and validate what a client sends, build what the server
sends. The room logic (``room.py``) and the WebSocket front end (``server.py``) use them.

Client to server, a request::

    {"id": 7, "method": "produce", "data": {"transportId": "...", "kind": "video", ...}}

Server to client, the response to request 7 (exactly one per request)::

    {"response": true, "id": 7, "ok": true, "data": {"id": "..."}}
    {"response": true, "id": 7, "ok": false, "error": "unknown transport '...'"}

A message that cannot be read as a request gets an error response with ``"id": null``.
Server to client, a notification (no answer expected)::

    {"notification": true, "method": "newProducer", "data": {"peerId": "...", ...}}

Requests (``data`` fields; ``?`` marks optional ones):

- ``getRouterRtpCapabilities {}`` -> ``{rtpCapabilities}``
- ``join {roomId, displayName?, rtpCapabilities, sctpCapabilities?}`` ->
  ``{peerId, roomId, peers: [{id, displayName, producers: [{id, kind}],
  dataProducers: [{id, label}]}], activeSpeaker: {peerId, producerId} | null}``
- ``leave {}`` -> ``{}``
- ``createWebRtcTransport {direction: "send"|"recv"}`` ->
  ``{id, iceParameters, iceCandidates, dtlsParameters, sctpParameters}``
- ``connectWebRtcTransport {transportId, dtlsParameters}`` -> ``{}``
- ``produce {transportId, kind, rtpParameters}`` -> ``{id}``
- ``closeProducer / pauseProducer / resumeProducer {producerId}`` -> ``{}``
- ``consume {transportId, producerId}`` -> ``{id, producerId, peerId, kind, rtpParameters,
  type, producerPaused}`` (the consumer starts paused: send ``resumeConsumer`` once the
  client side consumer exists)
- ``resumeConsumer {consumerId}`` -> ``{}``
- ``setConsumerPreferredLayers {consumerId, spatialLayer, temporalLayer?}`` -> ``{}``
- ``produceData {transportId, sctpStreamParameters, label?, protocol?}`` -> ``{id}``
- ``consumeData {transportId, dataProducerId}`` -> ``{id, dataProducerId, peerId,
  sctpStreamParameters, label, protocol}``

Notifications: ``peerJoined {id, displayName}``, ``peerLeft {id}``,
``newProducer {peerId, producerId, kind}``, ``newDataProducer {peerId, dataProducerId,
label}``, ``consumerClosed {consumerId}``, ``consumerPaused {consumerId}``,
``consumerResumed {consumerId}``, ``consumerLayersChanged {consumerId, spatialLayer,
temporalLayer}`` (null layers when none), ``dataConsumerClosed {dataConsumerId}``,
``activeSpeaker {peerId, producerId}`` (both null when the speaker's producer closed).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final, Literal, TypedDict, cast

from mafalda.mediasoup import RtpCapabilities, RtpParameters, SctpCapabilities, SctpStreamParameters
from mafalda.mediasoup.webrtc_transport import DtlsParameters

__all__ = [
    "MAX_MESSAGE_SIZE",
    "METHODS",
    "ProtocolError",
    "Request",
    "encode",
    "error_response",
    "notification",
    "ok_response",
    "parse_request",
    "validate_room_id",
]

#: The largest message a client may send, in bytes of UTF-8 (the WebSocket refuses
#: bigger frames too). A join with a browser's RTP capabilities takes a few KiB.
MAX_MESSAGE_SIZE: Final = 64 * 1024
MAX_ID_LENGTH: Final = 64
MAX_DISPLAY_NAME_LENGTH: Final = 64
MAX_LABEL_LENGTH: Final = 64
_ROOM_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAX_REQUEST_ID: Final = 2**53 - 1  # what a JavaScript number holds exactly


class ProtocolError(Exception):
    """A message the server refuses; ``str(error)`` is what the client is told."""

    def __init__(self, message: str, *, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


# -- requests' data -------------------------------------------------------------------


class EmptyData(TypedDict):
    pass


# Wire objects (RTP capabilities and parameters...) are checked to be JSON objects here;
# mediasoup's own validation (ortc) checks their content where they are used.


class JoinData(TypedDict):
    roomId: str
    displayName: str
    rtpCapabilities: RtpCapabilities
    sctpCapabilities: SctpCapabilities | None


class CreateWebRtcTransportData(TypedDict):
    direction: Literal["send", "recv"]


class ConnectWebRtcTransportData(TypedDict):
    transportId: str
    dtlsParameters: DtlsParameters


class ProduceData(TypedDict):
    transportId: str
    kind: Literal["audio", "video"]
    rtpParameters: RtpParameters


class ProducerIdData(TypedDict):
    producerId: str


class ConsumeData(TypedDict):
    transportId: str
    producerId: str


class ConsumerIdData(TypedDict):
    consumerId: str


class SetConsumerPreferredLayersData(TypedDict):
    consumerId: str
    spatialLayer: int
    temporalLayer: int | None


class ProduceDataData(TypedDict):
    transportId: str
    sctpStreamParameters: SctpStreamParameters
    label: str
    protocol: str


class ConsumeDataData(TypedDict):
    transportId: str
    dataProducerId: str


@dataclass(frozen=True)
class Request:
    """A valid request: ``data`` has the shape of the method's TypedDict above."""

    id: int
    method: str
    data: Any


# -- field validators -------------------------------------------------------------------


def _string(data: dict[str, Any], key: str, *, max_length: int = MAX_ID_LENGTH) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    if len(value) > max_length:
        raise ValueError(f"{key} is longer than {max_length} characters")
    return value


def _optional_string(data: dict[str, Any], key: str, default: str, max_length: int) -> str:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    if len(value) > max_length:
        raise ValueError(f"{key} is longer than {max_length} characters")
    return value


def _object(data: dict[str, Any], key: str) -> Any:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be an object")
    return value


def _uint8(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise ValueError(f"{key} must be an integer in 0..255")
    return value


def _optional_uint8(data: dict[str, Any], key: str) -> int | None:
    return None if data.get(key) is None else _uint8(data, key)


def validate_room_id(value: Any) -> str:
    """A room id is what the page's URL names: 1 to 64 of ``A-Z a-z 0-9 _ . -``."""
    if not isinstance(value, str) or _ROOM_ID.fullmatch(value) is None:
        raise ValueError("roomId must be 1 to 64 characters among A-Z a-z 0-9 _ . -")
    return value


def _empty(data: dict[str, Any]) -> EmptyData:
    return {}


def _join(data: dict[str, Any]) -> JoinData:
    sctp = data.get("sctpCapabilities")
    if sctp is not None and not isinstance(sctp, dict):
        raise ValueError("sctpCapabilities must be an object")
    return {
        "roomId": validate_room_id(data.get("roomId")),
        "displayName": _optional_string(data, "displayName", "guest", MAX_DISPLAY_NAME_LENGTH),
        "rtpCapabilities": _object(data, "rtpCapabilities"),
        "sctpCapabilities": cast(SctpCapabilities | None, sctp),
    }


def _create_webrtc_transport(data: dict[str, Any]) -> CreateWebRtcTransportData:
    direction = data.get("direction")
    if direction not in ("send", "recv"):
        raise ValueError("direction must be 'send' or 'recv'")
    return {"direction": direction}


def _connect_webrtc_transport(data: dict[str, Any]) -> ConnectWebRtcTransportData:
    return {
        "transportId": _string(data, "transportId"),
        "dtlsParameters": _object(data, "dtlsParameters"),
    }


def _produce(data: dict[str, Any]) -> ProduceData:
    kind = data.get("kind")
    if kind not in ("audio", "video"):
        raise ValueError("kind must be 'audio' or 'video'")
    return {
        "transportId": _string(data, "transportId"),
        "kind": kind,
        "rtpParameters": _object(data, "rtpParameters"),
    }


def _producer_id(data: dict[str, Any]) -> ProducerIdData:
    return {"producerId": _string(data, "producerId")}


def _consume(data: dict[str, Any]) -> ConsumeData:
    return {
        "transportId": _string(data, "transportId"),
        "producerId": _string(data, "producerId"),
    }


def _consumer_id(data: dict[str, Any]) -> ConsumerIdData:
    return {"consumerId": _string(data, "consumerId")}


def _set_consumer_preferred_layers(data: dict[str, Any]) -> SetConsumerPreferredLayersData:
    return {
        "consumerId": _string(data, "consumerId"),
        "spatialLayer": _uint8(data, "spatialLayer"),
        "temporalLayer": _optional_uint8(data, "temporalLayer"),
    }


def _produce_data(data: dict[str, Any]) -> ProduceDataData:
    return {
        "transportId": _string(data, "transportId"),
        "sctpStreamParameters": _object(data, "sctpStreamParameters"),
        "label": _optional_string(data, "label", "", MAX_LABEL_LENGTH),
        "protocol": _optional_string(data, "protocol", "", MAX_LABEL_LENGTH),
    }


def _consume_data(data: dict[str, Any]) -> ConsumeDataData:
    return {
        "transportId": _string(data, "transportId"),
        "dataProducerId": _string(data, "dataProducerId"),
    }


_VALIDATORS: Final[dict[str, Any]] = {
    "getRouterRtpCapabilities": _empty,
    "join": _join,
    "leave": _empty,
    "createWebRtcTransport": _create_webrtc_transport,
    "connectWebRtcTransport": _connect_webrtc_transport,
    "produce": _produce,
    "closeProducer": _producer_id,
    "pauseProducer": _producer_id,
    "resumeProducer": _producer_id,
    "consume": _consume,
    "resumeConsumer": _consumer_id,
    "setConsumerPreferredLayers": _set_consumer_preferred_layers,
    "produceData": _produce_data,
    "consumeData": _consume_data,
}

#: Every request method a client may send.
METHODS: Final = frozenset(_VALIDATORS)


def parse_request(raw: str | bytes, *, max_size: int = MAX_MESSAGE_SIZE) -> Request:
    """Read one client message; raise ProtocolError (with the request id when known)."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_size:
        raise ProtocolError(f"message too big ({size} bytes, at most {max_size})")
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError("malformed JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("a request must be a JSON object")
    request_id = message.get("id")
    if (
        isinstance(request_id, bool)
        or not isinstance(request_id, int)
        or not 0 <= request_id <= _MAX_REQUEST_ID
    ):
        raise ProtocolError("id must be a non-negative integer")
    method = message.get("method")
    if not isinstance(method, str):
        raise ProtocolError("method must be a string", request_id=request_id)
    validator = _VALIDATORS.get(method)
    if validator is None:
        shown = method if len(method) <= 40 else method[:40] + "..."
        raise ProtocolError(f"unknown method {shown!r}", request_id=request_id)
    data = message.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProtocolError("data must be a JSON object", request_id=request_id)
    try:
        validated = validator(data)
    except ValueError as error:
        raise ProtocolError(f"{method}: {error}", request_id=request_id) from None
    return Request(id=request_id, method=method, data=validated)


# -- server messages -------------------------------------------------------------------


def ok_response(request_id: int, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"response": True, "id": request_id, "ok": True, "data": data or {}}


def error_response(request_id: int | None, message: str) -> dict[str, Any]:
    return {"response": True, "id": request_id, "ok": False, "error": message}


def notification(method: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"notification": True, "method": method, "data": data}


def encode(message: dict[str, Any]) -> str:
    """The JSON text of a server message (compact; NaN/Infinity refused)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def as_json_object(value: Any) -> dict[str, Any]:
    """``value`` (a wire TypedDict) typed as a plain JSON object."""
    return cast(dict[str, Any], value)
