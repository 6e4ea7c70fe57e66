"""The demo end to end with real WebRTC clients: two pymediasoup + aiortc peers through
the demo's own signaling over a real WebSocket. A publishes audio (a tone), video
(generated frames) and a chat data channel; B consumes them all. The same room code
runs on every layer: one worker, a Mafalda pool, Remote Mediasoup, Remote Mafalda, a
cluster of `mafalda serve` processes and a swarm."""

from __future__ import annotations

import array
import asyncio
import fractions
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest
from aiortc import MediaStreamTrack, VideoStreamTrack
from av import AudioFrame
from pymediasoup import AiortcHandler, Device
from pymediasoup.models.transport import DtlsParameters, IceCandidate, IceParameters
from pymediasoup.rtp_parameters import RtpCapabilities, RtpParameters
from pymediasoup.sctp_parameters import SctpParameters, SctpStreamParameters

from mafalda import remote, swarm
from mafalda.demo.server import DemoConfig, DemoServer
from mafalda.vertical import Mafalda, MafaldaRouter
from tests.processes import TOKEN, free_ports

TIMEOUT = 60  # generous: a 2-core machine runs the worker, two aiortc peers and the codecs


class ToneTrack(MediaStreamTrack):
    """A loud 440 Hz tone, 20 ms frames at 48 kHz, paced in real time."""

    kind = "audio"
    RATE = 48000
    SAMPLES = 960

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += self.SAMPLES
            delay = self._start + self._pts / self.RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        samples = array.array(
            "h",
            (
                int(20000 * math.sin(2 * math.pi * 440 * (self._pts + i) / self.RATE))
                for i in range(self.SAMPLES)
            ),
        )
        frame = AudioFrame(format="s16", layout="mono", samples=self.SAMPLES)
        frame.planes[0].update(samples.tobytes())
        frame.sample_rate = self.RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.RATE)
        return frame


