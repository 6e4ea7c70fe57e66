"""Random operations and faults on a cluster, seeded: the cluster twin of
test_chaos_remote. Cluster routers, transports on a chosen server or placed, producers,
consumers on other servers (media and data piped between servers), pipe_to_router
between cluster routers, audio level observers, pauses, dumps and closes, in sequence
and in bursts, while workers are killed on the servers (SIGKILL), the client's
connection to one server is cut (a TCP relay aborting both sockets), and a server
leaves the cluster (its MediaNode stops) and joins again, later or at once.

A Redis and three in-process media servers ("a" behind the relay, "b", "c"), each
registered by a MediaNode, and a cluster client. Every call ends within its timeout
(none hangs) and fails only with the library's own errors. Once things settle, the
client's live proxies on each server are exactly its session's live objects there;
closing everything leaves nothing on any server (no router, no pipe, no worker once
idle), and the client's maps are back to their size with no router. A failure names
its seed, its step and the last steps."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mafalda import horizontal
from mafalda.horizontal import Cluster, MediaNode
from mafalda.mediasoup import Router, Worker
from mafalda.remote import RemoteServer, serve
from tests import chaos
from tests.chaos import CALL_TIMEOUT, EXPECTED, live_differences, until
from tests.processes import HAVE_REDIS, RedisProcess, free_ports
from tests.relay import Relay
from tests.rtp_flow import MEDIA_CODECS
from tests.sizes import containers

pytestmark = pytest.mark.skipif(not HAVE_REDIS, reason="redis-server is not installed")

TOKEN = "chaos-token"
KINDS = ("router", "transport", "producer", "consumer", "dataProducer", "dataConsumer", "observer")
#: Server id: its address (control and media). "a" is reached through a relay.
ADDRESSES = {"a": "127.0.0.2", "b": "127.0.0.3", "c": "127.0.0.4"}
RELAY_HOST = "127.0.0.6"
#: Seconds a client's objects outlive its connection on a server: "a"'s outlives a cut
#: (the client resumes), the others' are short (a server that left is no longer used).
GRACE = {"a": 10.0, "b": 1.0, "c": 1.0}
WORKER_IDLE = 0.3


class Servers:
    """The media servers and their nodes; "b" and "c" may leave and come back."""

    def __init__(self, redis_url: str, servers: dict[str, RemoteServer], relay: Relay) -> None:
        self.redis_url = redis_url
        self.servers = servers
        self.relay = relay
        self.nodes: dict[str, MediaNode] = {}

    def node(self, server_id: str) -> MediaNode:
        behind = server_id == "a"
        return MediaNode(
            self.servers[server_id],
            redis_url=self.redis_url,
            server_id=server_id,
            control_host=RELAY_HOST if behind else None,
            media_address=ADDRESSES[server_id],
            interval=0.5,
        )

    async def join(self, server_id: str) -> None:
        node = self.node(server_id)
        await node.start()
        self.nodes[server_id] = node

    async def leave(self, server_id: str) -> None:
        await self.nodes.pop(server_id).aclose()


class Chaos(chaos.Chaos):
    """The operations, on ``cluster`` over ``servers``."""

    KINDS = KINDS

    def __init__(self, rng: random.Random, cluster: Cluster, servers: Servers) -> None:
        super().__init__(rng)
        self.cluster = cluster
        self.servers = servers
        self.pipes = 0  # consumes and data consumes on another server than their source
        self.moving: set[str] = set()  # servers leaving or joining now
        self.webrtc_server: Any = None
        self.webrtc_port = free_ports(1)

    def server(self) -> str | None:
        """Where a transport or observer goes: a server named, or placed (None)."""
        return self.rng.choice([None, None, *ADDRESSES])

    async def create_router(self) -> None:
        if len(self.live("router")) < 3:
            router = await self.cluster.create_router(media_codecs=MEDIA_CODECS)
            self.add("router", router, None)

    async def create_transport(self) -> None:
        router = self.pick("router")
        if router is None:
            return
        if self.rng.random() < 0.5:
            transport = await router.create_direct_transport(server=self.server())
            self.direct.add(id(transport))
        else:
            transport = await router.create_plain_transport(
                server=self.server(), listen_info={"protocol": "udp"}, comedia=True
            )
        self.add("transport", transport, router)

    async def webrtc(self) -> None:
        """A WebRtcTransport through the cluster's WebRtcServer (made on each server the
        first time one needs it there), or that WebRtcServer closed (made anew later)."""
        router = self.pick("router")
        if router is None:
            return
        if self.webrtc_server is None or self.webrtc_server.closed:
            self.webrtc_server = await self.cluster.create_webrtc_server(
                listen_infos=[{"protocol": "udp", "port": self.webrtc_port}]
            )
        elif self.rng.random() < 0.15:
            self.webrtc_server.close()
            return
        transport = await router.create_webrtc_transport(
            server=self.server(), webrtc_server=self.webrtc_server
        )
        self.add("transport", transport, router)

    def _home(self, router: Any, source: Any) -> str | None:
        """The server ``source`` (a (data) producer of ``router``) lives on."""
        home: str | None = router._home.get((source.id, False)) or router._home.get(
            (source.id, True)
        )
        return home

    def _transport_of(self, router: Any, source: Any, direct: bool = False) -> Any:
        """A live transport of ``router`` (a direct one if ``direct``), on another server
        than ``source`` mostly (the source piped there), or None."""
        transports = [
            t
            for t in self.live("transport")
            if self.parent[id(t)] is router and (not direct or id(t) in self.direct)
        ]
        if not transports:
            return None
        away = [t for t in transports if t.server_id != self._home(router, source)]
        return self.rng.choice(away if away and self.rng.random() < 0.8 else transports)

    async def consume(self) -> None:
        producer = self.pick("producer")
        if producer is None:
            return
        router = self.parent[id(producer)]
        transport = self._transport_of(router, producer)
        if transport is None:
            return
        consumer = await transport.consume(
            producer_id=producer.id,
            rtp_capabilities=router.rtp_capabilities,
            paused=self.rng.random() < 0.3,
        )
        self.add("consumer", consumer, router)
        self.pipes += transport.server_id != self._home(router, producer)

    async def consume_data(self) -> None:
        data_producer = self.pick("dataProducer")
        if data_producer is None:
            return
        router = self.parent[id(data_producer)]
        transport = self._transport_of(router, data_producer, direct=True)
        if transport is not None:
            consumer = await transport.consume_data(data_producer_id=data_producer.id)
            self.add("dataConsumer", consumer, router)
            self.pipes += transport.server_id != self._home(router, data_producer)

    async def observe(self) -> None:
        router = self.pick("router")
        if router is None:
            return
        producers = [p for p in self.live("producer") if self.parent[id(p)] is router]
        observer = await router.create_audio_level_observer(server=self.server(), interval=100)
        self.add("observer", observer, router)
        for producer in producers[:2]:
            await observer.add_producer(producer_id=producer.id)

    async def pipe(self) -> None:
        kind = "producer" if self.rng.random() < 0.7 else "dataProducer"
        source = self.pick(kind)
        target = self.pick("router")
        if source is None or target is None:
            return
        router = self.parent[id(source)]
        if target is router:
            return
        key = "producer_id" if kind == "producer" else "data_producer_id"
        result = await self.piped(router, router=target, **{key: source.id})
        if result is None:
            return
        if kind == "producer":
            self.add("consumer", result["pipeConsumer"], router)
            self.add("producer", result["pipeProducer"], target)
        else:
            self.add("dataConsumer", result["pipeDataConsumer"], router)
            self.add("dataProducer", result["pipeDataProducer"], target)

    async def pause(self) -> None:
        obj = self.pick(self.rng.choice(["producer", "consumer", "dataProducer", "observer"]))
        if obj is not None:
            await (obj.pause() if self.rng.random() < 0.5 else obj.resume())

    async def dump(self) -> None:
        await super().dump()
        if self.rng.random() < 0.2:
            self.cluster.dump()

    async def kill_worker(self) -> None:
        server = self.servers.servers[self.rng.choice(list(ADDRESSES))]
        pids = [w.pid for w in server.live_objects() if isinstance(w, Worker)]
        if pids:
            with contextlib.suppress(ProcessLookupError):  # killed in this burst already
                os.kill(self.rng.choice(pids), signal.SIGKILL)

    async def cut(self) -> None:
        self.servers.relay.cut()

    async def leave(self) -> None:
        """Server "b" or "c" leaves the cluster (its node stops), or comes back."""
        server_id = self.rng.choice(["b", "c"])
        if server_id in self.moving:
            return
        self.moving.add(server_id)
        try:
            if server_id in self.servers.nodes:
                await self.servers.leave(server_id)
            else:
                await self.servers.join(server_id)
        finally:
            self.moving.discard(server_id)

    async def bounce(self) -> None:
        """Server "b" or "c" leaves and joins again at once (a restart under its id)."""
        server_id = self.rng.choice(["b", "c"])
        if server_id in self.moving or server_id not in self.servers.nodes:
            return
        self.moving.add(server_id)
        try:
            await self.servers.leave(server_id)
            await self.servers.join(server_id)
        finally:
            self.moving.discard(server_id)

    async def settle(self) -> None:
        def link() -> Any:  # "a"'s, the one behind the relay
            client = self.cluster._clients.get("a")
            return None if client is None else client.connection

        await self.link_up(link)

    OPS: tuple[tuple[str, int], ...] = (
        ("create_router", 3),
        ("create_transport", 8),
        ("webrtc", 2),
        ("produce", 8),
        ("consume", 12),
        ("pipe", 4),
        ("produce_data", 3),
        ("consume_data", 4),
        ("observe", 1),
        ("pause", 6),
        ("dump", 5),
        ("close", 6),
        ("kill_worker", 2),
        ("cut", 3),
        ("leave", 1),
        ("bounce", 1),
        ("settle", 2),
    )


@contextlib.asynccontextmanager
async def _cluster() -> AsyncIterator[tuple[Servers, Cluster]]:
    """A Redis, servers "a" (behind a relay), "b" and "c" registered, and a client."""
    redis = RedisProcess()
    redis.start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            servers: dict[str, RemoteServer] = {}
            for server_id, address in ADDRESSES.items():
                servers[server_id] = await stack.enter_async_context(
                    await serve(host=address, token=TOKEN, grace_period=GRACE[server_id])
                )
            a = servers["a"]
            relay = await stack.enter_async_context(
                Relay(a.port, host=RELAY_HOST, upstream=ADDRESSES["a"], port=a.port)
            )
            nodes = Servers(redis.url, servers, relay)
            for server_id in ADDRESSES:
                await nodes.join(server_id)
            try:
                cluster = await horizontal.connect(
                    redis.url,
                    token=TOKEN,
                    interval=0.2,
                    grace=3.0,  # a heartbeat late on a loaded machine drops no server
                    worker_idle=WORKER_IDLE,
                    worker_settings={"log_level": "none"},
                )
                try:
                    yield nodes, cluster
                finally:
                    await cluster.aclose()
            finally:
                for server_id in list(nodes.nodes):
                    await nodes.leave(server_id)
    finally:
        redis.kill()


#: Seeds run by the suite (each a few seconds); ``CHAOS_SEEDS=1-200`` runs more by hand.
SEEDS = chaos.seeds("1-3")
STEPS = int(os.environ.get("CHAOS_STEPS", "120"))


@pytest.mark.parametrize("seed", SEEDS)
async def test_random_operations_and_faults_on_a_cluster_leave_things_in_step(seed: int) -> None:
    async with _cluster() as (servers, cluster):
        chaos = Chaos(random.Random(seed), cluster, servers)
        empty = _sizes(cluster)  # (no router yet, a client per server to come)
        await chaos.run(STEPS, seed)
        for server_id in set(ADDRESSES) - set(servers.nodes):
            await servers.join(server_id)
        await chaos.settle()
        await until(lambda: set(cluster.servers) == set(ADDRESSES), 10)
        await _client_and_servers_agree(cluster, servers, chaos, seed)
        await _routers_whole(cluster, chaos, seed)
        for router in cluster.routers:
            router.close()
        for webrtc_server in cluster.webrtc_servers:
            webrtc_server.close()
        await _nothing_left(cluster, servers, chaos, seed)
        await _back_to_small(cluster, empty, chaos, seed)
        made = {kind: len(objects) for kind, objects in chaos.objects.items()}
        print(f"seed {seed}: made {made}, {chaos.pipes} consumed on another server;")
        print(f"  failures met: {dict(chaos.errors)}")


def _sizes(cluster: Cluster) -> dict[str, int]:
    """The client's maps and lists (but those bounded by time), per server too."""
    sizes = containers(cluster, "cluster", skip=("_missing_since", "_left_at", "_worker_settings"))
    for server_id, client in vars(cluster)["_clients"].items():
        sizes[f"{server_id}.proxies"] = len(client.connection.proxies)
    return sizes


