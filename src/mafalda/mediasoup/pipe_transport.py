"""PipeTransport: RTP between two routers (same host or not), see Router.pipe_to_router()."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, NotRequired, TypeVar

from mafalda.mediasoup import ortc
from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup._fbs.PipeTransport.ConnectRequest import ConnectRequestT
from mafalda.mediasoup._fbs.Request.Method import Method
from mafalda.mediasoup._fbs.RtpParameters.MediaKind import MediaKind as FbsMediaKind
from mafalda.mediasoup._fbs.RtpParameters.Type import Type as FbsRtpType
from mafalda.mediasoup._fbs.Transport.CloseConsumerRequest import CloseConsumerRequestT
from mafalda.mediasoup._fbs.Transport.ConsumeRequest import ConsumeRequestT
from mafalda.mediasoup._ids import new_id
from mafalda.mediasoup.channel import Channel
from mafalda.mediasoup.consumer import Consumer
from mafalda.mediasoup.errors import InvalidStateError, InvalidValueError
from mafalda.mediasoup.plain_transport import (
    validate_remote_ip,
    validate_remote_port,
    validate_srtp_parameters,
)
from mafalda.mediasoup.rtp_parameters import (
    serialize_rtp_encoding_parameters,
    serialize_rtp_parameters,
)
from mafalda.mediasoup.sctp_parameters import SctpParameters
from mafalda.mediasoup.srtp_parameters import (
    SrtpParameters,
    parse_srtp_parameters,
    serialize_srtp_parameters,
)
from mafalda.mediasoup.transport import (
    BaseTransportDump,
    BaseTransportStats,
    RouterBook,
    SctpState,
    Transport,
    TransportTuple,
    parse_base_transport_dump,
    parse_base_transport_stats,
    parse_sctp_state,
    parse_tuple,
)
from mafalda.mediasoup.worker import validate_app_data

__all__ = [
    "PipeTransport",
    "PipeTransportDump",
    "PipeTransportStat",
    "parse_pipe_transport_dump",
    "parse_pipe_transport_stats",
]

logger = logging.getLogger("mafalda.mediasoup.pipe_transport")

#: The only SRTP crypto suite a PipeTransport uses.
PIPE_SRTP_CRYPTO_SUITE = "AEAD_AES_256_GCM"


class PipeTransportDump(BaseTransportDump):
    tuple: TransportTuple
    rtx: bool
    srtpParameters: NotRequired[SrtpParameters]


class PipeTransportStat(BaseTransportStats):
    tuple: TransportTuple


def parse_pipe_transport_dump(body: Any) -> PipeTransportDump:
    """A PipeTransport dump from a ``PipeTransport.DumpResponseT``."""
    dump: PipeTransportDump = {
        **parse_base_transport_dump(body.base),  # type: ignore[typeddict-item]
        "tuple": parse_tuple(body.tuple),
        "rtx": bool(body.rtx),
    }
    if body.srtpParameters is not None:
        dump["srtpParameters"] = parse_srtp_parameters(body.srtpParameters)
    return dump


def parse_pipe_transport_stats(body: Any) -> PipeTransportStat:
    """PipeTransport stats from a ``PipeTransport.GetStatsResponseT``."""
    return {
        **parse_base_transport_stats(body.base, "pipe-transport"),
        "tuple": parse_tuple(body.tuple),
    }


class PipeTransport(Transport):
    """One end of a router-to-router RTP link.

    Events: ``sctpstatechange`` (state), ``trace`` (data), ``routerclose``; the observer
    emits the same plus ``close``, ``newproducer``, ``newconsumer``, ``newdataproducer``,
    ``newdataconsumer``.
    """

    type = "pipe"

    def __init__(
        self,
        *,
        router_id: str,
        transport_id: str,
        channel: Channel,
        app_data: dict[str, Any] | None,
        book: RouterBook,
        data: PipeTransportDump,
    ) -> None:
        super().__init__(
            router_id=router_id,
            transport_id=transport_id,
            channel=channel,
            app_data=app_data,
            book=book,
            sctp_parameters=data.get("sctpParameters"),
        )
        self._tuple: TransportTuple = data["tuple"]
        self._sctp_parameters: SctpParameters | None = data.get("sctpParameters")
        self._sctp_state: SctpState | None = data.get("sctpState")
        self._rtx = data["rtx"]
        self._srtp_parameters: SrtpParameters | None = data.get("srtpParameters")

    # -- properties ------------------------------------------------------------------

    @property
    def tuple(self) -> TransportTuple:
        return self._tuple

    @property
    def sctp_parameters(self) -> SctpParameters | None:
        return self._sctp_parameters

    @property
    def sctp_state(self) -> SctpState | None:
        return self._sctp_state

    @property
    def rtx(self) -> bool:
        """Whether RTX and NACK are enabled on this pipe (``enable_rtx``)."""
        return self._rtx

    @property
    def srtp_parameters(self) -> SrtpParameters | None:
        """The local SRTP parameters (give them to the other end), None without SRTP."""
        return self._srtp_parameters

    # -- closing ---------------------------------------------------------------------

    def _mark_closed(self) -> None:
        if self._sctp_state:
            self._sctp_state = "closed"

    # -- requests --------------------------------------------------------------------

    async def dump(self) -> PipeTransportDump:
        return parse_pipe_transport_dump(await self._dump_body())

    async def get_stats(self) -> list[PipeTransportStat]:
        return [parse_pipe_transport_stats(await self._stats_body())]

    async def connect(
        self,
        *,
        ip: str,
        port: int,
        srtp_parameters: SrtpParameters | None = None,
    ) -> None:
        """Give the address of the other end and, with SRTP, its SRTP parameters."""
        self._check_open()
        if self._srtp_parameters is None:
            if srtp_parameters is not None:
                raise TypeError("invalid srtp_parameters (SRTP not enabled)")
        else:
            if srtp_parameters is None:
                raise TypeError("missing srtp_parameters (SRTP enabled)")
            validate_srtp_parameters(srtp_parameters, crypto_suites=(PIPE_SRTP_CRYPTO_SUITE,))
        validate_remote_ip(ip)
        validate_remote_port(port)
        request = ConnectRequestT()
        request.ip = ip
        request.port = port
        if srtp_parameters is not None:
            request.srtpParameters = serialize_srtp_parameters(srtp_parameters)
        response = await self._request(Method.PIPETRANSPORT_CONNECT, request)
        self._tuple = parse_tuple(response.tuple)  # a required field (pipeTransport.fbs)

    async def consume(  # type: ignore[override]
        self, *, producer_id: str, app_data: dict[str, Any] | None = None
    ) -> Consumer:
        """Create a pipe Consumer of a producer of this router (no RTP capabilities:
        the consumer sends every consumable encoding as is)."""
        self._check_open()
        if not producer_id or not isinstance(producer_id, str):
            raise TypeError("missing producer_id")
        validate_app_data(app_data)
        if self.consume_guard is None:
            return await self._consume_pipe(producer_id, app_data)
        async with self.consume_guard(producer_id):
            self._check_open()
            return await self._consume_pipe(producer_id, app_data)

    async def _consume_pipe(self, producer_id: str, app_data: dict[str, Any] | None) -> Consumer:
        producer = self._get_producer_by_id(producer_id)
        if producer is None:
            raise InvalidValueError(f'Producer with id "{producer_id}" not found')
        rtp_parameters = ortc.get_pipe_consumer_rtp_parameters(
            consumable_rtp_parameters=producer.consumable_rtp_parameters,
            enable_rtx=self._rtx,
        )
        consumer_id = new_id()
        request = ConsumeRequestT()
        request.consumerId = consumer_id
        request.producerId = producer.id  # not an alias (Router.alias_producer)
        request.kind = FbsMediaKind.AUDIO if producer.kind == "audio" else FbsMediaKind.VIDEO
        request.rtpParameters = serialize_rtp_parameters(rtp_parameters, prepacked=True)
        request.type = FbsRtpType.PIPE
        # Never empty: the worker refuses a producer without encodings.
        request.consumableRtpEncodings = serialize_rtp_encoding_parameters(
            producer.consumable_rtp_parameters["encodings"]
        )
        status = await self._request_making(
            Method.TRANSPORT_CONSUME,
            request,
            Method.TRANSPORT_CLOSE_CONSUMER,
            CloseConsumerRequestT(consumerId=consumer_id),
        )
        consumer = Consumer(
            transport_id=self._id,
            consumer_id=consumer_id,
            producer_id=producer_id,
            kind=producer.kind,
            rtp_parameters=rtp_parameters,
            type="pipe",
            channel=self._channel,
            app_data=app_data,
            paused=bool(status.paused),
            producer_paused=bool(status.producerPaused),
            # A pipe consumer has no score of its own: Node keeps its default one.
            score={"score": 10, "producerScore": 10, "producerScores": []},
        )
        self._adopt_consumer(consumer)
        return consumer

    # -- notifications ---------------------------------------------------------------

    def _on_notification(self, event: int, body: Any) -> None:
        if event == Event.TRANSPORT_SCTP_STATE_CHANGE:
            sctp_state = parse_sctp_state(body.sctpState)
            self._sctp_state = sctp_state
            self.events.emit("sctpstatechange", sctp_state)
            self.observer.emit("sctpstatechange", sctp_state)
        else:
            super()._on_notification(event, body)


_Pipe = TypeVar("_Pipe")


async def open_pipe_pair(first: Awaitable[_Pipe], second: Awaitable[_Pipe]) -> tuple[_Pipe, _Pipe]:
    """Create two PipeTransports and connect each to the other (tuple and SRTP parameters).

    Whatever fails, nothing is left open: when one creation fails the other transport is
    closed (both are awaited, so neither is lost), and when a connect fails both are
    closed. Works with anything shaped like a PipeTransport (remote proxies too).
    """
    results = await asyncio.gather(first, second, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        for result in results:
            if not isinstance(result, BaseException):
                result.close()  # type: ignore[attr-defined]
        raise failures[0]
    a, b = results
    ends: Any = (a, b)
    try:
        await asyncio.gather(
            *(
                end.connect(
                    ip=other.tuple["localAddress"],
                    port=other.tuple["localPort"],
                    srtp_parameters=other.srtp_parameters,
                )
                for end, other in (ends, ends[::-1])
            )
        )
    except BaseException:
        for end in ends:
            end.close()
        raise
    if any(end.closed for end in ends):
        # One closed as they connected (its router or worker, the app): a pair with a
        # closed end pipes nothing, and its open end would be left behind.
        for end in ends:
            end.close()
        raise InvalidStateError("PipeTransport closed while its pair was opening")
    return a, b  # type: ignore[return-value]


async def sctp_connected(transport: Any, timeout: float = 10.0) -> None:
    """Return once the SCTP association of ``transport`` (a local or remote proxy
    transport) is connected; InvalidStateError when it fails or the transport closes
    first, TimeoutError after ``timeout`` seconds."""
    state = transport.sctp_state
    if state == "connected":
        return
    if transport.closed:
        raise InvalidStateError("transport closed")
    if state in ("failed", "closed"):
        raise InvalidStateError(f"SCTP association {state}")
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_state(state: str) -> None:
        if future.done():
            return
        if state == "connected":
            future.set_result(None)
        elif state in ("failed", "closed"):
            future.set_exception(InvalidStateError(f"SCTP association {state}"))

    def on_close() -> None:
        if not future.done():
            future.set_exception(InvalidStateError("transport closed"))

    transport.observer.on("sctpstatechange", on_state)
    transport.observer.on("close", on_close)
    try:
        async with asyncio.timeout(timeout):
            await future
    finally:
        transport.observer.off("sctpstatechange", on_state)
        transport.observer.off("close", on_close)
