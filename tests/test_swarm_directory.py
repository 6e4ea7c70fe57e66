"""The swarm's directory (``mafalda.swarm.directory``): pure, no process."""

from __future__ import annotations

import uuid

import pytest

from mafalda.swarm.directory import Directory, beats, directory_server
from mafalda.swarm.streams import check_message

IDS = [str(uuid.UUID(int=i * 7919 + 1)) for i in range(3000)]


def test_every_server_picks_the_same_directory_server_whatever_the_order() -> None:
    members = ["s1", "s2", "s3", "s4"]
    for producer_id in IDS[:200]:
        picked = directory_server(producer_id, members)
        assert picked in members
        assert directory_server(producer_id, reversed(members)) == picked
    assert directory_server(IDS[0], []) is None


def test_ids_spread_over_the_servers_and_few_move_when_one_joins() -> None:
    before = [f"s{i}" for i in range(1, 6)]
    after = [*before, "s6"]
    counts = {server: 0 for server in before}
    moved = 0
    for producer_id in IDS:
        old = directory_server(producer_id, before)
        assert old is not None
        counts[old] += 1
        new = directory_server(producer_id, after)
        if new != old:
            assert new == "s6"  # only to the newcomer, never between the others
            moved += 1
    assert all(400 < count < 800 for count in counts.values()), counts  # about 600 each
    assert 350 < moved < 650  # about 1/6 of 3000


def test_ties_go_to_the_lower_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mafalda.swarm.directory._score", lambda server, producer: 7)
    assert directory_server("p", ["s3", "s1", "s2"]) == "s1"


def test_a_directory_keeps_each_home_and_forgets_what_it_is_told() -> None:
    directory = Directory()
    directory.put(("p", False), "s1")
    directory.put(("p", True), "s2")
    directory.put(("q", False), "s1")
    assert directory.get(("p", False)) == "s1" and directory.get(("p", True)) == "s2"
    directory.drop(("p", False), "s2")  # not s2's: kept
    assert directory.get(("p", False)) == "s1"
    directory.put(("p", False), "s3")  # the id given to a new producer on s3
    directory.drop(("p", False), "s1")  # s1's late forget
    assert directory.get(("p", False)) == "s3"
    directory.homes_gone(["s1", "s9"])
    assert directory.get(("q", False)) is None and len(directory) == 2
    directory.drop(("p", False))
    directory.drop(("p", True), "s2")
    assert len(directory) == 0
    directory.homes_gone(["s2", "s3"])  # nothing left of them


def test_a_directory_is_bounded_dropping_the_oldest() -> None:
    directory = Directory(limit=2, per_home=2)
    for name in ("a", "b", "c"):
        directory.put((name, False), "s1")
    assert [directory.get((n, False)) for n in ("a", "b", "c")] == [None, "s1", "s1"]
    directory.homes_gone(["s1"])
    assert len(directory) == 0
    with pytest.raises(ValueError, match="limit must be at least 1"):
        Directory(limit=0)
    with pytest.raises(ValueError, match="per_home must be at least 1"):
        Directory(per_home=0)
    assert (Directory().per_home, Directory(limit=100).per_home, Directory(limit=3).per_home) == (
        65_536,
        25,
        1,
    )


def test_one_home_cannot_push_out_the_others_entries() -> None:
    """A home past its share drops its own oldest entries; the others' stay, as long as
    the whole stays under the limit."""
    directory = Directory(limit=6, per_home=3)
    directory.put(("a", False), "s1")
    directory.put(("b", False), "s2")
    directory.put(("a", True), "s2")
    for name in ("c", "d", "e", "f"):
        directory.put((name, False), "s3")
    assert [directory.get((n, False)) for n in "abcdef"] == ["s1", "s2", None, "s3", "s3", "s3"]
    assert directory.get(("a", True)) == "s2" and len(directory) == 6
    directory.put(("c", False), "s3")  # announced again: its newest, its oldest goes
    assert directory.get(("d", False)) is None and directory.get(("c", False)) == "s3"
    directory.put(("g", False), "s4")  # past the limit, within its share: the oldest goes
    assert directory.get(("a", False)) is None and len(directory) == 6
    directory.put(("b", False), "s3")  # an id moved to a new home: the old home's goes
    assert directory.get(("b", False)) == "s3" and directory.get(("e", False)) is None
    directory.homes_gone(["s3"])
    assert [directory.get(k) for k in (("a", True), ("g", False))] == ["s2", "s4"]
    assert len(directory) == 2


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b'{"op": "announce", "producerId": "p"}', "invalid 'at'"),
        (b'{"op": "forget", "at": "s1"}', "invalid 'producerId'"),
        (b'{"op": "locate", "producerId": ""}', "invalid 'producerId'"),
        (b'{"op": "announce", "producerId": "p", "at": "s1", "data": 1}', "invalid 'data'"),
    ],
)
def test_directory_messages_are_checked(message: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        check_message(message)


def test_directory_messages_that_pass() -> None:
    for raw in (
        b'{"op": "announce", "producerId": "p", "at": "s1", "data": true}',
        b'{"op": "forget", "producerId": "p", "at": "s1"}',
        b'{"op": "locate", "producerId": "p"}',
    ):
        assert check_message(raw)["producerId"] == "p"


def test_a_joining_server_takes_exactly_the_ids_it_beats() -> None:
    members = ["s1", "s2", "s3", "s4"]
    for producer_id in IDS[:500]:
        holder = directory_server(producer_id, members)
        assert holder is not None
        joined = directory_server(producer_id, [*members, "s5"])
        assert (joined == "s5") == beats("s5", holder, producer_id)
        assert not beats(holder, holder, producer_id)
