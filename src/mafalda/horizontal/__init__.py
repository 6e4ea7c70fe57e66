"""Horizontal scaling: many media servers used as one, coordinated through Redis.

Media server (``mafalda serve --cluster redis://...`` or)::

    node = MediaNode(await mafalda.remote.serve(token=TOKEN), redis_url=REDIS)
    await node.start()

Client::

    cluster = await mafalda.horizontal.connect(REDIS, token=TOKEN)
    router = await cluster.create_router(media_codecs=[...])  # spans the servers
    webrtc_server = await cluster.create_webrtc_server(listen_infos=[...])  # one per server used
    worker = await cluster.create_worker()   # or: a worker placed by load on a server
"""

from mafalda.horizontal.cluster import Cluster, ClusterError, Policy, connect
from mafalda.horizontal.node import MediaNode
from mafalda.horizontal.registry import ServerRecord
from mafalda.horizontal.router import ClusterRouter, ClusterRtpObserver, ClusterTransport
from mafalda.horizontal.webrtc_server import ClusterWebRtcServer

__all__ = [
    "Cluster",
    "ClusterError",
    "ClusterRouter",
    "ClusterRtpObserver",
    "ClusterTransport",
    "ClusterWebRtcServer",
    "MediaNode",
    "Policy",
    "ServerRecord",
    "connect",
]
