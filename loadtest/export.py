"""Export / import round trip of a seeded deployment (issue 18's numbers).

    python -m loadtest.export [--messages 100000] [--rooms 50] [--files 200] [--file-kb 64]
                              [--target postgresql|sqlite]

1. Seeds a fresh SQLite store (``chatserver migrate``, then bulk inserts): users, a group, a
   category, an add-in, ``--rooms`` rooms with roles, ``--messages`` messages spread over them
   (client ids, some replaced or removed), and ``--files`` ready files of ``--file-kb`` KiB of
   random bytes, each with its message, in 64 KiB chunks.
2. ``chatserver export --files --with-password-hashes`` of it (export A),
3. ``chatserver import`` of A into a fresh ``--target`` store (a throwaway PostgreSQL cluster by
   default: the migration path),
4. ``chatserver export`` of the target (export B), and compares A and B.

**What is compared**: the decompressed JSON Lines of A and B, line by line, byte for byte — every
user (with its password hash), group, membership, add-in, category, principal, room, message
(room, seq, sender, client id, text, time, state), file (name, type, size, SHA-256, seq) and
chunk (the bytes, base64), and the end record's counts — except two things that name the store
rather than the content: the header line (the exporting deployment's UUID and the export time),
and the ``created_ms`` of the built-in category "General", which every store's first migration
makes and an import matches instead of copying. Any other difference is printed and fails.

Each command runs as its own process; its wall time and peak RSS (``ru_maxrss`` from
``wait4``) are printed.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, update

from chatserver.passwords import hash_password
from chatserver.store.migrate import upgrade
from chatserver.store.schema import (
    addins,
    categories,
    file_chunks,
    files,
    group_members,
    groups,
    messages,
    room_principals,
    rooms,
    users,
)
from chatserver.testing import PostgresCluster

ROOT = str(Path(__file__).resolve().parent.parent)
CHUNK = 64 * 1024


def seed(url: str, args: argparse.Namespace) -> None:
    upgrade(url)
    engine = create_engine(url.replace("sqlite:///", "sqlite:///", 1))
    rng = random.Random(18)
    now = 1_796_000_000_000
    hashed = hash_password("export-benchmark")
    with engine.begin() as conn:
        conn.execute(
            insert(users),
            [
                {
                    "name": f"user{i}",
                    "display_name": f"User {i}",
                    "password_hash": hashed,
                    "is_admin": i == 0,
                    "created_ms": now + i,
                    "persistent_chat_enabled": None,
                }
                for i in range(100)
            ],
        )
        conn.execute(insert(groups).values(name="desk", description="the desk", created_ms=now))
        conn.execute(
            insert(group_members),
            [{"group_id": 1, "member_kind": "user", "member_id": i} for i in range(1, 11)],
        )
        conn.execute(
            insert(addins).values(name="board", url="https://example.org/", created_ms=now)
        )
        conn.execute(
            insert(categories).values(
                name="Ops", description="", invitations=True, file_upload=True,
                chat_history=True, created_ms=now,
            )
        )  # fmt: skip
        conn.execute(
            insert(rooms),
            [
                {
                    "name": f"room-{r}",
                    "description": f"room {r}",
                    "last_seq": 0,
                    "created_ms": now + r,
                    "category_id": 1 + r % 2,
                    "privacy": ("open", "closed", "secret")[r % 3],
                    "type": "normal",
                    "disabled": False,
                    "invitations": "inherit",
                    "addin_id": 1 if r == 0 else None,
                }
                for r in range(args.rooms)
            ],
        )
        conn.execute(
            insert(room_principals),
            [
                {"room_id": r, "role": "member", "principal_kind": "group", "principal_id": 1}
                for r in range(1, args.rooms + 1)
            ],
        )
    seqs = [0] * (args.rooms + 1)
    file_at = set(rng.sample(range(args.messages), args.files))
    batch: list[dict[str, Any]] = []
    file_id = 0
    with engine.begin() as conn:
        for n in range(args.messages):
            room = 1 + n % args.rooms
            seqs[room] += 1
            sender = 1 + rng.randrange(100)
            state = "removed" if n % 997 == 0 else ("replaced" if n % 991 == 0 else "")
            if n in file_at:
                file_id += 1
                data = rng.randbytes(args.file_kb * 1024)
                conn.execute(
                    insert(files).values(
                        room_id=room, uploader_id=sender, name=f"file-{file_id}.bin",
                        media_type="application/octet-stream", size=len(data),
                        sha256=hashlib.sha256(data).hexdigest(), chunk_size=CHUNK,
                        created_ms=now + n, state="ready", node="seed", seq=seqs[room],
                    )
                )  # fmt: skip
                conn.execute(
                    insert(file_chunks),
                    [
                        {"file_id": file_id, "idx": i // CHUNK, "data": data[i : i + CHUNK]}
                        for i in range(0, len(data), CHUNK)
                    ],
                )
                cid, text = f"file:{file_id}", f"file {file_id}"
            else:
                cid, text = f"c-{n}", "" if state == "removed" else f"message {n} ✓ " * 4
            batch.append(
                {
                    "room_id": room,
                    "seq": seqs[room],
                    "sender_id": sender,
                    "cid": cid,
                    "text": text,
                    "ts": now + n * 10,
                    "state": state,
                }
            )
            if len(batch) == 5000:
                conn.execute(insert(messages), batch)
                batch = []
        if batch:
            conn.execute(insert(messages), batch)
        for room in range(1, args.rooms + 1):
            conn.execute(update(rooms).where(rooms.c.id == room).values(last_seq=seqs[room]))
    engine.dispose()


def run(*args: str) -> tuple[float, int, str]:
    """A ``chatserver`` command: (seconds, peak RSS in MiB, output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSERVER_")}
    env["PYTHONPATH"] = ROOT
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatserver", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"chatserver {' '.join(args)} failed:\n{out}")
    return took, usage.ru_maxrss // 1024, out


def compare(a: Path, b: Path) -> tuple[int, list[str]]:
    """(lines compared, differences) — see the module docstring for what is compared."""
    differences: list[str] = []
    lines = 0
    with gzip.open(a, "rb") as left, gzip.open(b, "rb") as right:
        left.readline(), right.readline()  # the headers
        for number, (x, y) in enumerate(zip(left, right, strict=False), start=2):
            lines += 1
            if x == y:
                continue
            rx, ry = json.loads(x), json.loads(y)
            if rx.get("t") == "category" and rx.get("name") == "General":
                rx.pop("created_ms"), ry.pop("created_ms")
                if rx == ry:
                    continue
            differences.append(f"line {number}: {x[:200]!r} != {y[:200]!r}")
        if left.readline() or right.readline():
            differences.append("the exports have different numbers of lines")
    return lines, differences


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.export")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--file-kb", type=int, default=64)
    parser.add_argument("--target", choices=["postgresql", "sqlite"], default="postgresql")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        work = Path(tmp)
        source = f"sqlite:///{work}/source.db"
        started = time.perf_counter()
        seed(source, args)
        print(f"seeded {args.messages} messages, {args.files} files of {args.file_kb} KiB in"
              f" {args.rooms} rooms: {time.perf_counter() - started:.1f} s")  # fmt: skip
        cluster = None
        try:
            if args.target == "postgresql":
                cluster = PostgresCluster().start()
                target = cluster.url()
                upgrade(target)
            else:
                target = f"sqlite:///{work}/target.db"
                upgrade(target)
            a, b = work / "a.jsonl.gz", work / "b.jsonl.gz"
            flags = ("--files", "--with-password-hashes")
            steps = [
                ("export A (SQLite)", ("export", "--database", source, "--out", str(a), *flags)),
                (f"import ({args.target})", ("import", str(a), "--database", target)),
                (
                    f"export B ({args.target})",
                    ("export", "--database", target, "--out", str(b), *flags),
                ),
            ]
            for name, command in steps:
                took, rss, _ = run(*command)
                print(f"{name}: {took:.1f} s, peak RSS {rss} MiB")
            print(f"export A: {a.stat().st_size / 1e6:.1f} MB, B: {b.stat().st_size / 1e6:.1f} MB")
            lines, differences = compare(a, b)
            for line in differences[:20]:
                print(line)
            print(f"compared {lines} lines: {len(differences)} differences")
            if differences:
                raise SystemExit(1)
        finally:
            if cluster is not None:
                cluster.stop()


if __name__ == "__main__":
    main()
