"""A WebSocket endpoint on a free loopback port, for tests that need a hand-written peer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web


async def start_ws_peer(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> tuple[web.AppRunner, str]:
    """Serve ``handler`` at ``/`` on 127.0.0.1 (any free port): the runner (to clean up)
    and the ws:// URL."""
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    return runner, f"ws://127.0.0.1:{port}/"
