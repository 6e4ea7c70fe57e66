"""Ordered text frames on an aiohttp WebSocket (client or server side), written at once.

``send_str`` is a coroutine: sending from synchronous code (events, fire-and-forget
calls) needs a task, and a queue drained by a writer task keeps frames in order but costs
a task switch per message. An uncompressed frame is written to the transport before
``send_frame`` first yields, so ``FrameSender`` writes it right away through aiohttp's
frame writer, and falls back to ``send_frame`` (awaiting the transport's drain, in order)
while the transport pushes back or when that writer is not available.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType, web

__all__ = ["FrameSender"]

_ERRORS = (ConnectionError, RuntimeError)


class FrameSender:
    def __init__(self, ws: ClientWebSocketResponse | web.WebSocketResponse) -> None:
        self._ws = ws
        self._backlog: collections.deque[bytes] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self.broken = False

    def _direct(self) -> Any:
        """aiohttp's frame writer when a frame may go straight to the transport."""
        writer: Any = getattr(self._ws, "_writer", None)
        if writer is None or getattr(writer, "compress", None) != 0:
            return None
        protocol = getattr(writer, "protocol", None)
        if protocol is None or getattr(protocol, "_paused", True):
            return None
        return getattr(writer, "_write_websocket_frame", None)

    def send(self, data: bytes) -> None:
        """Queue ``data`` (UTF-8 JSON) as a text frame after every frame sent before."""
        if self.broken:
            return
        if not self._backlog:
            write = self._direct()
            if write is not None:
                try:
                    write(data, WSMsgType.TEXT, 0)
                except _ERRORS:
                    self.broken = True
                return
        self._backlog.append(data)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._backlog:
                await self._ws.send_frame(self._backlog[0], WSMsgType.TEXT)
                self._backlog.popleft()
        except _ERRORS:
            self.broken = True
            self._backlog.clear()
        finally:
            self._task = None

    async def flush(self, timeout: float) -> None:
        """Until every queued frame is written (or ``timeout`` seconds)."""
        task = self._task
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout)
