"""Bad input to transports: an error naming what is wrong, raised before any request
reaches the worker (the channel's request counter does not move), and the transport still
usable after it; and parents closed while the worker makes a child. Each runs on a local
router and through Remote Mediasoup (a loopback server: the error comes back with its
class and message, and the server's worker channel did not move either)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from mafalda.mediasoup import InvalidStateError, Router, Worker
from mafalda.mediasoup.channel import Channel
from mafalda.mediasoup.errors import InvalidValueError
from mafalda.mediasoup.transport import Transport, validate_listen_info
from mafalda.mediasoup.worker import validate_worker_settings
from mafalda.remote import RemoteMediasoup, RemoteServer, connect, serve
from mafalda.remote.proxy import RemoteObject

from .conftest import opus_rtp_parameters, served_by

LISTEN: dict[str, Any] = {"protocol": "udp", "ip": "127.0.0.1"}
MEDIA_CODECS: list[Any] = [
    {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2}
]


@pytest.mark.parametrize(
    ("info", "error", "message"),
    [
        ("udp://127.0.0.1", TypeError, "listen_info must be a dict"),
        ({"protocol": "sctp", "ip": "127.0.0.1"}, ValueError, "listen_info.protocol must be"),
        ({"protocol": "udp"}, TypeError, "missing listen_info.ip"),
        ({"protocol": "udp", "ip": "localhost"}, ValueError, "'localhost' is not an IP"),
        ({**LISTEN, "announcedAddress": 1}, TypeError, "listen_info.announcedAddress must"),
        ({**LISTEN, "announcedIp": ["1.2.3.4"]}, TypeError, "listen_info.announcedIp must"),
        ({**LISTEN, "port": "4443"}, TypeError, "listen_info.port must be an integer"),
        ({**LISTEN, "port": True}, TypeError, "listen_info.port must be an integer"),
        ({**LISTEN, "port": 65536}, ValueError, "listen_info.port must be in 0..65535"),
        ({**LISTEN, "portRange": (1, 2)}, TypeError, "listen_info.portRange must be a dict"),
        ({**LISTEN, "portRange": {"min": 1}}, TypeError, "listen_info.portRange.max must"),
        (
            {**LISTEN, "portRange": {"min": 2000, "max": 1000}},
            ValueError,
            "portRange.min is greater than listen_info.portRange.max",
        ),
        ({**LISTEN, "flags": ["ipv6Only"]}, TypeError, "listen_info.flags must be a dict"),
        ({**LISTEN, "sendBufferSize": -1}, ValueError, "listen_info.sendBufferSize must be"),
        ({**LISTEN, "recvBufferSize": 1.5}, ValueError, "listen_info.recvBufferSize must be"),
    ],
)
def test_listen_info_errors_name_the_field(info: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        validate_listen_info(info)


def _worker_settings(**wrong: Any) -> None:
    settings: dict[str, Any] = {
        "log_level": None,
        "log_tags": None,
        "rtc_min_port": 10000,
        "rtc_max_port": 59999,
        "dtls_certificate_file": None,
        "dtls_private_key_file": None,
        "app_data": None,
    }
    validate_worker_settings(**{**settings, **wrong})


@pytest.mark.parametrize(
    "call",
    [
        lambda: validate_listen_info({"protocol": "sctp", "ip": "127.0.0.1"}),
        lambda: validate_listen_info({**LISTEN, "portRange": {"min": 9, "max": 8}}),
        lambda: _worker_settings(log_level="chatty"),
        lambda: _worker_settings(rtc_min_port=0),
    ],
    ids=["protocol", "portRange", "log_level", "rtc_min_port"],
)
def test_a_wrong_value_is_a_type_error_as_in_mediasoup_and_a_value_error(call: Any) -> None:
    """mediasoup throws TypeError for a value of the right type that is wrong; Python
    code expects ValueError: the error is both (InvalidValueError)."""
    with pytest.raises(InvalidValueError) as error:
        call()
    assert isinstance(error.value, TypeError) and isinstance(error.value, ValueError)


def test_valid_listen_info_passes() -> None:
    validate_listen_info(
        {
            **LISTEN,
            "announcedAddress": "example.com",
            "port": 0,
            "portRange": {"min": 1000, "max": 1000},
            "flags": {"ipv6Only": False},
            "sendBufferSize": 0,
            "recvBufferSize": None,
        }
    )


#: The loopback server behind each remote client's connection, to find served objects.
_SERVERS: dict[Any, RemoteServer] = {}


@pytest.fixture(params=["mediasoup", "remote"])
async def host(request: pytest.FixtureRequest, worker: Worker) -> AsyncIterator[Worker]:
    """The worker the ``router`` lives on: local, or a Remote Mediasoup client's."""
    if request.param == "mediasoup":
        yield worker
        return
    server = await serve(token="bad-input", grace_period=0)
    client = await connect(server.url, token="bad-input")
    assert isinstance(client, RemoteMediasoup)
    _SERVERS[client._connection] = server
    try:
        yield await client.create_worker(log_level="warn")  # type: ignore[misc]
    finally:
        del _SERVERS[client._connection]
        await client.aclose()
        await server.close()


