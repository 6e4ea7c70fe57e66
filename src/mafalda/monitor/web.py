"""The Monitor's live page: ``mafalda monitor REDIS_URL --web`` (aiohttp).

    GET /         the page (no build step, no external files): servers, workers with
                  their CPU and counts, a map of the links, refreshed by /events;
                  the page keeps the last 10 minutes of each server's load and
                  clients and each worker's CPU (sparklines; ``/?points=N``: N views)
    GET /view     the ClusterView now, as JSON
    GET /events   Server-Sent Events: one ``view`` event per interval
    GET /metrics  the ClusterView now, as Prometheus metrics (``metrics.render_metrics``)

Every client of /events shares one reader of Redis (the latest view is fanned out), so
a wall of screens costs Redis what one does.

The page shows the cluster's addresses, clients and loads: with a ``password`` every
route asks for it (HTTP Basic, which browsers prompt for and send again on the page's
own requests, any user name; or ``Authorization: Bearer PASSWORD`` for scripts), and a
page on an address other machines can reach is refused without one. ``ssl`` serves it
over HTTPS.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import ssl as ssl_module
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler
from redis.exceptions import RedisError

from mafalda.monitor.metrics import render_metrics
from mafalda.monitor.view import ClusterView

__all__ = ["MonitorWeb", "PAGE", "ViewSource", "check_page_options", "password_of"]

logger = logging.getLogger("mafalda.monitor.web")

PAGE = Path(__file__).with_name("page.html")


class ViewSource(Protocol):
    """A cluster's ``Monitor``, or one process's ``LocalMonitor``."""

    async def view(self) -> ClusterView: ...

    def views(self) -> AsyncIterator[ClusterView]: ...


REALM = 'Basic realm="Mafalda monitor", charset="UTF-8"'


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (an address, or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve to any interface
        return False


def check_page_options(host: str, password: str | None) -> None:
    """ValueError naming what is wrong with a page's ``host`` and ``password``."""
    if password is not None and (not isinstance(password, str) or not password):
        raise ValueError("the monitor page's password must be a non-empty string")
    if password is None and not is_loopback(host):
        raise ValueError(
            f"the monitor page on {host} could be read from other machines: give it a "
            "password (password=, --web-password / --monitor-password, or "
            "MAFALDA_MONITOR_PASSWORD) or serve it on 127.0.0.1"
        )


def password_of(header: str) -> str | None:
    """The password an ``Authorization`` header carries (Basic: any user; Bearer)."""
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip()
    if scheme != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    _user, colon, password = decoded.partition(":")
    return password if colon else None


class MonitorWeb:
    """Serves ``monitor``'s views over HTTP; ``start()`` binds, ``aclose()`` stops."""

    def __init__(
        self,
        monitor: ViewSource,
        *,
        host: str = "127.0.0.1",
        port: int = 8090,
        password: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        """password: asked for on every route (required unless ``host`` is a loopback
        address). ssl: serve HTTPS with this context (its certificate chain loaded)."""
        check_page_options(host, password)
        self.monitor = monitor
        self.host = host
        self.port = port
        self._password = password.encode() if password is not None else None
        self._ssl = ssl
        self.latest: ClusterView | None = None
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._closed = False
        self.app = web.Application(middlewares=[self._authorize])
        self.app.router.add_get("/", self._page)
        self.app.router.add_get("/view", self._view)
        self.app.router.add_get("/events", self._events)
        self.app.router.add_get("/metrics", self._metrics)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{host}:{self.port}/"

    @web.middleware
    async def _authorize(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._password is not None:
            given = password_of(request.headers.get("Authorization", ""))
            # Constant time: how long a refusal takes tells nothing of the password.
            if given is None or not hmac.compare_digest(given.encode(), self._password):
                return web.Response(
                    status=401, text="password required", headers={"WWW-Authenticate": REALM}
                )
        return await handler(request)

    async def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read())
        # A short shutdown: /events streams never end by themselves.
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._ssl)
        try:
            await site.start()
        except BaseException:
            await self.aclose()
            raise
        self.port = int(self._runner.addresses[0][1])  # the one bound (port 0: any)

    async def _read(self) -> None:
        async for view in self.monitor.views():
            # Checked as well as cancelled: on Python 3.11, redis-py's asyncio.wait_for()
            # may swallow a cancellation that lands as a command completes.
            if self._closed:
                break
            async with self._changed:
                self.latest = view
                self._changed.notify_all()

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(), content_type="text/html")

    async def _view(self, request: web.Request) -> web.Response:
        try:
            view = await self.monitor.view()  # now, not the last pushed
        except (RedisError, OSError) as error:
            return _unavailable(error)
        return web.json_response(view)

    async def _metrics(self, request: web.Request) -> web.Response:
        # A failed read is a 503, not stale figures: Prometheus marks the target down.
        # (The try is in each handler, not in a shared coroutine, for a reason of
        # measure only: see "Coverage" in the README.)
        try:
            view = await self.monitor.view()
        except (RedisError, OSError) as error:
            return _unavailable(error)
        body, content_type = render_metrics(view, request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        sent: ClusterView | None = None
        while True:
            async with self._changed:
                while self.latest is sent:
                    await self._changed.wait()
                sent = self.latest
            data = json.dumps(sent, separators=(",", ":"))
            try:
                await response.write(f"event: view\ndata: {data}\n\n".encode())
            except (ConnectionError, RuntimeError):  # the page went away
                return response

    async def aclose(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> MonitorWeb:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _unavailable(error: Exception) -> web.Response:
    """The 503 of a view that cannot be read, saying why."""
    if isinstance(error, RedisError):
        return web.Response(status=503, text=f"cannot read the cluster's Redis: {error}")
    return web.Response(status=503, text=f"cannot read the cluster: {error}")  # a swarm's
