"""The governance ops of the client protocol (rooms, categories, groups, invitations, user
policy): each parses what the request carries and calls the :class:`Governance` method of the
same purpose; the room ops answer with the room as the caller now sees it.

A part of :class:`~chatserver.sessions.Session` (which dispatches ``op_<name>`` to these).
"""

from __future__ import annotations

from typing import Any

from .protocol import commands as cmd
from .protocol.errors import ChatError
from .protocol.events import reply
from .rooms.governance import Governance, parse_lists, parse_principals, parse_roles
from .services import Services
from .store.users import User


class GovernanceOps:
    __slots__ = ()
    services: Services
    user: User | None

    @property
    def _gov(self) -> Governance:
        return self.services.governance

    async def _room_reply(self, rid: int, room_id: int) -> dict[str, Any]:
        assert self.user is not None
        return reply(rid, room=await self._gov.view(self.user, room_id))

    async def _changed_room_reply(self, rid: int, room_id: int) -> dict[str, Any]:
        """The room after a change the caller made; ``room: null`` when the change took away the
        caller's own sight of it (the change was made all the same)."""
        try:
            return await self._room_reply(rid, room_id)
        except ChatError as exc:
            if exc.code != "not_found":
                raise
            return reply(rid, room=None)

    async def op_room_create(self, request: cmd.RoomCreate) -> dict[str, Any]:
        assert self.user is not None
        room = await self._gov.create_room(
            self.user,
            request.category or 1,
            request.name,
            request.description or "",
            request.privacy,
            request.type,
            request.invitations,
        )
        return await self._room_reply(request.id, room.id)

    async def op_room_get(self, request: cmd.RoomGet) -> dict[str, Any]:
        return await self._room_reply(request.id, request.room)

    async def op_room_update(self, request: cmd.RoomUpdate) -> dict[str, Any]:
        assert self.user is not None
        values: dict[str, Any] = {
            key: getattr(request, key)
            for key in ("name", "description", "privacy", "type", "invitations")
            if getattr(request, key) is not None
        }
        if request.addin is not None:
            values["addin_id"] = request.addin or None
        await self._gov.update_room(self.user, request.room, values)
        return await self._room_reply(request.id, request.room)

    async def op_room_members(self, request: cmd.RoomMembers) -> dict[str, Any]:
        assert self.user is not None
        add = parse_roles(request.add, "add")
        remove = parse_roles(request.remove, "remove")
        invited = await self._gov.change_roles(self.user, request.room, add, remove)
        response = await self._changed_room_reply(request.id, request.room)
        return {**response, "invited": sorted(invited)}

    async def op_room_choices(self, request: cmd.RoomChoices) -> dict[str, Any]:
        assert self.user is not None and self.services.choices is not None
        found = await self.services.choices.choices(
            self.user, request.room, request.category, request.query
        )
        return reply(request.id, **found)

    async def op_rooms_managed(self, request: cmd.RoomsManaged) -> dict[str, Any]:
        assert self.user is not None and self.services.choices is not None
        rooms = []
        for room_id in await self.services.choices.managed(self.user):
            try:
                rooms.append(await self._gov.view(self.user, room_id))
            except ChatError:
                continue  # changed meanwhile
        return reply(request.id, rooms=sorted(rooms, key=lambda r: (r["name"], r["id"])))

    async def op_room_move(self, request: cmd.RoomMove) -> dict[str, Any]:
        assert self.user is not None
        await self._gov.move_room(self.user, request.room, request.category)
        return await self._changed_room_reply(request.id, request.room)

    async def op_room_disable(self, request: cmd.RoomDisable) -> dict[str, Any]:
        assert self.user is not None
        await self._gov.set_disabled(self.user, request.room, True)
        return await self._room_reply(request.id, request.room)

    async def op_room_enable(self, request: cmd.RoomEnable) -> dict[str, Any]:
        assert self.user is not None
        await self._gov.set_disabled(self.user, request.room, False)
        return await self._room_reply(request.id, request.room)

    async def op_room_delete(self, request: cmd.RoomDelete) -> dict[str, Any]:
        assert self.user is not None
        await self._gov.delete_room(self.user, request.room)
        return reply(request.id)

    async def op_categories(self, request: cmd.Categories) -> dict[str, Any]:
        assert self.user is not None
        return reply(request.id, categories=await self._gov.list_categories(self.user))

    async def op_invitations(self, request: cmd.Invitations) -> dict[str, Any]:
        assert self.user is not None
        return reply(request.id, invitations=await self._gov.invitations(self.user))

    async def op_invitation_dismiss(self, request: cmd.InvitationDismiss) -> dict[str, Any]:
        assert self.user is not None
        await self._gov.dismiss(self.user, request.room)
        return reply(request.id)

    async def op_category_create(self, request: cmd.CategoryCreate) -> dict[str, Any]:
        assert self.user is not None
        flags = {
            key: getattr(request, key)
            for key in ("invitations", "file_upload", "chat_history")
            if getattr(request, key) is not None
        }
        category = await self._gov.create_category(
            self.user, request.name, description=request.description or "", **flags
        )
        return reply(request.id, category=category)

    async def op_category_update(self, request: cmd.CategoryUpdate) -> dict[str, Any]:
        assert self.user is not None
        values = {
            key: getattr(request, key)
            for key in ("name", "description", "invitations", "file_upload", "chat_history")
            if getattr(request, key) is not None
        }
        category = await self._gov.update_category(
            self.user,
            request.category,
            values,
            parse_lists(request.add, "add"),
            parse_lists(request.remove, "remove"),
        )
        return reply(request.id, category=category)

    async def op_category_delete(self, request: cmd.CategoryDelete) -> dict[str, Any]:
        assert self.user is not None
        await self._gov.delete_category(self.user, request.category)
        return reply(request.id)

    async def op_group_create(self, request: cmd.GroupCreate) -> dict[str, Any]:
        assert self.user is not None
        group = await self._gov.create_group(self.user, request.name, request.description or "")
        return reply(request.id, group=group)

    async def op_group_members(self, request: cmd.GroupMembers) -> dict[str, Any]:
        assert self.user is not None
        group = await self._gov.change_group(
            self.user,
            request.group,
            parse_principals(request.add, "add"),
            parse_principals(request.remove, "remove"),
        )
        return reply(request.id, group=group)

    async def op_group_delete(self, request: cmd.GroupDelete) -> dict[str, Any]:
        assert self.user is not None
        await self._gov.delete_group(self.user, request.group)
        return reply(request.id)

    async def op_user_policy(self, request: cmd.UserPolicy) -> dict[str, Any]:
        assert self.user is not None
        await self._gov.set_policy(self.user, request.user, request.persistent_chat_enabled)
        return reply(request.id)

    async def op_users(self, request: cmd.Users) -> dict[str, Any]:
        assert self.user is not None
        return reply(request.id, users=await self._gov.list_users(self.user, request.query))
