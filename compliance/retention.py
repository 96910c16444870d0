"""``chatserver compliance purge``: the compliance archive's own retention, subject to holds.

Events older than ``retention.compliance_days`` (0: keep everything, the default) lose their
content: the payload becomes ``{"pruned": true}`` (with the message's ``seq`` when it had one,
so ``verify``'s completeness check still finds every message's CHAT event). The row, its
``seq``, ``hash`` and ``prev_hash`` stay, so the chain still proves that no event was deleted
and that every other event is unchanged; ``verify`` accepts a pruned row only when it is older
than the cutoff recorded by the purge (meta ``pruned_before_ms``): a row emptied any other way
breaks the chain. Never pruned: an event a legal hold covers (its room or its user, within the
hold's dates: the holds are read from the content store), and an event no adapter has
exported yet (it would never reach the archive's output).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update

from chatserver.store import holds as hold_store
from chatserver.store.db import Database

from .schema import cursors, events, meta

DAY_MS = 86_400_000
PRUNED_KEY = "pruned_before_ms"


def pruned_payload(payload: str) -> str:
    try:
        seq = json.loads(payload).get("seq")
    except (ValueError, AttributeError):
        seq = None
    out: dict[str, object] = {"pruned": True}
    if isinstance(seq, int):
        out["seq"] = seq
    return json.dumps(out, separators=(",", ":"), sort_keys=True)


def is_pruned(payload: str) -> bool:
    return payload.startswith('{"pruned":true')


@dataclass
class PurgeReport:
    cutoff_ms: int
    pruned: int = 0
    held: int = 0
    unexported: int = 0


async def pruned_before(comp: Database) -> int:
    async with comp.read() as conn:
        value = await conn.scalar(select(meta.c.value).where(meta.c.key == PRUNED_KEY))
    return int(value) if value is not None else 0


async def purge(
    comp: Database, content: Database, days: int, now_ms: int, batch: int = 1000
) -> PurgeReport:
    """Prune every event older than ``days`` days that no hold covers and every adapter has
    exported, ``batch`` events per transaction."""
    report = PurgeReport(now_ms - days * DAY_MS)
    if days <= 0:
        return report
    async with content.read() as conn:
        active = await hold_store.active(conn)
    async with comp.read() as conn:
        exported = await conn.scalar(select(func.min(cursors.c.last_seq))) or 0
    last = 0
    while True:
        async with comp.write() as conn:
            # The cutoff first: a row pruned and committed is always below the recorded cutoff.
            found = await conn.scalar(select(meta.c.value).where(meta.c.key == PRUNED_KEY))
            if found is None:
                await conn.execute(insert(meta).values(key=PRUNED_KEY, value=str(report.cutoff_ms)))
            elif int(found) < report.cutoff_ms:
                await conn.execute(
                    update(meta).where(meta.c.key == PRUNED_KEY).values(value=str(report.cutoff_ms))
                )
            rows = list(
                await conn.execute(
                    select(
                        events.c.seq,
                        events.c.room_id,
                        events.c.user_id,
                        events.c.ts_ms,
                        events.c.payload,
                    )
                    .where(events.c.seq > last, events.c.ts_ms < report.cutoff_ms)
                    .order_by(events.c.seq)
                    .limit(batch)
                )
            )
            for row in rows:
                last = row.seq
                if is_pruned(row.payload):
                    continue
                if row.seq > exported:
                    report.unexported += 1
                    continue
                if hold_store.covering(active, row.room_id or -1, row.user_id or -1, row.ts_ms):
                    report.held += 1
                    continue
                await conn.execute(
                    update(events)
                    .where(events.c.seq == row.seq)
                    .values(payload=pruned_payload(row.payload))
                )
                report.pruned += 1
        if len(rows) < batch:
            return report
