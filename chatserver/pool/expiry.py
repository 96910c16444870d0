"""When a node is gone, and who takes an active node's place (``pool.auto_promote``).

::

    heartbeat (node.py) ── rows ──► judge(): old and heard? ── yes: kept (its store is in trouble)
                                             │ no
                                             ▼
                          expire() ─► registry.expire (one transaction, the join lock)
                                             │  rows deleted, standbys made active
                                             ▼
                                 log + audit ``pool.promote`` (actor ``system``)

A row's heartbeat older than ``dead_after_s`` is not enough: a node whose peer link here still
carries its pings is alive and serving its clients, only unable to write the store (a store cut
or stall). Expiring it would close the links its subscribers depend on, so it is kept. The
keep-alive closes a link silent for ``link_timeout_s``, so a node that is really gone is still
expired ``dead_after_s`` after its last heartbeat (or ``link_timeout_s`` after its last ping, if
that is later).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from ..config import PoolConfig
from ..rooms.audit import SYSTEM, Audit
from ..store.db import Database
from . import registry
from .link import PeerLink
from .registry import ACTIVE, Expired, NodeRow

log = logging.getLogger("chatserver.pool")


def hears(link: PeerLink | None, settings: PoolConfig) -> bool:
    """Does this open link carry the peer's pings (heard within ``link_timeout_s``)?"""
    return (
        link is not None
        and link.proto.is_open
        and time.monotonic() - link.last_heard <= settings.link_timeout_s
    )


def judge(
    rows: list[NodeRow], now: int, links: Mapping[str, PeerLink], settings: PoolConfig
) -> tuple[list[str], list[str]]:
    """The names of the rows older than ``dead_after_s``: those to expire, and those kept
    because their link here still carries their pings."""
    old = [r.name for r in rows if now - r.heartbeat_ms > settings.dead_after_s * 1000]
    heard = [name for name in old if hears(links.get(name), settings)]
    return [name for name in old if name not in heard], heard


def _view(states: dict[str, str]) -> dict[str, Any]:
    return {"nodes": [{"name": n, "state": s} for n, s in sorted(states.items())]}


async def expire(
    db: Database, settings: PoolConfig, stale: list[str], heard: list[str], audit: Audit | None
) -> Expired:
    """Delete the stale rows; with ``auto_promote``, a standby takes each active one's place
    (the ``heard`` nodes count as live, however old their heartbeat)."""
    expired = await registry.expire(
        db,
        int(settings.dead_after_s * 1000),
        stale,
        promote_up_to=settings.max_active if settings.auto_promote else 0,
        heard=heard,
    )
    if expired.gone:
        log.info("pool: expired stale nodes %s", ", ".join(expired.gone))
    if not expired.promoted:
        return expired
    log.warning(
        "pool: promoted standby %s to active in place of %s (pool.auto_promote)",
        ", ".join(expired.promoted),
        ", ".join(n for n in expired.gone if expired.before[n] == ACTIVE),
    )
    if audit is not None:
        for name in expired.promoted:
            try:
                await audit.record(
                    SYSTEM,
                    "pool.promote",
                    f"node:{name}",
                    _view(expired.before),
                    _view(expired.after),
                )
            except Exception as exc:  # the promotion stands; the store may be failing
                log.warning("pool: could not audit the promotion of %s: %s", name, exc)
    return expired
