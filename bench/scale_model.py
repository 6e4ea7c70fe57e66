"""Scale model, on paper: pipes, bandwidth and CPU of one room over many media servers.

Issue #6 ("Benchmark and scale on paper"): rooms of 10 to 100,000 participants over 1 to
1,000 servers, the producers carried to the other servers in a *mesh* or a *tree*.
Nothing is measured here: every figure follows from the assumptions below, which are
the model. Run::

    .venv/bin/python bench/scale_model.py            # the table (bench/SCALE.md reads it)
    .venv/bin/python bench/scale_model.py --json     # the same figures as JSON
    .venv/bin/python bench/scale_model.py --help     # every assumption as a flag

Assumptions (the defaults of ``Params``; each one has a flag):

1. Placement. The P participants of the room are spread evenly over S servers (S <= P):
   participant i is on server i mod S. The "fewest servers" section packs the room on
   the smallest S that fits (still evenly spread over those S).
2. Media. Every participant publishes one audio producer (Opus, 40 kbit/s, 50 packets/s)
   and one video producer sent to the SFU as simulcast (all layers together 1.5 Mbit/s,
   150 packets/s). A consumer gets the audio as is and one video layer (500 kbit/s,
   50 packets/s). A pipe between servers carries a producer whole, every simulcast layer
   (a mediasoup PipeConsumer forwards all of them): 1.5 Mbit/s + 40 kbit/s per
   participant piped. RTCP, RTX, padding, probing and IP/UDP overhead are left out.
3. Subscriptions. "all": everyone receives everyone else's audio and video (small rooms).
   "lastn": everyone receives the video of the N = 25 last active speakers and the audio
   of the A = 100 last active speakers (the audio cap): a room of up to 101 people hears
   everyone. The producers outside those sets are consumed by no one (or paused) and
   never leave their server, but their publishers still send to it. The speakers are
   participants 0..N-1, so they sit on N different servers when S >= N (the worst case
   for pipes). "auto" (default): "all" for rooms of up to 100 participants, else "lastn".
4. Pipes. A producer is carried to every other server that has a consumer of it, one
   copy per (producer, destination server), whatever the number of consumers there.
   "mesh": the producer's server sends every copy itself (a star per producer; this is
   what the implementation does today). "tree": the destinations, ordered by id starting
   after the producer's own server (rotated, see ``relay_order``), are filled
   breadth-first under the producer's server, at most k = 8 children per server: a server
   sends at most k copies of a producer and relays what it receives; a packet takes up to
   log_k(S) hops. With k >= S - 1 the tree is the mesh. One PipeTransport pair links two
   servers that exchange any stream (in either direction: "pairs" are unordered).
5. CPU. A mediasoup worker (one core) forwards about 200,000 packets/s: measured by
   bench/fanout.py on this project's VM, 405 consumers of a 500 packets/s stream with at
   most 0.5% loss (4.93 us of worker CPU per packet sent). That run used PlainTransports
   without SRTP or congestion control: WebRTC consumers cost more (lower --core-pps).
   Every packet a server receives (from a publisher or a pipe) is counted as costing as
   much as one it sends (--recv-weight 1; 0 counts forwarded packets only). A server has
   C = 8 cores and runs w <= C workers, perfectly balanced; each worker beyond the first
   gets its own copy of every producer the server carries (Mafalda's pipes between
   workers), which costs one more packet sent and received per packet of those
   producers. w is the smallest number of workers whose cores carry the load (if none
   does, the number with the least work per worker, and the server does not fit).
6. Fit. A server fits when its load needs at most one core per worker (so at most C
   cores) and both its egress and its ingress stay within its NIC (10 Gbit/s each way).
   No headroom is kept: Mafalda's cpu_watermark (0.6) would keep 40% of each core free
   for bursts and key frames.

``pipe_counts`` is the same pipe rule for an explicit set of producers and consumers,
which the real three-server test checks its counts against.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Topology = Literal["tree", "mesh"]
Subscription = Literal["auto", "all", "lastn"]

DEFAULT_FANOUT = 8
MEASURED_CORE_PPS = 200_000.0
"""Packets/s one worker (one core) forwards: 405 consumers x 500 packets/s, rounded."""
ROOMS: tuple[int, ...] = (10, 100, 1_000, 10_000, 100_000)
SERVERS: tuple[int, ...] = (1, 3, 10, 100, 1_000)
TOPOLOGIES: tuple[Topology, ...] = ("mesh", "tree")


# -- the pipe rule, for explicit producers and consumers ----------------------------------


def _check_fanout(fanout: int | None) -> int:
    k = DEFAULT_FANOUT if fanout is None else fanout
    if k < 1:
        raise ValueError(f"fanout must be at least 1, got {fanout}")
    return k


def relay_order(home: str, servers: Iterable[str]) -> list[str]:
    """Destinations of a producer homed on ``home``, in the tree's breadth-first order.

    Sorted by id, rotated to start after ``home``: ["c", "a", "d"] from "b" is
    ["c", "d", "a"]. Without the rotation every tree would put the lowest ids next to
    the root, and those servers would relay the whole room.
    """
    ids = sorted(set(servers) - {home})
    return [s for s in ids if s > home] + [s for s in ids if s < home]


def tree_depth(index: int, fanout: int) -> int:
    """Depth of breadth-first ``index`` (0 = the root) in a tree of ``fanout`` children."""
    depth, last, width = 0, 0, 1
    while last < index:
        width *= fanout
        last += width
        depth += 1
    return depth


def tree_children(index: int, destinations: int, fanout: int) -> int:
    """Children of breadth-first ``index`` when ``destinations`` nodes hang under index 0."""
    return max(0, min(fanout, destinations - index * fanout))


def pipe_edges(
    homes: Mapping[str, str],
    consumers: Iterable[tuple[str, str]],
    mode: Topology = "mesh",
    fanout: int | None = None,
) -> list[tuple[str, str, str, int]]:
    """Every server-to-server copy: (producer, from server, to server, hops from home).

    Same rules and arguments as ``pipe_counts``.
    """
    if mode not in ("tree", "mesh"):
        raise ValueError(f"mode must be 'tree' or 'mesh', got {mode!r}")
    k = _check_fanout(fanout)
    needed: dict[str, set[str]] = {}
    for producer, server in consumers:
        if producer not in homes:
            raise ValueError(f"consumer of unknown producer {producer!r}")
        if server != homes[producer]:
            needed.setdefault(producer, set()).add(server)
    edges: list[tuple[str, str, str, int]] = []
    for producer in sorted(needed):
        home = homes[producer]
        nodes = [home, *relay_order(home, needed[producer])]
        for i in range(1, len(nodes)):
            if mode == "mesh":
                edges.append((producer, home, nodes[i], 1))
            else:
                edges.append((producer, nodes[(i - 1) // k], nodes[i], tree_depth(i, k)))
    return edges


def pipe_counts(
    homes: Mapping[str, str],
    consumers: Iterable[tuple[str, str]],
    mode: Literal["tree", "mesh"] = "mesh",
    fanout: int | None = None,
) -> dict[str, int]:
    """Pipes that carry producers to the servers of their consumers.

    ``homes`` maps producer id -> id of the server hosting it; ``consumers`` lists
    (producer id, server id of a consumer), duplicates allowed. Consumers on the
    producer's own server need no pipe. "mesh": the home server sends one copy to each
    other server with a consumer. "tree": those servers, sorted by id and rotated to
    start after the home server (``relay_order``), are filled breadth-first under it
    with at most ``fanout`` (default 8, ignored by "mesh") children each; each relays
    what it receives to its children.

    Returns {"pipes": (producer, destination server) copies, "pairs": distinct
    unordered server pairs linked by a PipeTransport pair, "hops": the most
    server-to-server hops a packet takes (0 without pipes)}.
    """
    edges = pipe_edges(homes, consumers, mode, fanout)
    pairs = {frozenset((src, dst)) for _, src, dst, _ in edges}
    return {
        "pipes": len(edges),
        "pairs": len(pairs),
        "hops": max((hops for *_, hops in edges), default=0),
    }


# -- the model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    """The assumptions (module docstring); every field has a command-line flag."""

    audio_bps: float = 40_000.0
    audio_pps: float = 50.0
    video_publish_bps: float = 1_500_000.0  # simulcast, all layers: what a pipe carries
    video_publish_pps: float = 150.0
    video_forward_bps: float = 500_000.0  # the one layer a consumer receives
    video_forward_pps: float = 50.0
    last_n: int = 25  # videos received in "lastn"
    audio_cap: int = 100  # audio streams received in "lastn"
    all_max: int = 100  # "auto": everyone receives everyone up to this room size
    core_pps: float = MEASURED_CORE_PPS
    recv_weight: float = 1.0
    cores: int = 8
    nic_bps: float = 10e9  # each way
    fanout: int = DEFAULT_FANOUT

    def __post_init__(self) -> None:
        if self.fanout < 1 or self.cores < 1 or self.last_n < 0 or self.audio_cap < 0:
            raise ValueError("fanout and cores must be >= 1, last_n and audio_cap >= 0")
        if self.core_pps <= 0 or self.nic_bps <= 0 or self.recv_weight < 0:
            raise ValueError("core_pps and nic_bps must be > 0, recv_weight >= 0")


@dataclass(frozen=True)
class ServerLoad:
    """One server's share of the room. Bandwidth in bit/s, packets in packets/s."""

    server: int
    participants: int
    client_in_bps: float
    client_out_bps: float
    pipe_in_bps: float
    pipe_out_bps: float
    pipe_copies_in: int  # producers received over pipes
    pipe_copies_out: int  # producer copies sent over pipes (own and relayed)
    sent_pps: float  # to clients, pipes and the server's other workers
    received_pps: float
    workers: int
    cores: float  # needed: (sent + recv_weight x received) / core_pps

    @property
    def ingress_bps(self) -> float:
        return self.client_in_bps + self.pipe_in_bps

    @property
    def egress_bps(self) -> float:
        return self.client_out_bps + self.pipe_out_bps


