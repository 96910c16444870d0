"""The directory as this server asks it: sign-in by bind, and a snapshot of users and groups.

Built on ``ldap3`` (pure Python, maintained, RFC 4510; it speaks StartTLS and LDAPS, follows
paged results and Active Directory's ranged ``member`` retrieval). Its calls block: the node runs
each one in a worker thread (``asyncio.to_thread``), so a slow directory never stalls the event
loop; every connection has ``timeout_s`` for connecting and for each answer.

Security:

- A login name goes into a search filter only escaped (RFC 4515: ``*``, ``(``, ``)``, ``\\``,
  NUL), and must match exactly one entry; an empty password is refused before any bind (an LDAP
  bind with a DN and no password is an *unauthenticated* bind that succeeds).
- The password is checked by binding as the user's DN on a fresh connection; it is never
  stored or logged.
- A failed search or an unreachable server raises :class:`DirectoryUnavailable`, never an empty
  answer: a sync must not read "nobody" into a directory that did not answer.
"""

from __future__ import annotations

import logging
import math
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ldap3 import NONE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import (
    LDAPException,
    LDAPInvalidCredentialsResult,
    LDAPSocketOpenError,
    LDAPStartTLSError,
)
from ldap3.utils.conv import escape_filter_chars

from ..config import DirectoryConfig

log = logging.getLogger("chatserver.userdir")

MAX_LOGIN_CHARS = 256
IN_CHAIN = "1.2.840.113556.1.4.1941"  # LDAP_MATCHING_RULE_IN_CHAIN (Active Directory)


class DirectoryUnavailable(Exception):
    """The directory could not be asked (unreachable, timed out, refused the node's bind, or a
    search failed); the message says which."""


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    dn: str
    external_id: str
    login: str
    display_name: str
    email: str
    disabled: bool


@dataclass(frozen=True, slots=True)
class DirectoryGroup:
    dn: str
    external_id: str
    name: str
    users: frozenset[str] = field(default_factory=frozenset)  # external ids, nesting resolved


@dataclass(frozen=True, slots=True)
class Snapshot:
    users: tuple[DirectoryUser, ...]
    groups: tuple[DirectoryGroup, ...]


def normal_dn(dn: str) -> str:
    """A DN for comparison: lower case, no spaces around the separators."""
    return ",".join("=".join(p.strip() for p in rdn.split("=", 1)) for rdn in dn.lower().split(","))


def _text(values: list[bytes] | None, attribute: str) -> str:
    if not values:
        return ""
    raw = values[0]
    if attribute.lower() == "objectguid" and len(raw) == 16:
        return str(uuid.UUID(bytes_le=raw))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.hex()


class _Tls(Tls):  # type: ignore[misc]
    """TLS by the standard library's rules: the certificate checked against the CA file (or the
    system's) and the server's host name checked during the handshake (``server_hostname``).
    ldap3 2.9.1 checks names itself with ``ssl.match_hostname``, deprecated since Python 3.7 and
    gone in 3.12; this replaces its ``wrap_socket`` (used for LDAPS and StartTLS alike)."""

    def __init__(self, ca_file: str, verify: bool) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE)
        self._context = ssl.create_default_context(cafile=ca_file or None)
        if not verify:
            self._context.check_hostname = False
            self._context.verify_mode = ssl.CERT_NONE

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        connection.socket = self._context.wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=connection.server.host,
        )


def user_filter(config: DirectoryConfig, login: str) -> str:
    """The filter that finds the user ``login`` (escaped: no filter syntax gets through)."""
    return f"(&{config.user_filter}({config.login_attribute}={escape_filter_chars(login)}))"


