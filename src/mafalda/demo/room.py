"""Rooms and peers of the demo: one Router per room, one Peer per joined client.

Everything here works without sockets: a :class:`Session` is fed the text of each
message a client sends and returns the response to send back; notifications go out
through the ``send`` callable it was given. ``server.py`` wires sessions to WebSockets.

A room exists while it has peers: the first join creates it (a Router and an
ActiveSpeakerObserver), the last leave closes it. The Router comes from whatever layer
the server runs on, through the one call they share, ``create_router()``: a worker (its
WebRtcTransports on the server's WebRtcServer, one UDP and one TCP port for all), a
Mafalda pool, a Remote Mediasoup worker or a Remote Mafalda, a cluster or a swarm
(their transports on ``listen_infos``). The rest of this module is the same for all.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import uuid
from collections.abc import Callable
from typing import Any, Final, Literal, Protocol

from mafalda.demo import protocol
from mafalda.demo.protocol import ProtocolError, Request
from mafalda.mediasoup import (
    ActiveSpeakerObserver,
    Consumer,
    DataConsumer,
    DataProducer,
    ListenInfo,
    MediasoupError,
    Producer,
    Router,
    RouterRtpCodecCapability,
    RtpCapabilities,
    SctpCapabilities,
    WebRtcTransport,
    ortc,
)

__all__ = [
    "MEDIA_CODECS",
    "Peer",
    "RequestError",
    "Room",
    "RoomManager",
    "Session",
]

logger = logging.getLogger("mafalda.demo")

#: The codecs of every room's Router.
MEDIA_CODECS: Final[list[RouterRtpCodecCapability]] = [
    {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2},
    {
        "kind": "video",
        "mimeType": "video/VP8",
        "clockRate": 90000,
        "parameters": {"x-google-start-bitrate": 1000},
    },
    {
        "kind": "video",
        "mimeType": "video/H264",
        "clockRate": 90000,
        "parameters": {
            "packetization-mode": 1,
            "profile-level-id": "42e01f",
            "level-asymmetry-allowed": 1,
            "x-google-start-bitrate": 1000,
        },
    },
]

MAX_ROOMS: Final = 100
MAX_PEERS_PER_ROOM: Final = 32
MAX_TRANSPORTS_PER_PEER: Final = 4
MAX_PRODUCERS_PER_PEER: Final = 4
MAX_DATA_PRODUCERS_PER_PEER: Final = 2

Send = Callable[[dict[str, Any]], None]


class RouterSource(Protocol):
    """What makes rooms' Routers: a Worker, a Mafalda, a Remote Mediasoup worker, a
    Remote Mafalda, a horizontal or swarm Cluster (the same call in every layer)."""

    async def create_router(
        self,
        *,
        media_codecs: list[RouterRtpCodecCapability] | None = None,
        app_data: dict[str, Any] | None = None,
    ) -> Any: ...


class RequestError(Exception):
    """A request the room refuses (unknown ids, wrong state, limits): told to the client."""


# -- peers ------------------------------------------------------------------------------


class Peer:
    """A client in a room and the mediasoup objects it owns."""

    def __init__(
        self,
        *,
        peer_id: str,
        display_name: str,
        room: Room,
        rtp_capabilities: RtpCapabilities,
        sctp_capabilities: SctpCapabilities | None,
        send: Send,
    ) -> None:
        self.id = peer_id
        self.display_name = display_name
        self.room = room
        self.rtp_capabilities = rtp_capabilities
        self.sctp_capabilities = sctp_capabilities
        self._send = send
        self.closed = False
        self.transports: dict[str, WebRtcTransport] = {}
        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, Consumer] = {}
        self.data_producers: dict[str, DataProducer] = {}
        self.data_consumers: dict[str, DataConsumer] = {}

    def __repr__(self) -> str:
        return f"<Peer id={self.id} room={self.room.id} name={self.display_name!r}>"

    def notify(self, method: str, data: dict[str, Any]) -> None:
        if not self.closed:
            self._send(protocol.notification(method, data))

    def describe(self) -> dict[str, Any]:
        """What other peers learn about this one when they join."""
        return {
            "id": self.id,
            "displayName": self.display_name,
            "producers": [{"id": p.id, "kind": p.kind} for p in self.producers.values()],
            "dataProducers": [{"id": d.id, "label": d.label} for d in self.data_producers.values()],
        }

    def transport(self, transport_id: str, direction: Literal["send", "recv"]) -> WebRtcTransport:
        transport = self.transports.get(transport_id)
        if transport is None or transport.app_data.get("direction") != direction:
            raise RequestError(f"unknown {direction} transport {transport_id!r}")
        return transport

    def consumer(self, consumer_id: str) -> Consumer:
        consumer = self.consumers.get(consumer_id)
        if consumer is None:
            raise RequestError(f"unknown consumer {consumer_id!r}")
        return consumer

    def producer(self, producer_id: str) -> Producer:
        producer = self.producers.get(producer_id)
        if producer is None:
            raise RequestError(f"unknown producer {producer_id!r}")
        return producer

    # Each object leaves its dict when it closes, however it closes (itself, its
    # transport, or the producer it consumes).

    def add_transport(self, transport: WebRtcTransport) -> None:
        self.transports[transport.id] = transport
        transport.observer.on("close", lambda: self.transports.pop(transport.id, None))

        def on_dtls_state(state: str) -> None:
            if state in ("failed", "closed"):
                logger.warning("peer %s: transport %s DTLS %s", self.id, transport.id, state)

        transport.on("dtlsstatechange", on_dtls_state)

    def add_producer(self, producer: Producer) -> None:
        self.producers[producer.id] = producer
        producer.observer.on("close", lambda: self.producers.pop(producer.id, None))

    def add_consumer(self, consumer: Consumer) -> None:
        cid = consumer.id
        self.consumers[cid] = consumer
        consumer.observer.on("close", lambda: self.consumers.pop(cid, None))
        consumer.on("producerclose", lambda: self.notify("consumerClosed", {"consumerId": cid}))
        consumer.on("producerpause", lambda: self.notify("consumerPaused", {"consumerId": cid}))
        consumer.on("producerresume", lambda: self.notify("consumerResumed", {"consumerId": cid}))

        def on_layers(layers: dict[str, Any] | None) -> None:
            self.notify(
                "consumerLayersChanged",
                {
                    "consumerId": cid,
                    "spatialLayer": layers["spatialLayer"] if layers else None,
                    "temporalLayer": layers.get("temporalLayer") if layers else None,
                },
            )

        consumer.on("layerschange", on_layers)

    def add_data_producer(self, data_producer: DataProducer) -> None:
        self.data_producers[data_producer.id] = data_producer
        data_producer.observer.on("close", lambda: self.data_producers.pop(data_producer.id, None))

    def add_data_consumer(self, data_consumer: DataConsumer) -> None:
        dcid = data_consumer.id
        self.data_consumers[dcid] = data_consumer
        data_consumer.observer.on("close", lambda: self.data_consumers.pop(dcid, None))
        data_consumer.on(
            "dataproducerclose",
            lambda: self.notify("dataConsumerClosed", {"dataConsumerId": dcid}),
        )

    def close(self) -> None:
        """Close every transport (and so every producer and consumer) of this peer.

        Closing again does nothing: no transport is added once closed."""
        self.closed = True
        for transport in list(self.transports.values()):
            transport.close()
        self.transports.clear()


# -- rooms ------------------------------------------------------------------------------


class Room:
    """A Router, its ActiveSpeakerObserver, and the peers that joined."""

    def __init__(self, *, room_id: str, router: Router, speakers: ActiveSpeakerObserver) -> None:
        self.id = room_id
        self.router = router
        self.active_speaker_observer = speakers
        self.peers: dict[str, Peer] = {}
        self.closed = False
        #: The last dominant speaker, ``{peerId, producerId}``, told to those who join.
        self.active_speaker: dict[str, Any] | None = None
        speakers.on("dominantspeaker", self._on_dominant_speaker)

    @classmethod
    async def create(
        cls,
        *,
        room_id: str,
        worker: RouterSource,
        media_codecs: list[RouterRtpCodecCapability],
    ) -> Room:
        router: Router = await worker.create_router(
            media_codecs=media_codecs, app_data={"room": room_id}
        )
        try:
            speakers = await router.create_active_speaker_observer(interval=300)
        except BaseException:
            router.close()
            raise
        return cls(room_id=room_id, router=router, speakers=speakers)

    def __repr__(self) -> str:
        return f"<Room id={self.id} peers={len(self.peers)}>"

    def _on_dominant_speaker(self, speaker: dict[str, Any]) -> None:
        producer: Producer = speaker["producer"]
        self.active_speaker = {"peerId": producer.app_data.get("peerId"), "producerId": producer.id}
        self.broadcast("activeSpeaker", self.active_speaker)

    def audio_producer_closed(self, producer_id: str) -> None:
        """Nobody speaks any more when the dominant speaker's producer is gone."""
        if self.active_speaker is not None and self.active_speaker["producerId"] == producer_id:
            self.active_speaker = None
            self.broadcast("activeSpeaker", {"peerId": None, "producerId": None})

    def broadcast(self, method: str, data: dict[str, Any], *, exclude: Peer | None = None) -> None:
        for peer in list(self.peers.values()):
            if peer is not exclude:
                peer.notify(method, data)

    def find_producer(self, producer_id: str) -> tuple[Peer, Producer] | None:
        for peer in self.peers.values():
            producer = peer.producers.get(producer_id)
            if producer is not None:
                return peer, producer
        return None

    def find_data_producer(self, data_producer_id: str) -> tuple[Peer, DataProducer] | None:
        for peer in self.peers.values():
            data_producer = peer.data_producers.get(data_producer_id)
            if data_producer is not None:
                return peer, data_producer
        return None

    def close(self) -> None:
        """Close the peers and the Router (again: nothing left to close, nothing done)."""
        self.closed = True
        for peer in list(self.peers.values()):
            peer.close()
        self.peers.clear()
        self.router.close()


