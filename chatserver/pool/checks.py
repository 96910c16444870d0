"""Refusals of pool settings that cannot work, made before anything starts."""

from __future__ import annotations

from ..config import parse_address
from ..store.db import dialect_of


class PoolError(Exception):
    """The pool cannot start; the message says why."""


def check_store_url(url: str) -> None:
    """Refuse a store the nodes cannot share, from its URL alone (before it is opened)."""
    if dialect_of(url) != "postgresql":
        raise PoolError(
            "pool.enabled needs a PostgreSQL store shared by every node: database.url is"
            " SQLite, which one node owns alone; set database.url to postgresql://…"
            " or turn pool.enabled off"
        )


def advertised(address: str, bound: tuple[str, int] | None) -> str:
    """``host:port`` others should use: the configured host with the bound port."""
    if not address:
        return ""
    host, port = parse_address(address)
    if bound is not None:
        port = bound[1]
    if host in ("0.0.0.0", "::", ""):
        raise PoolError(
            f"cannot advertise wildcard address {address!r}: set pool.advertise_tcp,"
            " pool.advertise_websocket, pool.advertise_peer and pool.advertise_management"
        )
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
