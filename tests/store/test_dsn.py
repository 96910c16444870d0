"""The database URL parser (chatserver/store/dsn.py): every documented form gives the same
connection arguments to SQLAlchemy and to asyncpg; a URL it cannot use is refused with the
reason. The real multi-host test (first host down) is in tests/store/test_failover.py."""

from __future__ import annotations

import pytest

from chatserver.config import ConfigError, load_config
from chatserver.store.connect import connect
from chatserver.store.dsn import Host, UrlError, parse

TWO = (Host("db1", 5432), Host("db2", 5433))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://chat:pw@db1:5432,db2:5433/chat",
        "postgres://chat:pw@db1,db2:5433/chat",  # a host without a port gets 5432
        "postgresql://chat:pw@/chat?host=db1:5432&host=db2:5433",
        "postgresql://chat:pw@/chat?host=db1,db2&port=5432,5433",
        "postgresql://chat:pw@/chat?host=db1&host=db2&port=5432,5433",
        "postgresql:///chat?host=db1:5432&host=db2:5433&user=chat&password=pw",
        "postgresql://chat:pw@/?host=db1:5432,db2:5433&dbname=chat",
    ],
)
def test_every_multi_host_form_means_the_same(url: str) -> None:
    target = parse(url)
    assert target.hosts == TWO
    assert (target.user, target.password, target.database) == ("chat", "pw", "chat")
    assert target.target_session_attrs == "primary"  # never a standby: the node writes
    args = target.asyncpg_args()
    assert args == {
        "host": ["db1", "db2"],
        "port": [5432, 5433],
        "user": "chat",
        "password": "pw",
        "database": "chat",
        "target_session_attrs": "primary",
    }
    # SQLAlchemy gets the driver and the database only: every host comes from connect_args,
    # the same dictionary the asyncpg pool is made with.
    engine_url = target.engine_url()
    assert engine_url.drivername == "postgresql+asyncpg"
    assert engine_url.host is None and not engine_url.query
    # The engine connects with the same arguments, through store/connect.py's connect.
    assert target.connect_args() == {**args, "async_creator_fn": connect}


def test_the_sqlalchemy_dialect_passes_the_same_arguments_to_asyncpg() -> None:
    """What the engine really hands to asyncpg.connect: our connect_args, unchanged."""
    from sqlalchemy.ext.asyncio import create_async_engine

    target = parse("postgresql://chat@/chat?host=db1:5432&host=db2:5433")
    engine = create_async_engine(target.engine_url(), connect_args=target.connect_args())
    _, kwargs = engine.dialect.create_connect_args(engine.url)
    kwargs.update(target.connect_args())  # what create_engine does with connect_args
    assert kwargs["host"] == ["db1", "db2"] and kwargs["port"] == [5432, 5433]
    assert kwargs["target_session_attrs"] == "primary"


def test_asyncpg_reads_our_arguments_as_two_hosts() -> None:
    """asyncpg's own DSN parser keeps only the last ``host=`` (the bug this module fixes); the
    keyword arguments we pass instead name both hosts."""
    from asyncpg.connect_utils import _parse_connect_dsn_and_args

    args = parse("postgresql://chat@/chat?host=db1:5432&host=db2:5433").asyncpg_args()
    addrs, params = _parse_connect_dsn_and_args(
        dsn=None,
        host=args["host"],
        port=args["port"],
        user=args["user"],
        password=None,
        passfile=None,
        database=args["database"],
        ssl=None,
        service=None,
        servicefile=None,
        direct_tls=None,
        server_settings=None,
        target_session_attrs=args["target_session_attrs"],
        krbsrvname=None,
        gsslib=None,
    )
    assert addrs == [("db1", 5432), ("db2", 5433)]
    assert str(params.target_session_attrs.value) == "primary"


@pytest.mark.parametrize("attrs", ["any", "read-write", "standby", "prefer-standby", "read-only"])
def test_target_session_attrs_may_be_chosen(attrs: str) -> None:
    url = f"postgresql://u@db1,db2/chat?target_session_attrs={attrs}"
    assert parse(url).connect_args()["target_session_attrs"] == attrs


