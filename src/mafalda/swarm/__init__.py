"""Swarm: media servers that know each other by gossip, with no Redis and no server in
charge; every server is an entry point, and a producer created through one server is
consumed through any other by its id (``mafalda.swarm.streams``).

Media server (``mafalda serve --swarm [SEED_URL ...] --peer-token PEERS`` or; PEERS is
the servers' own secret, which no client holds)::

    server = await mafalda.remote.serve(host="10.0.0.5", token=TOKEN)
    node = SwarmNode(server, token=TOKEN, peer_token=PEERS, seeds=["ws://10.0.0.4:4443/"])
    await node.start()

Client (the same Cluster as ``mafalda.horizontal.connect``; one line changes)::

    cluster = await mafalda.swarm.connect(["ws://10.0.0.4:4443/"], token=TOKEN)
    router = await cluster.create_router(media_codecs=[...])  # spans the servers
"""

from mafalda.swarm.client import SwarmMembership, connect
from mafalda.swarm.gossip import Entry, Table
from mafalda.swarm.node import SwarmNode
from mafalda.swarm.streams import StreamError, SwarmStreams

__all__ = [
    "Entry",
    "StreamError",
    "SwarmMembership",
    "SwarmNode",
    "SwarmStreams",
    "Table",
    "connect",
]
