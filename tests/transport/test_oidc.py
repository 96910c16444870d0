"""Single sign-on (chatserver/transport/oidc.py) against a real OpenID Connect provider:
``oidc-provider-mock`` from PyPI (Authlib's provider, run as its own process with nonces
required), driven the way a browser would: login → provider's form → callback → the page that
holds the session token. ID token checks (forged, expired, wrong nonce, audience, issuer) also
run on tokens signed here with joserfc.

The provider does not enforce PKCE (it accepts a code without checking the verifier), so the
tests check that the server sends an S256 challenge matching the verifier it keeps.
"""

from __future__ import annotations

import html
import importlib.util
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from chatserver.config import OidcConfig
from chatserver.testing import free_port
from chatserver.transport.oidc import OidcError, StateCookie, code_challenge, verify_id_token
from tests.conftest import Harness, node_config, scaled, start_node

CLIENT_ID, CLIENT_SECRET = "chat-web", "client-secret-0123456789"


def _has_provider() -> bool:
    return importlib.util.find_spec("oidc_provider_mock") is not None


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    if not _has_provider():
        pytest.skip("oidc-provider-mock is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-m", "oidc_provider_mock", "-p", str(port), "-n", "true"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + scaled(30)
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the OIDC provider did not start") from None
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
async def h(db_url: str, provider: str) -> AsyncIterator[Harness]:
    http_port = free_port()
    config = node_config(db_url, listen={"http": f"127.0.0.1:{http_port}"})
    oidc = OidcConfig(
        enabled=True,
        issuer=provider,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uri=f"http://127.0.0.1:{http_port}/auth/oidc/callback",
        post_login_path="/web/",
        groups_claim="groups",
    )
    harness = Harness(await start_node(config.model_copy(update={"oidc": oidc})))
    try:
        yield harness
    finally:
        await harness.close()


def browser() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def set_claims(provider: str, sub: str, **claims: Any) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{provider}/users/{sub}", json=claims) as response:
            assert response.status == 204


async def start_login(h: Harness, web: aiohttp.ClientSession) -> str:
    async with web.get(f"{h.http}/auth/oidc/login", allow_redirects=False) as response:
        assert response.status == 302
        return response.headers["Location"]


async def authorize(web: aiohttp.ClientSession, location: str, sub: str) -> str:
    """The provider's form, submitted for ``sub``: the redirect back to the callback."""
    async with web.post(location, data={"sub": sub}, allow_redirects=False) as response:
        assert response.status == 302, await response.text()
        return response.headers["Location"]


def session_token(page: str) -> str:
    found = re.search(r'data-session="([^"]*)"', page)
    assert found is not None, page
    return str(json.loads(html.unescape(found.group(1)))["token"])


async def test_the_web_client_offers_single_sign_on(h: Harness) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{h.http}/client.json") as response:
        assert (await response.json())["sso_url"] == "/auth/oidc/login"


async def test_sign_in_through_the_provider(h: Harness, provider: str) -> None:
    await set_claims(provider, "u-123", preferred_username="olivia", name="Olivia O", email="o@x")
    async with browser() as web:
        location = await start_login(h, web)
        query = parse_qs(urlsplit(location).query)
        assert query["code_challenge_method"] == ["S256"] and query["client_id"] == [CLIENT_ID]
        assert query["nonce"][0] and query["state"][0]
        back = await authorize(web, location, "u-123")
        assert back.startswith(f"{h.http}/auth/oidc/callback?")
        async with web.get(back, allow_redirects=False) as response:
            page = await response.text()
            assert response.status == 200, page
            assert response.headers["Cache-Control"] == "no-store"
            assert "script-src 'nonce-" in response.headers["Content-Security-Policy"]
    token = session_token(page)
    assert token not in back  # never in a URL
    client = await h.connect()
    reply = await client.resume(token)
    assert reply["user"]["name"] == "olivia" and reply["user"]["display_name"] == "Olivia O"
    # The same subject again: the same user, not a new one.
    async with browser() as web:
        back = await authorize(web, await start_login(h, web), "u-123")
        async with web.get(back) as response:
            again = session_token(await response.text())
    assert (await (await h.connect()).resume(again))["user"]["id"] == reply["user"]["id"]


async def test_the_pkce_challenge_matches_the_kept_verifier(h: Harness) -> None:
    async with browser() as web:
        location = await start_login(h, web)
        cookie = next(c for c in web.cookie_jar if c.key == "chat_oidc")
    assert cookie["httponly"] and cookie["path"] == "/auth/oidc"
    query = parse_qs(urlsplit(location).query)
    state, nonce, verifier = StateCookie(CLIENT_SECRET, 600).read(cookie.value)
    assert query["state"] == [state] and query["nonce"] == [nonce]
    assert query["code_challenge"] == [code_challenge(verifier)]


async def test_a_wrong_or_missing_state_is_refused(h: Harness, provider: str) -> None:
    await set_claims(provider, "u-9", preferred_username="mallory")
    async with browser() as web:
        back = await authorize(web, await start_login(h, web), "u-9")
        forged = re.sub(r"state=[^&]+", "state=attacker-state", back)
        async with web.get(forged) as response:
            assert response.status == 400
            assert "data-session" not in await response.text()
    async with browser() as other:  # a code replayed in another browser: no cookie
        async with other.get(back) as response:
            assert response.status == 400
    async with browser() as web:  # a cookie signed with another key
        location = await start_login(h, web)
        back = await authorize(web, location, "u-9")
        state = parse_qs(urlsplit(location).query)["state"][0]
        fake = StateCookie("another-secret", 600).make(state, "n", "v")
        web.cookie_jar.update_cookies({"chat_oidc": fake}, response_url=aiohttp.client.URL(back))
        async with web.get(back) as response:
            assert response.status == 400


async def test_sso_never_takes_over_a_local_account(h: Harness, provider: str) -> None:
    await h.user("root")
    await set_claims(provider, "u-root", preferred_username="root")
    async with browser() as web:
        back = await authorize(web, await start_login(h, web), "u-root")
        async with web.get(back) as response:
            assert response.status == 403
            assert "data-session" not in await response.text()


async def sso_token(h: Harness, sub: str) -> str:
    async with browser() as web:
        back = await authorize(web, await start_login(h, web), sub)
        async with web.get(back) as response:
            assert response.status == 200
            return session_token(await response.text())


async def test_groups_claim_follows_each_sign_in_and_is_enforced_live(
    h: Harness, provider: str
) -> None:
    from chatserver.store import principals as principal_store

    await principal_store.create_group(h.node.db, "local-only")
    await set_claims(provider, "u-7", preferred_username="quinn", groups=["desk", "local-only"])
    quinn = await h.connect()
    await quinn.resume(await sso_token(h, "u-7"))
    groups = {g["name"]: g for g in (await admin_view(h))}
    assert groups["desk"]["source"] == "oidc" and groups["local-only"]["source"] == "local"
    desk = groups["desk"]["id"]
    await h.user("root", admin=True)
    root = await h.login("root")
    cid = (await root.call("category.create", name="desk-only"))["category"]["id"]
    await root.call(
        "category.update", category=cid, add={"allowed": [{"kind": "group", "id": desk}]}
    )
    room = (await root.call("room.create", category=cid, name="book", privacy="open"))["room"]["id"]
    await quinn.call("join", room=room)
    # The provider no longer lists the group: the next sign-in takes the membership away, and
    # the session already in the room is removed from it at once.
    await set_claims(provider, "u-7", preferred_username="quinn", groups=[])
    await sso_token(h, "u-7")
    removed = await quinn.next_event("room.removed", timeout=scaled(5))
    assert removed["room"] == room
    local = await principal_store.group_members_of(h.node.db, groups["local-only"]["id"])
    assert local == []  # a local group is never filled from the token


async def admin_view(h: Harness) -> list[dict[str, Any]]:
    from chatserver.store import admin as admin_store

    return await admin_store.list_groups(h.node.db)


# -- the ID token checks, on tokens signed here ---------------------------------------------


KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
OTHER = RSAKey.generate_key(2048, parameters={"kid": "k1"})  # same kid, another key: a forgery
CONFIG = OidcConfig(issuer="https://idp.example", client_id="chat")


def signed(key: RSAKey = KEY, **changes: Any) -> str:
    now = int(time.time())
    claims = {"iss": "https://idp.example", "aud": "chat", "sub": "s1", "iat": now,
              "exp": now + 300, "nonce": "n1", "preferred_username": "zoe"}  # fmt: skip
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)