@dataclass(frozen=True)
class Result:
    """One scenario: a room of ``participants`` over ``servers`` in one topology."""

    participants: int
    servers: int
    topology: Topology
    fanout: int
    subscription: Literal["all", "lastn"]
    video_streams: int  # video producers consumed by anyone
    audio_streams: int
    pipes: int  # (producer, destination server) copies
    pairs: int  # PipeTransport pairs (unordered server pairs)
    hops: int
    params: Params
    loads: tuple[ServerLoad, ...] = field(repr=False)

    @property
    def busiest(self) -> ServerLoad:
        """The server with the largest egress (lowest id on ties)."""
        return max(self.loads, key=lambda load: (load.egress_bps, -load.server))

    @property
    def max_ingress_bps(self) -> float:
        return max(load.ingress_bps for load in self.loads)

    @property
    def max_cores(self) -> float:
        return max(load.cores for load in self.loads)

    @property
    def total_cores(self) -> float:
        return sum(load.cores for load in self.loads)

    @property
    def problems(self) -> list[str]:
        """Why it does not fit (empty when it does)."""
        p = self.params
        out: list[str] = []
        if self.max_cores > p.cores:
            out.append(f"cpu {self.max_cores:.1f} > {p.cores} cores")
        elif any(x.cores > x.workers + 1e-9 for x in self.loads):
            worst = max(self.loads, key=lambda x: x.cores / x.workers)
            out.append(f"cpu {worst.cores:.1f} cores of work on {worst.workers} worker(s)")
        if self.busiest.egress_bps > p.nic_bps:
            out.append(f"egress {_gbps(self.busiest.egress_bps)} > {_gbps(p.nic_bps)} Gbit/s")
        if self.max_ingress_bps > p.nic_bps:
            out.append(f"ingress {_gbps(self.max_ingress_bps)} > {_gbps(p.nic_bps)} Gbit/s")
        return out

    @property
    def fits(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, Any]:
        """Plain figures for JSON (per-server loads left out)."""
        busiest = self.busiest
        return {
            "participants": self.participants,
            "servers": self.servers,
            "topology": self.topology,
            "fanout": self.fanout,
            "subscription": self.subscription,
            "video_streams": self.video_streams,
            "audio_streams": self.audio_streams,
            "pipes": self.pipes,
            "pairs": self.pairs,
            "hops": self.hops,
            "total_client_egress_bps": sum(x.client_out_bps for x in self.loads),
            "total_pipe_bps": sum(x.pipe_out_bps for x in self.loads),
            "busiest_server": busiest.server,
            "busiest_egress_bps": busiest.egress_bps,
            "busiest_pipe_egress_bps": busiest.pipe_out_bps,
            "max_pipe_egress_bps": max(x.pipe_out_bps for x in self.loads),
            "max_ingress_bps": self.max_ingress_bps,
            "total_cores": self.total_cores,
            "max_cores": self.max_cores,
            "max_workers": max(x.workers for x in self.loads),
            "fits": self.fits,
            "problems": self.problems,
        }