def test_single_host_socket_ipv6_and_options() -> None:
    assert parse("postgresql://u@db/chat").hosts == (Host("db", 5432),)
    assert parse("postgresql://u@[::1]:6543/chat").hosts == (Host("::1", 6543),)
    sock = parse("postgresql://u@/chat?host=/run/postgresql")
    assert sock.hosts == (Host("/run/postgresql", 5432),)
    args = parse(
        "postgresql://u@db/chat?sslmode=require&connect_timeout=5&application_name=chat1"
    ).connect_args()
    assert args["ssl"] == "require" and args["timeout"] == 5.0
    assert args["server_settings"] == {"application_name": "chat1"}
    # Percent-encoded credentials are decoded once; a "+" stays a "+" (libpq's rule).
    assert parse("postgresql://u@db/chat?password=a+b%26c").password == "a+b&c"
    assert parse("postgresql://u%40x:p%2Fw@db/chat").password == "p/w"
    assert parse("postgresql://u%40x:p%2Fw@db/chat").user == "u@x"


def test_sqlite_urls() -> None:
    assert parse("sqlite:///var/chat.db").database == "var/chat.db"
    assert parse("sqlite:////abs/chat.db").database == "/abs/chat.db"
    assert parse("sqlite://").database is None
    assert parse("sqlite:///:memory:").database is None
    assert parse("sqlite:///var/chat.db").engine_url().drivername == "sqlite+aiosqlite"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://u@db/chat", "must start with"),
        ("postgresql://u@db:99999/chat", "not a port"),
        ("postgresql://u@db:0/chat", "not a port"),
        ("postgresql://u@db:x/chat", "not a port"),
        ("postgresql://u@db1,/chat", "empty host"),
        ("postgresql://u@/chat?host=db1:5432&host=db2:abc", "not a port"),
        ("postgresql://u@/chat?host=db1,db2,db3&port=1,2", "3 hosts but 2 ports"),
        ("postgresql://u@/chat?host=db1:5432&port=5433", "ports are named twice"),
        ("postgresql://u@db1/chat?host=db2", "hosts are named twice"),
        ("postgresql://u@db1/chat?port=5433", "ports are named twice"),
        ("postgresql://u@/chat?port=5433", "without a host"),
        ("postgresql://u@db/chat?target_session_attrs=readwrite", "target_session_attrs"),
        ("postgresql://u@db/chat?sslmode=sometimes", "sslmode"),
        ("postgresql://u@db/chat?targetsessionattrs=read-write", "unknown parameter"),
        ("postgresql://u@db/chat?pool_size=5", "unknown parameter"),
        ("postgresql://u@db/chat?connect_timeout=-1", "connect_timeout"),
        ("postgresql://u@db/chat?sslmode=require&sslmode=disable", "given twice"),
        ("postgresql://u@db/chat?user=v", "user is named twice"),
        ("postgresql://u@db/chat?dbname=other", "database is named twice"),
        ("postgresql://u@db/a/b", "not a database name"),
        ("postgresql://u@db/chat?sslmode", "write name=value"),
        ("postgresql://u@db/chat#x", "fragment"),
        ("postgresql://u@db%20x/chat", "not a host name"),
        ("postgresql://u@" + ",".join(f"h{i}" for i in range(17)) + "/chat", "at most 16"),
        ("sqlite://db1,db2/chat.db", "names a file, not a host"),
        ("sqlite://host/chat.db", "names a file, not a host"),
        ("sqlite:///chat.db?mode=ro", "no parameters"),
    ],
)
def test_a_url_that_cannot_be_used_is_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(UrlError, match=reason):
        parse(url)


def test_the_configuration_refuses_such_a_url_at_load_time() -> None:
    """A start-up error, not a node that starts and then fails every post."""
    with pytest.raises(ConfigError, match=r"database.url.*not a port"):
        load_config(env={"CHATSERVER_DATABASE_URL": "postgresql://u@db:70000/chat"})
    with pytest.raises(ConfigError, match=r"compliance.database_url.*unknown parameter"):
        load_config(env={"CHATSERVER_COMPLIANCE_DATABASE_URL": "postgresql://u@db/c?x=1"})
    ok = load_config(env={"CHATSERVER_DATABASE_URL": "postgresql://u@/c?host=a:1&host=b:2"})
    assert parse(ok.database.url).hosts == (Host("a", 1), Host("b", 2))


def test_the_password_is_never_rendered_unless_asked() -> None:
    target = parse("postgresql://chat:s3cr%40t%2F@db1,db2:5433/chat")
    assert "s3cr" not in target.render()
    assert "s3cr%40t%2F" in target.render(hide_password=False)
    assert parse(target.render(hide_password=False)) == target  # the rendering parses back
