"""The directory sync: every ``sync_interval_s``, the directory's users and groups written into
the store, then made true on live sessions.

One run (:meth:`DirectorySync.run_once`):

1. take or renew the store's lease (``store/userdir.py``): across a pool one node syncs at a
   time; a node that does not hold it skips the run;
2. read the whole directory in a worker thread (:meth:`LdapDirectory.snapshot`) — a directory
   that does not answer changes nothing;
3. the **mass-removal guard**: if more than ``max_removal_share`` of the enabled directory users
   would be disabled or removed, or of the directory groups removed, stop and report (logged,
   recorded as the last result, and in the audit log); ``force`` overrides it once (as does an
   administrator's request with ``override_guard``);
4. write users (created, renamed, disabled, enabled), groups (created, renamed, removed) and each
   group's users (nesting flattened by the snapshot) — through the same store functions as local
   changes, so the compliance outbox records group changes alike;
5. end the sessions of users disabled or removed (their tokens revoked: every node ends them) and
   tell governance the membership changed (its caches dropped and the rooms' live subscriptions
   re-checked on every node, as for a local group change).

Each run records its start, outcome (``ok``, ``failed``, ``stopped`` by the guard) and counts in
the store (``store/userdir.py``: :func:`~chatserver.store.userdir.status`, which any node reads).
An administrator asks for a run now with :meth:`DirectorySync.request` (``POST
/api/v1/directory/sync``): the node answering runs it if it holds the lease, or leaves the
request in the store, where the holder sees it within :data:`REQUEST_POLL_S`.

A directory user whose name belongs to a local user, or a directory group whose name belongs to a
local group, is skipped and reported: the directory never takes over a local account.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..config import DirectoryConfig
from ..store import principals as principal_store
from ..store import userdir as store
from ..store.db import Database, now_ms
from ..store.principals import principal
from ..store.users import UserExists, set_disabled
from .ldap import DirectoryUnavailable, LdapDirectory, Snapshot

log = logging.getLogger("chatserver.userdir")


# How often the lease holder looks for a run asked for through another node (``request``).
REQUEST_POLL_S = 2.0
MAX_CONFLICTS_KEPT = 10  # in the stored status (the log and the audit entry name 20)


class MassRemoval(Exception):
    """A sync stopped by the mass-removal guard; the message says what it would have done,
    ``stop`` the counts."""

    def __init__(self, message: str, stop: store.GuardStop) -> None:
        super().__init__(message)
        self.stop = stop


@dataclass(slots=True)
class Report:
    users_seen: int = 0
    groups_seen: int = 0
    users_created: int = 0
    users_updated: int = 0
    users_disabled: list[int] = field(default_factory=list)  # disabled, or gone from it
    users_removed: int = 0  # of users_disabled: no longer in the directory
    users_enabled: int = 0
    groups_created: int = 0
    groups_removed: int = 0
    memberships_changed: int = 0
    conflicts: list[str] = field(default_factory=list)

    def changed(self) -> bool:
        return bool(
            self.users_created
            or self.users_updated
            or self.users_disabled
            or self.users_enabled
            or self.groups_created
            or self.groups_removed
            or self.memberships_changed
        )

    def counts(self) -> store.SyncCounts:
        return store.SyncCounts(
            users_seen=self.users_seen,
            groups_seen=self.groups_seen,
            users_added=self.users_created,
            users_updated=self.users_updated,
            users_disabled=len(self.users_disabled),
            users_removed=self.users_removed,
            users_enabled=self.users_enabled,
            groups_added=self.groups_created,
            groups_removed=self.groups_removed,
            memberships_changed=self.memberships_changed,
            conflicts=tuple(c[:120] for c in self.conflicts[:MAX_CONFLICTS_KEPT]),
        )

    def summary(self) -> str:
        text = (
            f"users: {self.users_created} created, {self.users_updated} updated,"
            f" {len(self.users_disabled)} disabled, {self.users_enabled} enabled; groups:"
            f" {self.groups_created} created, {self.groups_removed} removed,"
            f" {self.memberships_changed} memberships changed"
        )
        if self.conflicts:
            text += f"; skipped (name taken locally): {', '.join(self.conflicts[:20])}"
        return text


Disable = Callable[[int], Awaitable[object]]  # ends a user's sessions (Accounts.revoke_tokens)
MembershipChanged = Callable[[bool], Awaitable[None]]  # Governance.directory_changed


class DirectorySync:
    def __init__(
        self,
        config: DirectoryConfig,
        db: Database,
        directory: LdapDirectory,
        holder: str,
        *,
        disable: Disable,
        membership_changed: MembershipChanged,
        record: Callable[[str, dict[str, object]], Awaitable[None]],
    ) -> None:
        self._config = config
        self._db = db
        self._directory = directory
        self._holder = holder
        self._disable = disable
        self._membership_changed = membership_changed
        self._record = record
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._holding = False  # the last run found this node holding the lease
        self._last_end = 0.0  # the event loop's time when the last run ended
        self._poll_failed = False
        self.last_result = ""
        self.first_run = asyncio.Event()  # set once the node's first run ended, however

    # -- the loop ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="directory sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
            try:
                await store.release_lease(self._db, self._holder)
            except Exception as exc:  # the store may be gone already; the lease expires
                log.warning("directory sync: releasing the lease failed: %s", exc)

    async def _loop(self) -> None:
        clock = asyncio.get_running_loop()
        requested = False
        while True:
            try:
                if requested:
                    await self._run_requested()
                else:
                    await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                pass  # logged and recorded by run_once
            self.first_run.set()
            # The next run one interval after the last (a run asked for meanwhile moves it), or
            # as soon as a request for one is seen, while this node holds the lease.
            requested = False
            while (left := self._last_end + self._config.sync_interval_s - clock.time()) > 0:
                await asyncio.sleep(min(REQUEST_POLL_S, left))
                if self._holding and await self._requested():
                    requested = True
                    break

    async def _run_requested(self) -> None:
        """The run a request asked for, unless another run took the request meanwhile."""
        async with self._lock:
            if await self._requested():
                await self._timed_run(False)

    async def _requested(self) -> bool:
        try:
            found = await store.pending_request(self._db)
        except Exception as exc:  # the store is away; the scheduled run will say so
            if not self._poll_failed:
                log.warning("directory sync: cannot look for requested runs: %s", exc)
            self._poll_failed = True
            return False
        if self._poll_failed:
            log.info("directory sync: looking for requested runs again")
        self._poll_failed = False
        return found

    async def request(self, by: str, *, override_guard: bool = False) -> Report | None:
        """A run now, asked for by ``by`` (an administrator): recorded in the store, then run
        here if this node holds (or can take) the lease; else None, and the holder runs it
        within :data:`REQUEST_POLL_S`. The guard holds unless ``override_guard``. Raises as
        :meth:`run_once`."""
        async with self._lock:  # the loop's poll does not see it first and run it twice
            await store.request_sync(self._db, by, override_guard)
            return await self._timed_run(False)

    def _lease_ms(self) -> int:
        # Held across runs by renewing it; another node takes over once two runs were missed.
        return int((2 * self._config.sync_interval_s + 2 * self._config.timeout_s) * 1000)

    async def run_once(self, *, force: bool = False) -> Report | None:
        """One sync; None if another node holds the lease. Raises :class:`MassRemoval` (nothing
        changed) or :class:`DirectoryUnavailable` (nothing changed). A run asked for (through
        :meth:`request`, on any node) is taken by the run; its ``override_guard`` forces it."""
        async with self._lock:
            return await self._timed_run(force)

    async def _timed_run(self, force: bool) -> Report | None:
        try:
            return await self._run(force)
        finally:
            self._last_end = asyncio.get_running_loop().time()

    async def _run(self, force: bool) -> Report | None:
        db, holder = self._db, self._holder
        try:
            self._holding = await store.acquire_lease(db, holder, self._lease_ms())
        except Exception as exc:
            log.error("directory sync failed: the store did not answer: %s", exc)
            raise
        if not self._holding:
            return None
        asked = None
        try:
            asked = await store.take_request(db, holder)
            if asked is not None:
                log.info("directory sync asked for by %s", asked.requested_by or "?")
            force = force or (asked is not None and asked.override_guard)
            await store.record_start(db, holder)
            snapshot = await asyncio.to_thread(self._directory.snapshot)
            report = await self._apply(snapshot, force)
            self.last_result = "ok: " + report.summary()
            await store.record_result(
                db,
                holder,
                self.last_result,
                counts=report.counts(),
                next_run_ms=self._next_run_ms(),
            )
            if report.changed() or report.conflicts:
                log.info("directory sync: %s", report.summary())
                entry: dict[str, object] = {"summary": report.summary()}
                if force:
                    entry["override_guard"] = True
                if asked is not None:
                    entry["requested_by"] = asked.requested_by
                await self._record("directory.sync", entry)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(exc)
            raise
        return report

    def _next_run_ms(self) -> int:
        return now_ms() + int(self._config.sync_interval_s * 1000)

    async def _failed(self, exc: Exception) -> None:
        """Log and record a run that changed nothing: stopped by the guard, or failed."""
        stop = exc.stop if isinstance(exc, MassRemoval) else None
        outcome = "stopped" if stop is not None else "failed"
        self.last_result = f"{outcome}: {exc}"
        if isinstance(exc, MassRemoval | DirectoryUnavailable):
            log.warning("directory sync %s", self.last_result)
        else:
            log.error("directory sync %s", self.last_result)
        try:
            await store.record_result(
                self._db,
                self._holder,
                self.last_result,
                outcome=outcome,
                guard=stop,
                next_run_ms=self._next_run_ms(),
            )
            if stop is not None:
                await self._record("directory.sync.stopped", {"reason": str(exc)})
        except Exception as again:  # the store itself failed
            log.warning("directory sync: recording the outcome failed: %s", again)

    # -- one run ------------------------------------------------------------------------------

    def _guard(
        self, snapshot: Snapshot, users: dict[str, store.StoredUser], groups: set[str]
    ) -> None:
        share = self._config.max_removal_share
        present = {u.external_id for u in snapshot.users if not u.disabled}
        enabled = [u for u in users.values() if not u.disabled]
        leaving = [u for u in enabled if u.external_id not in present]
        if enabled and len(leaving) / len(enabled) > share:
            raise MassRemoval(
                f"it would disable or remove {len(leaving)} of {len(enabled)} directory users"
                f" (more than directory.max_removal_share = {share}); check the user filter,"
                " or run the sync once overriding the guard",
                store.GuardStop("users", len(leaving), len(enabled), share),
            )
        gone = groups - {g.external_id for g in snapshot.groups}
        if groups and len(gone) / len(groups) > share:
            raise MassRemoval(
                f"it would remove {len(gone)} of {len(groups)} directory groups (more than"
                f" directory.max_removal_share = {share}); check the group filter, or run the"
                " sync once overriding the guard",
                store.GuardStop("groups", len(gone), len(groups), share),
            )

    async def _apply(self, snapshot: Snapshot, force: bool) -> Report:
        db = self._db
        report = Report(users_seen=len(snapshot.users), groups_seen=len(snapshot.groups))
        stored = await store.directory_users(db)
        stored_groups = await store.directory_groups(db)
        if not force:
            self._guard(snapshot, stored, set(stored_groups))
        ids: dict[str, int] = {}
        for u in snapshot.users:
            old = stored.get(u.external_id)
            same = old is not None and (old.name, old.display_name, old.email, old.disabled) == (
                u.login,
                u.display_name,
                u.email,
                u.disabled,
            )
            if same and old is not None:
                ids[u.external_id] = old.id
                continue
            try:
                uid, created = await store.put_user(
                    db, u.external_id, u.login, u.display_name, u.email, u.disabled
                )
            except UserExists:
                report.conflicts.append(f"user {u.login}")
                continue
            ids[u.external_id] = uid
            if created:
                report.users_created += 1
            elif old is not None and u.disabled and not old.disabled:
                report.users_disabled.append(uid)
            elif old is not None and old.disabled and not u.disabled:
                report.users_enabled += 1
            else:
                report.users_updated += 1
        present = {u.external_id for u in snapshot.users}
        removed = [u.id for u in stored.values() if u.external_id not in present and not u.disabled]
        await set_disabled(db, removed, True)
        report.users_disabled.extend(removed)
        report.users_removed = len(removed)
        groups_removed = await self._apply_groups(snapshot, stored_groups, ids, report)
        for uid in report.users_disabled:
            await self._disable(uid)
        if report.groups_created or report.groups_removed or report.memberships_changed:
            await self._membership_changed(groups_removed)
        return report

    async def _apply_groups(
        self,
        snapshot: Snapshot,
        stored: dict[str, store.StoredGroup],
        ids: dict[str, int],
        report: Report,
    ) -> bool:
        db = self._db
        group_ids: dict[str, int] = {}
        for g in snapshot.groups:
            old = stored.get(g.external_id)
            if old is None:
                try:
                    created = await principal_store.create_group(
                        db, g.name, "", source=store.DIRECTORY, external_id=g.external_id
                    )
                except principal_store.GroupExists:
                    report.conflicts.append(f"group {g.name}")
                    continue
                group_ids[g.external_id] = created.id
                report.groups_created += 1
                continue
            group_ids[g.external_id] = old.id
            if old.name != g.name and not await store.rename_group(db, old.id, g.name):
                report.conflicts.append(f"group {g.name}")
        current = await store.user_members(db)
        for g in snapshot.groups:
            gid = group_ids.get(g.external_id)
            if gid is None:
                continue
            want = {ids[x] for x in g.users if x in ids}
            have = current.get(gid, set())
            add = [principal("user", u) for u in sorted(want - have)]
            remove = [principal("user", u) for u in sorted(have - want)]
            if add:
                await principal_store.add_group_members(db, gid, add)
            if remove:
                await principal_store.remove_group_members(db, gid, remove)
            report.memberships_changed += len(add) + len(remove)
        present = {g.external_id for g in snapshot.groups}
        for old in stored.values():
            if old.external_id not in present and await principal_store.delete_group(db, old.id):
                report.groups_removed += 1
        return report.groups_removed > 0
