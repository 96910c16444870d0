"""Accounts: who may sign in, and how; passwords and session tokens.

- **Sign-in** by name and password, or resumption by session token, over every transport and on
  the management port — one path, throttled (:class:`~chatserver.throttle.LoginThrottle`). For
  an unknown name a dummy hash is checked, so the answer takes the same time either way, and the
  throttle counts names, not users, so it answers alike too. A user whose persistent-chat policy
  is off may not sign in (:meth:`Authorization.policy_enabled`).
- **Revocation**: logout, a password change (the user's other tokens), an administrator's
  password reset and disconnect (all the user's tokens). The store forgets the tokens first, so
  they stop working on every node at once; then the sessions using them end, here
  (``live.revoked``) and on the pool's other nodes (a :class:`TokensRevoked` change published).
- **Directory users** (``[directory]``, :mod:`chatserver.userdir`): a name that is not a local
  user's is checked by an LDAP bind (the password is never stored); the user is created or
  updated from the directory's entry on the way. A directory that cannot be asked answers
  ``unavailable`` (not ``unauthenticated``); local users, the administrators among them, sign in
  as before whatever the directory's state. A disabled user (by the directory or locally) is
  refused like a wrong password.
- A store that cannot be written (full disk, read-only, unreachable) answers ``unavailable``,
  never ``internal``: nothing was changed, and the client may retry later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from .config import Config
from .password_policy import PasswordPolicy, WeakPassword
from .passwords import DUMMY_HASH, hash_password, verify_password
from .protocol.errors import (
    BAD_REQUEST,
    CONFLICT,
    FORBIDDEN,
    NOT_FOUND,
    UNAUTHENTICATED,
    UNAVAILABLE,
    ChatError,
)
from .rooms.audit import Audit, user_state
from .rooms.authorization import Authorization
from .rooms.changes import Publisher, TokensRevoked
from .store import userdir as userdir_store
from .store import users as user_store
from .store.db import Database
from .store.users import User
from .throttle import LoginThrottle, Source
from .userdir.ldap import DirectoryUnavailable, DirectoryUser

log = logging.getLogger("chatserver.accounts")

WRONG_CREDENTIALS = "wrong user name or password"


@dataclass(frozen=True, slots=True)
class SignedIn:
    user: User
    token: str
    token_hash: str  # what a revocation names


class DirectoryLogin(Protocol):
    """The directory's sign-in (:class:`chatserver.userdir.ldap.LdapDirectory`); blocking."""

    def authenticate(self, login: str, password: str) -> DirectoryUser | None: ...


class LiveSessions(Protocol):
    """The sessions connected to this node, as revocation needs them (``Enforcement``)."""

    def revoked(self, change: TokensRevoked) -> int: ...


@contextmanager
def _store_errors(what: str) -> Iterator[None]:
    """A store that fails (full disk, read-only, unreachable) makes the request ``unavailable``."""
    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        log.error("%s: the store failed: %s", what, exc)
        raise ChatError(UNAVAILABLE, f"{what} is not possible now; try again later") from None


async def add_user(
    db: Database,
    audit: Audit,
    name: str,
    password: str,
    *,
    by: User | str,
    is_admin: bool = False,
    display_name: str | None = None,
    policy: PasswordPolicy | None = None,
) -> User:
    """Create a user (``conflict`` if the name is taken), recorded in the audit log as made
    ``by`` a user or a label (:meth:`Audit.record`). The node's and the command line's one way
    to add users; ``policy`` refuses a weak password (``bad_request``)."""
    if policy is not None:
        _check(policy, password, name)
    password_hash = await asyncio.to_thread(hash_password, password)
    try:
        user = await user_store.create_user(
            db, name, password_hash, is_admin=is_admin, display_name=display_name
        )
    except user_store.UserExists:
        raise ChatError(CONFLICT, f"a user named {name!r} exists") from None
    await audit.record(by, "user.create", f"user:{user.id}", None, user_state(user))
    return user


def _check(policy: PasswordPolicy, password: str, name: str) -> None:
    try:
        policy.check(password, name)
    except WeakPassword as exc:
        raise ChatError(BAD_REQUEST, str(exc)) from None


def _local_password(user: User) -> None:
    if user.source != "local":
        raise ChatError(FORBIDDEN, "this user's password is kept by the directory")


