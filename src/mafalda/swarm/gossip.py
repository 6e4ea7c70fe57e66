"""A swarm's membership table, spread by gossip: pure (no I/O), so testable alone.

Each media server keeps an entry per server it knows: the server's record (the same
``ServerRecord`` the Redis registry holds), its version and whether it left. A server
bumps its own version at every heartbeat; two servers exchanging tables (push-pull)
each keep, per server, the entry with the higher version. So a fact reaches every
server in O(log n) rounds, with no server in charge.

- A version is ``(generation, beat)``: the generation is when the server started (ms
  since the epoch), so a server restarted with the same id outranks its former life,
  whose beats went higher. A newer generation of a live server is a leave of the
  former life, then a join (what a peer had with that life is gone).
- A server nobody has heard a newer version of for ``fail_after`` seconds is dropped
  (killed, cut off). What is dropped is remembered for ``forget_after`` seconds: a
  peer still gossiping the old version does not bring it back.
- A server that leaves politely spreads a tombstone (``left``) with a newer version:
  every server drops it at once, not ``fail_after`` later.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypedDict

from mafalda.horizontal.registry import ServerRecord, check_record, is_server_id, json_object

__all__ = [
    "MAX_ENTRIES",
    "SWARM_VERSION",
    "Change",
    "Entry",
    "Table",
    "decode_gossip",
    "encode_gossip",
]

#: The gossip format's version (a message says which it is).
SWARM_VERSION = 1
#: Entries one message may carry, and a table may hold: a bound on what a peer can make
#: this server keep. 2,000 records (~330 bytes each) fit in the 1 MiB messages a
#: server takes by default.
MAX_ENTRIES = 2_000

Change = tuple[Literal["join", "update", "leave"], str]


class Entry(TypedDict):
    record: ServerRecord
    generation: int  # when the server started, ms since the epoch
    beat: int  # its heartbeats in this generation
    left: bool  # a tombstone: it left politely


def _version(entry: Entry) -> tuple[int, int]:
    return entry["generation"], entry["beat"]


def encode_gossip(entries: list[Entry]) -> bytes:
    return json.dumps({"swarm": SWARM_VERSION, "entries": entries}, separators=(",", ":")).encode()


def _count(data: dict[str, Any], name: str, where: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
        raise ValueError(f"{where}: invalid {name!r}")
    return value


def decode_gossip(raw: str | bytes) -> list[Entry]:
    """The entries of a gossip message (ValueError naming what is wrong)."""
    data = json_object(raw, "gossip")
    if data.get("swarm") != SWARM_VERSION:
        raise ValueError(f"gossip: not swarm version {SWARM_VERSION}")
    items = data.get("entries")
    if not isinstance(items, list):
        raise ValueError("gossip: invalid 'entries'")
    if len(items) > MAX_ENTRIES:
        raise ValueError(f"gossip: more than {MAX_ENTRIES} entries")
    entries: list[Entry] = []
    for index, item in enumerate(items):
        where = f"gossip entry {index}"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: not an object")
        record = item.get("record")
        if not isinstance(record, dict):
            raise ValueError(f"{where}: invalid 'record'")
        try:
            checked = check_record(record)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if not is_server_id(checked["id"]):
            raise ValueError(f"{where}: invalid server id {checked['id']!r}")
        left = item.get("left")
        if not isinstance(left, bool):
            raise ValueError(f"{where}: invalid 'left'")
        entries.append(
            {
                "record": checked,
                "generation": _count(item, "generation", where),
                "beat": _count(item, "beat", where),
                "left": left,
            }
        )
    return entries


class Table:
    """One server's view of the swarm. ``now`` arguments are the caller's monotonic
    clock."""

    def __init__(
        self,
        own: ServerRecord,
        *,
        generation: int,
        fail_after: float,
        forget_after: float | None = None,
    ) -> None:
        if fail_after <= 0:
            raise ValueError("fail_after must be > 0")
        self.id = own["id"]
        self.fail_after = fail_after
        self.forget_after = 4 * fail_after if forget_after is None else forget_after
        self._own: Entry = {"record": own, "generation": generation, "beat": 0, "left": False}
        #: Other servers, live or tombstones, and when each last got a newer version.
        self._entries: dict[str, Entry] = {}
        self._heard: dict[str, float] = {}
        #: Versions of what was dropped, and when: older gossip of them is ignored.
        self._gone: dict[str, tuple[tuple[int, int], float]] = {}

    @property
    def own(self) -> Entry:
        return self._own

    def beat(self, record: ServerRecord) -> None:
        """A heartbeat: this server's record now, with a newer version."""
        if record["id"] != self.id:
            raise ValueError("a table beats for its own server only")
        self._own = {**self._own, "record": record, "beat": self._own["beat"] + 1}

    def leave(self) -> None:
        """This server leaves: its next gossip is its tombstone."""
        self._own = {**self._own, "beat": self._own["beat"] + 1, "left": True}

    def entries(self) -> list[Entry]:
        """What this server gossips: itself first, then every entry it holds."""
        return [self._own, *self._entries.values()]

    def records(self) -> dict[str, ServerRecord]:
        """The live servers' records, this one's included (unless it left)."""
        live = {i: e["record"] for i, e in self._entries.items() if not e["left"]}
        if not self._own["left"]:
            live[self.id] = self._own["record"]
        return live

    def departed(self) -> frozenset[str]:
        """Servers whose tombstone this table holds."""
        return frozenset(i for i, e in self._entries.items() if e["left"])

    def peers(self) -> list[ServerRecord]:
        """The other live servers (whom to gossip with)."""
        return [e["record"] for e in self._entries.values() if not e["left"]]

    def merge(self, entries: list[Entry], now: float) -> list[Change]:
        """Take what is newer in a peer's entries; the changes it made, in order."""
        changes: list[Change] = []
        for entry in entries:
            server_id = entry["record"]["id"]
            if server_id == self.id:
                continue  # this server knows itself best
            known = self._entries.get(server_id)
            if known is not None:
                if _version(entry) <= _version(known) and not (
                    _version(entry) == _version(known) and entry["left"] and not known["left"]
                ):
                    continue
            else:
                gone = self._gone.get(server_id)
                if gone is not None and _version(entry) <= gone[0]:
                    continue
                if entry["left"]:
                    # Unknown here: remembered as gone, not kept as a tombstone to spread.
                    self._gone[server_id] = (_version(entry), now)
                    continue
                if len(self._entries) >= MAX_ENTRIES:
                    continue
            self._gone.pop(server_id, None)
            self._entries[server_id] = entry
            self._heard[server_id] = now
            if known is None or known["left"]:
                changes.append(("leave" if entry["left"] else "join", server_id))
            elif entry["left"]:
                changes.append(("leave", server_id))
            elif entry["generation"] > known["generation"]:
                # Restarted (no leave of its former life came): that life left, with
                # whatever it had (streams to and from it), and a new one joins.
                changes += [("leave", server_id), ("join", server_id)]
            elif entry["record"] != known["record"]:
                changes.append(("update", server_id))
        return changes

    def expire(self, now: float) -> list[str]:
        """Drop servers silent for ``fail_after`` (and tombstones after ``forget_after``):
        the live ones dropped."""
        dropped: list[str] = []
        for server_id, entry in list(self._entries.items()):
            silent = now - self._heard[server_id]
            if silent >= (self.forget_after if entry["left"] else self.fail_after):
                del self._entries[server_id]
                del self._heard[server_id]
                self._gone[server_id] = (_version(entry), now)
                if not entry["left"]:
                    dropped.append(server_id)
        for server_id, (_, since) in list(self._gone.items()):
            if now - since >= self.forget_after:
                del self._gone[server_id]
        return dropped
