"""Mediasoup-horizontal: the media servers of a Redis registry, used as one.

    cluster = await mafalda.horizontal.connect("redis://redis:6379/0", token=TOKEN)
    router = await cluster.create_router(media_codecs=[...])   # spans the servers
    # or, by hand:
    worker = await cluster.create_worker()      # on the least loaded live server
    router = await worker.create_router(media_codecs=[...])
    # from here on: mafalda.mediasoup's API, through mafalda.remote

Membership: a server that joins (pub/sub ``join``) is usable at once; one that leaves
(``leave``) or whose record expired for ``grace`` seconds is dropped and the remote
client to it closed, which closes this client's objects there with their close events
(a worker emits 'died'). A server whose process dies is noticed sooner: its WebSocket
closes and mafalda.remote closes the proxies at once.

A connection to a server that drops and resumes its session fails the calls under way
with RemoteConnectionError (a placement tries the next server), though the server may
have made what they asked for: what the resumed session brings that this client did not
know (a worker, a router, a transport whose answer was lost) is closed, as
mafalda.remote closes what a late answer makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import ipaddress
import logging
import os
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Literal

from redis.exceptions import RedisError

from mafalda import mediasoup
from mafalda.horizontal import registry
from mafalda.horizontal.membership import Membership, RedisMembership
from mafalda.horizontal.periodic import check_seconds
from mafalda.horizontal.redis_url import redis_client
from mafalda.horizontal.registry import ServerRecord
from mafalda.horizontal.router import ClusterRouter, refused_by_server
from mafalda.horizontal.webrtc_server import ClusterWebRtcServer
from mafalda.mediasoup.emitter import EventEmitter
from mafalda.mediasoup.errors import MediasoupError
from mafalda.mediasoup.pipe_transport import open_pipe_pair
from mafalda.mediasoup.rtp_parameters import RouterRtpCodecCapability
from mafalda.remote import (
    PROTOCOL_VERSION,
    RemoteConnectionError,
    RemoteError,
    RemoteMafalda,
    RemoteMediasoup,
    RemoteObject,
    RemoteProducer,
    RemoteRouter,
    RemoteTransport,
    RemoteWorker,
)
from mafalda.remote import connect as remote_connect
from mafalda.remote.client import check_call_timeout
from mafalda.vertical.spanning import counting

__all__ = ["Cluster", "ClusterError", "Policy", "check_options", "connect", "open_cluster"]

logger = logging.getLogger("mafalda.horizontal.cluster")

#: Seconds aclose() gives each server's connection to close politely.
CLIENT_CLOSE_TIMEOUT = 2.0

#: The app data key (True) of the PipeTransports this client makes itself.
_OWN_PIPE = "clusterPipe"

Policy = Literal["least-loaded", "pack", "region"]
_POLICIES: frozenset[str] = frozenset({"least-loaded", "pack", "region"})


class ClusterError(MediasoupError):
    """No live server could take the request."""


class _ServerLock:
    """A lock per server, and how many callers hold it or wait for it: kept while any
    does (a server that left and came back meanwhile gets the same one), dropped with
    its server once unused."""

    __slots__ = ("lock", "users", "removals")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0
        #: Times its server left while the lock was in use.
        self.removals = 0


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


class Cluster:
    """The ``mafalda.mediasoup`` module API over the servers of a Redis registry."""

    def __init__(
        self,
        membership: Membership,
        *,
        token: str,
        policy: Policy,
        region: str | None,
        interval: float,
        grace: float,
        ssl: ssl_module.SSLContext | None,
        connect_timeout: float,
        worker_settings: dict[str, Any] | None = None,
        worker_idle: float = 10.0,
        call_timeout: float | None = None,
    ) -> None:
        self.membership = membership
        self._call_timeout = call_timeout
        self._token = token
        self.policy: Policy = policy
        self.region = region
        self.interval = interval
        self.grace = grace
        self._ssl = ssl
        self._connect_timeout = connect_timeout
        self.observer = EventEmitter()
        self._records: dict[str, ServerRecord] = {}
        self._missing_since: dict[str, float] = {}
        #: When each server last left: a refresh that read the registry before that must
        #: not bring it back (its read may predate the deletion of the record).
        self._left_at: dict[str, float] = {}
        #: Registry reads one at a time: forgetting a leave (below) assumes that no read
        #: begun before it is still under way (it would list the server again).
        self._refresh_lock = asyncio.Lock()
        self._clients: dict[str, RemoteMediasoup | RemoteMafalda] = {}
        self._connecting: dict[str, _ServerLock] = {}
        self._workers: dict[RemoteWorker, str] = {}
        #: create_worker() calls under way, by server: placements at once spread.
        self._workers_coming: dict[str, int] = {}
        #: One pipe transport pair per (router id, target router id), dropped when either
        #: end closes; the pair being opened, shared by every caller that needs it.
        self._pipes: dict[tuple[str, str], tuple[RemoteTransport, RemoteTransport]] = {}
        self._pipes_opening: dict[
            tuple[str, str], asyncio.Future[tuple[RemoteTransport, RemoteTransport]]
        ] = {}
        self._worker_settings = worker_settings
        self._router_workers: dict[str, RemoteWorker] = {}
        self._router_worker_locks: dict[str, _ServerLock] = {}
        self._routers: dict[str, ClusterRouter] = {}
        self._webrtc_servers: dict[str, ClusterWebRtcServer] = {}
        self._worker_idle = worker_idle
        self._idle_timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- the mafalda.mediasoup module API ------------------------------------------------

    @property
    def version(self) -> str:
        return mediasoup.version

    def get_supported_rtp_capabilities(self) -> Any:
        return mediasoup.get_supported_rtp_capabilities()

    @property
    def workers(self) -> list[RemoteWorker]:
        """This client's live workers, on every server."""
        return [w for w in self._workers if not w.closed]

    async def create_worker(self, **kwargs: Any) -> RemoteWorker:
        """Create a worker on a live, non-draining server chosen by the policy (the next
        candidate if one fails to answer). Raises ClusterError when none is left."""
        if self._closed:
            raise ClusterError("cluster client closed")
        tried: set[str] = set()
        while True:
            record = self._choose(exclude=tried, serves="mediasoup")
            if record is None:
                raise ClusterError("no live media server available")
            server_id = record["id"]
            tried.add(server_id)
            try:
                with counting(self._workers_coming, server_id):
                    client = await self._mediasoup_client(record)
                    worker = await client.create_worker(**kwargs)
            except Exception as error:
                if not refused_by_server(error):
                    raise
                logger.warning("server %s failed: %s", server_id, error)
                continue
            self._workers[worker] = record["id"]
            worker.observer.on("close", lambda w=worker: self._workers.pop(w, None))
            self.observer.emit("newworker", worker)
            return worker

    # -- placement -----------------------------------------------------------------------

    @property
    def servers(self) -> dict[str, ServerRecord]:
        """The live servers' records, as last read from Redis."""
        return copy.deepcopy(self._records)

    def _estimated_load(self, record: ServerRecord) -> float:
        """The record's load, raised by this client's workers it does not count yet
        (those being made included)."""
        own = sum(1 for w, s in self._workers.items() if s == record["id"] and not w.closed)
        own += self._workers_coming.get(record["id"], 0)
        if own <= record["workers"]:
            return record["load"]
        per_worker = (
            record["load"] / record["workers"] if record["workers"] else 1 / (os.cpu_count() or 1)
        )
        return record["load"] + (own - record["workers"]) * per_worker

    def _choose(
        self, exclude: set[str] | None = None, serves: str | None = None
    ) -> ServerRecord | None:
        exclude = exclude or set()
        candidates = [
            r
            for r in self._records.values()
            if not r["draining"]
            and r["version"] == PROTOCOL_VERSION
            and r["id"] not in exclude
            and serves in (None, r["serves"])
        ]
        if not candidates:
            return None
        if self.policy == "region" and self.region is not None:
            local = [r for r in candidates if r["region"] == self.region]
            candidates = local or candidates
        ranked = sorted(
            candidates,
            key=lambda r: (
                self._estimated_load(r),
                self._own_transports(r["id"]),
                r["consumers"],
                r["id"],
            ),
        )
        if self.policy == "pack":
            open_ = [r for r in ranked if self._estimated_load(r) < 1.0]
            if open_:
                return max(open_, key=lambda r: (self._estimated_load(r), r["id"]))
        return ranked[0]

    def _own_transports(self, server_id: str) -> int:
        """This client's transports on a server, over its cluster routers (a record
        counts them only from the server's next heartbeat on), those being made included
        (placements at once spread)."""
        return sum(
            len(r.transports_on(server_id)) + r.making_on(server_id) for r in self._routers.values()
        )

    def place(self, exclude: set[str] | None = None) -> str:
        """The server where a cluster router's next transport goes (not one of
        ``exclude``: servers that refused it)."""
        if self._closed:
            raise ClusterError("cluster client closed")
        record = self._choose(exclude=exclude)
        if record is None:
            raise ClusterError("no live media server available")
        return record["id"]

    def check_placeable(self, server_id: str) -> None:
        """ClusterError unless ``server_id`` is live and takes new transports."""
        record = self._records.get(server_id)
        if record is None:
            raise ClusterError(f"no live media server {server_id!r}")
        if record["draining"]:
            raise ClusterError(f"media server {server_id!r} is draining")

    def serves(self, server_id: str) -> str:
        """What a server serves: 'mediasoup' (workers for clients) or 'mafalda' (a pool)."""
        record = self._records.get(server_id)
        if record is None:
            raise ClusterError(f"no live media server {server_id!r}")
        return record["serves"]

    def media_address(self, server_id: str) -> str:
        record = self._records.get(server_id)
        if record is None:
            raise ClusterError(f"no live media server {server_id!r}")
        return record["mediaAddress"]

    @staticmethod
    def srtp_between(a: str, b: str) -> bool:
        """SRTP on pipes by default, unless both ends are loopback addresses."""
        return not (is_loopback(a) and is_loopback(b))

    @staticmethod
    def _own_pipe_transport(router: Any, address: str, **options: Any) -> Awaitable[Any]:
        """A PipeTransport of this client's (for a pair between servers) on ``router``,
        listening on ``address``; marked as this client's (see _close_orphans_on_resume)."""
        creating: Awaitable[Any] = router.create_pipe_transport(
            listen_info={"protocol": "udp", "ip": address}, app_data={_OWN_PIPE: True}, **options
        )
        return creating

    # -- routers spanning servers --------------------------------------------------------

    @property
    def routers(self) -> list[ClusterRouter]:
        return list(self._routers.values())

    async def create_router(
        self,
        *,
        media_codecs: list[RouterRtpCodecCapability] | None = None,
        app_data: dict[str, Any] | None = None,
    ) -> ClusterRouter:
        """A Router with mediasoup's API whose transports are placed on the servers."""
        if self._closed:
            raise ClusterError("cluster client closed")
        router = ClusterRouter(cluster=self, media_codecs=media_codecs, app_data=app_data)
        self._routers[router.id] = router
        router.events.on("@close", lambda: self._routers.pop(router.id, None))
        self.observer.emit("newrouter", router)
        return router

    @property
    def webrtc_servers(self) -> list[ClusterWebRtcServer]:
        return list(self._webrtc_servers.values())

    async def create_webrtc_server(
        self, *, listen_infos: list[Any], app_data: dict[str, Any] | None = None
    ) -> ClusterWebRtcServer:
        """A WebRtcServer for this cluster's routers' WebRtcTransports: nothing is made
        now; each server gets a real one, with these listen infos completed with its
        media address, when a transport there first uses it."""
        if self._closed:
            raise ClusterError("cluster client closed")
        server = ClusterWebRtcServer(cluster=self, listen_infos=listen_infos, app_data=app_data)
        self._webrtc_servers[server.id] = server
        server.events.on("@close", lambda: self._webrtc_servers.pop(server.id, None))
        self.observer.emit("newwebrtcserver", server)
        return server

    async def router_worker(self, server_id: str) -> RemoteWorker:
        """This client's worker on ``server_id`` for the children of cluster routers."""
        async with self._server_lock(self._router_worker_locks, server_id):
            worker = self._router_workers.get(server_id)
            if worker is not None and not worker.closed:
                return worker
            record = self._records.get(server_id)
            if record is None:
                raise ClusterError(f"no live media server {server_id!r}")
            client = await self._mediasoup_client(record)
            worker = await client.create_worker(**(self._worker_settings or {}))
            self._router_workers[server_id] = worker
            self._workers[worker] = server_id
            worker.observer.on("close", lambda: self._router_worker_closed(server_id, worker))
        # Released as when a last user goes (whether it is used is seen when its time
        # comes): a caller whose use then fails may leave nothing that would ask (a
        # WebRtcServer made on it for a transport whose child router closed meanwhile,
        # with the worker it replaces).
        self.release_router_worker(server_id)
        return worker

    def _router_worker_closed(self, server_id: str, worker: RemoteWorker) -> None:
        self._workers.pop(worker, None)
        # One that died (killed, its server's connection lost) is not kept until the next
        # child router there replaces it.
        if self._router_workers.get(server_id) is worker:
            del self._router_workers[server_id]

    def release_router_worker(self, server_id: str) -> None:
        """Close this client's router worker on a server no cluster router uses any more,
        at once when the server drains (so it can empty and leave), else after
        ``worker_idle`` seconds unused (a room that comes back reuses it)."""
        worker = self._router_workers.get(server_id)
        if worker is None or worker.closed:
            return
        # Whether it is used is seen when its time comes (_release_idle): a child router
        # being made there now may fail, and then nothing else would ask again.
        record = self._records.get(server_id)
        if record is not None and not record["draining"] and self._worker_idle > 0:
            handle = self._idle_timers.pop(server_id, None)
            if handle is not None:
                handle.cancel()
            self._idle_timers[server_id] = asyncio.get_running_loop().call_later(
                self._worker_idle, self._release_idle, server_id, worker
            )
            return
        self._release_idle(server_id, worker)

    def _router_worker_used(self, server_id: str) -> bool:
        lock = self._router_worker_locks.get(server_id)
        return (lock is not None and lock.users > 0) or any(
            router.has_child_on(server_id) for router in self._routers.values()
        )

    def _release_idle(self, server_id: str, worker: RemoteWorker) -> None:
        handle = self._idle_timers.pop(server_id, None)
        if handle is not None:  # released before its time (the server drains)
            handle.cancel()
        if self._router_workers.get(server_id) is not worker or self._router_worker_used(server_id):
            return
        del self._router_workers[server_id]
        worker.close()

    async def child_router(self, server_id: str, **options: Any) -> RemoteRouter:
        """A new child Router for a cluster router on ``server_id``: in the server's
        Mafalda pool when it serves one, else on this client's worker there."""
        record = self._records.get(server_id)
        if record is None:
            raise ClusterError(f"no live media server {server_id!r}")
        if record["serves"] == "mafalda":
            client = await self._client(record)
            if isinstance(client, RemoteMafalda):
                return await client.create_router(**options)
        worker = await self.router_worker(server_id)
        # (One that fails to be made leaves the worker released: ClusterRouter._making_over.)
        router: RemoteRouter = await worker.create_router(**options)
        return router

    def server_lost(self, server_id: str) -> bool:
        """Whether cluster routers lost that server (its connection, or the worker
        their children were on)."""
        client = self._clients.get(server_id)
        if isinstance(client, RemoteMafalda):
            return client.closed
        worker = self._router_workers.get(server_id)
        return worker is None or worker.closed

    # -- servers -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _server_lock(
        self, locks: dict[str, _ServerLock], server_id: str
    ) -> AsyncIterator[Callable[[], bool]]:
        """Hold the lock of ``server_id`` in ``locks``; what it gives says whether the
        server left since this caller came (its record, read before, is stale). The lock
        is dropped by its last user when the server is gone (_remove() leaves one in use)."""
        entry = locks.setdefault(server_id, _ServerLock())
        removals = entry.removals
        entry.users += 1
        try:
            async with entry.lock:
                yield lambda: entry.removals != removals
        finally:
            entry.users -= 1
            if not entry.users and server_id not in self._records:
                del locks[server_id]

    async def _client(self, record: ServerRecord) -> RemoteMediasoup | RemoteMafalda:
        server_id = record["id"]
        async with self._server_lock(self._connecting, server_id) as left:
            client = self._clients.get(server_id)
            if client is not None and not client.closed:
                return client
            if left():  # while this caller waited for another's connection
                raise _left(server_id)
            async with asyncio.timeout(self._connect_timeout):
                remote = await remote_connect(
                    record["controlUrl"],
                    token=self._token,
                    ssl=self._ssl,
                    timeout=self._connect_timeout,
                    call_timeout=self._call_timeout,
                )
            if self._closed:
                # aclose() came while connecting: kept, it would never be closed.
                remote.abort()
                raise ClusterError("cluster client closed")
            if left():
                # Kept, this connection would outlive the server's membership (and be
                # reused, with what it made, if a server came back with its id).
                remote.abort()
                raise _left(server_id)
            _close_orphans_on_resume(server_id, remote)
            self._clients[server_id] = remote
            return remote

    async def mafalda_client(self, server_id: str) -> RemoteMafalda:
        """This client's connection to ``server_id``, a server of a Mafalda pool."""
        record = self._records.get(server_id)
        if record is None:
            raise ClusterError(f"no live media server {server_id!r}")
        client = await self._client(record)
        if not isinstance(client, RemoteMafalda):
            raise RemoteError(f"server {server_id} serves mediasoup, not a Mafalda")
        return client

    async def _mediasoup_client(self, record: ServerRecord) -> RemoteMediasoup:
        client = await self._client(record)
        if not isinstance(client, RemoteMediasoup):
            raise RemoteError(f"server {record['id']} serves a Mafalda, not mediasoup")
        return client

    def server_of(self, obj: RemoteObject | RemoteMediasoup) -> ServerRecord | None:
        """The record of the server an object lives on (None: not this cluster's, or gone)."""
        connection = obj.connection
        for server_id, client in self._clients.items():
            if client.connection is connection:
                record = self._records.get(server_id)
                return copy.deepcopy(record) if record is not None else None
        return None

    async def refresh(self) -> None:
        """Read every server record now (the background loop does it every ``interval``)."""
        async with self._refresh_lock:
            await self._refresh()

    async def _refresh(self) -> None:
        started = asyncio.get_running_loop().time()
        found, departed = await self.membership.read()
        now = asyncio.get_running_loop().time()
        for server_id, record in found.items():
            if self._left_at.get(server_id, -1.0) >= started:
                continue  # left while this read was under way
            self._seen(record)
        for server_id, at in list(self._left_at.items()):
            if at < started:  # every later read sees the record gone (or back for real)
                del self._left_at[server_id]
        for server_id in list(self._records):
            if server_id in found:
                continue
            if server_id in departed:
                await self._remove(server_id, "left")
                continue
            since = self._missing_since.setdefault(server_id, now)
            if now - since >= self.grace:
                await self._remove(server_id, "expired")

    def _seen(self, record: ServerRecord) -> None:
        self._missing_since.pop(record["id"], None)
        self._update(record)

    def _update(self, record: ServerRecord) -> None:
        joined = record["id"] not in self._records
        self._records[record["id"]] = record
        if joined:
            heartbeat = record.get("heartbeat")
            if heartbeat is not None and heartbeat >= self.grace:
                logger.warning(
                    "server %s heart-beats every %s s, not less than this client's grace "
                    "(%s s): a Redis restart will drop it (give the client a longer grace, "
                    "or the server a shorter --heartbeat)",
                    record["id"],
                    heartbeat,
                    self.grace,
                )
            self.observer.emit("serverjoin", copy.deepcopy(record))
        if record["draining"]:
            self.release_router_worker(record["id"])

    async def _remove(self, server_id: str, reason: str) -> None:
        record = self._records.pop(server_id, None)
        self._missing_since.pop(server_id, None)
        self._left_at[server_id] = asyncio.get_running_loop().time()
        # Nothing kept per server that left: in an autoscaled cluster (a new id per
        # server) these would grow by one per server ever seen.
        self._router_workers.pop(server_id, None)  # closed with its client below
        handle = self._idle_timers.pop(server_id, None)
        if handle is not None:
            handle.cancel()
        for locks in (self._connecting, self._router_worker_locks):
            lock = locks.get(server_id)
            if lock is None:
                continue
            if lock.users:  # in use (rare): dropped by its last user
                lock.removals += 1
            else:
                del locks[server_id]
        client = self._clients.pop(server_id, None)
        if client is not None:
            # The server is gone: its proxies close now, with their events, and pending
            # calls fail; a frozen server would hold a closing handshake ~10 s, and the
            # registry and membership loops with it.
            client.abort()
        if record is not None:
            logger.info("server %s left (%s)", server_id, reason)
            self.observer.emit("serverleave", copy.deepcopy(record), reason)

    # The loop also stops on ``_closed``: redis-py may turn a cancellation into a
    # TimeoutError (an OSError), which it would otherwise survive.

    async def _poll(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except (RedisError, OSError) as error:
                logger.warning("reading the registry failed: %s", error)
            except Exception:  # keep watching whatever happened
                logger.exception("reading the registry failed")

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        watch = self.membership.watch(
            running=lambda: not self._closed,
            refresh=self.refresh,
            seen=self._seen,
            left=lambda server_id: self._remove(server_id, "left"),
        )
        for coro in (self._poll(), watch):
            task = loop.create_task(coro)
            self._tasks.add(task)

    # -- pipes between servers -----------------------------------------------------------

    async def pipe_to_router(
        self,
        *,
        producer: RemoteProducer,
        router: RemoteRouter,
        target_router: RemoteRouter,
        enable_rtx: bool = True,
        enable_srtp: bool | None = None,
    ) -> tuple[Any, Any]:
        """Pipe ``producer`` (of ``router``) into ``target_router`` on another server:
        a PipeTransport on each server, connected to each other's media address (one
        pair per router pair, reused). SRTP defaults to on unless both addresses are
        loopback. Returns (pipe consumer on ``router``, pipe producer on ``target_router``).
        """
        source, target = self.server_of(router), self.server_of(target_router)
        if source is None or target is None:
            raise ClusterError("both routers must live on servers of this cluster")
        if enable_srtp is None:
            enable_srtp = self.srtp_between(source["mediaAddress"], target["mediaAddress"])
        key = (router.id, target_router.id)
        pair = self._pipes.get(key)
        # (A pair closed before its close listeners were added is replaced here.)
        if pair is None or pair[0].closed or pair[1].closed:
            opening = self._pipes_opening.get(key)
            if opening is None:
                # Callers that come while it opens share it: two pairs for one router
                # pair would each carry half the producers, and one would be kept nowhere.
                options = {"enable_rtx": enable_rtx, "enable_srtp": enable_srtp}
                opening = asyncio.ensure_future(
                    open_pipe_pair(
                        self._own_pipe_transport(router, source["mediaAddress"], **options),
                        self._own_pipe_transport(target_router, target["mediaAddress"], **options),
                    )
                )
                self._pipes_opening[key] = opening
                opening.add_done_callback(functools.partial(self._pipe_opened, key))
            # Shielded: a caller that gives up does not undo the pair the others wait for.
            pair = await asyncio.shield(opening)
        local, remote = pair
        pipe_consumer = await local.consume(producer_id=producer.id)
        try:
            pipe_producer = await remote.produce(
                id=producer.id,
                kind=pipe_consumer.kind,
                rtp_parameters=pipe_consumer.rtp_parameters,
                paused=pipe_consumer.producer_paused,
                app_data=producer.app_data,
            )
        except BaseException:
            pipe_consumer.close()
            raise
        return pipe_consumer, pipe_producer

    def _pipe_opened(
        self,
        key: tuple[str, str],
        opening: asyncio.Future[tuple[RemoteTransport, RemoteTransport]],
    ) -> None:
        del self._pipes_opening[key]
        if opening.cancelled() or opening.exception() is not None:
            return  # (its callers got the error; nothing was kept open)
        pair = opening.result()
        self._pipes[key] = pair

        def dropped() -> None:
            if self._pipes.get(key) is pair:
                del self._pipes[key]
            for end in pair:  # one end alone carries nothing (as mediasoup's pairs)
                end.close()

        for end in pair:
            end.observer.once("close", dropped)

    # -- visibility and closing ----------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """Servers (records as last read), this client's workers on each, and the pipes."""
        servers: dict[str, Any] = {}
        for server_id, record in self._records.items():
            client = self._clients.get(server_id)
            servers[server_id] = {
                **copy.deepcopy(record),
                "connected": client is not None and not client.closed,
                "clientWorkers": [
                    w.id for w, s in self._workers.items() if s == server_id and not w.closed
                ],
            }
        return {
            "policy": self.policy,
            "region": self.region,
            "servers": servers,
            "routers": [router.cluster_dump() for router in self._routers.values()],
            "pipes": [
                {
                    "transportIds": [a.id, b.id],
                    "srtp": getattr(a, "srtp_parameters", None) is not None,
                }
                for a, b in self._pipes.values()
                if not a.closed and not b.closed
            ],
        }

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        """Close every remote client (this client's objects on the servers close) and
        the Redis connections."""
        if self._closed:
            return
        self._closed = True
        for router in list(self._routers.values()):
            router.cluster_closed()
        self._routers.clear()
        for webrtc_server in list(self._webrtc_servers.values()):
            webrtc_server.cluster_closed()
        self._webrtc_servers.clear()
        for handle in self._idle_timers.values():
            handle.cancel()
        self._idle_timers.clear()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)  # never hang on a stuck task
        self._tasks.clear()
        clients = list(self._clients.values())
        self._clients.clear()
        await asyncio.gather(*(_close_client(c) for c in clients), return_exceptions=True)
        await self.membership.aclose()
        self.observer.emit("close")

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _left(server_id: str) -> RemoteConnectionError:
    """A server left the cluster while this client waited for it (a placement tries the
    next server, as for a connection that failed)."""
    return RemoteConnectionError(f"media server {server_id!r} left the cluster")


