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
import errno
import logging
import re
import ssl as ssl_module
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from mafalda.mediasoup._io import limit_read_size
from mafalda.mediasoup.emitter import EventEmitter
from mafalda.mediasoup.errors import ChannelTimeoutError
from mafalda.mediasoup.worker import WorkerDiedError
from mafalda.remote import protocol as p
from mafalda.remote._frames import FrameSender
from mafalda.remote.errors import RemoteConnectionError, RemoteError, error_from_wire
from mafalda.remote.proxy import (
    RemoteObject,
    RemoteRouter,
    RemoteTransport,
    RemoteWebRtcServer,
    RemoteWorker,
    adopt_app_data,
    proxy_class,
)

__all__ = ["Connection", "RemoteMafalda", "RemoteMediasoup", "connect"]

logger = logging.getLogger("mafalda.remote.client")

_EMPTY_SCHEMA: dict[str, list[str]] = {"async": [], "sync": []}
#: The message of a WorkerDiedError: "[pid:123, code:None, signal:9]".
_WORKER_DIED = re.compile(r"\[pid:(\d+), code:(-?\d+|None), signal:(\d+|None)\]")

#: Creating calls, and the class of what each makes (a Mafalda's: with "Mafalda" before
#: it): an object of it that a resume brings under the target of such a call cut off by
#: the drop was made by that call (its caller got RemoteConnectionError), see _attach.
_MAKES = {
    "create_worker": "Worker",
    "create_router": "Router",
    "create_webrtc_server": "WebRtcServer",
    "create_webrtc_transport": "WebRtcTransport",
    "create_plain_transport": "PlainTransport",
    "create_pipe_transport": "PipeTransport",
    "create_direct_transport": "DirectTransport",
    "create_active_speaker_observer": "ActiveSpeakerObserver",
    "create_audio_level_observer": "AudioLevelObserver",
    "produce": "Producer",
    "consume": "Consumer",
    "produce_data": "DataProducer",
    "consume_data": "DataConsumer",
}

#: Close codes after which the client does not reconnect: the server closed the
#: connection on purpose (shutting down, or the session resumed on another connection).
_FINAL_CLOSE_CODES = frozenset({1000, 1001, p.SESSION_TAKEN_OVER})
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 2.0
_MAX_REFUSED = 3  # consecutive refused reconnections: nothing listens there any more
_MAX_HELD = 10_000

_Opener = Callable[
    [aiohttp.ClientSession, str | None],
    Awaitable[tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]],
]


def _ignore_root_event(observer: bool, event: str, args: list[Any]) -> None:
    """A root event no facade listens to (a Remote Mediasoup client's)."""


def _refused(error: BaseException) -> bool:
    if isinstance(error, aiohttp.ClientConnectorError):
        return error.os_error.errno == errno.ECONNREFUSED
    return isinstance(error, ConnectionRefusedError)


