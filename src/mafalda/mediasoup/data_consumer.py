"""DataConsumer: a data producer's messages leaving a transport.

Port of mediasoup's ``DataConsumer.js`` / ``DataConsumerTypes.d.ts``.

Events (on ``events``, also through ``on``/``once``/``off``):

- ``transportclose``: the transport was closed.
- ``dataproducerclose``: the data producer was closed (the DataConsumer closes too).
- ``dataproducerpause`` / ``dataproducerresume``.
- ``message`` ``(message: bytes, ppid: int)``: a message for a direct DataConsumer (on a
  DirectTransport). The payload is always ``bytes``, whatever the PPID (Node emits a
  Buffer too): decode a WebRTC string (PPID 51) with ``message.decode()``; an empty
  string (PPID 56) and empty binary (PPID 57) arrive as their one-byte placeholder.
- ``sctpsendbufferfull``: the SCTP send buffer of the transport is full.
- ``bufferedamountlow`` ``(buffered_amount: int)``: the buffered amount dropped below the
  threshold (see ``set_buffered_amount_low_threshold()``).
- ``@close``, ``@dataproducerclose`` (private): the transport forgets it.

Observer events (on ``observer``): ``close``, ``pause``, ``resume``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, NotRequired, TypedDict

from mafalda.mediasoup._fbs.DataConsumer.AddSubchannelRequest import AddSubchannelRequestT
from mafalda.mediasoup._fbs.DataConsumer.RemoveSubchannelRequest import (
    RemoveSubchannelRequestT,
)
from mafalda.mediasoup._fbs.DataConsumer.SendRequest import SendRequestT
from mafalda.mediasoup._fbs.DataConsumer.SetBufferedAmountLowThresholdRequest import (
    SetBufferedAmountLowThresholdRequestT,
)
from mafalda.mediasoup._fbs.DataConsumer.SetSubchannelsRequest import SetSubchannelsRequestT
from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup._fbs.Request.Method import Method
from mafalda.mediasoup._fbs.Transport.CloseDataConsumerRequest import CloseDataConsumerRequestT
from mafalda.mediasoup.channel import Channel
from mafalda.mediasoup.data_producer import (
    data_producer_type_from_fbs,
    data_producer_type_to_fbs,
    resolve_message_ppid,
    validate_subchannel,
    validate_subchannels,
)
from mafalda.mediasoup.emitter import EventEmitter, EventSource
from mafalda.mediasoup.errors import InvalidStateError, InvalidValueError
from mafalda.mediasoup.sctp_parameters import SctpStreamParameters, parse_sctp_stream_parameters

__all__ = [
    "DataConsumer",
    "DataConsumerDump",
    "DataConsumerStat",
    "DataConsumerType",
    "data_consumer_type_from_fbs",
    "data_consumer_type_to_fbs",
    "parse_data_consumer_dump",
    "parse_data_consumer_stats",
]

logger = logging.getLogger("mafalda.mediasoup.data_consumer")

DataConsumerType = Literal["sctp", "direct"]

_UINT32_MAX = 0xFFFFFFFF


class DataConsumerDump(TypedDict):
    id: str
    paused: bool
    dataProducerPaused: bool
    subchannels: list[int]
    dataProducerId: str
    type: DataConsumerType
    sctpStreamParameters: NotRequired[SctpStreamParameters]
    label: str
    protocol: str
    bufferedAmountLowThreshold: int


class DataConsumerStat(TypedDict):
    type: str
    timestamp: int
    label: str
    protocol: str
    messagesSent: int
    bytesSent: int
    bufferedAmount: int


def data_consumer_type_to_fbs(type: DataConsumerType) -> int:
    """The FlatBuffers enum of a DataConsumer type (the schema shares DataProducer's)."""
    try:
        return data_producer_type_to_fbs(type)
    except TypeError:
        raise TypeError(f"invalid DataConsumerType: {type!r}") from None


def data_consumer_type_from_fbs(type: int) -> DataConsumerType:
    return data_producer_type_from_fbs(type)


def _subchannels(data: Any) -> list[int]:
    return [int(subchannel) for subchannel in (data.subchannels or ())]


def parse_data_consumer_dump(data: Any) -> DataConsumerDump:
    """A DataConsumer dump from a ``DataConsumer.DumpResponseT`` (also consumeData's answer)."""
    dump: DataConsumerDump = {
        "id": data.id,
        "dataProducerId": data.dataProducerId,
        "type": data_consumer_type_from_fbs(data.type),
        "label": data.label,
        "protocol": data.protocol,
        "bufferedAmountLowThreshold": data.bufferedAmountLowThreshold,
        "paused": data.paused,
        "dataProducerPaused": data.dataProducerPaused,
        "subchannels": _subchannels(data),
    }
    if data.sctpStreamParameters is not None:
        dump["sctpStreamParameters"] = parse_sctp_stream_parameters(data.sctpStreamParameters)
    return dump


def parse_data_consumer_stats(data: Any) -> DataConsumerStat:
    """One DataConsumer stats entry from a ``DataConsumer.GetStatsResponseT``."""
    return {
        "type": "data-consumer",
        "timestamp": data.timestamp,
        "label": data.label,
        "protocol": data.protocol,
        "messagesSent": data.messagesSent,
        "bytesSent": data.bytesSent,
        "bufferedAmount": data.bufferedAmount,
    }


class DataConsumer(EventSource):
    """A data consumer. Created by ``Transport.consume_data()``."""

    def __init__(
        self,
        *,
        transport_id: str,
        data_consumer_id: str,
        data_producer_id: str,
        type: DataConsumerType,
        sctp_stream_parameters: SctpStreamParameters | None,
        label: str,
        protocol: str,
        buffered_amount_low_threshold: int,
        channel: Channel,
        paused: bool,
        data_producer_paused: bool,
        subchannels: list[int],
        app_data: dict[str, Any] | None,
    ) -> None:
        logger.debug("constructor()")
        self._transport_id = transport_id
        self._id = data_consumer_id
        self._data_producer_id = data_producer_id
        self._type: DataConsumerType = type
        self._sctp_stream_parameters = sctp_stream_parameters
        self._label = label
        self._protocol = protocol
        self._buffered_amount_low_threshold = buffered_amount_low_threshold
        self._channel = channel
        self._closed = False
        self._paused = paused
        self._data_producer_paused = data_producer_paused
        self._subchannels = list(subchannels)
        self.app_data: dict[str, Any] = app_data if app_data is not None else {}
        self.events = EventEmitter()
        self.observer = EventEmitter()
        self._channel.subscribe(self._id, self._on_notification)

    # -- properties ---------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def data_producer_id(self) -> str:
        return self._data_producer_id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def type(self) -> DataConsumerType:
        return self._type

    @property
    def sctp_stream_parameters(self) -> SctpStreamParameters | None:
        """SCTP stream parameters (None for a direct DataConsumer)."""
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

    @property
    def data_producer_paused(self) -> bool:
        return self._data_producer_paused

    @property
    def subchannels(self) -> list[int]:
        """The subchannels this DataConsumer is subscribed to (a copy).

        A message sent by a direct DataProducer with ``subchannels`` reaches this
        DataConsumer only if one of them is here; with ``required_subchannel``, only if
        that one is here too.
        """
        return list(self._subchannels)

    # -- events -------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"<DataConsumer id={self._id} type={self._type} label={self._label!r} "
            f"closed={self._closed} paused={self._paused}>"
        )

    # -- lifecycle ----------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        logger.debug("close()")
        self._closed = True
        self._channel.unsubscribe(self._id)
        self._channel.request_nowait(
            Method.TRANSPORT_CLOSE_DATACONSUMER,
            self._transport_id,
            CloseDataConsumerRequestT(dataConsumerId=self._id),
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
        if event == Event.DATACONSUMER_MESSAGE:
            self.events.emit("message", bytes(body.data or b""), body.ppid)
        elif event == Event.DATACONSUMER_DATAPRODUCER_CLOSE:
            # Delivered only while subscribed, that is while open.
            self._closed = True
            self._channel.unsubscribe(self._id)
            self.events.emit("@dataproducerclose")
            self.events.emit("dataproducerclose")
            self.observer.emit("close")
        elif event == Event.DATACONSUMER_DATAPRODUCER_PAUSE:
            if self._data_producer_paused:
                return
            self._data_producer_paused = True
            self.events.emit("dataproducerpause")
            if not self._paused:
                self.observer.emit("pause")
        elif event == Event.DATACONSUMER_DATAPRODUCER_RESUME:
            if not self._data_producer_paused:
                return
            self._data_producer_paused = False
            self.events.emit("dataproducerresume")
            if not self._paused:
                self.observer.emit("resume")
        elif event == Event.DATACONSUMER_SCTP_SENDBUFFER_FULL:
            self.events.emit("sctpsendbufferfull")
        elif event == Event.DATACONSUMER_BUFFERED_AMOUNT_LOW:
            self.events.emit("bufferedamountlow", body.bufferedAmount)
        else:
            logger.error('ignoring unknown event "%s"', event)

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidStateError("DataConsumer closed")

    # -- requests -----------------------------------------------------------------

    async def dump(self) -> DataConsumerDump:
        logger.debug("dump()")
        self._check_open()
        body = await self._channel.request(Method.DATACONSUMER_DUMP, self._id)
        return parse_data_consumer_dump(body)

    async def get_stats(self) -> list[DataConsumerStat]:
        logger.debug("get_stats()")
        self._check_open()
        body = await self._channel.request(Method.DATACONSUMER_GET_STATS, self._id)
        return [parse_data_consumer_stats(body)]

    async def pause(self) -> None:
        logger.debug("pause()")
        self._check_open()
        await self._channel.request(Method.DATACONSUMER_PAUSE, self._id)
        was_paused = self._paused
        self._paused = True
        if not was_paused and not self._data_producer_paused:
            self.observer.emit("pause")

    async def resume(self) -> None:
        logger.debug("resume()")
        self._check_open()
        await self._channel.request(Method.DATACONSUMER_RESUME, self._id)
        was_paused = self._paused
        self._paused = False
        if was_paused and not self._data_producer_paused:
            self.observer.emit("resume")

    async def set_buffered_amount_low_threshold(self, threshold: int) -> None:
        """Set the threshold (bytes) under which ``bufferedamountlow`` fires."""
        logger.debug("set_buffered_amount_low_threshold() [threshold:%s]", threshold)
        self._check_open()
        if isinstance(threshold, bool) or not isinstance(threshold, int):
            raise TypeError("threshold must be an integer")
        if not 0 <= threshold <= _UINT32_MAX:
            raise InvalidValueError(f"threshold must be in 0..{_UINT32_MAX}, got {threshold}")
        await self._channel.request(
            Method.DATACONSUMER_SET_BUFFERED_AMOUNT_LOW_THRESHOLD,
            self._id,
            SetBufferedAmountLowThresholdRequestT(threshold=threshold),
        )
        self._buffered_amount_low_threshold = threshold

    async def get_buffered_amount(self) -> int:
        """Bytes queued in the SCTP send buffer for this DataConsumer."""
        logger.debug("get_buffered_amount()")
        self._check_open()
        body = await self._channel.request(Method.DATACONSUMER_GET_BUFFERED_AMOUNT, self._id)
        amount: int = body.bufferedAmount
        return amount

    async def send(
        self, message: str | bytes | bytearray | memoryview, ppid: int | None = None
    ) -> None:
        """Send a message to the remote endpoint over SCTP (an 'sctp' DataConsumer only).

        PPIDs as in ``DataProducer.send()``. The worker refuses a 'direct' DataConsumer
        (WorkerTypeError), a message over ``maxMessageSize`` (WorkerTypeError) and a full
        send buffer (WorkerError ``sctpsendbufferfull``).
        """
        self._check_open()
        payload, ppid = resolve_message_ppid(message, ppid)
        await self._channel.request(
            Method.DATACONSUMER_SEND, self._id, SendRequestT(ppid=ppid, data=payload)
        )

    async def set_subchannels(self, subchannels: list[int]) -> None:
        """Replace the subchannels (duplicates are removed by the worker)."""
        logger.debug("set_subchannels()")
        self._check_open()
        values = validate_subchannels(subchannels)
        body = await self._channel.request(
            Method.DATACONSUMER_SET_SUBCHANNELS,
            self._id,
            SetSubchannelsRequestT(subchannels=values),
        )
        self._subchannels = _subchannels(body)

    async def add_subchannel(self, subchannel: int) -> None:
        logger.debug("add_subchannel()")
        self._check_open()
        validate_subchannel(subchannel, "subchannel")
        body = await self._channel.request(
            Method.DATACONSUMER_ADD_SUBCHANNEL,
            self._id,
            AddSubchannelRequestT(subchannel=subchannel),
        )
        self._subchannels = _subchannels(body)

    async def remove_subchannel(self, subchannel: int) -> None:
        logger.debug("remove_subchannel()")
        self._check_open()
        validate_subchannel(subchannel, "subchannel")
        body = await self._channel.request(
            Method.DATACONSUMER_REMOVE_SUBCHANNEL,
            self._id,
            RemoveSubchannelRequestT(subchannel=subchannel),
        )
        self._subchannels = _subchannels(body)
