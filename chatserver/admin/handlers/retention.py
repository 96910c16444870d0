"""Retention policies, the purge preview and run, and legal holds (docs/administration.md).

Every change is audited (``retention.set``, ``retention.delete``, ``hold.place``,
``hold.lift``); placing and lifting a hold is also captured in compliance (``HOLD``,
``HOLD_LIFT``). Held content is readable here, and only here (administrators, who act as
compliance officers), including what its sender edited or deleted.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from pydantic import BaseModel, Field

from ...protocol.errors import CONFLICT, ChatError
from ...store import files as file_store
from ...store import holds as hold_store
from ...store import lifecycle as lifecycle_store
from ...store import retention as store
from ...store.db import now_ms
from ...transport.http import content_disposition
from ..context import Ctx, not_found
from ..routing import Binary, BinaryBody, Router
from ..types import Id, In, Name, When, epoch_ms
from .views import room_out

log = logging.getLogger(__name__)
router = Router()

Days = Annotated[int, Field(ge=1, le=36_500)]


class PolicyIn(In):
    days: Days = Field(description="Keep messages this many days, then purge them")
    files_days: Days | None = Field(None, description="Keep files this long (null: as days)")
    enabled: bool = Field(True, description="false: only the preview counts it")


class PolicyOut(BaseModel):
    scope: str
    scope_id: int
    days: int
    files_days: int | None
    enabled: bool
    updated_ms: int


class PoliciesOut(BaseModel):
    policies: list[PolicyOut]


class CandidateIn(In):
    scope: Annotated[str, Field(pattern="^(deployment|category|room)$")]
    scope_id: int = Field(0, ge=0, le=2**53, description="0 for the deployment")
    days: Days
    files_days: Days | None = None


class PreviewIn(In):
    candidate: CandidateIn | None = Field(
        None, description="A policy counted as if it were set and enabled (it replaces its scope's)"
    )


class PreviewRoom(BaseModel):
    room: int
    scope: str
    days: int
    messages: int
    files: int
    oldest_ms: int | None
    newest_ms: int | None


class PreviewOut(BaseModel):
    now_ms: int
    messages: int
    files: int
    rooms: list[PreviewRoom]


class RunOut(BaseModel):
    ran: bool = Field(description="false: another node holds the purge lease")
    messages: int
    files: int
    batches: int


class HoldIn(In):
    name: Name
    users: list[Id] = Field(default_factory=list, max_length=hold_store.MAX_TARGETS)
    rooms: list[Id] = Field(default_factory=list, max_length=hold_store.MAX_TARGETS)
    since: When | None = Field(None, description="Messages posted from (epoch ms or ISO 8601)")
    until: When | None = Field(None, description="… until (a bare date: its whole day)")


class HoldOut(BaseModel):
    id: int
    name: str
    users: list[int]
    rooms: list[int]
    since_ms: int | None
    until_ms: int | None
    created_ms: int
    created_by: str
    lifted_ms: int | None
    lifted_by: str | None


class HoldsOut(BaseModel):
    holds: list[HoldOut]


class HeldVersion(BaseModel):
    version: int
    text: str
    reason: str
    saved_ms: int


class HeldMessage(BaseModel):
    room: int
    seq: int
    sender: int
    ts: int
    text: str
    state: str
    versions: list[HeldVersion]


class HeldOut(BaseModel):
    hold: HoldOut
    messages: list[HeldMessage]


class HeldQuery(In):
    limit: int = Field(1000, ge=1, le=10_000)


SCOPE_PATHS = {
    "deployment": "/api/v1/retention/deployment",
    "category": "/api/v1/retention/categories/{category_id}",
    "room": "/api/v1/retention/rooms/{room_id}",
}


async def _scope(ctx: Ctx, scope: str) -> int:
    if scope == "deployment":
        return 0
    if scope == "category":
        ident = int(ctx.params["category_id"])
        if await lifecycle_store.category_edit_policy(ctx.db, ident) is None:
            raise not_found("category", ident)
        return ident
    await room_out(ctx, ctx.params["room_id"])
    return int(ctx.params["room_id"])


async def _policy(ctx: Ctx, scope: str, ident: int) -> dict[str, Any] | None:
    found = [p for p in await store.policies(ctx.db) if (p.scope, p.scope_id) == (scope, ident)]
    return found[0].public() if found else None


@router.route(
    "GET",
    "/api/v1/retention",
    tag="retention",
    summary="List retention policies",
    response=PoliciesOut,
)
async def list_policies(ctx: Ctx) -> Any:
    return {"policies": [p.public() for p in await store.policies(ctx.db)]}


def _setter(scope: str) -> Any:
    async def set_policy(ctx: Ctx) -> Any:
        ident = await _scope(ctx, scope)
        body: PolicyIn = ctx.body

        async def change(_before: Any) -> None:
            policy = store.Policy(scope, ident, body.days, body.files_days, body.enabled, now_ms())
            await store.set_policy(ctx.db, policy)

        return await ctx.change(
            "retention.set",
            f"{scope}:{ident}",
            load=lambda: _policy(ctx, scope, ident),
            change=change,
        )

    async def delete_policy(ctx: Ctx) -> None:
        ident = await _scope(ctx, scope)
        before = await _policy(ctx, scope, ident)
        if before is None:
            raise not_found(f"retention policy for {scope}", ident)
        await store.delete_policy(ctx.db, scope, ident)
        await ctx.audit("retention.delete", f"{scope}:{ident}", before, None)

    set_policy.__name__ = f"set_{scope}_retention"
    delete_policy.__name__ = f"delete_{scope}_retention"
    return set_policy, delete_policy


for _scope_name, _path in SCOPE_PATHS.items():
    _set, _delete = _setter(_scope_name)
    router.route(
        "PUT",
        _path,
        tag="retention",
        summary=f"Set the {_scope_name}'s retention policy",
        body=PolicyIn,
        response=PolicyOut,
    )(_set)
    router.route(
        "DELETE",
        _path,
        tag="retention",
        summary=f"Remove the {_scope_name}'s retention policy",
    )(_delete)


@router.route(
    "POST",
    "/api/v1/retention/preview",
    tag="retention",
    summary="What the retention policies (and a candidate) would purge now, per room",
    body=PreviewIn,
    response=PreviewOut,
    reads_only=True,
)
async def preview(ctx: Ctx) -> Any:
    body: PreviewIn = ctx.body
    found = list(await store.policies(ctx.db))
    c = body.candidate
    if c is not None:
        found = [p for p in found if (p.scope, p.scope_id) != (c.scope, c.scope_id)]
        found.append(store.Policy(c.scope, c.scope_id, c.days, c.files_days, True))
    chosen = store.effective(await store.room_rows(ctx.db), found, enabled_only=False)
    now = ctx.node.retention.clock()
    rooms = await store.preview(ctx.db, chosen, now)
    return {
        "now_ms": now,
        "messages": sum(r["messages"] for r in rooms),
        "files": sum(r["files"] for r in rooms),
        "rooms": rooms,
    }


@router.route(
    "POST",
    "/api/v1/retention/run",
    tag="retention",
    summary="Run the retention purge now on this node (if no other node holds its lease)",
    response=RunOut,
)
async def run(ctx: Ctx) -> Any:
    report = await ctx.node.retention.run_once()
    out = {
        "ran": report.ran,
        "messages": report.total,
        "files": sum(report.files.values()),
        "batches": report.batches,
    }
    await ctx.audit("retention.run", "retention", None, out)
    return out


@router.route("GET", "/api/v1/holds", tag="holds", summary="List legal holds", response=HoldsOut)
async def list_holds(ctx: Ctx) -> Any:
    return {"holds": [h.public() for h in await hold_store.listing(ctx.db)]}


@router.route(
    "POST",
    "/api/v1/holds",
    tag="holds",
    summary="Place a legal hold on users and/or rooms",
    body=HoldIn,
    response=HoldOut,
    status=201,
)
async def place_hold(ctx: Ctx) -> Any:
    body: HoldIn = ctx.body
    if len(await hold_store.listing(ctx.db)) >= hold_store.MAX_HOLDS:
        raise ChatError(CONFLICT, f"at most {hold_store.MAX_HOLDS} holds")
    try:
        hold = await hold_store.place(
            ctx.db,
            body.name,
            list(body.users),
            list(body.rooms),
            epoch_ms(body.since),
            epoch_ms(body.until, end_of_day=True),
            ctx.actor_label,
            ctx.node.compliance_node,
        )
    except hold_store.HoldExists:
        raise ChatError(CONFLICT, f"a hold named {body.name!r} exists") from None
    log.info("legal hold %d (%s) placed by %s", hold.id, hold.name, ctx.actor_label)
    await ctx.audit("hold.place", f"hold:{hold.id}", None, hold.public())
    return hold.public()


@router.route(
    "POST",
    "/api/v1/holds/{hold_id}/lift",
    tag="holds",
    summary="Lift a legal hold (it stays listed, for the record)",
    response=HoldOut,
)
async def lift_hold(ctx: Ctx) -> Any:
    hid = ctx.params["hold_id"]
    before = await hold_store.get(ctx.db, hid)
    if before is None:
        raise not_found("hold", hid)
    hold = await hold_store.lift(ctx.db, hid, ctx.actor_label, ctx.node.compliance_node)
    if hold is None:
        raise ChatError(CONFLICT, f"hold {hid} is already lifted")
    log.info("legal hold %d (%s) lifted by %s", hold.id, hold.name, ctx.actor_label)
    await ctx.audit("hold.lift", f"hold:{hid}", before.public(), hold.public())
    return hold.public()


@router.route(
    "GET",
    "/api/v1/holds/{hold_id}/messages",
    tag="holds",
    summary="The content a hold covers, with every version edits and deletes replaced",
    query=HeldQuery,
    response=HeldOut,
)
async def held_messages(ctx: Ctx) -> Any:
    hid = ctx.params["hold_id"]
    hold = await hold_store.get(ctx.db, hid)
    if hold is None:
        raise not_found("hold", hid)
    found = await hold_store.held_content(ctx.db, hold, ctx.query.limit)
    return {"hold": hold.public(), "messages": found}


@router.route(
    "GET",
    "/api/v1/holds/{hold_id}/files/{file_id}",
    tag="holds",
    summary="The bytes of a file whose message a hold covers, also after it was removed",
    response=Binary,
)
async def held_file(ctx: Ctx) -> Any:
    hid, fid = ctx.params["hold_id"], ctx.params["file_id"]
    hold = await hold_store.get(ctx.db, hid)
    if hold is None:
        raise not_found("hold", hid)
    found = await file_store.get_held(ctx.db, fid, hold.condition())
    if found is None:  # missing, or not covered by this hold: the same answer
        raise not_found("file", fid)

    async def content() -> AsyncIterator[bytes]:
        if found.size:
            async for data in ctx.node.files.content(found, 0, found.size - 1):
                yield data

    log.info("file %d under legal hold %d read by %s", fid, hid, ctx.actor_label)
    return BinaryBody(
        content(),
        {
            "Content-Disposition": content_disposition(found.name),
            "Content-Length": str(found.size),
            "ETag": f'"{found.sha256}"',
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox",
        },
    )
