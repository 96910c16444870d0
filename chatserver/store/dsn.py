"""Database URLs: one parser for every connection the server makes (docs/configuration.md).

A configured URL (``database.url``, ``compliance.database_url``) becomes a :class:`StoreUrl`,
and every connection is made from it: the SQLAlchemy engine (:meth:`StoreUrl.engine_url` with
:meth:`StoreUrl.connect_args`), the raw asyncpg pool of the fast paths
(:meth:`StoreUrl.asyncpg_args`), Alembic's migrations. The SQLAlchemy URL carries only the driver
and the database's name; hosts, ports, credentials and the session attributes are the same
keyword arguments for both, so the two can no longer disagree about where the primary is.

PostgreSQL hosts may be written in any of the forms libpq documents, and one URL may name a
primary and its replicas (the driver tries them in order and keeps the first that matches
``target_session_attrs``: ``primary`` unless the URL says otherwise, so a node always writes to
the primary, never to a standby, and follows a promoted replica by itself)::

    postgresql://chat:pw@db1:5432,db2:5432/chat              comma-separated hosts
    postgresql://chat:pw@/chat?host=db1:5432&host=db2:5432   repeated host= parameters
    postgresql://chat:pw@/chat?host=db1,db2&port=5432,5433   libpq's host= and port= lists
    postgresql://chat@/chat?host=/run/postgresql             a Unix socket directory

A URL this parser cannot use exactly as written raises :class:`UrlError` with the reason (a bad
port, two ways of naming hosts at once, a parameter the driver would silently ignore, SQLite with
a host): the node refuses to start instead of starting on a store it will not write to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from sqlalchemy.engine import URL

from .connect import connect

# target_session_attrs values the driver (asyncpg) implements, as libpq spells them. The default
# is "primary" (not in recovery), not "read-write": read-write also refuses a primary whose
# default_transaction_read_only is on, which would turn "writes fail" (answered unavailable,
# reads and token resumes still served) into "no store at all".
SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Query parameters understood besides host, port, target_session_attrs and sslmode: each is
# passed to the driver. Anything else is refused rather than silently ignored.
_PASSED = {
    "user": "user",
    "password": "password",
    "dbname": "database",
    "application_name": "application_name",
    "connect_timeout": "timeout",
}
MAX_HOSTS = 16
DEFAULT_PORT = 5432
_SCHEMES = {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql"}
_HOST_NAME = re.compile(r"[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]|/[^\x00]{0,255}")


class UrlError(ValueError):
    """A database URL that cannot be used as written; the message says why."""


@dataclass(frozen=True, slots=True)
class Host:
    host: str  # a name, an address (IPv6 without brackets) or a Unix socket directory
    port: int

    def __str__(self) -> str:
        if self.host.startswith("/"):
            return self.host
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class StoreUrl:
    """A parsed database URL (see the module docstring)."""

    dialect: Literal["sqlite", "postgresql"]
    database: str | None = None  # PostgreSQL: the database; SQLite: the file (None: in memory)
    hosts: tuple[Host, ...] = ()
    user: str | None = None
    password: str | None = None
    target_session_attrs: str = "primary"
    sslmode: str | None = None
    options: dict[str, str] = field(default_factory=dict)  # driver keyword -> value

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def engine_url(self) -> URL:
        """The URL for ``create_async_engine``: the driver and the database only; every other
        connection setting is in :meth:`connect_args`."""
        if self.dialect == "sqlite":
            return URL.create("sqlite+aiosqlite", database=self.database)
        return URL.create("postgresql+asyncpg", database=self.database)

    def connect_args(self) -> dict[str, Any]:
        """``create_async_engine(connect_args=…)``: :meth:`asyncpg_args`, connecting through
        :func:`chatserver.store.connect.connect` (a time limit per host)."""
        if self.dialect == "sqlite":
            return {}
        return {**self.asyncpg_args(), "async_creator_fn": connect}

    def asyncpg_args(self) -> dict[str, Any]:
        """Keyword arguments for :func:`chatserver.store.connect.connect` (``asyncpg.connect``,
        ``asyncpg.create_pool(connect=…)``): the same as the engine's."""
        assert self.is_postgres
        args: dict[str, Any] = {"target_session_attrs": self.target_session_attrs}
        if self.database is not None:
            args["database"] = self.database
        if self.user is not None:
            args["user"] = self.user
        if self.password is not None:
            args["password"] = self.password
        if self.hosts:
            args["host"] = [h.host for h in self.hosts]
            args["port"] = [h.port for h in self.hosts]
        if self.sslmode is not None:
            args["ssl"] = self.sslmode
        for key, value in self.options.items():
            if key == "timeout":
                args[key] = float(value)
            elif key == "application_name":
                args.setdefault("server_settings", {})[key] = value
            else:
                args[key] = value
        return args

    def with_hosts(self, hosts: tuple[Host, ...]) -> StoreUrl:
        """The same URL on other hosts (a failover onto the backup store)."""
        return replace(self, hosts=hosts)

    def render(self, *, hide_password: bool = True) -> str:
        """The URL in the comma form (the password replaced by ``***`` unless asked for)."""
        if self.dialect == "sqlite":
            return f"sqlite:///{self.database}" if self.database else "sqlite://"
        credentials = ""
        if self.user is not None:
            credentials = quote(self.user, safe="")
            if self.password is not None:
                credentials += ":" + ("***" if hide_password else quote(self.password, safe=""))
            credentials += "@"
        hosts = ",".join(str(h) for h in self.hosts if not h.host.startswith("/"))
        query = [f"host={h.host}" for h in self.hosts if h.host.startswith("/")]
        query.append(f"target_session_attrs={self.target_session_attrs}")
        if self.sslmode:
            query.append(f"sslmode={self.sslmode}")
        return f"postgresql://{credentials}{hosts}/{self.database or ''}?" + "&".join(query)


