"""The governance rules, as pure functions over what is known about a user, a room, a category.

Nothing here reads the store; :class:`chatserver.rooms.service.ChatService` gathers the facts
(:class:`Actor` with the user's transitive groups, the room with its roles, the category with its
lists) and asks. The rules (docs/governance.md explains them to administrators):

- A user is *in* a category when an allowed principal matches them and no denied one does
  (denial wins). A principal matches a user if it is the user, a group the user is in
  (transitively), or everyone.
- A user's room roles (member, manager, presenter) count only while they are in the category.
- Find: administrators always; others only rooms of categories they are in; a secret room only
  with a role; a disabled room only as its manager, and only by id (``room.get``): the ``rooms``
  search lists disabled rooms to administrators alone.
- Read (join, history): not disabled, findable, and the room is open or the user has a role
  (administrators may read any room that is not disabled).
- Post: may read, and the room is normal, or the user presents or manages it (or is an admin).
- Manage (update, roles, disable, enable): administrators, and managers who are in the category.
- Create a room in a category: administrators, and creators who are in the category.
- Move a room: may manage it, and may create rooms in the target category.
- Delete a room, manage categories, groups and policies: administrators only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..store.categories import Category
from ..store.principals import EVERYONE, Principal
from ..store.rooms import Room


@dataclass(frozen=True, slots=True)
class Actor:
    id: int
    is_admin: bool
    groups: frozenset[int]  # every group the user is in, directly or through other groups
    # Every principal that names this user: the user, each of its groups, and everyone.
    principals: frozenset[Principal] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        named = {EVERYONE, Principal("user", self.id)}
        named.update(Principal("group", g) for g in self.groups)
        object.__setattr__(self, "principals", frozenset(named))


def matches(principals: frozenset[Principal], actor: Actor) -> bool:
    # A set intersection walks the smaller side: a room with 16,000 members costs no more to
    # check than a room with one (a user is in few groups).
    return not principals.isdisjoint(actor.principals)


def in_category(actor: Actor, category: Category) -> bool:
    return matches(category.allowed, actor) and not matches(category.denied, actor)


def roles(actor: Actor, room: Room, category: Category) -> set[str]:
    if not in_category(actor, category):
        return set()
    out = set()
    if matches(room.members, actor):
        out.add("member")
    if matches(room.managers, actor):
        out.add("manager")
    if matches(room.presenters, actor):
        out.add("presenter")
    return out


def can_find(actor: Actor, room: Room, category: Category) -> bool:
    if actor.is_admin:
        return True
    if not in_category(actor, category):
        return False
    mine = roles(actor, room, category)
    if room.disabled:
        return "manager" in mine
    if room.privacy == "secret":
        return bool(mine)
    return True


def can_read(actor: Actor, room: Room, category: Category) -> bool:
    if room.disabled or not can_find(actor, room, category):
        return False
    return actor.is_admin or room.privacy == "open" or bool(roles(actor, room, category))


def can_post(actor: Actor, room: Room, category: Category) -> bool:
    if not can_read(actor, room, category):
        return False
    if actor.is_admin or room.type == "normal":
        return True
    return bool(roles(actor, room, category) & {"presenter", "manager"})


def can_manage(actor: Actor, room: Room, category: Category) -> bool:
    return actor.is_admin or "manager" in roles(actor, room, category)


def can_create_in(actor: Actor, category: Category) -> bool:
    return actor.is_admin or (in_category(actor, category) and matches(category.creators, actor))


def eligible(principal: Principal, category: Category, principal_groups: frozenset[int]) -> bool:
    """May ``principal`` hold a room role in ``category``? For a user, ``principal_groups`` are the
    user's groups; for a group, the groups that contain it (and itself)."""
    if principal.kind == "everyone":
        return any(p.kind == "everyone" for p in category.allowed) and not category.denied
    if principal.kind == "user":
        actor = Actor(principal.id, False, principal_groups)
        return in_category(actor, category)

    # A group is eligible when something allows all of it and nothing denies any part of it:
    # everyone, the group itself, or a group containing it.
    def hit(principals: frozenset[Principal]) -> bool:
        return any(
            p.kind == "everyone" or (p.kind == "group" and p.id in principal_groups)
            for p in principals
        )

    return hit(category.allowed) and not hit(category.denied)
