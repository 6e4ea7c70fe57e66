"""The cluster's registry in Redis: key schema, server records, membership messages.

Pure functions (no I/O), so the schema is testable without Redis.

Keys (``prefix`` defaults to ``"mafalda"``; one prefix is one cluster):

- ``{prefix}:server:{id}``: a string key holding the server's record as JSON, written
  with ``SET ... PX ttl`` at every heartbeat: a server that stops heart-beating
  disappears when its TTL runs out.
- ``{prefix}:membership``: the pub/sub channel on which servers announce ``join``,
  ``update`` (drain started) and ``leave``; messages are JSON
  ``{"event": ..., "id": ...}``. A leave is believed only while no record is under its
  id: a server restarted with the same id may have registered since (the leave, late,
  is the previous run's).
"""

from __future__ import annotations

import json
from typing import Any, Literal, NotRequired, TypedDict, TypeGuard

__all__ = [
    "DEFAULT_PREFIX",
    "MembershipEvent",
    "MembershipMessage",
    "ServerRecord",
    "check_record",
    "decode_membership",
    "decode_record",
    "encode_membership",
    "encode_record",
    "is_server_id",
    "json_object",
    "membership_channel",
    "server_id_from_key",
    "server_key",
    "server_pattern",
]

DEFAULT_PREFIX = "mafalda"

MembershipEvent = Literal["join", "update", "leave"]
_EVENTS: tuple[str, ...] = ("join", "update", "leave")


class ServerRecord(TypedDict):
    """What a media server publishes about itself."""

    id: str
    controlUrl: str  # the mafalda.remote URL (ws:// or wss://)
    mediaAddress: str  # the IP peers and pipes send media to
    region: str | None
    workers: int  # live mediasoup workers on the server
    load: float  # workers per CPU core
    consumers: int
    draining: bool  # True: take no new placements
    version: str  # the mafalda.remote protocol version it speaks
    serves: Literal["mediasoup", "mafalda"]  # workers for clients, or a Mafalda pool
    #: Seconds between its heartbeats (a MediaNode's; records of older servers, and a
    #: swarm's, have none): after a Redis restart, its record is back within that.
    heartbeat: NotRequired[float]
    #: Which run of the server under this id wrote it (a MediaNode's, new at each
    #: start): one that stops deletes its record only if it is still its own.
    incarnation: NotRequired[str]


class MembershipMessage(TypedDict):
    event: MembershipEvent
    id: str


def is_server_id(server_id: object) -> TypeGuard[str]:
    """A string a server id can be: not empty, no ':' nor '*' (they would make its keys
    ambiguous or patterns)."""
    return isinstance(server_id, str) and bool(server_id) and not {":", "*"} & set(server_id)


def server_key(server_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    if not is_server_id(server_id):
        raise ValueError(f"invalid server id {server_id!r}")
    return f"{prefix}:server:{server_id}"


def server_pattern(prefix: str = DEFAULT_PREFIX) -> str:
    """The ``SCAN MATCH`` pattern of every server key."""
    return f"{prefix}:server:*"


def server_id_from_key(key: str | bytes, prefix: str = DEFAULT_PREFIX) -> str | None:
    """The server id of a key, or None for a key that is no server's (anyone may write
    keys under the prefix: not UTF-8, or an id no server could have)."""
    try:
        text = key.decode() if isinstance(key, bytes) else key
    except UnicodeDecodeError:
        return None
    head = f"{prefix}:server:"
    if not text.startswith(head) or not is_server_id(text[len(head) :]):
        return None
    return text[len(head) :]


def membership_channel(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}:membership"


def encode_record(record: ServerRecord) -> str:
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(name)
    # bool is an int: no number field takes true or false (nor, with (int, float), did
    # "load": true pass as 1.0).
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"server record: invalid {name!r}")
    return value


def json_object(raw: str | bytes, what: str) -> dict[str, Any]:
    """The JSON object in ``raw`` read from Redis (anyone who can write there can write
    it): ValueError starting with ``what`` when it is not one."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as error:  # RecursionError: nested too deep
        raise ValueError(f"{what}: not JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: not an object")
    return data


def decode_record(raw: str | bytes) -> ServerRecord:
    """Parse and check a record read from Redis (ValueError when it is not one)."""
    return check_record(json_object(raw, "server record"))


def check_record(data: dict[str, Any]) -> ServerRecord:
    """The record in a decoded JSON object (ValueError naming the first bad field)."""
    region = data.get("region")
    if region is not None and not isinstance(region, str):
        raise ValueError("server record: invalid 'region'")
    workers = _field(data, "workers", int)
    consumers = _field(data, "consumers", int)
    load = _field(data, "load", (int, float))
    if workers < 0 or consumers < 0:
        raise ValueError("server record: negative count")
    # NaN, infinities, integers no float holds: Python's JSON reads them (browsers' do
    # not), and float() of the last raises OverflowError, which no reader expects.
    if not 0 <= load < 1e300:
        raise ValueError("server record: invalid 'load'")
    serves = data.get("serves", "mediasoup")  # records of the first increment had none
    if serves not in ("mediasoup", "mafalda"):
        raise ValueError("server record: invalid 'serves'")
    record: ServerRecord = {
        "id": _field(data, "id", str),
        "controlUrl": _field(data, "controlUrl", str),
        "mediaAddress": _field(data, "mediaAddress", str),
        "region": region,
        "workers": workers,
        "load": float(load),
        "consumers": consumers,
        "draining": _field(data, "draining", bool),
        "version": _field(data, "version", str),
        "serves": serves,
    }
    if "heartbeat" in data:
        heartbeat = _field(data, "heartbeat", (int, float))
        if not 0 < heartbeat < 1e300:
            raise ValueError("server record: invalid 'heartbeat'")
        record["heartbeat"] = float(heartbeat)
    if "incarnation" in data:
        record["incarnation"] = _field(data, "incarnation", str)
    return record


def encode_membership(event: MembershipEvent, server_id: str) -> str:
    return json.dumps({"event": event, "id": server_id}, separators=(",", ":"))


def decode_membership(raw: str | bytes) -> MembershipMessage | None:
    """A membership message, or None for anything else (ignored by listeners)."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        return None
    if not isinstance(data, dict):
        return None
    event, server_id = data.get("event"), data.get("id")
    # _EVENTS is a tuple: an unhashable event (a list...) is compared, not hashed (a
    # TypeError); an id no server could have would make the listener's key lookup raise.
    if event not in _EVENTS or not is_server_id(server_id):
        return None
    return {"event": event, "id": server_id}
