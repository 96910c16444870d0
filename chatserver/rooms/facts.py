"""The governance facts a node keeps in memory: categories, group membership, rooms with their
roles, and each user's groups.

Every authorization decision reads them here (:mod:`chatserver.rooms.authorization`). They are
read from the store on first use and dropped by :meth:`Facts.forget` after a change commits (on
this node, or on another node of a pool: the same :mod:`~chatserver.rooms.changes` type either
way), and read again on next use.

``generation`` counts the drops: a reader that awaited the store keeps what it read only when
no change landed meanwhile, and a check that awaited something re-checks when it moved.
"""

from __future__ import annotations

from collections import OrderedDict

from ..store import categories as category_store
from ..store import principals as principal_store
from ..store import rooms as room_store
from ..store.categories import Category
from ..store.db import Database
from ..store.rooms import Room
from ..store.users import User
from .access import Actor
from .changes import CategoriesChanged, Change, MembershipChanged, RoomChanged

MAX_CACHED_ROOMS = 100_000
MAX_CACHED_ACTORS = 200_000


class Facts:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._categories: dict[int, Category] | None = None
        self._membership: tuple[dict[int, set[int]], dict[int, set[int]]] | None = None
        self._rooms: OrderedDict[int, Room] = OrderedDict()
        # Each user's groups as of a generation: posts and joins need no walk of the groups.
        self._actors: dict[int, tuple[int, Actor]] = {}
        self.generation = 0

    # -- reading ----------------------------------------------------------------------------

    async def categories(self) -> dict[int, Category]:
        categories = self._categories
        if categories is None:
            generation = self.generation
            categories = await category_store.load_categories(self._db)
            if generation == self.generation:  # else a change landed meanwhile: don't keep it
                self._categories = categories
        return categories

    async def category(self, category_id: int) -> Category | None:
        return (await self.categories()).get(category_id)

    async def groups_of(self, kind: str, pid: int) -> frozenset[int]:
        """For a user: every group they are in; for a group: itself and every group above it."""
        membership = self._membership
        if membership is None:
            generation = self.generation
            membership = await principal_store.load_membership(self._db)
            if generation == self.generation:
                self._membership = membership
        user_groups, parents = membership
        start = set(user_groups.get(pid, ())) if kind == "user" else {pid}
        seen = set(start)
        stack = list(start)
        while stack:
            for parent in parents.get(stack.pop(), ()):
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return frozenset(seen)

    async def actor(self, user: User) -> Actor:
        cached = self.cached_actor(user)
        if cached is not None:
            return cached
        generation = self.generation
        actor = Actor(user.id, user.is_admin, await self.groups_of("user", user.id))
        if generation == self.generation:
            if len(self._actors) >= MAX_CACHED_ACTORS:
                self._actors.clear()
            self._actors[user.id] = (generation, actor)
        return actor

    async def room(self, room_id: int) -> Room | None:
        room = self._rooms.get(room_id)
        if room is None:
            generation = self.generation
            room = await room_store.get_room(self._db, room_id)
            if room is None:
                return None
            if generation != self.generation:
                return room  # a change landed while reading: use it once, cache nothing
            self._rooms[room_id] = room
            if len(self._rooms) > MAX_CACHED_ROOMS:
                self._rooms.popitem(last=False)
        return room

    async def rooms(self, room_ids: list[int]) -> dict[int, Room]:
        """The rooms of ``room_ids`` that exist, by id: those not cached read in one batch
        (:func:`~chatserver.store.rooms.get_rooms`), not one statement each."""
        out: dict[int, Room] = {}
        missing: list[int] = []
        for room_id in room_ids:
            room = self._rooms.get(room_id)
            if room is None:
                missing.append(room_id)
            else:
                out[room_id] = room
        if missing:
            generation = self.generation
            read = await room_store.get_rooms(self._db, missing)
            out.update(read)
            if generation == self.generation:  # else a change landed meanwhile: cache nothing
                for room_id, room in read.items():
                    self._rooms[room_id] = room
                while len(self._rooms) > MAX_CACHED_ROOMS:
                    self._rooms.popitem(last=False)
        return out

    async def read_missing_room(self) -> None:
        """Read a room that does not exist from the store, as :meth:`room` does for any room
        id it has not cached, and drop the answer.

        :meth:`Authorization.check <chatserver.rooms.authorization.Authorization.check>` does
        this before it refuses a cached room the caller may not find: a room that exists must
        take as long to refuse as one that does not (like the dummy password hash of a login
        with an unknown name).
        """
        await room_store.get_room(self._db, room_store.NO_ROOM)

    # -- without awaiting (None when not cached) --------------------------------------------

    def cached_actor(self, user: User) -> Actor | None:
        entry = self._actors.get(user.id)
        if entry is None or entry[0] != self.generation or entry[1].is_admin != user.is_admin:
            return None
        return entry[1]

    def cached_room(self, room_id: int) -> Room | None:
        return self._rooms.get(room_id)

    def cached_category(self, category_id: int) -> Category | None:
        categories = self._categories
        return None if categories is None else categories.get(category_id)

    # -- changes ----------------------------------------------------------------------------

    def forget(self, change: Change) -> None:
        """Drop what ``change`` (committed) may have made stale; other changes drop nothing."""
        if isinstance(change, RoomChanged):
            self._rooms.pop(change.room, None)
        elif isinstance(change, CategoriesChanged):
            # A category's lists decide every room's rights, and a deleted group's grants went
            # with it: drop everything.
            self._categories = None
            self._membership = None
            self._rooms.clear()
        elif isinstance(change, MembershipChanged):
            self._membership = None
        else:
            return
        self.generation += 1
