"""The Remote Mediasoup / Remote Mafalda client.

    from mafalda.remote import connect

    mediasoup = await connect("ws://media-1:4443/", token=TOKEN)
    worker = await mediasoup.create_worker()
    router = await worker.create_router(media_codecs=[...])
    # from here on, the mafalda.mediasoup API

When the server serves a Mafalda, ``connect()`` returns a RemoteMafalda instead
(``create_router``, ``workers``, ``stats()``, ``dump()``, ``close()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import logging
import ssl as ssl_module
from typing import Any

import aiohttp

from mafalda.mediasoup.emitter import EventEmitter
from mafalda.remote import protocol as p
from mafalda.remote.errors import RemoteConnectionError, RemoteError, error_from_wire
from mafalda.remote.proxy import RemoteObject, RemoteRouter, RemoteWorker, proxy_class

__all__ = ["Connection", "RemoteMafalda", "RemoteMediasoup", "connect"]

logger = logging.getLogger("mafalda.remote.client")

_EMPTY_SCHEMA: dict[str, list[str]] = {"async": [], "sync": []}


class Connection:
    """The WebSocket to a server: requests, answers, notifications and the proxies."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
        hello: dict[str, Any],
    ) -> None:
        self._http = http
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Any], RemoteObject | None]] = {}
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.proxies: dict[str, RemoteObject] = {}
        self.closed = False
        self.session_id: str = hello["session"]
        self.serves: str = hello["serves"]
        self.mediasoup_version: str = hello.get("mediasoupVersion", "")
        self.root_state: dict[str, Any] = hello.get("root") or {}
        self._schemas: dict[str, dict[str, list[str]]] = hello.get("schemas") or {}
        self.events = EventEmitter()
        self._done = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None
        refs = hello.get("objects") or []
        for ref in refs:
            if p.is_ref(ref):
                state = ref.get("state")
                decoded = self.decode(state, None) if isinstance(state, dict) else {}
                self._resolve({**ref, "state": decoded}, None, link=False)
        for ref in refs:
            if p.is_ref(ref) and isinstance(ref.get("parent"), str):
                child = self.proxies.get(ref["id"])
                parent = self.proxies.get(ref["parent"])
                if child is not None and parent is not None:
                    child._link(parent)
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write())
        self._reader = loop.create_task(self._read())

    def schema(self, class_name: str) -> dict[str, list[str]]:
        return self._schemas.get(class_name, _EMPTY_SCHEMA)

    # -- values ----------------------------------------------------------------------------

    def encode(self, value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, RemoteObject):
            return p.make_ref(value.proxy_kind, value.handle)
        if isinstance(value, bytes | bytearray | memoryview):
            return p.encode_bytes(value)
        if isinstance(value, dict):
            return {str(k): self.encode(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.encode(v) for v in value]
        raise TypeError(f"cannot send a {type(value).__name__} to the remote server")

    def decode(self, value: Any, context: RemoteObject | None) -> Any:
        if isinstance(value, dict):
            if p.is_ref(value):
                return self._resolve(value, context)
            if p.is_bytes(value):
                return p.decode_bytes(value)
            if p.is_error(value):
                return error_from_wire(0, value["message"], {"type": value["$error"]})
            return {k: self.decode(v, context) for k, v in value.items()}
        if isinstance(value, list):
            return [self.decode(v, context) for v in value]
        return value

    def _hook(self, value: dict[str, Any]) -> Any:
        """``json.loads`` object hook: references become proxies, bytes and errors values
        (inner objects come first, so a reference's state is decoded already)."""
        if "$ref" in value and p.is_ref(value):
            return self._resolve(value, None)
        if "$bytes" in value and p.is_bytes(value):
            return p.decode_bytes(value)
        if "$error" in value and p.is_error(value):
            return error_from_wire(0, value["message"], {"type": value["$error"]})
        return value

    def _resolve(self, ref: dict[str, Any], context: RemoteObject | None, link: bool = True) -> Any:
        handle: str = ref["id"]
        proxy = self.proxies.get(handle)
        state = ref.get("state")
        if proxy is None:
            proxy = proxy_class(ref["$ref"])(self, handle, state if isinstance(state, dict) else {})
            self.proxies[handle] = proxy
        elif isinstance(state, dict) and not proxy._closed_local:
            proxy._apply_state(state)
        if link:
            parent_handle = ref.get("parent")
            parent = self.proxies.get(parent_handle) if isinstance(parent_handle, str) else None
            if parent is not None and not proxy.closed:
                proxy._link(parent)
        return proxy

    # -- calls -----------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        self._queue.put_nowait(p.dumps(message))

    async def call(
        self,
        target: RemoteObject | None,
        method: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
    ) -> Any:
        """Call ``method`` on the server's ``target`` (None: the root) and return its result."""
        if self.closed:
            raise RemoteConnectionError("remote connection closed")
        request_id = next(self._ids)
        message = p.make_call(
            request_id,
            None if target is None else target.handle,
            method,
            self.encode(list(args)),
            self.encode(kwargs),
        )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (future, target)
        self._send(message)
        return await future

    def call_nowait(
        self,
        target: RemoteObject | None,
        method: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
    ) -> None:
        """Fire-and-forget call (the server logs a failure)."""
        if self.closed:
            return
        message = p.make_call(
            None,
            None if target is None else target.handle,
            method,
            self.encode(list(args)),
            self.encode(kwargs),
        )
        self._send(message)

    # -- I/O -------------------------------------------------------------------------------

    async def _write(self) -> None:
        while True:
            text = await self._queue.get()
            if text is None:
                return
            try:
                await self._ws.send_str(text)
            except (ConnectionError, RuntimeError, aiohttp.ClientError):
                return

    async def _read(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    message = p.parse_server_message(msg.data, self._hook)
                except p.ProtocolError:
                    logger.warning("invalid message from the server dropped")
                    continue
                try:
                    if isinstance(message, p.Response):
                        self._on_response(message)
                    else:
                        self._on_notification(message)
                except Exception:
                    logger.exception("handling a server message failed")
        except (ConnectionError, aiohttp.ClientError, asyncio.CancelledError):
            pass
        finally:
            self._lost()

    def _on_response(self, response: p.Response) -> None:
        if not isinstance(response.id, int):
            if response.error is not None:
                logger.warning("server error: %s", response.error.get("message"))
            return
        entry = self._pending.pop(response.id, None)
        if entry is None:
            return
        future, target = entry
        if future.done():
            return
        if response.error is not None:
            error = response.error
            future.set_exception(
                error_from_wire(error["code"], error["message"], error.get("data"))
            )
            return
        result = response.result if isinstance(response.result, dict) else {}
        state = result.get("state")
        if isinstance(state, dict):
            if target is None:
                self.root_state = state
            elif not target._closed_local:
                target._apply_state(state)
        future.set_result(result.get("value"))

    def _on_notification(self, message: p.Notification) -> None:
        params = message.params
        target = params.get("target")
        if message.method == "state":
            state = params.get("state")
            if not isinstance(state, dict):
                return
            if target is None:
                self.root_state = state
            elif isinstance(target, str) and target in self.proxies:
                known = self.proxies[target]
                if not known._closed_local:
                    known._apply_state(state)
            return
        if message.method != "event" or not isinstance(target, str):
            return
        proxy = self.proxies.get(target)
        event = params.get("event")
        args = params.get("args", [])
        if proxy is None or not isinstance(event, str) or not isinstance(args, list):
            return
        if proxy._closed_local and event not in proxy.late_events:
            return
        state = params.get("state")
        if isinstance(state, dict):
            proxy._apply_state(state)
        emitter = proxy.observer if params.get("emitter") == "observer" else proxy.events
        emitter.emit(event, *args)
        if event == "close" and emitter is proxy.observer and proxy.closed:
            proxy._forget()
            if not isinstance(proxy, RemoteWorker):
                self.proxies.pop(target, None)

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        error = RemoteConnectionError("remote connection closed")
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        self._queue.put_nowait(None)
        proxies = list(self.proxies.values())
        for proxy in proxies:
            if proxy._parent is None:
                proxy._connection_lost(error)
        for proxy in proxies:
            proxy._connection_lost(error)
        self.events.emit("close")
        if self._closing is None:  # the server went away: release the socket too
            self._closing = asyncio.get_running_loop().create_task(self._shutdown())

    async def wait_closed(self) -> None:
        await self._done.wait()

    async def aclose(self, *, keep_session: bool = False) -> None:
        """Close the connection. The server closes this session's objects at once, or
        after its grace period when ``keep_session`` (to resume with ``session=``)."""
        if self._closing is None:
            if not self.closed and not keep_session:
                self._send(p.request(None, "bye", {}))
            self._closing = asyncio.get_running_loop().create_task(self._shutdown())
        await asyncio.shield(self._closing)

    async def _shutdown(self) -> None:
        self._queue.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer, 2.0)
        with contextlib.suppress(Exception):
            await self._ws.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 2.0)
        self._lost()
        await self._http.close()
        self._done.set()


