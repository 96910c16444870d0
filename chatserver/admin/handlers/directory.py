"""The directory sync (``[directory]``, :mod:`chatserver.userdir`): its status, and a run now.

The status is the store's (``directory_sync``), so every node of a pool answers the same. A run
asked for here is recorded in the store and audited; the node answering runs it when it holds
the sync lease (the answer then says how it went), else the holder runs it within its poll
(:data:`~chatserver.userdir.sync.REQUEST_POLL_S`). The mass-removal guard holds for it unless
the request says ``override_guard`` (audited as such).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from ...protocol.errors import CONFLICT, UNAVAILABLE, ChatError
from ...store import userdir as store
from ...userdir.ldap import DirectoryUnavailable
from ...userdir.sync import REQUEST_POLL_S, MassRemoval
from ..context import Ctx
from ..routing import Router
from ..types import In

if TYPE_CHECKING:
    from ...userdir.sync import DirectorySync

router = Router()

NOT_CONFIGURED = "the directory is not configured on this node ([directory] enabled is false)"


class SyncCountsOut(BaseModel):
    users_seen: int = Field(description="Users the directory listed")
    groups_seen: int = Field(description="Groups the directory listed")
    users_added: int
    users_updated: int = Field(description="Renamed, or a new display name or e-mail")
    users_disabled: int = Field(
        description="Disabled here: disabled in, or gone from, the directory"
    )
    users_removed: int = Field(description="Of users_disabled: no longer in the directory")
    users_enabled: int
    groups_added: int
    groups_removed: int
    memberships_changed: int
    conflicts: list[str] = Field(
        description="The first names skipped because a local user or group has them"
    )


class GuardOut(BaseModel):
    kind: Literal["users", "groups"]
    leaving: int = Field(description="How many the run would have disabled or removed")
    total: int = Field(description="Of how many enabled directory users (or directory groups)")
    max_share: float = Field(description="directory.max_removal_share")


class SyncRequestOut(BaseModel):
    requested_ms: int
    requested_by: str
    override_guard: bool


class DirectoryStatusOut(BaseModel):
    holder: str | None = Field(description="The node holding the sync lease (null: none now)")
    last_holder: str = Field(description="The node that held it last (empty: never held)")
    lease_until_ms: int | None
    running: bool = Field(description="A run has started and not ended")
    last_started_ms: int | None
    last_ended_ms: int | None
    outcome: Literal["never", "ok", "failed", "stopped"] = Field(
        description="The last run's: stopped means by the mass-removal guard (nothing changed)"
    )
    reason: str = Field(description="What the last run did, or why it failed or stopped")
    counts: SyncCountsOut | None = Field(
        description="The last run's counts (null unless it succeeded)"
    )
    guard: GuardOut | None = Field(description="A run the guard stopped: its counts")
    next_sync_ms: int | None = Field(description="When the lease holder runs next")
    sync_interval_s: float
    request: SyncRequestOut | None = Field(description="A run asked for, not yet started")


class SyncIn(In):
    override_guard: bool = Field(
        False,
        description="Run even if it would disable or remove more than directory."
        "max_removal_share of the directory's users or groups (audited)",
    )


class SyncOut(BaseModel):
    ran: bool = Field(
        description="This node ran the sync; false: the lease holder runs it within its poll"
    )
    message: str
    status: DirectoryStatusOut


def _sync(ctx: Ctx) -> DirectorySync:
    found = ctx.node.directory_sync
    if found is None:
        raise ChatError(CONFLICT, NOT_CONFIGURED)
    return found


async def _status(ctx: Ctx) -> dict[str, Any]:
    s = await store.status(ctx.db)
    interval = ctx.node.config.directory.sync_interval_s
    if s is None:
        s = store.SyncStatus("", 0, 0, 0, 0, "", "", None, None, 0, None)
    live = bool(s.holder) and s.lease_until_ms > s.store_now_ms
    return {
        "holder": s.holder if live else None,
        "last_holder": s.holder,
        "lease_until_ms": s.lease_until_ms if live else None,
        "running": live and s.started_ms > s.last_run_ms,  # (a holder that died mid-run: no)
        "last_started_ms": s.started_ms or None,
        "last_ended_ms": s.last_run_ms or None,
        "outcome": _outcome(s),
        "reason": s.last_result,
        "counts": None if s.counts is None else asdict(s.counts),
        "guard": None if s.guard is None else asdict(s.guard),
        "next_sync_ms": (s.next_run_ms or None) if live else None,
        "sync_interval_s": interval,
        "request": None if s.request is None else asdict(s.request),
    }


def _outcome(s: store.SyncStatus) -> str:
    if s.outcome:
        return s.outcome
    if not s.last_run_ms:
        return "never"
    return "ok" if s.last_result.startswith("ok") else "failed"  # recorded before outcomes were


@router.route(
    "GET",
    "/api/v1/directory/sync",
    tag="directory",
    summary="The directory sync's status: the last run, its counts, the lease holder, the next run",
    response=DirectoryStatusOut,
)
async def get_directory_sync(ctx: Ctx) -> Any:
    _sync(ctx)
    return await _status(ctx)


@router.route(
    "POST",
    "/api/v1/directory/sync",
    tag="directory",
    summary="Run the directory sync now (on the lease holder); the mass-removal guard holds"
    " unless override_guard",
    body=SyncIn,
    response=SyncOut,
)
async def run_directory_sync(ctx: Ctx) -> Any:
    sync = _sync(ctx)
    override: bool = ctx.body.override_guard
    await ctx.audit("directory.sync.request", "directory", None, {"override_guard": override})
    try:
        report = await sync.request(ctx.actor_label, override_guard=override)
    except MassRemoval as exc:
        raise ChatError(
            CONFLICT,
            f"stopped by the mass-removal guard: {exc}; to run it anyway, send"
            ' {"override_guard": true}',
        ) from None
    except DirectoryUnavailable as exc:
        raise ChatError(UNAVAILABLE, f"the sync failed: {exc}") from None
    status = await _status(ctx)
    if report is None:
        holder = status["holder"] or status["last_holder"]
        message = (
            f"node {holder} holds the sync lease: it runs the sync within"
            f" {REQUEST_POLL_S:g} s (see GET /api/v1/directory/sync)"
        )
        return {"ran": False, "message": message, "status": status}
    return {"ran": True, "message": "ok: " + report.summary(), "status": status}
