"""A TCP relay in front of a server, to cause network faults for real: its connections
can be cut (both sockets aborted, as a network failure would), new ones held (accepted,
not relayed) until released, or refused."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


class Relay:
    """Listens on ``host``:``port`` (0: any free port; ``url`` names it) and relays each
    connection to ``upstream``:``upstream_port``."""

    def __init__(
        self,
        upstream_port: int,
        *,
        host: str = "127.0.0.1",
        upstream: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._host, self._port = host, port
        self._upstream, self._upstream_port = upstream, upstream_port
        self._open = asyncio.Event()
        self._open.set()
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""
        self.waiting = 0  # connections held now

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._relay, self._host, self._port)
        self.url = f"ws://{self._host}:{self._server.sockets[0].getsockname()[1]}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            self.waiting += 1
            try:
                await self._open.wait()
            finally:
                self.waiting -= 1
            up_reader, up_writer = await asyncio.open_connection(
                self._upstream, self._upstream_port
            )
            self._pairs.append((writer, up_writer))

            async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
                with contextlib.suppress(ConnectionError, OSError):
                    while data := await source.read(65536):
                        sink.write(data)
                        await sink.drain()
                sink.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            writer.close()
            self._tasks.discard(task)

    def hold(self) -> None:
        """Relay no new connection until release() (they wait, accepted)."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def refuse(self) -> None:
        """Accept no new connection (a client's tries to resume fail)."""
        assert self._server is not None
        self._server.close()

    async def accept(self) -> None:
        """Accept new connections again after refuse() (on the port given: not port 0)."""
        self._server = await asyncio.start_server(self._relay, self._host, self._port)

    def cut(self) -> None:
        for a, b in self._pairs:
            a.transport.abort()
            b.transport.abort()
        self._pairs.clear()
