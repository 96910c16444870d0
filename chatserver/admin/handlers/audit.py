"""The audit log of administrators' changes."""

from __future__ import annotations

from typing import Any

from ...store import admin as admin_store
from ..context import Ctx
from ..models import AuditOut, AuditQuery
from ..routing import Router

router = Router()


@router.route(
    "GET",
    "/api/v1/audit",
    tag="audit",
    summary="The audit log, newest first",
    query=AuditQuery,
    response=list[AuditOut],
)
async def list_audit(ctx: Ctx) -> Any:
    q: AuditQuery = ctx.query
    entries = await admin_store.audit_entries(
        ctx.db,
        limit=q.limit,
        before_id=q.before,
        action=q.action,
        actor=q.actor,
        target=q.target,
        since_ms=q.since,
    )
    return [e.public() for e in entries]
