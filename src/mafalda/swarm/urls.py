"""Servers' URLs in a swarm: a server is known by its control URL (ws:// or wss://),
and its HTTP routes are on the same port."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["GOSSIP_ROUTE", "check_seeds", "check_url", "route_url"]

GOSSIP_ROUTE = "swarm"


def check_url(url: object, what: str) -> str:
    """``url`` when it is a server's ws:// or wss:// URL (ValueError naming ``what``)."""
    if not isinstance(url, str):
        raise TypeError(f"{what} must be a ws:// or wss:// URL string")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"{what} {url!r} is not a URL") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"{what} {url!r} is not a ws:// or wss:// URL")
    return url


def check_seeds(seeds: Iterable[str], *, required: bool) -> list[str]:
    """The seed URLs in ``seeds`` (a list of them, at least one when ``required``):
    TypeError or ValueError naming what is wrong."""
    if isinstance(seeds, str):
        raise TypeError("seeds must be a list of URLs, not one string")
    urls = [check_url(seed, "seed") for seed in seeds]
    if required and not urls:
        raise ValueError("seeds must name at least one server of the swarm")
    return urls


def route_url(url: str, route: str = GOSSIP_ROUTE) -> str:
    """A route (the gossip's by default) of the server at ``url`` (its control URL)."""
    parts = urlsplit(url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}/{route}"