def spread(count: int, servers: int) -> list[int]:
    """How many of items 0..count-1 land on each server when item i goes to i mod S."""
    q, r = divmod(count, servers)
    return [q + (1 if s < r else 0) for s in range(servers)]


def resolve_subscription(
    participants: int, subscription: Subscription, params: Params
) -> Literal["all", "lastn"]:
    if subscription == "auto":
        return "all" if participants <= params.all_max else "lastn"
    if subscription not in ("all", "lastn"):
        raise ValueError(f"subscription must be 'auto', 'all' or 'lastn', got {subscription!r}")
    return subscription


def _copies(homes: Sequence[int], topology: Topology, fanout: int) -> tuple[list[int], list[int]]:
    """Pipe copies sent and received per server, when each producer (homes[s] of them
    on server s) is needed on every other server."""
    n = len(homes)
    total = sum(homes)
    received = [total - c for c in homes]
    if n == 1:
        return [0], received
    if topology == "mesh":
        return [c * (n - 1) for c in homes], received
    sent = [0] * n
    for home, count in enumerate(homes):
        if not count:
            continue
        index = 0  # breadth-first index = offset from the home server (relay_order)
        while (children := tree_children(index, n - 1, fanout)) > 0:
            sent[(home + index) % n] += count * children
            index += 1
    return sent, received


