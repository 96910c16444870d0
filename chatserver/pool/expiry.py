"""When a node is gone, and who takes an active node's place (``pool.auto_promote``).

::

    heartbeat (node.py) ── stale rows ──► hears()? ── yes: kept (its store is in trouble, not it)
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
from typing import Any

from ..config import PoolConfig
from ..rooms.audit import SYSTEM, Audit
from ..store.db import Database
from . import registry
from .link import PeerLink
from .registry import ACTIVE, Expired

log = logging.getLogger("chatserver.pool")


def hears(link: PeerLink | None, settings: PoolConfig) -> bool:
    """Does this open link carry the peer's pings (heard within ``link_timeout_s``)?"""
    return (
        link is not None
        and link.proto.is_open
        and time.monotonic() - link.last_heard <= settings.link_timeout_s
    )


def _view(states: dict[str, str]) -> dict[str, Any]:
    return {"nodes": [{"name": n, "state": s} for n, s in sorted(states.items())]}


async def expire(
    db: Database, settings: PoolConfig, stale: list[str], audit: Audit | None
) -> Expired:
    """Delete the stale rows; with ``auto_promote``, a standby takes each active one's place."""
    expired = await registry.expire(
        db,
        int(settings.dead_after_s * 1000),
        stale,
        promote_up_to=settings.max_active if settings.auto_promote else 0,
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
