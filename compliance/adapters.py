"""Adapters by name (``[compliance] adapter``): each exports the events after its cursor."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from chatserver.config import Config
from chatserver.store.db import Database

from . import xml_adapter
from .xml_adapter import ExportResult

Adapter = Callable[[Config, Database, Database], Awaitable[ExportResult]]

ADAPTERS: dict[str, Adapter] = {xml_adapter.NAME: xml_adapter.export}


class UnknownAdapter(Exception):
    pass


async def export_once(config: Config, comp: Database, content: Database) -> ExportResult:
    """Run the configured adapter once over every event not yet exported."""
    adapter = ADAPTERS.get(config.compliance.adapter)
    if adapter is None:
        raise UnknownAdapter(
            f"[compliance] adapter {config.compliance.adapter!r} is not one of {sorted(ADAPTERS)}"
        )
    return await adapter(config, comp, content)
