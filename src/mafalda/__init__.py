"""Mafalda SFU for Python.

Layers, each with mediasoup's API:

- :mod:`mafalda.mediasoup`: mediasoup's server API driving mediasoup-worker directly.
- :mod:`mafalda.vertical`: :class:`Mafalda`, Routers spanning every CPU core.
"""

from mafalda.vertical import Mafalda, MafaldaRouter

__all__ = ["Mafalda", "MafaldaRouter"]
