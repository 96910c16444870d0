"""One numbering rule, two implementations: ``store_batch`` on SQLite and on PostgreSQL agree.

``store_batch`` numbers a group-commit batch by the rule of docs/architecture.md (section 3,
step 4): a post to a room that is gone gets no message; a (room, sender, cid) seen earlier in the
batch or already stored is a duplicate with the first message's ``seq``, ``ts`` and text;
otherwise it gets the room's ``last_seq + 1``, and it is kept (has a row) only when the room's
category has chat history on. SQLite runs the rule in Python (``messages._plan``); PostgreSQL runs
it in the PL/pgSQL function ``chat_store_batch`` (migration 0006) plus ``messages._results``.
This file holds the two together: every scenario runs on a SQLite database and on a PostgreSQL
database, and each post's outcome, the rooms' ``last_seq``, the stored rows and the compliance
``CHAT`` events must be the same on both — and the same as a small model of the rule written
straight from the documentation (``model`` below), so that a shared mistake fails too.

The clock is fixed per batch (``store_batch``'s ``ts``), so ``ts`` is compared exactly.

Hypothesis is synchronous while the databases live on the test's event loop: as in
test_governance, the property runs in a worker thread (asyncio.to_thread) and hands each
scenario to the loop with asyncio.run_coroutine_threadsafe. The two databases are shared by the
examples; each example makes fresh rooms. CHATSERVER_TEST_PLAN_EXAMPLES (default 60) sets how
many scenarios.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from chatserver.store import categories as category_store
from chatserver.store import messages as message_store
from chatserver.store import rooms as room_store
from chatserver.store import users as user_store
from chatserver.store.db import Database
from chatserver.store.messages import NewPost, Stored
from chatserver.store.migrate import upgrade
from chatserver.store.schema import compliance_outbox, messages, rooms
from chatserver.testing import PostgresCluster
from tests.conftest import DIALECTS, scaled

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not {"sqlite", "postgresql"} <= set(DIALECTS),
        reason="compares SQLite with PostgreSQL: needs both dialects",
    ),
]

EXAMPLES = int(os.environ.get("CHATSERVER_TEST_PLAN_EXAMPLES", "60"))
SENDERS = ("ann", "bob", "cyd")
NOWHERE = -1  # a room index meaning "a room that never existed"
NOWHERE_ID = 10**9
TS0 = 1_700_000_000_000  # batch n of a scenario is stored at TS0 + n
NODE = "plan-test"

# -- scenarios --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Post:
    room: int  # an index into Scenario.rooms, or NOWHERE
    sender: int  # an index into SENDERS
    cid: str
    text: str


@dataclass(frozen=True)
class Batch:
    posts: tuple[Post, ...]
    capture: bool = False  # write the compliance CHAT events (the PostgreSQL path differs)


@dataclass(frozen=True)
class Delete:
    room: int


@dataclass(frozen=True)
class Move:
    """Move a room to the category with chat history on (``history``) or off."""

    room: int
    history: bool


Step = Batch | Delete | Move


@dataclass(frozen=True)
class Scenario:
    rooms: tuple[bool, ...]  # per room: is it created in the category with chat history on
    steps: tuple[Step, ...]


# What a scenario leaves, in the scenario's terms (room and sender indexes, not database ids).
# A post's outcome: None (no message) or
# (room, seq, ts, sender, sender_name, text, cid, kept, state, duplicate).
Outcome = tuple[int, int, int, int, str, str, str, bool, str, bool] | None
# A stored row: (room, seq, sender, cid, text, ts, state).
Row = tuple[int, int, int, str, str, int, str]
# A CHAT event in the outbox, in outbox order: (room, sender, ts, node, payload).
ChatEvent = tuple[int, int, int, str, dict[str, Any]]


@dataclass
class Observed:
    outcomes: list[list[Outcome]] = field(default_factory=list)  # per batch, per post
    last_seqs: dict[int, int] = field(default_factory=dict)  # per room still there
    rows: list[Row] = field(default_factory=list)
    events: list[ChatEvent] = field(default_factory=list)


# -- the model: the documented rule, with the store as plain dicts ----------------------------


def model(scenario: Scenario) -> Observed:
    history = list(scenario.rooms)
    alive = [True] * len(history)
    last = [0] * len(history)
    stored: dict[tuple[int, int, str], tuple[int, int, str]] = {}  # key -> (seq, ts, text)
    observed = Observed()
    for n, step in enumerate(scenario.steps):
        if isinstance(step, Delete):
            alive[step.room] = False
            stored = {key: value for key, value in stored.items() if key[0] != step.room}
            continue
        if isinstance(step, Move):
            history[step.room] = step.history
            continue
        ts = TS0 + n
        first: dict[tuple[int, int, str], Outcome] = {}
        outcomes: list[Outcome] = []
        for p in step.posts:
            key = (p.room, p.sender, p.cid)
            name = SENDERS[p.sender]
            outcome: Outcome
            if p.room == NOWHERE or not alive[p.room]:
                outcome = None
            elif key in first:
                earlier = first[key]
                assert earlier is not None
                outcome = (*earlier[:9], True)
            elif key in stored:
                seq, old_ts, old_text = stored[key]
                outcome = (p.room, seq, old_ts, p.sender, name, old_text, p.cid, True, "", True)
                first[key] = outcome
            else:
                last[p.room] += 1
                kept = history[p.room]
                outcome = (p.room, last[p.room], ts, p.sender, name, p.text, p.cid, kept, "", False)
                first[key] = outcome
                if kept:
                    stored[key] = (last[p.room], ts, p.text)
                if step.capture:
                    payload = {"seq": last[p.room], "text": p.text, "cid": p.cid}
                    payload |= {"sender": name, "kept": kept}
                    observed.events.append((p.room, p.sender, ts, NODE, payload))
            outcomes.append(outcome)
        observed.outcomes.append(outcomes)
    observed.last_seqs = {room: last[room] for room in range(len(last)) if alive[room]}
    observed.rows = sorted(
        (room, seq, sender, cid, text, ts, "")
        for (room, sender, cid), (seq, ts, text) in stored.items()
    )
    return observed


# -- running a scenario on a real store -------------------------------------------------------


@dataclass
class Clock:
    """The time of each batch (``store_batch``'s ``ts``), set by the test."""

    now: int = TS0

    def __call__(self) -> int:
        return self.now


@dataclass
class Site:
    """One database with the users and the two categories every scenario uses."""

    db: Database
    users: list[int]
    categories: dict[bool, int]  # chat history on/off -> category id
    names: itertools.count[int] = field(default_factory=itertools.count)

    @classmethod
    async def open(cls, url: str) -> Site:
        db = Database(url)
        users = [(await user_store.create_user(db, name, "x")).id for name in SENDERS]
        categories = {
            history: await category_store.create_category(
                db, "history" if history else "live", chat_history=history
            )
            for history in (True, False)
        }
        return cls(db, users, categories)

    async def play(self, scenario: Scenario, clock: Clock) -> Observed:
        # SQLite gives a new room the id of a deleted one (rooms has no AUTOINCREMENT), so this
        # scenario's CHAT events are told from earlier ones by their outbox id, not by room.
        async with self.db.read() as conn:
            outbox_mark = (
                await conn.execute(select(func.coalesce(func.max(compliance_outbox.c.id), 0)))
            ).scalar_one()
        ids = [
            (
                await room_store.create_room(
                    self.db, f"room-{next(self.names)}", category_id=self.categories[history]
                )
            ).id
            for history in scenario.rooms
        ]
        room_of = {room_id: i for i, room_id in enumerate(ids)} | {NOWHERE_ID: NOWHERE}
        sender_of = {user_id: i for i, user_id in enumerate(self.users)}
        observed = Observed()
        for n, step in enumerate(scenario.steps):
            if isinstance(step, Delete):
                await room_store.delete_room(self.db, ids[step.room])
            elif isinstance(step, Move):
                category = self.categories[step.history]
                await room_store.update_room(self.db, ids[step.room], category_id=category)
            else:
                posts = [
                    NewPost(
                        NOWHERE_ID if p.room == NOWHERE else ids[p.room],
                        self.users[p.sender],
                        SENDERS[p.sender],
                        p.cid,
                        p.text,
                    )
                    for p in step.posts
                ]
                clock.now = TS0 + n
                capture = NODE if step.capture else None
                results = await message_store.store_batch(
                    self.db, posts, capture=capture, ts=clock.now
                )
                assert len(results) == len(posts)
                observed.outcomes.append([outcome(r, room_of, sender_of) for r in results])
        async with self.db.read() as conn:
            for row in await conn.execute(
                select(rooms.c.id, rooms.c.last_seq).where(rooms.c.id.in_(ids))
            ):
                observed.last_seqs[room_of[row.id]] = row.last_seq
            for row in await conn.execute(select(messages).where(messages.c.room_id.in_(ids))):
                observed.rows.append(
                    (
                        room_of[row.room_id],
                        row.seq,
                        sender_of[row.sender_id],
                        row.cid,
                        row.text,
                        row.ts,
                        row.state,
                    )
                )
            for row in await conn.execute(
                select(compliance_outbox)
                .where(compliance_outbox.c.id > outbox_mark, compliance_outbox.c.kind == "CHAT")
                .order_by(compliance_outbox.c.id)
            ):
                observed.events.append(
                    (
                        room_of[row.room_id],
                        sender_of[row.user_id],
                        row.ts_ms,
                        row.node,
                        json.loads(row.payload),
                    )
                )
        observed.last_seqs = dict(sorted(observed.last_seqs.items()))
        observed.rows.sort()
        return observed


def outcome(result: Stored, room_of: dict[int, int], sender_of: dict[int, int]) -> Outcome:
    m = result.message
    if m is None:
        assert not result.duplicate
        return None
    return (
        room_of[m.room],
        m.seq,
        m.ts,
        sender_of[m.sender_id],
        m.sender_name,
        m.text,
        m.cid,
        m.kept,
        m.state,
        result.duplicate,
    )


@dataclass
class Sites:
    sqlite: Site
    postgres: Site
    clock: Clock

    async def play(self, scenario: Scenario) -> Observed:
        """Run ``scenario`` on both databases; they must agree, and agree with the model."""
        on_sqlite = await self.sqlite.play(scenario, self.clock)
        on_postgres = await self.postgres.play(scenario, self.clock)
        expected = model(scenario)
        for part in ("outcomes", "last_seqs", "rows", "events"):
            sqlite, postgres = getattr(on_sqlite, part), getattr(on_postgres, part)
            assert sqlite == postgres, f"{part}: SQLite (_plan) != PostgreSQL (chat_store_batch)"
            assert sqlite == getattr(expected, part), f"{part}: both dialects != the model"
        return on_sqlite


_numbers = itertools.count(1)


@pytest.fixture
async def sites(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Sites]:
    sqlite_url = f"sqlite:///{tmp_path}/chat.db"
    await asyncio.to_thread(upgrade, sqlite_url)
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    pg_url = await cluster.create_database(f"plan_{next(_numbers)}", template="postgres")
    clock = Clock()
    pair = Sites(await Site.open(sqlite_url), await Site.open(pg_url), clock)
    try:
        yield pair
    finally:
        await pair.sqlite.db.close()
        await pair.postgres.db.close()


# -- hand-written cases -----------------------------------------------------------------------

ON, OFF = True, False  # a room's category: chat history on / off


def post(room: int, sender: int, cid: str, text: str = "") -> Post:
    return Post(room, sender, cid, text or f"{SENDERS[sender]}:{cid}")


async def test_a_repeat_of_a_message_that_was_not_kept(sites: Sites) -> None:
    """Within the batch it is a duplicate (not kept); in a later batch nothing recognises it (no
    row), so it is numbered again."""
    seen = await sites.play(
        Scenario(
            (OFF,),
            (
                Batch((post(0, 0, "a", "one"), post(0, 0, "a", "retry"), post(0, 1, "b"))),
                Batch((post(0, 0, "a", "later"),)),
            ),
        )
    )
    assert seen.outcomes == [
        [
            (0, 1, TS0, 0, "ann", "one", "a", OFF, "", False),
            (0, 1, TS0, 0, "ann", "one", "a", OFF, "", True),
            (0, 2, TS0, 1, "bob", "bob:b", "b", OFF, "", False),
        ],
        [(0, 3, TS0 + 1, 0, "ann", "later", "a", OFF, "", False)],
    ]
    assert seen.last_seqs == {0: 3} and seen.rows == []


async def test_a_room_moved_out_of_history_still_answers_stored_duplicates(sites: Sites) -> None:
    seen = await sites.play(
        Scenario(
            (ON,),
            (
                Batch((post(0, 0, "a", "kept"),)),
                Move(0, history=OFF),
                Batch((post(0, 0, "a", "retry"), post(0, 0, "b", "live"))),
            ),
        )
    )
    assert seen.outcomes[1] == [
        (0, 1, TS0, 0, "ann", "kept", "a", ON, "", True),
        (0, 2, TS0 + 2, 0, "ann", "live", "b", OFF, "", False),
    ]
    assert seen.rows == [(0, 1, 0, "a", "kept", TS0, "")]


async def test_a_deleted_room_in_the_middle_of_a_batch(sites: Sites) -> None:
    seen = await sites.play(
        Scenario(
            (ON, ON, ON),
            (
                Batch((post(1, 0, "a"),)),
                Delete(1),
                Batch(
                    (
                        post(0, 0, "a"),
                        post(1, 0, "a"),  # stored before the room went: gone with it
                        post(NOWHERE, 0, "a"),
                        post(1, 1, "b"),
                        post(2, 0, "a"),
                        post(0, 0, "a"),
                    ),
                    capture=True,
                ),
            ),
        )
    )
    assert [o and (o[0], o[1], o[9]) for o in seen.outcomes[1]] == [
        (0, 1, False),
        None,
        None,
        None,
        (2, 1, False),
        (0, 1, True),
    ]
    assert seen.last_seqs == {0: 1, 2: 1}
    assert [(e[0], e[4]["seq"]) for e in seen.events] == [(0, 1), (2, 1)]


async def test_one_cid_from_other_senders_and_in_other_rooms(sites: Sites) -> None:
    """The key is (room, sender, cid): the same cid is a new message for another sender or in
    another room, and cids compare exactly (case, trailing space)."""
    seen = await sites.play(
        Scenario(
            (ON, OFF),
            (
                Batch(
                    (
                        post(0, 0, "x"),
                        post(0, 1, "x"),
                        post(1, 0, "x"),
                        post(0, 0, "X"),
                        post(0, 0, "x "),
                        post(1, 1, "x"),
                        post(0, 1, "x", "again"),
                    ),
                    capture=True,
                ),
                Batch((post(0, 2, "x"), post(0, 1, "x", "later"), post(1, 0, "x"))),
            ),
        )
    )
    assert [o and (o[0], o[1], o[3], o[9]) for o in seen.outcomes[0]] == [
        (0, 1, 0, False),
        (0, 2, 1, False),
        (1, 1, 0, False),
        (0, 3, 0, False),
        (0, 4, 0, False),
        (1, 2, 1, False),
        (0, 2, 1, True),
    ]
    assert [o and (o[0], o[1], o[5], o[9]) for o in seen.outcomes[1]] == [
        (0, 5, "cyd:x", False),
        (0, 2, "bob:x", True),
        (1, 3, "ann:x", False),  # room 1 keeps no history: not recognised
    ]
    # The CHAT events follow the posts (PostgreSQL's function returns its rows in another order).
    assert [(e[0], e[4]["seq"]) for e in seen.events] == [
        (0, 1),
        (0, 2),
        (1, 1),
        (0, 3),
        (0, 4),
        (1, 2),
    ]


# -- the property -----------------------------------------------------------------------------

# NUL is left out: PostgreSQL cannot store it in text (issue 13, item 4, first bullet: a post
# with NUL must be refused before it reaches a batch). Surrogates cannot be encoded at all.
texts = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=6)
# Some cids differ only in case or a space.
cids = st.sampled_from(["a", "b", "c", "A", "a "])


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.sampled_from([1, 2, 3]))
    history = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    rooms_at_start = tuple(history)
    # The scenario's posts draw from a few keys, so that keys repeat within and across batches.
    room = st.sampled_from([*range(n)] * 5 + [NOWHERE])
    key = st.tuples(room, st.integers(0, len(SENDERS) - 1), cids)
    keys = draw(st.lists(key, min_size=1, max_size=5, unique=True))
    post = st.builds(lambda k, text: Post(*k, text), st.sampled_from(keys), texts)
    batch = st.builds(Batch, st.lists(post, min_size=1, max_size=10).map(tuple), st.booleans())
    # Drawn one by one (st.lists mostly made one or two steps); a move always changes the
    # room's category, so that stored messages meet a category without history and back.
    steps: list[Step] = []
    for _ in range(draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8]))):
        kind = draw(st.sampled_from(["batch", "batch", "move", "batch", "move", "delete"]))
        if kind == "batch":
            steps.append(draw(batch))
        elif kind == "move":
            r = draw(st.integers(0, n - 1))
            history[r] = not history[r]
            steps.append(Move(r, history[r]))
        else:
            steps.append(Delete(draw(st.integers(0, n - 1))))
    return Scenario(rooms_at_start, tuple(steps))


T = TypeVar("T")


@pytest.mark.timeout(300)  # shrinking a failing scenario takes a minute or two
async def test_both_dialects_number_every_scenario_alike(sites: Sites) -> None:
    """Random rooms (history on or off), posts by three senders with repeating cids, rooms
    deleted or moved between batches: SQLite, PostgreSQL and the model give the same outcomes,
    ``last_seq``s, rows and CHAT events."""
    loop = asyncio.get_running_loop()

    def on_loop(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(scaled(60))

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(scenarios())
    def check(scenario: Scenario) -> None:
        on_loop(sites.play(scenario))

    await asyncio.to_thread(check)