class Accounts:
    def __init__(
        self,
        config: Config,
        db: Database,
        auth: Authorization,
        throttle: LoginThrottle,
        live: LiveSessions,
        publisher: Publisher,
        audit: Audit,
        directory: DirectoryLogin | None = None,
    ) -> None:
        self._directory = directory
        self.policy = PasswordPolicy(config.passwords)
        self._config = config
        self._db = db
        self._auth = auth
        self._throttle = throttle
        self._live = live
        self._publisher = publisher
        self._audit = audit

    # -- signing in -------------------------------------------------------------------------

    async def verify(self, name: str, password: str, source: Source) -> User:
        """The user ``name`` if ``password`` is theirs; throttled, and timed alike for unknown
        names. No session is made (the management port's Basic authentication)."""
        with _store_errors("signing in"):
            had_failures = await self._throttle.check(name, source)
            found = await user_store.credentials(self._db, name)
            if self._directory is not None and (found is None or found[0].source == "directory"):
                user = await self._directory_user(name, password)
            else:
                stored_hash = found[1] if found else DUMMY_HASH
                ok = await asyncio.to_thread(verify_password, password, stored_hash)
                user = found[0] if ok and found is not None and not found[0].disabled else None
            if user is None:
                await self._throttle.failed(name, source)
                raise ChatError(UNAUTHENTICATED, WRONG_CREDENTIALS)
            await self._throttle.succeeded(name, had_failures)
        return user

    async def _directory_user(self, name: str, password: str) -> User | None:
        """The directory's user ``name`` (created or updated here) if the password binds."""
        assert self._directory is not None
        try:
            entry = await asyncio.to_thread(self._directory.authenticate, name, password)
        except DirectoryUnavailable as exc:
            log.warning("sign-in of %r: %s", name[:64], exc)
            raise ChatError(
                UNAVAILABLE, "the directory cannot be reached; try again later"
            ) from None
        if entry is None:
            return None
        if entry.disabled:
            log.warning("sign-in of %r refused: disabled in the directory", entry.login)
            return None
        try:
            user_id, _ = await userdir_store.put_user(
                self._db, entry.external_id, entry.login, entry.display_name, entry.email, False
            )
        except user_store.UserExists:
            log.warning("sign-in of %r refused: the name belongs to a local user", entry.login)
            return None
        return await user_store.get_user(self._db, user_id)

    async def login(self, name: str, password: str, source: Source) -> SignedIn:
        """Sign in with a password: a new session token."""
        user = await self.verify(name, password, source)
        self._check_policy(user)
        with _store_errors("signing in"):
            token = await user_store.create_session(
                self._db, user.id, self._config.chat.session_ttl_s
            )
        return SignedIn(user, token, user_store.token_hash(token))

    async def sign_in_user(self, user: User) -> SignedIn:
        """A new session for a user another party vouched for (single sign-on's verified ID
        token): the same policy and store checks as a password sign-in."""
        if user.disabled:
            raise ChatError(FORBIDDEN, "this user is disabled")
        self._check_policy(user)
        with _store_errors("signing in"):
            token = await user_store.create_session(
                self._db, user.id, self._config.chat.session_ttl_s
            )
        return SignedIn(user, token, user_store.token_hash(token))

    async def token_user(self, token: str, source: Source) -> User | None:
        """The user of a valid session token, or None (counted as a failure). A valid token is
        never refused by the throttle; an invalid one is answered ``rate_limited`` while the
        source address is throttled."""
        with _store_errors("signing in"):
            user = await user_store.user_for_token(self._db, token)
            if user is None:
                await self._throttle.check(None, source)
                await self._throttle.failed(None, source)
        return user

    async def resume(self, token: str, source: Source) -> SignedIn:
        """Sign in with a session token."""
        user = await self.token_user(token, source)
        if user is None:
            raise ChatError(UNAUTHENTICATED, "the token is unknown or expired")
        self._check_policy(user)
        return SignedIn(user, token, user_store.token_hash(token))

    def _check_policy(self, user: User) -> None:
        if not self._auth.policy_enabled(user):
            raise ChatError(FORBIDDEN, "persistent chat is disabled for this user")

    # -- passwords and tokens ---------------------------------------------------------------

    def _ended(self, change: TokensRevoked) -> int:
        """Tokens were revoked (committed): end the sessions using them, here and on the other
        nodes; returns how many ended here."""
        self._publisher.publish(change)
        return self._live.revoked(change)

    async def logout(self, user: User, token_hash: str) -> int:
        """Revoke one token (the caller's session's); the sessions using it end."""
        with _store_errors("logging out"):
            await user_store.revoke_token(self._db, token_hash)
        return self._ended(TokensRevoked(user.id, token=token_hash))

    async def change_password(
        self, user: User, token_hash: str | None, old: str, new: str, source: Source
    ) -> int:
        """The user's own change, proven with the old password (throttled like a sign-in; a
        wrong one is ``forbidden``). Revokes every other token of the user."""
        _local_password(user)
        _check(self.policy, new, user.name)
        with _store_errors("changing the password"):
            had_failures = await self._throttle.check(user.name, source)
            stored_hash = await user_store.get_password_hash(self._db, user.id)
            ok = await asyncio.to_thread(verify_password, old, stored_hash or DUMMY_HASH)
            if not ok or stored_hash is None:
                await self._throttle.failed(user.name, source)
                raise ChatError(FORBIDDEN, "the password is wrong")
            await self._throttle.succeeded(user.name, had_failures)
            new_hash = await asyncio.to_thread(hash_password, new)
            await user_store.replace_password(self._db, user.id, new_hash, keep=token_hash)
        return self._ended(TokensRevoked(user.id, keep=token_hash))

    async def reset_password(self, user_id: int, new: str) -> int:
        """An administrator's reset: revokes every token of the user (``not_found`` if there
        is no such user); returns how many sessions ended here."""
        with _store_errors("resetting the password"):
            target = await user_store.get_user(self._db, user_id)
        if target is not None:
            _local_password(target)
            _check(self.policy, new, target.name)
        new_hash = await asyncio.to_thread(hash_password, new)
        with _store_errors("resetting the password"):
            if not await user_store.replace_password(self._db, user_id, new_hash, keep=None):
                raise ChatError(NOT_FOUND, f"no user {user_id}")
        return self._ended(TokensRevoked(user_id))

    async def revoke_tokens(self, user_id: int, reason: str = "revoked") -> int:
        """Revoke every token of the user; their sessions end with ``bye`` ``reason``. Returns
        how many ended here."""
        with _store_errors("revoking the tokens"):
            await user_store.revoke_user_tokens(self._db, user_id)
        return self._ended(TokensRevoked(user_id, reason=reason))

    async def add_user(
        self,
        name: str,
        password: str,
        *,
        by: User | str,
        is_admin: bool = False,
        display_name: str | None = None,
    ) -> User:
        """Create a user, recorded in the audit log as made ``by`` a user or a label."""
        return await add_user(
            self._db,
            self._audit,
            name,
            password,
            by=by,
            is_admin=is_admin,
            display_name=display_name,
            policy=self.policy,
        )
