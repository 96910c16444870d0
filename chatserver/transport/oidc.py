"""Single sign-on for the web client: OpenID Connect, authorization code flow with PKCE.

Two routes on the client HTTP listener (``[oidc]``, docs/configuration.md)::

    GET /auth/oidc/login      → 302 to the provider, with state, nonce and an S256 code
                                challenge; the three secrets ride in a signed, HttpOnly,
                                SameSite=Lax cookie scoped to /auth/oidc (so any node of a pool
                                can take the callback)
    GET /auth/oidc/callback   ← the provider's redirect (code, state): the state must equal the
                                cookie's, the code is exchanged with the PKCE verifier, the ID
                                token verified (signature against the provider's JWKS, ``iss``,
                                ``aud``/``azp``, ``exp``/``iat`` with ``leeway_s``, ``nonce``),
                                the claims mapped to a user (created on first sign-in, marked
                                ``source: oidc``, keyed by issuer and ``sub``), and the server's
                                own session token handed to the page in its body (never in a
                                URL): a small page stores it in ``sessionStorage`` and moves on
                                to ``post_login_path``.

Refused (400/401/403, logged one line each at WARNING with the reason, the page says only that
the sign-in failed): a missing or forged state cookie, a state that differs, an expired
sign-in, a provider error, a token that does not verify, a name that is a local or directory
user's (single sign-on never takes over an account it did not make), a disabled user.

JOSE: ``joserfc`` (maintained, by the author of Authlib; JWS/JWK/JWT with claim validation).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote_plus, urlencode

import aiohttp
from aiohttp import web
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ..accounts import Accounts
from ..config import OidcConfig
from ..protocol.errors import ChatError
from ..store import principals as principal_store
from ..store import userdir as userdir_store
from ..store import users as user_store
from ..store.db import Database
from ..store.principals import principal

log = logging.getLogger("chatserver.oidc")

COOKIE = "chat_oidc"
SOURCE = "oidc"
MAX_NAME_CHARS = 256
MAX_RESPONSE_BYTES = 1_048_576  # a discovery document, a JWKS, a token response
_FAILED = "Sign-in failed. Close this page and try again."


class OidcError(Exception):
    """A sign-in refused; ``status`` for the page, the message for the log only."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def code_challenge(verifier: str) -> str:
    return _b64(hashlib.sha256(verifier.encode()).digest())


class StateCookie:
    """The sign-in's secrets (state, nonce, PKCE verifier, expiry) in a cookie signed with a key
    every node derives from the client secret (or, without one, a key of this node's own: then
    the callback must come back to the same node)."""

    def __init__(self, secret: str, ttl_s: int) -> None:
        material = secret.encode() if secret else secrets.token_bytes(32)
        self._key = hashlib.sha256(b"chatserver oidc state\0" + material).digest()
        self._ttl_s = ttl_s

    def make(self, state: str, nonce: str, verifier: str) -> str:
        body = _b64(json.dumps([state, nonce, verifier, int(time.time()) + self._ttl_s]).encode())
        return body + "." + _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def read(self, value: str) -> tuple[str, str, str]:
        body, _, mac = value.partition(".")
        expected = _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())
        if not mac or not hmac.compare_digest(mac, expected):
            raise OidcError(400, "the sign-in cookie is not ours")
        state, nonce, verifier, expires = json.loads(_unb64(body))
        if int(expires) < time.time():
            raise OidcError(400, "the sign-in took too long (its state expired)")
        return str(state), str(nonce), str(verifier)


