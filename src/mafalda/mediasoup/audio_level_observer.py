"""AudioLevelObserver: reports the loudest audio Producers periodically.

Port of mediasoup's ``AudioLevelObserver.js`` / ``AudioLevelObserverTypes.d.ts``
(created by ``Router.create_audio_level_observer()``).

Events, besides RtpObserver's, emitted on ``events`` and on ``observer``:

- ``volumes`` ``(volumes: list[{'producer': Producer, 'volume': int}])``: every
  ``interval`` ms, at most ``max_entries`` producers louder than ``threshold``, loudest
  first; ``volume`` is the average in dBvo (-127..0). Entries whose Producer is gone
  (closed meanwhile) are left out, and nothing is emitted if none remains.
- ``silence``: no producer above the threshold during the last interval.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup.rtp_observer import RtpObserver

if TYPE_CHECKING:
    from mafalda.mediasoup.producer import Producer

__all__ = ["AudioLevelObserver", "AudioLevelObserverVolume"]

logger = logging.getLogger("mafalda.mediasoup.audio_level_observer")


class AudioLevelObserverVolume(TypedDict):
    producer: Producer
    #: Average volume in dBvo, from -127 to 0 (an integer on the wire).
    volume: float


class AudioLevelObserver(RtpObserver):
    """Emits ``volumes`` and ``silence``."""

    @property
    def type(self) -> Literal["audiolevel"]:
        return "audiolevel"

    def _on_notification(self, event: int, body: Any) -> None:
        if event == Event.AUDIOLEVELOBSERVER_VOLUMES:
            volumes: list[AudioLevelObserverVolume] = []
            for entry in body.volumes or ():
                producer = self._get_producer_by_id(entry.producerId)
                if producer is not None:
                    volumes.append({"producer": producer, "volume": entry.volume})
            if volumes:
                self.events.emit("volumes", volumes)
                self.observer.emit("volumes", volumes)
        elif event == Event.AUDIOLEVELOBSERVER_SILENCE:
            self.events.emit("silence")
            self.observer.emit("silence")
        else:
            logger.error('ignoring unknown event "%s"', event)
