"""The demo's signaling: protocol parsing (pure), rooms and sessions against a real worker
(no sockets), and the WebSocket front end for what only a socket shows (oversized frames,
a client that vanishes)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from mafalda.demo import protocol
from mafalda.demo.protocol import MAX_MESSAGE_SIZE, ProtocolError, parse_request
from mafalda.demo.room import (
    MAX_DATA_PRODUCERS_PER_PEER,
    MAX_PRODUCERS_PER_PEER,
    MAX_TRANSPORTS_PER_PEER,
    RoomManager,
    Session,
)
from mafalda.demo.server import DemoConfig, DemoServer
from mafalda.mediasoup import MediasoupError, WebRtcServer, Worker
from mafalda.mediasoup.channel import REQUEST_TIMEOUT

AUDIO_RTP: dict[str, Any] = {
    "mid": "0",
    "codecs": [{"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2}],
    "encodings": [{"ssrc": 11111111}],
    "rtcp": {"cname": "test"},
}
VIDEO_RTP: dict[str, Any] = {
    "mid": "1",
    "codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}],
    "encodings": [{"ssrc": 22222222}],
    "rtcp": {"cname": "test"},
}
SCTP_CAPABILITIES: dict[str, Any] = {"numStreams": {"OS": 1024, "MIS": 1024}}


# -- protocol (pure) ----------------------------------------------------------------------


def request_text(method: str, data: Any = None, request_id: Any = 1) -> str:
    message: dict[str, Any] = {"id": request_id, "method": method}
    if data is not None:
        message["data"] = data
    return json.dumps(message)


def test_parse_request_valid() -> None:
    request = parse_request(request_text("getRouterRtpCapabilities"))
    assert (request.id, request.method, request.data) == (1, "getRouterRtpCapabilities", {})
    request = parse_request(
        request_text("join", {"roomId": "a-b_c.1", "rtpCapabilities": {"codecs": []}}, 7).encode()
    )
    assert request.id == 7
    assert request.data == {
        "roomId": "a-b_c.1",
        "displayName": "guest",
        "rtpCapabilities": {"codecs": []},
        "sctpCapabilities": None,
    }
    request = parse_request(
        request_text("setConsumerPreferredLayers", {"consumerId": "c", "spatialLayer": 2})
    )
    assert request.data == {"consumerId": "c", "spatialLayer": 2, "temporalLayer": None}
    request = parse_request(
        request_text("produceData", {"transportId": "t", "label": None, "sctpStreamParameters": {}})
    )
    assert request.data["label"] == ""
    assert parse_request('{"id": 3, "method": "leave", "data": null}').data == {}
    assert protocol.METHODS >= {"join", "produce", "consume", "consumeData", "leave"}


@pytest.mark.parametrize(
    ("raw", "request_id", "message"),
    [
        ("{not json", None, "malformed JSON"),
        ("", None, "malformed JSON"),
        (b"\xff\xfe", None, "malformed JSON"),
        ("[" * 100000 + "]" * 100000, None, "message too big"),
        ("[1, 2]", None, "a request must be a JSON object"),
        ('"join"', None, "a request must be a JSON object"),
        ('{"method": "join"}', None, "id must be a non-negative integer"),
        ('{"id": true, "method": "join"}', None, "id must be a non-negative integer"),
        ('{"id": -1, "method": "join"}', None, "id must be a non-negative integer"),
        ('{"id": 1.5, "method": "join"}', None, "id must be a non-negative integer"),
        ('{"id": 9007199254740992, "method": "join"}', None, "non-negative integer"),
        ('{"id": 4}', 4, "method must be a string"),
        ('{"id": 4, "method": 12}', 4, "method must be a string"),
        ('{"id": 5, "method": "fly"}', 5, "unknown method 'fly'"),
        ('{"id": 5, "method": "__init__"}', 5, "unknown method '__init__'"),
        ('{"id": 5, "method": "' + "x" * 100 + '"}', 5, "unknown method 'xxxxxxxx"),
        ('{"id": 6, "method": "leave", "data": [1]}', 6, "data must be a JSON object"),
        ('{"id": 6, "method": "join", "data": {}}', 6, "join: roomId must be 1 to 64"),
        ('{"id": 6, "method": "join", "data": {"roomId": "a/b"}}', 6, "roomId must be"),
        ('{"id": 6, "method": "join", "data": {"roomId": "' + "r" * 65 + '"}}', 6, "roomId"),
        ('{"id": 6, "method": "join", "data": {"roomId": "r"}}', 6, "rtpCapabilities must be"),
        (
            '{"id": 6, "method": "join", "data": {"roomId": "r", "rtpCapabilities": {}, '
            '"sctpCapabilities": 3}}',
            6,
            "sctpCapabilities must be an object",
        ),
        (
            '{"id": 6, "method": "join", "data": {"roomId": "r", "rtpCapabilities": {}, '
            '"displayName": 3}}',
            6,
            "displayName must be a string",
        ),
        (
            '{"id": 6, "method": "join", "data": {"roomId": "r", "rtpCapabilities": {}, '
            '"displayName": "' + "n" * 65 + '"}}',
            6,
            "displayName is longer than 64",
        ),
        ('{"id": 8, "method": "createWebRtcTransport"}', 8, "direction must be"),
        ('{"id": 8, "method": "connectWebRtcTransport", "data": {}}', 8, "transportId must be"),
        (
            '{"id": 8, "method": "connectWebRtcTransport", "data": {"transportId": ""}}',
            8,
            "transportId must be a non-empty string",
        ),
        (
            '{"id": 8, "method": "closeProducer", "data": {"producerId": "' + "p" * 65 + '"}}',
            8,
            "producerId is longer than 64",
        ),
        (
            '{"id": 8, "method": "produce", "data": {"transportId": "t", "kind": "data"}}',
            8,
            "kind must be 'audio' or 'video'",
        ),
        (
            '{"id": 8, "method": "produce", "data": {"transportId": "t", "kind": "audio"}}',
            8,
            "rtpParameters must be an object",
        ),
        (
            '{"id": 8, "method": "setConsumerPreferredLayers", "data": {"consumerId": "c", '
            '"spatialLayer": 256}}',
            8,
            "spatialLayer must be an integer in 0..255",
        ),
        (
            '{"id": 8, "method": "setConsumerPreferredLayers", "data": {"consumerId": "c", '
            '"spatialLayer": 1, "temporalLayer": true}}',
            8,
            "temporalLayer must be an integer",
        ),
        ('{"id": 8, "method": "consumeData", "data": {"transportId": "t"}}', 8, "dataProducerId"),
        (
            '{"id": 8, "method": "produceData", "data": {"transportId": "t", '
            '"sctpStreamParameters": {}, "label": 5}}',
            8,
            "label must be a string",
        ),
    ],
)
def test_parse_request_refuses(raw: str | bytes, request_id: int | None, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request(raw)
    assert message in str(info.value)
    assert info.value.request_id == request_id


def test_parse_request_size_limit_counts_utf8_bytes() -> None:
    text = json.dumps(
        {"id": 1, "method": "join", "data": {"roomId": "r", "displayName": "é" * 40000}},
        ensure_ascii=False,
    )
    assert len(text) < MAX_MESSAGE_SIZE < len(text.encode())
    with pytest.raises(ProtocolError, match="message too big"):
        parse_request(text)
    with pytest.raises(ProtocolError, match="displayName is longer"):
        parse_request(text.replace('"}}', '", "rtpCapabilities": {}}}'), max_size=1 << 20)


def test_server_messages() -> None:
    assert protocol.ok_response(3) == {"response": True, "id": 3, "ok": True, "data": {}}
    assert protocol.error_response(None, "bad") == {
        "response": True,
        "id": None,
        "ok": False,
        "error": "bad",
    }
    assert protocol.notification("peerLeft", {"id": "p"}) == {
        "notification": True,
        "method": "peerLeft",
        "data": {"id": "p"},
    }
    assert protocol.encode({"a": [1, "é"]}) == '{"a":[1,"é"]}'
    with pytest.raises(ValueError):
        protocol.encode({"a": float("nan")})
    assert protocol.validate_room_id("demo") == "demo"


# -- rooms and sessions (real worker, no sockets) -----------------------------------------


@pytest.fixture
async def webrtc_server(worker: Worker) -> WebRtcServer:
    return await worker.create_webrtc_server(
        listen_infos=[
            {"protocol": "udp", "ip": "127.0.0.1"},
            {"protocol": "tcp", "ip": "127.0.0.1"},
        ]
    )


@pytest.fixture
async def manager(worker: Worker, webrtc_server: WebRtcServer) -> AsyncIterator[RoomManager]:
    rooms = RoomManager(worker=worker, webrtc_server=webrtc_server)
    yield rooms
    rooms.close()


class Client:
    """A Session fed with requests as text, keeping its notifications."""

    def __init__(self, manager: RoomManager) -> None:
        self.session = Session(manager, self.notifications_append)
        self.notifications: list[dict[str, Any]] = []
        self.next_id = 0
        self.manager = manager

    def notifications_append(self, message: dict[str, Any]) -> None:
        assert message["notification"] is True
        self.notifications.append(message)

    def notified(self, method: str) -> list[dict[str, Any]]:
        return [n["data"] for n in self.notifications if n["method"] == method]

    async def send(self, method: str, data: Any = None) -> dict[str, Any]:
        self.next_id += 1
        response = await self.session.handle_message(request_text(method, data, self.next_id))
        assert response["id"] == self.next_id
        return response

    async def request(self, method: str, data: Any = None) -> Any:
        response = await self.send(method, data)
        assert response["ok"], response
        return response["data"]

    async def error(self, method: str, data: Any = None) -> str:
        response = await self.send(method, data)
        assert response["ok"] is False, response
        return str(response["error"])

    async def join(self, room: str = "room1", name: str = "guest") -> dict[str, Any]:
        caps = (await self.request("getRouterRtpCapabilities"))["rtpCapabilities"]
        return dict(
            await self.request(
                "join",
                {
                    "roomId": room,
                    "displayName": name,
                    "rtpCapabilities": caps,
                    "sctpCapabilities": SCTP_CAPABILITIES,
                },
            )
        )

    async def transport(self, direction: str) -> str:
        info = await self.request("createWebRtcTransport", {"direction": direction})
        return str(info["id"])

    async def produce(self, transport_id: str, kind: str = "audio") -> str:
        rtp = AUDIO_RTP if kind == "audio" else VIDEO_RTP
        data = {"transportId": transport_id, "kind": kind, "rtpParameters": rtp}
        return str((await self.request("produce", data))["id"])


async def router_state(router: Any) -> dict[str, Any]:
    """The router's dump with its lists sorted (the worker's maps have no order)."""
    dump = await router.dump()
    state: dict[str, Any] = {}
    for key, value in dump.items():
        if isinstance(value, list):
            value = sorted(json.dumps(v, sort_keys=True) for v in value)
        state[key] = value
    return state


async def test_join_creates_the_room_and_last_leave_closes_it(
    manager: RoomManager, worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="mafalda.demo")
    alice, bob = Client(manager), Client(manager)
    caps = (await alice.request("getRouterRtpCapabilities"))["rtpCapabilities"]
    assert manager.rooms == {}
    joined = await alice.join(name="alice")
    assert joined["roomId"] == "room1"
    assert joined["peers"] == []
    room = manager.rooms["room1"]
    peer = room.peers[joined["peerId"]]
    assert repr(peer) == f"<Peer id={peer.id} room=room1 name='alice'>"
    assert repr(room) == "<Room id=room1 peers=1>"
    # What the client loads its device with is what the room's router has.
    assert caps == json.loads(json.dumps(room.router.rtp_capabilities))
    assert (await worker.dump())["routerIds"] == [room.router.id]

    send_id = await alice.transport("send")
    producer_id = await alice.produce(send_id, "audio")
    joined_bob = await bob.join(name="bob")
    assert joined_bob["peers"] == [
        {
            "id": joined["peerId"],
            "displayName": "alice",
            "producers": [{"id": producer_id, "kind": "audio"}],
            "dataProducers": [],
        }
    ]
    assert alice.notified("peerJoined") == [{"id": joined_bob["peerId"], "displayName": "bob"}]
    assert bob.notified("peerJoined") == []

    assert await bob.request("leave") == {}
    assert alice.notified("peerLeft") == [{"id": joined_bob["peerId"]}]
    assert "room1" in manager.rooms
    # bob can join again (another room here) after leaving.
    await bob.join("room2")
    assert set(manager.rooms) == {"room1", "room2"}
    alice.session.close()
    bob.session.close()
    assert manager.rooms == {}
    assert room.closed and room.router.closed
    assert (await worker.dump())["routerIds"] == []
    joins = [r.getMessage() for r in caplog.records if r.getMessage().startswith("join ")]
    leaves = [r.getMessage() for r in caplog.records if r.getMessage().startswith("leave ")]
    assert len(joins) == 3 and len(leaves) == 3
    assert "room=room1" in joins[0] and "name='alice'" in joins[0]
    assert "(left; 1 left in the room)" in leaves[0]
    assert "(disconnected; 0 left in the room)" in leaves[-1]


async def test_media_and_data_between_two_peers(manager: RoomManager) -> None:
    alice, bob = Client(manager), Client(manager)
    a = await alice.join(name="alice")
    b = await bob.join(name="bob")
    a_send = await alice.transport("send")
    b_recv = await bob.transport("recv")
    transport_info = await alice.request("createWebRtcTransport", {"direction": "recv"})
    assert transport_info["sctpParameters"]["OS"] == 1024
    assert transport_info["iceCandidates"][0]["ip"] == "127.0.0.1"
    assert {c["protocol"] for c in transport_info["iceCandidates"]} == {"udp", "tcp"}
    assert transport_info["dtlsParameters"]["role"] == "auto"
    assert transport_info["iceParameters"]["iceLite"] is True

    audio_id = await alice.produce(a_send, "audio")
    video_id = await alice.produce(a_send, "video")
    assert bob.notified("newProducer") == [
        {"peerId": a["peerId"], "producerId": audio_id, "kind": "audio"},
        {"peerId": a["peerId"], "producerId": video_id, "kind": "video"},
    ]
    assert alice.notified("newProducer") == []
    room = manager.rooms["room1"]
    dump = await room.router.dump()
    observed = [e["key"] for e in dump["mapProducerIdObserverIds"] if e["values"]]
    assert observed == [audio_id]  # audio goes to the ActiveSpeakerObserver

    consumed = await bob.request("consume", {"transportId": b_recv, "producerId": video_id})
    assert consumed["producerId"] == video_id
    assert consumed["peerId"] == a["peerId"]
    assert consumed["kind"] == "video"
    assert consumed["type"] == "simple"
    assert consumed["producerPaused"] is False
    assert consumed["rtpParameters"]["codecs"][0]["mimeType"] == "video/VP8"
    consumer = room.peers[b["peerId"]].consumers[consumed["id"]]
    assert consumer.paused is True  # until the client resumes it
    await bob.request("resumeConsumer", {"consumerId": consumed["id"]})
    assert consumer.paused is False
    await bob.request(
        "setConsumerPreferredLayers", {"consumerId": consumed["id"], "spatialLayer": 0}
    )

    await alice.request("pauseProducer", {"producerId": video_id})
    await alice.request("resumeProducer", {"producerId": video_id})
    await asyncio.sleep(0)  # the worker's notifications are delivered with call_soon
    for _ in range(50):
        if len(bob.notified("consumerResumed")) == 1:
            break
        await asyncio.sleep(0.01)
    assert bob.notified("consumerPaused") == [{"consumerId": consumed["id"]}]
    assert bob.notified("consumerResumed") == [{"consumerId": consumed["id"]}]

    data_producer = await alice.request(
        "produceData",
        {"transportId": a_send, "sctpStreamParameters": {"streamId": 1}, "label": "chat"},
    )
    assert bob.notified("newDataProducer") == [
        {"peerId": a["peerId"], "dataProducerId": data_producer["id"], "label": "chat"}
    ]
    data_consumer = await bob.request(
        "consumeData", {"transportId": b_recv, "dataProducerId": data_producer["id"]}
    )
    assert data_consumer["dataProducerId"] == data_producer["id"]
    assert data_consumer["label"] == "chat"
    assert data_consumer["peerId"] == a["peerId"]
    assert isinstance(data_consumer["sctpStreamParameters"]["streamId"], int)

    # A late joiner learns everything alice has.
    carol = Client(manager)
    c = await carol.join(name="carol")
    alice_seen = next(p for p in c["peers"] if p["id"] == a["peerId"])
    assert alice_seen["producers"] == [
        {"id": audio_id, "kind": "audio"},
        {"id": video_id, "kind": "video"},
    ]
    assert alice_seen["dataProducers"] == [{"id": data_producer["id"], "label": "chat"}]
    assert {p["id"] for p in c["peers"]} == {a["peerId"], b["peerId"]}

    # Closing a producer closes its consumers: bob hears about it.
    await alice.request("closeProducer", {"producerId": video_id})
    for _ in range(100):
        if bob.notified("consumerClosed"):
            break
        await asyncio.sleep(0.01)
    assert bob.notified("consumerClosed") == [{"consumerId": consumed["id"]}]
    assert consumed["id"] not in room.peers[b["peerId"]].consumers

    # alice leaves: bob's data consumer of her chat closes too.
    alice.session.close()
    for _ in range(100):
        if bob.notified("dataConsumerClosed"):
            break
        await asyncio.sleep(0.01)
    assert bob.notified("dataConsumerClosed") == [{"dataConsumerId": data_consumer["id"]}]
    assert bob.notified("peerLeft") == [{"id": a["peerId"]}]
    assert room.peers[b["peerId"]].data_consumers == {}


async def test_bad_requests_get_clear_errors(manager: RoomManager) -> None:
    alice, bob = Client(manager), Client(manager)
    # Not a request at all: answered with id null, the session goes on.
    response = await alice.session.handle_message("{oops")
    assert response == {"response": True, "id": None, "ok": False, "error": "malformed JSON"}
    assert "unknown method 'explode'" in await alice.error("explode")
    # Before joining.
    for method, data in [
        ("createWebRtcTransport", {"direction": "send"}),
        ("leave", {}),
        ("closeProducer", {"producerId": "x"}),
    ]:
        assert await alice.error(method, data) == "join a room first"
    # Invalid capabilities are refused before any room exists.
    error = await alice.error(
        "join", {"roomId": "room1", "rtpCapabilities": {"codecs": [{"kind": "audio"}]}}
    )
    assert error.startswith("join: ")
    error = await alice.error(
        "join",
        {"roomId": "room1", "rtpCapabilities": {}, "sctpCapabilities": {"numStreams": 3}},
    )
    assert error.startswith("join: ")
    assert manager.rooms == {}

    a = await alice.join()
    b = await bob.join()
    assert "already joined room 'room1'" in await alice.error(
        "join", {"roomId": "room2", "rtpCapabilities": {}}
    )
    a_send = await alice.transport("send")
    a_recv = await alice.transport("recv")
    b_send = await bob.transport("send")
    b_recv = await bob.transport("recv")
    audio_id = await alice.produce(a_send)

    # Unknown ids, and ids of another peer's objects (unknown to this peer).
    cases: list[tuple[Client, str, dict[str, Any], str]] = [
        (
            alice,
            "connectWebRtcTransport",
            {"transportId": "nope", "dtlsParameters": {}},
            "unknown transport 'nope'",
        ),
        (
            alice,
            "connectWebRtcTransport",
            {"transportId": b_send, "dtlsParameters": {}},
            f"unknown transport '{b_send}'",
        ),
        (
            alice,
            "produce",
            {"transportId": a_recv, "kind": "audio", "rtpParameters": AUDIO_RTP},
            f"unknown send transport '{a_recv}'",
        ),
        (
            alice,
            "produce",
            {"transportId": b_send, "kind": "audio", "rtpParameters": AUDIO_RTP},
            f"unknown send transport '{b_send}'",
        ),
        (bob, "closeProducer", {"producerId": audio_id}, f"unknown producer '{audio_id}'"),
        (bob, "pauseProducer", {"producerId": "x"}, "unknown producer 'x'"),
        (
            bob,
            "consume",
            {"transportId": b_send, "producerId": audio_id},
            f"unknown recv transport '{b_send}'",
        ),
        (
            bob,
            "consume",
            {"transportId": b_recv, "producerId": "ghost"},
            "unknown producer 'ghost'",
        ),
        (
            alice,
            "consume",
            {"transportId": a_recv, "producerId": audio_id},
            f"unknown producer '{audio_id}'",
        ),
        (bob, "resumeConsumer", {"consumerId": "ghost"}, "unknown consumer 'ghost'"),
        (
            bob,
            "setConsumerPreferredLayers",
            {"consumerId": "ghost", "spatialLayer": 1},
            "unknown consumer 'ghost'",
        ),
        (
            bob,
            "consumeData",
            {"transportId": b_recv, "dataProducerId": "ghost"},
            "unknown data producer 'ghost'",
        ),
        (
            bob,
            "produceData",
            {"transportId": b_recv, "sctpStreamParameters": {"streamId": 1}},
            f"unknown send transport '{b_recv}'",
        ),
    ]
    for client, method, data, expected in cases:
        assert await client.error(method, data) == expected, method

    # What mediasoup itself refuses comes back prefixed with the method.
    bad_rtp = {"codecs": [{"mimeType": "audio/nope", "payloadType": 100, "clockRate": 8000}]}
    error = await alice.error(
        "produce", {"transportId": a_send, "kind": "audio", "rtpParameters": bad_rtp}
    )
    assert error.startswith("produce: ")
    error = await alice.error(
        "connectWebRtcTransport", {"transportId": a_send, "dtlsParameters": {"role": "x"}}
    )
    assert error.startswith("connectWebRtcTransport: ")
    error = await alice.error(
        "produceData", {"transportId": a_send, "sctpStreamParameters": {"streamId": 70000}}
    )
    assert error.startswith("produceData: ")

    # A consumer whose capabilities cannot receive the producer's codec.
    dave = Client(manager)
    caps = (await dave.request("getRouterRtpCapabilities"))["rtpCapabilities"]
    video_only = {**caps, "codecs": [c for c in caps["codecs"] if c["kind"] == "video"]}
    await dave.request("join", {"roomId": "room1", "rtpCapabilities": video_only})
    d_recv = await dave.transport("recv")
    assert "cannot consume producer" in await dave.error(
        "consume", {"transportId": d_recv, "producerId": audio_id}
    )

    # Limits.
    for _ in range(MAX_TRANSPORTS_PER_PEER - 2):
        await alice.transport("send")
    assert "too many transports" in await alice.error(
        "createWebRtcTransport", {"direction": "send"}
    )
    for i in range(MAX_PRODUCERS_PER_PEER - 1):
        rtp = {**VIDEO_RTP, "mid": f"v{i}", "encodings": [{"ssrc": 3000 + i}]}
        await alice.request(
            "produce", {"transportId": a_send, "kind": "video", "rtpParameters": rtp}
        )
    assert "too many producers" in await alice.error(
        "produce", {"transportId": a_send, "kind": "audio", "rtpParameters": AUDIO_RTP}
    )
    for i in range(MAX_DATA_PRODUCERS_PER_PEER):
        await alice.request(
            "produceData", {"transportId": a_send, "sctpStreamParameters": {"streamId": 10 + i}}
        )
    assert "too many data producers" in await alice.error(
        "produceData", {"transportId": a_send, "sctpStreamParameters": {"streamId": 20}}
    )

    # After all that, both peers still work.
    consumed = await bob.request("consume", {"transportId": b_recv, "producerId": audio_id})
    await bob.request("resumeConsumer", {"consumerId": consumed["id"]})
    assert a["peerId"] in manager.rooms["room1"].peers
    assert b["peerId"] in manager.rooms["room1"].peers
    # A closed session answers nothing more.
    alice.session.close()
    assert await alice.error("getRouterRtpCapabilities") == "session closed"


async def test_room_is_full(manager: RoomManager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mafalda.demo.room.MAX_PEERS_PER_ROOM", 1)
    await Client(manager).join()
    other = Client(manager)
    caps = (await other.request("getRouterRtpCapabilities"))["rtpCapabilities"]
    error = await other.error("join", {"roomId": "room1", "rtpCapabilities": caps})
    assert error == "room 'room1' is full (1 peers)"
    monkeypatch.setattr("mafalda.demo.room.MAX_ROOMS", 1)
    error = await other.error("join", {"roomId": "room2", "rtpCapabilities": caps})
    assert error == "too many rooms (at most 1)"


async def test_unexpected_failure_is_an_internal_error(
    manager: RoomManager, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client = Client(manager)

    async def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(manager, "get_or_create", boom)
    caps = (await client.request("getRouterRtpCapabilities"))["rtpCapabilities"]
    error = await client.error("join", {"roomId": "room1", "rtpCapabilities": caps})
    assert error == "join: internal error"
    assert "request join failed" in caplog.text


async def vanish_during(client: Client, observer: Any, event: str, request: Any) -> str:
    """Run ``request`` and close the client's session the moment ``event`` fires on
    ``observer`` (an object was created, its request not yet answered)."""

    def vanish(*args: Any) -> None:
        client.session.close()

    observer.once(event, vanish)
    response = await request
    assert response["ok"] is False
    return str(response["error"])


async def test_client_vanishing_mid_negotiation_frees_everything(
    manager: RoomManager, webrtc_server: WebRtcServer
) -> None:
    bob = Client(manager)
    b = await bob.join(name="bob")
    b_send = await bob.transport("send")
    b_recv = await bob.transport("recv")
    b_audio = await bob.produce(b_send)
    room = manager.rooms["room1"]
    router = room.router
    baseline = await router_state(router)

    # alice vanishes while her send transport is being created...
    alice = Client(manager)
    await alice.join(name="alice")
    error = await vanish_during(
        alice,
        router.observer,
        "newtransport",
        alice.send("createWebRtcTransport", {"direction": "send"}),
    )
    assert error == "WebRtcTransport closed while being created"
    assert await router_state(router) == baseline

    # ... while her producer is being created (after she consumed bob's audio) ...
    alice = Client(manager)
    await alice.join(name="alice")
    a_send = await alice.transport("send")
    a_recv = await alice.transport("recv")
    consumed = await alice.request("consume", {"transportId": a_recv, "producerId": b_audio})
    transport = room.peers[alice.session.peer.id].transports[a_send]  # type: ignore[union-attr]
    request = alice.send(
        "produce", {"transportId": a_send, "kind": "video", "rtpParameters": VIDEO_RTP}
    )
    error = await vanish_during(alice, transport.observer, "newproducer", request)
    assert error == "Producer closed while being created"
    assert consumed["id"]
    assert await router_state(router) == baseline
    assert bob.notified("newProducer") == []

    # ... and after producing, with bob consuming her (paused, never resumed).
    alice = Client(manager)
    a = await alice.join(name="alice")
    a_send = await alice.transport("send")
    await alice.transport("recv")
    a_video = await alice.produce(a_send, "video")
    a_chat = await alice.request(
        "produceData", {"transportId": a_send, "sctpStreamParameters": {"streamId": 1}}
    )
    bob_consumer = await bob.request("consume", {"transportId": b_recv, "producerId": a_video})
    bob_data = await bob.request(
        "consumeData", {"transportId": b_recv, "dataProducerId": a_chat["id"]}
    )
    assert (await router_state(router)) != baseline
    alice.session.close()  # the WebSocket dropped
    for _ in range(100):
        if bob.notified("consumerClosed") and bob.notified("dataConsumerClosed"):
            break
        await asyncio.sleep(0.01)
    assert bob.notified("consumerClosed") == [{"consumerId": bob_consumer["id"]}]
    assert bob.notified("dataConsumerClosed") == [{"dataConsumerId": bob_data["id"]}]
    assert a["peerId"] not in room.peers
    assert await router_state(router) == baseline
    assert sorted((await router.dump())["transportIds"]) == sorted([b_send, b_recv])
    server_dump = await webrtc_server.dump()
    assert sorted(server_dump["webRtcTransportIds"]) == sorted([b_send, b_recv])
    assert len(bob.notified("peerLeft")) == 3
    assert bob.notified("peerLeft")[-1] == {"id": a["peerId"]}

    # bob keeps working, and a newcomer sees him.
    carol = Client(manager)
    c = await carol.join(name="carol")
    assert [p["id"] for p in c["peers"]] == [b["peerId"]]
    c_recv = await carol.transport("recv")
    await carol.request("consume", {"transportId": c_recv, "producerId": b_audio})
    await bob.request("pauseProducer", {"producerId": b_audio})


async def test_joining_while_the_session_closes(manager: RoomManager, worker: Worker) -> None:
    """A client gone while its join waits for the room (its Router being made, by this
    join or by another client's): refused; a room that nobody joined is closed again."""
    alone = Client(manager)
    caps = (await alone.request("getRouterRtpCapabilities"))["rtpCapabilities"]
    join = {"roomId": "room1", "rtpCapabilities": caps}
    worker.observer.once("newrouter", lambda router: alone.session.close())
    assert await alone.error("join", join) == "session closed"
    assert manager.rooms == {}
    assert (await worker.dump())["routerIds"] == []

    # first's join creates the room; gone's join waits for it (the manager's lock) and
    # gone vanishes meanwhile: the room stays, with first alone in it.
    first, gone = Client(manager), Client(manager)
    worker.observer.once("newrouter", lambda router: gone.session.close())
    async with asyncio.timeout(10):
        joined, refused = await asyncio.gather(first.request("join", join), gone.send("join", join))
    assert refused["ok"] is False and refused["error"] == "session closed"
    room = manager.rooms["room1"]
    assert list(room.peers) == [joined["peerId"]]
    assert not room.closed
    assert gone.session.peer is None
    assert first.notified("peerJoined") == []
    assert (await worker.dump())["routerIds"] == [room.router.id]


async def test_sessions_outliving_their_closed_room(manager: RoomManager, worker: Worker) -> None:
    """The rooms closed under connected clients (the server closing): their sessions
    closing later touch nothing, not even a new room of the same name."""
    alice, bob = Client(manager), Client(manager)
    await alice.join(name="alice")
    await bob.join(name="bob")
    old_room = manager.rooms["room1"]
    manager.close()
    assert manager.rooms == {}
    assert old_room.closed and old_room.router.closed and old_room.peers == {}
    carol = Client(manager)
    c = await carol.join(name="carol")
    room = manager.rooms["room1"]
    assert room is not old_room
    alice.session.close()
    bob.session.close()
    assert list(room.peers) == [c["peerId"]]
    assert carol.notified("peerLeft") == []
    assert manager.rooms == {"room1": room} and not room.closed
    assert (await worker.dump())["routerIds"] == [room.router.id]


async def test_join_fails_cleanly_when_the_worker_stops_answering(
    manager: RoomManager, worker: Worker
) -> None:
    """The worker freezes (SIGSTOP) once the room's Router exists, before its
    ActiveSpeakerObserver: the join fails with the timeout and the Router is not leaked."""
    client = Client(manager)
    caps = (await client.request("getRouterRtpCapabilities"))["rtpCapabilities"]

    def freeze(*made: object) -> None:
        # Short only from here on: the requests before are answered at any machine load.
        worker._channel.request_timeout = 0.2
        os.kill(worker.pid, signal.SIGSTOP)

    worker.observer.once("newrouter", freeze)
    try:
        async with asyncio.timeout(10):
            error = await client.error("join", {"roomId": "room1", "rtpCapabilities": caps})
    finally:
        os.kill(worker.pid, signal.SIGCONT)
        worker._channel.request_timeout = REQUEST_TIMEOUT
    assert error.startswith("join: request timeout [method:ROUTER_CREATE_ACTIVESPEAKEROBSERVER")
    assert manager.rooms == {}
    assert (await worker.dump())["routerIds"] == []
    # The worker answers again: the same client joins.
    await client.join()
    assert (await worker.dump())["routerIds"] == [manager.rooms["room1"].router.id]


async def test_produce_goes_on_when_the_active_speaker_observer_does_not_answer(
    manager: RoomManager, worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker freezes (SIGSTOP) once an audio Producer exists, before it is added to
    the ActiveSpeakerObserver: the produce succeeds anyway (a warning is logged)."""
    alice, bob = Client(manager), Client(manager)
    a = await alice.join(name="alice")
    await bob.join(name="bob")
    a_send = await alice.transport("send")
    peer = manager.rooms["room1"].peers[a["peerId"]]

    def freeze(*made: object) -> None:
        worker._channel.request_timeout = 0.2
        os.kill(worker.pid, signal.SIGSTOP)

    peer.transports[a_send].observer.once("newproducer", freeze)
    try:
        async with asyncio.timeout(10):
            audio_id = await alice.produce(a_send, "audio")
    finally:
        os.kill(worker.pid, signal.SIGCONT)
        worker._channel.request_timeout = REQUEST_TIMEOUT
    assert "active speaker observer: request timeout [method:RTPOBSERVER_ADD_PRODUCER" in (
        caplog.text
    )
    assert bob.notified("newProducer") == [
        {"peerId": a["peerId"], "producerId": audio_id, "kind": "audio"}
    ]
    assert (await peer.producers[audio_id].dump())["id"] == audio_id


# -- the WebSocket front end ----------------------------------------------------------------


@pytest.fixture
async def demo() -> AsyncIterator[DemoServer]:
    async with DemoServer(DemoConfig(port=0, rtc_port=0)) as server:
        yield server


class WsClient:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def receive_json(self) -> dict[str, Any]:
        async with asyncio.timeout(10):
            message = await self.ws.receive()
        assert message.type == aiohttp.WSMsgType.TEXT, message
        return dict(json.loads(message.data))

    async def response(self) -> dict[str, Any]:
        while True:
            message = await self.receive_json()
            if message.get("response"):
                return message

    async def request(self, method: str, data: Any = None) -> Any:
        self.next_id += 1
        await self.ws.send_str(request_text(method, data, self.next_id))
        response = await self.response()
        assert response["id"] == self.next_id
        assert response["ok"], response
        return response["data"]

    async def join(self, room: str = "ws") -> dict[str, Any]:
        caps = (await self.request("getRouterRtpCapabilities"))["rtpCapabilities"]
        return dict(await self.request("join", {"roomId": room, "rtpCapabilities": caps}))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_page_and_static_files(demo: DemoServer, http: aiohttp.ClientSession) -> None:
    base = demo.url("x").split("/?")[0]
    assert demo.url("x") == f"http://127.0.0.1:{demo.port}/?room=x"
    async with http.get(demo.url("x")) as response:
        assert response.status == 200
        text = await response.text()
        assert "/static/build/demo.js" in text
        assert response.headers["Content-Type"].startswith("text/html")
    async with http.get(base + "/favicon.ico") as response:
        assert response.status == 204
    async with http.get(base + "/static/index.html") as response:
        assert response.status == 200
    async with http.get(base + "/static/../server.py") as response:
        assert response.status in (403, 404)


async def test_websocket_bad_input(demo: DemoServer, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(demo.ws_url) as ws:
        client = WsClient(ws)
        await ws.send_str("{malformed")
        assert await client.response() == {
            "response": True,
            "id": None,
            "ok": False,
            "error": "malformed JSON",
        }
        await ws.send_bytes(b'{"id": 1, "method": "leave"}')
        assert (await client.response())["error"] == "binary messages are not supported"
        await ws.send_str('{"id": 41, "method": "selfDestruct"}')
        assert await client.response() == {
            "response": True,
            "id": 41,
            "ok": False,
            "error": "unknown method 'selfDestruct'",
        }
        # Still usable.
        joined = await client.join()
        assert joined["roomId"] == "ws"


async def test_websocket_oversized_message_drops_the_client(
    demo: DemoServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="mafalda.demo")
    async with http.ws_connect(demo.ws_url) as ws_bob, http.ws_connect(demo.ws_url) as ws_eve:
        bob, eve = WsClient(ws_bob), WsClient(ws_eve)
        b = await bob.join()
        await bob.request("createWebRtcTransport", {"direction": "recv"})
        e = await eve.join()
        eve_send = await eve.request("createWebRtcTransport", {"direction": "send"})
        room = demo.rooms.rooms["ws"]
        assert set(room.peers) == {b["peerId"], e["peerId"]}
        assert eve_send["id"] in (await room.router.dump())["transportIds"]
        await ws_eve.send_str("x" * (MAX_MESSAGE_SIZE + 1))
        async with asyncio.timeout(10):
            closing = await ws_eve.receive()
        assert closing.type == aiohttp.WSMsgType.CLOSE
        assert closing.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        # eve is gone with everything she had; bob hears it and keeps working.
        left = await bob.receive_json()
        while left.get("method") != "peerLeft":
            left = await bob.receive_json()
        assert left["data"] == {"id": e["peerId"]}
        assert set(room.peers) == {b["peerId"]}
        assert f"peer={e['peerId']} name='guest' (dropped: Message size " in caplog.text
        dump = await room.router.dump()
        assert eve_send["id"] not in dump["transportIds"]
        assert len(dump["transportIds"]) == 1
        await bob.request("createWebRtcTransport", {"direction": "send"})


async def test_websocket_client_vanishing_frees_its_peer(
    demo: DemoServer, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(demo.ws_url) as ws_bob:
        bob = WsClient(ws_bob)
        b = await bob.join()
        ws_eve = await http.ws_connect(demo.ws_url)
        eve = WsClient(ws_eve)
        await eve.join()
        await eve.request("createWebRtcTransport", {"direction": "send"})
        await eve.request("createWebRtcTransport", {"direction": "recv"})
        # Vanish with a request in flight (its answer will find nobody).
        await ws_eve.send_str(request_text("createWebRtcTransport", {"direction": "send"}, 99))
        await ws_eve.close()
        left = await bob.receive_json()
        while left.get("method") != "peerLeft":
            left = await bob.receive_json()
        room = demo.rooms.rooms["ws"]
        assert set(room.peers) == {b["peerId"]}
        assert (await room.router.dump())["transportIds"] == []
        assert (await demo.webrtc_server.dump())["webRtcTransportIds"] == []
        await bob.request("createWebRtcTransport", {"direction": "recv"})
    # bob gone too: the room closed.
    for _ in range(200):
        if not demo.rooms.rooms:
            break
        await asyncio.sleep(0.01)
    assert demo.rooms.rooms == {}
    assert (await demo.worker.dump())["routerIds"] == []


async def test_server_close_drops_clients(http: aiohttp.ClientSession) -> None:
    server = DemoServer(DemoConfig(port=0, rtc_port=0))
    await server.start()
    ws = await http.ws_connect(server.ws_url)
    await WsClient(ws).join()
    await server.close()
    async with asyncio.timeout(10):
        message = await ws.receive()
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert server.worker.closed
    await ws.close()


async def test_server_start_fails_when_its_rtc_port_is_taken() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        server = DemoServer(DemoConfig(port=0, rtc_port=taken.getsockname()[1]))
        with pytest.raises(MediasoupError):
            await server.start()
    # Nothing is left running: the worker closed, no HTTP port was opened.
    assert server.worker.closed
    assert server.port == 0
    await server.close()  # again: nothing more to do
    assert server.worker.closed


@pytest.mark.parametrize(
    ("config", "named"),
    [
        (DemoConfig(layer="nope"), "invalid layer 'nope'"),  # type: ignore[arg-type]
        (DemoConfig(layer="remote", token="t"), "the remote layer needs a url and a token"),
        (DemoConfig(layer="cluster", url="redis://h"), "the cluster layer needs a url"),
        (DemoConfig(url="ws://h/"), "a url is for the remote, cluster or swarm layer"),
        (DemoConfig(num_workers=2), "num_workers is for the mafalda layer"),
        (DemoConfig(layer="remote", url="ws://h/", token="t", policy="spread"), "policy"),
    ],
)
async def test_a_layer_that_does_not_add_up_is_refused_before_anything_starts(
    config: DemoConfig, named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        config.check()
    server = DemoServer(config)
    with pytest.raises(ValueError, match=named):
        await server.start()
    assert server.port == 0


async def test_a_room_manager_takes_a_webrtc_server_or_listen_infos(worker: Worker) -> None:
    server = await worker.create_webrtc_server(
        listen_infos=[{"protocol": "udp", "ip": "127.0.0.1", "port": 0}]
    )
    try:
        for both_or_neither in (
            {"webrtc_server": server, "listen_infos": [{"protocol": "udp", "ip": "127.0.0.1"}]},
            {},
        ):
            with pytest.raises(ValueError, match="either webrtc_server or listen_infos"):
                RoomManager(worker=worker, **both_or_neither)
    finally:
        server.close()


def test_demo_command_layers(capsys: pytest.CaptureFixture[str]) -> None:
    from mafalda import cli

    args = cli.build_parser().parse_args(
        ["demo", "--layer", "mafalda", "--num-workers", "2", "--policy", "spread"]
    )
    assert (args.layer, args.num_workers, args.policy, args.url) == ("mafalda", 2, "spread", None)
    assert cli.main(["demo", "--layer", "swarm", "--token", "t"]) == 2
    assert "the swarm layer needs a url and a token" in capsys.readouterr().err
    assert cli.main(["demo", "--layer", "mafalda", "--policy", "nope", "--port", "0"]) == 2
    assert "policy" in capsys.readouterr().err


async def test_closing_a_server_never_started_does_nothing() -> None:
    server = DemoServer(DemoConfig(port=0))
    await server.close()
    assert server.port == 0


async def test_server_url_forms() -> None:
    assert DemoServer(DemoConfig(host="0.0.0.0", port=1)).url("r") == "http://127.0.0.1:0/?room=r"
    assert DemoServer(DemoConfig(host="::1")).url() == "http://[::1]:0/?room=demo"
    assert DemoServer(DemoConfig(host="localhost")).ws_url == "ws://localhost:0/ws"


def free_udp_and_tcp_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise AssertionError("no port free for both UDP and TCP")


async def test_announced_ip_and_fixed_rtc_port(http: aiohttp.ClientSession) -> None:
    port = free_udp_and_tcp_port()
    config = DemoConfig(port=0, rtc_port=port, announced_ip="192.0.2.10")
    async with DemoServer(config) as server, http.ws_connect(server.ws_url) as ws:
        client = WsClient(ws)
        await client.join()
        info = await client.request("createWebRtcTransport", {"direction": "send"})
        candidates = info["iceCandidates"]
        assert {(c["address"], c["port"], c["protocol"]) for c in candidates} == {
            ("192.0.2.10", port, "udp"),
            ("192.0.2.10", port, "tcp"),
        }


async def test_client_that_does_not_read_is_dropped(
    demo: DemoServer, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mafalda.demo.server.MAX_OUTBOX", 0)
    async with http.ws_connect(demo.ws_url) as ws:
        await ws.send_str(request_text("getRouterRtpCapabilities"))
        async with asyncio.timeout(10):
            message = await ws.receive()
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert message.data == aiohttp.WSCloseCode.POLICY_VIOLATION
        assert message.extra == "too slow"


async def test_a_slow_client_is_dropped_once(
    demo: DemoServer,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Answers that overflow after the drop began are discarded without a second close."""
    monkeypatch.setattr("mafalda.demo.server.MAX_OUTBOX", 0)
    async with http.ws_connect(demo.ws_url) as ws:
        for _ in range(3):  # one burst: the later answers come while the socket closes
            await ws.send_str(request_text("getRouterRtpCapabilities"))
        async with asyncio.timeout(10):
            message = await ws.receive()
        assert (message.type, message.extra) == (aiohttp.WSMsgType.CLOSE, "too slow")
    async with asyncio.timeout(10):
        while demo._sockets:
            await asyncio.sleep(0.01)
    drops = [r for r in caplog.records if r.message.startswith("dropping a client")]
    assert len(drops) == 1


async def non_reading_client(server: DemoServer, caplog: pytest.LogCaptureFixture) -> socket.socket:
    """A WebSocket client that sends requests and never reads their answers, until the
    server drops it ('too slow'). Its small receive buffer fills soon, then the server's:
    the connection's writer, and then the drop's close frame, wait on a drain that only
    a read would allow."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(
            sock,
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode(),
        )
        head = b""
        async with asyncio.timeout(10):
            while b"\r\n\r\n" not in head:  # the 101 only: nothing is read after it
                head += await loop.sock_recv(sock, 1)
        assert head.startswith(b"HTTP/1.1 101")
        frame = masked_frame(0x1, request_text("getRouterRtpCapabilities").encode())
        async with asyncio.timeout(30):
            while not any(r.message.startswith("dropping a client") for r in caplog.records):
                # A few at a time: the outbox grows only once the writer waits on the
                # socket, so that the drop waits on it too.
                await loop.sock_sendall(sock, frame * 20)
                await asyncio.sleep(0.005)
    except BaseException:
        sock.close()
        raise
    return sock


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client's final frame (masked with a zero key: the payload as it is)."""
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + bytes(4) + payload


async def tasks_left(timeout: float) -> list[asyncio.Task[Any]]:
    """The tasks other than the test's still running after at most ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    here, deadline = asyncio.current_task(), loop.time() + timeout
    while (left := [t for t in asyncio.all_tasks() if t is not here]) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    return left


async def test_closing_the_server_cancels_the_drop_of_a_client_that_never_reads(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The drop of a client that does not read waits on the socket; closing the server
    cancels it, and with it the writer (waiting on the same drain) long before its
    WRITER_GRACE: no task is left."""
    monkeypatch.setattr("mafalda.demo.server.WRITER_GRACE", 60.0)
    loop = asyncio.get_running_loop()
    server = DemoServer(DemoConfig(port=0, rtc_port=0))
    await server.start()
    sock = await non_reading_client(server, caplog)
    try:
        started = loop.time()
        await server.close()
        assert loop.time() - started < 10  # aiohttp's shutdown: 2 s, twice
        assert server.worker.closed
        assert await tasks_left(2) == []
    finally:
        sock.close()
        await server.close()  # (again: nothing more to do, unless the test failed first)


async def test_a_dropped_client_that_never_reads_has_its_writer_stopped(
    demo: DemoServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A client dropped for not reading, that closes its end of the WebSocket and still
    does not read: its handler ends, and stops the writer that waits on the socket
    WRITER_GRACE later (the drop's close frame with it)."""
    monkeypatch.setattr("mafalda.demo.server.WRITER_GRACE", 0.5)
    loop = asyncio.get_running_loop()
    sock = await non_reading_client(demo, caplog)
    try:
        assert len(demo._sockets) == 1
        await loop.sock_sendall(sock, masked_frame(0x8, (1000).to_bytes(2, "big")))
        started = loop.time()
        assert await tasks_left(5) == []
        assert loop.time() - started >= 0.5  # the writer had its grace
        assert demo._sockets == set()
    finally:
        sock.close()
