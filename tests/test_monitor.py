"""The Monitor: reports (pure), the probe on real workers, Redis, the CLI and the page."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from mafalda import horizontal, mediasoup, monitor
from mafalda.horizontal import registry
from mafalda.horizontal.registry import ServerRecord
from mafalda.mediasoup import Worker
from mafalda.monitor import (
    ClusterView,
    Probe,
    Reporter,
    build_view,
    busiest_routers,
    render_text,
)
from mafalda.monitor.stats import (
    PipeEnd,
    ServerStats,
    decode_stats,
    encode_stats,
    stats_key,
    stats_pattern,
)
from mafalda.monitor.view import omitted
from mafalda.monitor.web import PAGE, MonitorWeb, check_page_options, password_of
from tests.conftest import MEDIA_CODECS, opus_rtp_parameters
from tests.processes import (
    HAVE_REDIS,
    TOKEN,
    RedisProcess,
    free_ports,
    reap,
    serve_command,
    spawn_serve,
    tls_files,
)

CHROMIUM = Path("/usr/bin/chromium")
needs_redis = pytest.mark.skipif(not HAVE_REDIS, reason="redis-server is not installed")

# -- reports and views, without a process ---------------------------------------------------


def _record(server_id: str, address: str, **extra: Any) -> ServerRecord:
    record: ServerRecord = {
        "id": server_id,
        "controlUrl": f"ws://{address}:4443/",
        "mediaAddress": address,
        "region": None,
        "workers": 1,
        "load": 0.5,
        "consumers": 0,
        "draining": False,
        "version": "mafalda-remote/2",
        "serves": "mediasoup",
    }
    return {**record, **extra}  # type: ignore[typeddict-item]


def _end(
    transport_id: str,
    worker: int,
    local: tuple[str, int],
    remote: tuple[str, int] | None,
    *,
    producers: int = 0,
    consumers: int = 0,
    data_consumers: int = 0,
) -> PipeEnd:
    return {
        "transportId": transport_id,
        "routerId": "r-" + transport_id,
        "worker": worker,
        "localIp": local[0],
        "localPort": local[1],
        "remoteIp": None if remote is None else remote[0],
        "remotePort": None if remote is None else remote[1],
        "producers": producers,
        "consumers": consumers,
        "dataProducers": 0,
        "dataConsumers": data_consumers,
    }


def _report(server_id: str, workers: list[int], pipes: list[PipeEnd], time: float) -> ServerStats:
    return {
        "id": server_id,
        "time": time,
        "workers": [
            {
                "pid": pid,
                "cpu": 0.25,
                "cpuTime": 12.5,
                "load": 0.4,
                "routers": 1,
                "transports": 2,
                "producers": 1,
                "consumers": 3,
                "dataProducers": 0,
                "dataConsumers": 1,
            }
            for pid in workers
        ],
        "routers": [
            {
                "id": f"r{pid}",
                "worker": pid,
                "transports": 2,
                "producers": 1,
                "consumers": 3,
                "dataProducers": 0,
                "dataConsumers": 1,
            }
            for pid in workers
        ],
        "routersOmitted": 0,
        "pipes": pipes,
        "pipesOmitted": 0,
        "clients": [
            {"address": "10.9.0.1", "connected": True, "objects": 5},
            {"address": None, "connected": False, "objects": 2},
        ],
        "clientsOmitted": 1,
    }


def test_report_round_trip_and_keys() -> None:
    report = _report("s1", [10], [_end("t1", 10, ("10.0.0.1", 4000), ("10.0.0.2", 5000))], 5.0)
    assert decode_stats(encode_stats(report)) == report
    assert decode_stats(encode_stats(report).encode()) == report
    # A report of a probe serving no clients (or an older one) has none.
    bare = {k: v for k, v in report.items() if k not in ("clients", "clientsOmitted")}
    assert decode_stats(json.dumps(bare)) == {**report, "clients": [], "clientsOmitted": 0}
    # Nor does a report of an older server have the workers' CPU time.
    worker = {k: v for k, v in report["workers"][0].items() if k != "cpuTime"}
    older = {**report, "workers": [worker]}
    assert decode_stats(json.dumps(older))["workers"][0]["cpuTime"] is None
    # Pipe ends beyond the cap are counted; an older server's report (no cap) has none.
    capped = {**report, "pipesOmitted": 3}
    assert decode_stats(encode_stats(capped)) == capped  # type: ignore[arg-type]
    uncapped = {k: v for k, v in report.items() if k != "pipesOmitted"}
    assert decode_stats(json.dumps(uncapped))["pipesOmitted"] == 0
    # A router's detail: its transports by type, producers by kind, and its room.
    detailed = {
        **report,
        "routers": [
            {
                **report["routers"][0],
                "transportTypes": {"webrtc": 1, "pipe": 1},
                "producerKinds": {"audio": 1},
                "clusterRouterId": "c" * 100,
            },
            {**report["routers"][0], "id": "r2", "mafaldaRouterId": "m1"},
        ],
    }
    assert decode_stats(encode_stats(detailed)) == detailed  # type: ignore[arg-type]
    assert stats_key("s1") == "mafalda:stats:s1"
    assert stats_key("s1", "x") == "x:stats:s1"
    assert stats_pattern("x") == "x:stats:*"
    with pytest.raises(ValueError, match="server id"):
        stats_key("a:b")


def _router_with(report: Any, **fields: Any) -> Any:
    return {**report, "routers": [{**report["routers"][0], **fields}]}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda r: "[", "not JSON"),
        (lambda r: "[" * 100_000, "not JSON"),
        (lambda r: "[]", "not an object"),
        (lambda r: {**r, "id": "a:b"}, "'id'"),
        (lambda r: {**r, "id": 3}, "'id'"),
        (lambda r: {**r, "time": True}, "'time'"),
        (lambda r: {**r, "time": -1}, "'time'"),
        (lambda r: {**r, "time": float("nan")}, "'time'"),
        (lambda r: {**r, "time": None}, "'time'"),
        (lambda r: {k: v for k, v in r.items() if k != "time"}, "'time'"),
        (lambda r: {**r, "workers": {}}, "'workers'"),
        (lambda r: {**r, "workers": [1]}, "'workers'"),
        (lambda r: {**r, "workers": [{**r["workers"][0], "pid": 0}]}, "worker 'pid'"),
        (lambda r: {**r, "workers": [{**r["workers"][0], "cpu": -0.1}]}, "worker 'cpu'"),
        (lambda r: {**r, "workers": [{**r["workers"][0], "cpu": "1"}]}, "worker 'cpu'"),
        (lambda r: {**r, "workers": [{**r["workers"][0], "cpuTime": -1}]}, "worker 'cpuTime'"),
        (lambda r: {**r, "workers": [{**r["workers"][0], "cpuTime": False}]}, "'cpuTime'"),
        (lambda r: {**r, "workers": [{**r["workers"][0], "load": -2}]}, "worker 'load'"),
        (lambda r: {**r, "workers": [{**r["workers"][0], "load": True}]}, "worker 'load'"),
        (lambda r: {**r, "workers": [{**r["workers"][0], "consumers": 1.5}]}, "'consumers'"),
        (lambda r: {**r, "routers": [{**r["routers"][0], "id": ""}]}, "router 'id'"),
        (lambda r: {**r, "routers": [{**r["routers"][0], "worker": True}]}, "router 'worker'"),
        (lambda r: {**r, "routersOmitted": -1}, "'routersOmitted'"),
        (lambda r: _router_with(r, transportTypes=[]), "router 'transportTypes'"),
        (lambda r: _router_with(r, transportTypes={"sctp": 1}), "router 'transportTypes'"),
        (lambda r: _router_with(r, transportTypes={"pipe": 0}), "router 'transportTypes'"),
        (lambda r: _router_with(r, producerKinds={"audio": True}), "router 'producerKinds'"),
        (lambda r: _router_with(r, producerKinds={"pipe": 1}), "router 'producerKinds'"),
        (lambda r: _router_with(r, clusterRouterId=""), "router 'clusterRouterId'"),
        (lambda r: _router_with(r, clusterRouterId=["c"]), "router 'clusterRouterId'"),
        (lambda r: _router_with(r, mafaldaRouterId="m" * 101), "router 'mafaldaRouterId'"),
        (lambda r: {**r, "pipes": [{**r["pipes"][0], "localPort": 70000}]}, "'localPort'"),
        (lambda r: {**r, "pipes": [{**r["pipes"][0], "remoteIp": 5}]}, "'remoteIp'"),
        (lambda r: {**r, "pipes": [{**r["pipes"][0], "remotePort": None}]}, "go together"),
        (lambda r: {**r, "pipes": [{**r["pipes"][0], "transportId": None}]}, "'transportId'"),
        (lambda r: {**r, "pipesOmitted": -1}, "'pipesOmitted'"),
        (lambda r: {**r, "pipesOmitted": True}, "'pipesOmitted'"),
        (lambda r: {**r, "pipesOmitted": None}, "'pipesOmitted'"),
        (lambda r: {**r, "clients": [{**r["clients"][0], "address": 5}]}, "client 'address'"),
        (lambda r: {**r, "clients": [{**r["clients"][0], "connected": 1}]}, "client 'connected'"),
        (lambda r: {**r, "clients": [{**r["clients"][0], "objects": -1}]}, "client 'objects'"),
        (lambda r: {**r, "clients": {}}, "'clients'"),
        (lambda r: {**r, "clientsOmitted": "1"}, "'clientsOmitted'"),
    ],
)
def test_a_bad_report_is_refused_naming_what_is_wrong(change: Any, named: str) -> None:
    report = _report("s1", [10], [_end("t1", 10, ("10.0.0.1", 4000), ("10.0.0.2", 5000))], 5.0)
    bad = change(json.loads(encode_stats(report)))
    with pytest.raises(ValueError, match="server stats") as error:
        decode_stats(bad if isinstance(bad, str) else json.dumps(bad))
    assert named in str(error.value)


def test_view_pairs_pipe_ends_into_links_between_workers() -> None:
    records = [_record("s1", "10.0.0.1"), _record("s2", "10.0.0.2", draining=True)]
    records.append(_record("s3", "10.0.0.3"))  # in the registry, no report (yet)
    reports = [
        _report(
            "s1",
            [11, 12],
            [
                # s1/11 sends 2 streams to s2/21 over two pipes (two routers), 1 comes back.
                _end("a", 11, ("10.0.0.1", 4000), ("10.0.0.2", 5000), consumers=1),
                _end("b", 11, ("10.0.0.1", 4001), ("10.0.0.2", 5001), data_consumers=1),
                # A pool's pipe between its own workers, on loopback...
                # (the end of the higher pid first: the link is still named by the lower)
                _end("d", 12, ("127.0.0.1", 6001), ("127.0.0.1", 6000), producers=3),
                _end("c", 11, ("127.0.0.1", 6000), ("127.0.0.1", 6001), consumers=3),
                # ...and one whose other end no server reports, and one not connected.
                _end("e", 12, ("10.0.0.1", 4002), ("192.0.2.9", 7000), consumers=1, producers=2),
                _end("f", 12, ("10.0.0.1", 4003), None),
            ],
            100.0,
        ),
        _report(
            "s2",
            [21],
            [
                _end("g", 21, ("10.0.0.2", 5000), ("10.0.0.1", 4000), producers=1),
                _end("h", 21, ("10.0.0.2", 5001), ("10.0.0.1", 4001), consumers=1),
                # The same loopback ports on another host: not s1's pool pipe.
                _end("i", 21, ("127.0.0.1", 6000), ("127.0.0.1", 6001)),
            ],
            99.0,
        ),
        _report("gone", [31], [], 100.0),  # reported, but no longer in the registry
    ]
    view = build_view(records, reports, now=101.5)
    assert [s["id"] for s in view["servers"]] == ["s1", "s2", "s3"]
    s1, s2, s3 = view["servers"]
    assert (s1["reported"], s1["age"], s2["age"], s2["draining"]) == (True, 1.5, 2.5, True)
    assert (s3["reported"], s3["age"], s3["workers"], s3["totals"]["workers"]) == (
        False,
        None,
        [],
        0,
    )
    assert s1["totals"]["workers"] == 2 and s1["totals"]["consumers"] == 6
    assert view["totals"]["workers"] == 3 and view["totals"]["dataConsumers"] == 3
    links = [
        (
            (link["a"]["server"], link["a"]["worker"]),
            None if link["b"] is None else (link["b"]["server"], link["b"]["worker"]),
            link["aToB"],
            link["bToA"],
            link["pipes"],
        )
        for link in view["links"]
    ]
    assert links == [
        (("s1", 11), ("s1", 12), 3, 0, 1),
        (("s1", 11), ("s2", 21), 2, 1, 2),
        (("s1", 12), None, 1, 2, 2),  # e (1 stream out, 2 in) and f (not connected)
        (("s2", 21), None, 0, 0, 1),  # i
    ]
    text = render_text(view)
    assert "servers 3  clients 6  workers 3" in text
    assert "s2  mediasoup  10.0.0.2  region -  load 0.50  draining  clients 3 (1 away)" in text
    assert "s3  mediasoup  10.0.0.3  region -  load 0.50  up, no report  clients 0  " in text
    assert (s1["totals"]["clients"], s3["clients"], view["totals"]["clients"]) == (3, [], 6)
    assert "  worker 11  cpu 25.0%  load 0.40  routers 1" in text
    assert "  s1/11 -> s2/21: 2 streams, 1 back (2 pipes)" in text
    assert "  s1/12 -> (outside the cluster): 1 streams, 2 back (2 pipes)" in text
    assert "  s2/21 -> (outside the cluster): 0 streams, 0 back (1 pipe)" in text
    assert "links: none" in render_text(build_view([], []))
    # The busiest routers, across servers (s1's two, s2's one: the same counts, by id).
    assert text.count("busiest routers") == 1
    assert "  r11  s1/11  transports 2  producers 1  consumers 3  data 0/1" in text
    assert [r["id"] for _, r in busiest_routers(view, 2)] == ["r11", "r12"]
    assert "busiest routers" not in render_text(view, routers=0)


def _router(router_id: str, worker: int, transports: int, **fields: Any) -> Any:
    counts = {"producers": 0, "consumers": 0, "dataProducers": 0, "dataConsumers": 0}
    return {"id": router_id, "worker": worker, "transports": transports, **counts, **fields}


def _on(router_id: str, end: PipeEnd) -> PipeEnd:
    return {**end, "routerId": router_id}


def _rooms_view() -> ClusterView:
    """Rooms: a pool router spanning two workers of s1 (its children named by
    mafaldaRouterId, a loopback pipe between them), a cluster router on s1 and s2
    (clusterRouterId, a pipe between the servers), a router of its own (from an older
    server: no detail), a pipe end on a router beyond its report's cap (no room), and
    a router, three clients and two ends beyond s1's report's caps (counted)."""
    s1 = _report("s1", [11, 12], [], 100.0)
    s1["routers"] = [
        _router("p11", 11, 2, producers=1, mafaldaRouterId="M",
                transportTypes={"webrtc": 1, "pipe": 1}, producerKinds={"audio": 1}),
        _router("p12", 12, 2, producers=1, consumers=1, mafaldaRouterId="M",
                transportTypes={"webrtc": 1, "pipe": 1}, producerKinds={"audio": 1}),
        _router("c11", 11, 2, producers=1, consumers=1, clusterRouterId="C",
                transportTypes={"plain": 1, "pipe": 1}, producerKinds={"video": 1}),
        _router("solo", 12, 1, dataProducers=1),
    ]  # fmt: skip
    s1["routersOmitted"] = 1
    s1["pipesOmitted"] = 2
    s1["clientsOmitted"] = 3
    s1["pipes"] = [
        _on("p11", _end("pa", 11, ("127.0.0.1", 6000), ("127.0.0.1", 6001), consumers=1)),
        _on("p12", _end("pb", 12, ("127.0.0.1", 6001), ("127.0.0.1", 6000), producers=1)),
        _on("c11", _end("ca", 11, ("10.0.0.1", 4000), ("10.0.0.2", 5000), consumers=1)),
        _on("omitted", _end("x", 12, ("10.0.0.1", 4001), ("192.0.2.9", 7000), consumers=1)),
    ]
    s2 = _report("s2", [21], [], 100.0)
    s2["routers"] = [
        _router("c21", 21, 2, producers=1, consumers=1, clusterRouterId="C",
                transportTypes={"webrtc": 1, "pipe": 1}, producerKinds={"video": 1}),
        # A second router of the room on that worker (an app's own, so named): one place.
        _router("c21b", 21, 0, clusterRouterId="C"),
    ]  # fmt: skip
    s2["pipes"] = [
        _on("c21", _end("cb", 21, ("10.0.0.2", 5000), ("10.0.0.1", 4000), producers=1)),
    ]
    s2["clientsOmitted"] = 0  # nothing left out
    return build_view([_record("s1", "10.0.0.1"), _record("s2", "10.0.0.2")], [s1, s2], now=101)


def test_view_shows_each_room_where_it_lives_and_how_it_is_linked() -> None:
    view = _rooms_view()
    assert json.loads(json.dumps(view)) == view  # plain JSON, as --json and the page get it
    cluster, pool, solo = view["rooms"]  # the busiest first
    assert (cluster["kind"], cluster["id"], cluster["servers"]) == ("cluster", "C", ["s1", "s2"])
    assert (cluster["transports"], cluster["producers"], cluster["consumers"]) == (4, 2, 2)
    assert cluster["transportTypes"] == {"plain": 1, "pipe": 2, "webrtc": 1}
    assert cluster["producerKinds"] == {"video": 2}
    assert [(w["server"], w["worker"], w["routers"]) for w in cluster["workers"]] == [
        ("s1", 11, ["c11"]),
        ("s2", 21, ["c21", "c21b"]),
    ]
    s1_part, s2_part = cluster["workers"]
    assert (s1_part["pipes"], s1_part["pipedIn"], s1_part["pipedOut"]) == (1, 0, 1)
    assert (s2_part["pipes"], s2_part["pipedIn"], s2_part["pipedOut"]) == (1, 1, 0)
    assert s2_part["transportTypes"] == {"webrtc": 1, "pipe": 1}
    [link] = cluster["links"]
    assert link == {
        "a": {"server": "s1", "worker": 11},
        "b": {"server": "s2", "worker": 21},
        "aToB": 1,
        "bToA": 0,
        "pipes": 1,
    }
    assert (pool["kind"], pool["id"], pool["servers"]) == ("pool", "M", ["s1"])
    assert [(w["worker"], w["routers"], w["pipedIn"], w["pipedOut"]) for w in pool["workers"]] == [
        (11, ["p11"], 0, 1),
        (12, ["p12"], 1, 0),
    ]
    assert pool["producerKinds"] == {"audio": 2}
    [link] = pool["links"]
    assert (link["a"], link["b"], link["aToB"], link["bToA"]) == (
        {"server": "s1", "worker": 11},
        {"server": "s1", "worker": 12},
        1,
        0,
    )
    assert (solo["kind"], solo["id"], solo["transportTypes"], solo["links"]) == (
        "router",
        "solo",
        {},
        [],
    )
    [place] = solo["workers"]
    assert (place["worker"], place["dataProducers"], place["pipes"]) == (12, 1, 0)
    # The end on the router beyond s1's cap is in the cluster's links, in no room's.
    assert len(view["links"]) == 3
    # What a report left out beyond its caps: counted by server, said under its workers
    # (routers, clients and pipe ends alike), only when there is any.
    assert [s["pipesOmitted"] for s in view["servers"]] == [2, 0]
    assert [omitted(s) for s in view["servers"]] == ["1 router, 3 clients, 2 pipe ends", ""]
    singular = {**view["servers"][0], "routersOmitted": 2, "clientsOmitted": 1}
    assert omitted(singular) == "2 routers, 1 client, 2 pipe ends"  # type: ignore[arg-type]
    text = render_text(view)
    assert (
        "data 0/1\n  left out of its report (beyond its caps): 1 router, 3 clients, 2 pipe ends\n"
        "s2  mediasoup"
    ) in text
    assert text.count("left out") == 1
    assert text.endswith("(1 pipe)\n")
    assert (
        "rooms across workers\n"
        "  cluster C  servers s1, s2  transports 4 (webrtc 1, plain 1, pipe 2)  "
        "producers 2 (video 2)  consumers 2  data 0/0\n"
        "    s1/11  transports 2 (plain 1, pipe 1)  producers 1 (video 1)  consumers 1  "
        "data 0/0  pipes 1 (in 0, out 1)\n"
        "    s2/21  transports 2 (webrtc 1, pipe 1)  producers 1 (video 1)  consumers 1  "
        "data 0/0  pipes 1 (in 1, out 0)\n"
        "  pool M  servers s1  transports 4 (webrtc 2, pipe 2)  producers 2 (audio 2)  "
    ) in text
    assert "solo" not in text.split("rooms across workers")[1]  # on one worker
    assert "rooms across" not in render_text(view, routers=0)


# -- the probe, on real workers -------------------------------------------------------------


@pytest.fixture
async def probe() -> AsyncIterator[Probe]:
    probe = Probe(server_id="here")
    probe.start()
    yield probe
    probe.stop()


async def _worker() -> Worker:
    return await mediasoup.create_worker(log_level="warn")


async def test_probe_reports_workers_routers_and_a_link_between_two_workers(
    probe: Probe,
) -> None:
    worker1, worker2 = await _worker(), await _worker()
    try:
        router1 = await worker1.create_router(media_codecs=MEDIA_CODECS)
        router2 = await worker2.create_router(media_codecs=MEDIA_CODECS)
        send = await router1.create_plain_transport(
            listen_info={"protocol": "udp", "ip": "127.0.0.1"}
        )
        producer = await send.produce(kind="audio", rtp_parameters=opus_rtp_parameters(1111))
        await router1.pipe_to_router(producer_id=producer.id, router=router2)
        recv = await router2.create_plain_transport(
            listen_info={"protocol": "udp", "ip": "127.0.0.1"}
        )
        consumer = await recv.consume(
            producer_id=producer.id, rtp_capabilities=router2.rtp_capabilities
        )
        stats = await probe.sample()
        assert decode_stats(encode_stats(stats)) == stats  # what the probe says is valid
        by_pid = {w["pid"]: w for w in stats["workers"]}
        assert list(by_pid) == sorted([worker1.pid, worker2.pid])
        assert by_pid[worker1.pid]["cpu"] is None  # a first sample has no interval
        first_time = by_pid[worker1.pid]["cpuTime"]
        assert first_time is not None and first_time >= 0  # but it has the time so far
        w1, w2 = by_pid[worker1.pid], by_pid[worker2.pid]
        # worker1: the plain transport and the pipe, its producer and the pipe consumer
        assert (w1["routers"], w1["transports"], w1["producers"], w1["consumers"]) == (1, 2, 1, 1)
        assert (w2["routers"], w2["transports"], w2["producers"], w2["consumers"]) == (1, 2, 1, 1)
        routers = {r["id"]: r for r in stats["routers"]}
        assert routers[router1.id]["worker"] == worker1.pid
        assert routers[router2.id]["transports"] == 2
        assert len(stats["pipes"]) == 2 and stats["id"] == "here"
        view = build_view([_record("here", "127.0.0.1")], [stats])
        [link] = view["links"]
        ends = {(link["a"]["worker"], link["aToB"]), (link["b"]["worker"], link["bToA"])}  # type: ignore[index]
        assert ends == {(worker1.pid, 1), (worker2.pid, 0)}

        await asyncio.sleep(0.05)
        again = await probe.sample()
        assert all(w["cpu"] is not None and w["cpu"] >= 0 for w in again["workers"])
        # A counter: the time used so far, never less than the previous sample's.
        again_time = {w["pid"]: w["cpuTime"] for w in again["workers"]}[worker1.pid]
        assert again_time is not None and again_time >= first_time

        consumer.close()
        recv.close()
        after = {w["pid"]: w for w in probe.snapshot()["workers"]}
        assert (after[worker2.pid]["transports"], after[worker2.pid]["consumers"]) == (1, 0)
        router2.close()
        after = {w["pid"]: w for w in probe.snapshot()["workers"]}
        assert after[worker2.pid]["routers"] == 0
        # pipe_to_router's pair closes with either router (as mediasoup's): no end left.
        assert probe.snapshot()["pipes"] == []
        worker2.close()
        assert [w["pid"] for w in probe.snapshot()["workers"]] == [worker1.pid]
    finally:
        worker1.close()
        worker2.close()
        await asyncio.gather(worker1.wait_closed(), worker2.wait_closed())
    assert probe.snapshot()["workers"] == []


async def test_probe_reports_a_worker_that_died_without_cpu_then_drops_it(probe: Probe) -> None:
    worker = await _worker()
    try:
        await probe.sample()
        died = asyncio.ensure_future(worker.events.wait_for("died"))
        os.kill(worker.pid, signal.SIGKILL)
        async with asyncio.timeout(10):
            await died
        assert (await probe.sample())["workers"] == []
    finally:
        worker.close()
        await worker.wait_closed()


async def test_a_worker_closed_while_sampled_does_not_fail_the_sample(probe: Probe) -> None:
    worker = await _worker()
    try:
        sampling = asyncio.ensure_future(probe.sample())
        await asyncio.sleep(0)  # the sample has listed the workers, not yet asked them
        worker.close()  # its request fails (InvalidStateError): the report leaves it out
        assert (await sampling)["workers"] == []
    finally:
        worker.close()
        await worker.wait_closed()


async def test_probe_follows_only_from_start_and_add_worker_catches_up() -> None:
    probe = Probe(max_routers=2)
    earlier = await _worker()
    try:
        probe.start()
        probe.start()  # twice: one listener
        assert mediasoup.observer.listener_count("newworker") >= 1
        later = await _worker()
        try:
            assert [w["pid"] for w in probe.snapshot()["workers"]] == [later.pid]
            probe.add_worker(earlier)
            probe.add_worker(earlier)  # twice: followed once
            routers = [await earlier.create_router(media_codecs=MEDIA_CODECS) for _ in range(3)]
            await routers[1].create_direct_transport()
            snapshot = probe.snapshot()
            assert {w["pid"]: w["routers"] for w in snapshot["workers"]} == {
                earlier.pid: 3,
                later.pid: 0,
            }
            # Capped: the busiest routers are kept, the rest counted.
            assert snapshot["routersOmitted"] == 1
            assert snapshot["routers"][0]["id"] == routers[1].id
            probe.stop()
            probe.stop()
            third = await _worker()
            try:
                assert third.pid not in [w["pid"] for w in probe.snapshot()["workers"]]
            finally:
                # Waited for: a worker left exiting would be the next test's (its pipes
                # unclosed at the loop's end: EBUSY on uvloop; its pid seen live).
                third.close()
                await third.wait_closed()
        finally:
            later.close()
            await later.wait_closed()
    finally:
        probe.stop()
        earlier.close()
        await earlier.wait_closed()
    with pytest.raises(ValueError, match="max_routers"):
        Probe(max_routers=-1)
    with pytest.raises(ValueError, match="max_clients"):
        Probe(max_clients=-1)


async def test_probe_caps_pipe_ends_keeping_the_reported_routers_then_the_busiest() -> None:
    """Pipe ends beyond ``max_pipes`` are counted: those of the reported routers first
    (an idle one before busier ends of others), then the busiest, a pipe's two ends
    together; what stays is valid and its pipe still one link."""
    probe = Probe(max_routers=1, max_pipes=1)
    probe.start()
    worker1, worker2 = await _worker(), await _worker()
    listen: Any = {"protocol": "udp", "ip": "127.0.0.1"}
    try:
        kept = await worker1.create_router(media_codecs=MEDIA_CODECS)
        for ssrc in (1111, 2222, 3333):  # the busiest router: the one reported
            direct = await kept.create_direct_transport()
            await direct.produce(kind="audio", rtp_parameters=opus_rtp_parameters(ssrc))
        idle = await kept.create_pipe_transport(listen_info=listen)
        source = await worker1.create_router(media_codecs=MEDIA_CODECS)
        direct = await source.create_direct_transport()
        producer = await direct.produce(kind="audio", rtp_parameters=opus_rtp_parameters(4444))
        sink = await worker2.create_router(media_codecs=MEDIA_CODECS)
        await source.pipe_to_router(producer_id=producer.id, router=sink)  # a stream each
        await sink.create_pipe_transport(listen_info=listen)  # idle, on no reported router
        report = probe.snapshot()
        assert [r["id"] for r in report["routers"]] == [kept.id]
        assert ([p["transportId"] for p in report["pipes"]], report["pipesOmitted"]) == (
            [idle.id],
            3,
        )
        probe.max_pipes = 3
        report = probe.snapshot()
        assert decode_stats(encode_stats(report)) == report
        assert sorted(p["routerId"] for p in report["pipes"]) == sorted(
            [kept.id, source.id, sink.id]
        )
        assert report["pipesOmitted"] == 1
        view = build_view([_record("here", "127.0.0.1")], [report | {"id": "here"}])  # type: ignore[list-item]
        [pipe] = [link for link in view["links"] if link["b"] is not None]
        assert (pipe["aToB"] + pipe["bToA"], pipe["pipes"]) == (1, 1)
        assert view["servers"][0]["pipesOmitted"] == 1
        probe.max_pipes = 2000
        assert (len(probe.snapshot()["pipes"]), probe.snapshot()["pipesOmitted"]) == (4, 0)
    finally:
        probe.stop()
        worker1.close()
        worker2.close()
        await asyncio.gather(worker1.wait_closed(), worker2.wait_closed())
    with pytest.raises(ValueError, match="max_pipes"):
        Probe(max_pipes=-1)


def test_capped_pipe_ends_keep_a_pipes_two_ends_together() -> None:
    """Two pipes between this server's workers, as busy: the cap keeps both ends of one
    (a whole link) rather than an end of each (two links to nobody), whatever their ids."""
    from mafalda.monitor.probe import _pipes_kept

    ends = [
        _end("a", 11, ("127.0.0.1", 6000), ("127.0.0.1", 6003), consumers=1),
        _end("b", 11, ("127.0.0.1", 6001), ("127.0.0.1", 6002), consumers=1),
        _end("c", 12, ("127.0.0.1", 6002), ("127.0.0.1", 6001), producers=1),
        _end("d", 12, ("127.0.0.1", 6003), ("127.0.0.1", 6000), producers=1),
        _end("e", 12, ("127.0.0.1", 6004), None),
    ]
    assert [e["transportId"] for e in _pipes_kept(ends, set(), 2)] == ["a", "d"]
    assert [e["transportId"] for e in _pipes_kept(ends, {"r-e"}, 3)] == ["a", "d", "e"]


async def test_probe_reports_a_mafalda_pools_loads(probe: Probe) -> None:
    from mafalda.monitor.probe import pool_loads
    from mafalda.vertical import Mafalda

    pool = await Mafalda.start(num_workers=1, worker_settings={"log_level": "warn"})
    try:
        probe.loads = pool_loads(pool)
        router = await pool.create_router(media_codecs=MEDIA_CODECS)
        await router.create_direct_transport()
        [worker] = probe.snapshot()["workers"]
        [expected] = pool.stats()["workers"]
        assert (worker["pid"], worker["load"]) == (expected["pid"], expected["load"])
        assert worker["transports"] == 1
        assert "load" in render_text(
            build_view([_record("local", "127.0.0.1")], [probe.snapshot() | {"id": "local"}])
        )  # type: ignore[operator]
    finally:
        await pool.aclose()
    probe.loads = None
    assert probe.snapshot()["workers"] == []


async def test_probe_sees_a_mafalda_router_spanning_two_workers_as_a_link(probe: Probe) -> None:
    """A pool's own pipes between its workers (on loopback, made by Mafalda on demand)
    are a link between those workers of one server, with the stream it carries."""
    from mafalda.vertical import Mafalda

    pool = await Mafalda.start(
        num_workers=2, min_workers=2, policy="spread", worker_settings={"log_level": "warn"}
    )
    try:
        router = await pool.create_router(media_codecs=MEDIA_CODECS)
        source = await router.create_direct_transport()
        sink = await router.create_direct_transport()  # spread: the other worker
        data = await source.produce_data()
        await sink.consume_data(data_producer_id=data.id)
        pids = sorted(w.pid for w in pool.workers)
        report = {**(await probe.sample()), "id": "local"}
        view = build_view([_record("local", "127.0.0.1")], [report])  # type: ignore[list-item]
        [link] = view["links"]
        assert link["b"] is not None
        assert sorted([link["a"]["worker"], link["b"]["worker"]]) == pids
        assert link["a"]["server"] == link["b"]["server"] == "local"
        assert (link["aToB"] + link["bToA"], link["pipes"]) == (1, 1)
    finally:
        await pool.aclose()


async def test_probe_reports_a_pool_router_over_two_workers_as_one_room(probe: Probe) -> None:
    """A Mafalda router spanning two workers (a producer on one, its consumer on the
    other, a pipe between): one room, what it holds on each worker, the pipe as its link;
    named by the cluster router whose child it is once the probe knows the pool's."""
    from mafalda.monitor.probe import pool_rooms
    from mafalda.vertical import Mafalda

    pool = await Mafalda.start(
        num_workers=2, min_workers=2, policy="spread", worker_settings={"log_level": "warn"}
    )
    worker = await _worker()
    try:
        router = await pool.create_router(
            media_codecs=MEDIA_CODECS, app_data={"clusterRouterId": "room-1"}
        )
        listen: Any = {"protocol": "udp", "ip": "127.0.0.1"}
        send = await router.create_plain_transport(listen_info=listen)
        producer = await send.produce(kind="audio", rtp_parameters=opus_rtp_parameters(3333))
        recv = await router.create_plain_transport(listen_info=listen)  # spread: the other
        await recv.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
        # A cluster router's child on a mediasoup server names it; other app_data does not.
        child = await worker.create_router(
            media_codecs=MEDIA_CODECS, app_data={"clusterRouterId": "room-2"}
        )
        for ssrc in (4444, 5555):  # producers on two of its transports: audio, video
            direct = await child.create_direct_transport()
            await direct.produce(kind="audio", rtp_parameters=opus_rtp_parameters(ssrc))
        vp8 = {"mimeType": "video/VP8", "payloadType": 101, "clockRate": 90000}
        await direct.produce(
            kind="video", rtp_parameters={"codecs": [vp8], "encodings": [{"ssrc": 6666}]}
        )
        await worker.create_router(app_data={"clusterRouterId": "x" * 101})
        await worker.create_router(app_data={"mafaldaRouterId": 5})
        report = await probe.sample()
        assert decode_stats(encode_stats(report)) == report  # what the probe says is valid
        view = build_view([_record("here", "127.0.0.1")], [report])
        [room] = [r for r in view["rooms"] if len(r["workers"]) > 1]
        assert (room["kind"], room["id"], room["servers"]) == ("pool", router.id, ["here"])
        by_pid = {w["worker"]: w for w in room["workers"]}
        assert sorted(by_pid) == sorted(w.pid for w in pool.workers)
        sender = next(w for w in by_pid.values() if w["pipedOut"])
        receiver = next(w for w in by_pid.values() if w["pipedIn"])
        assert sender["transportTypes"] == receiver["transportTypes"] == {"plain": 1, "pipe": 1}
        assert (sender["producerKinds"], sender["consumers"], sender["pipes"]) == (
            {"audio": 1},
            1,
            1,
        )
        # The receiver's producer is the copy piped in, its consumer the application's.
        assert (receiver["producerKinds"], receiver["consumers"], receiver["pipedOut"]) == (
            {"audio": 1},
            1,
            0,
        )
        [link] = room["links"]
        assert (link["pipes"], link["aToB"] + link["bToA"]) == (1, 1)
        assert {link["a"]["worker"], link["b"]["worker"]} == set(by_pid)  # type: ignore[index]
        alone = [r for r in view["rooms"] if r["workers"][0]["worker"] == worker.pid]
        assert sorted(r["kind"] for r in alone) == ["cluster", "router", "router"]
        [room2] = [r for r in alone if r["kind"] == "cluster"]
        assert room2["id"] == "room-2" and room2["transportTypes"] == {"direct": 2}
        assert room2["producerKinds"] == {"audio": 2, "video": 1}

        probe.rooms = pool_rooms(pool)  # as `mafalda serve --mafalda` sets it
        view = build_view([_record("here", "127.0.0.1")], [probe.snapshot()])
        [room] = [r for r in view["rooms"] if len(r["workers"]) > 1]
        assert (room["kind"], room["id"], room["producers"]) == ("cluster", "room-1", 2)
    finally:
        worker.close()
        await asyncio.gather(pool.aclose(), worker.wait_closed())


