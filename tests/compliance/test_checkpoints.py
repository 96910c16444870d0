"""Signed checkpoints (a rewound archive is caught) and the export's exactly-once output folder
(a pass killed with SIGKILL inside its window never shows a consumer a file twice or changed).

Both dialects; the commands run as real ``python -m compliance …`` processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from sqlalchemy import delete, select, update

from chatserver.config import Config
from compliance import checkpoint as checkpoints
from compliance.schema import chain, events
from tests.compliance import test_compliance
from tests.compliance.test_compliance import (
    Stores,
    comp_config,
    comp_env,
    compliance_cmd,
    exported_ids,
    post_some,
)
from tests.conftest import Harness, scaled, start_node

# The compliance fixtures, shared with the other compliance tests.
comp_cluster = test_compliance.comp_cluster
comp_url = test_compliance.comp_url
setup = test_compliance.setup


def with_key(config: Config, key: Path) -> Config:
    compliance = config.compliance.model_copy(update={"signing_key": str(key)})
    return config.model_copy(update={"compliance": compliance})


async def rewind(stores: Stores, keep: int) -> None:
    """What an attacker with write access does: delete every event after ``keep`` and set the
    chain head back to it, so the chain alone still looks whole."""
    async with stores.comp.write() as conn:
        kept = (await conn.execute(select(events).where(events.c.seq == keep))).one()
        await conn.execute(delete(events).where(events.c.seq > keep))
        await conn.execute(
            update(chain).where(chain.c.id == 1).values(head_seq=keep, head_hash=kept.hash)
        )


async def test_a_rewound_archive_passes_the_chain_but_not_the_checkpoint(
    setup: tuple[Harness, Stores], tmp_path: Path
) -> None:
    h, stores = setup
    room = await post_some(h, 4)
    client = await h.login("poster")
    await client.call("join", room=room)
    for _ in range(3):
        await client.call("history", room=room, limit=2)  # BACKCHAT events, not messages
    await stores.drain()
    head = len(await stores.events())
    key = tmp_path / "signing.pem"
    code, out = await compliance_cmd(stores.config, "keygen", "--out", str(key))
    assert code == 0, out
    assert key.stat().st_mode & 0o077 == 0
    code, out = await compliance_cmd(stores.config, "keygen", "--out", str(key))
    assert code == 2 and "not overwriting" in out  # a key is never replaced by accident
    config = with_key(stores.config, key)
    cp = tmp_path / "cp.json"
    code, out = await compliance_cmd(config, "checkpoint", "--out", str(cp))
    assert code == 0, out
    assert json.loads(cp.read_text())["seq"] == head
    code, out = await compliance_cmd(config, "verify", "--checkpoint", str(cp))
    assert code == 0 and "checkpoint: OK" in out, out

    await rewind(stores, head - 3)
    code, out = await compliance_cmd(stores.config, "verify")
    assert code == 0 and "chain: intact" in out, out  # the hole the checkpoint closes
    code, out = await compliance_cmd(
        stores.config, "verify", "--checkpoint", str(cp), "--public-key", f"{key}.pub", "--json"
    )
    assert code == 1, out
    report = json.loads(out)
    assert report["broken"] is None
    assert report["missing_after_checkpoint"] == [head - 2, head]
    assert report["checkpoint_problem"].startswith(
        f"events {head - 2}..{head} (3 events) missing after the archive's end at seq {head - 3}"
    )


async def test_a_forged_or_foreign_checkpoint_is_refused(
    setup: tuple[Harness, Stores], tmp_path: Path
) -> None:
    h, stores = setup
    await post_some(h, 2)
    await stores.drain()
    mine, theirs = tmp_path / "mine.pem", tmp_path / "theirs.pem"
    checkpoints.generate(mine)
    checkpoints.generate(theirs)
    config = with_key(stores.config, mine)
    signed = checkpoints.sign(checkpoints.load_private(mine), 99, "ab" * 32, None, None)
    forged = tmp_path / "forged.json"
    data = json.loads(signed.to_json()) | {"seq": 2}  # a checkpoint moved back to fit
    forged.write_text(json.dumps(data))
    code, out = await compliance_cmd(config, "verify", "--checkpoint", str(forged))
    assert code == 1 and "bad signature" in out, out
    foreign = tmp_path / "foreign.json"
    foreign.write_text(signed.to_json())
    code, out = await compliance_cmd(
        config, "verify", "--checkpoint", str(foreign), "--public-key", f"{theirs}.pub"
    )
    assert code == 1 and "not by the given key" in out, out
    huge = tmp_path / "huge.json"
    huge.write_text(" " * (checkpoints.MAX_FILE + 10))
    code, out = await compliance_cmd(config, "verify", "--checkpoint", str(huge))
    assert code == 1 and "larger than" in out, out


def folder(directory: Path) -> dict[str, bytes]:
    """What a consumer of the output folder sees: files under their final names."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if not p.name.startswith(".")}


async def export_killed_at(config: object, point: str) -> None:
    """Run ``compliance export`` until it reports it stopped at ``point``, then SIGKILL it."""
    env = comp_env(config)  # type: ignore[arg-type]
    env["CHATSERVER_TEST_EXPORT_STOP"] = point
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "compliance",
        "export",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), scaled(60))
    assert line.decode().strip() == f"STOPPED {point}", line
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()


async def test_an_export_killed_in_its_window_shows_each_event_once(
    db_url: str, comp_url: str, tmp_path: Path
) -> None:
    key = tmp_path / "k.pem"
    checkpoints.generate(key)
    config = comp_config(
        db_url, comp_url, tmp_path, signing_key=str(key), attachments_manifest=True
    )
    h = Harness(await start_node(config))
    stores = Stores(config)
    out = tmp_path / "out"
    seen: dict[str, bytes] = {}
    try:
        await stores.prepare()
        room = await post_some(h, 3)
        poster = await h.login("poster")
        for round_, point in enumerate(["before-commit", "before-rename", "before-commit"]):
            await poster.call("post", room=room, text=f"before {round_}", cid=f"b{round_}")
            await stores.drain()
            await export_killed_at(config, point)
            for name, data in folder(out).items():  # a consumer takes what it sees now
                assert seen.setdefault(name, data) == data, f"{name} changed"
            for i in range(4):  # more events before the next pass
                await poster.call(
                    "post", room=room, text=f"after {round_}.{i}", cid=f"a{round_}.{i}"
                )
            await stores.drain()
            code, text = await compliance_cmd(config, "export")
            assert code == 0, text
            now = folder(out)
            for name, data in seen.items():
                assert now.get(name) == data, f"{name} vanished or changed after {point}"
            seen.update(now)
        assert not [p for p in out.iterdir() if p.name.startswith(".")]
        ids = exported_ids(out)
        assert len(ids) == len(set(ids))
        assert set(ids) == {r.event_id for r in await stores.events()}
        # Every chunk carries the checkpoint it ends at, and the last one verifies the archive.
        marks = sorted(out.glob("chat-*.checkpoint.json"))
        assert len(marks) == len(list(out.glob("chat-*-????????????.xml")))
        code, text = await compliance_cmd(config, "verify", "--checkpoint", *map(str, marks[-1:]))
        assert code == 0 and "checkpoint: OK" in text, text
    finally:
        await h.close()
        await stores.close()