class RoomManager:
    """The rooms of one server: created on first join, closed when the last peer leaves."""

    def __init__(
        self,
        *,
        worker: RouterSource,
        webrtc_server: Any = None,
        listen_infos: list[ListenInfo] | None = None,
        media_codecs: list[RouterRtpCodecCapability] | None = None,
    ) -> None:
        """worker: where rooms' Routers come from. Their WebRtcTransports go on
        ``webrtc_server`` (a worker's, or the layer's own: a Mafalda's, a cluster's) or
        on ``listen_infos`` (one of the two)."""
        if (webrtc_server is None) == (listen_infos is None):
            raise ValueError("give a RoomManager either webrtc_server or listen_infos")
        self.worker = worker
        self.webrtc_server = webrtc_server
        #: How every WebRtcTransport listens.
        self.transport_options: dict[str, Any] = (
            {"webrtc_server": webrtc_server}
            if webrtc_server is not None
            else {"listen_infos": copy.deepcopy(listen_infos)}
        )
        self.media_codecs = copy.deepcopy(media_codecs or MEDIA_CODECS)
        # Every room's Router has these capabilities (same codecs, same generation).
        self.rtp_capabilities: RtpCapabilities = ortc.generate_router_rtp_capabilities(
            copy.deepcopy(self.media_codecs)
        )
        self.rooms: dict[str, Room] = {}
        self._lock = asyncio.Lock()

    async def get_or_create(self, room_id: str) -> Room:
        async with self._lock:
            room = self.rooms.get(room_id)
            if room is None:
                if len(self.rooms) >= MAX_ROOMS:
                    raise RequestError(f"too many rooms (at most {MAX_ROOMS})")
                room = await Room.create(
                    room_id=room_id, worker=self.worker, media_codecs=self.media_codecs
                )
                self.rooms[room_id] = room
                room.router.observer.on("close", lambda: self._forget(room_id, room))
            return room

    def _forget(self, room_id: str, room: Room) -> None:
        if self.rooms.get(room_id) is room:
            del self.rooms[room_id]
        room.closed = True

    def add_peer(self, room: Room, peer: Peer) -> None:
        room.peers[peer.id] = peer
        logger.info(
            "join  room=%s peer=%s name=%r (%d in the room)",
            room.id,
            peer.id,
            peer.display_name,
            len(room.peers),
        )
        room.broadcast(
            "peerJoined", {"id": peer.id, "displayName": peer.display_name}, exclude=peer
        )

    def remove_peer(self, peer: Peer, reason: str) -> None:
        """Free everything the peer owns, tell the others; close the room if now empty."""
        room = peer.room
        if room.peers.get(peer.id) is not peer:
            return
        del room.peers[peer.id]
        peer.close()
        logger.info(
            "leave room=%s peer=%s name=%r (%s; %d left in the room)",
            room.id,
            peer.id,
            peer.display_name,
            reason,
            len(room.peers),
        )
        room.broadcast("peerLeft", {"id": peer.id})
        if not room.peers:
            room.close()
            self._forget(room.id, room)

    def close(self) -> None:
        for room in list(self.rooms.values()):
            room.close()
        self.rooms.clear()