@pytest.fixture
async def router(host: Worker) -> AsyncIterator[Router]:
    yield await host.create_router(media_codecs=MEDIA_CODECS)


def served(obj: Any) -> Any:
    """The library object behind ``obj`` (itself, or the server's for a remote proxy)."""
    if not isinstance(obj, RemoteObject):
        return obj
    return served_by(_SERVERS[obj._connection], obj)


def channel_of(obj: Any) -> Channel:
    channel: Channel = served(obj)._channel
    return channel


async def _refused(
    transport: Transport,
    call: Callable[[], Awaitable[Any]],
    error: type[Exception],
    message: str,
) -> None:
    """``call()`` raises ``error`` matching ``message`` and sends nothing to the worker."""
    channel = channel_of(transport)
    sent = channel._next_id
    with pytest.raises(error, match=message):
        await call()
    assert channel._next_id == sent
    assert not transport.closed


async def test_listen_info_refused_by_create_plain_transport(router: Router) -> None:
    with pytest.raises(ValueError, match="listen_info.port must be in 0..65535"):
        await router.create_plain_transport(listen_info={**LISTEN, "port": -1})
    assert (await router.dump())["transportIds"] == []


@pytest.mark.parametrize(
    ("method", "value", "error", "message"),
    [
        ("set_max_incoming_bitrate", "1000", TypeError, "bitrate must be an integer"),
        ("set_max_outgoing_bitrate", True, TypeError, "bitrate must be an integer"),
        ("set_min_outgoing_bitrate", -1, ValueError, r"bitrate must be in 0..4294967295, got -1"),
        ("set_max_incoming_bitrate", 2**32, ValueError, "bitrate must be in 0..4294967295"),
    ],
)
async def test_bitrates_out_of_range(
    router: Router, method: str, value: Any, error: type[Exception], message: str
) -> None:
    transport = await router.create_plain_transport(listen_info=LISTEN)
    await _refused(transport, lambda: getattr(transport, method)(value), error, message)
    await getattr(transport, method)(100_000)  # still usable


