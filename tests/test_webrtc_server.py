"""WebRtcServer against a real worker (port of mediasoup's test-WebRtcServer.ts, and more)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiortc import VideoStreamTrack
from pymediasoup import AiortcHandler, Device
from pymediasoup.models.transport import DtlsParameters, IceCandidate, IceParameters
from pymediasoup.rtp_parameters import RtpCapabilities

from mafalda.mediasoup import WebRtcServer, Worker, create_worker
from mafalda.mediasoup.errors import InvalidStateError, InvalidValueError, WorkerError
from mafalda.mediasoup.webrtc_server import parse_webrtc_server_dump
from tests.conftest import MEDIA_CODECS, opus_rtp_parameters
from tests.processes import free_ports


async def test_create_webrtc_server_succeeds(worker: Worker) -> None:
    new_servers: list[Any] = []
    worker.observer.once("newwebrtcserver", new_servers.append)
    port1 = free_ports(2)  # the worker binds them: below the ephemeral range
    port2 = port1 + 1
    server = await worker.create_webrtc_server(
        listen_infos=[
            {"protocol": "udp", "ip": "127.0.0.1", "port": port1},
            {
                "protocol": "tcp",
                "ip": "127.0.0.1",
                "announcedAddress": "foo.bar.org",
                "port": port2,
            },
        ],
        app_data={"foo": 123},
    )
    assert new_servers == [server]
    assert isinstance(server.id, str)
    assert server.closed is False
    assert server.app_data == {"foo": 123}
    dump = await worker.dump()
    assert dump["pid"] == worker.pid
    assert dump["webRtcServerIds"] == [server.id]
    assert dump["routerIds"] == []
    assert dump["channelMessageHandlers"]["channelRequestHandlers"] == [server.id]
    assert dump["channelMessageHandlers"]["channelNotificationHandlers"] == []
    assert await server.dump() == {
        "id": server.id,
        "udpSockets": [{"ip": "127.0.0.1", "port": port1}],
        "tcpServers": [{"ip": "127.0.0.1", "port": port2}],
        "webRtcTransportIds": [],
        "localIceUsernameFragments": [],
        "tupleHashes": [],
    }
    assert len(worker.webrtc_servers_for_testing) == 1
    worker.close()
    assert server.closed is True
    assert len(worker.webrtc_servers_for_testing) == 0


async def test_create_webrtc_server_with_port_range(worker: Worker) -> None:
    port1 = free_ports(2)  # the worker binds them: below the ephemeral range
    port2 = port1 + 1
    server = await worker.create_webrtc_server(
        listen_infos=[
            {"protocol": "udp", "ip": "127.0.0.1", "portRange": {"min": port1, "max": port1}},
            {
                "protocol": "tcp",
                "ip": "127.0.0.1",
                "announcedAddress": "1.2.3.4",
                "portRange": {"min": port2, "max": port2},
            },
        ],
        app_data={"foo": 123},
    )
    dump = await server.dump()
    assert dump["udpSockets"] == [{"ip": "127.0.0.1", "port": port1}]
    assert dump["tcpServers"] == [{"ip": "127.0.0.1", "port": port2}]
    assert (await worker.dump())["webRtcServerIds"] == [server.id]
    worker.close()
    assert server.closed is True


async def test_create_webrtc_server_without_port(worker: Worker) -> None:
    server = await worker.create_webrtc_server(
        listen_infos=[
            {"protocol": "udp", "ip": "127.0.0.1"},
            {"protocol": "tcp", "ip": "127.0.0.1", "announcedAddress": "1.2.3.4"},
        ],
    )
    assert server.app_data == {}
    dump = await server.dump()
    assert [s["ip"] for s in dump["udpSockets"]] == ["127.0.0.1"]
    assert [s["ip"] for s in dump["tcpServers"]] == ["127.0.0.1"]
    assert isinstance(dump["udpSockets"][0]["port"], int)
    assert isinstance(dump["tcpServers"][0]["port"], int)


async def test_create_webrtc_server_with_wrong_arguments(worker: Worker) -> None:
    bad: Any
    with pytest.raises(TypeError):
        await worker.create_webrtc_server()
    bad = "NOT-AN-ARRAY"
    with pytest.raises(TypeError):
        await worker.create_webrtc_server(listen_infos=bad)
    bad = ["NOT-AN-OBJECT"]
    with pytest.raises(TypeError):
        await worker.create_webrtc_server(listen_infos=bad)
    with pytest.raises(TypeError):
        await worker.create_webrtc_server(listen_infos=[])
    bad = "foo"
    with pytest.raises(TypeError):
        await worker.create_webrtc_server(
            listen_infos=[{"protocol": "udp", "ip": "127.0.0.1"}], app_data=bad
        )
    assert len(worker.webrtc_servers_for_testing) == 0


async def test_create_webrtc_server_with_unavailable_listen_infos(
    worker: Worker, worker2: Worker
) -> None:
    port1 = free_ports(2)
    port2 = port1 + 1
    # An IP that is not ours.
    with pytest.raises(WorkerError):
        await worker.create_webrtc_server(
            listen_infos=[
                {"protocol": "udp", "ip": "127.0.0.1", "port": port1},
                {"protocol": "udp", "ip": "1.2.3.4", "port": port2},
            ]
        )
    # The same UDP port twice.
    with pytest.raises(WorkerError):
        await worker.create_webrtc_server(
            listen_infos=[
                {"protocol": "udp", "ip": "127.0.0.1", "port": port1},
                {
                    "protocol": "udp",
                    "ip": "127.0.0.1",
                    "announcedAddress": "1.2.3.4",
                    "port": port1,
                },
            ]
        )
    await worker.create_webrtc_server(
        listen_infos=[{"protocol": "udp", "ip": "127.0.0.1", "port": port1}]
    )
    # The same UDP port in another worker.
    with pytest.raises(WorkerError):
        await worker2.create_webrtc_server(
            listen_infos=[{"protocol": "udp", "ip": "127.0.0.1", "port": port1}]
        )


async def test_create_webrtc_server_on_closed_worker() -> None:
    worker = await create_worker(log_level="warn")
    worker.close()
    await worker.wait_closed()
    with pytest.raises(InvalidStateError):
        await worker.create_webrtc_server(
            listen_infos=[{"protocol": "udp", "ip": "127.0.0.1", "port": free_ports(1)}]
        )


async def test_close(worker: Worker) -> None:
    server = await worker.create_webrtc_server(
        listen_infos=[{"protocol": "udp", "ip": "127.0.0.1", "port": free_ports(1)}]
    )
    closes: list[None] = []
    server.observer.once("close", lambda: closes.append(None))
    server.close()
    assert closes == [None]
    assert server.closed is True
    assert len(worker.webrtc_servers_for_testing) == 0
    assert (await worker.dump())["webRtcServerIds"] == []
    with pytest.raises(InvalidStateError):
        await server.dump()
    # Closing again does nothing.
    server.close()
    server.worker_closed()
    assert closes == [None]


async def test_workerclose_when_worker_closes(worker: Worker) -> None:
    server = await worker.create_webrtc_server(
        listen_infos=[{"protocol": "tcp", "ip": "127.0.0.1", "port": free_ports(1)}]
    )
    closes: list[None] = []
    server.observer.once("close", lambda: closes.append(None))
    waiter = asyncio.ensure_future(server.events.wait_for("workerclose"))
    await asyncio.sleep(0)
    worker.close()
    await waiter
    assert closes == [None]
    assert server.closed is True


async def test_webrtc_transport_on_server_then_transport_closed(worker: Worker) -> None:
    port1 = free_ports(2)  # the worker binds them: below the ephemeral range
    port2 = port1 + 1
    server = await worker.create_webrtc_server(
        listen_infos=[
            {"protocol": "udp", "ip": "127.0.0.1", "port": port1},
            {
                "protocol": "tcp",
                "ip": "127.0.0.1",
                "announcedAddress": "media1.foo.org",
                "exposeInternalIp": True,
                "port": port2,
            },
        ]
    )
    handled: list[Any] = []
    unhandled: list[Any] = []
    server.observer.on("webrtctransporthandled", handled.append)
    server.observer.on("webrtctransportunhandled", unhandled.append)
    router = await worker.create_router()
    new_transports: list[Any] = []
    router.observer.once("newtransport", new_transports.append)
    # UDP disabled: the ICE candidates are TCP only.
    transport = await router.create_webrtc_transport(
        webrtc_server=server, enable_udp=False, app_data={"foo": "bar"}
    )
    assert (await router.dump())["transportIds"] == [transport.id]
    assert handled == [transport]
    assert new_transports == [transport]
    assert transport.closed is False
    assert transport.app_data == {"foo": "bar"}
    candidates = transport.ice_candidates
    assert len(candidates) == 2
    assert candidates[0]["address"] == "media1.foo.org"
    assert candidates[0]["ip"] == "media1.foo.org"
    assert candidates[0]["port"] == port2
    assert candidates[0]["protocol"] == "tcp"
    assert candidates[0]["type"] == "host"
    assert candidates[0].get("tcpType") == "passive"
    assert candidates[1]["address"] == "127.0.0.1"
    assert candidates[1]["port"] == port2
    assert candidates[1]["protocol"] == "tcp"
    assert candidates[1].get("tcpType") == "passive"
    assert candidates[0]["priority"] > candidates[1]["priority"]
    assert transport.ice_state == "new"
    assert transport.ice_selected_tuple is None
    assert len(server.webrtc_transports_for_testing) == 1
    assert len(router.transports_for_testing) == 1
    dump = await server.dump()
    assert dump["udpSockets"] == [{"ip": "127.0.0.1", "port": port1}]
    assert dump["tcpServers"] == [{"ip": "127.0.0.1", "port": port2}]
    assert dump["webRtcTransportIds"] == [transport.id]
    assert [f["webRtcTransportId"] for f in dump["localIceUsernameFragments"]] == [transport.id]
    assert (
        dump["localIceUsernameFragments"][0]["localIceUsernameFragment"]
        == (transport.ice_parameters["usernameFragment"])
    )
    assert dump["tupleHashes"] == []

    transport.close()
    assert transport.closed is True
    assert unhandled == [transport]
    assert len(server.webrtc_transports_for_testing) == 0
    assert len(router.transports_for_testing) == 0
    dump = await server.dump()
    assert dump["webRtcTransportIds"] == []
    assert dump["localIceUsernameFragments"] == []
    assert dump["tupleHashes"] == []


async def test_webrtc_transport_on_server_then_server_closed(worker: Worker) -> None:
    port1 = free_ports(2)  # the worker binds them: below the ephemeral range
    port2 = port1 + 1
    server = await worker.create_webrtc_server(
        listen_infos=[
            {"protocol": "udp", "ip": "127.0.0.1", "port": port1},
            {"protocol": "tcp", "ip": "127.0.0.1", "port": port2},
        ]
    )
    handled: list[Any] = []
    unhandled: list[Any] = []
    server.observer.on("webrtctransporthandled", handled.append)
    server.observer.on("webrtctransportunhandled", unhandled.append)
    router = await worker.create_router()
    transport = await router.create_webrtc_transport(webrtc_server=server, app_data={"foo": "bar"})
    assert handled == [transport]
    assert (await router.dump())["transportIds"] == [transport.id]
    candidates = transport.ice_candidates
    assert [(c["ip"], c["port"], c["protocol"]) for c in candidates] == [
        ("127.0.0.1", port1, "udp"),
        ("127.0.0.1", port2, "tcp"),
    ]
    assert "tcpType" not in candidates[0]
    assert candidates[1].get("tcpType") == "passive"
    assert len(server.webrtc_transports_for_testing) == 1
    assert len(router.transports_for_testing) == 1
    fragments = (await server.dump())["localIceUsernameFragments"]
    assert [f["webRtcTransportId"] for f in fragments] == [transport.id]

    # Restarting ICE adds a username fragment for the transport in the server.
    await transport.restart_ice()
    fragments = (await server.dump())["localIceUsernameFragments"]
    assert [f["webRtcTransportId"] for f in fragments] == [transport.id, transport.id]

    closes: list[None] = []
    server.observer.once("close", lambda: closes.append(None))
    listen_server_closes: list[None] = []
    transport.once("listenserverclose", lambda: listen_server_closes.append(None))
    transport_closes: list[None] = []
    transport.observer.once("close", lambda: transport_closes.append(None))
    server.close()
    assert server.closed is True
    assert closes == [None]
    assert listen_server_closes == [None]
    assert transport_closes == [None]
    assert unhandled == [transport]
    assert transport.closed is True
    assert transport.ice_state == "closed"
    assert transport.ice_selected_tuple is None
    assert transport.dtls_state == "closed"
    assert transport.sctp_state is None
    assert len(server.webrtc_transports_for_testing) == 0
    assert len(router.transports_for_testing) == 0
    dump = await worker.dump()
    assert dump["webRtcServerIds"] == []
    assert dump["routerIds"] == [router.id]
    assert dump["channelMessageHandlers"]["channelRequestHandlers"] == [router.id]
    router_dump = await router.dump()
    assert router_dump["id"] == router.id
    assert router_dump["transportIds"] == []


async def test_server_closed_takes_its_transports_producers_out_of_the_router(
    worker: Worker,
) -> None:
    """The router outlives the server: the closed transports' producers and data
    producers are gone from it (mediasoup's Node library keeps them offered)."""
    server = await worker.create_webrtc_server(
        listen_infos=[{"protocol": "udp", "ip": "127.0.0.1"}]
    )
    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    transport = await router.create_webrtc_transport(webrtc_server=server, enable_sctp=True)
    other = await router.create_webrtc_transport(
        listen_infos=[{"protocol": "udp", "ip": "127.0.0.1"}], enable_sctp=True
    )
    producer = await transport.produce(kind="audio", rtp_parameters=opus_rtp_parameters(1111))
    data_producer = await transport.produce_data(sctp_stream_parameters={"streamId": 0})
    server.close()
    assert producer.closed and data_producer.closed
    assert not router.can_consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
    with pytest.raises(InvalidValueError, match="not found"):
        await other.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
    with pytest.raises(InvalidValueError, match="not found"):
        await other.consume_data(data_producer_id=data_producer.id)
    observer = await router.create_audio_level_observer()
    with pytest.raises(InvalidValueError, match="not found"):
        await observer.add_producer(producer_id=producer.id)


async def test_webrtc_transport_on_server_then_router_closed(worker: Worker) -> None:
    server = await worker.create_webrtc_server(
        listen_infos=[{"protocol": "udp", "ip": "127.0.0.1", "port": free_ports(1)}]
    )
    unhandled: list[Any] = []
    server.observer.on("webrtctransportunhandled", unhandled.append)
    router = await worker.create_router()
    transport = await router.create_webrtc_transport(webrtc_server=server)
    assert (await server.dump())["webRtcTransportIds"] == [transport.id]
    router.close()
    assert transport.closed is True
    # The server forgets the transport (its worker side is gone with the router).
    assert unhandled == [transport]
    assert len(server.webrtc_transports_for_testing) == 0
    assert (await server.dump())["webRtcTransportIds"] == []
    server.close()
    assert unhandled == [transport]


async def test_webrtc_transport_on_closed_server_fails(worker: Worker) -> None:
    server = await worker.create_webrtc_server(
        listen_infos=[{"protocol": "udp", "ip": "127.0.0.1", "port": free_ports(1)}]
    )
    router = await worker.create_router()
    server.close()
    with pytest.raises(InvalidStateError):
        await router.create_webrtc_transport(webrtc_server=server)


async def test_webrtc_transport_on_a_server_of_another_worker_fails_first(worker: Worker) -> None:
    # The worker refused it ("wrong webRtcServerId", a WorkerError), a non-server was an
    # AttributeError: both are told before anything is sent.
    other = await create_worker(log_level="warn")
    async with other:
        server = await other.create_webrtc_server(
            listen_infos=[{"protocol": "udp", "ip": "127.0.0.1", "port": free_ports(1)}]
        )
        router = await worker.create_router()
        with pytest.raises(InvalidValueError, match="webrtc_server is of another Worker"):
            await router.create_webrtc_transport(webrtc_server=server)
        with pytest.raises(TypeError, match="webrtc_server must be a WebRtcServer"):
            await router.create_webrtc_transport(webrtc_server=server.id)  # type: ignore[arg-type]
        assert (await worker.dump())["routerIds"] == [router.id]
        assert (await router.dump())["transportIds"] == []
        assert server.webrtc_transports_for_testing == {}


async def test_worker_close_with_transports_on_server(worker: Worker) -> None:
    server = await worker.create_webrtc_server(
        listen_infos=[{"protocol": "udp", "ip": "127.0.0.1", "port": free_ports(1)}]
    )
    router = await worker.create_router()
    transport = await router.create_webrtc_transport(webrtc_server=server)
    unhandled: list[Any] = []
    server.observer.on("webrtctransportunhandled", unhandled.append)
    worker_closes: list[None] = []
    server.on("workerclose", lambda: worker_closes.append(None))
    worker.close()
    assert server.closed is True
    assert transport.closed is True
    assert worker_closes == [None]
    assert len(server.webrtc_transports_for_testing) == 0


def test_parse_webrtc_server_dump() -> None:
    class Obj:
        def __init__(self, **kwargs: Any) -> None:
            self.__dict__.update(kwargs)

    body = Obj(
        id="s",
        udpSockets=[Obj(ip="1.1.1.1", port=1)],
        tcpServers=None,
        webRtcTransportIds=["t"],
        localIceUsernameFragments=[Obj(localIceUsernameFragment="u", webRtcTransportId="t")],
        tupleHashes=[Obj(tupleHash=12345678901234, webRtcTransportId="t")],
    )
    assert parse_webrtc_server_dump(body) == {
        "id": "s",
        "udpSockets": [{"ip": "1.1.1.1", "port": 1}],
        "tcpServers": [],
        "webRtcTransportIds": ["t"],
        "localIceUsernameFragments": [{"localIceUsernameFragment": "u", "webRtcTransportId": "t"}],
        "tupleHashes": [{"tupleHash": 12345678901234, "webRtcTransportId": "t"}],
    }


def test_repr_and_events_delegation() -> None:
    class FakeChannel:
        pass

    server = WebRtcServer(webrtc_server_id="x", channel=FakeChannel(), app_data=None)
    assert repr(server) == "<WebRtcServer id=x closed=False>"
    calls: list[int] = []

    def listener() -> None:
        calls.append(1)

    server.on("workerclose", listener)
    server.once("workerclose", listener)
    server.off("workerclose", listener)
    server.worker_closed()
    assert calls == [1]
    assert server.closed is True


async def test_real_peer_through_server(worker: Worker) -> None:
    """ICE + DTLS with an aiortc peer through the server's shared UDP socket."""
    server = await worker.create_webrtc_server(
        listen_infos=[{"protocol": "udp", "ip": "127.0.0.1", "port": free_ports(1)}]
    )
    router = await worker.create_router(
        media_codecs=[{"kind": "video", "mimeType": "video/VP8", "clockRate": 90000}]
    )
    transport = await router.create_webrtc_transport(webrtc_server=server)
    device = Device(handlerFactory=AiortcHandler.createFactory(tracks=[]))
    await device.load(RtpCapabilities(**router.rtp_capabilities))
    send_transport = device.createSendTransport(
        id=transport.id,
        iceParameters=IceParameters(**transport.ice_parameters),
        iceCandidates=[IceCandidate(**c) for c in transport.ice_candidates],
        dtlsParameters=DtlsParameters(**transport.dtls_parameters),
        sctpParameters=None,
    )

    async def on_connect(dtlsParameters: Any) -> None:
        await transport.connect(dtls_parameters=dtlsParameters.model_dump(exclude_none=True))

    async def on_produce(kind: Any, rtpParameters: Any, appData: Any) -> str:
        producer = await transport.produce(
            kind=kind, rtp_parameters=rtpParameters.model_dump(exclude_none=True)
        )
        return producer.id

    send_transport.on("connect", on_connect)
    send_transport.on("produce", on_produce)
    track = VideoStreamTrack()
    try:
        await send_transport.produce(track=track, stopTracks=False)
        async with asyncio.timeout(15):
            while transport.dtls_state != "connected":
                await transport.events.wait_for("dtlsstatechange")
        dump = await server.dump()
        assert dump["webRtcTransportIds"] == [transport.id]
        assert [h["webRtcTransportId"] for h in dump["tupleHashes"]] == [transport.id]
        assert isinstance(dump["tupleHashes"][0]["tupleHash"], int)
        selected = transport.ice_selected_tuple
        assert selected is not None
        assert selected["localPort"] == dump["udpSockets"][0]["port"]
    finally:
        track.stop()
        await send_transport.close()
    server.close()
    assert transport.closed is True
    assert transport.dtls_state == "closed"


async def test_a_creation_cancelled_after_it_was_sent_leaves_nothing(worker: Worker) -> None:
    """The caller of create_webrtc_server() is cancelled once the request is on its way:
    the worker makes the server all the same, and it is closed there (it belongs to no
    router that would close it)."""
    attempt = asyncio.ensure_future(
        worker.create_webrtc_server(listen_infos=[{"protocol": "udp", "ip": "127.0.0.1"}])
    )
    await asyncio.sleep(0)  # sent: now waiting for the answer
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    assert (await worker.dump())["webRtcServerIds"] == []
    assert worker.webrtc_servers_for_testing == set()
