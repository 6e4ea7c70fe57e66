"""DataProducer: a data channel (SCTP stream, or direct messages) entering a transport.

Port of mediasoup's ``DataProducer.js`` / ``DataProducerTypes.d.ts``.

Events (on ``events``, also through ``on``/``once``/``off``):

- ``transportclose``: the transport was closed.
- ``@close`` (private): closed by the app; its transport forgets it.

Observer events (on ``observer``): ``close``, ``pause``, ``resume``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Literal, NotRequired, TypedDict

from mafalda.mediasoup._fbs.DataProducer.SendNotification import SendNotificationT
from mafalda.mediasoup._fbs.DataProducer.Type import Type as FbsDataProducerType
from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup._fbs.Request.Method import Method
from mafalda.mediasoup._fbs.Transport.CloseDataProducerRequest import CloseDataProducerRequestT
from mafalda.mediasoup.channel import Channel
from mafalda.mediasoup.emitter import EventEmitter, EventSource
from mafalda.mediasoup.errors import InvalidStateError, InvalidValueError
from mafalda.mediasoup.sctp_parameters import SctpStreamParameters, parse_sctp_stream_parameters

__all__ = [
    "DataProducer",
    "DataProducerDump",
    "DataProducerStat",
    "DataProducerType",
    "PPID_BINARY",
    "PPID_BINARY_EMPTY",
    "PPID_STRING",
    "PPID_STRING_EMPTY",
    "data_producer_type_from_fbs",
    "data_producer_type_to_fbs",
    "parse_data_producer_dump",
    "parse_data_producer_stats",
    "resolve_message_ppid",
    "validate_ppid",
    "validate_subchannel",
    "validate_subchannels",
]

logger = logging.getLogger("mafalda.mediasoup.data_producer")

DataProducerType = Literal["sctp", "direct"]

#: SCTP payload protocol identifiers of WebRTC data channels (RFC 8831).
PPID_STRING = 51
PPID_BINARY = 53
PPID_STRING_EMPTY = 56
PPID_BINARY_EMPTY = 57

_UINT16_MAX = 0xFFFF
_UINT32_MAX = 0xFFFFFFFF


class DataProducerDump(TypedDict):
    id: str
    paused: bool
    type: DataProducerType
    sctpStreamParameters: NotRequired[SctpStreamParameters]
    label: str
    protocol: str


class DataProducerStat(TypedDict):
    type: str
    timestamp: int
    label: str
    protocol: str
    messagesReceived: int
    bytesReceived: int


def data_producer_type_to_fbs(type: DataProducerType) -> int:
    value: int
    if type == "sctp":
        value = FbsDataProducerType.SCTP
    elif type == "direct":
        value = FbsDataProducerType.DIRECT
    else:
        raise TypeError(f"invalid DataProducerType: {type!r}")
    return value


def data_producer_type_from_fbs(type: int) -> DataProducerType:
    if type == FbsDataProducerType.SCTP:
        return "sctp"
    if type == FbsDataProducerType.DIRECT:
        return "direct"
    raise TypeError(f"invalid FBS DataProducer type: {type!r}")


def parse_data_producer_dump(data: Any) -> DataProducerDump:
    """A DataProducer dump from a ``DataProducer.DumpResponseT`` (also produceData's answer)."""
    dump: DataProducerDump = {
        "id": data.id,
        "type": data_producer_type_from_fbs(data.type),
        "label": data.label,
        "protocol": data.protocol,
        "paused": data.paused,
    }
    if data.sctpStreamParameters is not None:
        dump["sctpStreamParameters"] = parse_sctp_stream_parameters(data.sctpStreamParameters)
    return dump


def parse_data_producer_stats(data: Any) -> DataProducerStat:
    """One DataProducer stats entry from a ``DataProducer.GetStatsResponseT``."""
    return {
        "type": "data-producer",
        "timestamp": data.timestamp,
        "label": data.label,
        "protocol": data.protocol,
        "messagesReceived": data.messagesReceived,
        "bytesReceived": data.bytesReceived,
    }


def validate_ppid(ppid: Any) -> None:
    if isinstance(ppid, bool) or not isinstance(ppid, int):
        raise TypeError("if given, ppid must be an integer")
    if not 0 <= ppid <= _UINT32_MAX:
        raise InvalidValueError(f"ppid must be in 0..{_UINT32_MAX}, got {ppid}")


def resolve_message_ppid(message: Any, ppid: int | None) -> tuple[bytes, int]:
    """The payload bytes and PPID of a message to send, as Node decides them.

    A ``str`` is sent as UTF-8 with PPID 51 (56 when empty), binary data with PPID 53
    (57 when empty), unless ``ppid`` is given. PPIDs 56 and 57 carry a one-byte
    placeholder payload (a space, a zero byte), as WebRTC requires.
    """
    if isinstance(message, str):
        is_string = True
        payload = message.encode()
    elif isinstance(message, bytes | bytearray | memoryview):
        is_string = False
        payload = bytes(message)
    else:
        raise TypeError("message must be a str or bytes")
    if ppid is None:
        if is_string:
            ppid = PPID_STRING if payload else PPID_STRING_EMPTY
        else:
            ppid = PPID_BINARY if payload else PPID_BINARY_EMPTY
    else:
        validate_ppid(ppid)
    if ppid == PPID_STRING_EMPTY:
        payload = b" "
    elif ppid == PPID_BINARY_EMPTY:
        payload = b"\x00"
    return payload, ppid


def validate_subchannel(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer")
    if not 0 <= value <= _UINT16_MAX:
        raise InvalidValueError(f"{name} must be in 0..{_UINT16_MAX}, got {value}")
    return value


def validate_subchannels(values: Any, name: str = "subchannels") -> list[int]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list of integers")
    return [validate_subchannel(value, f"{name} item") for value in values]


class DataProducer(EventSource):
    """A data producer. Created by ``Transport.produce_data()``."""

    def __init__(
        self,
        *,
        transport_id: str,
        data_producer_id: str,
        type: DataProducerType,
        sctp_stream_parameters: SctpStreamParameters | None,
        label: str,
        protocol: str,
        channel: Channel,
        paused: bool,
        app_data: dict[str, Any] | None,
    ) -> None:
        logger.debug("constructor()")
        self._transport_id = transport_id
        self._id = data_producer_id
        self._type: DataProducerType = type
        self._sctp_stream_parameters = sctp_stream_parameters
        self._label = label
        self._protocol = protocol
        self._channel = channel
        self._closed = False
        self._paused = paused
        self.app_data: dict[str, Any] = app_data if app_data is not None else {}
        self.events = EventEmitter()
        self.observer = EventEmitter()
        # No notification comes from the worker for a DataProducer; the subscription
        # is kept for symmetry (and so that none is ever mistaken for another's).
        self._channel.subscribe(self._id, self._on_notification)

    # -- properties ---------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def type(self) -> DataProducerType:
        return self._type

    @property
    def sctp_stream_parameters(self) -> SctpStreamParameters | None:
        """SCTP stream parameters (None for a direct DataProducer)."""
        return self._sctp_stream_parameters

    @property
    def label(self) -> str:
        return self._label

    @property
    def protocol(self) -> str:
        return self._protocol

    @property
    def paused(self) -> bool:
        return self._paused

    # -- events -------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"<DataProducer id={self._id} type={self._type} label={self._label!r} "
            f"closed={self._closed} paused={self._paused}>"
        )

    # -- lifecycle ----------------------------------------------------------------

    def close(self) -> None:
        """Close the DataProducer (its data consumers get ``dataproducerclose``)."""
        if self._closed:
            return
        logger.debug("close()")
        self._closed = True
        self._channel.unsubscribe(self._id)
        self._channel.request_nowait(
            Method.TRANSPORT_CLOSE_DATAPRODUCER,
            self._transport_id,
            CloseDataProducerRequestT(dataProducerId=self._id),
        )
        self.events.emit("@close")
        self.observer.emit("close")

    def transport_closed(self) -> None:
        """The transport was closed (called by the Transport)."""
        if self._closed:
            return
        logger.debug("transport_closed()")
        self._closed = True
        self._channel.unsubscribe(self._id)
        self.events.emit("transportclose")
        self.observer.emit("close")

    def _on_notification(self, event: int, body: Any) -> None:
        logger.error('ignoring unknown event "%s"', event)

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidStateError("DataProducer closed")

    # -- requests -----------------------------------------------------------------

    async def dump(self) -> DataProducerDump:
        logger.debug("dump()")
        self._check_open()
        body = await self._channel.request(Method.DATAPRODUCER_DUMP, self._id)
        return parse_data_producer_dump(body)

    async def get_stats(self) -> list[DataProducerStat]:
        logger.debug("get_stats()")
        self._check_open()
        body = await self._channel.request(Method.DATAPRODUCER_GET_STATS, self._id)
        return [parse_data_producer_stats(body)]

    async def pause(self) -> None:
        logger.debug("pause()")
        self._check_open()
        await self._channel.request(Method.DATAPRODUCER_PAUSE, self._id)
        was_paused = self._paused
        self._paused = True
        if not was_paused:
            self.observer.emit("pause")

    async def resume(self) -> None:
        logger.debug("resume()")
        self._check_open()
        await self._channel.request(Method.DATAPRODUCER_RESUME, self._id)
        was_paused = self._paused
        self._paused = False
        if was_paused:
            self.observer.emit("resume")

    def send(
        self,
        message: str | bytes | bytearray | memoryview,
        ppid: int | None = None,
        subchannels: list[int] | None = None,
        required_subchannel: int | None = None,
    ) -> None:
        """Send a message through the router (meant for a DataProducer on a DirectTransport).

        ``message`` is a ``str`` (sent as UTF-8, PPID 51, or 56 when empty) or bytes
        (PPID 53, or 57 when empty); ``ppid`` overrides that choice. ``subchannels`` and
        ``required_subchannel`` select which data consumers receive it (see
        ``DataConsumer.subchannels``). Fire-and-forget, as in Node: the worker drops (and
        logs) a message larger than the transport's ``maxMessageSize``.
        """
        self._check_open()
        payload, ppid = resolve_message_ppid(message, ppid)
        channels = [] if subchannels is None else validate_subchannels(subchannels)
        if required_subchannel is not None:
            validate_subchannel(required_subchannel, "required_subchannel")
        self._channel.notify(
            Event.DATAPRODUCER_SEND,
            self._id,
            SendNotificationT(
                ppid=ppid,
                data=payload,
                subchannels=channels,
                requiredSubchannel=required_subchannel,
            ),
        )