class Connection:
    """The WebSocket to a server: requests, answers, notifications and the proxies.

    When the WebSocket drops while the server lives on (a cut connection, a missed
    heartbeat), the connection reconnects with backoff within the server's grace period
    and resumes its session: pending calls fail at once with RemoteConnectionError, the
    proxies stay and are re-synced from the states the server sends on resume (objects
    the server closed meanwhile close here, with their close events). ``events`` emits
    'disconnect' and 'reconnect' around that, 'close' when the connection is gone for
    good (the server refused, forgot the session, or the grace period ran out), and
    'callerror' (target proxy or None, method name, exception) when a fire-and-forget
    call (``close()``, ``send()``...) failed on the server; that is logged too.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
        hello: dict[str, Any],
        opener: _Opener,
        *,
        reconnect: bool = True,
    ) -> None:
        self._http = http
        #: Opens a link resuming the session: to reconnect (``reconnect``), and for
        #: aclose()'s bye when the link dropped before the bye was answered.
        self._opener = opener
        self._reconnects = reconnect
        #: The id of the last request sent (ids go up for the connection's life, across
        #: reconnections).
        self._last_id = 0
        self._pending: dict[int, tuple[asyncio.Future[Any], RemoteObject | None, str]] = {}
        #: The creations the last drop cut off: (their target's handle, what they make).
        self._cut_off: list[tuple[str | None, str]] = []
        self.proxies: dict[str, RemoteObject] = {}
        self.closed = False
        self.reconnecting = False
        self.session_id: str = hello["session"]
        self.serves: str = hello["serves"]
        self.mediasoup_version: str = hello.get("mediasoupVersion", "")
        self.root_state: dict[str, Any] = {}
        self.grace_period = 0.0
        self._schemas: dict[str, dict[str, list[str]]] = {}
        self.events = EventEmitter()
        self._done = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._held: list[bytes] = []  # fire-and-forget calls made while reconnecting
        #: Seconds a call waits for its answer (None: as long as the connection lives);
        #: wait_*() calls (wait_closed()) are never timed out.
        self.call_timeout: float | None = None
        #: Seconds aclose() waits for the server (the bye's answer, the closing
        #: handshake), in all; then the socket is dropped as by abort().
        self.close_timeout = 10.0
        #: Handles of proxies closed here lately, whose close() the server may not have
        #: run yet (a resume must not bring them back).
        self._closed_lately: dict[str, None] = {}
        #: Proxies dropped (closed), while the app holds them: what a reference to one
        #: that the server sends again ("gone") resolves to.
        self._gone_proxies: weakref.WeakValueDictionary[str, RemoteObject] = (
            weakref.WeakValueDictionary()
        )
        self._special = self._decode_marker
        #: Called with (whether on the observer, event, arguments) for each event of the
        #: served root (a Mafalda pool's), after the root's state is updated from it.
        self.on_root_event: Callable[[bool, str, list[Any]], None] = _ignore_root_event
        self._attach(ws, hello)

    def _attach(self, ws: aiohttp.ClientWebSocketResponse, hello: dict[str, Any]) -> None:
        """Serve ``ws``, whose hello answered ``hello``: its states re-sync the proxies."""
        self._ws = ws
        self._frames = FrameSender(ws)
        root = hello.get("root")
        self.root_state = p.unescape(root, self._special) if isinstance(root, dict) else {}
        grace = hello.get("gracePeriod")
        self.grace_period = float(grace) if isinstance(grace, int | float) else 0.0
        self._schemas = hello.get("schemas") or self._schemas
        last_id = hello.get("lastId")
        if isinstance(last_id, int) and last_id > self._last_id:
            # A session resumed from another process: late answers to that one's
            # requests may still come, under ids this one must not use.
            self._last_id = last_id
        refs = [self._with_state(r) for r in hello.get("objects") or [] if p.is_ref(r)]
        alive = {r["id"] for r in refs}
        gone = [h for h, proxy in self.proxies.items() if h not in alive and not proxy.closed]
        unclosed: set[str] = set()
        orphans: list[str] = []
        cut_off, self._cut_off = self._cut_off, []
        for ref in refs:
            known = self.proxies.get(ref["id"])
            if ref["id"] in self._closed_lately or (known is not None and known._closed_local):
                unclosed.add(ref["id"])
                continue
            if known is None and cut_off:
                made = _made_by(ref, cut_off)
                if made is not None:
                    # Made as the link went by a call whose caller was told it failed:
                    # nobody holds it, and it would live until the session ends.
                    cut_off.remove(made)
                    orphans.append(ref["id"])
            self._resolve(ref, link=False)
        for ref in refs:
            if ref["id"] in unclosed and ref.get("parent") not in unclosed:
                # Closed here, alive there: its close() went with the link that dropped
                # (or waits in the held calls: a second close() is nothing). Asked again,
                # else it would live until the session ends; a child goes with it.
                close = p.make_call(None, ref["id"], "close", [], {})
                self._frames.send(p.encode_message(close, self._convert))
        for ref in refs:
            if isinstance(ref.get("parent"), str):
                child = self.proxies.get(ref["id"])
                parent = self.proxies.get(ref["parent"])
                if child is not None and parent is not None:
                    child._link(parent)
        if gone:  # closed on the server while we were away (parents first: they cascade)
            error = RemoteConnectionError("closed on the server while disconnected")
            for proxy in [self._drop(self.proxies[handle]) for handle in gone]:
                proxy._connection_lost(error)
        for handle in orphans:
            logger.info("closing %r, made by a call the drop cut off", self.proxies[handle])
            self.proxies[handle].close()
        self._reader = asyncio.get_running_loop().create_task(self._read(ws))

    def _closed_here(self, proxy: RemoteObject) -> None:
        """``proxy`` closed itself (close(), or its parent's): the server sends no more
        of its events (a worker's exit excepted), so it is dropped."""
        if isinstance(proxy, RemoteWorker) or self.closed:
            return
        self._drop(proxy)
        self._closed_lately[proxy.handle] = None
        if len(self._closed_lately) > _MAX_HELD:
            del self._closed_lately[next(iter(self._closed_lately))]

    def _drop(self, proxy: RemoteObject) -> RemoteObject:
        self.proxies.pop(proxy.handle, None)
        self._gone_proxies[proxy.handle] = proxy
        return proxy

    @property
    def usable(self) -> bool:
        """Whether calls can be sent now (not closed, not reconnecting)."""
        return not self.closed and not self.reconnecting

    def schema(self, class_name: str) -> dict[str, list[str]]:
        return self._schemas.get(class_name, _EMPTY_SCHEMA)

    # -- values ----------------------------------------------------------------------------

    @staticmethod
    def _convert(value: Any) -> Any:
        """``protocol.escape``'s hook: proxies become references; nothing else goes."""
        if isinstance(value, RemoteObject):
            return p.make_ref(value.proxy_kind, value.handle)
        raise TypeError(
            f"cannot send a value of type {type(value).__name__!r} to the remote server "
            "(only JSON values, bytes and proxies of the server's objects)"
        )

    def _decode_marker(self, marker: dict[str, Any]) -> Any:
        if "$ref" in marker and p.is_ref(marker):
            return self._resolve(self._with_state(marker))
        if "$bytes" in marker and p.is_bytes(marker):
            return p.decode_bytes(marker)
        died = _WORKER_DIED.fullmatch(marker["message"])
        if marker["$error"] == "WorkerDiedError" and died is not None:
            # A worker's 'died' argument, as the local one: its class, pid, code, signal.
            code, sig = (None if n == "None" else int(n) for n in died.group(2, 3))
            return WorkerDiedError(int(died[1]), code, sig)
        return error_from_wire(0, marker["message"], {"type": marker["$error"]})

    def _with_state(self, ref: dict[str, Any]) -> dict[str, Any]:
        """``ref`` with its state read from the wire (as it is when marked plain)."""
        state = ref.get("state")
        if not isinstance(state, dict) or ref.get("plain") is True:
            return ref
        return {**ref, "state": p.unescape(state, self._special)}

    def _resolve(self, ref: dict[str, Any], link: bool = True) -> Any:
        handle: str = ref["id"]
        proxy = self.proxies.get(handle)
        state = ref.get("state")
        if proxy is None and (self._dropped_here(handle) or ref.get("gone")):
            # Closed and dropped here (an event names it again, as a WebRtcServer's
            # 'webrtctransportunhandled' after its close): the app's proxy if it still
            # holds it, else a closed stand-in, kept nowhere.
            proxy = self._gone_proxies.get(handle)
            if proxy is None:
                proxy = proxy_class(ref["$ref"])(self, handle, {"closed": True})
            return proxy
        if proxy is None:
            proxy = proxy_class(ref["$ref"])(self, handle, state if isinstance(state, dict) else {})
            proxy._born = self._last_id
            self.proxies[handle] = proxy
            if self._closed_parent(ref.get("parent")):
                # Made under a parent closed here (a call that made it was answered as
                # its parent's close() went): the server closes it with that parent,
                # quietly. Closed here too, as those closed with it were; nobody can
                # listen to it yet, so its close events reach no one.
                proxy._close_locally(proxy.parent_close_event)
                return proxy
        elif isinstance(state, dict) and not proxy._closed_local:
            proxy._apply_state(state)
        if link:
            parent_handle = ref.get("parent")
            parent = self.proxies.get(parent_handle) if isinstance(parent_handle, str) else None
            if parent is not None and not proxy.closed:
                proxy._link(parent)
        return proxy

    def _closed_parent(self, handle: Any) -> bool:
        """Whether ``handle`` names a parent closed here (open ones stay in ``proxies``,
        closed ones there are closed, dropped ones were closed)."""
        if not isinstance(handle, str):
            return False
        parent = self.proxies.get(handle)
        if parent is not None:
            return parent.closed
        return self._dropped_here(handle)

    def _dropped_here(self, handle: str) -> bool:
        """Whether the proxy of ``handle`` was closed here and dropped."""
        return handle in self._gone_proxies or handle in self._closed_lately

    # -- calls -----------------------------------------------------------------------------

    def _message(
        self,
        request_id: int | None,
        target: RemoteObject | None,
        method: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
    ) -> bytes:
        message = p.make_call(
            request_id,
            None if target is None else target.handle,
            method,
            list(args),
            kwargs,
        )
        return p.encode_message(message, self._convert)

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
        if self.reconnecting:
            raise RemoteConnectionError("remote connection lost, reconnecting")
        request_id = self._last_id = self._last_id + 1
        data = self._message(request_id, target, method, args, kwargs)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (future, target, method)
        self._frames.send(data)
        limit = self.call_timeout
        try:
            if limit is None or method.startswith("wait_"):  # wait_closed(): held by design
                return await future
            try:
                async with asyncio.timeout(limit):
                    return await future
            except TimeoutError:
                raise ChannelTimeoutError(
                    f"remote call timeout [method:{method}]: no answer in {limit} s"
                ) from None
        finally:
            # Still pending: timed out or cancelled. Its answer, if the server ever sends
            # one, is late (see _on_response); the server is told, which ends a held call.
            if self._pending.pop(request_id, None) is not None:
                self._frames.send(p.dumps(p.request(None, "cancel", {"id": request_id})))

    def call_nowait(
        self,
        target: RemoteObject | None,
        method: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
    ) -> None:
        """Fire-and-forget call (a failure comes back as 'callerror'). While reconnecting
        it is held, and sent once the session is resumed (RemoteConnectionError past
        ``_MAX_HELD`` held calls)."""
        if self.closed:
            return
        data = self._message(None, target, method, args, kwargs)
        if self.reconnecting:
            if len(self._held) >= _MAX_HELD:
                raise RemoteConnectionError(
                    f"remote connection lost, reconnecting: {method}() not sent "
                    f"(at most {_MAX_HELD} calls are held for the resume)"
                )
            self._held.append(data)
            return
        self._frames.send(data)

    # -- I/O -------------------------------------------------------------------------------

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    messages = p.parse_server_frame(msg.data, self._special)
                except p.ProtocolError:
                    logger.warning("invalid message from the server dropped")
                    continue
                for message in messages:
                    try:
                        if isinstance(message, p.Response):
                            self._on_response(message)
                        elif isinstance(message, p.Notification):
                            self._on_notification(message)
                        else:
                            logger.warning("invalid message from the server dropped")
                    except Exception:
                        logger.exception("handling a server message failed")
        except (ConnectionError, aiohttp.ClientError, asyncio.CancelledError):
            pass
        finally:
            self._dropped(ws)

    def _on_response(self, response: p.Response) -> None:
        if not isinstance(response.id, int):
            if response.error is not None:
                logger.warning("server error: %s", response.error.get("message"))
            return
        entry = self._pending.pop(response.id, None)
        if entry is None or entry[0].done():
            self._close_unclaimed(response.result, response.id)
            return
        future, target, _ = entry
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
                self.root_state.update(state)
            elif not target._closed_local:
                target._apply_state(state)
        future.set_result(result.get("value"))

    def _close_unclaimed(self, value: Any, request_id: int) -> None:
        """A late answer (its call timed out, was cancelled here, or was cut off by a drop
        and answered on the resumed link): the objects it made are nobody's, and would
        live on the server until the session ends. They are those first seen after the
        call was sent, in this frame or in an earlier one (the 'newconsumer' event that
        tells of a consumer goes with the answer, but the server splits a burst of
        messages past 256 KiB into several frames); one known before the call is the
        app's. A pipe_to_router()'s pipe consumer and copy sit on the PipeTransport pair
        it may have made for them, which its answer does not name: see _close_new_pair."""
        made: list[RemoteObject] = []
        _unclaimed(value, request_id, made)
        for proxy in made:
            proxy.close()
        self._close_new_pair(made, request_id)

    def _close_new_pair(self, made: list[RemoteObject], request_id: int) -> None:
        """Close the pipe transports under ``made`` (a late answer's objects, closed) that
        were first seen after its call was sent: the pair its pipe_to_router() made, which
        would stay with its ports until either router closed (a router keeps its pair for
        its next pipe to the other). Left while anything else uses it (the server gives
        one pair to every pipe between two routers): another pipe on it, or a
        pipe_to_router() of either router still under way here (sent as the late answer
        came: nothing of it is seen yet)."""
        ends = {
            proxy.parent
            for proxy in made
            if isinstance(proxy.parent, RemoteTransport)
            and proxy.parent._state.get("type") == "pipe"
            and proxy.parent._born >= request_id
        }
        routers = {end.parent for end in ends}
        in_use = any(not child.closed for end in ends for child in end._children.values())
        piping = any(
            method == "pipe_to_router" and target in routers
            for _, target, method in self._pending.values()
        )
        if in_use or piping:
            return
        for end in ends:
            logger.info("closing %r, made for a pipe_to_router() nobody awaits", end)
            end.close()

    def _on_notification(self, message: p.Notification) -> None:
        params = message.params
        target = params.get("target")
        if message.method == "state":
            state = params.get("state")
            if not isinstance(state, dict):
                return
            if target is None:
                self.root_state.update(state)
            elif isinstance(target, str) and target in self.proxies:
                self.proxies[target]._apply_state(state)  # (a closed one stays closed)
            return
        if message.method == "error":
            self._on_call_error(params)
            return
        if message.method != "event":
            return
        if target is None:
            self._on_root_event(params)
            return
        if not isinstance(target, str):
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
        proxy._on_event(emitter, event, args)
        if event == "subprocessclose" and proxy.closed:
            # A worker's last word (after its close): nothing more comes for it. But for
            # a death's observer 'close', which follows it (mediasoup's order: 'died',
            # 'subprocessclose', 'close'), unless emitted here already (closed here).
            if proxy._closed_local or not proxy._state.get("died"):
                self._drop(proxy)
            return
        if event == "close" and emitter is proxy.observer and proxy.closed:
            proxy._forget()
            if not isinstance(proxy, RemoteWorker) or proxy._state.get("subprocess_closed"):
                self._drop(proxy)

    def _on_root_event(self, params: dict[str, Any]) -> None:
        event, args = params.get("event"), params.get("args", [])
        if not isinstance(event, str) or not isinstance(args, list):
            return
        state = params.get("state")
        if isinstance(state, dict):
            self.root_state.update(state)
        self.on_root_event(params.get("emitter") == "observer", event, args)

    def _on_call_error(self, params: dict[str, Any]) -> None:
        wire = params.get("error")
        if not isinstance(wire, dict):
            return
        error = error_from_wire(
            int(wire.get("code", 0)), str(wire.get("message", "")), wire.get("data")
        )
        target = params.get("target")
        proxy = self.proxies.get(target) if isinstance(target, str) else None
        method = str(params.get("method", ""))
        logger.warning(
            "%s.%s() failed on the server: %s: %s",
            "root" if proxy is None else type(proxy).__name__,
            method,
            type(error).__name__,
            error,
        )
        self.events.emit("callerror", proxy, method, error)

    # -- losing the connection -------------------------------------------------------------

    def _dropped(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """The reader of ``ws`` ended: reconnect, or close for good."""
        if self.closed or ws is not self._ws:
            return
        code = ws.close_code
        if (
            self._closing is not None
            or not self._reconnects
            or self.grace_period <= 0
            or code in _FINAL_CLOSE_CODES
        ):
            self._lost()
            return
        self.reconnecting = True
        self._cut_off = [
            (None if target is None else target.handle, _MAKES[method])
            for _, target, method in self._pending.values()
            if method in _MAKES
        ]
        self._fail_pending(RemoteConnectionError("remote connection lost, reconnecting"))
        logger.warning("connection to the server lost (code %s): reconnecting", code)
        self.events.emit("disconnect")
        self._reconnector = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            if await self._resume():
                return
        except asyncio.CancelledError:
            raise  # aclose(): it closes
        except Exception:
            logger.exception("reconnecting failed")
        self._lost()

    async def _resume(self) -> bool:
        """Reconnect and resume the session; False when the server is gone for good."""
        with contextlib.suppress(Exception):
            await self._ws.close()
        # Within the server's grace period (a margin kept for the hello's round trip).
        deadline = time.monotonic() + self.grace_period * 0.9
        delay = _FIRST_BACKOFF
        refused = 0
        while not self.closed and self._closing is None:
            try:
                # No attempt outlives the grace period (a partition: connect() hangs).
                async with asyncio.timeout(max(deadline - time.monotonic(), _FIRST_BACKOFF)):
                    ws, hello = await self._opener(self._http, self.session_id)
            except (RemoteError, p.ProtocolError) as error:  # answered: session gone...
                logger.warning("cannot resume the session: %s", error)
                return False
            except (OSError, aiohttp.ClientError, TimeoutError, RemoteConnectionError) as error:
                # Refused: nothing listens there any more (a restarted server would not
                # know the session either), unless it is a moment's hiccup.
                refused = refused + 1 if _refused(error) else 0
                if refused >= _MAX_REFUSED:
                    return False
            else:
                if self.closed or self._closing is not None:
                    await ws.close()
                    return True
                self.reconnecting = False
                self._attach(ws, hello)
                held, self._held = self._held, []
                for data in held:
                    self._frames.send(data)
                logger.info("reconnected to the server, session resumed")
                self.events.emit("reconnect")
                return True
            if time.monotonic() + delay > deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)
        return True  # closed meanwhile: nothing more to do

    def _fail_pending(self, error: Exception) -> None:
        pending = list(self._pending.values())
        self._pending.clear()
        for future, _, _ in pending:
            if not future.done():
                future.set_exception(error)

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.reconnecting = False
        self._held.clear()
        error = RemoteConnectionError("remote connection closed")
        self._fail_pending(error)
        proxies = list(self.proxies.values())
        for proxy in proxies:
            proxy._lost = not proxy.closed
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
        after its grace period when ``keep_session`` (to resume with ``session=``).

        The server is told with a bye whose answer is awaited: if the link drops before
        that answer (it was dead already, or while ``reconnecting``), a link resuming the
        session is opened just to say it again, so a reachable server never keeps the
        session for its grace period (the fire-and-forget calls held for the resume are
        not sent: the bye closes everything). All of it within ``close_timeout``
        seconds; past it the socket is dropped, as by ``abort()``."""
        if self._closing is None:
            bye: asyncio.Future[Any] | None = None
            if not self.closed and not self.reconnecting and not keep_session:
                bye = self._request_bye()
            tell = not self.closed and not keep_session
            self._closing = asyncio.get_running_loop().create_task(
                self._shutdown(bye=bye, tell=tell)
            )
        await asyncio.shield(self._closing)

    def _request_bye(self) -> asyncio.Future[Any]:
        """Send the bye as a request: its answer comes once the session closed."""
        request_id = self._last_id = self._last_id + 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (future, None, "bye")
        self._frames.send(p.dumps(p.request(request_id, "bye", {})))
        return future

    async def _say_bye(self, bye: asyncio.Future[Any] | None) -> None:
        """Until the server has ended the session: ``bye``'s answer, else (the link
        dropped before it, or was down) a bye over a link resumed for it."""
        if bye is not None:
            try:
                await bye
                return
            except RemoteConnectionError:
                # The link dropped first: the bye may never have gone. Unless the server
                # closed it on purpose (shutting down, the session taken over elsewhere).
                if self._ws.close_code in _FINAL_CLOSE_CODES:
                    return
        try:
            ws, _ = await self._opener(self._http, self.session_id)
        except (RemoteError, p.ProtocolError):
            return  # answered, refused: the session is gone already
        except (OSError, aiohttp.ClientError, RemoteConnectionError) as error:
            logger.warning("closing: the server cannot be told, it keeps the session: %s", error)
            return
        # The server reads it before the closing handshake, which it answers after.
        with contextlib.suppress(Exception):
            await ws.send_str(p.dumps(p.request(None, "bye", {})).decode())
        with contextlib.suppress(Exception):
            await ws.close()

    def abort(self) -> None:
        """Drop the connection now, without the closing handshake (for a server that is
        gone or does not answer, which ``aclose()`` would wait for): every proxy closes
        at once with its events, pending calls fail, the socket is released after."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._shutdown(False))
        self._lost()

    async def _shutdown(
        self,
        handshake: bool = True,
        bye: asyncio.Future[Any] | None = None,
        tell: bool = False,
    ) -> None:
        reconnector = self._reconnector
        if reconnector is not None and reconnector is not asyncio.current_task():
            reconnector.cancel()
            with contextlib.suppress(BaseException):
                await reconnector
        if handshake:
            try:
                async with asyncio.timeout(self.close_timeout):
                    if tell:
                        await self._say_bye(bye)
                    await self._frames.flush(2.0)
                    with contextlib.suppress(Exception):
                        await self._ws.close()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self._reader, 2.0)
            except TimeoutError:
                logger.warning("closing: no answer from the server in %s s", self.close_timeout)
                handshake = False
        if not handshake:
            self._reader.cancel()
            # No handshake: the socket closes now (aiohttp keeps the response private).
            self._ws._response.close()
        self._lost()
        await self._http.close()
        self._done.set()


