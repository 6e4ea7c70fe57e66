"""The cluster as the Monitor shows it: servers, their workers and routers, and links.

Pure functions (no I/O): ``build_view()`` joins the registry's records (who is in the
cluster, its load, draining...) with the servers' reports (``stats.ServerStats``) and
pairs pipe ends into links; ``render_text()`` prints a view for a terminal.

A link joins two workers (on one server: a Mafalda pool's pipes between its workers;
on two: pipes between servers) and counts the streams each way (consumers and data
consumers on the sending end's PipeTransports). Two pipe ends are one pipe when each
one's remote address is the other's local address. An end whose other end no server
reports (a peer outside the cluster, one gone, or an end beyond its server's report's
cap: ``pipesOmitted``) is a link to nobody (``b`` None).

A room is a router as the application sees it, wherever its parts live: the routers
reported with one ``clusterRouterId`` (a cluster router's children, on several servers,
each possibly a Mafalda router spanning workers), else with one ``mafaldaRouterId`` (a
pool router's children, on the workers of one server), else a router of its own. Its
``workers`` say what it holds on each, its ``links`` are the pipes with an end on one of
its routers. Routers beyond a report's cap are in no room (the busiest are reported);
a report's pipe ends are those of its reported routers first, so rooms keep their links.
"""

from __future__ import annotations

import time as _time
from typing import Literal, TypedDict

from mafalda.horizontal.registry import ServerRecord
from mafalda.monitor.stats import (
    PRODUCER_KINDS,
    TRANSPORT_TYPES,
    ClientStats,
    Counts,
    PipeEnd,
    RouterStats,
    ServerStats,
    WorkerStats,
)

__all__ = [
    "ClusterView",
    "LinkEnd",
    "LinkView",
    "RoomView",
    "RoomWorker",
    "ServerView",
    "Totals",
    "build_view",
    "busiest_routers",
    "clients_away",
    "omitted",
    "render_text",
]


class Totals(Counts):
    workers: int
    routers: int
    transports: int
    clients: int  # mafalda.remote sessions (apps driving the servers), away ones included


class ServerView(TypedDict):
    id: str
    controlUrl: str
    mediaAddress: str
    region: str | None
    serves: Literal["mediasoup", "mafalda"]
    draining: bool
    load: float  # the registry's figure (workers per core, or a pool's busiest worker)
    reported: bool  # False: no report from it (yet, or it runs no probe)
    age: float | None  # seconds since its report was sampled
    workers: list[WorkerStats]
    routers: list[RouterStats]
    routersOmitted: int
    pipesOmitted: int  # pipe ends beyond its report's cap: in no link
    clients: list[ClientStats]
    clientsOmitted: int
    totals: Totals


class LinkEnd(TypedDict):
    server: str
    worker: int  # pid


class LinkView(TypedDict):
    a: LinkEnd
    b: LinkEnd | None  # None: the other end is reported by no server of the cluster
    aToB: int  # streams a sends to b (media and data)
    bToA: int
    pipes: int  # PipeTransport pairs (or lone ends) making up the link


class RoomWorker(Counts):
    """What a room holds on one worker."""

    server: str
    worker: int  # pid
    routers: list[str]  # its routers there (one, unless the app made a second child)
    transports: int
    transportTypes: dict[str, int]  # by type ("webrtc", "plain", "pipe", "direct")
    producerKinds: dict[str, int]  # by kind ("audio", "video")
    pipes: int  # pipe ends (PipeTransports) on its routers there
    pipedIn: int  # streams received through them (their producers and data producers)
    pipedOut: int  # streams sent through them (their consumers and data consumers)


RoomKind = Literal["cluster", "pool", "router"]


class RoomView(Counts):
    id: str  # the cluster router's, the Mafalda router's or the router's own id
    kind: RoomKind
    servers: list[str]
    transports: int
    transportTypes: dict[str, int]
    producerKinds: dict[str, int]
    workers: list[RoomWorker]  # by server, then pid
    links: list[LinkView]  # the pipes with an end on one of its routers


class ClusterView(TypedDict):
    time: float
    servers: list[ServerView]
    links: list[LinkView]
    rooms: list[RoomView]  # the busiest first (producers and consumers, then transports)
    totals: Totals


def _totals(workers: list[WorkerStats], clients: int) -> Totals:
    return {
        "clients": clients,
        "workers": len(workers),
        "routers": sum(w["routers"] for w in workers),
        "transports": sum(w["transports"] for w in workers),
        "producers": sum(w["producers"] for w in workers),
        "consumers": sum(w["consumers"] for w in workers),
        "dataProducers": sum(w["dataProducers"] for w in workers),
        "dataConsumers": sum(w["dataConsumers"] for w in workers),
    }