def _pairs(homes: Sequence[bool], topology: Topology, fanout: int) -> int:
    """PipeTransport pairs when the producers of servers with homes[s] go everywhere."""
    n = len(homes)
    used = [s for s in range(n) if homes[s]]
    if n == 1 or not used:
        return 0
    if topology == "mesh":
        h = len(used)
        return h * (n - 1) - h * (h - 1) // 2
    # Tree edges of a home, as (offset of parent, offset of child) from that home.
    kinds = [
        (index, index * fanout + j)
        for index in range(n)
        for j in range(1, tree_children(index, n - 1, fanout) + 1)
    ]
    if len(used) == n:  # every rotation present: count the distinct offsets apart
        apart = {(b - a) % n for a, b in kinds} | {(a - b) % n for a, b in kinds}
        return n * len(apart) // 2
    linked = {
        (min(x, y), max(x, y))
        for home in used
        for a, b in kinds
        for x, y in [((home + a) % n, (home + b) % n)]
    }
    return len(linked)


def _workers(base_pps: float, extra_pps: float, p: Params) -> int:
    """Workers a server runs: the fewest that carry ``base_pps`` (weighted packets/s)
    plus ``extra_pps`` per worker beyond the first, one core each; when no number up to
    ``p.cores`` does, the number with the least work per worker (all the cores, unless a
    worker's extra copies cost a core or more)."""
    for w in range(1, p.cores + 1):
        if base_pps + (w - 1) * extra_pps <= w * p.core_pps:
            return w
    return p.cores if base_pps > extra_pps else 1


