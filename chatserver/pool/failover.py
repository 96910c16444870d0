"""The pool's store state: ``normal`` on ``database.url``, ``failed_over`` onto
``database.backup_url`` (the reference system's ``PoolState Normal`` / ``FailedOver``).

::

    chatserver pool failover  ─┐                       ┌─ every node, every failover_check_s:
    PUT /api/v1/pool/state    ─┤                       │  probe the other store; its pool_state
                               ▼                       │  newer than ours and naming it?
      refuse unless the target store is a primary      │      └─► Database.switch(other URL)
      (or --promote: fence the old one, wait until     │
       the standby replayed its WAL, pg_promote())     │
      record the state (and the audit entry) in the ───┘
      target store; this node switches at once

A multi-host ``database.url`` already follows a promoted replica on its own (store/dsn.py): this
is for the backup at another site, which the nodes must not use until an operator says so, and
must keep using afterwards even if the old primary comes back (it is fenced when reachable: its
cluster is made read-only). Which store a node uses is decided by the newest record of the two
stores (their own clocks), so a node started during a failover joins the store the pool is on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Literal

from ..store import admin as admin_store
from ..store import poolstate
from ..store.db import Database
from ..store.poolstate import FailoverError, PoolState, State

log = logging.getLogger("chatserver.pool")

Store = Literal["main", "backup"]


@dataclass(frozen=True, slots=True)
class StoreView:
    store: Store
    state: PoolState
    backup_configured: bool

    def public(self) -> dict[str, Any]:
        return {**self.state.public(), "store": self.store, "backup": self.backup_configured}


class StoreFailover:
    """Which of its two stores this node uses (the module docstring)."""

    def __init__(self, db: Database, main_url: str, backup_url: str, check_s: float) -> None:
        self._db = db
        self._urls: dict[Store, str] = {"main": main_url, "backup": backup_url}
        self._check_s = check_s
        self.store: Store = "main"
        self.state = PoolState()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._urls["backup"])

    def view(self) -> StoreView:
        return StoreView(self.store, self.state, self.enabled)

    async def choose(self) -> None:
        """At start: the store the newest record names (the main one when neither has one)."""
        if not self.enabled:
            return
        main, backup = await asyncio.gather(
            poolstate.probe(self._urls["main"]), poolstate.probe(self._urls["backup"])
        )
        if backup.pool_state is not None and backup.pool_state.state == "failed_over":
            newest_main = main.pool_state.since_ms if main.pool_state else 0
            if backup.pool_state.since_ms > newest_main:
                await self._switch("backup", backup.pool_state)
                return
        if main.pool_state is not None:
            self.state = main.pool_state

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._check_s)
            await self.check()

    async def check(self) -> bool:
        """Look at the other store once; switch to it if its record is newer and names it."""
        other: Store = "backup" if self.store == "main" else "main"
        found = await poolstate.probe(self._urls[other])
        record = found.pool_state
        if not found.reachable or found.in_recovery or record is None:
            return False
        if record.since_ms <= self.state.since_ms or _store_of(record.state) != other:
            return False
        async with self._lock:
            if self.store != other:
                await self._switch(other, record)
        return True

    async def _switch(self, store: Store, record: PoolState) -> None:
        await self._db.switch(self._urls[store])
        self.store, self.state = store, record
        log.warning(
            "pool: store state %s (by %s at %d: %s): this node now uses database.%s",
            record.state,
            record.by or "?",
            record.since_ms,
            record.reason or "no reason given",
            "url" if store == "main" else "backup_url",
        )

    async def set_state(
        self, state: State, *, by: str, reason: str, promote: bool = False
    ) -> PoolState:
        """Move the pool to ``state`` (see the module docstring); raises :class:`FailoverError`
        with what to do when a step cannot be made. The caller audits the change."""
        if not self.enabled:
            raise FailoverError("no backup store: set database.backup_url on every node")
        if not self._db.is_postgres:
            raise FailoverError("a failover needs PostgreSQL stores")
        target: Store = _store_of(state)
        source: Store = "main" if target == "backup" else "backup"
        async with self._lock:
            if self.store == target and self.state.state == state:
                raise FailoverError(f"the pool is already {state} (since {self.state.since_ms})")
            to = await poolstate.probe(self._urls[target])
            if not to.reachable:
                raise FailoverError(f"cannot reach the {target} store: {to.error}")
            if to.in_recovery and not promote:
                raise FailoverError(
                    f"the {target} store is a standby: promote it first (pg_ctl promote) or"
                    ' ask for the promotion (--promote / "promote": true)'
                )
            fenced = await poolstate.fence(self._urls[source])
            log.warning(
                "pool: failing %s onto database.%s (the %s store %s)",
                "over" if state == "failed_over" else "back",
                "backup_url" if target == "backup" else "url",
                source,
                "fenced read-only" if fenced is not None else "unreachable, not fenced",
            )
            if to.in_recovery:
                await poolstate.promote(self._urls[target], caught_up_to=fenced or 0)
            await poolstate.unfence(self._urls[target])  # it may have been fenced before
            await self._db.switch(self._urls[target])
            record = await poolstate.write_state(self._db, state, by, reason)
            self.store, self.state = target, record
        log.warning("pool: store state %s, recorded by %s", state, by)
        return record


def _store_of(state: State) -> Store:
    return "backup" if state == "failed_over" else "main"


async def record_cli_change(db: Database, by: str, before: StoreView, after: StoreView) -> None:
    """The audit entry of a change made by ``chatserver pool failover`` (the management API
    records its own through the admin context)."""
    await admin_store.audit(db, by, None, "pool.state", "pool", before.public(), after.public())