class DemoClient:
    """A peer of the demo: pymediasoup's Device (aiortc inside) plus the JSON signaling."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.device = Device(handlerFactory=AiortcHandler.createFactory(tracks=[]))
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.notifications: list[tuple[str, Any]] = []
        self.notified = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None
        self.transports: list[Any] = []
        self.peer_id = ""

    async def connect(self, http: aiohttp.ClientSession, url: str) -> None:
        self.ws = await http.ws_connect(url)
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            data = json.loads(message.data)
            if data.get("response"):
                future = self.pending.pop(data["id"])
                if data["ok"]:
                    future.set_result(data["data"])
                else:
                    future.set_exception(RuntimeError(data["error"]))
            else:
                self.notifications.append((data["method"], data["data"]))
                self.notified.set()

    async def request(self, method: str, data: Any = None) -> Any:
        assert self.ws is not None
        self.next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "data": data}))
        async with asyncio.timeout(TIMEOUT):
            return await future

    async def wait_notification(self, method: str, **match: Any) -> Any:
        async with asyncio.timeout(TIMEOUT):
            while True:
                for name, data in self.notifications:
                    if name == method and all(data.get(k) == v for k, v in match.items()):
                        return data
                self.notified.clear()
                await self.notified.wait()

    async def join(self, room: str) -> dict[str, Any]:
        caps = (await self.request("getRouterRtpCapabilities"))["rtpCapabilities"]
        await self.device.load(RtpCapabilities(**caps))
        assert self.device.sctpCapabilities is not None
        joined: dict[str, Any] = await self.request(
            "join",
            {
                "roomId": room,
                "displayName": self.name,
                "rtpCapabilities": self.device.rtpCapabilities.model_dump(exclude_none=True),
                "sctpCapabilities": self.device.sctpCapabilities.model_dump(exclude_none=True),
            },
        )
        self.peer_id = joined["peerId"]
        return joined

    async def _transport(self, direction: str) -> Any:
        info = await self.request("createWebRtcTransport", {"direction": direction})
        options = {
            "id": info["id"],
            "iceParameters": IceParameters(**info["iceParameters"]),
            "iceCandidates": [IceCandidate(**c) for c in info["iceCandidates"]],
            "dtlsParameters": DtlsParameters(**info["dtlsParameters"]),
            "sctpParameters": SctpParameters(**info["sctpParameters"]),
        }
        if direction == "send":
            transport = self.device.createSendTransport(**options)
        else:
            transport = self.device.createRecvTransport(**options)
        self.transports.append(transport)

        @transport.on("connect")
        async def on_connect(dtlsParameters: Any) -> None:
            await self.request(
                "connectWebRtcTransport",
                {
                    "transportId": transport.id,
                    "dtlsParameters": dtlsParameters.model_dump(exclude_none=True),
                },
            )

        @transport.on("produce")
        async def on_produce(kind: str, rtpParameters: Any, appData: Any) -> str:
            result = await self.request(
                "produce",
                {
                    "transportId": transport.id,
                    "kind": kind,
                    "rtpParameters": rtpParameters.model_dump(exclude_none=True),
                },
            )
            return str(result["id"])

        @transport.on("producedata")
        async def on_producedata(
            sctpStreamParameters: Any, label: str, protocol: str, appData: Any
        ) -> str:
            result = await self.request(
                "produceData",
                {
                    "transportId": transport.id,
                    "sctpStreamParameters": sctpStreamParameters.model_dump(exclude_none=True),
                    "label": label,
                    "protocol": protocol,
                },
            )
            return str(result["id"])

        return transport

    async def send_transport(self) -> Any:
        return await self._transport("send")

    async def recv_transport(self) -> Any:
        return await self._transport("recv")

    async def consume(self, recv_transport: Any, producer_id: str) -> Any:
        info = await self.request(
            "consume", {"transportId": recv_transport.id, "producerId": producer_id}
        )
        consumer = await recv_transport.consume(
            id=info["id"],
            producerId=info["producerId"],
            kind=info["kind"],
            rtpParameters=RtpParameters(**info["rtpParameters"]),
        )
        await self.request("resumeConsumer", {"consumerId": info["id"]})
        return consumer

    async def consume_data(self, recv_transport: Any, data_producer_id: str) -> Any:
        info = await self.request(
            "consumeData", {"transportId": recv_transport.id, "dataProducerId": data_producer_id}
        )
        return await recv_transport.consumeData(
            id=info["id"],
            dataProducerId=info["dataProducerId"],
            sctpStreamParameters=SctpStreamParameters(**info["sctpStreamParameters"]),
            label=info["label"],
            protocol=info["protocol"],
        )

    async def close(self) -> None:
        for transport in self.transports:
            await transport.close()
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await self.reader


async def wait_open(channel: Any) -> None:
    """Wait for a pymediasoup DataProducer/DataConsumer's channel to be open."""
    if channel.readyState == "open":
        return
    opened = asyncio.get_running_loop().create_future()
    channel.on("open", lambda: opened.done() or opened.set_result(None))
    async with asyncio.timeout(TIMEOUT):
        while channel.readyState != "open":
            await asyncio.wait({opened}, timeout=1)


@pytest.fixture
async def demo() -> AsyncIterator[DemoServer]:
    async with DemoServer(DemoConfig(port=0, rtc_port=0)) as server:
        yield server


async def _pool() -> Mafalda:
    return await Mafalda.start(
        num_workers=2, policy="spread", worker_settings={"log_level": "warn"}
    )


