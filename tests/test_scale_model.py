"""bench/scale_model.py: the pipe rule by hand, the model against the rule, its invariants."""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .bench_modules import BENCH, load_bench

sm = load_bench("scale_model")
FAST = settings(max_examples=60, deadline=None)


# -- pipe_counts, by hand ----------------------------------------------------------------


def test_mesh_one_producer_two_other_servers() -> None:
    homes = {"p": "A"}
    consumers = [("p", "B"), ("p", "B"), ("p", "C"), ("p", "A")]  # A: own server, no pipe
    assert sm.pipe_counts(homes, consumers) == {"pipes": 2, "pairs": 2, "hops": 1}
    assert sm.pipe_counts(homes, consumers, "mesh", fanout=1) == {
        "pipes": 2,
        "pairs": 2,
        "hops": 1,
    }  # fanout is the tree's only


def test_mesh_two_producers_share_the_pair() -> None:
    homes = {"p1": "A", "p2": "A"}
    consumers = [("p1", "B"), ("p2", "B"), ("p2", "B")]
    assert sm.pipe_counts(homes, consumers, "mesh") == {"pipes": 2, "pairs": 1, "hops": 1}


def test_pairs_are_unordered() -> None:
    homes = {"a": "A", "b": "B"}
    assert sm.pipe_counts(homes, [("a", "B"), ("b", "A")]) == {"pipes": 2, "pairs": 1, "hops": 1}


def test_no_pipe_without_remote_consumers() -> None:
    assert sm.pipe_counts({"p": "A"}, [("p", "A")]) == {"pipes": 0, "pairs": 0, "hops": 0}
    assert sm.pipe_counts({"p": "A"}, [], "tree") == {"pipes": 0, "pairs": 0, "hops": 0}


def test_three_servers_everyone_everywhere() -> None:
    # The real three-server test's shape: one producer per server, consumed on the others.
    homes = {"pa": "A", "pb": "B", "pc": "C"}
    consumers = [(p, s) for p in homes for s in "ABC"]
    for mode in ("mesh", "tree"):
        assert sm.pipe_counts(homes, consumers, mode) == {"pipes": 6, "pairs": 3, "hops": 1}


def test_relay_order_is_rotated_after_the_home() -> None:
    assert sm.relay_order("b", ["c", "a", "d"]) == ["c", "d", "a"]
    assert sm.relay_order("a", ["c", "b", "a"]) == ["b", "c"]
    assert sm.relay_order("z", ["c", "a"]) == ["a", "c"]


def test_tree_chain_with_fanout_one() -> None:
    homes = {"p": "C"}
    consumers = [("p", s) for s in "ABD"]
    # Order after C: D, A, B; each server relays to the next one.
    assert sm.pipe_edges(homes, consumers, "tree", 1) == [
        ("p", "C", "D", 1),
        ("p", "D", "A", 2),
        ("p", "A", "B", 3),
    ]
    assert sm.pipe_counts(homes, consumers, "tree", 1) == {"pipes": 3, "pairs": 3, "hops": 3}
    assert sm.pipe_counts(homes, consumers, "mesh") == {"pipes": 3, "pairs": 3, "hops": 1}


def test_tree_breadth_first_with_fanout_two() -> None:
    homes = {"p": "s0"}
    consumers = [("p", f"s{i}") for i in range(1, 8)]  # 7 destinations
    edges = sm.pipe_edges(homes, consumers, "tree", 2)
    assert [(src, dst, hops) for _, src, dst, hops in edges] == [
        ("s0", "s1", 1),
        ("s0", "s2", 1),
        ("s1", "s3", 2),
        ("s1", "s4", 2),
        ("s2", "s5", 2),
        ("s2", "s6", 2),
        ("s3", "s7", 3),
    ]
    assert sm.pipe_counts(homes, consumers, "tree", 2) == {"pipes": 7, "pairs": 7, "hops": 3}
    # Six destinations fill two levels exactly.
    assert sm.pipe_counts(homes, consumers[:6], "tree", 2)["hops"] == 2


def test_tree_pairs_shared_between_producers() -> None:
    # Two producers on A, fanout 1, both consumed on B and C: A-B and B-C carry both.
    homes = {"p1": "A", "p2": "A"}
    consumers = [(p, s) for p in homes for s in "BC"]
    assert sm.pipe_counts(homes, consumers, "tree", 1) == {"pipes": 4, "pairs": 2, "hops": 2}
    assert sm.pipe_counts(homes, consumers, "mesh") == {"pipes": 4, "pairs": 2, "hops": 1}


