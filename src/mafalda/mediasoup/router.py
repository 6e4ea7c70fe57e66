"""Router: a mediasoup router inside one worker."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any, NotRequired, TypedDict

from mafalda.mediasoup import ortc
from mafalda.mediasoup._fastfbs import PrepackedCache
from mafalda.mediasoup._fbs.ActiveSpeakerObserver.ActiveSpeakerObserverOptions import (
    ActiveSpeakerObserverOptionsT,
)
from mafalda.mediasoup._fbs.AudioLevelObserver.AudioLevelObserverOptions import (
    AudioLevelObserverOptionsT,
)
from mafalda.mediasoup._fbs.DirectTransport.DirectTransportOptions import DirectTransportOptionsT
from mafalda.mediasoup._fbs.PipeTransport.PipeTransportOptions import PipeTransportOptionsT
from mafalda.mediasoup._fbs.PlainTransport.PlainTransportOptions import PlainTransportOptionsT
from mafalda.mediasoup._fbs.Request.Method import Method
from mafalda.mediasoup._fbs.Router.CloseRtpObserverRequest import CloseRtpObserverRequestT
from mafalda.mediasoup._fbs.Router.CloseTransportRequest import CloseTransportRequestT
from mafalda.mediasoup._fbs.Router.CreateActiveSpeakerObserverRequest import (
    CreateActiveSpeakerObserverRequestT,
)
from mafalda.mediasoup._fbs.Router.CreateAudioLevelObserverRequest import (
    CreateAudioLevelObserverRequestT,
)
from mafalda.mediasoup._fbs.Router.CreateDirectTransportRequest import (
    CreateDirectTransportRequestT,
)
from mafalda.mediasoup._fbs.Router.CreatePipeTransportRequest import CreatePipeTransportRequestT
from mafalda.mediasoup._fbs.Router.CreatePlainTransportRequest import (
    CreatePlainTransportRequestT,
)
from mafalda.mediasoup._fbs.Router.CreateWebRtcTransportRequest import (
    CreateWebRtcTransportRequestT,
)
from mafalda.mediasoup._fbs.SctpParameters.NumSctpStreams import NumSctpStreamsT
from mafalda.mediasoup._fbs.Transport.Options import OptionsT
from mafalda.mediasoup._fbs.WebRtcTransport.Listen import Listen
from mafalda.mediasoup._fbs.WebRtcTransport.ListenIndividual import ListenIndividualT
from mafalda.mediasoup._fbs.WebRtcTransport.ListenServer import ListenServerT
from mafalda.mediasoup._fbs.WebRtcTransport.WebRtcTransportOptions import (
    WebRtcTransportOptionsT,
)
from mafalda.mediasoup._fbs.Worker.CloseRouterRequest import CloseRouterRequestT
from mafalda.mediasoup._ids import new_id
from mafalda.mediasoup.active_speaker_observer import ActiveSpeakerObserver
from mafalda.mediasoup.audio_level_observer import AudioLevelObserver
from mafalda.mediasoup.channel import Channel
from mafalda.mediasoup.consumer import Consumer
from mafalda.mediasoup.data_consumer import DataConsumer
from mafalda.mediasoup.data_producer import DataProducer
from mafalda.mediasoup.direct_transport import DirectTransport, parse_direct_transport_dump
from mafalda.mediasoup.emitter import EventEmitter, EventSource
from mafalda.mediasoup.errors import InvalidStateError, InvalidValueError
from mafalda.mediasoup.pipe_transport import (
    PipeTransport,
    open_pipe_pair,
    parse_pipe_transport_dump,
    sctp_connected,
)
from mafalda.mediasoup.plain_transport import PlainTransport, parse_plain_transport_dump
from mafalda.mediasoup.producer import Producer
from mafalda.mediasoup.rtp_observer import RtpObserver
from mafalda.mediasoup.rtp_parameters import RouterRtpCodecCapability, RtpCapabilities
from mafalda.mediasoup.sctp_parameters import NumSctpStreams
from mafalda.mediasoup.srtp_parameters import SrtpCryptoSuite, crypto_suite_to_fbs
from mafalda.mediasoup.transport import (
    ListenInfo,
    RouterBook,
    Transport,
    TransportListenIp,
    TransportProtocol,
    listen_info_to_fbs,
    listen_ip_to_listen_info,
    validate_listen_info,
    validate_listen_infos,
)
from mafalda.mediasoup.webrtc_server import WebRtcServer
from mafalda.mediasoup.webrtc_transport import WebRtcTransport, parse_webrtc_transport_dump
from mafalda.mediasoup.worker import validate_app_data

logger = logging.getLogger("mafalda.mediasoup.router")


class RouterDump(TypedDict):
    id: str
    transportIds: list[str]
    rtpObserverIds: list[str]
    mapProducerIdConsumerIds: list[dict[str, Any]]
    mapConsumerIdProducerId: list[dict[str, Any]]
    mapProducerIdObserverIds: list[dict[str, Any]]
    mapDataProducerIdDataConsumerIds: list[dict[str, Any]]
    mapDataConsumerIdDataProducerId: list[dict[str, Any]]


class PipeToRouterResult(TypedDict):
    pipeConsumer: NotRequired[Consumer]
    pipeProducer: NotRequired[Producer]
    pipeDataConsumer: NotRequired[DataConsumer]
    pipeDataProducer: NotRequired[DataProducer]


def _string_string(items: Any) -> list[dict[str, Any]]:
    return [{"key": i.key, "value": i.value} for i in items or []]


def _string_string_array(items: Any) -> list[dict[str, Any]]:
    return [{"key": i.key, "values": list(i.values or [])} for i in items or []]


def parse_router_dump(t: Any) -> RouterDump:
    return {
        "id": t.id,
        "transportIds": list(t.transportIds or []),
        "rtpObserverIds": list(t.rtpObserverIds or []),
        "mapProducerIdConsumerIds": _string_string_array(t.mapProducerIdConsumerIds),
        "mapConsumerIdProducerId": _string_string(t.mapConsumerIdProducerId),
        "mapProducerIdObserverIds": _string_string_array(t.mapProducerIdObserverIds),
        "mapDataProducerIdDataConsumerIds": _string_string_array(
            t.mapDataProducerIdDataConsumerIds
        ),
        "mapDataConsumerIdDataProducerId": _string_string(t.mapDataConsumerIdDataProducerId),
    }


def _check_num_sctp_streams(value: Any) -> NumSctpStreamsT:
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("OS"), int)
        or not isinstance(value.get("MIS"), int)
    ):
        raise TypeError("if given, num_sctp_streams must contain OS and MIS")
    for key in ("OS", "MIS"):
        if not 1 <= value[key] <= 65535:
            raise InvalidValueError(f"num_sctp_streams.{key} must be in 1..65535")
    t = NumSctpStreamsT()
    t.os = value["OS"]
    t.mis = value["MIS"]
    return t


def _check_uint(value: Any, name: str, maximum: int = 0xFFFFFFFF) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer")
    if not 0 <= value <= maximum:
        raise InvalidValueError(f"{name} must be in 0..{maximum}, got {value}")
    return value


def _base_options(
    *,
    enable_sctp: bool,
    num_sctp_streams: NumSctpStreams,
    max_sctp_message_size: int,
    sctp_send_buffer_size: int,
    is_data_channel: bool,
    initial_available_outgoing_bitrate: int | None = None,
) -> OptionsT:
    options = OptionsT()
    options.enableSctp = bool(enable_sctp)
    options.numSctpStreams = _check_num_sctp_streams(num_sctp_streams)
    options.maxSctpMessageSize = _check_uint(max_sctp_message_size, "max_sctp_message_size")
    options.sctpSendBufferSize = _check_uint(sctp_send_buffer_size, "sctp_send_buffer_size")
    options.isDataChannel = is_data_channel
    if initial_available_outgoing_bitrate is not None:
        options.initialAvailableOutgoingBitrate = _check_uint(
            initial_available_outgoing_bitrate, "initial_available_outgoing_bitrate"
        )
    return options


def _media_base_options(
    enable_sctp: bool,
    num_sctp_streams: NumSctpStreams | None,
    max_sctp_message_size: int,
    sctp_send_buffer_size: int,
) -> OptionsT:
    """The base options of a plain or pipe transport (no data channel)."""
    return _base_options(
        enable_sctp=enable_sctp,
        num_sctp_streams=num_sctp_streams or {"OS": 1024, "MIS": 1024},
        max_sctp_message_size=max_sctp_message_size,
        sctp_send_buffer_size=sctp_send_buffer_size,
        is_data_channel=False,
    )


#: The option tables of transport creations (apps repeat a few option sets).
_prepacked_options = PrepackedCache(64).get


def validate_listen_choice(webrtc_server: Any, listen_infos: Any, listen_ips: Any) -> None:
    """TypeError unless exactly one of create_webrtc_transport()'s ways to listen is
    given (None: not given), as mediasoup's Node library says it."""
    given = sum(x is not None for x in (webrtc_server, listen_infos, listen_ips))
    if not given:
        raise TypeError(
            "missing webrtc_server, listen_infos and listen_ips (one of them is mandatory)"
        )
    if given > 1:
        raise TypeError("only one of webrtc_server, listen_infos and listen_ips must be given")


