"""Directory users and groups against a real OpenLDAP server (``slapd``, started per test with a
throwaway configuration: tests/userdir/slapd.py), through a real node and the client protocol.

Both store dialects (the ``db_url`` fixture). The sync is run by the tests themselves
(``run_once``) where the order matters; one test leaves it to the node's own loop and checks the
"within one sync interval" bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from chatserver.client import Client, RequestFailed
from chatserver.config import DirectoryConfig
from chatserver.passwords import hash_password
from chatserver.store import principals as principal_store
from chatserver.store import userdir as userdir_store
from chatserver.store import users as user_store
from chatserver.store.db import Database
from chatserver.userdir.ldap import DirectoryUnavailable, LdapDirectory, user_filter
from chatserver.userdir.sync import MassRemoval
from tests.conftest import PASSWORD, Harness, node_config, scaled, start_node
from tests.userdir import slapd
from tests.userdir.slapd import BASE, PASSWORDS, Slapd, group_dn, user_dn

pytestmark = pytest.mark.skipif(not slapd.available(), reason="slapd is not installed")


def directory_settings(server: Slapd, **overrides: Any) -> DirectoryConfig:
    values: dict[str, Any] = {
        "enabled": True,
        "urls": (server.url,),
        "bind_dn": slapd.SYNC_DN,
        "bind_password": slapd.SYNC_PW,
        "user_base": f"ou=people,{BASE}",
        "group_base": f"ou=groups,{BASE}",
        "disabled_attribute": "employeeType",
        "disabled_values": ("disabled",),
        "sync_interval_s": 3600,  # the tests run the sync themselves unless they say otherwise
        "timeout_s": 3,
        "max_removal_share": 0.5,
    }
    values.update(overrides)
    return DirectoryConfig(**values)


@pytest.fixture
async def ldap_server(tmp_path: Path) -> AsyncIterator[Slapd]:
    server = Slapd(tmp_path / "ldap")
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        server.kill()


async def directory_node(db_url: str, server: Slapd, **overrides: Any) -> Harness:
    config = node_config(db_url)
    config = config.model_copy(update={"directory": directory_settings(server, **overrides)})
    node = await start_node(config)
    assert node.directory_sync is not None
    await asyncio.wait_for(node.directory_sync.first_run.wait(), scaled(20))  # synced at start
    return Harness(node)


@pytest.fixture
async def h(db_url: str, ldap_server: Slapd) -> AsyncIterator[Harness]:
    harness = await directory_node(db_url, ldap_server)
    try:
        yield harness
    finally:
        await harness.close()


async def sign_in(h: Harness, name: str, password: str | None = None) -> Client:
    client = await h.connect()
    await client.login(name, PASSWORDS[name] if password is None else password)
    return client


async def auth_error(h: Harness, name: str, password: str) -> str | None:
    client = await h.connect()
    await client.call("hello", protocol=1, client="test")
    reply = await client.request("auth", user=name, password=password)
    return None if reply.get("ok") else str(reply["error"]["code"])


async def sync(h: Harness, *, force: bool = False) -> Any:
    assert h.node.directory_sync is not None
    return await h.node.directory_sync.run_once(force=force)


async def admin(h: Harness) -> Client:
    await h.node.accounts.add_user("root", PASSWORD, by="test", is_admin=True)
    return await h.login("root")


async def group_id(h: Harness, name: str) -> int:
    groups = await userdir_store.directory_groups(h.node.db)
    return next(g.id for g in groups.values() if g.name == name)


async def user_id(h: Harness, name: str) -> int:
    found = await user_store.credentials(h.node.db, name)
    assert found is not None
    return found[0].id


async def walled_room(h: Harness, root: Client) -> int:
    """A category open to ``staff`` but not ``legal`` (an ethical wall), and a room in it."""
    staff, legal = await group_id(h, "staff"), await group_id(h, "legal")
    cid = (await root.call("category.create", name="deals"))["category"]["id"]
    await root.call(
        "category.update",
        category=cid,
        add={
            "allowed": [{"kind": "group", "id": staff}],
            "denied": [{"kind": "group", "id": legal}],
        },
    )
    reply = await root.call("room.create", category=cid, name="merger", privacy="open")
    return int(reply["room"]["id"])


# -- sign-in -------------------------------------------------------------------------------------


async def test_directory_user_signs_in_by_bind_and_is_created(h: Harness) -> None:
    alice = await sign_in(h, "alice")
    assert alice.user is not None and alice.user["display_name"] == "Alice Adams"
    found = await user_store.credentials(h.node.db, "alice")
    assert found is not None
    stored, password_hash = found
    assert (stored.source, stored.disabled) == ("directory", False)
    assert "alice-pw" not in password_hash and password_hash == userdir_store.NO_PASSWORD
    assert await auth_error(h, "alice", "wrong") == "unauthenticated"
    assert await auth_error(h, "nobody", "alice-pw") == "unauthenticated"
    # The stored placeholder is no password: it does not sign in either.
    assert await auth_error(h, "alice", userdir_store.NO_PASSWORD) == "unauthenticated"


async def test_disabled_directory_user_cannot_sign_in(h: Harness) -> None:
    assert await auth_error(h, "dave", PASSWORDS["dave"]) == "unauthenticated"
    found = await user_store.credentials(h.node.db, "dave")
    assert found is not None and found[0].disabled


async def test_directory_user_password_is_not_changed_here(h: Harness) -> None:
    alice = await sign_in(h, "alice")
    reply = await alice.request(
        "password.change", password="alice-pw", new_password="something-Else-9"
    )
    assert reply["error"]["code"] == "forbidden"
    with pytest.raises(Exception, match="directory"):
        await h.node.accounts.reset_password(await user_id(h, "alice"), "another-pass-77")


@pytest.mark.parametrize(
    "name",
    ["*", "al*", "*ice", "alice)(uid=*", "*)(|(uid=*", "alice)(|(objectClass=*)", "alice\\2a",
     "alice\x00", "a" * 300, "(uid=alice)"],
)  # fmt: skip
async def test_injection_in_the_login_name_signs_nobody_in(h: Harness, name: str) -> None:
    # bad_request: the protocol refuses the name before anyone looks it up (NUL, too long).
    assert await auth_error(h, name, "alice-pw") in ("unauthenticated", "bad_request")
    assert await auth_error(h, "alice", "alice-pw") is None  # the password itself is right


async def test_an_empty_password_is_no_anonymous_bind(h: Harness) -> None:
    assert await auth_error(h, "alice", "") in ("unauthenticated", "bad_request")
    assert h.node.accounts._directory is not None
    assert h.node.accounts._directory.authenticate("alice", "") is None  # no bind without one


def test_filter_escapes_every_special_character() -> None:
    config = DirectoryConfig(login_attribute="uid", user_filter="(objectClass=person)")
    assert user_filter(config, "a*(b)\\c\x00") == (
        "(&(objectClass=person)(uid=a\\2a\\28b\\29\\5cc\\00))"
    )


# -- the sync ------------------------------------------------------------------------------------


async def test_sync_creates_users_and_groups_with_nested_members(h: Harness) -> None:
    # The node synced once as it started (the fixture waited for it).
    members = await userdir_store.user_members(h.node.db)
    names = {u.id: u.name for u in (await userdir_store.directory_users(h.node.db)).values()}

    def users_of(group: str) -> set[str]:
        return {names[u] for u in members.get(gids[group], set())}

    gids = {g.name: g.id for g in (await userdir_store.directory_groups(h.node.db)).values()}
    assert users_of("legal") == {"alice", "carol"}  # carol through legal-paris
    assert users_of("staff") == {"alice", "bob", "carol", "erin"}  # two levels down
    assert (await user_store.credentials(h.node.db, "dave")) is not None
    assert (await user_store.credentials(h.node.db, "dave"))[0].disabled  # type: ignore[index]
    again = await sync(h)
    assert not again.changed()


async def test_directory_groups_are_not_editable_locally(h: Harness) -> None:
    await sync(h)
    root = await admin(h)
    legal = await group_id(h, "legal")
    reply = await root.request("group.members", group=legal, add=[{"kind": "user", "id": 1}])
    assert reply["error"]["code"] == "forbidden"
    assert (await root.request("group.delete", group=legal))["error"]["code"] == "forbidden"
    assert await principal_store.get_group(h.node.db, legal) is not None


async def test_ethical_wall_on_directory_groups_follows_the_directory(
    h: Harness, ldap_server: Slapd
) -> None:
    await sync(h)
    root = await admin(h)
    room = await walled_room(h, root)
    bob, carol = await sign_in(h, "bob"), await sign_in(h, "carol")
    await bob.call("join", room=room)
    assert (await carol.request("join", room=room))["error"]["code"] == "not_found"

    # bob joins legal-paris (so legal, behind the wall): removed from the room live.
    await asyncio.to_thread(
        ldap_server.modify, group_dn("legal-paris"), {"member": [("add", [user_dn("bob")])]}
    )
    await sync(h)
    removed = await bob.next_event("room.removed", timeout=scaled(5))
    assert (removed["room"], removed["reason"]) == (room, "access")
    await root.call("post", room=room, text="terms", cid="1")
    assert (await bob.request("join", room=room))["error"]["code"] == "not_found"

    # carol moves from legal-paris to traders: the wall no longer holds her out.
    await asyncio.to_thread(
        ldap_server.modify, group_dn("legal-paris"), {"member": [("delete", [user_dn("carol")])]}
    )
    await asyncio.to_thread(
        ldap_server.modify, group_dn("traders"), {"member": [("add", [user_dn("carol")])]}
    )
    await sync(h)
    joined = await carol.call("join", room=room)
    assert joined["ok"]


async def test_a_removed_group_takes_its_access_away(h: Harness, ldap_server: Slapd) -> None:
    await sync(h)
    root = await admin(h)
    traders = await group_id(h, "traders")
    cid = (await root.call("category.create", name="desk"))["category"]["id"]
    await root.call(
        "category.update", category=cid, add={"allowed": [{"kind": "group", "id": traders}]}
    )
    room = (await root.call("room.create", category=cid, name="book", privacy="open"))["room"]
    erin = await sign_in(h, "erin")
    await erin.call("join", room=room["id"])

    unlist = {"member": [("delete", [group_dn("traders")])]}
    await asyncio.to_thread(ldap_server.modify, group_dn("staff"), unlist)
    await asyncio.to_thread(ldap_server.delete, group_dn("traders"))
    report = await sync(h)
    assert report.groups_removed == 1
    removed = await erin.next_event("room.removed", timeout=scaled(5))
    assert removed["room"] == room["id"]
    assert await principal_store.get_group(h.node.db, traders) is None


async def test_removed_user_is_disabled_and_disconnected(h: Harness, ldap_server: Slapd) -> None:
    await sync(h)
    erin = await sign_in(h, "erin")
    token = erin.token
    await asyncio.to_thread(ldap_server.delete, user_dn("erin"))
    report = await sync(h)
    assert len(report.users_disabled) == 1
    bye = await erin.next_event("bye", timeout=scaled(5))
    assert bye["reason"] == "disabled"
    assert await auth_error(h, "erin", PASSWORDS["erin"]) == "unauthenticated"
    other = await h.connect()
    await other.call("hello", protocol=1, client="test")
    assert not (await other.request("auth", token=token)).get("ok")


async def test_user_disabled_in_the_directory_is_disconnected_within_one_interval(
    db_url: str, ldap_server: Slapd
) -> None:
    interval = 5.0  # the smallest the setting allows
    h = await directory_node(db_url, ldap_server, sync_interval_s=interval)
    try:
        alice = await sign_in(h, "alice")
        await asyncio.to_thread(
            ldap_server.modify, user_dn("alice"), {"employeeType": [("replace", ["disabled"])]}
        )
        bye = await alice.next_event("bye", timeout=scaled(interval * 2 + 5))
        assert bye["reason"] == "disabled"
        assert await auth_error(h, "alice", PASSWORDS["alice"]) == "unauthenticated"
        status = await userdir_store.status(h.node.db)
        assert status is not None and status.holder == "test-node"
        assert status.last_result.startswith("ok:")
    finally:
        await h.close()


async def test_mass_removal_guard_stops_the_sync(db_url: str, ldap_server: Slapd) -> None:
    h = await directory_node(db_url, ldap_server, max_removal_share=0.3)
    try:
        await sync(h)
        alice = await sign_in(h, "alice")
        for uid in ("bob", "carol", "erin"):
            await asyncio.to_thread(ldap_server.delete, user_dn(uid))
        with pytest.raises(MassRemoval, match="3 of 4"):
            await sync(h)
        stored = await userdir_store.directory_users(h.node.db)
        assert [u.name for u in stored.values() if u.disabled] == ["dave"]  # nothing changed
        status = await userdir_store.status(h.node.db)
        assert status is not None and status.last_result.startswith("stopped:")
        assert (await alice.call("ping"))["ok"]
        report = await sync(h, force=True)  # an administrator who checked says go
        assert len(report.users_disabled) == 3
    finally:
        await h.close()


async def test_directory_outage_is_unavailable_and_local_admins_still_sign_in(
    h: Harness, ldap_server: Slapd
) -> None:
    await sync(h)
    await h.node.accounts.add_user("root", PASSWORD, by="test", is_admin=True)
    ldap_server.kill()
    assert await auth_error(h, "alice", "alice-pw") == "unavailable"
    assert await auth_error(h, "nobody", "x") == "unavailable"
    root = await h.login("root")  # local: the directory is not asked
    assert root.user is not None and root.user["name"] == "root"
    with pytest.raises(DirectoryUnavailable):
        await sync(h)
    stored = await userdir_store.directory_users(h.node.db)
    assert sum(not u.disabled for u in stored.values()) == 4  # nobody disabled by the outage
    await asyncio.to_thread(ldap_server.start)
    assert (await sign_in(h, "alice")).user is not None


async def test_directory_never_takes_over_a_local_name(db_url: str, ldap_server: Slapd) -> None:
    db = Database(db_url)
    try:  # a local bob before the node (and its first sync) starts
        await user_store.create_user(db, "bob", hash_password("local-bob-password"))
    finally:
        await db.close()
    h = await directory_node(db_url, ldap_server)
    try:
        await check_local_bob(h)
    finally:
        await h.close()


async def check_local_bob(h: Harness) -> None:
    report = await sync(h)
    assert "user bob" in report.conflicts
    assert await auth_error(h, "bob", PASSWORDS["bob"]) == "unauthenticated"
    local = await sign_in(h, "bob", "local-bob-password")
    assert local.user is not None
    stored = (await user_store.credentials(h.node.db, "bob"))[0]  # type: ignore[index]
    assert stored.source == "local"


async def test_one_node_syncs_at_a_time(h: Harness) -> None:
    db = h.node.db
    assert await userdir_store.acquire_lease(db, "test-node", 60_000)
    assert not await userdir_store.acquire_lease(db, "other-node", 60_000)
    assert await userdir_store.acquire_lease(db, "test-node", 60_000)  # renewed
    await userdir_store.release_lease(db, "test-node")
    assert await userdir_store.acquire_lease(db, "other-node", 60_000)
    assert await sync(h) is None  # the node skips the run: another holds the lease


async def test_sign_in_failures_are_throttled(h: Harness) -> None:
    for _ in range(6):
        await auth_error(h, "alice", "wrong")
    code = await auth_error(h, "alice", "wrong")
    assert code in ("rate_limited", "unauthenticated")
    with pytest.raises(RequestFailed):
        await sign_in(h, "alice", "nope")


# -- TLS: ldaps:// and StartTLS ----------------------------------------------------------------


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[Slapd, Path]]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    files = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(files[0]))
    cert.cert_chain_pems[0].write_to_path(str(files[1]))
    cert.private_key_pem.write_to_path(str(files[2]))
    server = Slapd(tmp_path / "ldap", tls=files)
    server.start()
    try:
        yield server, files[0]
    finally:
        server.kill()


@pytest.mark.parametrize("mode", ["ldaps", "starttls"])
def test_sign_in_over_tls(tls_server: tuple[Slapd, Path], mode: str, tmp_path: Path) -> None:
    server, ca = tls_server
    if mode == "ldaps":
        url, start_tls = f"ldaps://localhost:{server.tls_port}", False
    else:
        url, start_tls = f"ldap://localhost:{server.port}", True
    settings = directory_settings(server, urls=(url,), start_tls=start_tls, ca_file=str(ca))
    found = LdapDirectory(settings, slapd.SYNC_PW).authenticate("alice", "alice-pw")
    assert found is not None and found.login == "alice"
    # A certificate the configured CA did not sign: refused, and said so as unavailable.
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    wrong = directory_settings(server, urls=(url,), start_tls=start_tls, ca_file=str(other))
    with pytest.raises(DirectoryUnavailable):
        LdapDirectory(wrong, slapd.SYNC_PW).authenticate("alice", "alice-pw")


async def test_a_search_cut_short_by_a_size_limit_changes_nothing(
    db_url: str, tmp_path: Path
) -> None:
    """slapd answers at most 500 entries to an account without a raised limit (its default),
    with result sizeLimitExceeded, which ldap3 does not raise: the sync must not read the users
    past the limit as removed."""
    many = "".join(
        f"dn: uid=p{i},ou=people,{BASE}\nobjectClass: inetOrgPerson\nuid: p{i}\ncn: P {i}\n"
        f"sn: {i}\n\n"
        for i in range(600)
    )
    server = Slapd(tmp_path / "ldap", size_limit=True, ldif=slapd.LDIF + many)
    await asyncio.to_thread(server.start)
    try:
        config = node_config(db_url).model_copy(
            update={"directory": directory_settings(server, max_removal_share=1.0)}
        )
        node = await start_node(config)
        try:
            assert node.directory_sync is not None
            await asyncio.wait_for(node.directory_sync.first_run.wait(), scaled(30))
            assert "cut the search short" in node.directory_sync.last_result
            assert await userdir_store.directory_users(node.db) == {}
        finally:
            await node.stop()
    finally:
        server.kill()
