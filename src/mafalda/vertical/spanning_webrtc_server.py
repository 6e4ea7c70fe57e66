"""SpanningWebRtcServer: one WebRtcServer for the WebRtcTransports of spanning routers.

A WebRtcServer and its transports share a worker, and a spanning router (a MafaldaRouter
or a ClusterRouter) places each transport on a host (a worker of the pool, a media
server) of its own choosing. So the spanning WebRtcServer is made on a host only when
the first transport placed there needs it, and shared by the later ones there (two at
once share one making: a second would take the same ports). One that closes (its host
gone) is forgotten and made again by the next transport there. Subclasses say how a
host's real WebRtcServer is made and what a host is called in a dump.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from abc import ABC, abstractmethod
from collections.abc import Hashable
from typing import Any, ClassVar, Generic, TypeVar

from mafalda.mediasoup.emitter import EventEmitter, EventSource
from mafalda.mediasoup.errors import InvalidStateError, InvalidValueError
from mafalda.mediasoup.worker import validate_app_data
from mafalda.vertical.spanning import made_once

H = TypeVar("H", bound=Hashable)


class SpanningWebRtcServer(EventSource, ABC, Generic[H]):
    """Events: ``workerclose`` (what it spans closed: the pool, the cluster client; and
    the private ``@close``). Observer events: ``close``."""

    #: The app_data key of the real WebRtcServers that names the spanning one.
    app_data_key: ClassVar[str]
    #: What it spans, as errors name it ("Mafalda", "cluster").
    spans: ClassVar[str]

    def __init__(self, *, listen_infos: list[Any], app_data: dict[str, Any] | None) -> None:
        """``listen_infos`` validated by the subclass (before anything is made)."""
        validate_app_data(app_data)
        self._id = str(uuid.uuid4())
        # A copy: what the caller changes afterwards must not reach later makings.
        self._listen_infos: list[Any] = copy.deepcopy(listen_infos)
        self.app_data: dict[str, Any] = app_data if app_data is not None else {}
        self._closed = False
        self._made: dict[H, Any] = {}
        self._making: dict[H, asyncio.Future[Any]] = {}
        self.events = EventEmitter()
        self.observer = EventEmitter()

    @property
    def id(self) -> str:
        return self._id

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidStateError("WebRtcServer closed")

    def _check_usable_by(self, owner: object) -> None:
        """Before a router of ``owner`` makes anything with it: InvalidValueError when it
        spans another pool or cluster, InvalidStateError once closed."""
        if owner is not self._owner():
            raise InvalidValueError(f"webrtc_server belongs to another {self.spans}")
        self._check_open()

    @abstractmethod
    def _owner(self) -> object:
        """What it spans (the Mafalda, the cluster client)."""

    @abstractmethod
    def _name(self, host: H) -> str:
        """What ``host`` is called in a dump."""

    @abstractmethod
    async def _make(self, host: H) -> Any:
        """A real WebRtcServer on ``host`` (its app_data ``_real_app_data()``)."""

    def _real_app_data(self) -> dict[str, Any]:
        return {self.app_data_key: self._id}

    async def dump(self) -> dict[str, Any]:
        """Each real WebRtcServer's dump, by the name of its host."""
        self._check_open()
        made = list(self._made.items())
        dumps = await asyncio.gather(*(real.dump() for _, real in made))
        return {self._name(host): dump for (host, _), dump in zip(made, dumps, strict=True)}

    # -- the real ones -------------------------------------------------------------------

    async def on_host(self, host: H) -> Any:
        """The real WebRtcServer on ``host``, made by the first to ask (whoever asks
        meanwhile waits for that one)."""
        self._check_open()
        real = self._made.get(host)
        if real is not None and not real.closed:
            return real
        return await made_once(self._making, host, self._make_on)

    async def _make_on(self, host: H) -> Any:
        real = await self._make(host)
        if self._closed:  # closed while it was being made: nobody else would close it
            real.close()
            raise InvalidStateError("WebRtcServer closed")
        if real.closed:
            raise InvalidStateError("WebRtcServer closed with its worker")
        self._made[host] = real
        real.observer.on("close", lambda: self._forget(host, real))
        self._adopted(real)
        return real

    def _adopted(self, real: Any) -> None:
        """A real WebRtcServer was made (a subclass may follow its events)."""

    def _forget(self, host: H, real: Any) -> None:
        if self._made.get(host) is real:
            del self._made[host]

    # -- closing -------------------------------------------------------------------------

    def unfinished_tasks(self) -> list[asyncio.Future[Any]]:
        """The makings of real WebRtcServers under way (once it is closed, each closes
        what it makes): for its owner to await."""
        return [f for f in self._making.values() if not f.done()]

    def _close_made(self) -> None:
        self._closed = True
        made = list(self._made.values())
        self._made.clear()
        for real in made:
            real.close()  # its transports close: 'listenserverclose'

    def close(self) -> None:
        """Close every real WebRtcServer: the transports using them close with
        'listenserverclose'. One being made is closed when it arrives."""
        if self._closed:
            return
        self._close_made()
        self.events.emit("@close")
        self.observer.emit("close")

    def _spanned_closed(self) -> None:
        """What it spans closed (mediasoup's worker_closed())."""
        if self._closed:
            return
        self._close_made()
        self.events.emit("workerclose")
        self.observer.emit("close")