def test_probe_reports_clients_connected_and_busiest_first() -> None:
    clients = [
        {"address": None, "connected": False, "objects": 9},
        {"address": "10.0.0.7", "connected": True, "objects": 1},
        {"address": "10.0.0.8", "connected": True, "objects": 4},
    ]
    snapshot = Probe(clients=lambda: clients, max_clients=2).snapshot()  # type: ignore[arg-type,return-value]
    assert [c["address"] for c in snapshot["clients"]] == ["10.0.0.8", "10.0.0.7"]
    assert snapshot["clientsOmitted"] == 1
    assert Probe().snapshot()["clients"] == []


# -- Redis: reporter, monitor, `mafalda serve --cluster`, the CLI, the page -------------------


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisProcess]:
    if not HAVE_REDIS:
        pytest.skip("redis-server is not installed")
    server = RedisProcess()
    server.start()
    yield server
    server.kill()


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def _wait_view(mon: monitor.Monitor, predicate: Any, timeout: float = 15.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            view = await mon.view()
            if predicate(view):
                return view
            await asyncio.sleep(0.1)


@needs_redis
async def test_a_reporter_that_cannot_report_keeps_no_connection(
    redis_server: RedisProcess, probe: Probe
) -> None:
    """Redis refuses the report (an ACL user without SET; read-only or out of memory
    alike): start() fails and the reporter's Redis connection is closed (it used to stay
    open: ``async with`` calls no aclose() when start() fails). It may start again."""
    db: aioredis.Redis = aioredis.from_url(redis_server.url)
    url = await redis_server.refusing_writes(db)

    async def none_connected() -> bool:
        return await redis_server.connections_of(db) == 0

    try:
        reporter = Reporter(probe, redis_url=url, server_id="p1", interval=60)
        with pytest.raises(OSError, match="cannot report to Redis"):
            async with reporter:
                pass
        await _until(none_connected)
        await redis_server.allow_writes(db)
        await reporter.start()  # allowed now
        assert await db.get(stats_key("p1")) is not None
        await reporter.aclose()
        await _until(none_connected)
    finally:
        await db.aclose()


@needs_redis
async def test_reporter_publishes_and_monitor_ignores_junk(
    redis_server: RedisProcess, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    db: aioredis.Redis = aioredis.from_url(redis_server.url)
    worker = await _worker()
    try:
        await db.set(registry.server_key("p1"), registry.encode_record(_record("p1", "127.0.0.1")))
        async with Reporter(probe, redis_url=redis_server.url, server_id="p1", interval=0.2) as rep:
            assert probe.server_id == "p1"
            assert 500 <= await db.pttl(rep.key) <= 600  # three intervals
            # Junk anyone could write under the prefix is left out, said once per key.
            await db.set(stats_key("junk"), "{")
            await db.set(stats_key("other"), encode_stats(_report("p1", [1], [], 1.0)))
            await db.set(registry.server_key("bad"), "[]")
            await db.set(  # a record under another server's key
                registry.server_key("q"), registry.encode_record(_record("p1", "127.0.0.9"))
            )
            await db.set("mafalda:server:a:b", "{}")
            async with await monitor.connect(redis_server.url, interval=0.1) as mon:
                with caplog.at_level(logging.WARNING, "mafalda.monitor"):
                    view = await _wait_view(
                        mon, lambda v: v["servers"] and v["servers"][0]["workers"]
                    )
                    await mon.view()
                [server] = view["servers"]
                assert server["id"] == "p1" and server["reported"]
                assert server["mediaAddress"] == "127.0.0.1"
                assert [w["pid"] for w in server["workers"]] == [worker.pid]
                warned = [r.getMessage() for r in caplog.records]
                assert sum("mafalda:stats:junk" in m for m in warned) == 1
                assert sum("mafalda:server:bad" in m for m in warned) == 1
                # The CPU comes with the second sample.
                view = await _wait_view(
                    mon, lambda v: v["servers"][0]["workers"][0]["cpu"] is not None
                )
        assert await db.get(stats_key("p1")) is None  # deleted on close
        await rep.aclose()  # twice: nothing more
    finally:
        worker.close()
        await worker.wait_closed()
        await db.aclose()
    with pytest.raises(ValueError, match="interval"):
        Reporter(probe, redis_url=redis_server.url, server_id="p1", interval=0)
    with pytest.raises(ValueError, match="interval"):
        monitor.Monitor(redis_server.url, interval=-1)
    with pytest.raises(ValueError, match="interval"):
        monitor.LocalMonitor(probe, record=lambda: _record("x", "127.0.0.1"), interval=0)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_page_password_header_and_options() -> None:
    """What an Authorization header gives (Basic: any user, a colon in the password
    kept; Bearer), and the page's options refused before anything binds."""
    assert password_of(_basic("anyone", "pa:ss")) == "pa:ss"
    assert password_of(_basic("", "x")) == "x"
    assert password_of("bearer  tok ") == "tok"
    for header in ("", "Basic", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()):
        assert password_of(header) is None
    assert password_of("Basic " + base64.b64encode(b"\xff:x").decode()) is None  # not UTF-8
    assert password_of("Digest x") is None
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        check_page_options(host, None)  # only this machine reaches it
    for host in ("0.0.0.0", "::", "10.0.0.1", "monitor.example"):
        with pytest.raises(ValueError, match=f"on {host} could be read from other machines"):
            check_page_options(host, None)
        check_page_options(host, "secret")
    for bad in ("", 123):
        with pytest.raises(ValueError, match="password must be a non-empty string"):
            check_page_options("127.0.0.1", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--web-password"):
        MonitorWeb(
            monitor.LocalMonitor(Probe(), record=lambda: _record("x", "127.0.0.1")), host="0.0.0.0"
        )


async def test_page_with_a_password_over_https(probe: Probe, tmp_path: Path) -> None:
    """A page on every interface (so on 127.0.0.1 too) with a password and a certificate:
    every route refuses without the password (401 and a Basic challenge, which browsers
    prompt for), takes it as Basic with any user or as Bearer, over HTTPS only."""
    ca, cert, key = tls_files(tmp_path)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    client_side = ssl.create_default_context(cafile=ca)
    local = monitor.LocalMonitor(probe, record=lambda: _record("here", "127.0.0.1"), interval=0.1)
    async with (
        MonitorWeb(local, host="0.0.0.0", port=0, password="s3cret", ssl=server_side) as page,
        aiohttp.ClientSession() as http,
    ):
        assert page.url.startswith("https://0.0.0.0:")
        url = f"https://127.0.0.1:{page.port}/"
        for path in ("", "view", "events", "metrics", "nothing"):
            for headers in ({}, {"Authorization": _basic("u", "wrong")}, {"Authorization": "x"}):
                async with http.get(url + path, headers=headers, ssl=client_side) as got:
                    assert got.status == 401
                    assert got.headers["WWW-Authenticate"].startswith('Basic realm="Mafalda')
        auth = {"Authorization": _basic("whoever", "s3cret")}
        async with http.get(url, headers=auth, ssl=client_side) as got:
            assert got.status == 200 and "EventSource" in await got.text()
        bearer = {"Authorization": "Bearer s3cret"}
        async with http.get(url + "view", headers=bearer, ssl=client_side) as got:
            assert (await got.json())["servers"][0]["id"] == "here"
        async with http.get(url + "events", headers=auth, ssl=client_side) as got:
            async for line in got.content:
                if line.startswith(b"data: "):
                    assert json.loads(line[6:])["servers"][0]["id"] == "here"
                    break
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(url, headers=auth)  # the system's authorities: not ours
        with pytest.raises(aiohttp.ClientError):
            await http.get(f"http://127.0.0.1:{page.port}/view", headers=auth)  # plain HTTP


@needs_redis
async def test_monitor_and_reporter_ride_out_a_redis_restart(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "mafalda.monitor")
    key = stats_key("r1")
    async with (
        await monitor.connect(redis_server.url, interval=0.1) as mon,
        Reporter(Probe(), redis_url=redis_server.url, server_id="r1", interval=0.1),
    ):
        views = mon.views()
        assert (await anext(views))["servers"] == []
        redis_server.kill()
        reporter = Reporter(Probe(), redis_url=redis_server.url, server_id="x", interval=0.1)
        with pytest.raises(OSError, match="cannot report to Redis"):
            await reporter.start()
        await reporter.aclose()
        waiting = asyncio.ensure_future(anext(views))
        # The page's JSON says why it has no view (not a bare 500).
        async with MonitorWeb(mon, port=0) as page, aiohttp.ClientSession() as http:
            for path in ("view", "metrics"):  # no stale figures for Prometheus either
                async with http.get(page.url + path) as got:
                    assert got.status == 503
                    assert (await got.text()).startswith("cannot read the cluster's Redis: ")
        await asyncio.sleep(0.5)
        assert not waiting.done()  # nothing while Redis is down
        redis_server.start()
        async with asyncio.timeout(10):
            assert (await waiting)["servers"] == []
        await views.aclose()
        # The running reporter published again once Redis was back (its data was lost).
        db: aioredis.Redis = aioredis.from_url(redis_server.url)
        try:
            await _until(lambda: db.exists(key))
        finally:
            await db.aclose()
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("report to Redis failed") for m in messages) == 1
    # Once per reader (this test's views() and the page's), not once per interval.
    assert sum(m.startswith("reading Redis failed") for m in messages) == 2
    assert "reporting to Redis again" in messages
    with pytest.raises(OSError, match="cannot reach Redis"):
        await monitor.connect(redis_server.url.replace(str(redis_server.port), "1"))


@needs_redis
async def test_monitor_shows_a_room_across_two_servers(redis_server: RedisProcess) -> None:
    """Two `mafalda serve --cluster` processes (s1 serving a Mafalda pool): a producer on
    s1, its consumer on s2; the monitor sees both servers' workers, the s1 -> s2 link and
    the cluster router as one room on both; a killed server leaves."""
    procs = []
    for index, extra in ((1, ("--mafalda", "--num-workers", "1")), (2, ())):
        command = serve_command(redis_server.url, index, 0.3, *extra)
        procs.append((await spawn_serve(command))[0])
    cluster = await horizontal.connect(redis_server.url, token=TOKEN, interval=0.2, grace=3.0)
    try:
        router = await cluster.create_router(media_codecs=MEDIA_CODECS)
        send = await router.create_plain_transport(
            server="s1", listen_info={"protocol": "udp", "ip": "127.0.0.2"}, comedia=True
        )
        producer = await send.produce(kind="audio", rtp_parameters=opus_rtp_parameters(2222))
        recv = await router.create_plain_transport(
            server="s2", listen_info={"protocol": "udp", "ip": "127.0.0.3"}
        )
        await recv.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
        async with await monitor.connect(redis_server.url, interval=0.1) as mon:

            def linked(view: Any) -> bool:
                # Each server samples on its own clock: wait until both have seen it all.
                totals = [s["totals"] for s in view["servers"]]
                if [(t["producers"], t["consumers"]) for t in totals] != [(1, 1), (1, 1)]:
                    return False
                return any(
                    link["b"] is not None
                    and {link["a"]["server"], link["b"]["server"]} == {"s1", "s2"}
                    and link["aToB"] + link["bToA"] == 1
                    for link in view["links"]
                )

            view = await _wait_view(mon, linked)
            s1, s2 = view["servers"]
            assert (s1["id"], s2["id"]) == ("s1", "s2")
            assert s1["totals"]["producers"] == 1 and s1["totals"]["transports"] == 2
            assert s2["totals"]["consumers"] == 1 and s2["totals"]["producers"] == 1
            [link] = [x for x in view["links"] if x["b"] is not None]
            assert (link["a"]["server"], link["aToB"], link["bToA"]) == ("s1", 1, 0)
            assert link["a"]["worker"] == s1["workers"][0]["pid"]
            assert link["b"]["worker"] == s2["workers"][0]["pid"]  # type: ignore[index]
            # One room: the cluster router, a Mafalda router's child on s1 (named through
            # the pool), a worker's router on s2, with the link between them.
            [room] = [r for r in view["rooms"] if r["id"] == router.id]
            assert (room["kind"], room["servers"]) == ("cluster", ["s1", "s2"])
            assert [w["pipedOut"] for w in room["workers"]] == [1, 0]
            assert room["producerKinds"] == {"audio": 2} and room["links"] == [link]
            # This test's cluster client is each server's one client.
            for server in (s1, s2):
                [client] = server["clients"]
                assert client["connected"] and client["objects"] >= 3  # worker, router...
                assert client["address"] is not None and client["address"].startswith("127.")

            procs[1].kill()
            await reap(procs[1])
            view = await _wait_view(mon, lambda v: [s["id"] for s in v["servers"]] == ["s1"])
            assert all(link["b"] is None for link in view["links"])
    finally:
        await cluster.aclose()
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await reap(proc)


@needs_redis
async def test_monitor_command_and_page(redis_server: RedisProcess, probe: Probe) -> None:
    worker = await _worker()
    db: aioredis.Redis = aioredis.from_url(redis_server.url)
    await db.set(registry.server_key("w1"), registry.encode_record(_record("w1", "127.0.0.1")))
    try:
        async with Reporter(probe, redis_url=redis_server.url, server_id="w1", interval=0.2):
            command = [sys.executable, "-m", "mafalda.cli", "monitor", redis_server.url]
            once = await asyncio.create_subprocess_exec(*command, "--once", stdout=subprocess.PIPE)
            text, _ = await once.communicate()
            await reap(once)  # its pipes closed before the loop ends (EBUSY on uvloop)
            assert once.returncode == 0
            assert f"  worker {worker.pid}  cpu" in text.decode()
            as_json = await asyncio.create_subprocess_exec(
                *command, "--once", "--json", stdout=subprocess.PIPE
            )
            out, _ = await as_json.communicate()
            await reap(as_json)
            assert json.loads(out)["servers"][0]["workers"][0]["pid"] == worker.pid

            async with (
                await monitor.connect(redis_server.url, interval=0.1) as mon,
                MonitorWeb(mon, port=0) as page,
                aiohttp.ClientSession() as http,
            ):
                async with http.get(page.url) as response:
                    assert "EventSource" in await response.text()
                async with http.get(page.url + "view") as response:
                    assert (await response.json())["servers"][0]["id"] == "w1"
                async with http.get(page.url + "events") as response:
                    seen = []
                    async for line in response.content:
                        if line.startswith(b"data: "):
                            seen.append(json.loads(line[6:])["time"])
                            if len(seen) == 2:
                                break
                    assert seen[1] > seen[0]  # a fresh view each interval
                # A page that went away: the stream ends with the next view.
                await asyncio.sleep(0.3)
                # Another page on the same port cannot start: the error, nothing left.
                taken = MonitorWeb(mon, port=page.port)
                with pytest.raises(OSError):
                    await taken.start()
            await MonitorWeb(mon).aclose()  # never started: nothing to stop
    finally:
        worker.close()
        await worker.wait_closed()
        await db.aclose()


async def _terminate(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM, then its exit code (within 30 s)."""
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        return await reap(proc)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await reap(proc)


@needs_redis
async def test_monitor_command_serves_the_page_until_sigterm(redis_server: RedisProcess) -> None:
    port = free_ports(1)  # bound later by the process: below the ephemeral range
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "mafalda.cli", "monitor", redis_server.url],
        *["--web", "--port", str(port), "--interval", "0.2"],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        assert line.strip() == f"Mafalda monitor on http://127.0.0.1:{port}/"
        async with aiohttp.ClientSession() as http, http.get(line.split()[-1] + "view") as got:
            assert (await got.json())["servers"] == []
        assert await _terminate(proc) == 0
    finally:
        await _kill(proc)


def _without_password() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MAFALDA_MONITOR_PASSWORD"}


async def _exit_of(*command: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_without_password()
    )
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
        return await reap(proc), err.decode()


async def test_commands_refuse_a_reachable_page_without_a_password() -> None:
    """`mafalda serve --monitor-host` / `mafalda monitor --web --host` on an address
    other machines reach, with no password: exit code 2 naming the option, before a
    worker or a connection starts (the Redis URL here answers nothing)."""
    cli = [sys.executable, "-m", "mafalda.cli"]
    code, err = await _exit_of(
        *cli, "serve", "--token", TOKEN, "--port", "0", "--mafalda", "--num-workers", "1",
        "--monitor-port", "0", "--monitor-host", "0.0.0.0",
    )  # fmt: skip
    assert code == 2
    assert "monitor page on 0.0.0.0 could be read from other machines" in err
    assert "--monitor-password" in err and "Traceback" not in err
    code, err = await _exit_of(
        *cli, "monitor", "redis://127.0.0.1:1", "--web", "--host", "10.0.0.1", "--port", "0"
    )
    assert code == 2 and "--web-password" in err and "Traceback" not in err


async def test_serve_monitor_page_with_a_password_over_https(tmp_path: Path) -> None:
    """`mafalda serve --tls-cert --monitor-password`: the page on every interface, over
    HTTPS with the server's certificate, asks for the password."""
    ca, cert, key = tls_files(tmp_path)
    port = free_ports(1)  # bound later on every interface: none an outgoing connection takes
    proc, url = await spawn_serve(
        [
            *[sys.executable, "-m", "mafalda.cli", "serve", "--port", "0", "--token", TOKEN],
            *["--tls-cert", cert, "--tls-key", key, "--monitor-port", str(port)],
            *["--monitor-host", "0.0.0.0", "--monitor-password", "pw"],
        ]
    )
    try:
        assert url.startswith("wss://")
        assert proc.stdout is not None
        line = (await proc.stdout.readline()).decode().strip()
        assert line == f"Mafalda monitor on https://0.0.0.0:{port}/"
        trusted = ssl.create_default_context(cafile=ca)
        view_url = f"https://127.0.0.1:{port}/view"
        async with aiohttp.ClientSession() as http:
            async with http.get(view_url, ssl=trusted) as got:
                assert got.status == 401
            auth = {"Authorization": _basic("admin", "pw")}
            async with http.get(view_url, ssl=trusted, headers=auth) as got:
                assert (await got.json())["servers"][0]["id"] == "local"
        assert await _terminate(proc) == 0
    finally:
        await _kill(proc)


@needs_redis
async def test_monitor_command_page_with_a_password_over_https(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    """`mafalda monitor --web --web-cert --web-key`, the password from
    MAFALDA_MONITOR_PASSWORD."""
    ca, cert, key = tls_files(tmp_path)
    port = free_ports(1)  # bound later on every interface: none an outgoing connection takes
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "mafalda.cli", "monitor", redis_server.url, "--web"],
        *["--host", "0.0.0.0", "--port", str(port), "--web-cert", cert, "--web-key", key],
        stdout=subprocess.PIPE,
        env=_without_password() | {"MAFALDA_MONITOR_PASSWORD": "from env"},
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode().strip()
        assert line == f"Mafalda monitor on https://0.0.0.0:{port}/"
        trusted = ssl.create_default_context(cafile=ca)
        async with aiohttp.ClientSession() as http:
            url = f"https://127.0.0.1:{port}/view"
            async with http.get(url, ssl=trusted, headers={"Authorization": "Bearer x"}) as got:
                assert got.status == 401
            bearer = {"Authorization": "Bearer from env"}
            async with http.get(url, ssl=trusted, headers=bearer) as got:
                assert (await got.json())["servers"] == []
        assert await _terminate(proc) == 0
    finally:
        await _kill(proc)


@needs_redis
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing")
async def test_page_in_chromium(redis_server: RedisProcess, probe: Probe) -> None:
    """The page as a browser runs it, behind its password: rows for the server and its
    worker, the link map, updated by the event stream, no script error."""
    from playwright.async_api import async_playwright

    worker = await _worker()
    db: aioredis.Redis = aioredis.from_url(redis_server.url)
    await db.set(registry.server_key("b1"), registry.encode_record(_record("b1", "127.0.0.1")))
    probe.clients = lambda: [{"address": "127.0.0.9", "connected": False, "objects": 2}]
    try:
        router1 = await worker.create_router(media_codecs=MEDIA_CODECS)
        router2 = await worker.create_router(media_codecs=MEDIA_CODECS)
        direct = await router1.create_direct_transport()
        data = await direct.produce_data()
        await router1.pipe_to_router(data_producer_id=data.id, router=router2, keep_id=False)
        async with (
            Reporter(probe, redis_url=redis_server.url, server_id="b1", interval=0.2),
            await monitor.connect(redis_server.url, interval=0.2) as mon,
            MonitorWeb(mon, port=0, password="pw") as page_server,
            async_playwright() as playwright,
        ):
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                # The browser answers the Basic challenge (as a user typing it in would),
                # then sends it again on the page's /events stream.
                credentials: Any = {"username": "me", "password": "pw"}
                page = await (await browser.new_context(http_credentials=credentials)).new_page()
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                await page.goto(page_server.url)
                await page.wait_for_selector(f"tr.worker[data-worker='{worker.pid}']")
                row = await page.inner_text("tr.server[data-server='b1']")
                assert "1 (1 away)" in row  # the client, away
                assert "links" in (await page.inner_text("#status"))
                assert await page.locator("#routers tbody tr.router").count() == 2
                assert router1.id in await page.inner_text("#routers tbody")
                # The pipe between the two routers of one worker: a link to itself.
                assert await page.locator("#links tbody tr").count() == 1
                links = await page.inner_text("#links tbody")
                assert f"b1/{worker.pid}" in links
                first = await page.inner_text("#status")
                await page.wait_for_function(
                    "(first) => document.getElementById('status').textContent !== first",
                    arg=first,
                )
                assert errors == []
            finally:
                await browser.close()
    finally:
        worker.close()
        await worker.wait_closed()
        await db.aclose()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing")
async def test_page_opens_a_routers_room() -> None:
    """The busiest routers' rows name their room and open (and close) to its detail:
    what it holds on each server's worker and its links, kept open as views come."""
    from playwright.async_api import async_playwright

    view = _rooms_view()
    async with async_playwright() as playwright:
        browser, page, errors = await _history_page(playwright)
        try:
            await page.route("http://monitor.test/**", _page_alone)
            await page.goto("http://monitor.test/")
            await page.evaluate("(view) => render(view)", view)
            row = page.locator("#routers tr.router[data-router='s1/c11']")
            assert "cluster C, 2 workers" in await row.inner_text()
            assert await page.locator("#routers tr.detail").count() == 0
            await row.locator("button.toggle").click()
            detail = page.locator("#routers tr.detail[data-router='s1/c11']")
            assert "cluster room C — servers s1, s2, workers 2" in await detail.inner_text()
            places = detail.locator("tr.place")
            assert await places.count() == 2
            assert (await places.nth(1).inner_text()).split("\t") == [
                "s2/21",
                "c21, c21b",
                "2 (webrtc 1, pipe 1)",
                "1 (video 1)",
                "1",
                "0/0",
                "1 (1 / 0)",
            ]
            links = await detail.locator("ul.room-links li").all_inner_texts()
            assert links == ["s1/11 → s2/21: 1 streams, 0 back (1 pipe)"]
            # The next view redraws the table: the row stays open; a click closes it.
            await page.evaluate("(view) => render(view)", {**view, "time": view["time"] + 2})
            assert await page.locator("#routers tr.detail").count() == 1
            await row.locator("button.toggle").click()
            assert await page.locator("#routers tr.detail").count() == 0
            # What s1's report left out, under its workers; s2's left out nothing.
            rows = "(rows) => rows.map((r) => r.className)"
            assert await page.locator("#servers tbody tr").evaluate_all(rows) == [
                "server", "worker", "worker", "omitted", "server", "worker",
            ]  # fmt: skip
            assert await page.inner_text("#servers tr.omitted") == (
                "left out of its report (beyond its caps): 1 router, 3 clients, 2 pipe ends"
            )
            solo = page.locator("#routers tr.router[data-router='s1/solo']")
            await solo.locator("button.toggle").click()
            solo_detail = await page.inner_text("#routers tr.detail[data-router='s1/solo']")
            assert "router solo — servers s1, workers 1" in solo_detail
            assert "no pipes" in solo_detail
            one = {"routersOmitted": 2, "clientsOmitted": 1, "pipesOmitted": 0}
            singular = {**view, "servers": [{**s, **one} for s in view["servers"]]}
            await page.evaluate("(view) => render(view)", singular)
            assert (
                await page.locator("#servers tr.omitted").all_inner_texts()
                == ["left out of its report (beyond its caps): 2 routers, 1 client"] * 2
            )
            none = {"routersOmitted": 0, "clientsOmitted": 0, "pipesOmitted": 0}
            uncapped = {**view, "servers": [{**s, **none} for s in view["servers"]]}
            await page.evaluate("(view) => render(view)", uncapped)
            assert await page.locator("#servers tr.omitted").count() == 0
            assert errors == []
        finally:
            await browser.close()


# -- the page's history (kept in the browser only) -------------------------------------------


def _history_view(
    time: float,
    servers: dict[str, tuple[float, dict[int, float | None]]],
    unreported: tuple[str, ...] = (),
) -> Any:
    """A view at ``time`` of the ``servers``: by id, its load and its workers' CPU by pid
    (none for those ``unreported``: in the registry, their report missing)."""
    records, reports = [], []
    for server_id, (load, cpus) in servers.items():
        records.append(_record(server_id, "127.0.0.1", load=load))
        if server_id in unreported:
            continue
        report = _report(server_id, list(cpus), [], time)
        for worker in report["workers"]:
            worker["cpu"] = cpus[worker["pid"]]
        reports.append(report)
    return build_view(records, reports, now=time)


async def _sparks(page: Any) -> dict[tuple[str, str], tuple[list[float], list[Any]]]:
    """The page's sparklines: by (server or server/worker, figure), their times and values."""
    found = await page.evaluate(
        """() => [...document.querySelectorAll("svg.spark")].map(
            (s) => [s.dataset.of, s.dataset.series, s.dataset.times, s.dataset.values])"""
    )
    return {(of, series): (json.loads(t), json.loads(v)) for of, series, t, v in found}


async def _history_page(playwright: Any) -> tuple[Any, Any, list[str]]:
    browser = await playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
    )
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return browser, page, errors


async def _page_alone(route: Any) -> None:
    """The page, with no monitor behind it: its event stream answers 204, which browsers
    do not retry (views are fed to its render() directly)."""
    if route.request.url.endswith("/events"):
        await route.fulfill(status=204)
    else:
        await route.fulfill(body=PAGE.read_text(), content_type="text/html")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing")
async def test_page_history_is_bounded_and_follows_the_view() -> None:
    """The page's history fed views directly (no monitor; its event stream answers 204,
    which browsers do not retry): the last 300 views, no older than 10 minutes, a null
    CPU breaking the line, a view sent again not counted twice, and a server or worker
    that leaves the view losing its history (starting afresh when it comes back)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser, page, errors = await _history_page(playwright)
        try:
            await page.route("http://monitor.test/**", _page_alone)
            await page.goto("http://monitor.test/")

            def feed(views: list[Any]) -> Any:
                return page.evaluate("(views) => views.forEach((view) => render(view))", views)

            t0 = 1_700_000_000.0

            def both(i: int) -> dict[str, tuple[float, dict[int, float | None]]]:
                return {"a": (i / 1000, {11: i / 2000}), "b": (0.5, {21: 0.25})}

            await feed([_history_view(t0 + i, both(i)) for i in range(400)])
            sparks = await _sparks(page)
            assert set(sparks) == {
                ("a", "load"), ("a", "clients"), ("a/11", "cpu"),
                ("b", "load"), ("b", "clients"), ("b/21", "cpu"),
            }  # fmt: skip
            times, loads = sparks[("a", "load")]
            assert times == [t0 + i for i in range(100, 400)]  # the last 300 views
            assert loads == [i / 1000 for i in range(100, 400)]
            assert sparks[("a/11", "cpu")][1] == [i / 2000 for i in range(100, 400)]
            assert sparks[("a", "clients")][1] == [3] * 300  # two reported, one omitted
            assert await page.evaluate("past.servers.get('a').times.length") == 300

            # One view every 5 s: only the last 10 minutes are kept (121 views).
            late = [t0 + 399 + 5 * k for k in range(1, 201)]
            await feed([_history_view(t, both(400)) for t in late])
            times, loads = (await _sparks(page))[("a", "load")]
            assert times == late[79:] and times[0] == times[-1] - 600
            # Sent again (the stream reconnected): the same view is not a new point.
            await feed([_history_view(late[-1], both(400))])
            assert (await _sparks(page))[("a", "load")][0] == late[79:]

            # b and a's worker 11 leave the view: their history goes with them.
            now = late[-1]
            await feed([_history_view(now + 1, {"a": (0.1, {12: None})})])
            sparks = await _sparks(page)
            assert set(sparks) == {("a", "load"), ("a", "clients"), ("a/12", "cpu")}
            assert await page.evaluate("[[...past.servers.keys()], [...past.workers.keys()]]") == [
                ["a"],
                ["a/12"],
            ]
            cpus: list[float | None] = [0.5, 0.75, None, 0.25]
            await feed(
                [_history_view(now + 2 + i, {"a": (0.1, {12: cpu})}) for i, cpu in enumerate(cpus)]
            )
            # They come back (and a/12 leaves): afresh, from this view on.
            await feed([_history_view(now + 9, both(1))])
            sparks = await _sparks(page)
            assert sparks[("b", "load")] == ([now + 9], [0.5])
            assert sparks[("a/11", "cpu")] == ([now + 9], [0.0005])
            assert ("a/12", "cpu") not in sparks
            # So does a/12, with its CPU unknown (null) at times: the line breaks there.
            await feed(
                [_history_view(now + 10 + i, {"a": (0.1, {12: cpu})}) for i, cpu in enumerate(cpus)]
            )
            assert (await _sparks(page))[("a/12", "cpu")] == (
                [now + 10, now + 11, now + 12, now + 13],
                cpus,
            )
            path = await page.get_attribute("svg.spark[data-of='a/12'] path.line", "d")
            assert path is not None and path.count("M") == 2 and path.count("L") == 1
            # the newest on the right, 0.25 of 18 px up: a lone point, drawn as a dot
            assert path.endswith("M101.0,14.5h0")
            assert errors == []
        finally:
            await browser.close()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing")
async def test_page_history_gaps_unknowns_and_its_points_argument() -> None:
    """Points are placed by time: a pause in the views breaks the line; a server whose
    report is missing keeps its workers' history (a gap) and its clients unknown; a clock
    set back starts a history afresh; ``?points=`` takes a whole number from 2 to 3600,
    and anything else means 300."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser, page, errors = await _history_page(playwright)
        try:
            await page.route("http://monitor.test/**", _page_alone)
            for asked, points in (
                ("", 300), ("10", 10), ("2", 2), ("3600", 3600), ("1", 300), ("0", 300),
                ("-5", 300), ("3601", 300), ("10.5", 300), ("abc", 300), ("0x10", 300),
                ("1e3", 300),
            ):  # fmt: skip
                await page.goto(f"http://monitor.test/?points={asked}")
                assert await page.evaluate("POINTS") == points, asked
            await page.goto("http://monitor.test/?points=60")

            def feed(views: list[Any]) -> Any:
                return page.evaluate("(views) => views.forEach((view) => render(view))", views)

            async def line(of: str) -> str:
                path = await page.get_attribute(f"svg.spark[data-of='{of}'] path.line", "d")
                assert path is not None
                return path

            t0 = 1_700_000_000.0
            # A view a second, then none for 30 s (Redis unreadable, say), then again.
            times = [t0 + i for i in range(10)] + [t0 + 40 + i for i in range(10)]
            await feed([_history_view(t, {"a": (0.5, {11: 0.5})}) for t in times])
            path = await line("a/11")
            assert path.count("M") == 2 and path.count("L") == 18  # two runs of 10 points
            # The axis spans 59 usual steps (60 points): the first run starts 49 s back.
            assert path.startswith(f"M{1 + 100 - 49 / 59 * 100:.1f},")
            # a's report goes missing for two views: its clients unknown, its worker's
            # CPU a gap, its history kept; then it is back.
            await feed([_history_view(t0 + 50 + i, {"a": (0.5, {})}, ("a",)) for i in range(2)])
            await feed([_history_view(t0 + 52, {"a": (0.5, {11: 0.25})})])
            sparks = await _sparks(page)
            assert sparks[("a", "clients")][1][-3:] == [None, None, 3]
            assert sparks[("a", "load")][1][-3:] == [0.5, 0.5, 0.5]
            assert sparks[("a/11", "cpu")] == (
                [*times, t0 + 50, t0 + 51, t0 + 52],
                [0.5] * 20 + [None, None, 0.25],
            )
            assert (await line("a/11")).endswith("M101.0,14.5h0")  # a lone point: a dot
            # The monitor's clock set back an hour: every history starts afresh.
            await feed([_history_view(t0 - 3600, {"a": (0.5, {11: 0.5})})])
            sparks = await _sparks(page)
            assert {k: v[0] for k, v in sparks.items()} == {
                ("a", "load"): [t0 - 3600],
                ("a", "clients"): [t0 - 3600],
                ("a/11", "cpu"): [t0 - 3600],
            }
            assert errors == []
        finally:
            await browser.close()


class _Recorded:
    """A monitor whose views are kept by their time: what a page was sent."""

    def __init__(self, source: monitor.Monitor) -> None:
        self.source = source
        self.sent: dict[float, Any] = {}

    async def view(self) -> Any:
        return await self.source.view()

    async def views(self) -> AsyncIterator[Any]:
        async for view in self.source.views():
            self.sent[view["time"]] = view
            yield view


@needs_redis
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing")
async def test_page_in_chromium_draws_the_history_it_was_sent(redis_server: RedisProcess) -> None:
    """Two `mafalda serve --cluster` servers, a monitor and its page in Chromium (at most
    10 points): each server's load and clients and each worker's CPU drawn point for
    point from the views the page was sent; s1's load rising as a client starts workers
    on it; every line bounded; a closed worker's and a killed server's history dropped, a
    restarted server's starting afresh; no script error."""
    from playwright.async_api import async_playwright

    from mafalda.remote import RemoteMediasoup
    from mafalda.remote import connect as remote_connect

    points = 10
    procs: dict[int, asyncio.subprocess.Process] = {}
    urls: dict[int, str] = {}
    for index in (1, 2):
        procs[index], urls[index] = await spawn_serve(serve_command(redis_server.url, index, 0.2))
    client = None
    try:
        async with await monitor.connect(redis_server.url, interval=0.2) as mon:
            recorded = _Recorded(mon)
            async with (
                MonitorWeb(recorded, port=0) as page_server,
                async_playwright() as playwright,
            ):
                browser, page, errors = await _history_page(playwright)
                try:
                    await page.goto(f"{page_server.url}?points={points}")

                    def figure(view: Any, of: str, series: str) -> Any:
                        server_id, _, pid = of.partition("/")
                        [server] = [s for s in view["servers"] if s["id"] == server_id]
                        if series == "cpu":
                            return [w["cpu"] for w in server["workers"] if w["pid"] == int(pid)][0]
                        if series == "load":
                            return server["load"]
                        # A server not reported yet (a restart's first view): clients unknown.
                        return server["totals"]["clients"] if server["reported"] else None

                    async def until(ready: Any, timeout: float = 20.0) -> Any:
                        """The sparklines once ``ready``, each checked against the views."""
                        async with asyncio.timeout(timeout):
                            while True:
                                sparks = await _sparks(page)
                                if ready(sparks):
                                    break
                                await asyncio.sleep(0.05)
                        for (of, series), (times, values) in sparks.items():
                            assert 0 < len(times) <= points and times == sorted(set(times))
                            assert values == [figure(recorded.sent[t], of, series) for t in times]
                        return sparks

                    def grown(*of: str, to: int = 3) -> Any:
                        """Whether the servers' loads and workers' CPU have ``to`` points."""
                        keys = [(x, "cpu" if "/" in x else "load") for x in of]
                        return lambda sparks: all(
                            key in sparks and len(sparks[key][0]) >= to for key in keys
                        )

                    sparks = await until(
                        lambda s: grown("s1", "s2")(s) and s[("s1", "clients")][1][-1] is not None
                    )
                    assert set(sparks[("s1", "load")][1]) == {0.0}  # no worker yet
                    # None: before s1's first report.
                    assert set(sparks[("s1", "clients")][1]) - {None} == {0}

                    # A client starts workers on s1: its load is its workers per core.
                    client = await remote_connect(urls[1], token=TOKEN)
                    assert isinstance(client, RemoteMediasoup)
                    steps = [round(n / (os.cpu_count() or 1), 4) for n in (0, 1, 2)]
                    workers = []
                    for n in (1, 2):
                        workers.append(await client.create_worker(log_level="warn"))
                        sparks = await until(
                            lambda s, want=steps[n]: s[("s1", "load")][1][-1] == want
                        )
                        loads = sparks[("s1", "load")][1]
                        assert loads == sorted(loads) and steps[n - 1] in loads
                    # Its client (reported on the probe's clock, not the record's).
                    sparks = await until(lambda s: s[("s1", "clients")][1][-1] == 1)
                    assert set(sparks[("s1", "clients")][1]) <= {0, 1}
                    pids = [w.pid for w in workers]
                    # Every line fills up to the bound and stays there.
                    everything = grown("s1", "s2", *(f"s1/{pid}" for pid in pids), to=points)
                    sparks = await until(everything)
                    newest = sparks[("s1", "load")][0][-1]
                    sparks = await until(lambda s: s[("s1", "load")][0][-4] > newest)
                    assert {len(times) for times, _ in sparks.values()} == {points}
                    assert any(v is not None for v in sparks[(f"s1/{pids[0]}", "cpu")][1])

                    # A worker closed: its line and history gone.
                    workers[0].close()
                    await workers[0].wait_closed()
                    sparks = await until(lambda s: (f"s1/{pids[0]}", "cpu") not in s)
                    assert not await page.evaluate(f"past.workers.has('s1/{pids[0]}')")
                    # A server killed: the same; restarted (same id), it starts afresh.
                    procs[2].kill()
                    await reap(procs[2])
                    sparks = await until(lambda s: ("s2", "load") not in s)
                    assert not await page.evaluate("past.servers.has('s2')")
                    gone = sparks[("s1", "load")][0][-1]
                    procs[2], urls[2] = await spawn_serve(serve_command(redis_server.url, 2, 0.2))
                    sparks = await until(lambda s: ("s2", "load") in s)
                    assert min(sparks[("s2", "load")][0]) > gone
                    assert errors == []
                finally:
                    await browser.close()
    finally:
        if client is not None:
            await client.aclose()
        for proc in procs.values():
            if proc.returncode is None:
                proc.kill()
            await reap(proc)


@pytest.mark.parametrize("serves", ["mediasoup", "mafalda"])
async def test_serve_with_its_own_monitor_page(serves: str) -> None:
    """`mafalda serve --monitor-port`: no Redis, the server's own view (its client, the
    router it made and the worker under it; a pool's placement loads), the same page and
    JSON as a cluster's."""
    from mafalda.remote import RemoteMafalda, RemoteMediasoup
    from mafalda.remote import connect as remote_connect

    port = free_ports(1)  # bound later by the server: below the ephemeral range
    extra = ["--mafalda", "--num-workers", "1"] if serves == "mafalda" else []
    proc, url = await spawn_serve(
        [
            *[sys.executable, "-m", "mafalda.cli", "serve", "--port", "0", "--token", TOKEN],
            *["--monitor-port", str(port), *extra],
        ]
    )
    try:
        assert proc.stdout is not None
        line = (await proc.stdout.readline()).decode().strip()
        assert line == f"Mafalda monitor on http://127.0.0.1:{port}/"
        client = await remote_connect(url, token=TOKEN)
        try:
            if isinstance(client, RemoteMafalda):
                router = await client.create_router(media_codecs=MEDIA_CODECS)
            else:
                assert isinstance(client, RemoteMediasoup)
                worker = await client.create_worker(log_level="warn")
                router = await worker.create_router(media_codecs=MEDIA_CODECS)
            await router.create_direct_transport()
            async with aiohttp.ClientSession() as http:
                async with http.get(line.split()[-1] + "view") as got:
                    view = await got.json()
                async with http.get(line.split()[-1] + "metrics") as got:
                    metrics = await got.text()
        finally:
            await client.aclose()
        [server] = view["servers"]
        assert (server["id"], server["controlUrl"], server["serves"]) == ("local", url, serves)
        [entry] = server["workers"]
        assert (entry["load"] is not None) == (serves == "mafalda")
        assert (server["totals"]["routers"], server["totals"]["transports"]) == (1, 1)
        assert [c["connected"] for c in server["clients"]] == [True]
        # The same figures for Prometheus.
        labels = f'server="local",worker="{entry["pid"]}"'
        assert f"mafalda_worker_transports{{{labels}}} 1.0" in metrics
        assert f"mafalda_worker_routers{{{labels}}} 1.0" in metrics
        assert ("mafalda_worker_load{" in metrics) == (serves == "mafalda")
        assert await _terminate(proc) == 0
    finally:
        await _kill(proc)


@needs_redis
async def test_serve_leaves_the_cluster_when_its_monitor_page_cannot_start(
    redis_server: RedisProcess,
) -> None:
    """A monitor port in use fails `mafalda serve` after it registered: it deregisters
    at once (not when its record expires) and says why."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = serve_command(redis_server.url, 1, 5.0, "--monitor-port", str(port))
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
            await reap(proc)
    assert proc.returncode == 1
    assert b"address already in use" in err
    db: aioredis.Redis = aioredis.from_url(redis_server.url)
    try:
        assert await db.get(registry.server_key("s1")) is None  # TTL would be 15 s
        assert await db.get(stats_key("s1")) is None
    finally:
        await db.aclose()


@needs_redis
async def test_monitor_command_redraws_until_ctrl_c(redis_server: RedisProcess) -> None:
    """The terminal view: a page per interval (plain pages on a pipe), Ctrl+C ends it
    quietly (exit code 130, no traceback)."""
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "mafalda.cli", "monitor", redis_server.url],
        *["--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        async with asyncio.timeout(30):
            pages = 0
            while pages < 2:
                line = await proc.stdout.readline()
                assert not line.startswith(b"\x1b")  # no screen clearing on a pipe
                pages += line.startswith(b"mafalda monitor  ")
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            err = await proc.stderr.read()
            code = await reap(proc)
        assert code == 130, err.decode()
        assert b"Traceback" not in err
    finally:
        await _kill(proc)


def test_monitor_command_without_redis() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mafalda.cli", "monitor", "redis://127.0.0.1:1/0", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in result.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "mafalda.cli", "monitor", "redis://x", "--interval", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "positive number of seconds" in bad.stderr