@pytest.fixture(params=["worker", "mafalda", "remote", "remote-mafalda", "cluster", "swarm"])
async def demo_on(request: pytest.FixtureRequest) -> AsyncIterator[DemoServer]:
    """The demo on each layer (one line of its config apart)."""
    layer = request.param
    async with AsyncExitStack() as stack:
        if layer == "worker":
            config = DemoConfig(port=0, rtc_port=0)
        elif layer == "mafalda":
            # A range of two free ports: one each for the two workers.
            config = DemoConfig(
                port=0, rtc_port=free_ports(2), layer="mafalda", num_workers=2, policy="spread"
            )
        elif layer in ("remote", "remote-mafalda"):
            target = None
            if layer == "remote-mafalda":
                target = await _pool()
                stack.push_async_callback(target.aclose)
            server = await remote.serve(token=TOKEN, target=target)
            stack.push_async_callback(server.close)
            config = DemoConfig(port=0, rtc_port=0, layer="remote", url=server.url, token=TOKEN)
        elif layer == "cluster":
            redis_url = request.getfixturevalue("shared_cluster")
            config = DemoConfig(
                port=0, rtc_port=free_ports(16), layer="cluster", url=redis_url, token=TOKEN
            )
        else:
            # Two swarm servers on their own addresses, the second knowing the first.
            urls: list[str] = []
            for index in (1, 2):
                server = await remote.serve(host=f"127.0.0.{index + 4}", token=TOKEN)
                stack.push_async_callback(server.close)
                node = swarm.SwarmNode(
                    server, token=TOKEN, seeds=urls[:1], server_id=f"w{index}", interval=0.2
                )
                await node.start()
                stack.push_async_callback(node.aclose)
                urls.append(server.url)
            config = DemoConfig(port=0, rtc_port=0, layer="swarm", url=urls[1], token=TOKEN)
        demo = DemoServer(config)
        await demo.start()
        stack.push_async_callback(demo.close)
        yield demo


async def test_the_cluster_layer_on_all_interfaces(shared_cluster: str) -> None:
    """--rtc-ip 0.0.0.0 on a cluster: each server's WebRtcServer listens on all its
    interfaces and announces its own media address, on a port of the range. (Media are
    not sent: on one machine's loopback addresses a socket on all interfaces answers
    from 127.0.0.1, which a WebRTC peer expecting 127.0.0.x drops.)"""
    low = free_ports(16)
    config = DemoConfig(
        port=0, rtc_ip="0.0.0.0", rtc_port=low, layer="cluster", url=shared_cluster, token=TOKEN
    )
    async with DemoServer(config) as demo:
        cluster = demo.rooms.worker
        router = await cluster.create_router(media_codecs=demo.rooms.media_codecs)
        taken = []
        for server in sorted(cluster.servers):
            transport = await router.create_webrtc_transport(
                server=server, webrtc_server=demo.rooms.webrtc_server
            )
            address = cluster.servers[server]["mediaAddress"]
            for candidate in transport.ice_candidates:
                assert candidate["address"] == address
                assert low <= candidate["port"] < low + 16
            taken.append({(c["protocol"], c["port"]) for c in transport.ice_candidates})
        # Both on all interfaces of one machine: each server took ports of its own.
        assert len(taken) == 2 and not taken[0] & taken[1]
        router.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.timeout(240)
