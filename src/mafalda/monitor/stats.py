"""What a media server reports to the Monitor: its workers, routers and pipe ends.

Pure functions (no I/O). A server's report is a JSON string under the Redis key
``{prefix}:stats:{id}`` (beside its registry record ``{prefix}:server:{id}``), rewritten
at every sample with a TTL, so a server that stops reporting disappears from the view.

Reports come from the network (anyone who can write to the cluster's Redis can write
one): ``decode_stats`` checks every field and raises ValueError naming the first bad
one, and the Monitor leaves such a report out.
"""

from __future__ import annotations

import json
from typing import Any, NotRequired, TypedDict

from mafalda.horizontal import registry
from mafalda.remote.server import ClientInfo

__all__ = [
    "COUNT_FIELDS",
    "MAX_ROOM_ID",
    "PRODUCER_KINDS",
    "TRANSPORT_TYPES",
    "ClientStats",
    "Counts",
    "PipeEnd",
    "RouterStats",
    "ServerStats",
    "WorkerStats",
    "decode_stats",
    "encode_stats",
    "stats_key",
    "stats_pattern",
]


class Counts(TypedDict):
    """What lives on transports, counted (a worker's, a router's, a pipe end's...)."""

    producers: int
    consumers: int
    dataProducers: int
    dataConsumers: int


class WorkerStats(Counts):
    pid: int
    cpu: float | None  # share of one core used since the previous sample (None: first)
    cpuTime: float | None  # CPU seconds used since it started (None: not asked yet)
    load: float | None  # a Mafalda pool's placement load (its policy's figure), else None
    routers: int
    transports: int


class RouterStats(Counts):
    id: str
    worker: int  # pid
    transports: int
    # Only those it has (absent: none, or a report of an older server), to keep the
    # report small: transports by type ("webrtc", "plain", "pipe", "direct") and
    # producers by kind ("audio", "video"), each count above 0.
    transportTypes: NotRequired[dict[str, int]]
    producerKinds: NotRequired[dict[str, int]]
    # The room it is a part of, from its app_data (at most one of the two is reported):
    # the cluster router (horizontal) whose child it is, directly or through its Mafalda
    # router, else the Mafalda router (a pool's, spanning workers) whose child it is.
    clusterRouterId: NotRequired[str]
    mafaldaRouterId: NotRequired[str]


class PipeEnd(Counts):
    """One PipeTransport: one end of a link between two workers (on this server or
    another). Its consumers send streams to the other end, its producers receive them."""

    transportId: str
    routerId: str
    worker: int  # pid
    localIp: str
    localPort: int
    remoteIp: str | None  # None until connected
    remotePort: int | None


#: A client of the server (a mafalda.remote session), as ``RemoteServer.clients()``.
ClientStats = ClientInfo


class ServerStats(TypedDict):
    id: str
    time: float  # seconds since the epoch, when sampled
    workers: list[WorkerStats]
    routers: list[RouterStats]
    routersOmitted: int  # beyond the report's cap (the busiest are kept)
    pipes: list[PipeEnd]
    # Beyond the report's cap (the reported routers' ends are kept, then the busiest);
    # 0 in an older server's report, which had no cap.
    pipesOmitted: int
    clients: list[ClientStats]
    clientsOmitted: int  # beyond the report's cap


def stats_key(server_id: str, prefix: str = registry.DEFAULT_PREFIX) -> str:
    registry.server_key(server_id, prefix)  # the same ids as the registry's (ValueError)
    return f"{prefix}:stats:{server_id}"


def stats_pattern(prefix: str = registry.DEFAULT_PREFIX) -> str:
    return f"{prefix}:stats:*"


def encode_stats(stats: ServerStats) -> str:
    return json.dumps(stats, separators=(",", ":"))


#: The fields of ``Counts``, in order.
COUNT_FIELDS = ("producers", "consumers", "dataProducers", "dataConsumers")
#: The keys of a router's ``transportTypes`` and ``producerKinds``.
TRANSPORT_TYPES = ("webrtc", "plain", "pipe", "direct")
PRODUCER_KINDS = ("audio", "video")
#: The longest room id (a cluster or Mafalda router's) reported: ours are UUIDs, an
#: app_data's longer value is not reported (it would grow every router's entry).
MAX_ROOM_ID = 100


def _int(data: dict[str, Any], name: str, where: str, *, low: int = 0) -> int:
    value = data.get(name)
    if type(value) is not int or value < low:
        raise ValueError(f"server stats: invalid {where}{name!r}")
    return value


def _str(data: dict[str, Any], name: str, where: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"server stats: invalid {where}{name!r}")
    return value