def _close_orphans_on_resume(server_id: str, client: RemoteMediasoup | RemoteMafalda) -> None:
    """When ``client``'s connection resumes its session, close the objects it did not
    know when it dropped: made by calls that failed with the drop (their answers were
    lost; a placement went to the next server), they are nobody's. The connection reads
    nothing while away, so what it knew then is what it knows until the resume."""
    connection = client.connection
    known: set[str] = set()

    def dropped() -> None:
        known.clear()
        known.update(connection.proxies)

    def resumed() -> None:
        between_own = _pipes_between_own_routers(connection.proxies.values())
        orphans = [
            proxy
            for handle, proxy in connection.proxies.items()
            if handle not in known and not _under_a_servers_pipe(proxy, between_own)
        ]
        known.clear()
        for proxy in orphans:
            logger.info("server %s: closing %r, made by a call that failed", server_id, proxy)
            proxy.close()  # (one closed with its parent already: nothing)

    connection.events.on("disconnect", dropped)
    connection.events.on("reconnect", resumed)


def _is_pipe_transport(proxy: Any) -> bool:
    return isinstance(proxy, RemoteTransport) and getattr(proxy, "type", None) == "pipe"


def _pipes_between_own_routers(proxies: Iterable[Any]) -> set[str]:
    """The handles of the open PipeTransports of a connection that are connected to
    another of its own: the two ends of a pair between two of this client's routers on
    that server, which only a Router's pipe_to_router() makes (a cluster router's pipe
    into another router there), on the server, unmarked. (A swarm server's pipes go to
    other servers.)"""
    pipes = [proxy for proxy in proxies if _is_pipe_transport(proxy) and not proxy.closed]
    local = {(p.tuple.get("localAddress"), p.tuple.get("localPort")): p for p in pipes}
    return {
        pipe.handle
        for pipe in pipes
        if local.get((pipe.tuple.get("remoteIp"), pipe.tuple.get("remotePort")), pipe) is not pipe
    }


