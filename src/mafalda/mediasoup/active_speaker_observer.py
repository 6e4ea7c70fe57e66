"""ActiveSpeakerObserver: tells which audio Producer is the dominant speaker.

Port of mediasoup's ``ActiveSpeakerObserver.js`` / ``ActiveSpeakerObserverTypes.d.ts``
(created by ``Router.create_active_speaker_observer()``).

Events, besides RtpObserver's: ``dominantspeaker`` ``({'producer': Producer})``, emitted
on ``events`` and on ``observer`` (where RtpObserver's observer events also come).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup.rtp_observer import RtpObserver

if TYPE_CHECKING:
    from mafalda.mediasoup.producer import Producer

__all__ = ["ActiveSpeakerObserver", "ActiveSpeakerObserverDominantSpeaker"]

logger = logging.getLogger("mafalda.mediasoup.active_speaker_observer")


class ActiveSpeakerObserverDominantSpeaker(TypedDict):
    producer: Producer


class ActiveSpeakerObserver(RtpObserver):
    """Emits ``dominantspeaker`` when the dominant speaker changes."""

    @property
    def type(self) -> Literal["activespeaker"]:
        return "activespeaker"

    def _on_notification(self, event: int, body: Any) -> None:
        if event == Event.ACTIVESPEAKEROBSERVER_DOMINANT_SPEAKER:
            producer = self._get_producer_by_id(body.producerId)
            if producer is None:
                return
            dominant_speaker: ActiveSpeakerObserverDominantSpeaker = {"producer": producer}
            self.events.emit("dominantspeaker", dominant_speaker)
            self.observer.emit("dominantspeaker", dominant_speaker)
        else:
            logger.error('ignoring unknown event "%s"', event)
