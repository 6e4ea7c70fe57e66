"""RtpObserver: the base of ActiveSpeakerObserver and AudioLevelObserver.

Port of mediasoup's ``RtpObserver.js`` / ``RtpObserverTypes.d.ts``. An RTP observer
watches the audio of the producers added to it; a Router creates it.

Events (on ``events``, also through ``on``/``once``/``off``):

- ``routerclose``: the router was closed.
- ``@close`` (private): closed by the app; its router forgets it.

Observer events (on ``observer``): ``close``, ``pause``, ``resume``,
``addproducer`` ``(producer)``, ``removeproducer`` ``(producer)``, plus those of each
subclass.
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Literal

from mafalda.mediasoup._fbs.Request.Method import Method
from mafalda.mediasoup._fbs.Router.CloseRtpObserverRequest import CloseRtpObserverRequestT
from mafalda.mediasoup._fbs.RtpObserver.AddProducerRequest import AddProducerRequestT
from mafalda.mediasoup._fbs.RtpObserver.RemoveProducerRequest import RemoveProducerRequestT
from mafalda.mediasoup.channel import Channel
from mafalda.mediasoup.emitter import EventEmitter, EventSource
from mafalda.mediasoup.errors import InvalidStateError, InvalidValueError

if TYPE_CHECKING:
    from mafalda.mediasoup.producer import Producer

__all__ = ["GetProducerById", "RtpObserver", "RtpObserverType"]

logger = logging.getLogger("mafalda.mediasoup.rtp_observer")

RtpObserverType = Literal["audiolevel", "activespeaker"]

#: How an RtpObserver finds the Producer instance of an id (the Router's).
GetProducerById = Callable[[str], "Producer | None"]


class RtpObserver(EventSource, abc.ABC):
    """Common part of the RTP observers. Created by the Router."""

    def __init__(
        self,
        *,
        router_id: str,
        rtp_observer_id: str,
        channel: Channel,
        app_data: dict[str, Any] | None,
        get_producer_by_id: GetProducerById,
    ) -> None:
        logger.debug("constructor()")
        self._router_id = router_id
        self._id = rtp_observer_id
        self._channel = channel
        self._closed = False
        self._paused = False
        self._get_producer_by_id = get_producer_by_id
        #: Entered with the producer id around add_producer() (Mafalda pipes a producer
        #: of another worker into this observer's router there).
        self.add_producer_guard: Callable[[str], AbstractAsyncContextManager[None]] | None = None
        self.app_data: dict[str, Any] = app_data if app_data is not None else {}
        self.events = EventEmitter()
        self.observer = EventEmitter()
        self._channel.subscribe(self._id, self._on_notification)

    # -- properties ---------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    @abc.abstractmethod
    def type(self) -> RtpObserverType:
        """'activespeaker' or 'audiolevel'."""

    @property
    def paused(self) -> bool:
        return self._paused

    # -- events -------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self._id} closed={self._closed} paused={self._paused}>"

    @abc.abstractmethod
    def _on_notification(self, event: int, body: Any) -> None:
        """Handle a worker notification for this observer."""

    # -- lifecycle ----------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        logger.debug("close()")
        self._closed = True
        self._channel.unsubscribe(self._id)
        self._channel.request_nowait(
            Method.ROUTER_CLOSE_RTPOBSERVER,
            self._router_id,
            CloseRtpObserverRequestT(rtpObserverId=self._id),
        )
        self.events.emit("@close")
        self.observer.emit("close")

    def router_closed(self) -> None:
        """The router was closed (called by the Router)."""
        if self._closed:
            return
        logger.debug("router_closed()")
        self._closed = True
        self._channel.unsubscribe(self._id)
        self.events.emit("routerclose")
        self.observer.emit("close")

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidStateError(f"{type(self).__name__} closed")

    # -- requests -----------------------------------------------------------------

    async def pause(self) -> None:
        logger.debug("pause()")
        self._check_open()
        was_paused = self._paused
        await self._channel.request(Method.RTPOBSERVER_PAUSE, self._id)
        self._paused = True
        if not was_paused:
            self.observer.emit("pause")

    async def resume(self) -> None:
        logger.debug("resume()")
        self._check_open()
        was_paused = self._paused
        await self._channel.request(Method.RTPOBSERVER_RESUME, self._id)
        self._paused = False
        if was_paused:
            self.observer.emit("resume")

    def _producer(self, producer_id: Any) -> Producer:
        if not isinstance(producer_id, str):
            raise TypeError("producer_id must be a string")
        producer = self._get_producer_by_id(producer_id)
        if producer is None:
            raise InvalidValueError(f'Producer with id "{producer_id}" not found')
        return producer

    async def add_producer(self, *, producer_id: str) -> None:
        """Watch the audio Producer ``producer_id`` (of this observer's router)."""
        logger.debug("add_producer()")
        self._check_open()
        if self.add_producer_guard is not None and isinstance(producer_id, str):
            guard: AbstractAsyncContextManager[None] = self.add_producer_guard(producer_id)
        else:
            guard = contextlib.nullcontext()
        async with guard:
            self._check_open()
            producer = self._producer(producer_id)
            await self._channel.request(
                Method.RTPOBSERVER_ADD_PRODUCER,
                self._id,
                AddProducerRequestT(producerId=producer.id),
            )
            # Inside the guard: whoever provided the producer sees it in use before
            # the guard ends.
            self.observer.emit("addproducer", producer)

    async def remove_producer(self, *, producer_id: str) -> None:
        """Stop watching the Producer ``producer_id``."""
        logger.debug("remove_producer()")
        self._check_open()
        producer = self._producer(producer_id)
        await self._channel.request(
            Method.RTPOBSERVER_REMOVE_PRODUCER,
            self._id,
            RemoveProducerRequestT(producerId=producer.id),
        )
        self.observer.emit("removeproducer", producer)
