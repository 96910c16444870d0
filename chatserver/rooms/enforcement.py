"""Changes reach live sessions: rights enforced, rooms re-announced, invitations and
disconnects delivered — for changes made on this node and for those a peer reports.

After every change that can take a right away, :meth:`Enforcement.enforce` re-checks each live
subscription of the rooms concerned and removes the ones no longer allowed, before the change is
acknowledged, so a revoked user gets no further live event (ARCHITECTURE invariant 6).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..protocol.events import Invited, Outgoing, RoomUpdated
from ..store import messages as message_store
from ..store import rooms as room_store
from ..store import users as user_store
from ..store.categories import Category
from ..store.db import Database
from ..store.rooms import Room
from ..store.users import User
from . import access
from .authorization import Authorization
from .changes import TokensRevoked
from .facts import Facts
from .hub import Hub
from .presence import Presence


class Enforcement:
    def __init__(
        self, db: Database, facts: Facts, auth: Authorization, hub: Hub, presence: Presence
    ) -> None:
        self._db = db
        self._facts = facts
        self._auth = auth
        self._hub = hub
        self._presence = presence

    async def last_seq(self, room_id: int) -> int:
        """The room's newest sequence number (the cached room's copy goes stale with posts)."""
        known = self._hub.known_last_seq(room_id)
        if known is not None:
            return known
        return await message_store.last_seq(self._db, room_id) or 0

    async def room_view(self, user: User, room: Room, category: Category) -> dict[str, Any]:
        """The room as ``user`` sees it (roles listed only to those who may manage it)."""
        actor = await self._facts.actor(user)
        out = room.public(with_roles=access.can_manage(actor, room, category))
        out["last_seq"] = await self.last_seq(room.id)
        out["roles"] = sorted(access.roles(actor, room, category))
        out["can_post"] = access.can_post(actor, room, category)
        out["can_manage"] = access.can_manage(actor, room, category)
        return out

    async def enforce(self, room_ids: Iterable[int] | None = None, reason: str = "access") -> None:
        """Remove every live subscription that lost the right to read its room."""
        facts = self._facts
        targets = list(self._hub.subscribed_rooms() if room_ids is None else room_ids)
        for room_id in targets:
            subscribers = list(self._hub.subscribers(room_id))
            if not subscribers:
                continue
            room = await facts.room(room_id)
            category = await facts.category(room.category_id) if room else None
            for member in subscribers:
                user = getattr(member, "user", None)
                if user is None:
                    continue
                allowed = (
                    room is not None
                    and category is not None
                    and access.can_read(await facts.actor(user), room, category)
                )
                if not allowed:
                    why = reason
                    if room is None:
                        why = "deleted"
                    elif room.disabled:
                        why = "disabled"
                    member.removed(room_id, why)

    async def announce_room(self, room_id: int) -> None:
        """Send ``room.updated`` to the room's live subscribers (each sees its own view)."""
        room = await self._facts.room(room_id)
        category = await self._facts.category(room.category_id) if room else None
        if room is None or category is None:
            return
        for member in list(self._hub.subscribers(room_id)):
            if member.user is not None:
                view = await self.room_view(member.user, room, category)
                member.send(Outgoing.event(RoomUpdated(view)))

    async def invited(self, room_id: int, users: Iterable[int], by: dict[str, Any] | None) -> None:
        """Tell the invitees' sessions on this node (each sees the room as they may)."""
        room = await self._facts.room(room_id)
        category = await self._facts.category(room.category_id) if room else None
        if room is None or category is None:
            return
        for uid in users:
            for member in self._presence.of(uid):
                if member.user is None:
                    continue
                member.invited_rooms.add(room_id)
                view = await self.room_view(member.user, room, category)
                member.send(Outgoing.event(Invited(view, by)))

    async def confirm_invited(self, room_id: int, users: Iterable[int]) -> int:
        """A peer's ``invited``: tell those of ``users`` connected here whom the store shows
        invited to the room, naming the inviter the store holds; returns how many."""
        told = 0
        for uid in users:
            if not self._presence.of(uid):
                continue
            pending = await room_store.pending_invitations(self._db, uid)
            inviter = next((by for room, by, _ in pending if room == room_id), -1)
            if inviter == -1:
                continue
            who = await user_store.get_user(self._db, inviter) if inviter is not None else None
            await self.invited(room_id, [uid], who.public() if who is not None else None)
            told += 1
        return told

    def disconnect(self, user_id: int, reason: str) -> int:
        """Close every connection of the user on this node; returns how many."""
        members = self._presence.of(user_id)
        for member in members:
            member.disconnect(reason)
        return len(members)

    def revoked(self, change: TokensRevoked) -> int:
        """Close the sessions on this node that use a token ``change`` revoked; returns how many."""
        ending = [m for m in self._presence.of(change.user) if change.ends(m.token_hash)]
        for member in ending:
            member.disconnect(change.reason)
        return len(ending)

    async def confirm_revoked(self, change: TokensRevoked) -> int:
        """A peer's ``revoked``: close the sessions here that it names *and* whose token the
        store no longer holds (a peer cannot end a session the store still knows)."""
        named = [m for m in self._presence.of(change.user) if change.ends(m.token_hash)]
        hashes = {m.token_hash for m in named if m.token_hash is not None}
        if not hashes:
            return 0
        live = await user_store.live_token_hashes(self._db, hashes)
        ending = [m for m in named if m.token_hash is not None and m.token_hash not in live]
        for member in ending:
            member.disconnect(change.reason)
        return len(ending)

    async def confirm_disabled(self, user_id: int, reason: str) -> int:
        """A peer's ``disconnect``: close the user's sessions here only if the store says the
        user may no longer chat (gone, or the persistent-chat policy off)."""
        if not self._presence.of(user_id):
            return 0
        user = await user_store.get_user(self._db, user_id)
        if user is not None and self._auth.policy_enabled(user):
            return 0
        return self.disconnect(user_id, reason)

    async def recheck_tokens(self) -> None:
        """Close the sessions connected here whose token was revoked (after a peer link was
        down, its ``revoked`` events may have been lost)."""
        members = [m for uid in self._presence.users() for m in self._presence.of(uid)]
        hashes = {m.token_hash for m in members if m.token_hash is not None}
        live = await user_store.live_token_hashes(self._db, hashes)
        for member in members:
            if member.token_hash is not None and member.token_hash not in live:
                member.disconnect("revoked")

    async def recheck_policies(self) -> None:
        """Disconnect the users connected here whose persistent-chat policy is off (after a peer
        link was down, its ``disconnect`` events may have been lost)."""
        connected = self._presence.users()
        # One query for every user connected here (a node holds thousands), not one each.
        users = await user_store.get_users(self._db, connected)
        for user_id in connected:
            user = users.get(user_id)
            if user is None or not self._auth.policy_enabled(user):
                self.disconnect(user_id, "disabled")
