"""Horizontal scaling: many media servers used as one, coordinated through Redis.

Media server (``mafalda serve --cluster redis://...`` or)::

    node = MediaNode(await mafalda.remote.serve(token=TOKEN), redis_url=REDIS)
    await node.start()

Client::

    cluster = await mafalda.horizontal.connect(REDIS, token=TOKEN)
    worker = await cluster.create_worker()   # placed by load on a live server

First increment: Mediasoup-horizontal (workers placed on servers, pipes between
servers' routers). Routers spanning servers (Mafalda-horizontal) come next.
"""

from mafalda.horizontal.cluster import Cluster, ClusterError, Policy, connect
from mafalda.horizontal.node import MediaNode
from mafalda.horizontal.registry import ServerRecord

__all__ = ["Cluster", "ClusterError", "MediaNode", "Policy", "ServerRecord", "connect"]