async def _client_and_servers_agree(
    cluster: Cluster, servers: Servers, chaos: Chaos, seed: int
) -> None:
    """The client's live proxies on each server are its session's live objects there."""

    def differences() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        """By server: (live on the server only, live here only)."""
        found = {}
        for server_id, client in cluster._clients.items():
            session = servers.servers[server_id].sessions.get(client.session_id)
            only = live_differences(session, client.connection)
            if only != ({}, {}):
                found[server_id] = only
        return found

    try:  # the events of what closed last may still be on their way
        await until(lambda: differences() == {}, 5)
    except TimeoutError:
        raise AssertionError(
            f"seed {seed}: (on the server only, here only) {differences()}; "
            f"the last steps: {chaos.log[-20:]}"
        ) from None


async def _routers_whole(cluster: Cluster, chaos: Chaos, seed: int) -> None:
    """Each router's children are open and answer its dump(), which lists the transports
    open here; the cluster's dump() sees them all."""
    for router in cluster.routers:
        for attempt in range(10):  # a worker killed last: its child's close may be coming
            try:
                dump = await asyncio.wait_for(router.dump(), CALL_TIMEOUT)
                break
            except Exception as error:
                if attempt == 9 or not isinstance(error, EXPECTED):
                    raise AssertionError(
                        f"seed {seed}: {router!r}.dump() failed: {error!r}; "
                        f"the last steps: {chaos.log[-20:]}"
                    ) from error
                await asyncio.sleep(0.1)
        transports = [t for t in chaos.live("transport") if chaos.parent[id(t)] is router]
        assert {t.id for t in transports} <= set(dump["transportIds"]), (seed, router)
        assert all(not t.closed for t in router.transports_for_testing.values()), (seed, router)
    assert len(cluster.dump()["routers"]) == len(cluster.routers)


