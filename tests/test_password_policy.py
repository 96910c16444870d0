"""The password policy (chatserver/password_policy.py) and where it applies: adding a user, a
user's own change, an administrator's reset (API, with a generated password too)."""

from __future__ import annotations

import pytest

from chatserver.config import PasswordsConfig
from chatserver.password_policy import PasswordPolicy, WeakPassword, common_passwords
from tests.admin.test_api import Api, api  # noqa: F401  (the fixture)
from tests.conftest import PASSWORD


def test_the_shipped_list_is_there_and_large() -> None:
    common = common_passwords()
    assert len(common) == 10_000
    assert {"123456", "password", "qwerty", "letmein", "dragon"} <= common


@pytest.mark.parametrize(
    "password",
    ["password", "Password", "PASSWORD123", "letmein!!", "qwerty12345", "iloveyou2024", "short"],
)
def test_weak_passwords_are_refused(password: str) -> None:
    with pytest.raises(WeakPassword):
        PasswordPolicy(PasswordsConfig()).check(password)


def test_length_name_and_good_passwords() -> None:
    policy = PasswordPolicy(PasswordsConfig(min_length=12))
    with pytest.raises(WeakPassword, match="12 characters"):
        policy.check("tree-lamp-9")
    with pytest.raises(WeakPassword, match="name"):
        policy.check("margaretha2024", "Margaretha")
    policy.check("tree-lamp-river-9")
    policy.check(PASSWORD)
    generated = policy.generate()
    policy.check(generated)
    assert generated != policy.generate()
    PasswordPolicy(PasswordsConfig(reject_common=False)).check("password")


async def test_policy_applies_to_create_change_and_reset(api: Api) -> None:  # noqa: F811
    await api.call("POST", "/api/v1/users", {"name": "x", "password": "password1"}, status=400)
    bob = await api.user("bob")
    client = await api.login("bob")
    reply = await client.request("password.change", password=PASSWORD, new_password="qwerty123")
    assert reply["error"]["code"] == "bad_request" and "common" in reply["error"]["message"]
    path = f"/api/v1/users/{bob}/password"
    await api.call("PUT", path, {"password": "iloveyou"}, status=400)
    await api.call("PUT", path, {}, status=400)  # neither a password nor generate
    out = await api.call("PUT", path, {"generate": True})
    assert out["disconnected"] == 1 and len(out["password"]) >= 18
    await client.closed.wait()
    again = await api.h.connect()
    signed = await again.login("bob", out["password"])  # the printed password signs in
    assert signed["user"]["name"] == "bob"
    entries = await api.audit(action="user.password_reset")
    assert out["password"] not in str(entries)