def model(
    participants: int,
    servers: int,
    topology: Topology = "mesh",
    params: Params | None = None,
    subscription: Subscription = "auto",
) -> Result:
    """Figures of one room of ``participants`` evenly spread over ``servers``."""
    p = params if params is not None else Params()
    if participants < 1 or not 1 <= servers <= participants:
        raise ValueError(f"need 1 <= servers <= participants, got {servers}, {participants}")
    if topology not in ("tree", "mesh"):
        raise ValueError(f"topology must be 'tree' or 'mesh', got {topology!r}")
    sub = resolve_subscription(participants, subscription, p)
    n_video = participants if sub == "all" else min(participants, p.last_n)
    n_audio = participants if sub == "all" else min(participants, p.audio_cap)
    people = spread(participants, servers)
    video = spread(n_video, servers)  # consumed producers are participants 0..N-1
    audio = spread(n_audio, servers)
    v_sent, v_recv = _copies(video, topology, p.fanout)
    a_sent, a_recv = _copies(audio, topology, p.fanout)
    video_pipe = (p.video_publish_bps, p.video_publish_pps)
    audio_pipe = (p.audio_bps, p.audio_pps)
    # Every server carries every consumed producer (its own or piped in); each worker
    # beyond the first gets its own copy of them.
    carried_pps = n_video * video_pipe[1] + n_audio * audio_pipe[1]

    loads: list[ServerLoad] = []
    for s in range(servers):
        n = people[s]
        # Each participant receives every consumed stream but its own.
        client_out = (n * n_video - video[s]) * p.video_forward_bps + (
            n * n_audio - audio[s]
        ) * p.audio_bps
        client_out_pps = (n * n_video - video[s]) * p.video_forward_pps + (
            n * n_audio - audio[s]
        ) * p.audio_pps
        client_in = n * (p.video_publish_bps + p.audio_bps)
        client_in_pps = n * (p.video_publish_pps + p.audio_pps)
        pipe_out = v_sent[s] * video_pipe[0] + a_sent[s] * audio_pipe[0]
        pipe_out_pps = v_sent[s] * video_pipe[1] + a_sent[s] * audio_pipe[1]
        pipe_in = v_recv[s] * video_pipe[0] + a_recv[s] * audio_pipe[0]
        pipe_in_pps = v_recv[s] * video_pipe[1] + a_recv[s] * audio_pipe[1]
        base = client_out_pps + pipe_out_pps + p.recv_weight * (client_in_pps + pipe_in_pps)
        extra = (1 + p.recv_weight) * carried_pps  # per worker beyond the first
        workers = _workers(base, extra, p)
        intra_pps = (workers - 1) * carried_pps
        sent = client_out_pps + pipe_out_pps + intra_pps
        received = client_in_pps + pipe_in_pps + intra_pps
        loads.append(
            ServerLoad(
                server=s,
                participants=n,
                client_in_bps=client_in,
                client_out_bps=client_out,
                pipe_in_bps=pipe_in,
                pipe_out_bps=pipe_out,
                pipe_copies_in=v_recv[s] + a_recv[s],
                pipe_copies_out=v_sent[s] + a_sent[s],
                sent_pps=sent,
                received_pps=received,
                workers=workers,
                cores=(sent + p.recv_weight * received) / p.core_pps,
            )
        )

    pipes = (n_video + n_audio) * (servers - 1)
    if pipes == 0:
        hops = 0
    elif topology == "mesh":
        hops = 1
    else:
        hops = tree_depth(servers - 1, p.fanout)
    homes = [video[s] + audio[s] > 0 for s in range(servers)]
    return Result(
        participants=participants,
        servers=servers,
        topology=topology,
        fanout=p.fanout,
        subscription=sub,
        video_streams=n_video,
        audio_streams=n_audio,
        pipes=pipes,
        pairs=_pairs(homes, topology, p.fanout),
        hops=hops,
        params=p,
        loads=tuple(loads),
    )