def test_tree_default_fanout_is_eight() -> None:
    homes = {"p": "h"}
    consumers = [("p", f"s{i:02d}") for i in range(9)]
    assert sm.pipe_counts(homes, consumers, "tree")["hops"] == 2  # 9 > 8
    assert sm.pipe_counts(homes, consumers[:8], "tree")["hops"] == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown producer"):
        sm.pipe_counts({"p": "A"}, [("q", "B")])
    with pytest.raises(ValueError, match="fanout"):
        sm.pipe_counts({"p": "A"}, [("p", "B")], "tree", 0)
    with pytest.raises(ValueError, match="mode"):
        sm.pipe_counts({"p": "A"}, [("p", "B")], "ring")
    with pytest.raises(ValueError):
        sm.model(10, 11)
    with pytest.raises(ValueError):
        sm.Params(fanout=0)


# -- pipe_counts, properties -------------------------------------------------------------

SERVER_IDS = [f"s{i}" for i in range(7)]


@st.composite
def rooms(draw: Any) -> tuple[dict[str, str], list[tuple[str, str]]]:
    n = draw(st.integers(1, 12))
    homes = {f"p{i}": draw(st.sampled_from(SERVER_IDS)) for i in range(n)}
    consumers = draw(
        st.lists(st.tuples(st.sampled_from(sorted(homes)), st.sampled_from(SERVER_IDS)))
    )
    return homes, consumers