def parse(url: str, *, default_target: str = "primary") -> StoreUrl:
    """Parse a configured database URL; raises :class:`UrlError` with the reason."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise UrlError("must start with sqlite://, postgresql:// or postgres://")
    if _SCHEMES[scheme.lower()] == "sqlite":
        return _parse_sqlite(rest)
    return _parse_postgres(url, default_target)


def _parse_sqlite(rest: str) -> StoreUrl:
    netloc, _, path = rest.partition("/")
    if netloc:
        raise UrlError(
            f"an SQLite URL names a file, not a host ({netloc!r}): write sqlite:///relative/path"
            " or sqlite:////absolute/path"
        )
    if "?" in path or "#" in path:
        raise UrlError("an SQLite URL takes no parameters")
    path = unquote(path)
    return StoreUrl("sqlite", database=path if path and path != ":memory:" else None)


def _parse_postgres(url: str, default_target: str) -> StoreUrl:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UrlError(str(exc)) from None
    if parts.fragment:
        raise UrlError("a database URL has no #fragment")
    netloc = parts.netloc
    user = password = None
    if "@" in netloc:
        credentials, netloc = netloc.rsplit("@", 1)
        name, colon, secret = credentials.partition(":")
        user = unquote(name) or None
        password = unquote(secret) if colon else None
    database = unquote(parts.path[1:]) if parts.path.startswith("/") else None
    if database is not None and "/" in database:
        raise UrlError(f"{database!r} is not a database name")
    query: list[tuple[str, str]] = []
    for item in parts.query.split("&") if parts.query else []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UrlError(f"cannot read the parameter {item!r}: write name=value")
        query.append((unquote(key), unquote(value)))  # percent-decoding only, as libpq: + stays
    host_params = [v for k, v in query if k == "host"]
    port_params = [v for k, v in query if k == "port"]
    single: dict[str, str] = {}
    for key, value in query:
        if key in ("host", "port"):
            continue
        if key in single:
            raise UrlError(f"the parameter {key!r} is given twice")
        single[key] = value
    if netloc and host_params:
        raise UrlError(
            "hosts are named twice (before the path and in host=): use one form, e.g."
            " postgresql://user@db1:5432,db2:5432/name"
        )
    if netloc:
        if port_params:
            raise UrlError("the ports are named twice (in the host list and in port=)")
        hosts = _netloc_hosts(netloc)
    else:
        hosts = _query_hosts(host_params, port_params)
    if len(hosts) > MAX_HOSTS:
        raise UrlError(f"at most {MAX_HOSTS} hosts")
    target = single.pop("target_session_attrs", default_target)
    if target not in SESSION_ATTRS:
        raise UrlError(f"target_session_attrs={target!r}: one of {', '.join(SESSION_ATTRS)}")
    sslmode = single.pop("sslmode", None)
    if sslmode is not None and sslmode not in SSL_MODES:
        raise UrlError(f"sslmode={sslmode!r}: one of {', '.join(SSL_MODES)}")
    options: dict[str, str] = {}
    for key, value in single.items():
        if key not in _PASSED:
            raise UrlError(
                f"unknown parameter {key!r} (it would be ignored); known: host, port,"
                f" target_session_attrs, sslmode, {', '.join(_PASSED)} (certificate files go in"
                " the PGSSLROOTCERT, PGSSLCERT and PGSSLKEY environment variables)"
            )
        if key == "connect_timeout":
            _positive_number(key, value)
        options[_PASSED[key]] = value
    for name, given in (("user", user), ("password", password), ("database", database or None)):
        if name in options and given is not None:
            raise UrlError(f"the {name} is named twice (in the URL and as a parameter)")
    user = user if user is not None else options.pop("user", None)
    password = password if password is not None else options.pop("password", None)
    database = database or options.pop("database", None)
    return StoreUrl(
        "postgresql",
        database=database or None,
        hosts=tuple(hosts),
        user=user,
        password=password,
        target_session_attrs=target,
        sslmode=sslmode,
        options=options,
    )


def _positive_number(key: str, value: str) -> None:
    try:
        ok = 0 < float(value) <= 3600
    except ValueError:
        ok = False
    if not ok:
        raise UrlError(f"{key}={value!r}: a number of seconds, more than 0 and at most 3600")


def _port(text: str, where: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UrlError(f"{where}: {text!r} is not a port (1 to 65535)")
    return int(text)


def _host(text: str) -> str:
    if not _HOST_NAME.fullmatch(text):
        raise UrlError(f"{text!r} is not a host name, an address or a socket directory")
    return text[1:-1] if text.startswith("[") else text


def _split_host_port(item: str, where: str) -> tuple[str, int | None]:
    """``name``, ``name:port``, ``[v6]``, ``[v6]:port``, ``/socket/dir``."""
    if not item:
        raise UrlError(f"{where}: an empty host")
    if item.startswith("/"):
        return _host(unquote(item)), None
    if item.startswith("["):
        close = item.find("]")
        if close < 0:
            raise UrlError(f"{where}: {item!r} has no closing ]")
        host, rest = item[: close + 1], item[close + 1 :]
        if rest and not rest.startswith(":"):
            raise UrlError(f"{where}: {item!r} is not host:port")
        return _host(host), _port(rest[1:], where) if rest else None
    host, colon, port = item.rpartition(":")
    if not colon:
        return _host(item), None
    return _host(host), _port(port, where)


def _netloc_hosts(netloc: str) -> list[Host]:
    hosts = []
    for item in netloc.split(","):
        host, port = _split_host_port(item, "host list")
        hosts.append(Host(host, port or DEFAULT_PORT))
    return hosts


def _query_hosts(host_params: list[str], port_params: list[str]) -> list[Host]:
    """``host=a:1&host=b:2`` (SQLAlchemy's form) or ``host=a,b&port=1,2`` (libpq's)."""
    items = [item for value in host_params for item in value.split(",")]
    split = [_split_host_port(item, "host=") for item in items]
    ports = [p for value in port_params for p in value.split(",")]
    if ports and any(port is not None for _, port in split):
        raise UrlError("the ports are named twice (in host=name:port and in port=)")
    if ports and not items:
        raise UrlError("port= without a host: name the host (host=name:port)")
    if len(ports) not in (0, 1, len(items)):
        raise UrlError(f"{len(items)} hosts but {len(ports)} ports: give one port, or one per host")
    out = []
    for i, (host, port) in enumerate(split):
        if ports:
            port = _port(ports[0] if len(ports) == 1 else ports[i], "port=")
        out.append(Host(host, port or DEFAULT_PORT))
    return out
