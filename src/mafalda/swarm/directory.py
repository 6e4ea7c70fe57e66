"""Where a swarm's producers live, without asking every server.

Each producer id has one *directory server* among the swarm's live members, the same
for every server that knows the same members: the one whose hash with the id is
highest (rendezvous hashing). The producer's home server tells that server
('announce') and takes it back when the producer closes ('forget'); a server looking
for the producer asks the directory server first ('locate'), then the home it names.
Only when that fails (an older peer, members still converging, an entry lost with its
directory server) does it ask every peer, so a wrong or missing entry costs time,
never a wrong answer: the home still says whether it has the producer.

When members come or go, each id's directory server changes only if the new member
wins it or the old one left: about 1/N of the ids move, and their homes tell the new
directory servers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["Directory", "beats", "directory_server"]

#: Entries a server keeps for others at most (the oldest dropped first): a dropped one
#: only sends its lookups to every peer.
DEFAULT_LIMIT = 262_144

Key = tuple[str, bool]  # (producer id, data)


def _score(server_id: str, producer_id: str) -> int:
    digest = hashlib.blake2b(f"{server_id}\0{producer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _ahead(score: int, server_id: str, other_score: int, other_id: str) -> bool:
    # Ties (a 64-bit collision) go to the lower id: every server picks the same one.
    return score > other_score or (score == other_score and server_id < other_id)


def beats(challenger: str, holder: str, producer_id: str) -> bool:
    """Whether ``challenger`` would be the directory server of ``producer_id`` rather
    than ``holder`` (what a server that joins changes: nothing else moves)."""
    return _ahead(_score(challenger, producer_id), challenger, _score(holder, producer_id), holder)


def directory_server(producer_id: str, server_ids: Iterable[str]) -> str | None:
    """The directory server of ``producer_id`` among ``server_ids`` (None: no server)."""
    best: str | None = None
    best_score = -1
    for server_id in server_ids:
        score = _score(server_id, producer_id)
        if best is None or _ahead(score, server_id, best_score, best):
            best, best_score = server_id, score
    return best


class Directory:
    """The entries a server keeps as the directory server of their ids: the home of each
    producer, as its home announced it."""

    def __init__(self, limit: int = DEFAULT_LIMIT, per_home: int | None = None) -> None:
        """``per_home``: the entries of one home kept at most (a quarter of ``limit`` by
        default), its oldest dropped first: a server that announces without end (a
        runaway app) pushes out its own entries, not the other servers'."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if per_home is not None and per_home < 1:
            raise ValueError("per_home must be at least 1")
        self.limit = limit
        self.per_home = max(1, limit // 4) if per_home is None else per_home
        self._home: dict[Key, str] = {}
        self._listed: dict[str, dict[Key, None]] = {}  # each home's entries, oldest first

    def __len__(self) -> int:
        return len(self._home)

    def get(self, key: Key) -> str | None:
        return self._home.get(key)

    def put(self, key: Key, home: str) -> None:
        self.drop(key)
        self._home[key] = home
        listed = self._listed.setdefault(home, {})
        listed[key] = None
        if len(listed) > self.per_home:
            self.drop(next(iter(listed)))
        elif len(self._home) > self.limit:
            self.drop(next(iter(self._home)))

    def drop(self, key: Key, home: str | None = None) -> None:
        """Forget ``key`` (only if ``home`` announced it, when given: a late 'forget'
        from a former home of the id must not drop a new home's entry, as apps may give
        a new producer an old one's id)."""
        current = self._home.get(key)
        if current is None or (home is not None and current != home):
            return
        del self._home[key]
        listed = self._listed[current]
        del listed[key]
        if not listed:
            del self._listed[current]

    def homes_gone(self, server_ids: Iterable[str]) -> None:
        """Forget the entries of servers that left the swarm."""
        for server_id in server_ids:
            for key in self._listed.pop(server_id, ()):
                del self._home[key]