def fewest_servers(
    participants: int,
    topology: Topology = "mesh",
    params: Params | None = None,
    subscription: Subscription = "auto",
    limit: int = 1_000,
) -> int | None:
    """The smallest S <= limit on which the room fits, or None.

    Found by bisection, which assumes that a room that fits on S servers fits on more:
    true of this model with the default assumptions (the tests check it on a grid).
    """
    hi = min(limit, participants)
    if not model(participants, hi, topology, params, subscription).fits:
        return None
    lo = 0  # does not fit on lo servers (0: nothing fits on none)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if model(participants, mid, topology, params, subscription).fits:
            hi = mid
        else:
            lo = mid
    return hi


def scenarios(
    params: Params | None = None,
    subscription: Subscription = "auto",
    rooms: Sequence[int] = ROOMS,
    servers: Sequence[int] = SERVERS,
) -> list[Result]:
    """Every room over every server count up to its size, mesh then tree; the tree is
    left out where it is the mesh (fanout >= S - 1)."""
    p = params if params is not None else Params()
    out: list[Result] = []
    for room in rooms:
        for s in servers:
            if s > room:
                continue
            for topology in TOPOLOGIES:
                if topology == "tree" and p.fanout >= s - 1:
                    continue
                out.append(model(room, s, topology, p, subscription))
    return out


# -- output ------------------------------------------------------------------------------


def _gbps(bps: float) -> str:
    return f"{bps / 1e9:.2f}"


def _topology_label(result: Result) -> str:
    if result.fanout >= result.servers - 1:
        return "mesh=tree"
    if result.topology == "tree":
        return f"tree k={result.fanout}"
    return "mesh"


HEADER = (
    "room",
    "servers",
    "subs",
    "topology",
    "pipes",
    "pairs",
    "hops",
    "egress max",
    "(pipes)",
    "ingress max",
    "cores total",
    "cores max",
    "workers",
    "fits",
)


def table_rows(results: Iterable[Result]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for r in results:
        busiest = r.busiest
        rows.append(
            (
                f"{r.participants:,}",
                f"{r.servers:,}",
                r.subscription,
                _topology_label(r),
                f"{r.pipes:,}",
                f"{r.pairs:,}",
                str(r.hops),
                _gbps(busiest.egress_bps),
                _gbps(busiest.pipe_out_bps),
                _gbps(r.max_ingress_bps),
                f"{r.total_cores:,.1f}",
                f"{r.max_cores:.1f}",
                str(max(x.workers for x in r.loads)),
                "yes" if r.fits else "NO: " + "; ".join(r.problems),
            )
        )
    return rows


def format_table(results: Iterable[Result]) -> str:
    """A Markdown table: one row per scenario, bandwidth in Gbit/s."""
    rows = table_rows(results)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(HEADER)]
    left = {2, 3, 13}

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if i not in left else ":" + "-" * (w + 1)
            for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(HEADER), rule, *(line(row) for row in rows)])