def _single_listen_info(
    listen_info: ListenInfo | None,
    listen_ip: str | TransportListenIp | None,
    port: int | None,
    protocol: TransportProtocol = "udp",
) -> ListenInfo:
    if listen_info is None and listen_ip is None:
        raise TypeError("missing listen_info and listen_ip (one of them is mandatory)")
    if listen_info is not None and listen_ip is not None:
        raise TypeError("only one of listen_info and listen_ip must be given")
    if listen_info is not None:
        validate_listen_info(listen_info, "listen_info")
        return listen_info
    info = listen_ip_to_listen_info(listen_ip, protocol, "listen_ip")
    if port is not None:
        info["port"] = port
    validate_listen_info(info, "listen_ip")
    return info


class Router(EventSource):
    """A mediasoup Router. Create with ``Worker.create_router()``."""

    def __init__(
        self,
        *,
        router_id: str,
        rtp_capabilities: RtpCapabilities,
        channel: Channel,
        app_data: dict[str, Any] | None,
    ) -> None:
        self._id = router_id
        self._rtp_capabilities = rtp_capabilities
        self._channel = channel
        self._closed = False
        self.app_data: dict[str, Any] = app_data if app_data is not None else {}
        self._book = RouterBook(lambda: self._rtp_capabilities)
        # The book's maps, which the transports keep up to date.
        self._transports: dict[str, Transport] = self._book.transports
        self._producers: dict[str, Producer] = self._book.producers
        self._rtp_observers: dict[str, RtpObserver] = {}
        self._data_producers: dict[str, DataProducer] = self._book.data_producers
        #: The aliases of each table (those keys only: the layers above list them
        #: without a walk of every producer).
        self._other_keys: dict[str, set[str]] = {"producers": set(), "dataProducers": set()}
        self._pipe_pairs: dict[str, asyncio.Future[dict[str, PipeTransport]]] = {}
        self.events = EventEmitter()
        self.observer = EventEmitter()

    @property
    def id(self) -> str:
        return self._id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def rtp_capabilities(self) -> RtpCapabilities:
        return self._rtp_capabilities

    @property
    def transports_for_testing(self) -> dict[str, Transport]:
        return self._transports

    def __repr__(self) -> str:
        return f"<Router id={self._id} closed={self._closed}>"

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidStateError("Router closed")

    # -- closing -----------------------------------------------------------------------

    def _close_children(self) -> None:
        for transport in list(self._transports.values()):
            transport.router_closed()
        self._transports.clear()
        self._producers.clear()
        for rtp_observer in list(self._rtp_observers.values()):
            rtp_observer.router_closed()
        self._rtp_observers.clear()
        self._data_producers.clear()
        # Pipe pairs being made are not cancelled (their waiters would get CancelledError
        # and the other router could keep its end): they fail with InvalidStateError as
        # this router's transport cannot be made or connected, and close the other end.
        self._pipe_pairs.clear()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        request = CloseRouterRequestT()
        request.routerId = self._id
        self._channel.request_nowait(Method.WORKER_CLOSE_ROUTER, "", request)
        self._close_children()
        self.events.emit("@close")
        self.observer.emit("close")

    def worker_closed(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_children()
        self.events.emit("workerclose")
        self.observer.emit("close")

    async def dump(self) -> RouterDump:
        self._check_open()
        body = await self._channel.request(Method.ROUTER_DUMP, self._id)
        return parse_router_dump(body)

    # -- transports --------------------------------------------------------------------

    def _transport_kwargs(self, transport_id: str, app_data: dict[str, Any] | None) -> Any:
        return {
            "router_id": self._id,
            "transport_id": transport_id,
            "channel": self._channel,
            "app_data": app_data,
            "book": self._book,
        }

    async def _make_transport(self, method: int, transport_id: str, request: Any) -> Any:
        close = CloseTransportRequestT()
        close.transportId = transport_id
        return await self._channel.request_making(
            method, self._id, request, (Method.ROUTER_CLOSE_TRANSPORT, self._id, close)
        )

    async def _make_rtp_observer(self, method: int, observer_id: str, request: Any) -> None:
        close = CloseRtpObserverRequestT(rtpObserverId=observer_id)
        await self._channel.request_making(
            method, self._id, request, (Method.ROUTER_CLOSE_RTPOBSERVER, self._id, close)
        )

    def _check_still_open(self, child: Transport | RtpObserver) -> None:
        """InvalidStateError when this router closed while the worker made ``child`` (the
        worker closed that with the router): it is marked closed, not handed out."""
        if self._closed:
            child.router_closed()
            raise InvalidStateError("Router closed")

    def _register_transport(self, transport: Transport) -> None:
        self._check_still_open(transport)
        # It leaves the book itself when it closes.
        self._transports[transport.id] = transport
        self.observer.emit("newtransport", transport)

    async def create_webrtc_transport(
        self,
        *,
        webrtc_server: WebRtcServer | None = None,
        listen_infos: list[ListenInfo] | None = None,
        listen_ips: list[str | TransportListenIp] | None = None,
        port: int | None = None,
        enable_udp: bool | None = None,
        enable_tcp: bool | None = None,
        prefer_udp: bool = False,
        prefer_tcp: bool = False,
        initial_available_outgoing_bitrate: int = 600000,
        enable_sctp: bool = False,
        num_sctp_streams: NumSctpStreams | None = None,
        max_sctp_message_size: int = 262144,
        sctp_send_buffer_size: int = 262144,
        ice_consent_timeout: int = 30,
        app_data: dict[str, Any] | None = None,
    ) -> WebRtcTransport:
        self._check_open()
        validate_listen_choice(webrtc_server, listen_infos, listen_ips)
        validate_app_data(app_data)
        _check_uint(ice_consent_timeout, "ice_consent_timeout", 255)
        if webrtc_server is not None:
            if not isinstance(webrtc_server, WebRtcServer):
                raise TypeError("webrtc_server must be a WebRtcServer")
            if webrtc_server.closed:
                raise InvalidStateError("WebRtcServer closed")
            if webrtc_server._channel is not self._channel:
                # The worker would refuse it ("wrong webRtcServerId"): its transports
                # share its sockets, so its worker.
                raise InvalidValueError("webrtc_server is of another Worker than this Router")
            enable_udp = True if enable_udp is None else enable_udp
            enable_tcp = True if enable_tcp is None else enable_tcp
        else:
            enable_udp = True if enable_udp is None else enable_udp
            enable_tcp = False if enable_tcp is None else enable_tcp
        if listen_ips is not None:
            if not isinstance(listen_ips, list) or not listen_ips:
                raise TypeError("listen_ips must be a non-empty list")
            protocols: list[TransportProtocol] = []
            if enable_udp and (prefer_udp or not enable_tcp or not prefer_tcp):
                protocols.append("udp")
                if enable_tcp:
                    protocols.append("tcp")
            elif enable_tcp and ((prefer_tcp and not prefer_udp) or not enable_udp):
                protocols.append("tcp")
                if enable_udp:
                    protocols.append("udp")
            else:
                raise TypeError("listen_ips with enable_udp and enable_tcp both False")
            listen_infos = []
            for i, listen_ip in enumerate(listen_ips):
                for protocol in protocols:
                    info = listen_ip_to_listen_info(listen_ip, protocol, f"listen_ips[{i}]")
                    if port is not None:
                        info["port"] = port
                    listen_infos.append(info)
        if listen_infos is not None:
            validate_listen_infos(listen_infos)

        def build() -> WebRtcTransportOptionsT:
            options = WebRtcTransportOptionsT()
            options.base = _base_options(
                enable_sctp=enable_sctp,
                num_sctp_streams=num_sctp_streams or {"OS": 1024, "MIS": 1024},
                max_sctp_message_size=max_sctp_message_size,
                sctp_send_buffer_size=sctp_send_buffer_size,
                is_data_channel=True,
                initial_available_outgoing_bitrate=initial_available_outgoing_bitrate,
            )
            if webrtc_server is not None:
                listen_server = ListenServerT()
                listen_server.webRtcServerId = webrtc_server.id
                options.listenType = Listen.ListenServer
                options.listen = listen_server
            else:
                individual = ListenIndividualT()
                individual.listenInfos = [listen_info_to_fbs(i) for i in listen_infos or []]
                options.listenType = Listen.ListenIndividual
                options.listen = individual
            options.enableUdp = bool(enable_udp)
            options.enableTcp = bool(enable_tcp)
            options.preferUdp = bool(prefer_udp)
            options.preferTcp = bool(prefer_tcp)
            options.iceConsentTimeout = ice_consent_timeout
            return options

        transport_id = new_id()
        request = CreateWebRtcTransportRequestT()
        request.transportId = transport_id
        request.options = _prepacked_options(
            (
                "webrtc",
                webrtc_server.id if webrtc_server is not None else None,
                listen_infos,
                enable_udp,
                enable_tcp,
                prefer_udp,
                prefer_tcp,
                initial_available_outgoing_bitrate,
                enable_sctp,
                num_sctp_streams,
                max_sctp_message_size,
                sctp_send_buffer_size,
                ice_consent_timeout,
            ),
            build,
        )
        method = (
            Method.ROUTER_CREATE_WEBRTCTRANSPORT_WITH_SERVER
            if webrtc_server is not None
            else Method.ROUTER_CREATE_WEBRTCTRANSPORT
        )
        body = await self._make_transport(method, transport_id, request)
        transport = WebRtcTransport(
            **self._transport_kwargs(transport_id, app_data),
            data=parse_webrtc_transport_dump(body),
        )
        if webrtc_server is not None and webrtc_server.closed and not self._closed:
            # Closed while the worker made it: the worker closed it with the server.
            transport.listen_server_closed()
            raise InvalidStateError("WebRtcServer closed")
        self._register_transport(transport)
        if webrtc_server is not None:
            webrtc_server.handle_webrtc_transport(transport)
        return transport

    async def create_plain_transport(
        self,
        *,
        listen_info: ListenInfo | None = None,
        rtcp_listen_info: ListenInfo | None = None,
        listen_ip: str | TransportListenIp | None = None,
        port: int | None = None,
        rtcp_mux: bool = True,
        comedia: bool = False,
        enable_sctp: bool = False,
        num_sctp_streams: NumSctpStreams | None = None,
        max_sctp_message_size: int = 262144,
        sctp_send_buffer_size: int = 262144,
        enable_srtp: bool = False,
        srtp_crypto_suite: SrtpCryptoSuite = "AES_CM_128_HMAC_SHA1_80",
        app_data: dict[str, Any] | None = None,
    ) -> PlainTransport:
        self._check_open()
        info = _single_listen_info(listen_info, listen_ip, port)
        validate_app_data(app_data)
        if rtcp_listen_info is not None:
            validate_listen_info(rtcp_listen_info, "rtcp_listen_info")
            if rtcp_mux:
                logger.warning(
                    "create_plain_transport() | rtcp_mux ignored: rtcp_listen_info given"
                )
                rtcp_mux = False

        def build() -> PlainTransportOptionsT:
            options = PlainTransportOptionsT()
            options.base = _media_base_options(
                enable_sctp, num_sctp_streams, max_sctp_message_size, sctp_send_buffer_size
            )
            options.listenInfo = listen_info_to_fbs(info)
            if rtcp_listen_info is not None:
                options.rtcpListenInfo = listen_info_to_fbs(rtcp_listen_info)
            options.rtcpMux = bool(rtcp_mux)
            options.comedia = bool(comedia)
            options.enableSrtp = bool(enable_srtp)
            options.srtpCryptoSuite = crypto_suite_to_fbs(srtp_crypto_suite)
            return options

        transport_id = new_id()
        request = CreatePlainTransportRequestT()
        request.transportId = transport_id
        request.options = _prepacked_options(
            (
                "plain",
                info,
                rtcp_listen_info,
                rtcp_mux,
                comedia,
                enable_sctp,
                num_sctp_streams,
                max_sctp_message_size,
                sctp_send_buffer_size,
                enable_srtp,
                srtp_crypto_suite,
            ),
            build,
        )
        body = await self._make_transport(
            Method.ROUTER_CREATE_PLAINTRANSPORT, transport_id, request
        )
        transport = PlainTransport(
            **self._transport_kwargs(transport_id, app_data),
            data=parse_plain_transport_dump(body),
        )
        self._register_transport(transport)
        return transport

    async def create_pipe_transport(
        self,
        *,
        listen_info: ListenInfo | None = None,
        listen_ip: str | TransportListenIp | None = None,
        port: int | None = None,
        enable_sctp: bool = False,
        num_sctp_streams: NumSctpStreams | None = None,
        max_sctp_message_size: int = 268435456,
        sctp_send_buffer_size: int = 268435456,
        enable_rtx: bool = False,
        enable_srtp: bool = False,
        app_data: dict[str, Any] | None = None,
    ) -> PipeTransport:
        self._check_open()
        info = _single_listen_info(listen_info, listen_ip, port)
        validate_app_data(app_data)

        def build() -> PipeTransportOptionsT:
            options = PipeTransportOptionsT()
            options.base = _media_base_options(
                enable_sctp, num_sctp_streams, max_sctp_message_size, sctp_send_buffer_size
            )
            options.listenInfo = listen_info_to_fbs(info)
            options.enableRtx = bool(enable_rtx)
            options.enableSrtp = bool(enable_srtp)
            return options

        transport_id = new_id()
        request = CreatePipeTransportRequestT()
        request.transportId = transport_id
        request.options = _prepacked_options(
            (
                "pipe",
                info,
                enable_sctp,
                num_sctp_streams,
                max_sctp_message_size,
                sctp_send_buffer_size,
                enable_rtx,
                enable_srtp,
            ),
            build,
        )
        body = await self._make_transport(Method.ROUTER_CREATE_PIPETRANSPORT, transport_id, request)
        transport = PipeTransport(
            **self._transport_kwargs(transport_id, app_data),
            data=parse_pipe_transport_dump(body),
        )
        self._register_transport(transport)
        return transport

    async def create_direct_transport(
        self, *, max_message_size: int = 262144, app_data: dict[str, Any] | None = None
    ) -> DirectTransport:
        self._check_open()
        if isinstance(max_message_size, bool) or not isinstance(max_message_size, int):
            raise TypeError("if given, max_message_size must be a positive integer")
        if max_message_size < 0:
            raise InvalidValueError("if given, max_message_size must be a positive integer")
        validate_app_data(app_data)
        base = OptionsT()
        base.direct = True
        base.maxMessageSize = max_message_size
        options = DirectTransportOptionsT()
        options.base = base
        transport_id = new_id()
        request = CreateDirectTransportRequestT()
        request.transportId = transport_id
        request.options = options
        body = await self._make_transport(
            Method.ROUTER_CREATE_DIRECTTRANSPORT, transport_id, request
        )
        transport = DirectTransport(
            **self._transport_kwargs(transport_id, app_data),
            data=parse_direct_transport_dump(body),
        )
        self._register_transport(transport)
        return transport

    # -- piping ------------------------------------------------------------------------

    async def pipe_to_router(
        self,
        *,
        router: Router,
        producer_id: str | None = None,
        data_producer_id: str | None = None,
        keep_id: bool = True,
        listen_info: ListenInfo | None = None,
        listen_ip: str | TransportListenIp | None = None,
        enable_sctp: bool = True,
        num_sctp_streams: NumSctpStreams | None = None,
        enable_rtx: bool = False,
        enable_srtp: bool = False,
    ) -> PipeToRouterResult:
        """Pipe a producer or a data producer of this router into ``router``.

        One PipeTransport pair per router pair is created on first use and reused.
        """
        self._check_open()
        if listen_info is None and listen_ip is None:
            listen_info = {"protocol": "udp", "ip": "127.0.0.1"}
        if listen_info is not None and listen_ip is not None:
            raise TypeError("only one of listen_info and listen_ip must be given")
        if not producer_id and not data_producer_id:
            raise TypeError("missing producer_id or data_producer_id")
        if producer_id and data_producer_id:
            raise TypeError("just producer_id or data_producer_id can be given")
        if not isinstance(keep_id, bool):
            raise TypeError("keep_id must be a bool")
        if not isinstance(router, Router):
            raise TypeError("router must be a Router")
        if router is self:
            raise TypeError("cannot use this Router as destination")
        if router.closed:
            raise InvalidStateError("destination Router closed")
        if keep_id and router._channel is self._channel:
            # The worker would refuse the piped producer after the pipe is made (Node's
            # mediasoup lets it): one object per id in a worker.
            raise TypeError(
                "keep_id: the destination Router is in the same Worker, where the piped "
                "producer cannot keep its id; pass keep_id=False or a Router of another Worker"
            )
        info = _single_listen_info(listen_info, listen_ip, None)
        producer = data_producer = None
        if producer_id:
            producer = self._producers.get(producer_id)
            if producer is None:
                raise InvalidValueError(f'Producer with id "{producer_id}" not found')
        else:
            assert data_producer_id is not None
            data_producer = self._data_producers.get(data_producer_id)
            if data_producer is None:
                raise InvalidValueError(f'DataProducer with id "{data_producer_id}" not found')
        pair = await self._get_pipe_pair(
            router,
            info,
            enable_sctp=enable_sctp,
            num_sctp_streams=num_sctp_streams or {"OS": 1024, "MIS": 1024},
            enable_rtx=enable_rtx,
            enable_srtp=enable_srtp,
        )
        local, remote = pair[self._id], pair[router.id]
        if producer is not None:
            return await self._pipe_producer(producer, local, remote, keep_id)
        assert data_producer is not None
        return await self._pipe_data_producer(data_producer, local, remote, keep_id)

    async def _get_pipe_pair(
        self,
        router: Router,
        info: ListenInfo,
        **options: Any,
    ) -> dict[str, PipeTransport]:
        key = router.id
        future = self._pipe_pairs.get(key)
        if future is None or not _reusable(future):
            # A pair that failed (or closed) is forgotten by callbacks of the loop turn
            # after: a caller in between makes a new one too.
            future = asyncio.ensure_future(self._create_pipe_pair(router, info, **options))
            self._pipe_pairs[key] = future
            router._add_pipe_transport_pair(self._id, future)

            def forget(f: asyncio.Future[dict[str, PipeTransport]]) -> None:
                if f.cancelled() or f.exception() is not None:
                    if self._pipe_pairs.get(key) is f:
                        del self._pipe_pairs[key]

            future.add_done_callback(forget)
        return await asyncio.shield(future)

    async def _create_pipe_pair(
        self, router: Router, info: ListenInfo, **options: Any
    ) -> dict[str, PipeTransport]:
        key = router.id
        local_t, remote_t = await open_pipe_pair(
            self.create_pipe_transport(listen_info=info, **options),
            router.create_pipe_transport(listen_info=info, **options),
        )

        this = asyncio.current_task()  # the pair's future in both routers (_get_pipe_pair)

        def forget() -> None:
            # Only this pair: a router holds a newer one after a failed or closed one.
            if self._pipe_pairs.get(key) is this:
                del self._pipe_pairs[key]

        def on_local_close() -> None:
            remote_t.close()
            forget()

        def on_remote_close() -> None:
            local_t.close()
            forget()

        local_t.observer.on("close", on_local_close)
        remote_t.observer.on("close", on_remote_close)
        return {self._id: local_t, router.id: remote_t}

    def _add_pipe_transport_pair(
        self, key: str, future: asyncio.Future[dict[str, PipeTransport]]
    ) -> None:
        # Both routers enter a pair in the same call (_get_pipe_pair) and drop it on the
        # same close, so the other router never holds one this router has not (but one
        # it has just replaced, that failed or closed, which goes a loop turn later).
        held = self._pipe_pairs.get(key)
        assert held is None or not _reusable(held), "pipe transport pair key already in Router"
        self._pipe_pairs[key] = future

        def forget() -> None:
            if self._pipe_pairs.get(key) is future:
                del self._pipe_pairs[key]

        def done(f: asyncio.Future[dict[str, PipeTransport]]) -> None:
            # This runs a loop turn after the pair is made: its end here may have closed
            # in between (its worker died, the app closed it), and would be kept forever.
            if f.cancelled() or f.exception() is not None or f.result()[self._id].closed:
                forget()
                return
            f.result()[self._id].observer.on("close", forget)

        future.add_done_callback(done)

    async def _pipe_producer(
        self, producer: Producer, local: PipeTransport, remote: PipeTransport, keep_id: bool
    ) -> PipeToRouterResult:
        pipe_consumer: Consumer | None = None
        pipe_producer: Producer | None = None
        try:
            pipe_consumer = await local.consume(producer_id=producer.id)
            pipe_producer = await remote.produce(
                id=producer.id if keep_id else new_id(),
                kind=pipe_consumer.kind,
                rtp_parameters=pipe_consumer.rtp_parameters,
                paused=pipe_consumer.producer_paused,
                app_data=producer.app_data,
            )
            # Linked as soon as both exist: either end closing from now on (the original
            # closing, the app) closes the other, during the pause sync below included.
            pipe_consumer.observer.on("close", pipe_producer.close)
            pipe_producer.observer.on("close", pipe_consumer.close)
            if producer.closed or pipe_consumer.closed:
                pass  # refused below, nothing to sync
            elif pipe_producer.paused != producer.paused:
                if producer.paused:
                    await pipe_producer.pause()
                else:
                    await pipe_producer.resume()
            if producer.closed:
                raise InvalidStateError("original Producer closed")
            if pipe_consumer.closed:
                # Closed before its link above was made, or during the pause sync.
                raise InvalidStateError("pipe Consumer closed while the pipe was being made")
        except BaseException:
            if pipe_consumer is not None:
                pipe_consumer.close()
            if pipe_producer is not None:
                pipe_producer.close()
            raise
        consumer, piped = pipe_consumer, pipe_producer
        consumer.observer.on("pause", lambda: _spawn_quiet(piped.pause()))
        consumer.observer.on("resume", lambda: _spawn_quiet(piped.resume()))
        return {"pipeConsumer": consumer, "pipeProducer": piped}

    async def _pipe_data_producer(
        self,
        data_producer: DataProducer,
        local: PipeTransport,
        remote: PipeTransport,
        keep_id: bool,
    ) -> PipeToRouterResult:
        pipe_consumer: DataConsumer | None = None
        pipe_producer: DataProducer | None = None
        try:
            pipe_consumer = await local.consume_data(data_producer_id=data_producer.id)
            pipe_producer = await remote.produce_data(
                id=data_producer.id if keep_id else new_id(),
                sctp_stream_parameters=pipe_consumer.sctp_stream_parameters,
                label=pipe_consumer.label,
                protocol=pipe_consumer.protocol,
                app_data=data_producer.app_data,
            )
            pipe_consumer.observer.on("close", pipe_producer.close)
            pipe_producer.observer.on("close", pipe_consumer.close)
            # Unlike mediasoup's Node library, returned once the pair's SCTP association
            # is up: the worker starts it with the pair's first stream (the consumer
            # above) and drops what the pipe consumer is sent before, so a message sent
            # as soon as this returns, between workers, was lost about one time in two.
            await sctp_connected(local)
            await sctp_connected(remote)
            if data_producer.closed:
                raise InvalidStateError("original DataProducer closed")
            if pipe_consumer.closed:
                raise InvalidStateError("pipe DataConsumer closed while the pipe was being made")
        except BaseException:
            if pipe_consumer is not None:
                pipe_consumer.close()
            if pipe_producer is not None:
                pipe_producer.close()
            raise
        return {"pipeDataConsumer": pipe_consumer, "pipeDataProducer": pipe_producer}

    # -- aliases (for the layers above) ---------------------------------------------------

    def has_producer(self, producer_id: str) -> bool:
        """Whether consume(producer_id=...) finds it in this router (aliases included)."""
        return producer_id in self._producers

    def has_data_producer(self, data_producer_id: str) -> bool:
        """As has_producer(), for consume_data()."""
        return data_producer_id in self._data_producers

    def alias_producer(self, key: str, producer: Producer) -> None:
        """Make ``producer`` findable as ``key`` too (consume, pipe_to_router, observers).

        Producer ids are unique per worker, not per router: a copy of a producer piped
        into a worker that already hosts that id needs another id, and Mafalda keeps
        the original id working through an alias. It goes when the producer closes.
        """
        self._alias(key, producer, self._producers, "Producer", "producers")

    def alias_data_producer(self, key: str, data_producer: DataProducer) -> None:
        """As alias_producer(), for a data producer."""
        self._alias(key, data_producer, self._data_producers, "DataProducer", "dataProducers")

    def _alias(self, key: str, source: Any, table: dict[str, Any], kind: str, name: str) -> None:
        self._check_open()
        if not isinstance(key, str) or not key:
            raise TypeError("key must be a non-empty string")
        source_id: str = getattr(source, "id", "")
        if source_id not in table or table[source_id] is not source:
            raise InvalidValueError(f"{kind} {source_id or source!r} is not of this router")
        held = table.get(key)
        if held is source:
            return  # one alias, one listener, however often it is asked for
        if held is not None and held.id == key:
            # An alias may move to another source, but never hide one by its own id.
            raise TypeError(f'a {kind} with same id "{key}" already exists')
        table[key] = source
        others = self._other_keys[name]
        others.add(key)

        def drop() -> None:
            if table.get(key) is source:
                del table[key]
                others.discard(key)

        source.observer.on("close", drop)

    # -- RTP observers -------------------------------------------------------------------

    def _register_rtp_observer(self, rtp_observer: RtpObserver) -> None:
        self._check_still_open(rtp_observer)
        oid = rtp_observer.id
        self._rtp_observers[oid] = rtp_observer
        rtp_observer.events.on("@close", lambda: self._rtp_observers.pop(oid, None))
        self.observer.emit("newrtpobserver", rtp_observer)

    async def create_active_speaker_observer(
        self, *, interval: int = 300, app_data: dict[str, Any] | None = None
    ) -> ActiveSpeakerObserver:
        self._check_open()
        _check_uint(interval, "interval", 65535)
        validate_app_data(app_data)
        observer_id = new_id()
        options = ActiveSpeakerObserverOptionsT()
        options.interval = interval
        request = CreateActiveSpeakerObserverRequestT()
        request.rtpObserverId = observer_id
        request.options = options
        await self._make_rtp_observer(
            Method.ROUTER_CREATE_ACTIVESPEAKEROBSERVER, observer_id, request
        )
        rtp_observer = ActiveSpeakerObserver(
            router_id=self._id,
            rtp_observer_id=observer_id,
            channel=self._channel,
            app_data=app_data,
            get_producer_by_id=self._producers.get,
        )
        self._register_rtp_observer(rtp_observer)
        return rtp_observer

    async def create_audio_level_observer(
        self,
        *,
        max_entries: int = 1,
        threshold: int = -80,
        interval: int = 1000,
        app_data: dict[str, Any] | None = None,
    ) -> AudioLevelObserver:
        self._check_open()
        if isinstance(max_entries, bool) or not isinstance(max_entries, int):
            raise TypeError("if given, max_entries must be a positive integer")
        if not 0 < max_entries <= 65535:
            raise InvalidValueError("if given, max_entries must be a positive integer")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise TypeError("if given, threshold must be a number")
        if not -127 <= threshold <= 0:
            raise InvalidValueError(
                "if given, threshold must be a negative number greater than -127"
            )
        _check_uint(interval, "interval", 65535)
        validate_app_data(app_data)
        observer_id = new_id()
        options = AudioLevelObserverOptionsT()
        options.maxEntries = max_entries
        options.threshold = int(threshold)
        options.interval = interval
        request = CreateAudioLevelObserverRequestT()
        request.rtpObserverId = observer_id
        request.options = options
        await self._make_rtp_observer(Method.ROUTER_CREATE_AUDIOLEVELOBSERVER, observer_id, request)
        rtp_observer = AudioLevelObserver(
            router_id=self._id,
            rtp_observer_id=observer_id,
            channel=self._channel,
            app_data=app_data,
            get_producer_by_id=self._producers.get,
        )
        self._register_rtp_observer(rtp_observer)
        return rtp_observer

    # -- capabilities ------------------------------------------------------------------

    def can_consume(self, *, producer_id: str, rtp_capabilities: RtpCapabilities) -> bool:
        producer = self._producers.get(producer_id)
        consumable = None if producer is None else producer.consumable_rtp_parameters
        return answer_can_consume(producer_id, consumable, rtp_capabilities, logger)

    def update_media_codecs(self, media_codecs: list[RouterRtpCodecCapability]) -> None:
        self._check_open()
        self._rtp_capabilities = ortc.generate_router_rtp_capabilities(copy.deepcopy(media_codecs))


def answer_can_consume(
    producer_id: str,
    consumable_rtp_parameters: Any,
    rtp_capabilities: Any,
    log: logging.Logger,
) -> bool:
    """Router.can_consume() once the producer's consumable RTP parameters are known (None:
    no such producer), for every Router-shaped class: never raises, logs why not."""
    if consumable_rtp_parameters is None:
        log.error('can_consume() | Producer with id "%s" not found', producer_id)
        return False
    try:
        return ortc.can_consume(consumable_rtp_parameters, copy.deepcopy(rtp_capabilities))
    except (TypeError, ValueError) as error:
        log.error("can_consume() | invalid rtp_capabilities: %s", error)
        return False


def _reusable(pair: asyncio.Future[dict[str, PipeTransport]]) -> bool:
    """Whether a pipe transport pair a router holds may serve a pipe_to_router(): one
    being made (its waiters get its outcome, as Node's), or made with both ends open."""
    if not pair.done():
        return True
    if pair.cancelled() or pair.exception() is not None:
        return False
    first, second = pair.result().values()
    return not (first.closed or second.closed)


_background: set[asyncio.Task[Any]] = set()


def _spawn_quiet(coro: Any) -> None:
    """Run a follow-up request (pipe pause/resume) without letting its failure escape."""
    task = asyncio.ensure_future(coro)
    _background.add(task)

    def done(t: asyncio.Task[Any]) -> None:
        _background.discard(t)
        if not t.cancelled() and t.exception() is not None:
            logger.debug("pipe follow-up failed: %s", t.exception())

    task.add_done_callback(done)
