"""Mafalda (vertical scaling): Routers that span every CPU core, with mediasoup's API.

    from mafalda import Mafalda

    async with await Mafalda.start() as mafalda:
        router = await mafalda.create_router(media_codecs=[...])
        # from here on, exactly as a mafalda.mediasoup Router

Moving from mafalda.mediasoup is one line: ``router = await worker.create_router(...)``
becomes ``router = await mafalda.create_router(...)``.
"""

from mafalda.vertical.mafalda import Mafalda, MafaldaStats, WorkerLoss, WorkerStats
from mafalda.vertical.policy import (
    GROW,
    ConcentratePolicy,
    Limits,
    PlacementPolicy,
    SpreadPolicy,
    WorkerLoad,
)
from mafalda.vertical.router import MafaldaRouter
from mafalda.vertical.webrtc_server import MafaldaWebRtcServer

__all__ = [
    "GROW",
    "ConcentratePolicy",
    "Limits",
    "Mafalda",
    "MafaldaRouter",
    "MafaldaStats",
    "MafaldaWebRtcServer",
    "PlacementPolicy",
    "SpreadPolicy",
    "WorkerLoad",
    "WorkerLoss",
    "WorkerStats",
]