class _Facade:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.observer = EventEmitter()

    @property
    def connection(self) -> Connection:
        return self._connection

    @property
    def session_id(self) -> str:
        """Pass it to ``connect(..., session=)`` to resume after a disconnection."""
        return self._connection.session_id

    @property
    def closed(self) -> bool:
        return self._connection.closed

    @property
    def objects(self) -> list[RemoteObject]:
        """Every live proxy of this session (after a resume: the surviving objects)."""
        return [o for o in self._connection.proxies.values() if not o.closed]

    async def aclose(self, *, keep_session: bool = False) -> None:
        await self._connection.aclose(keep_session=keep_session)

    async def wait_closed(self) -> None:
        """Until the connection is closed and released."""
        await self._connection.wait_closed()


class RemoteMediasoup(_Facade):
    """The ``mafalda.mediasoup`` module API, on a remote server."""

    @property
    def version(self) -> str:
        return self._connection.mediasoup_version

    @property
    def workers(self) -> list[RemoteWorker]:
        return [o for o in self.objects if isinstance(o, RemoteWorker)]

    def get_supported_rtp_capabilities(self) -> Any:
        return copy.deepcopy(self._connection.root_state.get("supportedRtpCapabilities"))

    async def create_worker(self, **kwargs: Any) -> RemoteWorker:
        worker = await self._connection.call(None, "create_worker", (), kwargs)
        assert isinstance(worker, RemoteWorker)
        self.observer.emit("newworker", worker)
        return worker

    async def __aenter__(self) -> RemoteMediasoup:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class RemoteMafalda(_Facade):
    """A Mafalda's API on a remote server: this client's routers live in its pool."""

    @property
    def workers(self) -> list[dict[str, Any]]:
        """The pool's workers, as ``{"pid", "closed", "died"}`` (a snapshot)."""
        workers = self._connection.root_state.get("workers", [])
        return list(workers) if isinstance(workers, list) else []

    @property
    def max_workers(self) -> int:
        return int(self._connection.root_state.get("max_workers", 0))

    @property
    def routers(self) -> list[RemoteRouter]:
        return [o for o in self.objects if isinstance(o, RemoteRouter)]

    def stats(self) -> Any:
        """The pool's load as of the last answer from the server (see ``refresh()``)."""
        return copy.deepcopy(self._connection.root_state.get("stats"))

    async def refresh(self) -> None:
        """Fetch fresh ``stats()`` and ``workers``."""
        await self._connection.call(None, "stats", (), {})

    async def dump(self) -> Any:
        return await self._connection.call(None, "dump", (), {})

    async def create_router(self, **kwargs: Any) -> RemoteRouter:
        router = await self._connection.call(None, "create_router", (), kwargs)
        assert isinstance(router, RemoteRouter)
        self.observer.emit("newrouter", router)
        return router

    def close(self) -> None:
        """Close this client's routers and the connection (the pool stays on the server)."""
        if self._connection.closed:
            return
        for router in self.routers:
            router.close()
        self._closing = asyncio.get_running_loop().create_task(self._connection.aclose())
        self.observer.emit("close")

    async def __aenter__(self) -> RemoteMafalda:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def connect(
    url: str,
    *,
    token: str,
    session: str | None = None,
    ssl: ssl_module.SSLContext | None = None,
    timeout: float = 10.0,
    heartbeat: float | None = 20.0,
    max_message_size: int = 1 << 24,
) -> RemoteMediasoup | RemoteMafalda:
    """Connect to a server started by ``serve()`` / ``mafalda serve``.

    session: the ``session_id`` of a previous connection, to resume it (its objects come
    back as proxies in ``objects``). ssl: the context for a ``wss://`` server.
    """
    http = aiohttp.ClientSession()
    ws: aiohttp.ClientWebSocketResponse | None = None
    try:
        ws = await http.ws_connect(
            url,
            ssl=ssl if ssl is not None else True,
            heartbeat=heartbeat,
            max_msg_size=max_message_size,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=timeout),
        )
        await ws.send_str(
            p.dumps(
                p.request(
                    0,
                    "hello",
                    {"version": p.PROTOCOL_VERSION, "token": token, "session": session},
                )
            )
        )
        msg = await ws.receive(timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise RemoteConnectionError("the server closed the connection during the hello")
        answer = p.parse_server_message(msg.data)
        if not isinstance(answer, p.Response):
            raise RemoteError("unexpected hello answer")
        if answer.error is not None:
            raise RemoteError(answer.error["message"], code=answer.error["code"])
        if not isinstance(answer.result, dict) or not isinstance(answer.result.get("session"), str):
            raise RemoteError("invalid hello answer")
    except BaseException:
        if ws is not None:
            await ws.close()
        await http.close()
        raise
    connection = Connection(http, ws, answer.result)
    if connection.serves == "mafalda":
        return RemoteMafalda(connection)
    return RemoteMediasoup(connection)