def _unclaimed(value: Any, request_id: int, made: list[RemoteObject]) -> None:
    """Add to ``made`` the proxies in ``value`` (an answer to ``request_id``) first seen
    since that request was sent."""
    if isinstance(value, RemoteObject):
        if value._born >= request_id:
            made.append(value)
    elif isinstance(value, dict | list):
        for item in value.values() if isinstance(value, dict) else value:
            _unclaimed(item, request_id, made)


def _made_by(
    ref: dict[str, Any], cut_off: list[tuple[str | None, str]]
) -> tuple[str | None, str] | None:
    """The cut-off creation (target, class) that made ``ref`` (None: none of them)."""
    parent, cls = ref.get("parent"), ref.get("state", {}).get("class", "")
    for made in cut_off:
        if made[0] == parent and cls in (made[1], "Mafalda" + made[1]):
            return made
    return None


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

    def abort(self) -> None:
        """Drop the connection without waiting for the server (see ``Connection.abort``)."""
        self._connection.abort()

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
        adopt_app_data(worker, kwargs)
        self.observer.emit("newworker", worker)
        return worker

    async def __aenter__(self) -> RemoteMediasoup:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class RemoteMafalda(_Facade):
    """A Mafalda's API on a remote server: this client's routers live in its pool.

    ``events`` and ``observer`` emit the pool's events as a Mafalda's: 'workerdied' (the
    loss, with the ids of this client's objects only: another client's are not told)
    after the dead worker's objects here emitted their close events, 'workerreplaced',
    'newworker' and 'workerclose' with the worker as a dict of ``workers`` (which agrees
    when they are emitted), 'newrouter' and 'newwebrtcserver' for this client's own,
    'close' when the pool closes. Those that fire while the connection is down (within
    the grace period) are not told.
    """

    def __init__(self, connection: Connection) -> None:
        super().__init__(connection)
        self.events = EventEmitter()
        #: Routers and WebRtcServers whose 'newrouter' / 'newwebrtcserver' was emitted:
        #: told by the server's event (before the answer), else after the answer.
        self._announced: weakref.WeakSet[RemoteObject] = weakref.WeakSet()
        self._close_emitted = False
        connection.on_root_event = self._on_pool_event

    def _on_pool_event(self, observer: bool, event: str, args: list[Any]) -> None:
        emitter = self.observer if observer else self.events
        if event == "close":
            self._emit_close()
            return
        if event in ("newrouter", "newwebrtcserver"):
            self._announce(event, args[0])
            return
        emitter.emit(event, *args)

    def _announce(self, event: str, obj: RemoteObject) -> None:
        if obj not in self._announced:
            self._announced.add(obj)
            self.observer.emit(event, obj)

    def _emit_close(self) -> None:
        if not self._close_emitted:
            self._close_emitted = True
            self.observer.emit("close")

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
        adopt_app_data(router, kwargs)
        self._announce("newrouter", router)
        return router

    @property
    def webrtc_servers(self) -> list[RemoteWebRtcServer]:
        """This client's spanning WebRtcServers (``create_webrtc_server()``), as Mafalda's
        ``webrtc_servers``; its workers' ones (``create_webrtc_servers()``) are among
        ``objects``."""
        return [
            o
            for o in self.objects
            if isinstance(o, RemoteWebRtcServer) and o._state.get("class") == "MafaldaWebRtcServer"
        ]

    async def create_webrtc_server(
        self, *, listen_infos: list[Any], app_data: dict[str, Any] | None = None
    ) -> RemoteWebRtcServer:
        """As Mafalda's: a WebRtcServer whose transports are placed as any other, each on
        its worker's real one (a pool of several workers is given a portRange). The
        client's own, as its routers are."""
        server = await self._connection.call(
            None, "create_webrtc_server", (), {"listen_infos": listen_infos, "app_data": app_data}
        )
        assert isinstance(server, RemoteWebRtcServer)
        self._announce("newwebrtcserver", server)
        return server

    async def create_webrtc_servers(
        self, *, listen_infos: list[Any], app_data: dict[str, Any] | None = None
    ) -> dict[int, RemoteWebRtcServer]:
        """As Mafalda's: one WebRtcServer per current worker of the pool, by worker pid
        (ports must differ: a portRange, or port 0). They are this client's: closed with
        its session, unseen by other clients."""
        pairs = await self._connection.call(
            None,
            "create_webrtc_servers",
            (),
            {"listen_infos": listen_infos, "app_data": app_data},
        )
        servers: dict[int, RemoteWebRtcServer] = {}
        for pid, server in pairs:
            assert isinstance(server, RemoteWebRtcServer)
            servers[int(pid)] = server
        return servers

    def close(self) -> None:
        """Close this client's routers and WebRtcServers and the connection (the pool
        stays on the server)."""
        if self._connection.closed:
            return
        for router in self.routers:
            router.close()
        for obj in self.objects:  # what is left: its WebRtcServers, of both kinds
            obj.close()
        self._closing = asyncio.get_running_loop().create_task(self._connection.aclose())
        self._emit_close()

    async def __aenter__(self) -> RemoteMafalda:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def check_call_timeout(call_timeout: object) -> None:
    """ValueError unless ``call_timeout`` is a positive number of seconds or None."""
    if call_timeout is not None and not (
        isinstance(call_timeout, int | float) and 0 < call_timeout < float("inf")
    ):
        raise ValueError("call_timeout must be a positive number of seconds or None")


