"""``chatserver compliance verify``: prove the compliance archive intact and complete.

1. **Chain.** Walk the stored events in ``seq`` order: ``seq`` must run 1, 2, 3, … without a
   gap, each row's ``prev_hash`` must equal the previous row's ``hash``, each ``hash`` must equal
   the hash recomputed from the row's fields, and the chain head must equal the last row. The
   first row that fails is reported: any change, insertion or deletion of a stored event breaks
   the chain there (or at the head, for the last rows).
2. **Completeness.** Every message in the content store (since capture began: the earliest
   captured event, or ``--since``) must have its ``CHAT`` event in the compliance database or
   still in the outbox; every outbox event is counted as pending (and those already stored, which
   a writer will delete, as such).
3. **Checkpoint** (``--checkpoint FILE``, see :mod:`compliance.checkpoint`). The latest signed
   checkpoint given (highest ``seq`` whose signature holds) must still be in the chain: its event
   must be there with the same hash. Events deleted at the end *and* a rewound chain head pass
   step 1; here they are reported exactly: "events N+1..M (K events) missing after the
   archive's end at N; the checkpoint signed at T names seq M".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from chatserver.store.db import Database
from chatserver.store.schema import compliance_outbox, messages

from . import retention
from .checkpoint import Checkpoint
from .schema import GENESIS, chain, event_hash, events

PAGE = 5000


@dataclass(slots=True)
class Report:
    events: int = 0
    broken: dict[str, Any] | None = None  # the first broken link
    since_ms: int | None = None
    messages_checked: int = 0
    missing: list[tuple[int, int]] = field(default_factory=list)  # (room, seq), the first 100
    missing_count: int = 0
    outbox_pending: int = 0
    outbox_already_stored: int = 0
    checkpoint: Checkpoint | None = None  # the latest checkpoint checked against
    checkpoint_problem: str | None = None
    # Events the checkpoint proves existed but the archive no longer has: (first, last) seq.
    missing_after: tuple[int, int] | None = None
    last_seq: int = 0  # the last event of the intact chain
    hash_at: dict[int, str] = field(default_factory=dict)  # the seqs asked for by checkpoints

    @property
    def ok(self) -> bool:
        return self.broken is None and self.missing_count == 0 and self.checkpoint_problem is None

    def lines(self) -> list[str]:
        out = [f"chain: {self.events} events"]
        if self.broken is None:
            out.append("chain: intact")
        else:
            b = self.broken
            out.append(
                f"chain: BROKEN at seq {b['seq']} (event {b.get('event_id')}): {b['problem']}"
            )
        out.append(
            f"completeness: {self.messages_checked} stored messages since"
            f" {self.since_ms} checked, {self.missing_count} missing"
        )
        for room, seq in self.missing[:20]:
            out.append(f"completeness: MISSING message room {room} seq {seq}")
        out.append(
            f"outbox: {self.outbox_pending} events pending"
            f" ({self.outbox_already_stored} already stored, awaiting deletion)"
        )
        cp = self.checkpoint
        if cp is not None:
            out.append(
                f"checkpoint: seq {cp.seq} hash {cp.hash[:16]}… signed {cp.signed_ms}"
                f" by key {cp.key_id}"
            )
            out.append(
                "checkpoint: OK"
                if self.checkpoint_problem is None
                else f"checkpoint: FAILED: {self.checkpoint_problem}"
            )
        elif self.checkpoint_problem is not None:
            out.append(f"checkpoint: FAILED: {self.checkpoint_problem}")
        out.append("result: OK" if self.ok else "result: FAILED")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "broken": self.broken,
            "since_ms": self.since_ms,
            "messages_checked": self.messages_checked,
            "missing_count": self.missing_count,
            "missing": [list(m) for m in self.missing],
            "outbox_pending": self.outbox_pending,
            "outbox_already_stored": self.outbox_already_stored,
            "checkpoint": None
            if self.checkpoint is None
            else {
                "seq": self.checkpoint.seq,
                "hash": self.checkpoint.hash,
                "signed_ms": self.checkpoint.signed_ms,
                "key_id": self.checkpoint.key_id,
            },
            "checkpoint_problem": self.checkpoint_problem,
            "missing_after_checkpoint": None
            if self.missing_after is None
            else list(self.missing_after),
        }


async def check_chain(comp: Database, report: Report) -> None:
    prev_seq, prev_hash = 0, GENESIS
    # Rows the archive's retention emptied (compliance/retention.py) keep their links; their
    # content is gone, so only rows older than the purge's recorded cutoff may be so.
    pruned_before = await retention.pruned_before(comp)
    async with comp.read() as conn:
        while report.broken is None:
            page = list(
                await conn.execute(
                    select(events).where(events.c.seq > prev_seq).order_by(events.c.seq).limit(PAGE)
                )
            )
            for row in page:
                problem = None
                if row.seq != prev_seq + 1:
                    problem = f"seq follows {prev_seq}: events {prev_seq + 1}..{row.seq - 1} gone"
                elif row.prev_hash != prev_hash:
                    problem = "prev_hash does not match the previous event's hash"
                elif row.hash != event_hash(row, row.prev_hash) and not (
                    retention.is_pruned(row.payload) and row.ts_ms < pruned_before
                ):
                    problem = "the event's fields do not match its hash (the row was changed)"
                if problem is not None:
                    report.broken = {"seq": row.seq, "event_id": row.event_id, "problem": problem}
                    return
                prev_seq, prev_hash = row.seq, row.hash
                report.events += 1
                report.last_seq = prev_seq
                if prev_seq in report.hash_at:
                    report.hash_at[prev_seq] = prev_hash
            if len(page) < PAGE:
                break
        head = (await conn.execute(select(chain).where(chain.c.id == 1))).one()
        if head.head_seq != prev_seq or head.head_hash != prev_hash:
            report.broken = {
                "seq": prev_seq + 1,
                "event_id": None,
                "problem": f"the chain head is seq {head.head_seq} but the events end at"
                f" {prev_seq} (events after it were deleted, or the head was changed)",
            }


async def check_completeness(
    comp: Database, content: Database, report: Report, since_ms: int | None
) -> None:
    captured: dict[int, set[int]] = {}

    def note(room_id: int | None, payload: str) -> None:
        try:
            seq = json.loads(payload).get("seq")
        except (ValueError, AttributeError):
            return
        if room_id is not None and isinstance(seq, int):
            captured.setdefault(room_id, set()).add(seq)

    async with comp.read() as conn:
        first = (await conn.execute(select(func.min(events.c.ts_ms)))).scalar_one_or_none()
        stored_ids: set[str] = set()
        result = await conn.stream(
            select(events.c.room_id, events.c.payload).where(events.c.kind == "CHAT")
        )
        async for row in result:
            note(row.room_id, row.payload)
    async with content.read() as conn:
        pending = list(
            await conn.execute(
                select(
                    compliance_outbox.c.event_id,
                    compliance_outbox.c.kind,
                    compliance_outbox.c.room_id,
                    compliance_outbox.c.payload,
                    compliance_outbox.c.ts_ms,
                )
            )
        )
    report.outbox_pending = len(pending)
    for waiting in pending:
        if waiting.kind == "CHAT":
            note(waiting.room_id, waiting.payload)
        first = waiting.ts_ms if first is None else min(first, waiting.ts_ms)
    if pending:
        ids = [r.event_id for r in pending]
        async with comp.read() as conn:
            for start in range(0, len(ids), 1000):
                found = await conn.execute(
                    select(events.c.event_id).where(
                        events.c.event_id.in_(ids[start : start + 1000])
                    )
                )
                stored_ids.update(r.event_id for r in found)
        report.outbox_already_stored = len(stored_ids)
    since = since_ms if since_ms is not None else first
    report.since_ms = since
    if since is None:
        return  # nothing was ever captured: no message is expected to be
    async with content.read() as conn:
        result = await conn.stream(
            select(messages.c.room_id, messages.c.seq)
            .where(messages.c.ts >= since)
            .order_by(messages.c.room_id, messages.c.seq)
        )
        async for row in result:
            report.messages_checked += 1
            if row.seq not in captured.get(row.room_id, ()):
                report.missing_count += 1
                if len(report.missing) < 100:
                    report.missing.append((row.room_id, row.seq))


def check_checkpoint(report: Report, checkpoint: Checkpoint) -> None:
    """Compare the walked chain with a (signature-checked) checkpoint."""
    report.checkpoint = checkpoint
    if checkpoint.seq == 0 and checkpoint.hash == GENESIS:
        return  # a checkpoint of the empty archive
    found = report.hash_at.get(checkpoint.seq) or None
    if found == checkpoint.hash:
        return
    if found is not None:
        report.checkpoint_problem = (
            f"event {checkpoint.seq} has hash {found[:16]}…, the checkpoint names"
            f" {checkpoint.hash[:16]}…: the chain up to it was rewritten"
        )
        return
    if report.broken is not None and report.last_seq < checkpoint.seq:
        report.checkpoint_problem = (
            f"the chain breaks at seq {report.broken['seq']}, before the checkpoint's seq"
            f" {checkpoint.seq}: it cannot be confirmed"
        )
        return
    first, last = report.last_seq + 1, checkpoint.seq
    report.missing_after = (first, last)
    report.checkpoint_problem = (
        f"events {first}..{last} ({last - first + 1} events) missing after the archive's end at"
        f" seq {report.last_seq}; the checkpoint signed at {checkpoint.signed_ms} names seq"
        f" {checkpoint.seq} (event {checkpoint.event_id}, captured at {checkpoint.ts_ms})"
    )


async def verify(
    comp: Database,
    content: Database,
    *,
    since_ms: int | None = None,
    checkpoint: Checkpoint | None = None,
) -> Report:
    """Check the chain, completeness, and (given a signature-checked ``checkpoint``) that the
    archive still reaches it."""
    report = Report()
    if checkpoint is not None:
        report.hash_at[checkpoint.seq] = ""
    await check_chain(comp, report)
    if checkpoint is not None:
        check_checkpoint(report, checkpoint)
    await check_completeness(comp, content, report, since_ms)
    return report