@FAST
@given(rooms(), st.integers(1, 8))
def test_pipe_invariants(room: tuple[dict[str, str], list[tuple[str, str]]], k: int) -> None:
    homes, consumers = room
    servers = set(SERVER_IDS)
    needed = {(p, s) for p, s in consumers if s != homes[p]}
    mesh = sm.pipe_counts(homes, consumers, "mesh")
    tree = sm.pipe_counts(homes, consumers, "tree", k)
    for counts in (mesh, tree):
        # One copy per (producer, other server with a consumer), never more.
        assert counts["pipes"] == len(needed) <= len(homes) * (len(servers) - 1)
        assert counts["pairs"] <= min(counts["pipes"], len(servers) * (len(servers) - 1) // 2)
        assert (counts["hops"] == 0) == (counts["pipes"] == 0)
    assert mesh["hops"] <= 1
    assert mesh["hops"] <= tree["hops"] <= max(1, len(servers) - 1)
    # Every destination receives exactly one copy, from a server that has the stream.
    edges = sm.pipe_edges(homes, consumers, "tree", k)
    assert {(p, dst) for p, _, dst, _ in edges} == needed
    has = {(p, homes[p]) for p in homes}
    for p, src, dst, _ in edges:
        assert (p, src) in has
        has.add((p, dst))
    sent = Counter((p, src) for p, src, _, _ in edges)
    assert max(sent.values(), default=0) <= k


@FAST
@given(rooms())
def test_tree_is_mesh_when_fanout_covers_every_server(
    room: tuple[dict[str, str], list[tuple[str, str]]],
) -> None:
    homes, consumers = room
    mesh = sm.pipe_counts(homes, consumers, "mesh")
    assert sm.pipe_counts(homes, consumers, "tree", len(SERVER_IDS) - 1) == mesh
    assert sm.pipe_edges(homes, consumers, "tree", 100) == sm.pipe_edges(homes, consumers)


@FAST
@given(rooms(), st.integers(1, 7))
def test_larger_fanout_never_adds_hops(
    room: tuple[dict[str, str], list[tuple[str, str]]], k: int
) -> None:
    homes, consumers = room
    deep = sm.pipe_counts(homes, consumers, "tree", k)
    shallow = sm.pipe_counts(homes, consumers, "tree", k + 1)
    assert shallow["hops"] <= deep["hops"]
    assert shallow["pipes"] == deep["pipes"]


# -- the model against the rule ----------------------------------------------------------


def _explicit(
    participants: int, servers: int, subscription: str, params: Any
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The model's room written out: participant i on server i mod S, consuming every
    consumed producer but its own."""
    sid = [f"s{i:04d}" for i in range(servers)]  # ids sort like the servers' numbers
    where = {i: sid[i % servers] for i in range(participants)}
    sub = sm.resolve_subscription(participants, subscription, params)
    n_video = participants if sub == "all" else min(participants, params.last_n)
    n_audio = participants if sub == "all" else min(participants, params.audio_cap)
    producers = [f"v{i}" for i in range(n_video)] + [f"a{i}" for i in range(n_audio)]
    homes = {p: where[int(p[1:])] for p in producers}
    consumers = [(p, where[i]) for p in producers for i in range(participants) if i != int(p[1:])]
    return homes, consumers


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 12),
    st.sampled_from(["mesh", "tree"]),
    st.integers(1, 5),
    st.sampled_from(["all", "lastn"]),
    st.integers(0, 6),
    st.integers(0, 9),
)
def test_model_agrees_with_the_explicit_rule(
    participants: int,
    servers: int,
    topology: str,
    k: int,
    subscription: str,
    last_n: int,
    audio_cap: int,
) -> None:
    servers = min(servers, participants)
    params = sm.Params(fanout=k, last_n=last_n, audio_cap=audio_cap)
    result = sm.model(participants, servers, topology, params, subscription)
    homes, consumers = _explicit(participants, servers, subscription, params)
    counts = sm.pipe_counts(homes, consumers, topology, k)
    assert (result.pipes, result.pairs, result.hops) == (
        counts["pipes"],
        counts["pairs"],
        counts["hops"],
    )
    edges = sm.pipe_edges(homes, consumers, topology, k)
    out = Counter(src for _, src, _, _ in edges)
    into = Counter(dst for _, _, dst, _ in edges)
    for load in result.loads:
        name = f"s{load.server:04d}"
        assert (load.pipe_copies_out, load.pipe_copies_in) == (out[name], into[name])


def test_model_pairs_with_every_server_a_home() -> None:
    # The closed form for "every server hosts a consumed producer" against the rule.
    for servers, k in [(10, 2), (12, 3), (30, 8), (17, 1)]:
        params = sm.Params(fanout=k)
        result = sm.model(servers * 2, servers, "tree", params, "all")
        homes, consumers = _explicit(servers * 2, servers, "all", params)
        assert result.pairs == sm.pipe_counts(homes, consumers, "tree", k)["pairs"]


def test_hand_computed_small_room() -> None:
    # 10 people on 1 server, everyone receives everyone: each receives 9 audio (40 kbit/s,
    # 50 packets/s) and 9 video layers (500 kbit/s, 50 packets/s), publishes 1.54 Mbit/s.
    r = sm.model(10, 1, "mesh", sm.Params(), "all")
    (load,) = r.loads
    assert load.client_out_bps == pytest.approx(10 * 9 * 540_000)
    assert load.client_in_bps == pytest.approx(10 * 1_540_000)
    assert load.sent_pps == pytest.approx(10 * 9 * 100)
    assert load.received_pps == pytest.approx(10 * 200)
    assert load.cores == pytest.approx((9_000 + 2_000) / 200_000)
    assert (r.pipes, r.pairs, r.hops, load.workers) == (0, 0, 0, 1)
    # Same room on 3 servers (4, 3, 3 people): server 0 sends its 4 participants'
    # 8 producers to 2 servers, and receives the other 6 participants' 12.
    r3 = sm.model(10, 3, "mesh", sm.Params(), "all")
    assert r3.pipes == 20 * 2 and r3.pairs == 3 and r3.hops == 1
    s0 = r3.loads[0]
    assert (s0.pipe_copies_out, s0.pipe_copies_in) == (16, 12)
    assert s0.pipe_out_bps == pytest.approx(4 * 2 * 1_540_000)
    assert s0.pipe_in_bps == pytest.approx(6 * 1_540_000)


def test_workers_get_their_own_copies() -> None:
    # 100 people on one server, everyone receives everyone: 990,000 packets/s sent,
    # 20,000 received; each worker beyond the first receives and sends the 100
    # participants' 20,000 packets/s once more. 7 workers: 1.25 M <= 1.4 M.
    r = sm.model(100, 1, "mesh", sm.Params(), "all")
    (load,) = r.loads
    assert load.workers == 7
    assert load.sent_pps == pytest.approx(990_000 + 6 * 20_000)
    assert load.cores == pytest.approx((990_000 + 20_000 + 12 * 20_000) / 200_000)
    assert r.fits
    crowded = sm.model(100, 1, "mesh", sm.Params(cores=4), "all")
    assert crowded.loads[0].workers == 4 and not crowded.fits
    assert crowded.problems[0].startswith("cpu")


def test_workers_when_no_number_of_them_fits() -> None:
    p = sm.Params(cores=8, core_pps=100.0)
    assert sm._workers(100.0, 50.0, p) == 1
    assert sm._workers(150.0, 50.0, p) == 2  # 150 + 50 <= 200
    assert sm._workers(10_000.0, 50.0, p) == 8  # too much: spread it over every core
    assert sm._workers(150.0, 150.0, p) == 1  # a worker's copies cost more than it adds
    # A server carrying 1,000 video producers for one local consumer: its only worker
    # has 1.5 cores of work, and a second worker would cost its own copies (1.5 more).
    params = sm.Params(video_forward_pps=0.0, audio_pps=0.0)
    r = sm.model(1_000, 1_000, "mesh", params, "all")
    assert {x.workers for x in r.loads} == {1}
    assert r.max_cores == pytest.approx((999 * 150 * 2 + 150) / 200_000)
    assert r.problems == ["cpu 1.5 cores of work on 1 worker(s)"]


def test_core_capacity_flag_scales_cpu() -> None:
    base = sm.model(1_000, 10, "mesh")
    half = sm.model(1_000, 10, "mesh", sm.Params(core_pps=100_000))
    assert half.loads[0].sent_pps >= base.loads[0].sent_pps
    assert half.total_cores >= 2 * base.total_cores - 1e-9


def _totals_consistent(r: Any) -> None:
    loads = r.loads
    assert sum(x.participants for x in loads) == r.participants
    assert sum(x.pipe_copies_out for x in loads) == r.pipes == sum(x.pipe_copies_in for x in loads)
    assert sum(x.pipe_out_bps for x in loads) == pytest.approx(sum(x.pipe_in_bps for x in loads))
    p = r.params
    per_person = r.video_streams * p.video_forward_bps + r.audio_streams * p.audio_bps
    own = r.video_streams * p.video_forward_bps + r.audio_streams * p.audio_bps
    total_out = r.participants * per_person - own  # nobody receives their own streams
    assert sum(x.client_out_bps for x in loads) == pytest.approx(total_out)
    assert sum(x.client_in_bps for x in loads) == pytest.approx(
        r.participants * (p.video_publish_bps + p.audio_bps)
    )
    assert r.pipes == (r.video_streams + r.audio_streams) * (r.servers - 1)
    assert r.total_cores == pytest.approx(
        sum(x.sent_pps + p.recv_weight * x.received_pps for x in loads) / p.core_pps
    )
    summary = r.summary()
    assert summary["busiest_egress_bps"] == max(x.egress_bps for x in loads)
    assert summary["fits"] == (not summary["problems"])


@FAST
@given(
    st.integers(1, 3_000),
    st.integers(1, 60),
    st.sampled_from(["mesh", "tree"]),
    st.sampled_from(["auto", "all", "lastn"]),
)
def test_per_server_and_global_totals_agree(
    participants: int, servers: int, topology: str, subscription: str
) -> None:
    r = sm.model(participants, min(servers, participants), topology, None, subscription)
    _totals_consistent(r)


def test_totals_agree_on_the_table() -> None:
    for r in sm.scenarios():
        _totals_consistent(r)


@FAST
@given(
    st.integers(2, 2_000),
    st.integers(1, 40),
    st.sampled_from(["auto", "all", "lastn"]),
    st.integers(1, 50),
)
def test_tree_equals_mesh_when_fanout_covers_every_server(
    participants: int, servers: int, subscription: str, extra: int
) -> None:
    servers = min(servers, participants)
    params = sm.Params(fanout=max(1, servers - 1) + extra - 1)
    tree = sm.model(participants, servers, "tree", params, subscription)
    mesh = sm.model(participants, servers, "mesh", params, subscription)
    assert tree.loads == mesh.loads
    assert (tree.pipes, tree.pairs, tree.hops) == (mesh.pipes, mesh.pairs, mesh.hops)


@pytest.mark.parametrize(
    ("participants", "servers"),
    [(1_000, 100), (1_000, 1_000), (10_000, 100), (10_000, 1_000), (100_000, 1_000)],
)
def test_tree_bounds_the_busiest_egress_of_big_rooms(participants: int, servers: int) -> None:
    mesh = sm.model(participants, servers, "mesh")
    tree = sm.model(participants, servers, "tree")
    k = tree.fanout
    assert tree.busiest.egress_bps <= mesh.busiest.egress_bps
    assert max(x.pipe_out_bps for x in tree.loads) <= max(x.pipe_out_bps for x in mesh.loads)
    assert tree.hops == sm.tree_depth(servers - 1, k) > mesh.hops == 1
    assert tree.pipes == mesh.pipes
    if servers == 1_000:  # 999 copies from a speaker's server vs at most k per relay
        assert tree.busiest.egress_bps < mesh.busiest.egress_bps
        assert max(x.pipe_out_bps for x in mesh.loads) == pytest.approx(999 * (1_500_000 + 40_000))


@FAST
@given(
    st.integers(1, 5_000),
    st.integers(1, 5_000),
    st.integers(1, 50),
    st.sampled_from(["mesh", "tree"]),
    st.sampled_from(["all", "lastn"]),
)
def test_bigger_rooms_cost_more(
    a: int, b: int, servers: int, topology: str, subscription: str
) -> None:
    small, big = sorted((a, b))
    servers = min(servers, small)
    r_small = sm.model(small, servers, topology, None, subscription)
    r_big = sm.model(big, servers, topology, None, subscription)
    assert r_big.pipes >= r_small.pipes
    assert r_big.total_cores >= r_small.total_cores - 1e-9
    total = [sum(x.egress_bps for x in r.loads) for r in (r_small, r_big)]
    assert total[1] >= total[0] - 1e-3


@FAST
@given(st.integers(1, 3_000), st.integers(1, 60), st.integers(1, 60))
def test_more_servers_more_pipes_less_client_load(p: int, s1: int, s2: int) -> None:
    few, many = sorted((min(s1, p), min(s2, p)))
    r_few = sm.model(p, few, "mesh", None, "lastn")
    r_many = sm.model(p, many, "mesh", None, "lastn")
    assert r_many.pipes >= r_few.pipes
    assert max(x.client_out_bps for x in r_many.loads) <= max(x.client_out_bps for x in r_few.loads)


def test_fewest_servers_bisection_assumption_holds_on_a_grid() -> None:
    for room in (1_000, 5_000):
        for topology in ("mesh", "tree"):
            fits = [sm.model(room, s, topology).fits for s in range(1, 120)]
            first = fits.index(True)
            assert all(fits[first:]) and not any(fits[:first])
            assert sm.fewest_servers(room, topology) == first + 1
    assert sm.fewest_servers(10) == 1
    assert sm.fewest_servers(10_000, "mesh", None, "all") is None  # all-to-all never fits


def test_a_room_on_one_server_that_does_not_fit_says_why() -> None:
    r = sm.model(100_000, 1)
    assert not r.fits
    assert [p.split()[0] for p in r.problems] == ["cpu", "egress", "ingress"]


# -- the script --------------------------------------------------------------------------


def test_main_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert sm.main([]) == 0
    out = capsys.readouterr().out
    assert "| room" in out and "mesh=tree" in out and "tree k=8" in out
    assert "100,000 |   1,000 | lastn | mesh" in out
    assert "Fewest servers" in out
    table = [line for line in out.splitlines() if line.startswith("|")]
    widths = {len(line) for line in table[: len(sm.scenarios()) + 2]}
    assert len(widths) == 1  # aligned


def test_main_json_parses(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--json", "--rooms", "10,1000", "--servers", "1,3,100", "--fanout", "4"]
    assert sm.main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["params"]["fanout"] == 4
    rows = [(s["participants"], s["servers"], s["topology"]) for s in doc["scenarios"]]
    assert rows == [
        (10, 1, "mesh"),
        (10, 3, "mesh"),
        (1000, 1, "mesh"),
        (1000, 3, "mesh"),
        (1000, 100, "mesh"),
        (1000, 100, "tree"),
    ]
    assert set(doc["fewest_servers"]) == {"mesh", "tree"}
    assert doc["fewest_servers"]["mesh"]["10"] == 1
    assert all(isinstance(s["fits"], bool) for s in doc["scenarios"])


def test_main_flags_override_assumptions(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--json", "--rooms", "100", "--servers", "1", "--core-pps", "100000"]
    assert sm.main(argv) == 0
    (row,) = json.loads(capsys.readouterr().out)["scenarios"]
    assert row["total_cores"] > 1.5 * sm.model(100, 1, "mesh").total_cores
    assert sm.main(["--fanout", "0"]) == 2
    assert "fanout" in capsys.readouterr().err


def test_script_runs_as_a_file() -> None:
    import subprocess

    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "scale_model.py"),
            "--json",
            "--rooms",
            "10",
            "--servers",
            "1,3",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert len(json.loads(done.stdout)["scenarios"]) == 2


def test_scale_md_shows_the_current_tables() -> None:
    doc = (BENCH / "SCALE.md").read_text()
    params = sm.Params()
    for line in sm.format_table(sm.scenarios(params)).splitlines():
        assert line in doc
    fewest = {t: {r: sm.fewest_servers(r, t, params) for r in sm.ROOMS} for t in sm.TOPOLOGIES}
    for line in sm.format_fewest(fewest, 1_000).splitlines():
        assert line in doc
