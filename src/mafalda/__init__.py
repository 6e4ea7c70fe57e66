"""Mafalda SFU for Python.

Layers, each with mediasoup's API:

- :mod:`mafalda.mediasoup`: mediasoup's server API driving mediasoup-worker directly.
"""