def _sends(end: PipeEnd) -> int:
    return end["consumers"] + end["dataConsumers"]


def _receives(end: PipeEnd) -> int:
    return end["producers"] + end["dataProducers"]


_Owned = tuple[str, PipeEnd]  # (server id, end)


def _pair(ends: list[_Owned]) -> list[tuple[_Owned, _Owned | None]]:
    """Each pipe once: (end, its other end or None)."""
    by_local: dict[tuple[str, int], list[_Owned]] = {}
    for owned in ends:
        by_local.setdefault((owned[1]["localIp"], owned[1]["localPort"]), []).append(owned)
    pairs: list[tuple[_Owned, _Owned | None]] = []
    taken: set[tuple[str, str]] = set()
    for server, end in ends:
        if (server, end["transportId"]) in taken:
            continue
        taken.add((server, end["transportId"]))
        other: _Owned | None = None
        if end["remoteIp"] is not None:
            candidates = [
                (s, e)
                for s, e in by_local.get((end["remoteIp"], end["remotePort"] or 0), [])
                if e["remoteIp"] == end["localIp"]
                and e["remotePort"] == end["localPort"]
                and (s, e["transportId"]) not in taken
            ]
            # Two hosts may both pipe on 127.0.0.1: a loopback pair is on one server.
            candidates.sort(key=lambda c: c[0] != server)
            if candidates:
                other = candidates[0]
                taken.add((other[0], other[1]["transportId"]))
        pairs.append(((server, end), other))
    return pairs


def _links(pairs: list[tuple[_Owned, _Owned | None]]) -> list[LinkView]:
    links: dict[tuple[tuple[str, int], tuple[str, int] | None], LinkView] = {}
    for (a_server, a), other in pairs:
        a_key = (a_server, a["worker"])
        if other is None:
            key: tuple[tuple[str, int], tuple[str, int] | None] = (a_key, None)
            a_to_b, b_to_a = _sends(a), _receives(a)
        else:
            b_server, b = other
            b_key = (b_server, b["worker"])
            if b_key < a_key:
                a_key, b_key, a, b = b_key, a_key, b, a
            key = (a_key, b_key)
            a_to_b, b_to_a = _sends(a), _sends(b)
        link = links.get(key)
        if link is None:
            link = links[key] = {
                "a": {"server": key[0][0], "worker": key[0][1]},
                "b": None if key[1] is None else {"server": key[1][0], "worker": key[1][1]},
                "aToB": 0,
                "bToA": 0,
                "pipes": 0,
            }
        link["aToB"] += a_to_b
        link["bToA"] += b_to_a
        link["pipes"] += 1
    return sorted(
        links.values(),
        key=lambda link: (
            link["a"]["server"],
            link["a"]["worker"],
            link["b"] is None,
            "" if link["b"] is None else link["b"]["server"],
            0 if link["b"] is None else link["b"]["worker"],
        ),
    )


def build_view(
    records: list[ServerRecord], reports: list[ServerStats], *, now: float | None = None
) -> ClusterView:
    """The view of the servers in ``records`` (reports of servers not in the registry,
    which left or were never in it, are left out)."""
    now = _time.time() if now is None else now
    by_id = {report["id"]: report for report in reports}
    servers: list[ServerView] = []
    ends: list[_Owned] = []
    for record in sorted(records, key=lambda r: r["id"]):
        report = by_id.get(record["id"])
        workers = report["workers"] if report else []
        clients = report["clients"] if report else []
        clients_omitted = report["clientsOmitted"] if report else 0
        servers.append(
            {
                "id": record["id"],
                "controlUrl": record["controlUrl"],
                "mediaAddress": record["mediaAddress"],
                "region": record["region"],
                "serves": record["serves"],
                "draining": record["draining"],
                "load": record["load"],
                "reported": report is not None,
                "age": None if report is None else round(max(0.0, now - report["time"]), 3),
                "workers": workers,
                "routers": report["routers"] if report else [],
                "routersOmitted": report["routersOmitted"] if report else 0,
                "pipesOmitted": report["pipesOmitted"] if report else 0,
                "clients": clients,
                "clientsOmitted": clients_omitted,
                "totals": _totals(workers, len(clients) + clients_omitted),
            }
        )
        if report is not None:
            ends.extend((record["id"], end) for end in report["pipes"])
    everything = [w for server in servers for w in server["workers"]]
    pairs = _pair(ends)
    return {
        "time": now,
        "servers": servers,
        "links": _links(pairs),
        "rooms": _rooms(servers, pairs),
        "totals": _totals(everything, sum(s["totals"]["clients"] for s in servers)),
    }