def _check_still_there(
    peer: Peer, created: WebRtcTransport | Producer | Consumer | DataProducer | DataConsumer
) -> None:
    """After an await that created ``created``: if its peer left or it closed meanwhile
    (its transport or producer closed), close it and refuse the request."""
    if peer.closed or created.closed:
        created.close()
        raise RequestError(f"{type(created).__name__} closed while being created")


# -- sessions ---------------------------------------------------------------------------


class Session:
    """One client connection: the protocol's state machine (not joined, or one Peer)."""

    def __init__(self, manager: RoomManager, send: Send) -> None:
        self.manager = manager
        self._send = send
        self.peer: Peer | None = None
        self.closed = False
        self._handlers: dict[str, Callable[[Any], Any]] = {
            "getRouterRtpCapabilities": self._get_router_rtp_capabilities,
            "join": self._join,
            "leave": self._leave,
            "createWebRtcTransport": self._create_webrtc_transport,
            "connectWebRtcTransport": self._connect_webrtc_transport,
            "produce": self._produce,
            "closeProducer": self._close_producer,
            "pauseProducer": self._pause_producer,
            "resumeProducer": self._resume_producer,
            "consume": self._consume,
            "resumeConsumer": self._resume_consumer,
            "setConsumerPreferredLayers": self._set_consumer_preferred_layers,
            "produceData": self._produce_data,
            "consumeData": self._consume_data,
        }
        assert set(self._handlers) == protocol.METHODS

    async def handle_message(self, raw: str | bytes) -> dict[str, Any]:
        """Handle one client message; return the response to send (always exactly one)."""
        try:
            request = protocol.parse_request(raw)
        except ProtocolError as error:
            return protocol.error_response(error.request_id, str(error))
        return await self.handle(request)

    async def handle(self, request: Request) -> dict[str, Any]:
        if self.closed:
            return protocol.error_response(request.id, "session closed")
        try:
            data = await self._handlers[request.method](request.data)
        except RequestError as error:
            return protocol.error_response(request.id, str(error))
        except (TypeError, ValueError, MediasoupError) as error:
            # mediasoup's own validation of what the client sent (RTP parameters...),
            # or a request on an object that just closed.
            return protocol.error_response(request.id, f"{request.method}: {error}")
        except Exception:
            logger.exception("request %s failed", request.method)
            return protocol.error_response(request.id, f"{request.method}: internal error")
        return protocol.ok_response(request.id, data)

    def close(self, reason: str = "disconnected") -> None:
        """The client is gone: free its peer (once: the peer is forgotten)."""
        self.closed = True
        if self.peer is not None:
            self.manager.remove_peer(self.peer, reason)
            self.peer = None

    def _joined(self) -> Peer:
        if self.peer is None:
            raise RequestError("join a room first")
        return self.peer

    # -- handlers ----------------------------------------------------------------------

    async def _get_router_rtp_capabilities(self, data: protocol.EmptyData) -> dict[str, Any]:
        return {"rtpCapabilities": protocol.as_json_object(self.manager.rtp_capabilities)}

    async def _join(self, data: protocol.JoinData) -> dict[str, Any]:
        if self.peer is not None:
            raise RequestError(f"already joined room {self.peer.room.id!r}")
        rtp_capabilities = copy.deepcopy(data["rtpCapabilities"])
        ortc.validate_and_normalize_rtp_capabilities(rtp_capabilities)
        sctp_capabilities = copy.deepcopy(data["sctpCapabilities"])
        if sctp_capabilities is not None:
            ortc.validate_and_normalize_sctp_capabilities(sctp_capabilities)
        room = await self.manager.get_or_create(data["roomId"])
        if self.closed:  # the client left while the room was being created
            if not room.peers:
                room.close()
            raise RequestError("session closed")
        if len(room.peers) >= MAX_PEERS_PER_ROOM:
            raise RequestError(f"room {room.id!r} is full ({MAX_PEERS_PER_ROOM} peers)")
        peer = Peer(
            peer_id=str(uuid.uuid4()),
            display_name=data["displayName"],
            room=room,
            rtp_capabilities=rtp_capabilities,
            sctp_capabilities=sctp_capabilities,
            send=self._send,
        )
        others = [p.describe() for p in room.peers.values()]
        self.peer = peer
        self.manager.add_peer(room, peer)
        return {
            "peerId": peer.id,
            "roomId": room.id,
            "peers": others,
            "activeSpeaker": room.active_speaker,
        }

    async def _leave(self, data: protocol.EmptyData) -> dict[str, Any]:
        peer = self._joined()
        self.peer = None
        self.manager.remove_peer(peer, "left")
        return {}

    async def _create_webrtc_transport(
        self, data: protocol.CreateWebRtcTransportData
    ) -> dict[str, Any]:
        peer = self._joined()
        if len(peer.transports) >= MAX_TRANSPORTS_PER_PEER:
            raise RequestError(f"too many transports (at most {MAX_TRANSPORTS_PER_PEER})")
        sctp = peer.sctp_capabilities
        # SCTP (data channels, for the chat) always: mediasoup-client 3.2x no longer
        # tells its SCTP capabilities, pymediasoup does.
        transport = await peer.room.router.create_webrtc_transport(
            **self.manager.transport_options,
            enable_udp=True,
            enable_tcp=True,
            prefer_udp=True,
            enable_sctp=True,
            num_sctp_streams=sctp["numStreams"] if sctp is not None else None,
            app_data={"peerId": peer.id, "direction": data["direction"]},
        )
        _check_still_there(peer, transport)
        peer.add_transport(transport)
        return {
            "id": transport.id,
            "iceParameters": protocol.as_json_object(transport.ice_parameters),
            "iceCandidates": [protocol.as_json_object(c) for c in transport.ice_candidates],
            "dtlsParameters": protocol.as_json_object(transport.dtls_parameters),
            "sctpParameters": protocol.as_json_object(transport.sctp_parameters),
        }

    async def _connect_webrtc_transport(
        self, data: protocol.ConnectWebRtcTransportData
    ) -> dict[str, Any]:
        peer = self._joined()
        transport = peer.transports.get(data["transportId"])
        if transport is None:
            raise RequestError(f"unknown transport {data['transportId']!r}")
        await transport.connect(dtls_parameters=data["dtlsParameters"])
        return {}

    async def _produce(self, data: protocol.ProduceData) -> dict[str, Any]:
        peer = self._joined()
        transport = peer.transport(data["transportId"], "send")
        if len(peer.producers) >= MAX_PRODUCERS_PER_PEER:
            raise RequestError(f"too many producers (at most {MAX_PRODUCERS_PER_PEER})")
        producer = await transport.produce(
            kind=data["kind"],
            rtp_parameters=data["rtpParameters"],
            app_data={"peerId": peer.id},
        )
        _check_still_there(peer, producer)
        peer.add_producer(producer)
        if producer.kind == "audio":
            room = peer.room
            producer.observer.on("close", lambda: room.audio_producer_closed(producer.id))
            try:
                await peer.room.active_speaker_observer.add_producer(producer_id=producer.id)
            except MediasoupError as error:
                logger.warning("active speaker observer: %s", error)
        peer.room.broadcast(
            "newProducer",
            {"peerId": peer.id, "producerId": producer.id, "kind": producer.kind},
            exclude=peer,
        )
        return {"id": producer.id}

    async def _close_producer(self, data: protocol.ProducerIdData) -> dict[str, Any]:
        self._joined().producer(data["producerId"]).close()
        return {}

    async def _pause_producer(self, data: protocol.ProducerIdData) -> dict[str, Any]:
        await self._joined().producer(data["producerId"]).pause()
        return {}

    async def _resume_producer(self, data: protocol.ProducerIdData) -> dict[str, Any]:
        await self._joined().producer(data["producerId"]).resume()
        return {}

    async def _consume(self, data: protocol.ConsumeData) -> dict[str, Any]:
        peer = self._joined()
        transport = peer.transport(data["transportId"], "recv")
        found = peer.room.find_producer(data["producerId"])
        if found is None or found[0] is peer:
            raise RequestError(f"unknown producer {data['producerId']!r}")
        owner, producer = found
        if not peer.room.router.can_consume(
            producer_id=producer.id, rtp_capabilities=peer.rtp_capabilities
        ):
            raise RequestError(f"cannot consume producer {producer.id!r} with these capabilities")
        # Paused until the client has its side ready (it then sends resumeConsumer), so
        # that the first packets, and the key frame among them, are not lost.
        consumer = await transport.consume(
            producer_id=producer.id,
            rtp_capabilities=peer.rtp_capabilities,
            paused=True,
            app_data={"peerId": owner.id},
        )
        _check_still_there(peer, consumer)
        peer.add_consumer(consumer)
        return {
            "id": consumer.id,
            "producerId": producer.id,
            "peerId": owner.id,
            "kind": consumer.kind,
            "rtpParameters": protocol.as_json_object(consumer.rtp_parameters),
            "type": consumer.type,
            "producerPaused": consumer.producer_paused,
        }

    async def _resume_consumer(self, data: protocol.ConsumerIdData) -> dict[str, Any]:
        await self._joined().consumer(data["consumerId"]).resume()
        return {}

    async def _set_consumer_preferred_layers(
        self, data: protocol.SetConsumerPreferredLayersData
    ) -> dict[str, Any]:
        consumer = self._joined().consumer(data["consumerId"])
        await consumer.set_preferred_layers(
            spatial_layer=data["spatialLayer"], temporal_layer=data["temporalLayer"]
        )
        return {}

    async def _produce_data(self, data: protocol.ProduceDataData) -> dict[str, Any]:
        peer = self._joined()
        transport = peer.transport(data["transportId"], "send")
        if len(peer.data_producers) >= MAX_DATA_PRODUCERS_PER_PEER:
            raise RequestError(f"too many data producers (at most {MAX_DATA_PRODUCERS_PER_PEER})")
        data_producer = await transport.produce_data(
            sctp_stream_parameters=data["sctpStreamParameters"],
            label=data["label"],
            protocol=data["protocol"],
            app_data={"peerId": peer.id},
        )
        _check_still_there(peer, data_producer)
        peer.add_data_producer(data_producer)
        peer.room.broadcast(
            "newDataProducer",
            {"peerId": peer.id, "dataProducerId": data_producer.id, "label": data_producer.label},
            exclude=peer,
        )
        return {"id": data_producer.id}

    async def _consume_data(self, data: protocol.ConsumeDataData) -> dict[str, Any]:
        peer = self._joined()
        transport = peer.transport(data["transportId"], "recv")
        found = peer.room.find_data_producer(data["dataProducerId"])
        if found is None or found[0] is peer:
            raise RequestError(f"unknown data producer {data['dataProducerId']!r}")
        owner, data_producer = found
        data_consumer = await transport.consume_data(
            data_producer_id=data_producer.id, app_data={"peerId": owner.id}
        )
        _check_still_there(peer, data_consumer)
        peer.add_data_consumer(data_consumer)
        return {
            "id": data_consumer.id,
            "dataProducerId": data_producer.id,
            "peerId": owner.id,
            "sctpStreamParameters": protocol.as_json_object(data_consumer.sctp_stream_parameters),
            "label": data_consumer.label,
            "protocol": data_consumer.protocol,
        }