async def connect(
    url: str,
    *,
    token: str,
    session: str | None = None,
    ssl: ssl_module.SSLContext | None = None,
    timeout: float = 10.0,
    heartbeat: float | None = 20.0,
    max_message_size: int = 1 << 24,
    reconnect: bool = True,
    call_timeout: float | None = None,
) -> RemoteMediasoup | RemoteMafalda:
    """Connect to a server started by ``serve()`` / ``mafalda serve``.

    session: the ``session_id`` of a previous connection, to resume it (its objects come
    back as proxies in ``objects``). ssl: the context for a ``wss://`` server.
    reconnect: when the connection drops, reconnect and resume the session within the
    server's grace period (see ``Connection``); False: close at once.
    call_timeout: seconds a call waits for its answer before it fails with
    ``ChannelTimeoutError`` (a frozen server: the heartbeat would take ~1.5 heartbeats
    to notice); None (default): as long as the connection lives. The server's own
    worker requests time out after 15 s. ``wait_closed()`` is never timed out.
    """
    check_call_timeout(call_timeout)

    async def opener(
        http: aiohttp.ClientSession, session_id: str | None
    ) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
        ws = await http.ws_connect(
            url,
            ssl=ssl if ssl is not None else True,
            heartbeat=heartbeat,
            max_msg_size=max_message_size,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=timeout),
        )
        # aiohttp keeps the connection private; without it reads stay at asyncio's size.
        connection = getattr(getattr(ws, "_response", None), "connection", None)
        limit_read_size(getattr(connection, "transport", None))
        try:
            hello = {"version": p.PROTOCOL_VERSION, "token": token, "session": session_id}
            await ws.send_str(p.dumps(p.request(0, "hello", hello)).decode())
            msg = await ws.receive(timeout)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RemoteConnectionError("the server closed the connection during the hello")
            answer = p.parse_server_message(msg.data)
            if not isinstance(answer, p.Response):
                raise RemoteError("unexpected hello answer")
            if answer.error is not None:
                raise RemoteError(answer.error["message"], code=answer.error["code"])
            result = answer.result
            if not isinstance(result, dict) or not isinstance(result.get("session"), str):
                raise RemoteError("invalid hello answer")
        except BaseException:
            await ws.close()
            raise
        return ws, result

    http = aiohttp.ClientSession()
    try:
        ws, hello = await opener(http, session)
        try:
            connection = Connection(http, ws, hello, opener, reconnect=reconnect)
            connection.call_timeout = call_timeout
            connection.close_timeout = timeout
        except BaseException:  # a hello answer it cannot read: the socket goes too
            await ws.close()
            raise
    except BaseException:
        await http.close()
        raise
    if connection.serves == "mafalda":
        return RemoteMafalda(connection)
    return RemoteMediasoup(connection)