_RoomKey = tuple[RoomKind, str]


def _room_key(router: RouterStats) -> _RoomKey:
    if "clusterRouterId" in router:
        return ("cluster", router["clusterRouterId"])
    if "mafaldaRouterId" in router:
        return ("pool", router["mafaldaRouterId"])
    return ("router", router["id"])


def _add(into: dict[str, int], counts: dict[str, int]) -> None:
    for name, count in counts.items():
        into[name] = into.get(name, 0) + count


def _rooms(servers: list[ServerView], pairs: list[tuple[_Owned, _Owned | None]]) -> list[RoomView]:
    rooms: dict[_RoomKey, RoomView] = {}
    places: dict[tuple[_RoomKey, str, int], RoomWorker] = {}
    # (server, router id) -> its room and worker (its pipe ends' own figure is not used:
    # a report that would say another is not to break the view)
    of_router: dict[tuple[str, str], tuple[_RoomKey, int]] = {}
    for server in servers:
        for router in server["routers"]:
            key = _room_key(router)
            of_router[(server["id"], router["id"])] = (key, router["worker"])
            room = rooms.get(key)
            if room is None:
                room = rooms[key] = {
                    "id": key[1],
                    "kind": key[0],
                    "servers": [],
                    "transports": 0,
                    "transportTypes": {},
                    "producerKinds": {},
                    "producers": 0,
                    "consumers": 0,
                    "dataProducers": 0,
                    "dataConsumers": 0,
                    "workers": [],
                    "links": [],
                }
            if server["id"] not in room["servers"]:
                room["servers"].append(server["id"])
            place = places.get((key, server["id"], router["worker"]))
            if place is None:
                place = places[(key, server["id"], router["worker"])] = {
                    "server": server["id"],
                    "worker": router["worker"],
                    "routers": [],
                    "transports": 0,
                    "transportTypes": {},
                    "producerKinds": {},
                    "producers": 0,
                    "consumers": 0,
                    "dataProducers": 0,
                    "dataConsumers": 0,
                    "pipes": 0,
                    "pipedIn": 0,
                    "pipedOut": 0,
                }
                room["workers"].append(place)
            place["routers"].append(router["id"])
            for into in (room, place):
                into["transports"] += router["transports"]
                _add(into["transportTypes"], router.get("transportTypes", {}))
                _add(into["producerKinds"], router.get("producerKinds", {}))
                for name in ("producers", "consumers", "dataProducers", "dataConsumers"):
                    into[name] += router[name]
    # Each pipe to the rooms of its ends (two, when it joins two rooms).
    piped: dict[_RoomKey, list[tuple[_Owned, _Owned | None]]] = {}
    for pair in pairs:
        seen: list[_RoomKey] = []
        for owned in (pair[0], pair[1]):
            if owned is None:
                continue
            found = of_router.get((owned[0], owned[1]["routerId"]))
            if found is None:
                continue  # on a router beyond its report's cap
            key, worker = found
            place = places[(key, owned[0], worker)]
            place["pipes"] += 1
            place["pipedIn"] += _receives(owned[1])
            place["pipedOut"] += _sends(owned[1])
            if key not in seen:
                seen.append(key)
                piped.setdefault(key, []).append(pair)
    for key, room_pairs in piped.items():
        rooms[key]["links"] = _links(room_pairs)
    for room in rooms.values():
        room["servers"].sort()
        room["workers"].sort(key=lambda w: (w["server"], w["worker"]))
    return sorted(
        rooms.values(),
        key=lambda r: (-(r["consumers"] + r["producers"]), -r["transports"], r["kind"], r["id"]),
    )


def clients_away(server: ServerView) -> int:
    """The server's reported sessions waiting for their client to resume."""
    return sum(1 for c in server["clients"] if not c["connected"])


def _end(end: LinkEnd | None) -> str:
    return "(outside the cluster)" if end is None else f"{end['server']}/{end['worker']}"


def _of(counts: dict[str, int], names: tuple[str, ...]) -> str:
    shown = ", ".join(f"{name} {counts[name]}" for name in names if name in counts)
    return f" ({shown})" if shown else ""