def _list(data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    value = data.get(name)
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError(f"server stats: invalid {name!r}")
    return value


def _counts(data: dict[str, Any], where: str) -> dict[str, int]:
    return {name: _int(data, name, where) for name in COUNT_FIELDS}


def _number(data: dict[str, Any], name: str, where: str) -> float | None:
    """A finite number >= 0, or None where it is absent or null."""
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1e300:
        raise ValueError(f"server stats: invalid {where}{name!r}")
    return float(value)


def _worker(data: dict[str, Any]) -> WorkerStats:
    where = "worker "
    cpu = _number(data, "cpu", where)
    cpu_time = _number(data, "cpuTime", where)  # absent from older reports
    load = _number(data, "load", where)
    counts = _counts(data, where)
    return {
        "pid": _int(data, "pid", where, low=1),
        "cpu": cpu,
        "cpuTime": cpu_time,
        "load": load,
        "routers": _int(data, "routers", where),
        "transports": _int(data, "transports", where),
        "producers": counts["producers"],
        "consumers": counts["consumers"],
        "dataProducers": counts["dataProducers"],
        "dataConsumers": counts["dataConsumers"],
    }


def _by(data: dict[str, Any], name: str, keys: tuple[str, ...]) -> dict[str, int]:
    value = data[name]
    if not isinstance(value, dict) or not all(
        key in keys and type(count) is int and count > 0 for key, count in value.items()
    ):
        raise ValueError(f"server stats: invalid router {name!r}")
    return value


def _router(data: dict[str, Any]) -> RouterStats:
    where = "router "
    counts = _counts(data, where)
    router: RouterStats = {
        "id": _str(data, "id", where),
        "worker": _int(data, "worker", where, low=1),
        "transports": _int(data, "transports", where),
        "producers": counts["producers"],
        "consumers": counts["consumers"],
        "dataProducers": counts["dataProducers"],
        "dataConsumers": counts["dataConsumers"],
    }
    if "transportTypes" in data:
        router["transportTypes"] = _by(data, "transportTypes", TRANSPORT_TYPES)
    if "producerKinds" in data:
        router["producerKinds"] = _by(data, "producerKinds", PRODUCER_KINDS)
    for name in ("clusterRouterId", "mafaldaRouterId"):
        if name in data:
            if len(_str(data, name, where)) > MAX_ROOM_ID:
                raise ValueError(f"server stats: invalid router {name!r}")
            router[name] = data[name]
    return router


def _port(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if type(value) is not int or not 0 < value <= 65535:
        raise ValueError(f"server stats: invalid pipe {name!r}")
    return value


def _pipe(data: dict[str, Any]) -> PipeEnd:
    where = "pipe "
    remote_ip = data.get("remoteIp")
    if remote_ip is not None and (not isinstance(remote_ip, str) or not remote_ip):
        raise ValueError("server stats: invalid pipe 'remoteIp'")
    remote_port = None if data.get("remotePort") is None else _port(data, "remotePort")
    if (remote_ip is None) != (remote_port is None):
        raise ValueError("server stats: pipe 'remoteIp' and 'remotePort' go together")
    counts = _counts(data, where)
    return {
        "transportId": _str(data, "transportId", where),
        "routerId": _str(data, "routerId", where),
        "worker": _int(data, "worker", where, low=1),
        "localIp": _str(data, "localIp", where),
        "localPort": _port(data, "localPort"),
        "remoteIp": remote_ip,
        "remotePort": remote_port,
        "producers": counts["producers"],
        "consumers": counts["consumers"],
        "dataProducers": counts["dataProducers"],
        "dataConsumers": counts["dataConsumers"],
    }


def _client(data: dict[str, Any]) -> ClientStats:
    address = data.get("address")
    if address is not None and (not isinstance(address, str) or not address):
        raise ValueError("server stats: invalid client 'address'")
    connected = data.get("connected")
    if not isinstance(connected, bool):
        raise ValueError("server stats: invalid client 'connected'")
    return {"address": address, "connected": connected, "objects": _int(data, "objects", "client ")}


def decode_stats(raw: str | bytes) -> ServerStats:
    """Parse and check a report read from Redis (ValueError naming what is wrong)."""
    data = registry.json_object(raw, "server stats")
    server_id = data.get("id")
    if not registry.is_server_id(server_id):
        raise ValueError("server stats: invalid 'id'")
    time = _number(data, "time", "")
    if time is None:
        raise ValueError("server stats: invalid 'time'")
    return {
        "id": server_id,
        "time": time,
        "workers": [_worker(item) for item in _list(data, "workers")],
        "routers": [_router(item) for item in _list(data, "routers")],
        "routersOmitted": _int(data, "routersOmitted", ""),
        "pipes": [_pipe(item) for item in _list(data, "pipes")],
        "pipesOmitted": _int(data, "pipesOmitted", "") if "pipesOmitted" in data else 0,
        # Absent from a probe that serves no clients' sessions (nor from older reports).
        "clients": [_client(item) for item in _list(data, "clients")] if "clients" in data else [],
        "clientsOmitted": _int(data, "clientsOmitted", "") if "clientsOmitted" in data else 0,
    }
