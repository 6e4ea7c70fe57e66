"""Ordered text frames on an aiohttp WebSocket (client or server side), batched per turn of
the event loop and written at once.

``send_str`` is a coroutine: sending from synchronous code (events, fire-and-forget
calls) needs a task, and a queue drained by a writer task keeps frames in order but costs
a task switch per message. ``FrameSender`` gathers the messages of one turn of the event
loop (the answers to a burst of requests, an event and the answer that caused it) into
one frame, a JSON array when there are several (one send() system call, one frame to
parse), and writes it through aiohttp's frame writer right away: an uncompressed frame
goes to the transport before ``send_frame`` first yields. While the transport pushes
back, or when that writer is not available, frames wait for ``send_frame`` (which awaits
the transport's drain), in order, up to ``max_backlog`` bytes: past it the sender breaks
and ``on_overflow`` is called (a peer that reads nothing would otherwise make its
writer hold every answer and event it is due, without bound).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType, web

__all__ = ["FrameSender"]

_ERRORS = (ConnectionError, RuntimeError)


class FrameSender:
    def __init__(
        self,
        ws: ClientWebSocketResponse | web.WebSocketResponse,
        batch_limit: int = 256 * 1024,
        max_backlog: int | None = None,
        on_overflow: Callable[[int], None] = lambda waiting: None,
    ) -> None:
        self._ws = ws
        self._batch_limit = batch_limit
        self._max_backlog = max_backlog
        #: Called with the bytes waiting once they pass ``max_backlog`` (the sender broken).
        self._on_overflow = on_overflow
        self._batch: list[bytes] = []
        self._batch_size = 0
        self._scheduled = False
        self._backlog: collections.deque[bytes] = collections.deque()
        #: Bytes waiting in ``_backlog`` (the peer or the network not taking them).
        self.backlog_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self.broken = False

    def send(self, data: bytes) -> None:
        """Send ``data`` (one UTF-8 JSON message) after every message sent before, in this
        turn of the event loop's frame."""
        if self.broken:
            return
        if self._batch and self._batch_size + len(data) > self._batch_limit:
            self._flush()
        self._batch.append(data)
        self._batch_size += len(data)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._on_turn)

    def end_frame(self) -> None:
        """Send what this turn batched as its own frame: what is sent next goes after it,
        in another (a message read alone, as a hello answer, must not be in a batch)."""
        self._flush()

    def _on_turn(self) -> None:
        self._scheduled = False
        self._flush()

    def _flush(self) -> None:
        batch = self._batch
        if not batch:
            return
        self._batch = []
        self._batch_size = 0
        self._write(batch[0] if len(batch) == 1 else b"[" + b",".join(batch) + b"]")

    def _direct(self) -> Any:
        """aiohttp's frame writer when a frame may go straight to the transport."""
        writer: Any = getattr(self._ws, "_writer", None)
        if writer is None or getattr(writer, "compress", None) != 0:
            return None
        if getattr(getattr(writer, "protocol", None), "_paused", True):
            return None  # the transport pushes back: send_frame() waits for its drain
        return getattr(writer, "_write_websocket_frame", None)

    def _write(self, data: bytes) -> None:
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
        self.backlog_bytes += len(data)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())
        elif self._max_backlog is not None and self.backlog_bytes > self._max_backlog:
            # What waits is freed by the draining task, whose write fails once the
            # owner (on_overflow) has dropped the socket.
            self.broken = True
            self._on_overflow(self.backlog_bytes)

    async def _drain(self) -> None:
        try:
            while self._backlog:
                await self._ws.send_frame(self._backlog[0], WSMsgType.TEXT)
                self.backlog_bytes -= len(self._backlog.popleft())
        except _ERRORS:
            self.broken = True
            self._backlog.clear()
            self.backlog_bytes = 0
        finally:
            self._task = None

    async def drained(self, limit: int) -> None:
        """Until at most ``limit`` bytes wait for the peer (or the sender is broken): a
        reader waiting for this before taking more requests pushes back on a peer that
        sends without reading what it asked for."""
        while not self.broken:
            self._flush()  # this turn's messages count too
            task = self._task
            if self.backlog_bytes <= limit or task is None:
                return
            await asyncio.shield(task)

    async def flush(self, timeout: float) -> None:
        """Until every message sent is written (or ``timeout`` seconds)."""
        self._flush()
        task = self._task
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout)