async def test_produce_and_consume_arguments(router: Router) -> None:
    transport = await router.create_plain_transport(listen_info=LISTEN, comedia=True)
    producer = await transport.produce(kind="audio", rtp_parameters=opus_rtp_parameters(1111))
    caps = router.rtp_capabilities
    rtp = opus_rtp_parameters(2222)
    cases: list[tuple[Callable[[], Awaitable[Any]], type[Exception], str]] = [
        (
            lambda: transport.produce(kind="audio", rtp_parameters=rtp, id=producer.id),
            TypeError,
            f'a Producer with same id "{producer.id}" already exists',
        ),
        (
            lambda: transport.produce(kind="data", rtp_parameters=rtp),  # type: ignore[arg-type]
            TypeError,
            'invalid kind "data"',
        ),
        (
            lambda: transport.produce(kind="audio", rtp_parameters=rtp, key_frame_request_delay=-5),
            ValueError,
            "key_frame_request_delay must be in",
        ),
        (
            lambda: transport.consume(producer_id="", rtp_capabilities=caps),
            TypeError,
            "missing producer_id",
        ),
        (
            lambda: transport.consume(producer_id=producer.id, rtp_capabilities=caps, mid=""),
            TypeError,
            "mid must be non empty string",
        ),
        (
            lambda: transport.consume(
                producer_id=producer.id,
                rtp_capabilities=caps,
                preferred_layers={"spatialLayer": "0"},  # type: ignore[typeddict-item]
            ),
            TypeError,
            "preferred_layers.spatialLayer must be an integer",
        ),
        (
            lambda: transport.consume(
                producer_id=producer.id,
                rtp_capabilities=caps,
                preferred_layers={"spatialLayer": True},
            ),
            TypeError,
            "preferred_layers.spatialLayer must be an integer",
        ),
        (
            lambda: transport.consume(
                producer_id=producer.id,
                rtp_capabilities=caps,
                preferred_layers={"spatialLayer": 1, "temporalLayer": 256},
            ),
            ValueError,
            r"preferred_layers.temporalLayer must be in 0..255, got 256",
        ),
        (
            lambda: transport.consume(
                producer_id=producer.id,
                rtp_capabilities=caps,
                preferred_layers=[1],  # type: ignore[arg-type]
            ),
            TypeError,
            "if given, preferred_layers must be a dict",
        ),
        (
            lambda: transport.produce(kind="audio", rtp_parameters=rtp, id=b"x"),  # type: ignore[arg-type]
            TypeError,
            "if given, id must be a non-empty string",
        ),
        (
            lambda: transport.produce(kind="audio", rtp_parameters=rtp, id=""),
            TypeError,
            "if given, id must be a non-empty string",
        ),
        (
            lambda: transport.consume(producer_id="nope", rtp_capabilities=caps),
            ValueError,
            'Producer with id "nope" not found',
        ),
    ]
    for call, error, message in cases:
        await _refused(transport, call, error, message)
    consumer = await transport.consume(producer_id=producer.id, rtp_capabilities=caps)
    assert consumer.producer_id == producer.id


async def test_data_arguments(router: Router) -> None:
    direct = await router.create_direct_transport()
    data_producer = await direct.produce_data(label="chat")
    plain = await router.create_plain_transport(listen_info=LISTEN)  # no SCTP
    cases: list[tuple[Transport, Callable[[], Awaitable[Any]], type[Exception], str]] = [
        (
            direct,
            lambda: direct.produce_data(id=data_producer.id),
            TypeError,
            f'a DataProducer with same id "{data_producer.id}" already exists',
        ),
        (direct, lambda: direct.produce_data(label=5), TypeError, "label must be a string"),  # type: ignore[arg-type]
        (
            direct,
            lambda: direct.produce_data(protocol=b"x"),  # type: ignore[arg-type]
            TypeError,
            "protocol must be a string",
        ),
        (plain, lambda: plain.produce_data(), TypeError, "missing sctp_stream_parameters"),
        (
            direct,
            lambda: direct.consume_data(data_producer_id=""),
            TypeError,
            "missing data_producer_id",
        ),
        (
            direct,
            lambda: direct.consume_data(data_producer_id=data_producer.id, max_packet_life_time=-1),
            TypeError,
            "max_packet_life_time must be a non-negative integer",
        ),
        (
            direct,
            lambda: direct.consume_data(data_producer_id=data_producer.id, max_retransmits=True),
            TypeError,
            "max_retransmits must be a non-negative integer",
        ),
        (
            direct,
            lambda: direct.consume_data(data_producer_id=data_producer.id, max_retransmits=70000),
            ValueError,
            r"max_retransmits must be in 0..65535, got 70000",
        ),
        (
            direct,
            lambda: direct.consume_data(data_producer_id=data_producer.id, ordered="yes"),  # type: ignore[arg-type]
            TypeError,
            "if given, ordered must be a bool",
        ),
        (
            direct,
            lambda: direct.produce_data(id=["x"]),  # type: ignore[arg-type]
            TypeError,
            "if given, id must be a non-empty string",
        ),
        (
            direct,
            lambda: direct.consume_data(data_producer_id=data_producer.id, subchannels=[70000]),
            TypeError,
            "subchannels must be a list of integers in 0..65535",
        ),
        (
            direct,
            lambda: direct.consume_data(data_producer_id="nope"),
            ValueError,
            'DataProducer with id "nope" not found',
        ),
        (
            plain,
            lambda: plain.consume_data(data_producer_id=data_producer.id),
            TypeError,
            r"missing sctpParameters.MIS \(SCTP not enabled on this transport\)",
        ),
    ]
    for transport, call, error, message in cases:
        await _refused(transport, call, error, message)
    data_consumer = await direct.consume_data(data_producer_id=data_producer.id)
    assert data_consumer.data_producer_id == data_producer.id


