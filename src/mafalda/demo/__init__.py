"""``mafalda demo``: a video room in the browser on top of :mod:`mafalda.mediasoup`.

An aiohttp server (``server.py``) serves one page and a WebSocket for signaling
(``protocol.py``); rooms and peers (``room.py``) map each client onto a Router, a
WebRtcServer's transports, producers, consumers and data channels.
"""

from mafalda.demo.protocol import ProtocolError, Request, parse_request
from mafalda.demo.room import MEDIA_CODECS, Peer, RequestError, Room, RoomManager, Session
from mafalda.demo.server import DemoConfig, DemoServer

__all__ = [
    "MEDIA_CODECS",
    "DemoConfig",
    "DemoServer",
    "Peer",
    "ProtocolError",
    "Request",
    "RequestError",
    "Room",
    "RoomManager",
    "Session",
    "parse_request",
]