def format_fewest(fewest: Mapping[str, Mapping[int, int | None]], limit: int) -> str:
    """A Markdown table of ``fewest[topology][room]`` (None: not even on ``limit``)."""
    lines = ["| room | fewest servers, mesh | fewest servers, tree |", "|---:|---:|---:|"]
    for room in fewest["mesh"]:
        cells = []
        for topology in TOPOLOGIES:
            s = fewest[topology][room]
            cells.append(f"{s:,}" if s is not None else f"none <= {min(limit, room):,}")
        lines.append(f"| {room:,} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas: {text}") from e
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers: {text}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = Params()
    ap = argparse.ArgumentParser(
        description="Scale model of a room over media servers: pipes, bandwidth, CPU.",
        epilog="Assumptions: see the top of bench/scale_model.py and bench/SCALE.md.",
    )
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ap.add_argument("--rooms", type=_int_list, default=list(ROOMS), help="e.g. 10,100")
    ap.add_argument("--servers", type=_int_list, default=list(SERVERS), help="e.g. 1,3,10")
    ap.add_argument("--subscription", choices=["auto", "all", "lastn"], default="auto")
    ap.add_argument("--fanout", type=int, default=d.fanout, help="tree fan-out k")
    ap.add_argument("--core-pps", type=float, default=d.core_pps, help="packets/s per core")
    ap.add_argument("--recv-weight", type=float, default=d.recv_weight)
    ap.add_argument("--cores", type=int, default=d.cores, help="cores per server")
    ap.add_argument("--nic-gbps", type=float, default=d.nic_bps / 1e9, help="each way")
    ap.add_argument("--last-n", type=int, default=d.last_n, help="videos received (lastn)")
    ap.add_argument("--audio-cap", type=int, default=d.audio_cap, help="audios (lastn)")
    ap.add_argument("--all-max", type=int, default=d.all_max, help="auto: 'all' up to this")
    ap.add_argument("--audio-kbps", type=float, default=d.audio_bps / 1e3)
    ap.add_argument("--audio-pps", type=float, default=d.audio_pps)
    ap.add_argument("--video-publish-kbps", type=float, default=d.video_publish_bps / 1e3)
    ap.add_argument("--video-publish-pps", type=float, default=d.video_publish_pps)
    ap.add_argument("--video-forward-kbps", type=float, default=d.video_forward_bps / 1e3)
    ap.add_argument("--video-forward-pps", type=float, default=d.video_forward_pps)
    ap.add_argument("--limit", type=int, default=1_000, help="most servers for 'fewest'")
    return ap.parse_args(argv)


def params_from_args(args: argparse.Namespace) -> Params:
    return Params(
        audio_bps=args.audio_kbps * 1e3,
        audio_pps=args.audio_pps,
        video_publish_bps=args.video_publish_kbps * 1e3,
        video_publish_pps=args.video_publish_pps,
        video_forward_bps=args.video_forward_kbps * 1e3,
        video_forward_pps=args.video_forward_pps,
        last_n=args.last_n,
        audio_cap=args.audio_cap,
        all_max=args.all_max,
        core_pps=args.core_pps,
        recv_weight=args.recv_weight,
        cores=args.cores,
        nic_bps=args.nic_gbps * 1e9,
        fanout=args.fanout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        params = params_from_args(args)
        if args.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {args.limit}")
    except ValueError as e:
        print(f"scale_model: {e}", file=sys.stderr)
        return 2
    results = scenarios(params, args.subscription, args.rooms, args.servers)
    fewest: dict[str, dict[int, int | None]] = {
        topology: {
            room: fewest_servers(room, topology, params, args.subscription, args.limit)
            for room in args.rooms
        }
        for topology in TOPOLOGIES
    }
    if args.json:
        doc = {
            "params": asdict(params),
            "subscription": args.subscription,
            "scenarios": [r.summary() for r in results],
            "fewest_servers": {t: {str(r): s for r, s in f.items()} for t, f in fewest.items()},
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(
        f"Scale model: {params.cores} cores/server at {params.core_pps:,.0f} packets/s each, "
        f"NIC {_gbps(params.nic_bps)} Gbit/s each way, tree fan-out k={params.fanout}, "
        f"subscriptions {args.subscription} (lastn: {params.last_n} videos, "
        f"{params.audio_cap} audios). Bandwidth in Gbit/s; 'egress max' is the busiest "
        "server's (clients + pipes), '(pipes)' its pipe part."
    )
    print()
    print(format_table(results))
    print()
    print(f"Fewest servers (<= {args.limit:,}) that fit the room, evenly spread:")
    print()
    print(format_fewest(fewest, args.limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
