"""Router against the real worker."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from typing import Any

import pytest

from mafalda.mediasoup import (
    ChannelTimeoutError,
    InvalidStateError,
    Router,
    UnsupportedError,
    Worker,
)

from .conftest import MEDIA_CODECS

LISTEN = {"protocol": "udp", "ip": "127.0.0.1"}


async def test_create_router_succeeds(worker: Worker) -> None:
    seen: list[Router] = []
    worker.observer.on("newrouter", seen.append)
    router = await worker.create_router(media_codecs=MEDIA_CODECS, app_data={"foo": 123})
    assert seen == [router]
    assert router.closed is False
    assert router.app_data == {"foo": 123}
    codecs = router.rtp_capabilities["codecs"]
    assert [c["mimeType"] for c in codecs] == [
        "audio/opus",
        "video/VP8",
        "video/rtx",
        "video/H264",
        "video/rtx",
    ]
    dump = await worker.dump()
    assert dump["routerIds"] == [router.id]
    rdump = await router.dump()
    assert rdump["id"] == router.id
    assert rdump["transportIds"] == [] and rdump["rtpObserverIds"] == []
    assert rdump["mapProducerIdConsumerIds"] == []


async def test_create_router_rejects_bad_input(worker: Worker) -> None:
    with pytest.raises(TypeError):
        await worker.create_router(app_data="NOT-AN-OBJECT")  # type: ignore[arg-type]
    with pytest.raises(UnsupportedError):
        await worker.create_router(
            media_codecs=[{"kind": "audio", "mimeType": "audio/chicken", "clockRate": 8000}]
        )
    with pytest.raises((TypeError, ValueError)):
        await worker.create_router(media_codecs=[{"kind": "audio"}])  # type: ignore[list-item]
    assert (await worker.dump())["routerIds"] == []


async def test_router_close_cascades(worker: Worker, router: Router) -> None:
    transport = await router.create_plain_transport(listen_info=LISTEN)  # type: ignore[arg-type]
    events: list[str] = []
    router.observer.on("close", lambda: events.append("router"))
    transport.on("routerclose", lambda: events.append("routerclose"))
    transport.observer.on("close", lambda: events.append("transport"))
    router.close()
    router.close()
    assert events == ["routerclose", "transport", "router"]
    assert transport.closed
    assert (await worker.dump())["routerIds"] == []
    with pytest.raises(InvalidStateError):
        await router.dump()
    with pytest.raises(InvalidStateError):
        await router.create_plain_transport(listen_info=LISTEN)  # type: ignore[arg-type]
    with pytest.raises(InvalidStateError):
        transport_method: Any = transport.dump
        await transport_method()


async def test_router_transports_in_dump(router: Router) -> None:
    webrtc = await router.create_webrtc_transport(listen_infos=[LISTEN])  # type: ignore[list-item]
    plain = await router.create_plain_transport(listen_info=LISTEN)  # type: ignore[arg-type]
    pipe = await router.create_pipe_transport(listen_info=LISTEN)  # type: ignore[arg-type]
    direct = await router.create_direct_transport()
    dump = await router.dump()
    assert sorted(dump["transportIds"]) == sorted([webrtc.id, plain.id, pipe.id, direct.id])
    assert set(router.transports_for_testing) == {webrtc.id, plain.id, pipe.id, direct.id}
    plain.close()
    assert plain.id not in (await router.dump())["transportIds"]


async def test_transport_creation_argument_errors(router: Router) -> None:
    with pytest.raises(TypeError, match="one of them is mandatory"):
        await router.create_webrtc_transport()
    with pytest.raises(TypeError, match="only one"):
        await router.create_webrtc_transport(
            listen_infos=[LISTEN],
            listen_ips=["127.0.0.1"],  # type: ignore[list-item]
        )
    with pytest.raises(ValueError, match=r"listen_infos\[0\].ip"):
        await router.create_webrtc_transport(listen_infos=[{"protocol": "udp", "ip": "chicken"}])
    with pytest.raises(ValueError, match=r"listen_infos\[0\].protocol"):
        await router.create_webrtc_transport(
            listen_infos=[{"protocol": "sctp", "ip": "127.0.0.1"}]  # type: ignore[list-item]
        )
    with pytest.raises(TypeError, match="num_sctp_streams"):
        await router.create_webrtc_transport(
            listen_infos=[LISTEN],
            num_sctp_streams={"OS": 1},  # type: ignore[list-item, typeddict-item]
        )
    with pytest.raises(TypeError, match="missing listen_info and listen_ip"):
        await router.create_plain_transport()
    with pytest.raises(TypeError, match="only one of listen_info and listen_ip"):
        await router.create_pipe_transport(listen_info=LISTEN, listen_ip="127.0.0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="portRange"):
        await router.create_plain_transport(
            listen_info={"protocol": "udp", "ip": "127.0.0.1", "portRange": {"min": 5, "max": 1}}
        )
    with pytest.raises(TypeError, match="max_message_size"):
        await router.create_direct_transport(max_message_size="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_message_size"):
        await router.create_direct_transport(max_message_size=-1)
    assert (await router.dump())["transportIds"] == []


async def test_deprecated_listen_ips_forms(router: Router) -> None:
    transport = await router.create_webrtc_transport(
        listen_ips=["127.0.0.1", {"ip": "127.0.0.1", "announcedIp": "9.9.9.1"}],
        enable_tcp=True,
        prefer_udp=True,
    )
    candidates = transport.ice_candidates
    assert {c["protocol"] for c in candidates} == {"udp", "tcp"}
    assert any(c["address"] == "9.9.9.1" for c in candidates)
    plain = await router.create_plain_transport(listen_ip="127.0.0.1")
    assert plain.tuple["localAddress"] == "127.0.0.1"
    pipe = await router.create_pipe_transport(listen_ip={"ip": "127.0.0.1"})
    assert pipe.tuple["localAddress"] == "127.0.0.1"


async def test_update_media_codecs_and_can_consume(router: Router) -> None:
    router.update_media_codecs(
        [{"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2}]
    )
    assert [c["mimeType"] for c in router.rtp_capabilities["codecs"]] == ["audio/opus"]
    assert router.can_consume(producer_id="nope", rtp_capabilities={}) is False
    with pytest.raises(UnsupportedError):
        router.update_media_codecs(
            [{"kind": "video", "mimeType": "video/chicken", "clockRate": 90000}]
        )


async def test_rtp_observers_in_dump(router: Router) -> None:
    speaker = await router.create_active_speaker_observer()
    levels = await router.create_audio_level_observer(max_entries=2, threshold=-70, interval=500)
    dump = await router.dump()
    assert sorted(dump["rtpObserverIds"]) == sorted([speaker.id, levels.id])
    with pytest.raises(ValueError, match="max_entries"):
        await router.create_audio_level_observer(max_entries=0)
    with pytest.raises(ValueError, match="threshold"):
        await router.create_audio_level_observer(threshold=10)
    with pytest.raises(TypeError, match="interval"):
        await router.create_active_speaker_observer(interval="x")  # type: ignore[arg-type]
    speaker.close()
    assert (await router.dump())["rtpObserverIds"] == [levels.id]
    router.close()
    assert levels.closed


async def test_pipe_to_router_argument_errors(router: Router, worker2: Worker) -> None:
    other = await worker2.create_router(media_codecs=MEDIA_CODECS)
    with pytest.raises(TypeError, match="missing producer_id or data_producer_id"):
        await router.pipe_to_router(router=other)
    with pytest.raises(TypeError, match="just producer_id or data_producer_id"):
        await router.pipe_to_router(router=other, producer_id="a", data_producer_id="b")
    with pytest.raises(TypeError, match="cannot use this Router"):
        await router.pipe_to_router(router=router, producer_id="a")
    with pytest.raises(ValueError, match="not found"):
        await router.pipe_to_router(router=other, producer_id="a")
    with pytest.raises(ValueError, match="not found"):
        await router.pipe_to_router(router=other, data_producer_id="a")


async def test_aliases_resolve_for_pipe_and_data_consumers(worker: Worker) -> None:
    """A copy piped into a router of the same worker has its own id (ids are unique per
    worker); with an alias, pipe consumers and data consumers find it by the original."""
    first = await worker.create_router(media_codecs=MEDIA_CODECS)
    second = await worker.create_router(media_codecs=MEDIA_CODECS)
    source = await first.create_direct_transport()
    producer = await source.produce(
        kind="audio",
        rtp_parameters={
            "codecs": [
                {"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2}
            ],
            "encodings": [{"ssrc": 1234}],
        },
    )
    data_producer = await source.produce_data(label="a")
    piped = await first.pipe_to_router(router=second, producer_id=producer.id, keep_id=False)
    piped_data = await first.pipe_to_router(
        router=second, data_producer_id=data_producer.id, keep_id=False
    )
    copy, copy_data = piped["pipeProducer"], piped_data["pipeDataProducer"]
    assert copy.id != producer.id and copy_data.id != data_producer.id
    # Only what the router has, under a key nobody holds; once per alias, however often.
    with pytest.raises(TypeError, match="key must be a non-empty string"):
        second.alias_producer("", copy)
    with pytest.raises(ValueError, match="Producer .* is not of this router"):
        second.alias_producer("x", producer)  # the first router's
    transport = await second.create_direct_transport()
    with pytest.raises(ValueError, match="is not of this router"):
        second.alias_data_producer("x", transport)  # type: ignore[arg-type]
    again = await first.pipe_to_router(router=second, producer_id=producer.id, keep_id=False)
    taken = again["pipeProducer"].id
    with pytest.raises(TypeError, match=f'a Producer with same id "{taken}" already exists'):
        second.alias_producer(taken, copy)
    again["pipeProducer"].close()
    listening = len(copy.observer._listeners.get("close", []))
    for _ in range(3):
        second.alias_producer(producer.id, copy)
    assert len(copy.observer._listeners.get("close", [])) == listening + 1
    second.alias_data_producer(data_producer.id, copy_data)
    pipe = await second.create_pipe_transport(listen_info=LISTEN)  # type: ignore[arg-type]
    consumer = await pipe.consume(producer_id=producer.id)
    assert consumer.producer_id == producer.id
    direct = await second.create_direct_transport()
    data_consumer = await direct.consume_data(data_producer_id=data_producer.id)
    assert data_consumer.data_producer_id == data_producer.id
    dump = await second.dump()
    assert {e["key"] for e in dump["mapProducerIdConsumerIds"]} == {copy.id}
    assert {e["key"] for e in dump["mapDataProducerIdDataConsumerIds"]} == {copy_data.id}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_deprecated_listen_ips_with_port_and_protocol_preferences(worker: Worker) -> None:
    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    port = free_udp_port()
    plain = await router.create_plain_transport(listen_ip="127.0.0.1", port=port)
    assert plain.tuple["localPort"] == port
    # TCP first when preferred; the worker gives the first listen info the higher priority.
    both = await router.create_webrtc_transport(
        listen_ips=["127.0.0.1"], enable_tcp=True, prefer_tcp=True
    )
    assert [c["protocol"] for c in both.ice_candidates] == ["tcp", "udp"]
    assert both.ice_candidates[0]["priority"] > both.ice_candidates[1]["priority"]
    with socket.socket() as sock:  # a free TCP port
        sock.bind(("127.0.0.1", 0))
        tcp_port = sock.getsockname()[1]
    tcp_only = await router.create_webrtc_transport(
        listen_ips=["127.0.0.1"], port=tcp_port, enable_udp=False, enable_tcp=True
    )
    assert [(c["protocol"], c["port"]) for c in tcp_only.ice_candidates] == [("tcp", tcp_port)]
    # Said as such, not as an empty list of listen infos the caller did not give.
    with pytest.raises(TypeError, match="enable_udp and enable_tcp both False"):
        await router.create_webrtc_transport(
            listen_ips=["127.0.0.1"], enable_udp=False, enable_tcp=False
        )


async def test_plain_transport_with_rtcp_listen_info_and_rtcp_mux_off(worker: Worker) -> None:
    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    transport = await router.create_plain_transport(
        listen_info=LISTEN,  # type: ignore[arg-type]
        rtcp_listen_info=LISTEN,  # type: ignore[arg-type]
        rtcp_mux=False,
    )
    assert transport.rtcp_mux is False
    assert transport.rtcp_tuple is not None
    assert transport.rtcp_tuple["localPort"] != transport.tuple["localPort"]


async def test_alias_outlives_a_replaced_producer(worker: Worker) -> None:
    """An alias moved to another producer stays when the first one closes."""
    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    direct = await router.create_direct_transport()
    parameters: Any = {
        "codecs": [
            {"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2}
        ],
        "encodings": [{"ssrc": 1111}],
    }
    first = await direct.produce(kind="audio", rtp_parameters=parameters)
    parameters["encodings"] = [{"ssrc": 2222}]
    second = await direct.produce(kind="audio", rtp_parameters=parameters)
    first_data = await direct.produce_data(label="first")
    second_data = await direct.produce_data(label="second")
    router.alias_producer("alias", first)
    router.alias_producer("alias", second)
    router.alias_data_producer("data-alias", first_data)
    router.alias_data_producer("data-alias", second_data)
    first.close()
    first_data.close()
    pipe = await router.create_pipe_transport(listen_info=LISTEN)  # type: ignore[arg-type]
    consumer = await pipe.consume(producer_id="alias")
    dump = await router.dump()
    assert {e["key"]: e["values"] for e in dump["mapProducerIdConsumerIds"]} == {
        second.id: [consumer.id]
    }
    consuming = await router.create_direct_transport()
    data_consumer = await consuming.consume_data(data_producer_id="data-alias")
    assert data_consumer.label == "second"
    second.close()
    second_data.close()
    with pytest.raises(ValueError, match="not found"):
        await pipe.consume(producer_id="alias")
    with pytest.raises(ValueError, match="not found"):
        await consuming.consume_data(data_producer_id="data-alias")


async def test_a_pipe_follow_up_that_fails_is_logged_at_debug(
    worker: Worker, worker2: Worker
) -> None:
    """Pausing a piped producer pauses its copy in the other worker, in the background:
    when that worker does not answer (frozen with SIGSTOP), the failure is logged at
    debug level and escapes nowhere."""
    first = await worker.create_router(media_codecs=MEDIA_CODECS)
    second = await worker2.create_router(media_codecs=MEDIA_CODECS)
    source = await first.create_direct_transport()
    producer = await source.produce(
        kind="audio",
        rtp_parameters={
            "codecs": [
                {"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2}
            ],
            "encodings": [{"ssrc": 1234}],
        },
    )
    piped = await first.pipe_to_router(router=second, producer_id=producer.id)
    failed: asyncio.Future[logging.LogRecord] = asyncio.get_running_loop().create_future()

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("pipe follow-up failed") and not failed.done():
                failed.set_result(record)

    router_logger = logging.getLogger("mafalda.mediasoup.router")
    handler, level = Catch(logging.DEBUG), router_logger.level
    router_logger.addHandler(handler)
    router_logger.setLevel(logging.DEBUG)
    worker2._channel.request_timeout = 0.2  # the copy's worker, about to freeze
    os.kill(worker2.pid, signal.SIGSTOP)
    try:
        await producer.pause()
        async with asyncio.timeout(10):
            record = await failed
    finally:
        os.kill(worker2.pid, signal.SIGCONT)
        router_logger.removeHandler(handler)
        router_logger.setLevel(level)
    assert record.levelno == logging.DEBUG
    assert "PRODUCER_PAUSE" in record.getMessage()
    assert isinstance(record.args, tuple) and isinstance(record.args[0], ChannelTimeoutError)
    assert piped["pipeConsumer"].producer_paused and not piped["pipeProducer"].closed


async def _cancelled_once_sent(make: Any) -> None:
    attempt = asyncio.ensure_future(make())
    await asyncio.sleep(0)  # sent: now waiting for the answer
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt


async def test_creations_cancelled_once_sent_leave_nothing_in_the_worker(worker: Worker) -> None:
    """A caller cancelled once its creation is on its way: the worker makes the router,
    transport, observer, producer or consumer all the same, and nothing here would ever
    close it (ports held, media forwarded): it is closed there."""
    await _cancelled_once_sent(lambda: worker.create_router(media_codecs=MEDIA_CODECS))
    assert (await worker.dump())["routerIds"] == []
    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    listen = {"protocol": "udp", "ip": "127.0.0.1"}
    for make in (
        lambda: router.create_plain_transport(listen_info=listen),
        lambda: router.create_webrtc_transport(listen_infos=[listen]),
        lambda: router.create_pipe_transport(listen_info=listen),
        router.create_direct_transport,
        router.create_audio_level_observer,
        router.create_active_speaker_observer,
    ):
        await _cancelled_once_sent(make)
    dump = await router.dump()
    assert dump["transportIds"] == [] and dump["rtpObserverIds"] == []
    transport = await router.create_plain_transport(listen_info=listen, comedia=True)
    direct = await router.create_direct_transport()
    parameters: Any = {
        "codecs": [
            {"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2}
        ],
        "encodings": [{"ssrc": 1111}],
    }
    await _cancelled_once_sent(lambda: transport.produce(kind="audio", rtp_parameters=parameters))
    await _cancelled_once_sent(lambda: direct.produce_data(label="x"))
    producer = await transport.produce(kind="audio", rtp_parameters=parameters)
    data_producer = await direct.produce_data(label="y")
    caps = router.rtp_capabilities
    await _cancelled_once_sent(
        lambda: transport.consume(producer_id=producer.id, rtp_capabilities=caps)
    )
    await _cancelled_once_sent(lambda: direct.consume_data(data_producer_id=data_producer.id))
    plain_dump, direct_dump = await transport.dump(), await direct.dump()
    assert plain_dump["producerIds"] == [producer.id] and plain_dump["consumerIds"] == []
    assert direct_dump["dataProducerIds"] == [data_producer.id]
    assert direct_dump["dataConsumerIds"] == []
    pipe = await router.create_pipe_transport(listen_info=listen)
    await _cancelled_once_sent(lambda: pipe.consume(producer_id=producer.id))
    assert (await pipe.dump())["consumerIds"] == []
    # The channel still serves (the closes' answers matched nothing pending).
    assert set((await router.dump())["transportIds"]) == {transport.id, direct.id, pipe.id}