def _held(room: RoomView | RoomWorker) -> str:
    return (
        f"transports {room['transports']}{_of(room['transportTypes'], TRANSPORT_TYPES)}  "
        f"producers {room['producers']}{_of(room['producerKinds'], PRODUCER_KINDS)}  "
        f"consumers {room['consumers']}  data {room['dataProducers']}/{room['dataConsumers']}"
    )


def omitted(server: ServerView) -> str:
    """What ``server``'s report left out beyond its caps, "" if nothing: "1 router,
    3 clients, 2 pipe ends". Those routers are in no room, those clients in no away
    figure, those ends in no link; the terminal and the page say it alike."""
    counts = (
        (server["routersOmitted"], "router"),
        (server["clientsOmitted"], "client"),
        (server["pipesOmitted"], "pipe end"),
    )
    return ", ".join(f"{n} {what}{'' if n == 1 else 's'}" for n, what in counts if n)


def busiest_routers(view: ClusterView, limit: int = 10) -> list[tuple[str, RouterStats]]:
    """The ``limit`` busiest routers of the cluster (consumers and producers, then
    transports), with their server's id."""
    routers = [(s["id"], r) for s in view["servers"] for r in s["routers"]]
    routers.sort(
        key=lambda sr: (
            -(sr[1]["consumers"] + sr[1]["producers"]),
            -sr[1]["transports"],
            sr[0],
            sr[1]["id"],
        )
    )
    return routers[:limit]


def render_text(view: ClusterView, *, routers: int = 10) -> str:
    """A terminal page: one line per server and per worker (and what its report left
    out, if anything), the ``routers`` busiest routers, as many of the busiest rooms
    spanning workers (a line per worker), then the links."""
    totals = view["totals"]
    stamp = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(view["time"]))
    lines = [
        f"mafalda monitor  {stamp}  servers {len(view['servers'])}  "
        f"clients {totals['clients']}  workers {totals['workers']}  routers {totals['routers']}  "
        f"transports {totals['transports']}  producers {totals['producers']}  "
        f"consumers {totals['consumers']}  links {len(view['links'])}",
        "",
    ]
    for server in view["servers"]:
        state = "draining" if server["draining"] else "up"
        if not server["reported"]:
            state += ", no report"
        t = server["totals"]
        away = clients_away(server)
        lines.append(
            f"{server['id']}  {server['serves']}  {server['mediaAddress']}  "
            f"region {server['region'] or '-'}  load {server['load']:.2f}  {state}  "
            f"clients {t['clients']}{f' ({away} away)' if away else ''}  "
            f"routers {t['routers']}  transports {t['transports']}  "
            f"producers {t['producers']}  consumers {t['consumers']}"
        )
        for worker in server["workers"]:
            cpu = "-" if worker["cpu"] is None else f"{worker['cpu'] * 100:.1f}%"
            load = "" if worker["load"] is None else f"  load {worker['load']:.2f}"
            lines.append(
                f"  worker {worker['pid']}  cpu {cpu}{load}  routers {worker['routers']}  "
                f"transports {worker['transports']}  producers {worker['producers']}  "
                f"consumers {worker['consumers']}  data {worker['dataProducers']}/"
                f"{worker['dataConsumers']}"
            )
        left_out = omitted(server)
        if left_out:
            lines.append(f"  left out of its report (beyond its caps): {left_out}")
    busiest = busiest_routers(view, routers)
    if busiest:
        lines.append("")
        lines.append("busiest routers")
    for server_id, router in busiest:
        lines.append(
            f"  {router['id']}  {server_id}/{router['worker']}  "
            f"transports {router['transports']}  producers {router['producers']}  "
            f"consumers {router['consumers']}  data {router['dataProducers']}/"
            f"{router['dataConsumers']}"
        )
    spread = [room for room in view["rooms"] if len(room["workers"]) > 1][:routers]
    if spread:
        lines.append("")
        lines.append("rooms across workers")
    for room in spread:
        lines.append(
            f"  {room['kind']} {room['id']}  servers {', '.join(room['servers'])}  {_held(room)}"
        )
        for place in room["workers"]:
            lines.append(
                f"    {place['server']}/{place['worker']}  {_held(place)}  "
                f"pipes {place['pipes']} (in {place['pipedIn']}, out {place['pipedOut']})"
            )
    lines.append("")
    lines.append("links" if view["links"] else "links: none")
    for link in view["links"]:
        lines.append(
            f"  {_end(link['a'])} -> {_end(link['b'])}: {link['aToB']} streams, "
            f"{link['bToA']} back ({link['pipes']} pipe{'s' if link['pipes'] != 1 else ''})"
        )
    return "\n".join(lines) + "\n"