async def test_sctp_options_on_a_direct_transport_are_ignored_with_a_warning(
    router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    direct = await router.create_direct_transport()
    with caplog.at_level(logging.WARNING, logger="mafalda.mediasoup.transport"):
        data_producer = await direct.produce_data(sctp_stream_parameters={"streamId": 1})
        data_consumer = await direct.consume_data(
            data_producer_id=data_producer.id, ordered=False, max_retransmits=2
        )
    assert data_producer.type == data_consumer.type == "direct"
    assert data_producer.sctp_stream_parameters is None
    assert data_consumer.sctp_stream_parameters is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("sctp_stream_parameters are ignored" in w for w in warnings)
    assert any(
        "ordered, max_packet_life_time and max_retransmits are ignored" in w for w in warnings
    )


async def test_pipe_to_router_arguments(host: Worker, router: Router) -> None:
    other = await host.create_router(media_codecs=MEDIA_CODECS)
    transport = await router.create_plain_transport(listen_info=LISTEN, comedia=True)
    producer = await transport.produce(kind="audio", rtp_parameters=opus_rtp_parameters(1111))
    with pytest.raises(TypeError, match="only one of listen_info and listen_ip must be given"):
        await router.pipe_to_router(
            router=other, producer_id=producer.id, listen_info=LISTEN, listen_ip="127.0.0.1"
        )
    with pytest.raises(TypeError, match="router must be a Router"):
        await router.pipe_to_router(router="other", producer_id=producer.id)  # type: ignore[arg-type]
    other.close()
    with pytest.raises(InvalidStateError, match="destination Router closed"):
        await router.pipe_to_router(router=other, producer_id=producer.id)
    assert (await router.dump())["transportIds"] == [transport.id]  # no pipe transport made


@pytest.mark.parametrize("data", [False, True])
async def test_pipe_keeping_ids_into_the_same_worker_is_refused(
    host: Worker, router: Router, data: bool
) -> None:
    """A piped producer keeps its id by default, and a worker holds one object per id:
    piping into a router of the same worker is refused before anything is made (Node's
    mediasoup makes the pipe, then the worker refuses the producer); keep_id=False works."""
    other = await host.create_router(media_codecs=MEDIA_CODECS)
    if data:
        direct = await router.create_direct_transport()
        original: Any = await direct.produce_data(label="chat")
        pipe = lambda keep: router.pipe_to_router(  # noqa: E731
            router=other, data_producer_id=original.id, keep_id=keep
        )
    else:
        plain = await router.create_plain_transport(listen_info=LISTEN, comedia=True)
        original = await plain.produce(kind="audio", rtp_parameters=opus_rtp_parameters(1111))
        pipe = lambda keep: router.pipe_to_router(  # noqa: E731
            router=other, producer_id=original.id, keep_id=keep
        )
    channel = channel_of(router)
    sent = channel._next_id
    with pytest.raises(TypeError, match="keep_id: the destination Router is in the same Worker"):
        await pipe(True)
    with pytest.raises(TypeError, match="keep_id must be a bool"):
        await pipe("no")
    assert channel._next_id == sent
    assert (await other.dump())["transportIds"] == []
    result = await pipe(False)
    piped = result["pipeDataProducer" if data else "pipeProducer"]
    assert piped is not None and piped.id != original.id


@pytest.mark.parametrize("data", [False, True])
async def test_original_closed_while_piped_fails_the_pipe_and_leaves_nothing(
    host: Worker, router: Router, data: bool
) -> None:
    if not isinstance(router, Router):
        pytest.skip(
            "closes the original from an event listener that must run inside "
            "pipe_to_router(); a remote client's listeners run after the server's call"
        )
    other = await host.create_router(media_codecs=MEDIA_CODECS)
    if data:
        direct = await router.create_direct_transport()
        original: Any = await direct.produce_data(label="chat")
    else:
        plain = await router.create_plain_transport(listen_info=LISTEN, comedia=True)
        original = await plain.produce(kind="audio", rtp_parameters=opus_rtp_parameters(1111))

    def on_new_transport(pipe: Any) -> None:
        # The pipe consumer exists: the original goes away before the pipe producer does.
        if pipe.type == "pipe":
            event = "newdataconsumer" if data else "newconsumer"
            pipe.observer.once(event, lambda consumer: original.close())

    router.observer.on("newtransport", on_new_transport)
    kind = "DataProducer" if data else "Producer"
    with pytest.raises(InvalidStateError, match=f"original {kind} closed"):
        if data:
            await router.pipe_to_router(router=other, data_producer_id=original.id, keep_id=False)
        else:
            await router.pipe_to_router(router=other, producer_id=original.id, keep_id=False)
    # The cleanup's close requests went before this dump on the same channel.
    (pipe_id,) = (await other.dump())["transportIds"]
    dump = await other.transports_for_testing[pipe_id].dump()
    assert dump["dataProducerIds" if data else "producerIds"] == []


async def test_router_options_out_of_range(router: Router) -> None:
    channel = channel_of(router)
    sent = channel._next_id
    with pytest.raises(ValueError, match=r"num_sctp_streams.OS must be in 1..65535"):
        await router.create_plain_transport(
            listen_info=LISTEN, enable_sctp=True, num_sctp_streams={"OS": 0, "MIS": 10}
        )
    with pytest.raises(ValueError, match=r"max_sctp_message_size must be in 0..4294967295, got -1"):
        await router.create_plain_transport(listen_info=LISTEN, max_sctp_message_size=-1)
    with pytest.raises(ValueError, match=r"ice_consent_timeout must be in 0..255, got 256"):
        await router.create_webrtc_transport(listen_infos=[LISTEN], ice_consent_timeout=256)
    with pytest.raises(ValueError, match=r"interval must be in 0..65535, got 70000"):
        await router.create_audio_level_observer(interval=70000)
    with pytest.raises(TypeError, match="if given, max_entries must be a positive integer"):
        await router.create_audio_level_observer(max_entries="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="if given, max_entries must be a positive integer"):
        await router.create_audio_level_observer(max_entries=0)
    assert channel._next_id == sent


@pytest.mark.parametrize("closing", ["source", "destination"])
async def test_router_closed_while_pipe_to_router_runs(
    host: Worker, router: Router, closing: str
) -> None:
    """Either router closes while pipe_to_router() makes its pipe transports: the call
    fails with InvalidStateError (not CancelledError), and the router left open keeps
    no pipe transport."""
    other = await host.create_router(media_codecs=MEDIA_CODECS)
    transport = await router.create_plain_transport(listen_info=LISTEN, comedia=True)
    producer = await transport.produce(kind="audio", rtp_parameters=opus_rtp_parameters(1111))
    attempt = asyncio.ensure_future(
        router.pipe_to_router(router=other, producer_id=producer.id, keep_id=False)
    )
    await asyncio.sleep(0)  # the pipe transports are being made
    (router if closing == "source" else other).close()
    with pytest.raises(InvalidStateError, match="closed"):
        await asyncio.wait_for(attempt, 5)
    survivor = other if closing == "source" else router
    expected = [] if closing == "source" else [transport.id]
    assert (await survivor.dump())["transportIds"] == expected


async def test_router_closed_while_a_transport_is_made(router: Router) -> None:
    """The router closes while the worker makes a transport: the creation fails with
    InvalidStateError instead of handing out a transport the worker already closed."""
    made: list[Any] = []
    router.observer.on("newtransport", made.append)
    attempt = asyncio.ensure_future(router.create_plain_transport(listen_info=LISTEN))
    await asyncio.sleep(0)  # the request is with the worker
    router.close()
    with pytest.raises(InvalidStateError, match="Router closed"):
        await attempt
    assert made == [] and router.transports_for_testing == {}


@pytest.mark.parametrize(
    "what", ["produce", "consume", "produce_data", "consume_data", "audio_level_observer"]
)
async def test_parent_closed_while_the_worker_makes_a_child(router: Router, what: str) -> None:
    """The transport (or router) closes while the worker makes a producer, consumer, data
    producer, data consumer (or RTP observer): the call fails with InvalidStateError
    rather than hand out an object the worker closed with its parent."""
    source = await router.create_plain_transport(listen_info=LISTEN, comedia=True)
    producer = await source.produce(kind="audio", rtp_parameters=opus_rtp_parameters(1111))
    direct = await router.create_direct_transport()
    data_producer = await direct.produce_data()
    transport = await router.create_plain_transport(listen_info=LISTEN, enable_sctp=True)
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "produce": lambda: transport.produce(kind="audio", rtp_parameters=opus_rtp_parameters(2)),
        "consume": lambda: transport.consume(
            producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
        ),
        "produce_data": lambda: transport.produce_data(sctp_stream_parameters={"streamId": 1}),
        "consume_data": lambda: transport.consume_data(data_producer_id=data_producer.id),
        "audio_level_observer": lambda: router.create_audio_level_observer(),
    }
    made: list[Any] = []
    for emitter in (transport.observer, router.observer):
        for event in ("newproducer", "newconsumer", "newdataproducer", "newdataconsumer"):
            emitter.on(event, made.append)
    router.observer.on("newrtpobserver", made.append)
    parent: Any = router if what == "audio_level_observer" else transport
    name = type(served(parent)).__name__
    attempt = asyncio.ensure_future(calls[what]())
    await asyncio.sleep(0)  # the request is with the worker
    parent.close()
    with pytest.raises(InvalidStateError, match=f"{name} closed"):
        await attempt
    assert made == []
    assert transport.producers == transport.consumers == {}
    assert transport.data_producers == transport.data_consumers == {}


async def test_webrtc_server_closed_while_a_transport_is_made_on_it(
    host: Worker, router: Router
) -> None:
    server = await host.create_webrtc_server(
        listen_infos=[{"protocol": "udp", "ip": "127.0.0.1", "port": 0}]
    )
    attempt = asyncio.ensure_future(router.create_webrtc_transport(webrtc_server=server))
    await asyncio.sleep(0)  # the request is with the worker
    server.close()
    with pytest.raises(InvalidStateError, match="WebRtcServer closed"):
        await attempt
    assert router.transports_for_testing == {}
    assert (await router.dump())["transportIds"] == []