async def test_two_aiortc_peers_through_the_demo(
    demo_on: DemoServer, http: aiohttp.ClientSession
) -> None:
    demo = demo_on
    alice, bob = DemoClient("alice"), DemoClient("bob")
    tone, camera = ToneTrack(), VideoStreamTrack()
    try:
        await alice.connect(http, demo.ws_url)
        await alice.join("aiortc")
        alice_send = await alice.send_transport()
        audio = await alice_send.produce(track=tone, stopTracks=False)
        video = await alice_send.produce(track=camera, stopTracks=False)
        chat = await alice_send.produceData(label="chat", ordered=True)
        # The ActiveSpeakerObserver names alice's audio (the only one in the room).
        speaker = {"peerId": alice.peer_id, "producerId": audio.id}
        assert await alice.wait_notification("activeSpeaker") == speaker

        # bob joins late: the join answer lists what alice publishes.
        await bob.connect(http, demo.ws_url)
        joined = await bob.join("aiortc")
        assert [p["id"] for p in joined["peers"]] == [alice.peer_id]
        alice_seen = joined["peers"][0]
        assert alice_seen["displayName"] == "alice"
        assert {(p["id"], p["kind"]) for p in alice_seen["producers"]} == {
            (audio.id, "audio"),
            (video.id, "video"),
        }
        assert alice_seen["dataProducers"] == [{"id": chat.id, "label": "chat"}]
        assert joined["activeSpeaker"] == speaker
        bob_recv = await bob.recv_transport()
        room = demo.rooms.rooms["aiortc"]
        # Both transports listen through the layer's WebRtcServer (a worker's, or one per
        # worker or server used: a dump by each).
        dump = await demo.rooms.webrtc_server.dump()
        dumps = [dump] if "webRtcTransportIds" in dump else list(dump.values())
        in_server = {t for d in dumps for t in d["webRtcTransportIds"]}
        assert in_server == {alice_send.id, bob_recv.id}
        # Spread: a pipe between the workers. (A cluster's or swarm's least-loaded
        # placement put the two on different servers in every run seen, not asserted.)
        if isinstance(room.router, MafaldaRouter):
            send = room.peers[alice.peer_id].transports[alice_send.id]
            recv = room.peers[bob.peer_id].transports[bob_recv.id]
            assert room.router.worker_of(send) is not room.router.worker_of(recv)
        video_consumer = await bob.consume(bob_recv, video.id)
        audio_consumer = await bob.consume(bob_recv, audio.id)
        chat_consumer = await bob.consume_data(bob_recv, chat.id)

        # Video: bob decodes frames of alice's camera.
        async with asyncio.timeout(TIMEOUT):
            frames = [await video_consumer.track.recv() for _ in range(30)]
        assert frames[-1].width == 640 and frames[-1].height == 480

        # Audio: bob receives decoded audio frames.
        async with asyncio.timeout(TIMEOUT):
            sounds = [await audio_consumer.track.recv() for _ in range(10)]
        assert all(s.sample_rate == 48000 for s in sounds)

        # The server's consumers and producers count the bytes.
        bob_peer = room.peers[bob.peer_id]
        assert {c.kind for c in bob_peer.consumers.values()} == {"audio", "video"}
        for consumer in bob_peer.consumers.values():
            stats = await consumer.get_stats()
            outbound = next(s for s in stats if s["type"] == "outbound-rtp")
            assert outbound["byteCount"] > 0, consumer.kind
            assert outbound["packetCount"] > 0, consumer.kind
        for producer in room.peers[alice.peer_id].producers.values():
            inbound = next(s for s in await producer.get_stats() if s["type"] == "inbound-rtp")
            assert inbound["byteCount"] > 0, producer.kind

        # Chat: a data channel message from alice reaches bob (through the worker).
        await wait_open(chat)
        await wait_open(chat_consumer)
        received: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        chat_consumer.on("message", lambda m: received.done() or received.set_result(m))
        chat.send("hello bob, from alice")
        async with asyncio.timeout(TIMEOUT):
            assert await received == "hello bob, from alice"
        data_stats = await next(iter(bob_peer.data_consumers.values())).get_stats()
        assert data_stats[0]["messagesSent"] >= 1

        # alice leaves: bob is told, and the server holds nothing of hers.
        await alice.request("leave")
        await bob.wait_notification("peerLeft", id=alice.peer_id)
        await bob.wait_notification("consumerClosed", consumerId=video_consumer.id)
        await bob.wait_notification("activeSpeaker", peerId=None)
        assert bob_peer.consumers == {}
        assert list(room.peers) == [bob.peer_id]
        assert (await room.router.dump())["transportIds"] == [bob_recv.id]
    finally:
        tone.stop()
        camera.stop()
        await alice.close()
        await bob.close()


@pytest.mark.timeout(120)
async def test_rooms_closing_under_the_speaker_tell_nobody(
    demo: DemoServer, http: aiohttp.ClientSession
) -> None:
    """The rooms closed under connected clients (the server closing): the dominant
    speaker's audio closes with her peer, and her closed peer is not told that nobody
    speaks any more."""
    alice = DemoClient("alice")
    tone = ToneTrack()
    try:
        await alice.connect(http, demo.ws_url)
        await alice.join("closing")
        alice_send = await alice.send_transport()
        audio = await alice_send.produce(track=tone, stopTracks=False)
        speaker = {"peerId": alice.peer_id, "producerId": audio.id}
        assert await alice.wait_notification("activeSpeaker") == speaker
        room = demo.rooms.rooms["closing"]
        demo.rooms.close()
        assert room.closed and room.active_speaker is None
        # Anything sent to alice before this answer has arrived (one ordered outbox).
        await alice.request("getRouterRtpCapabilities")
        assert [data for name, data in alice.notifications if name == "activeSpeaker"] == [speaker]
    finally:
        tone.stop()
        await alice.close()
