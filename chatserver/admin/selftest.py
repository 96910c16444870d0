"""``chatserver selftest``: a synthetic transaction against a running node, step by step.

Like the reference system's synthetic message test: two test users (``selftest-1`` and
``selftest-2``, created in the store on first use with random passwords nobody knows) get
fresh session tokens from the store, connect to the node over the client protocol, join a room
(``selftest``, in General; created if missing), post one message each, see each other's message
live, and leave. Each step is timed; the command exits 1 at the first failed step.

What it makes is kept for the next run, and hidden: the room it creates is **secret**, with the
two users as its only members (nobody else finds it or reads it; administrators see it), and the
users' passwords are random and never shown. With compliance on, the run's events (JOIN, CHAT,
PART) are captured like any others and stay in the compliance archive.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from typing import Any

from sqlalchemy import select

from ..client import Client
from ..config import parse_address

USERS = ("selftest-1", "selftest-2")


async def _prepare(args: argparse.Namespace) -> tuple[list[str], int, tuple[str, int]]:
    """Tokens for the two users and the room id, straight from the store."""
    from ..accounts import add_user
    from ..cli_common import cli_actor, config_of
    from ..rooms.audit import Audit, room_state
    from ..store import rooms as room_store
    from ..store import users as user_store
    from ..store.db import Database
    from ..store.migrate import check_schema
    from ..store.principals import Principal
    from ..store.schema import rooms

    config = config_of(args)
    target = parse_address(args.tcp or config.listen.tcp)
    db = Database(config.database.url)
    audit = Audit(db)
    try:
        await check_schema(db)
        tokens = []
        test_users = []
        for name in USERS:
            found = await user_store.credentials(db, name)
            if found is None:
                user = await add_user(
                    db,
                    audit,
                    name,
                    secrets.token_urlsafe(24),
                    by=cli_actor(),
                    display_name=f"Self-test {name[-1]}",
                )
            else:
                user = found[0]
            test_users.append(user)
            tokens.append(await user_store.create_session(db, user.id, 600))
        async with db.read() as conn:
            # Room names may repeat (a secret room's name is no longer reserved): the oldest.
            room_id = (
                await conn.execute(
                    select(rooms.c.id)
                    .where(rooms.c.name == args.room)
                    .order_by(rooms.c.id)
                    .limit(1)
                )
            ).scalar_one_or_none()
        if room_id is None:
            room = await room_store.create_room(
                db,
                args.room,
                "Used by `chatserver selftest` (secret: only its two test users are members)",
                privacy="secret",
            )
            room_id = room.id
            members = [Principal("user", user.id) for user in test_users]
            await room_store.change_roles(db, room_id, {"member": members}, {})
            await audit.record(
                cli_actor(), "room.create", f"room:{room_id}", None, room_state(room)
            )
    finally:
        await db.close()
    return tokens, int(room_id), target


class Steps:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.failed = False

    async def step(self, name: str, work: Any) -> Any:
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(work, self.timeout)
        except Exception as exc:
            elapsed = (time.perf_counter() - started) * 1000
            reason = str(exc) or type(exc).__name__
            print(f"FAIL  {name:<44} {elapsed:8.1f} ms  {reason}", flush=True)
            self.failed = True
            raise
        elapsed = (time.perf_counter() - started) * 1000
        print(f"ok    {name:<44} {elapsed:8.1f} ms", flush=True)
        return result


async def _run(args: argparse.Namespace) -> int:
    steps = Steps(args.timeout)
    clients: list[Client] = []
    try:
        tokens, room, (host, port) = await steps.step(
            "prepare test users and room in the store", _prepare(args)
        )
        print(f"      node tcp://{host}:{port}/, room {args.room!r} (id {room})")
        for index, token in enumerate(tokens, 1):
            client = await steps.step(f"user {index}: connect", Client.connect_tcp(host, port))
            clients.append(client)
            await steps.step(f"user {index}: authenticate", client.resume(token))
        a, b = clients
        for index, client in enumerate(clients, 1):
            await steps.step(f"user {index}: join (with backchat)", client.call("join", room=room))
        cid = secrets.token_hex(8)
        for sender, receiver, n in ((a, b, 1), (b, a, 2)):
            text = f"selftest {cid} from user {n}"
            await steps.step(
                f"user {n}: post (acknowledged after commit)",
                sender.call("post", room=room, text=text, cid=f"{cid}-{n}"),
            )

            async def receive(client: Client = receiver, text: str = text) -> None:
                while True:
                    event = await client.next_event("message", timeout=args.timeout)
                    if event.get("text") == text:
                        return

            await steps.step(f"user {3 - n}: receive user {n}'s message live", receive())
        for index, client in enumerate(clients, 1):
            await steps.step(f"user {index}: leave", client.call("leave", room=room))
    except Exception:
        return 1
    finally:
        for client in clients:
            await client.close()
    print(
        f"      kept for the next run: room {args.room!r} (secret when the self-test created it)"
        f" and users {', '.join(USERS)}, hidden; with compliance on, this run's events are"
        " archived"
    )
    print("selftest passed")
    return 0


def run(args: argparse.Namespace) -> None:
    import uvloop

    code = uvloop.run(_run(args))
    sys.exit(code)