async def _nothing_left(cluster: Cluster, servers: Servers, chaos: Chaos, seed: int) -> None:
    """Every router closed: no router (child, pipe) on any server, then nothing at all
    once the router workers idle out (and a session dropped by a leave ends)."""

    def left(kinds: tuple[type, ...]) -> dict[str, list[Any]]:
        found = {}
        for server_id, server in servers.servers.items():
            objects = [o for o in server.live_objects() if isinstance(o, kinds)]
            if objects:
                found[server_id] = objects
        return found

    for kinds, timeout in (((Router,), 5.0), ((object,), max(GRACE.values()) + 5)):
        try:
            await until(lambda kinds=kinds: left(kinds) == {}, timeout)
        except TimeoutError:
            raise AssertionError(
                f"seed {seed}: left on the servers: {left(kinds)}; "
                f"the last steps: {chaos.log[-20:]}"
            ) from None


async def _back_to_small(cluster: Cluster, empty: dict[str, int], chaos: Chaos, seed: int) -> None:
    """The client's maps hold nothing per router, pipe, worker or object: a lock, a
    connection per server at most, nothing else but its two loops."""
    servers = len(ADDRESSES)
    small = {
        **{name: 0 for name in empty},
        "cluster._records": servers,
        "cluster._tasks": 2,
    }

    def too_big() -> dict[str, int]:
        sizes = _sizes(cluster)
        allowed = {
            "cluster._clients": servers,
            "cluster._connecting": servers,
            "cluster._router_worker_locks": servers,
        }
        return {
            name: size
            for name, size in sizes.items()
            if size > allowed.get(name, small.get(name, 0))
        }

    try:
        await until(lambda: too_big() == {}, 5)
    except TimeoutError:
        raise AssertionError(
            f"seed {seed}: the client's maps: {too_big()} (of {_sizes(cluster)}); "
            f"the last steps: {chaos.log[-20:]}"
        ) from None
