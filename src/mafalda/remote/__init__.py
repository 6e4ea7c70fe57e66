"""Remote Mediasoup and Remote Mafalda: the same API, on another machine.

Server (``mafalda serve`` or)::

    server = await mafalda.remote.serve(port=4443, token=TOKEN)  # or target=a Mafalda

Client::

    mediasoup = await mafalda.remote.connect("ws://host:4443/", token=TOKEN)
    worker = await mediasoup.create_worker()
    router = await worker.create_router(media_codecs=[...])

The wire protocol (JSON-RPC 2.0 over WebSocket, ``mafalda-remote/2``) is documented in
``mafalda.remote.protocol``.
"""

from mafalda.remote.client import Connection, RemoteMafalda, RemoteMediasoup, connect
from mafalda.remote.errors import RemoteConnectionError, RemoteError, ServerDrainingError
from mafalda.remote.protocol import PROTOCOL_VERSION
from mafalda.remote.proxy import (
    RemoteConsumer,
    RemoteDataConsumer,
    RemoteDataProducer,
    RemoteObject,
    RemoteProducer,
    RemoteRouter,
    RemoteRtpObserver,
    RemoteTransport,
    RemoteWebRtcServer,
    RemoteWorker,
)
from mafalda.remote.server import RemoteServer, serve

__all__ = [
    "PROTOCOL_VERSION",
    "Connection",
    "RemoteConnectionError",
    "RemoteConsumer",
    "RemoteDataConsumer",
    "RemoteDataProducer",
    "RemoteError",
    "RemoteMafalda",
    "RemoteMediasoup",
    "RemoteObject",
    "RemoteProducer",
    "RemoteRouter",
    "RemoteRtpObserver",
    "RemoteServer",
    "ServerDrainingError",
    "RemoteTransport",
    "RemoteWebRtcServer",
    "RemoteWorker",
    "connect",
    "serve",
]