def _under_a_servers_pipe(proxy: Any, between_own: set[str]) -> bool:
    """A PipeTransport this client did not make, or an object of one: a swarm server
    makes them on this client's routers itself (a peer's stream piped out), so one that
    came meanwhile is not an orphan. This client's own (pipe_to_router()'s, a cluster
    router's pairs') are marked in their app data, and a Router's pipe_to_router()
    between two of its routers on one server makes a pair of ends ``between_own``: one
    a cut-off call made, and a pipe consumer or producer made on one, are orphans."""
    while proxy is not None:
        if _is_pipe_transport(proxy):
            return proxy.app_data.get(_OWN_PIPE) is not True and proxy.handle not in between_own
        proxy = proxy.parent
    return False


async def _close_client(client: RemoteMediasoup | RemoteMafalda) -> None:
    """Its closing handshake for CLIENT_CLOSE_TIMEOUT s at most (a frozen server would
    hold it for the WebSocket's close timeout), then the connection is dropped."""
    try:
        await asyncio.wait_for(client.aclose(), CLIENT_CLOSE_TIMEOUT)
    except TimeoutError:
        client.abort()


def check_options(
    *,
    policy: str,
    region: str | None,
    interval: float,
    grace: float,
    worker_idle: float,
    call_timeout: float | None = None,
    connect_timeout: float = 10.0,
) -> None:
    """ValueError naming the first bad option of a cluster client."""
    check_call_timeout(call_timeout)
    if policy not in _POLICIES:
        raise ValueError(f"unknown placement policy {policy!r}")
    if policy == "region" and not region:
        raise ValueError("policy 'region' needs region=")
    check_seconds(interval, "interval", positive=True)
    check_seconds(grace, "grace")  # NaN: no server would ever expire
    check_seconds(worker_idle, "worker_idle")
    check_seconds(connect_timeout, "connect_timeout", positive=True)


