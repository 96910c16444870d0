"""The node's directory parts, built from ``[directory]`` (None when it is off)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config
from ..store.db import Database
from .ldap import LdapDirectory
from .sync import DirectorySync

if TYPE_CHECKING:
    from ..accounts import Accounts
    from ..rooms.audit import Audit
    from ..rooms.governance import Governance


class DirectorySetupError(Exception):
    """``[directory]`` cannot be used; the message says why."""


def directory_login(config: Config) -> LdapDirectory | None:
    settings = config.directory
    if not settings.enabled:
        return None
    password = settings.bind_password
    if settings.bind_password_file:
        try:
            password = Path(settings.bind_password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise DirectorySetupError(
                f"directory.bind_password_file: cannot read {settings.bind_password_file}:"
                f" {exc.strerror}"
            ) from None
    return LdapDirectory(settings, password)


def directory_sync(
    config: Config,
    db: Database,
    ldap: LdapDirectory | None,
    accounts: Accounts,
    governance: Governance,
    audit: Audit,
) -> DirectorySync | None:
    if ldap is None:
        return None

    async def disable(user_id: int) -> int:
        return await accounts.revoke_tokens(user_id, reason="disabled")

    async def record(action: str, after: dict[str, object]) -> None:
        await audit.record("directory", action, "directory", None, after)

    return DirectorySync(
        config.directory,
        db,
        ldap,
        config.node.name,
        disable=disable,
        membership_changed=governance.directory_changed,
        record=record,
    )
