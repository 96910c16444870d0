"""Run-time settings (deployment-wide and per node), and the compliance settings (read-only)."""

from __future__ import annotations

from typing import Any

from ...store import admin as admin_store
from ..context import Ctx
from ..models import ComplianceOut, SettingsOut, SettingsPatch
from ..routing import Router

router = Router()


async def _settings_out(ctx: Ctx) -> dict[str, Any]:
    stored = await admin_store.load_settings(ctx.db)
    return {
        "node": ctx.node.config.node.name,
        "defaults": ctx.node.settings.defaults(),
        "global": stored.get("", {}),
        "nodes": {scope: values for scope, values in stored.items() if scope},
        "effective": ctx.node.settings.effective(),
    }


@router.route(
    "GET", "/api/v1/config", tag="config", summary="Run-time settings", response=SettingsOut
)
async def get_config(ctx: Ctx) -> Any:
    return await _settings_out(ctx)


async def _set_settings(ctx: Ctx, scope: str) -> Any:
    values = {key: getattr(ctx.body, key) for key in ctx.body.model_fields_set}

    async def change(_before: Any) -> None:
        if values:
            await admin_store.store_settings(ctx.db, scope, values)
            await ctx.node.settings.reload()  # here, and on the pool's other nodes

    return await ctx.change(
        "config.update",
        "config:global" if not scope else f"config:node:{scope}",
        load=lambda: _settings_out(ctx),
        change=change,
    )


@router.route(
    "PATCH",
    "/api/v1/config",
    tag="config",
    summary="Change deployment-wide settings (null clears an override)",
    body=SettingsPatch,
    response=SettingsOut,
)
async def update_config(ctx: Ctx) -> Any:
    return await _set_settings(ctx, "")


@router.route(
    "PATCH",
    "/api/v1/config/nodes/{node_name}",
    tag="config",
    summary="Change one node's settings (null clears an override)",
    body=SettingsPatch,
    response=SettingsOut,
)
async def update_node_config(ctx: Ctx) -> Any:
    return await _set_settings(ctx, ctx.params["node_name"])


@router.route(
    "GET",
    "/api/v1/compliance",
    tag="config",
    summary="The compliance service's configuration (read-only; set in [compliance])",
    response=ComplianceOut,
)
async def get_compliance(ctx: Ctx) -> Any:
    out = ctx.node.config.compliance.model_dump()
    url = out["database_url"]
    if "@" in url and "://" in url:  # never show a password
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        out["database_url"] = f"{scheme}://{credentials.split(':', 1)[0]}@{host}"
    return out
