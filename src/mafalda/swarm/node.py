"""A media server in a swarm: a Remote Mediasoup (or Mafalda) server that gossips its
record with its peers, on its own port, with no Redis.

    server = await mafalda.remote.serve(host="10.0.0.5", port=4443, token=TOKEN)
    node = SwarmNode(server, token=TOKEN, peer_token=PEERS, seeds=["ws://10.0.0.4:4443/"])
    await node.start()          # known to the swarm within a few rounds
    ...
    await node.drain(timeout=30)  # SIGTERM: no new placements, wait for objects to close
    await node.aclose()           # a tombstone: every peer drops it at once

Every ``interval`` seconds the node bumps its own version, exchanges tables with one
live peer chosen at random (push-pull over ``POST /swarm``, the servers' secret
``PEERS`` as a bearer token), and with every seed that is not a live peer yet (a swarm
split in two heals through them). ``GET /swarm`` answers the table, to the clients'
token too: any server is an entry point for clients (``mafalda.swarm.connect``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl as ssl_module
import time
import uuid
from collections.abc import Sequence
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from mafalda.horizontal import registry
from mafalda.horizontal.node import control_url, server_record
from mafalda.horizontal.registry import ServerRecord
from mafalda.mediasoup.emitter import EventEmitter
from mafalda.remote import RemoteServer
from mafalda.remote.server import check_tokens, is_peer, peer_refused
from mafalda.swarm.gossip import Change, Table, decode_gossip, encode_gossip
from mafalda.swarm.streams import SwarmStreams
from mafalda.swarm.urls import GOSSIP_ROUTE, check_seeds, route_url

__all__ = ["SwarmNode"]

logger = logging.getLogger("mafalda.swarm")


def _same_server(a: str, b: str) -> bool:
    return urlsplit(a).netloc == urlsplit(b).netloc


class SwarmNode:
    """Keeps ``server``'s record in the swarm's tables, and serves its own table."""

    def __init__(
        self,
        server: RemoteServer,
        *,
        token: str,
        peer_token: str | None = None,
        accept_peer_tokens: Sequence[str] = (),
        seeds: Sequence[str] = (),
        server_id: str | None = None,
        media_address: str | None = None,
        control_host: str | None = None,
        region: str | None = None,
        interval: float = 1.0,
        fail_after: float | None = None,
        ssl: ssl_module.SSLContext | None = None,
        streams: bool = True,
        stream_idle: float = 10.0,
        find_timeout: float = 2.0,
    ) -> None:
        """token: the clients' secret (the server's). peer_token: the servers' own
        secret, which they present to each other and no client holds: then only a
        holder of it may gossip, pipe streams out and write directory entries (a client's
        token still reads the table); None: the clients' token is the servers' too.
        accept_peer_tokens: other peer secrets taken too, to roll one out without a stop.
        seeds: URLs
        of servers of the swarm to join (none: this one starts a swarm). interval:
        seconds between gossip rounds. fail_after: seconds without news of a server
        before it is dropped (default 5 rounds). ssl: the context to reach wss:// peers.
        streams: let this server's clients consume producers of the swarm's other
        servers (``mafalda.swarm.streams``);
        stream_idle: seconds such a copy stays unconsumed before its pipe closes.
        find_timeout: seconds the peers have to say whether they have a producer asked
        for (a silent one, frozen but not dropped yet, is taken as a no).

        ``observer`` emits 'serverjoin' (id) and 'serverleave' (id, 'left' or
        'silent') as this node learns them (a server seen restarted: 'serverleave' of
        its former life, 'left', then 'serverjoin').
        """
        if not isinstance(token, str) or not token:
            raise ValueError("token must be a non-empty string")
        if peer_token is None:
            if accept_peer_tokens:
                raise ValueError("accept_peer_tokens needs a peer_token")
            self._peer_tokens: tuple[bytes, ...] = ()
        else:
            self._peer_tokens = check_tokens(peer_token, accept_peer_tokens, "peer_token")
            if any(server.takes_token(t.decode()) for t in self._peer_tokens):
                # Every app would be a peer: what the peer token keeps from them.
                raise ValueError("a peer token must not be a token of the server's apps")
        if not interval > 0:
            raise ValueError("interval must be > 0")
        if fail_after is not None and not fail_after > interval:
            raise ValueError("fail_after must be more than interval")
        self.seeds = check_seeds(seeds, required=False)
        self.server = server
        self.id = server_id or str(uuid.uuid4())
        if not registry.is_server_id(self.id):
            raise ValueError(f"invalid server id {self.id!r}")
        self.control_url, self.media_address = control_url(server, control_host, media_address)
        self.region = region
        self.interval = interval
        self._token = token if peer_token is None else peer_token
        self._ssl = ssl
        #: This run of the server under its id (its record carries it): what a peer
        #: checks a stream's asker by (a former run's late open is not this one's).
        self.incarnation = uuid.uuid4().hex
        self._table = Table(
            self.record(),
            generation=time.time_ns() // 1_000_000,
            fail_after=5 * interval if fail_after is None else fail_after,
        )
        self.observer = EventEmitter()
        self.streams: SwarmStreams | None = None
        if streams:
            mine = self.streams = SwarmStreams(
                server,
                server_id=self.id,
                token=self._token,
                peer_tokens=self._peer_tokens,
                members=lambda: self.members,
                idle=stream_idle,
                ssl=ssl,
                media_address=self.media_address,
                find_timeout=find_timeout,
                incarnation=self.incarnation,
            )
            self.observer.on("serverleave", lambda server_id, _why: mine.peers_gone([server_id]))
            self.observer.on("serverjoin", mine.member_joined)
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    # -- the record and the table --------------------------------------------------------

    def record(self) -> ServerRecord:
        record = server_record(
            self.server,
            server_id=self.id,
            control_url=self.control_url,
            media_address=self.media_address,
            region=self.region,
        )
        record["incarnation"] = self.incarnation
        return record

    @property
    def members(self) -> dict[str, ServerRecord]:
        """The live servers this node knows of, itself included."""
        return self._table.records()

    def _changed(self, changes: list[Change]) -> None:
        for event, server_id in changes:
            if event == "join":
                logger.info("server %s joined the swarm", server_id)
                self.observer.emit("serverjoin", server_id)
            elif event == "leave":
                logger.info("server %s left the swarm", server_id)
                self.observer.emit("serverleave", server_id, "left")

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Serve the gossip route, tell the seeds now, then gossip every ``interval``."""
        if self._started:
            raise RuntimeError("swarm node already started")
        self._started = True
        self.server.add_route(GOSSIP_ROUTE, self._handle, peer_tokens=self._peer_tokens)
        if self.streams is not None:
            self.streams.start()
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=max(self.interval, 1.0) * 2),
            headers={"Authorization": f"Bearer {self._token}"},
        )
        await self._round()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.interval)
            try:
                await self._round()
            except Exception:  # keep gossiping whatever happened
                logger.exception("gossip round failed")

    async def _round(self) -> None:
        loop = asyncio.get_running_loop()
        self._table.beat(self.record())
        for server_id in self._table.expire(loop.time()):
            logger.warning("server %s dropped from the swarm: silent", server_id)
            self.observer.emit("serverleave", server_id, "silent")
        peers = self._table.peers()
        targets = [random.choice(peers)["controlUrl"]] if peers else []
        # Seeds not live peers (yet, or again: a swarm split in two heals through them),
        # but not one known to have left (a server's seed often leaves first).
        skip = [self.control_url, *(p["controlUrl"] for p in peers)]
        skip += [e["record"]["controlUrl"] for e in self._table.entries() if e["left"]]
        for seed in self.seeds:
            if not any(_same_server(seed, url) for url in skip):
                targets.append(seed)
        await asyncio.gather(*(self._exchange(url) for url in targets))

    async def _exchange(self, url: str) -> bool:
        """Push this table to ``url`` and merge its answer (False when it failed)."""
        assert self._http is not None
        try:
            async with self._http.post(
                route_url(url),
                data=encode_gossip(self._table.entries()),
                ssl=self._ssl if self._ssl is not None else True,
            ) as response:
                if response.status != 200:
                    # 401/403: not the swarm's secret (a misconfigured server, said each
                    # time).
                    log = logger.warning if response.status in (401, 403) else logger.debug
                    log("gossip with %s refused: HTTP %s", url, response.status)
                    return False
                entries = decode_gossip(await response.read())
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
            logger.debug("gossip with %s failed: %r", url, error)
            return False
        self._changed(self._table.merge(entries, asyncio.get_running_loop().time()))
        return True

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":  # a client's read: the table as it is
            return self._answer()
        if request.method != "POST":
            return web.Response(status=405, text="GET or POST")
        if not is_peer(request):  # a client's token: it may read, not change, the table
            return peer_refused()
        try:
            entries = decode_gossip(await request.read())
        except ValueError as error:
            return web.Response(status=400, text=str(error))
        self._changed(self._table.merge(entries, asyncio.get_running_loop().time()))
        return self._answer()

    def _answer(self) -> web.Response:
        return web.Response(
            body=encode_gossip(self._table.entries()), content_type="application/json"
        )

    async def drain(self, timeout: float, abort: asyncio.Event | None = None) -> bool:
        """Take no new placements (told to every peer at once); wait until every object
        served here closed (True) or ``timeout`` seconds or ``abort`` (False)."""
        self.server.draining = True
        await self._tell_everyone()
        return await self.server.drain(timeout, abort)

    async def _tell_everyone(self) -> None:
        self._table.beat(self.record())
        if self._http is not None:
            peers = [p["controlUrl"] for p in self._table.peers()]
            await asyncio.gather(*(self._exchange(url) for url in peers))

    async def aclose(self) -> None:
        """Stop gossiping and leave: every live peer is told at once (best effort: a
        peer not reached drops this server ``fail_after`` later)."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        self._table.leave()
        if self._http is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.gather(
                        *(self._exchange(p["controlUrl"]) for p in self._table.peers())
                    )
            await self._http.close()
        self.server.remove_route(GOSSIP_ROUTE)
        if self.streams is not None:
            await self.streams.aclose()

    async def __aenter__(self) -> SwarmNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