class LdapDirectory:
    def __init__(self, config: DirectoryConfig, bind_password: str) -> None:
        self._config = config
        self._password = bind_password
        tls = None
        if any(u.lower().startswith("ldaps://") for u in config.urls) or config.start_tls:
            tls = _Tls(config.ca_file, config.verify_certificates)
        self._tls = tls
        user_attrs = [
            config.login_attribute,
            config.display_name_attribute,
            config.email_attribute,
            config.id_attribute,
            config.disabled_attribute,
        ]
        self._user_attributes = [a for a in user_attrs if a]

    # -- connections ------------------------------------------------------------------------

    def _connect(self, dn: str, password: str) -> Connection:
        """A bound connection to the first server that answers, in the order of ``urls``;
        :class:`LDAPInvalidCredentialsResult` for a wrong password."""
        failure: LDAPException | None = None
        for url in self._config.urls:
            # A new Server each time: ldap3's remembers an address that failed once as gone.
            server = Server(
                url,
                use_ssl=url.lower().startswith("ldaps://"),
                tls=self._tls,
                get_info=NONE,
                connect_timeout=self._config.timeout_s,
            )
            try:
                return self._connect_to(server, dn, password)
            except (LDAPSocketOpenError, LDAPStartTLSError) as exc:
                log.warning("directory server %s cannot be reached: %s", server.name, exc)
                failure = exc
        assert failure is not None
        raise failure

    def _connect_to(self, server: Server, dn: str, password: str) -> Connection:
        conn = Connection(
            server,
            user=dn or None,
            password=password or None,
            receive_timeout=math.ceil(self._config.timeout_s),  # an int: ldap3 packs it
            raise_exceptions=True,
            read_only=True,
            auto_referrals=False,
        )
        try:
            conn.open()
            if self._config.start_tls:
                conn.start_tls()
            conn.bind()
        except BaseException:
            conn.unbind()
            if conn.socket is not None:  # a failed TLS handshake leaves it open
                conn.socket.close()
            raise
        return conn

    def _service(self) -> Connection:
        try:
            return self._connect(self._config.bind_dn, self._password)
        except LDAPInvalidCredentialsResult:
            refused = "the directory refused directory.bind_dn's password"
            raise DirectoryUnavailable(refused) from None
        except LDAPException as exc:
            raise DirectoryUnavailable(f"the directory cannot be reached: {exc}") from None

    def _search(
        self, conn: Connection, base: str, query: str, attributes: list[str]
    ) -> Iterator[dict[str, Any]]:
        entries = conn.extend.standard.paged_search(
            base,
            query,
            SUBTREE,
            attributes=attributes,
            paged_size=self._config.page_size,
            generator=True,
        )
        for entry in entries:
            if entry.get("type") == "searchResEntry":
                yield entry
        # ldap3 raises for no error, but does not raise for a size or time limit: a truncated
        # answer would read as "those users are gone".
        result = conn.result or {}
        if result.get("result", 0) != 0:
            raise DirectoryUnavailable(
                f"the directory cut the search short ({result.get('description')}): raise its"
                " size and time limits for the bind account"
            )

    def _user(self, entry: dict[str, Any]) -> DirectoryUser | None:
        c = self._config
        raw = entry["raw_attributes"]
        external_id = _text(raw.get(c.id_attribute), c.id_attribute)
        login = _text(raw.get(c.login_attribute), c.login_attribute)
        if not external_id or not login:
            return None
        return DirectoryUser(
            dn=entry["dn"],
            external_id=external_id,
            login=login,
            display_name=_text(raw.get(c.display_name_attribute), "") or login,
            email=_text(raw.get(c.email_attribute), "") if c.email_attribute else "",
            disabled=self._disabled(raw.get(c.disabled_attribute) if c.disabled_attribute else []),
        )

    def _disabled(self, values: list[bytes] | None) -> bool:
        c = self._config
        for raw in values or ():
            value = raw.decode("utf-8", "replace").strip()
            if value.lower() in (v.lower() for v in c.disabled_values):
                return True
            if c.disabled_bits and value.lstrip("-").isdigit() and int(value) & c.disabled_bits:
                return True
        return False

    # -- sign-in ------------------------------------------------------------------------------

    def authenticate(self, login: str, password: str) -> DirectoryUser | None:
        """The directory's user ``login`` if ``password`` is theirs (a disabled user is returned
        with ``disabled`` set, to be refused); None for a wrong password or an unknown, ambiguous
        or malformed name. :class:`DirectoryUnavailable` if the directory cannot say."""
        if not login or not password or len(login) > MAX_LOGIN_CHARS or "\x00" in login:
            return None
        conn = self._service()
        try:
            found = [
                u
                for u in map(
                    self._user,
                    self._search(
                        conn,
                        self._config.user_base,
                        user_filter(self._config, login),
                        self._user_attributes,
                    ),
                )
                if u is not None
            ]
        except LDAPException as exc:
            raise DirectoryUnavailable(f"searching the directory failed: {exc}") from None
        finally:
            conn.unbind()
        if len(found) != 1:
            if len(found) > 1:
                log.warning("sign-in refused: %d directory entries match one name", len(found))
            return None
        user = found[0]
        if user.login.lower() != login.lower():
            return None
        try:
            self._connect(user.dn, password).unbind()
        except LDAPInvalidCredentialsResult:
            return None
        except LDAPException as exc:
            raise DirectoryUnavailable(f"the directory cannot be reached: {exc}") from None
        return user

    # -- the whole directory --------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Every user and group under the configured bases, nesting resolved; all or nothing."""
        c = self._config
        conn = self._service()
        try:
            users = [
                u
                for u in map(
                    self._user,
                    self._search(conn, c.user_base, c.user_filter, self._user_attributes),
                )
                if u is not None
            ]
            group_attrs = [c.group_name_attribute, c.id_attribute]
            if c.nested_groups != "matching_rule":
                group_attrs.append(c.member_attribute)
            entries = list(self._search(conn, c.group_base, c.group_filter, group_attrs))
            by_dn = {normal_dn(u.dn): u.external_id for u in users}
            if c.nested_groups == "matching_rule":
                groups = [self._group_in_chain(conn, e) for e in entries]
            else:
                groups = self._groups_from_members(entries, by_dn)
        except LDAPException as exc:
            raise DirectoryUnavailable(f"reading the directory failed: {exc}") from None
        finally:
            conn.unbind()
        return Snapshot(tuple(users), tuple(g for g in groups if g.external_id and g.name))

    def _group_in_chain(self, conn: Connection, entry: dict[str, Any]) -> DirectoryGroup:
        """Active Directory resolves the nesting: the users whose membership chain reaches it."""
        c = self._config
        raw = entry["raw_attributes"]
        query = f"(&{c.user_filter}(memberOf:{IN_CHAIN}:={escape_filter_chars(entry['dn'])}))"
        members = frozenset(
            _text(e["raw_attributes"].get(c.id_attribute), c.id_attribute)
            for e in self._search(conn, c.user_base, query, [c.id_attribute])
        )
        return DirectoryGroup(
            entry["dn"],
            _text(raw.get(c.id_attribute), c.id_attribute),
            _text(raw.get(c.group_name_attribute), c.group_name_attribute),
            members - {""},
        )

    def _groups_from_members(
        self, entries: list[dict[str, Any]], user_by_dn: dict[str, str]
    ) -> list[DirectoryGroup]:
        """Each group's users: its direct members, and (``recursive``) those of the groups it
        lists, followed to any depth (a cycle ends where it began)."""
        c = self._config
        direct: dict[str, list[str]] = {}
        for e in entries:
            members = e["raw_attributes"].get(c.member_attribute) or []
            direct[normal_dn(e["dn"])] = [normal_dn(m.decode("utf-8", "replace")) for m in members]

        def users_of(dn: str) -> frozenset[str]:
            found: set[str] = set()
            seen = {dn}
            stack = [dn]
            while stack:
                for member in direct.get(stack.pop(), ()):
                    if member in user_by_dn:
                        found.add(user_by_dn[member])
                    elif c.nested_groups == "recursive" and member in direct:
                        if member not in seen:
                            seen.add(member)
                            stack.append(member)
            return frozenset(found)

        out = []
        for e in entries:
            raw = e["raw_attributes"]
            out.append(
                DirectoryGroup(
                    e["dn"],
                    _text(raw.get(c.id_attribute), c.id_attribute),
                    _text(raw.get(c.group_name_attribute), c.group_name_attribute),
                    users_of(normal_dn(e["dn"])),
                )
            )
        return out
