"""The demo's HTTP and WebSocket server (aiohttp): the page, its bundle, the signaling.

    async with DemoServer(DemoConfig(port=8080)) as server:
        print(server.url("demo"))
        await server.wait_failed()   # or anything else that keeps the loop running

Routes: ``GET /`` the page (it joins the room named by ``?room=``), ``/static/...`` its
files (``static/build/demo.js`` is the bundle that ``scripts/build-demo.sh`` makes), and
``GET /ws`` the signaling WebSocket (one :class:`~mafalda.demo.room.Session` each).

``DemoConfig.layer`` says what the rooms run on; the room code is the same for all,
and on every layer media go through a WebRtcServer (one UDP and one TCP port per worker
for every transport there): "worker" (one mediasoup worker here), "mafalda" (a Mafalda
pool spanning the cores), "remote" (a
``mafalda serve`` at ``url``: Remote Mediasoup or Remote Mafalda), "cluster" (the
servers registered in the Redis at ``url``) or "swarm" (the swarm of the server at
``url``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, cast

from aiohttp import WSCloseCode, WSMsgType, web

from mafalda.demo import protocol
from mafalda.demo.room import RoomManager, RouterSource, Session
from mafalda.mediasoup import (
    ListenInfo,
    MediasoupError,
    WebRtcServer,
    Worker,
    WorkerLogLevel,
    create_worker,
)

__all__ = ["BUNDLE", "LAYERS", "STATIC_DIR", "DemoConfig", "DemoServer", "Layer"]

logger = logging.getLogger("mafalda.demo")

STATIC_DIR: Final = Path(__file__).parent / "static"
#: The browser bundle (mediasoup-client and the page's code), built by
#: ``scripts/build-demo.sh``; not in the source tree until then.
BUNDLE: Final = STATIC_DIR / "build" / "demo.js"
#: Ports from ``rtc_port`` a server of a cluster or swarm may listen on (one per worker).
CLUSTER_PORTS: Final = 16

#: Messages queued for a client that does not read them; past this it is dropped.
MAX_OUTBOX: Final = 1000
#: Seconds a gone client's writer may take to send what was queued (a client that
#: stopped reading holds it): then it is stopped.
WRITER_GRACE: Final = 5.0


Layer = Literal["worker", "mafalda", "remote", "cluster", "swarm"]
LAYERS: Final[tuple[Layer, ...]] = ("worker", "mafalda", "remote", "cluster", "swarm")


@dataclass(frozen=True)
class DemoConfig:
    """Where the demo listens. Port 0 means any free port (for tests)."""

    host: str = "127.0.0.1"
    port: int = 8080
    #: The IP the WebRtcServer listens on for media (UDP and TCP).
    rtc_ip: str = "127.0.0.1"
    #: The WebRtcServer's port, the same for UDP and TCP (0: any free ones).
    rtc_port: int = 40000
    #: The address browsers are told to send media to, when not ``rtc_ip`` (NAT, 0.0.0.0).
    announced_ip: str | None = None
    worker_log_level: WorkerLogLevel = "warn"
    #: What the rooms run on (see the module's docstring).
    layer: Layer = "worker"
    #: "remote": the server's ws(s):// URL; "cluster": the Redis URL; "swarm": a
    #: server's ws(s):// URL.
    url: str | None = None
    #: The servers' token ("remote", "cluster", "swarm").
    token: str | None = None
    #: "mafalda": the pool's size (None: one per core).
    num_workers: int | None = None
    #: Placement: "mafalda" ('concentrate', 'spread'...), "cluster" and "swarm"
    #: ('least-loaded', 'pack', 'region'); None: the layer's default.
    policy: str | None = None

    def check(self) -> None:
        """ValueError naming what does not go together."""
        if self.layer not in LAYERS:
            raise ValueError(f"invalid layer {self.layer!r}: one of {', '.join(LAYERS)}")
        distant = self.layer in ("remote", "cluster", "swarm")
        if distant and not (self.url and self.token):
            raise ValueError(f"the {self.layer} layer needs a url and a token")
        if not distant and self.url is not None:
            raise ValueError(f"a url is for the remote, cluster or swarm layer, not {self.layer}")
        if self.num_workers is not None and self.layer != "mafalda":
            raise ValueError("num_workers is for the mafalda layer")
        if self.policy is not None and self.layer in ("worker", "remote"):
            raise ValueError("a placement policy is for the mafalda, cluster or swarm layer")


class DemoServer:
    """The worker, its WebRtcServer, the rooms and the aiohttp application."""

    def __init__(self, config: DemoConfig | None = None) -> None:
        self.config = config or DemoConfig()
        self._worker: Worker | None = None
        self._webrtc_server: WebRtcServer | None = None
        #: Closes what the layer opened (a pool, a client, a cluster client).
        self._close_layer: Callable[[], Awaitable[None]] | None = None
        self._rooms: RoomManager | None = None
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._sockets: set[web.WebSocketResponse] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failed: asyncio.Future[str] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def _ports(self, ports: int) -> dict[str, Any]:
        """A listen info's port: ``rtc_port``, or the ``ports`` from it where several
        workers each have their own WebRtcServer (none when 0: any free ones)."""
        port = self.config.rtc_port
        if not port:
            return {}
        if ports > 1:
            return {"portRange": {"min": port, "max": min(port + ports - 1, 65535)}}
        return {"port": port}

    def _listen_infos(self, ports: int = 1) -> list[ListenInfo]:
        """The WebRtcServer's, on ``rtc_ip`` (see ``_ports``)."""
        config = self.config
        listen_infos: list[ListenInfo] = []
        for proto in ("udp", "tcp"):
            info = cast(ListenInfo, {"protocol": proto, "ip": config.rtc_ip, **self._ports(ports)})
            if config.announced_ip:
                info["announcedAddress"] = config.announced_ip
            listen_infos.append(info)
        return listen_infos

    async def _open_layer(self) -> RoomManager:
        """The rooms, on the configured layer."""
        config = self.config
        config.check()
        if config.layer == "worker":
            self._worker = await create_worker(log_level=config.worker_log_level)
            self._worker.on("died", self._on_worker_died)
            self._webrtc_server = await self._worker.create_webrtc_server(
                listen_infos=self._listen_infos()
            )
            return RoomManager(worker=self._worker, webrtc_server=self._webrtc_server)
        source: RouterSource
        webrtc_server: Any
        # Each layer checks its own policy names (ValueError).
        policy: dict[str, Any] = {"policy": config.policy} if config.policy else {}
        if config.layer == "mafalda":
            from mafalda.vertical import Mafalda

            pool = await Mafalda.start(
                num_workers=config.num_workers,
                worker_settings={"log_level": config.worker_log_level},
                **policy,
            )
            self._close_layer, source = pool.aclose, pool
            webrtc_server = await pool.create_webrtc_server(
                listen_infos=self._listen_infos(pool.max_workers)
            )
        elif config.layer == "remote":
            from mafalda import remote

            assert config.url is not None and config.token is not None
            client = await remote.connect(config.url, token=config.token)
            self._close_layer = client.aclose
            if isinstance(client, remote.RemoteMafalda):
                source = client
                webrtc_server = await client.create_webrtc_server(
                    listen_infos=self._listen_infos(client.max_workers)
                )
            else:
                worker = await client.create_worker(log_level=config.worker_log_level)
                worker.on("died", self._on_worker_died)  # the server's worker, or the server
                source = worker
                webrtc_server = await worker.create_webrtc_server(listen_infos=self._listen_infos())
        else:
            assert config.url is not None and config.token is not None
            if config.layer == "cluster":
                from mafalda import horizontal

                cluster = await horizontal.connect(config.url, token=config.token, **policy)
            else:
                from mafalda import swarm

                cluster = await swarm.connect([config.url], token=config.token, **policy)
            self._close_layer, source = cluster.aclose, cluster
            # Each server's WebRtcServer on its media address (no ip: the cluster fills
            # it in); --rtc-ip 0.0.0.0: on all interfaces, that address announced. A
            # range: a server of a Mafalda pool has one per worker.
            infos: list[dict[str, Any]] = []
            for proto in ("udp", "tcp"):
                info: dict[str, Any] = {"protocol": proto, **self._ports(CLUSTER_PORTS)}
                if config.rtc_ip in ("0.0.0.0", "::"):
                    info["ip"] = config.rtc_ip
                infos.append(info)
            webrtc_server = await cluster.create_webrtc_server(listen_infos=infos)
        return RoomManager(worker=source, webrtc_server=webrtc_server)

    async def start(self) -> None:
        config = self.config
        self._failed = asyncio.get_running_loop().create_future()
        try:
            self._rooms = await self._open_layer()
            app = web.Application()
            app.router.add_get("/", self._index)
            app.router.add_get("/favicon.ico", self._no_content)
            app.router.add_get("/ws", self._websocket)
            app.router.add_static("/static/", STATIC_DIR)
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
            await self._runner.setup()
            site = web.TCPSite(self._runner, config.host, config.port)
            await site.start()
        except BaseException:
            await self.close()
            raise
        address = self._runner.addresses[0]
        self._port = int(address[1])
        if not BUNDLE.exists():
            logger.warning("%s is missing: run scripts/build-demo.sh (the page needs it)", BUNDLE)

    async def close(self) -> None:
        """Drop every client, close the rooms, the WebRtcServer and the worker."""
        sockets = list(self._sockets)
        if sockets:
            await asyncio.gather(
                *(
                    ws.close(code=WSCloseCode.GOING_AWAY, message=b"server closing")
                    for ws in sockets
                ),
                return_exceptions=True,
            )
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for task in list(self._tasks):
            task.cancel()
        if self._rooms is not None:
            self._rooms.close()
        if self._webrtc_server is not None:
            self._webrtc_server.close()
        if self._close_layer is not None:
            await self._close_layer()
        if self._worker is not None:
            if not self._worker.closed:
                # The close requests above are fire-and-forget; the worker answers in
                # order, so once this one is answered theirs have arrived too (else they
                # would reach a closed channel and be logged as unmatched responses).
                with contextlib.suppress(MediasoupError):
                    await self._worker.dump()
            self._worker.close()
            await self._worker.wait_closed()
        if self._failed is not None and not self._failed.done():
            self._failed.cancel()

    async def __aenter__(self) -> DemoServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_failed(self) -> str:
        """Wait until the server cannot go on (its worker died); return why."""
        assert self._failed is not None, "start() first"
        return await asyncio.shield(self._failed)

    def _on_worker_died(self, error: BaseException) -> None:
        # A worker dies at most once, and only while open: close() closes it before
        # cancelling _failed, which start() made before listening for this.
        logger.error("mediasoup-worker died: %s", error)
        assert self._failed is not None
        self._failed.set_result(f"mediasoup-worker died: {error}")

    # -- what the server has -----------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def rooms(self) -> RoomManager:
        assert self._rooms is not None, "start() first"
        return self._rooms

    @property
    def worker(self) -> Worker:
        assert self._worker is not None, "start() first"
        return self._worker

    @property
    def webrtc_server(self) -> WebRtcServer:
        assert self._webrtc_server is not None, "start() first"
        return self._webrtc_server

    def url(self, room: str = "demo") -> str:
        """The page of ``room`` (getUserMedia needs localhost or https: 0.0.0.0 shows as
        127.0.0.1)."""
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}/?room={room}"

    @property
    def ws_url(self) -> str:
        return self.url().replace("http://", "ws://", 1).split("/?", 1)[0] + "/ws"

    # -- handlers ----------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def _no_content(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=protocol.MAX_MESSAGE_SIZE, heartbeat=30.0)
        await ws.prepare(request)
        outbox: asyncio.Queue[str | None] = asyncio.Queue()
        dropping = False

        def send(message: dict[str, Any]) -> None:
            nonlocal dropping
            if dropping:  # (ws.closed is not True yet while its close is under way)
                return
            if outbox.qsize() >= MAX_OUTBOX:
                dropping = True
                logger.warning("dropping a client that does not read its messages")
                self._track(ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"too slow"))
                return
            outbox.put_nowait(protocol.encode(message))

        session = Session(self.rooms, send)
        writer = asyncio.create_task(_write(ws, outbox))
        self._sockets.add(ws)
        reason = "disconnected"
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    send(await session.handle_message(message.data))
                elif message.type == WSMsgType.BINARY:
                    send(protocol.error_response(None, "binary messages are not supported"))
                # ERROR: a frame too big, a broken frame... Run by a test (the oversized
                # message), unrecorded on Python 3.11: see "Coverage" in the README.
                else:  # pragma: no cover
                    reason = f"dropped: {ws.exception()}"
                    break
        finally:
            session.close(reason)
            self._sockets.discard(ws)
            outbox.put_nowait(None)
            # (asyncio.wait, not asyncio.timeout: a TimeoutError thrown in would resume this
            # coroutine unrecorded by coverage on Python 3.11, see "Coverage" in the README.)
            done, _ = await asyncio.wait({writer}, timeout=WRITER_GRACE)
            if not done:
                writer.cancel()
            # Does nothing when closed already, as it is unless this handler was cancelled
            # (aiohttp's shutdown, for a socket that opened after close() listed them).
            await ws.close()
        return ws

    def _track(self, awaitable: Any) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _write(ws: web.WebSocketResponse, outbox: asyncio.Queue[str | None]) -> None:
    """Send queued messages in order until ``None`` (or the connection fails)."""
    while (text := await outbox.get()) is not None:
        if ws.closed:
            continue
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(text)
