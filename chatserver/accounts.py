"""Accounts: who may sign in, and how.

Login by name and password (a dummy hash is checked for an unknown name, so the answer takes the
same time either way), resumption by session token, and creating users. A user whose
persistent-chat policy is off may not sign in (:meth:`Authorization.policy_enabled`).
"""

from __future__ import annotations

import asyncio

from .config import Config
from .passwords import DUMMY_HASH, hash_password, verify_password
from .protocol.errors import CONFLICT, FORBIDDEN, UNAUTHENTICATED, ChatError
from .rooms.authorization import Authorization
from .store import users as user_store
from .store.db import Database
from .store.users import User


class Accounts:
    def __init__(self, config: Config, db: Database, auth: Authorization) -> None:
        self._config = config
        self._db = db
        self._auth = auth

    async def login(self, name: str, password: str) -> tuple[User, str]:
        found = await user_store.credentials(self._db, name)
        stored_hash = found[1] if found else DUMMY_HASH
        ok = await asyncio.to_thread(verify_password, password, stored_hash)
        if not ok or found is None:
            raise ChatError(UNAUTHENTICATED, "wrong user name or password")
        user = found[0]
        self._check_policy(user)
        token = await user_store.create_session(self._db, user.id, self._config.chat.session_ttl_s)
        return user, token

    async def resume(self, token: str) -> User:
        user = await user_store.user_for_token(self._db, token)
        if user is None:
            raise ChatError(UNAUTHENTICATED, "the token is unknown or expired")
        self._check_policy(user)
        return user

    def _check_policy(self, user: User) -> None:
        if not self._auth.policy_enabled(user):
            raise ChatError(FORBIDDEN, "persistent chat is disabled for this user")

    async def add_user(
        self, name: str, password: str, *, is_admin: bool = False, display_name: str | None = None
    ) -> User:
        password_hash = await asyncio.to_thread(hash_password, password)
        try:
            return await user_store.create_user(
                self._db, name, password_hash, is_admin=is_admin, display_name=display_name
            )
        except user_store.UserExists:
            raise ChatError(CONFLICT, f"a user named {name!r} exists") from None