async def connect(
    redis_url: str,
    *,
    token: str,
    policy: Policy = "least-loaded",
    region: str | None = None,
    prefix: str = registry.DEFAULT_PREFIX,
    interval: float = 1.0,
    grace: float = 5.0,
    ssl: ssl_module.SSLContext | None = None,
    connect_timeout: float = 10.0,
    worker_settings: dict[str, Any] | None = None,
    worker_idle: float = 10.0,
    call_timeout: float | None = None,
) -> Cluster:
    """Join the cluster registered in Redis at ``redis_url`` (``rediss://`` for TLS,
    ``redis://user:password@host`` for AUTH, ``redis+sentinel://host:port,.../service``
    for a master behind Redis Sentinel, ``redis+cluster://host:port,...`` for a Redis
    Cluster: see ``redis_url``).

    token: the media servers' shared secret. policy: 'least-loaded' (default), 'pack'
    (fill a server before using the next) or 'region' (servers of ``region`` first).
    interval: seconds between registry reads (pub/sub announcements arrive at once).
    grace: seconds a record may be missing before its server is dropped (covers a
    Redis restart, after which servers register again at their next heartbeat).
    worker_settings: create_worker() options of the workers that host the children of
    cluster routers (one per server used); worker_idle: seconds such a worker stays
    after its last child router closed (0: closed at once; at once anyway on a
    draining server). call_timeout: the servers' clients' (``mafalda.remote.connect``).
    """
    check_options(
        policy=policy,
        region=region,
        interval=interval,
        grace=grace,
        worker_idle=worker_idle,
        call_timeout=call_timeout,
        connect_timeout=connect_timeout,
    )
    client = redis_client(redis_url, timeout=max(interval, 1.0) * 2)
    membership = RedisMembership(client, prefix=prefix, interval=interval)
    return await open_cluster(
        membership,
        token=token,
        policy=policy,
        region=region,
        interval=interval,
        grace=grace,
        ssl=ssl,
        connect_timeout=connect_timeout,
        worker_settings=worker_settings,
        worker_idle=worker_idle,
        call_timeout=call_timeout,
    )


async def open_cluster(membership: Membership, **options: Any) -> Cluster:
    """A Cluster over ``membership`` that has read it once, watching it from now on
    (``membership`` closed if that first read fails)."""
    cluster = Cluster(membership, **options)
    try:
        await cluster.refresh()
    except BaseException:
        await membership.aclose()
        raise
    cluster._start()
    return cluster