class Provider:
    """The provider's discovery document and keys, fetched when first needed and cached (the
    keys again when a token names a key id they lack: the provider rotated them)."""

    def __init__(self, config: OidcConfig) -> None:
        self._config = config
        self._meta: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._keys_at = 0.0

    async def _get(self, url: str, session: aiohttp.ClientSession) -> Any:
        async with session.get(url) as response:
            if response.status != 200:
                raise OidcError(502, f"{url} answered {response.status}")
            return json.loads(await response.content.read(MAX_RESPONSE_BYTES))

    async def meta(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        if self._meta is None:
            issuer = self._config.issuer.rstrip("/")
            meta = await self._get(issuer + "/.well-known/openid-configuration", session)
            if not isinstance(meta, dict) or meta.get("issuer", "").rstrip("/") != issuer:
                raise OidcError(502, "the discovery document names another issuer")
            self._meta = meta
        return self._meta

    async def keys(self, session: aiohttp.ClientSession, kid: str | None) -> KeySet:
        stale = self._keys is None or (
            kid is not None
            and all(k.kid != kid for k in self._keys.keys)
            and time.monotonic() - self._keys_at > 10  # at most one refetch every 10 s
        )
        if stale:
            meta = await self.meta(session)
            self._keys = KeySet.import_key_set(await self._get(meta["jwks_uri"], session))
            self._keys_at = time.monotonic()
        assert self._keys is not None
        return self._keys


def verify_id_token(
    token: str, keys: KeySet, config: OidcConfig, nonce: str, now: float | None = None
) -> dict[str, Any]:
    """The ID token's claims if it verifies (signature, issuer, audience, times, nonce);
    :class:`OidcError` otherwise."""
    try:
        decoded = jwt.decode(token, keys, algorithms=list(config.id_token_algorithms))
    except (JoseError, ValueError) as exc:
        raise OidcError(401, f"the ID token does not verify: {exc}") from None
    claims = dict(decoded.claims)
    registry = jwt.JWTClaimsRegistry(
        now=int(now if now is not None else time.time()),
        leeway=config.leeway_s,
        iss={"essential": True, "value": config.issuer.rstrip("/")},
        aud={"essential": True, "value": config.client_id},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        nonce={"essential": True, "value": nonce},
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise OidcError(401, f"the ID token's claims are wrong: {exc}") from None
    audience = claims["aud"]
    if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != config.client_id:
        raise OidcError(401, "the ID token is for several audiences and not authorized for us")
    return claims


def _name(claims: dict[str, Any], config: OidcConfig) -> str:
    value = claims.get(config.username_claim)
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME_CHARS:
        raise OidcError(403, f"the ID token has no usable {config.username_claim!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise OidcError(403, "the user name has control characters")
    return value


MAX_GROUPS = 200
MembershipChanged = Callable[[bool], Awaitable[None]]  # Governance.directory_changed


class OidcRoutes:
    def __init__(
        self,
        config: OidcConfig,
        secret: str,
        accounts: Accounts,
        db: Database,
        membership_changed: MembershipChanged,
    ) -> None:
        self._membership_changed = membership_changed
        self._config = config
        self._cookie = StateCookie(secret, config.state_ttl_s)
        self._secret = secret
        self._accounts = accounts
        self._db = db
        self._provider = Provider(config)
        self._secure = config.redirect_uri.lower().startswith("https://")

    def register(self, app: web.Application) -> None:
        app.router.add_get("/auth/oidc/login", self.login, allow_head=False)
        app.router.add_get("/auth/oidc/callback", self.callback, allow_head=False)

    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._config.timeout_s))

    async def login(self, request: web.Request) -> web.StreamResponse:
        c = self._config
        try:
            async with self._session() as session:
                meta = await self._provider.meta(session)
        except (OidcError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("oidc: the provider cannot be reached: %s", exc)
            return _page(503, _FAILED)
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        query = urlencode(
            {
                "response_type": "code",
                "client_id": c.client_id,
                "redirect_uri": c.redirect_uri,
                "scope": c.scopes,
                "state": state,
                "nonce": nonce,
                "code_challenge": code_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        response = web.Response(
            status=302, headers={"Location": f"{meta['authorization_endpoint']}?{query}"}
        )
        response.set_cookie(
            COOKIE,
            self._cookie.make(state, nonce, verifier),
            max_age=c.state_ttl_s,
            path="/auth/oidc",
            httponly=True,
            secure=self._secure,
            samesite="Lax",
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    async def callback(self, request: web.Request) -> web.StreamResponse:
        try:
            token, name = await self._callback(request)
        except OidcError as exc:
            log.warning("oidc sign-in refused: %s", exc)
            response = _page(exc.status, _FAILED)
        except ChatError as exc:
            log.warning("oidc sign-in refused: %s", exc.message)
            response = _page(503 if exc.code == "unavailable" else 403, _FAILED)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            log.warning("oidc sign-in failed: the provider: %s", exc)
            response = _page(502, _FAILED)
        else:
            log.info("oidc sign-in of %r", name)
            response = _token_page(token, self._config.post_login_path)
        response.del_cookie(COOKIE, path="/auth/oidc")
        return response

    async def _callback(self, request: web.Request) -> tuple[str, str]:
        c, query = self._config, request.query
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            raise OidcError(400, "no sign-in cookie (not started here, or expired)")
        state, nonce, verifier = self._cookie.read(cookie)
        if not hmac.compare_digest(query.get("state", ""), state):
            raise OidcError(400, "the state differs from the one this browser was given")
        if "error" in query:
            raise OidcError(401, f"the provider refused: {query.get('error', '')[:100]}")
        code = query.get("code", "")
        if not code:
            raise OidcError(400, "no code")
        async with self._session() as session:
            meta = await self._provider.meta(session)
            headers = {}
            form = {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": c.redirect_uri,
                "code_verifier": verifier,
            }
            if self._secret:  # client_secret_basic: both parts form-encoded (RFC 6749, 2.3.1)
                pair = f"{quote_plus(c.client_id)}:{quote_plus(self._secret)}"
                headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
            else:  # a public client: PKCE alone
                form["client_id"] = c.client_id
            post = session.post(meta["token_endpoint"], data=form, headers=headers)
            async with post as response:
                body = json.loads(await response.content.read(MAX_RESPONSE_BYTES))
                if response.status != 200 or not isinstance(body.get("id_token"), str):
                    raise OidcError(401, f"the token endpoint answered {response.status}")
            id_token = body["id_token"]
            kid = _header_kid(id_token)
            keys = await self._provider.keys(session, kid)
        claims = verify_id_token(id_token, keys, c, nonce)
        user = await self._user(claims)
        signed = await self._accounts.sign_in_user(user)
        return signed.token, user.name

    async def _user(self, claims: dict[str, Any]) -> user_store.User:
        c = self._config
        name = _name(claims, c)
        external = f"{c.issuer.rstrip('/')} {claims['sub']}"
        found = await userdir_store.find_user(self._db, external, SOURCE)
        if found is None and not c.create_users:
            raise OidcError(403, f"{name!r} has no account here and oidc.create_users is off")
        if found is not None and found.disabled:
            raise OidcError(403, f"{name!r} is disabled")
        display = claims.get(c.display_name_claim)
        email = claims.get(c.email_claim)
        try:
            user_id, _ = await userdir_store.put_user(
                self._db,
                external,
                name,
                display if isinstance(display, str) else name,
                email if isinstance(email, str) else "",
                False,
                SOURCE,
            )
        except user_store.UserExists:
            taken = f"{name!r} is the name of an account single sign-on did not make"
            raise OidcError(403, taken) from None
        user = await user_store.get_user(self._db, user_id)
        assert user is not None
        if c.groups_claim:
            await self._groups(user, claims.get(c.groups_claim))
        return user

    async def _groups(self, user: user_store.User, value: object) -> None:
        """The user's memberships in single sign-on's groups, as the ID token lists them (a
        group made on first use; a name a local or directory group has is skipped)."""
        names = value if isinstance(value, list) else []
        wanted = {n for n in names[:MAX_GROUPS] if isinstance(n, str) and 0 < len(n) <= 256}
        known = await userdir_store.directory_groups(self._db, SOURCE)
        changed = False
        for name in sorted(wanted - set(known)):
            try:
                made = await principal_store.create_group(
                    self._db, name, "", source=SOURCE, external_id=name
                )
            except principal_store.GroupExists:
                log.warning("oidc: group %r is a local or directory group's name: skipped", name)
                continue
            known[name] = userdir_store.StoredGroup(made.id, name, name)
        ids = {known[n].id for n in wanted if n in known}
        have = set(await userdir_store.user_members(self._db, SOURCE, user.id))
        member = [principal("user", user.id)]
        for gid in sorted(ids - have):
            await principal_store.add_group_members(self._db, gid, member)
            changed = True
        for gid in sorted(have - ids):
            await principal_store.remove_group_members(self._db, gid, member)
            changed = True
        if changed:
            await self._membership_changed(False)


def oidc_routes(
    config: OidcConfig, accounts: Accounts, db: Database, membership_changed: MembershipChanged
) -> OidcRoutes:
    """The routes for ``[oidc]``, its client secret read (from ``client_secret_file`` if set)."""
    secret = config.client_secret
    if config.client_secret_file:
        with open(config.client_secret_file, encoding="utf-8") as f:
            secret = f.read().strip()
    return OidcRoutes(config, secret, accounts, db, membership_changed)


def _header_kid(token: str) -> str | None:
    try:
        header = json.loads(_unb64(token.split(".", 1)[0]))
    except (ValueError, IndexError):
        raise OidcError(401, "the ID token is not a JWT") from None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def _page(status: int, text: str) -> web.Response:
    body = f"<!doctype html><meta charset=utf-8><title>Sign-in</title><p>{html.escape(text)}"
    headers = {**_HEADERS, "Content-Security-Policy": "default-src 'none'"}
    return web.Response(status=status, text=body, content_type="text/html", headers=headers)


def _token_page(token: str, next_path: str) -> web.Response:
    """The session token in the page's body: a script keeps it in ``sessionStorage``
    (``chatserver.token``) for the web client and moves on; it is in no URL."""
    nonce = secrets.token_urlsafe(16)
    data = html.escape(json.dumps({"token": token, "next": next_path}), quote=True)
    body = (
        "<!doctype html><meta charset=utf-8><title>Signed in</title>"
        f'<script id=session type="application/json" data-session="{data}"></script>'
        f"<script nonce={nonce}>"
        "const s=JSON.parse(document.getElementById('session').dataset.session);"
        "sessionStorage.setItem('chatserver.token',s.token);location.replace(s.next);"
        "</script><p>Signed in.</p>"
    )
    headers = {
        **_HEADERS,
        "Content-Security-Policy": f"default-src 'none'; script-src 'nonce-{nonce}'",
    }
    return web.Response(status=200, text=body, content_type="text/html", headers=headers)
