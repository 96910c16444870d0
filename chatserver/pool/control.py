"""Managing a pool: list nodes, set the active list, swap, drain.

Plain async functions over the store (and, when called inside a node, its :class:`Pool`, which
tells the peers so they act at once instead of at their next heartbeat). Each returns a
JSON-able dict; the management API and ``chatserver pool …`` both use them. A change is a write
to ``pool_nodes``: each node reads its own state at every heartbeat and follows it (an active
node moved to standby keeps its clients but takes no new ones; a draining node tells its clients
to move, then stops).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..store.db import Database
from . import registry
from .registry import ACTIVE, DRAINING, STANDBY

if TYPE_CHECKING:
    from .node import Pool


class PoolControlError(Exception):
    """The change cannot be made; ``status`` is the HTTP status that fits."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _announce(pool: Pool | None) -> None:
    if pool is not None:
        pool.announce_nodes()


async def list_nodes(db: Database, pool: Pool | None = None) -> dict[str, Any]:
    """Every registered node with its addresses, state and heartbeat age."""
    rows, now = await registry.list_nodes_at(db)
    nodes = []
    for row in rows:
        out = row.public(now)
        if pool is not None:
            out["this_node"] = row.name == pool.name
            out["linked"] = row.name in pool.links
        nodes.append(out)
    return {"nodes": nodes}


async def set_active(
    db: Database, names: list[str], *, max_active: int, pool: Pool | None = None
) -> dict[str, Any]:
    """Make exactly ``names`` the active nodes; every other active node becomes standby."""
    if not names:
        raise PoolControlError("the active list cannot be empty")
    if len(set(names)) > max_active:
        raise PoolControlError(f"at most {max_active} nodes may be active (pool.max_active)")
    rows = {row.name: row for row in await registry.list_nodes(db)}
    unknown = sorted(set(names) - set(rows))
    if unknown:
        raise PoolControlError(f"no node named {unknown[0]!r} in the pool", 404)
    draining = sorted(n for n in names if rows[n].state == DRAINING)
    if draining:
        raise PoolControlError(f"node {draining[0]!r} is draining", 409)
    states = {name: ACTIVE for name in names}
    for name, row in rows.items():
        if name not in states and row.state == ACTIVE:
            states[name] = STANDBY
    await registry.set_states(db, states)
    _announce(pool)
    return await list_nodes(db, pool)


async def swap(
    db: Database, active: str, standby: str, *, pool: Pool | None = None
) -> dict[str, Any]:
    """Move ``active`` to standby and ``standby`` to active, in one transaction."""
    rows = {row.name: row for row in await registry.list_nodes(db)}
    for name in (active, standby):
        if name not in rows:
            raise PoolControlError(f"no node named {name!r} in the pool", 404)
    if rows[active].state != ACTIVE:
        raise PoolControlError(f"node {active!r} is {rows[active].state}, not active", 409)
    if rows[standby].state != STANDBY:
        raise PoolControlError(f"node {standby!r} is {rows[standby].state}, not standby", 409)
    await registry.set_states(db, {active: STANDBY, standby: ACTIVE})
    _announce(pool)
    return await list_nodes(db, pool)


async def drain(db: Database, name: str, *, pool: Pool | None = None) -> dict[str, Any]:
    """Tell node ``name`` to send its clients elsewhere and stop."""
    rows = {row.name: row for row in await registry.list_nodes(db)}
    if name not in rows:
        raise PoolControlError(f"no node named {name!r} in the pool", 404)
    others = [r for r in rows.values() if r.name != name and r.state == ACTIVE]
    if not others:
        raise PoolControlError(
            f"node {name!r} is the last active node; activate another first", 409
        )
    await registry.set_states(db, {name: DRAINING})
    _announce(pool)
    return await list_nodes(db, pool)
