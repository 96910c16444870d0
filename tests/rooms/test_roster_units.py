"""The roster's bookkeeping without sockets: peers' seats, snapshots that replace them, a node
that goes away, the cap on peers' seats, and the peer events' wire form (malformed refused)."""

from __future__ import annotations

from typing import Any

import pytest

from chatserver.pool.events import decode, encode
from chatserver.protocol.events import Outgoing
from chatserver.rooms import roster as roster_module
from chatserver.rooms.hub import Hub
from chatserver.rooms.roster import Roster, RosterChanged, RosterSnapshot


class Watcher:
    """A live subscriber of the room (what the hub fans out to)."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.user = None

    def send(self, item: Outgoing) -> None:
        self.got.append(item.obj)

    def resync(self, room: int, reason: str) -> None:
        raise AssertionError("not expected")


async def no_messages(*_args: Any) -> Any:
    return 0, []


async def make(limit: int = 75) -> tuple[Roster, Watcher, list[Any]]:
    hub = Hub(cache_size=5, load_recent=no_messages, load_after=no_messages)
    watcher = Watcher()
    hub.subscribe(await hub.room(1), watcher)
    sent: list[Any] = []
    return Roster("me", hub, lambda: limit, sent.append), watcher, sent


async def test_local_seats_are_told_to_peers_once_per_user() -> None:
    roster, watcher, sent = await make()
    roster.enter(1, 10, "ann")
    roster.enter(1, 10, "ann")  # a second connection
    assert sent == [RosterChanged("me", 1, 10, "ann", True)]
    assert [e["ev"] for e in watcher.got] == ["joined"]
    roster.exit(1, 10)
    assert len(sent) == 1 and roster.count(1) == 1
    roster.exit(1, 10)
    roster.exit(1, 10)  # more exits than entries change nothing
    assert sent[-1] == RosterChanged("me", 1, 10, "ann", False) and roster.count(1) == 0
    assert [e["ev"] for e in watcher.got] == ["joined", "left"]


async def test_snapshot_replaces_and_a_gone_node_leaves() -> None:
    roster, watcher, _sent = await make()
    roster.apply(RosterChanged("b", 1, 20, "bea", True))
    roster.apply(RosterChanged("c", 1, 20, "bea", True))  # bea on two nodes
    roster.apply(RosterChanged("b", 1, 21, "bob", True))
    assert roster.count(1) == 2
    # b's snapshot: bob is gone, cid is new; in two parts.
    roster.apply(RosterSnapshot("b", ((1, 20, "bea"),), True, False))
    assert roster.count(1) == 2  # nothing changes before the last part
    roster.apply(RosterSnapshot("b", ((1, 22, "cid"),), False, True))
    assert [p["name"] for p in roster.listing(1)["participants"]] == ["bea", "cid"]
    roster.node_gone("b")
    assert [p["name"] for p in roster.listing(1)["participants"]] == ["bea"]  # still on c
    roster.node_gone("c")
    assert roster.count(1) == 0 and roster.remote_seats() == 0
    names = [(e["ev"], e["user"]["name"]) for e in watcher.got]
    assert names == [
        ("joined", "bea"),
        ("joined", "bob"),
        ("left", "bob"),
        ("joined", "cid"),
        ("left", "cid"),
        ("left", "bea"),
    ]


async def test_a_snapshot_part_without_its_start_is_ignored() -> None:
    roster, _watcher, _sent = await make()
    roster.apply(RosterSnapshot("b", ((1, 20, "bea"),), False, True))
    assert roster.count(1) == 0


async def test_peers_seats_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(roster_module, "MAX_REMOTE_SEATS", 3)
    roster, _watcher, _sent = await make()
    for user in range(10):
        roster.apply(RosterChanged("b", 1, user, f"u{user}", True))
    assert roster.remote_seats() == 3 and roster.count(1) == 3
    roster.apply(RosterSnapshot("c", tuple((2, u, "x") for u in range(5)), True, True))
    assert roster.count(2) == 0


async def test_own_name_from_a_peer_is_ignored() -> None:
    roster, _watcher, _sent = await make()
    roster.apply(RosterChanged("me", 1, 5, "eve", True))
    assert roster.count(1) == 0


async def test_limit_zero_sends_no_roster_events() -> None:
    roster, watcher, _sent = await make(limit=0)
    roster.enter(1, 10, "ann")
    roster.apply(RosterChanged("b", 1, 11, "bob", True))
    assert [e["ev"] for e in watcher.got] == ["participants.updates"]
    assert roster.listing(1)["updates"] is False


@pytest.mark.parametrize(
    "event",
    [
        RosterChanged("n1", 3, 4, "ann", True),
        RosterSnapshot("n1", ((3, 4, "ann"), (5, 6, "bob")), True, False),
        RosterSnapshot("n1", (), True, True),
    ],
)
def test_wire_round_trip(event: Any) -> None:
    assert decode(encode(event)) == event


@pytest.mark.parametrize(
    "wire",
    [
        {"t": "roster", "node": "n", "room": 1, "user": 2, "name": "x", "joined": 1},
        {"t": "roster", "node": "n", "room": "1", "user": 2, "name": "x", "joined": True},
        {"t": "roster", "node": "n", "room": 1, "user": 2, "joined": True},
        {"t": "roster.all", "node": "n", "seats": [[1, 2]], "first": True, "last": True},
        {"t": "roster.all", "node": "n", "seats": "x", "first": True, "last": True},
        {"t": "roster.all", "node": "n", "seats": [], "first": None, "last": True},
    ],
)
def test_malformed_roster_events_are_refused(wire: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        decode(wire)
