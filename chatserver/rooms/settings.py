"""Run-time settings: the chat settings an administrator may change without a restart.

The configuration file gives the defaults; the store holds deployment-wide overrides (scope
``""``) and per-node ones (scope = the node's name), set through the management API. Everything
that reads one of these settings at run time reads :attr:`RuntimeSettings.chat`, the effective
``[chat]`` section, so a change takes effect in one place; a node that changes them tells the
pool's other nodes (:class:`~chatserver.rooms.changes.SettingsChanged`), which reload them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..config import ChatConfig, Config
from ..store import admin as admin_store
from ..store.db import Database
from .changes import Publisher, SettingsChanged
from .hub import Hub

# The settings an administrator can change at run time (global or per node).
RUNTIME_SETTINGS = (
    "default_chat_history",
    "max_file_size_kb",
    "participant_update_limit",
    "room_management_url",
)


class RuntimeSettings:
    def __init__(self, config: Config, db: Database, hub: Hub, publisher: Publisher) -> None:
        self._config = config
        self._db = db
        self._hub = hub
        self._publisher = publisher
        self.stored: dict[str, dict[str, Any]] = {}  # scope -> key -> value, as last loaded
        self.chat: ChatConfig = config.chat

    def defaults(self) -> dict[str, Any]:
        chat = self._config.chat
        return {key: getattr(chat, key) for key in RUNTIME_SETTINGS}

    def effective(self) -> dict[str, Any]:
        out = self.defaults()
        out.update(self.stored.get("", {}))
        out.update(self.stored.get(self._config.node.name, {}))
        return {key: out[key] for key in RUNTIME_SETTINGS}

    async def reload(self, *, publish: bool = True) -> None:
        """Re-read the settings from the store and apply them on this node (and tell the other
        nodes to do the same, unless the change came from one of them)."""
        self.stored = await admin_store.load_settings(self._db)
        effective = self.effective()
        self.chat = self._config.chat.model_copy(update=effective)
        refills = self._hub.set_cache_size(effective["default_chat_history"])
        if refills:  # answered only once joins serve the new backchat length
            await asyncio.gather(*refills)
        if publish:
            self._publisher.publish(SettingsChanged())