def keys() -> KeySet:
    return KeySet([RSAKey.import_key(KEY.as_dict(private=False))])


def test_a_good_token_verifies() -> None:
    assert verify_id_token(signed(), keys(), CONFIG, "n1")["preferred_username"] == "zoe"


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (lambda: signed(OTHER), "forged"),
        (lambda: signed(exp=int(time.time()) - 3600), "expired"),
        (lambda: signed(nonce="other"), "replayed (nonce)"),
        (lambda: signed(nonce=None), "no nonce"),
        (lambda: signed(aud="someone-else"), "audience"),
        (lambda: signed(aud=["chat", "evil"]), "several audiences, no azp"),
        (lambda: signed(iss="https://evil.example"), "issuer"),
        (lambda: signed(iat=int(time.time()) + 3600), "issued in the future"),
        (lambda: signed()[:-4] + "AAAA", "tampered signature"),
        (lambda: ".".join(signed().split(".")[:2]) + ".", "unsigned"),
    ],
)
def test_bad_tokens_are_refused(token: Any, why: str) -> None:
    with pytest.raises(OidcError):
        verify_id_token(token(), keys(), CONFIG, "n1")


def test_alg_none_is_refused() -> None:
    header = json.dumps({"alg": "none"}).encode()
    body = json.dumps({"iss": "https://idp.example", "aud": "chat", "sub": "s", "nonce": "n1",
                       "iat": int(time.time()), "exp": int(time.time()) + 60}).encode()  # fmt: skip
    import base64

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    with pytest.raises(OidcError):
        verify_id_token(f"{b64(header)}.{b64(body)}.", keys(), CONFIG, "n1")


def test_the_state_cookie_expires() -> None:
    cookie = StateCookie("s", 30)
    value = cookie.make("st", "no", "ve")
    assert cookie.read(value) == ("st", "no", "ve")
    old = StateCookie("s", -1).make("st", "no", "ve")
    with pytest.raises(OidcError, match="expired"):
        cookie.read(old)
    with pytest.raises(OidcError):
        cookie.read(value[:-2] + "xx")
