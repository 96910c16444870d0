"""``chatserver user list|show|passwd|disable|enable|delete``: users, straight in the store.

Like ``chatserver user add`` these work on the configured store without a running node (for the
first administrator, or a lost administrator password); ``chatserver admin users …`` does the
same through a node's management port. Each change is in the audit log as ``cli:<os user>``.
A node ends the live sessions of a user disabled here when it next checks their token (a
reconnection, or a pool link restored): to close them at once, use ``chatserver admin users
disconnect``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from .cli_common import cli_actor
from .cli_common import fail as _fail

WithStore = Callable[[argparse.Namespace, Callable[[Any, Any], Awaitable[None]]], None]
ReadPassword = Callable[[argparse.Namespace], str]


def _row(user: Any) -> dict[str, Any]:
    return {
        "id": user.id,
        "name": user.name,
        "display_name": user.display_name,
        "is_admin": user.is_admin,
        "source": user.source,
        "disabled": user.disabled,
    }


def _print(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return
    columns = ["id", "name", "display_name", "is_admin", "source", "disabled"]
    print("\t".join(columns))
    for row in rows:
        print("\t".join(str(row[c]) for c in columns))


async def _user(db: Any, user_id: int) -> Any:
    from .store import users as user_store

    user = await user_store.get_user(db, user_id)
    if user is None:
        _fail(f"no user {user_id}", 1)
    return user


def register(
    user: Any, common: argparse.ArgumentParser, with_store: WithStore, read_password: ReadPassword
) -> None:
    """Add the subcommands to ``chatserver user``'s subparsers."""

    def cmd_list(args: argparse.Namespace) -> None:
        async def body(config: Any, db: Any) -> None:
            from .store import users as user_store

            found = await user_store.list_users(db, args.query, limit=args.limit)
            _print([_row(u) for u in found], args.json)

        with_store(args, body)

    def cmd_show(args: argparse.Namespace) -> None:
        async def body(config: Any, db: Any) -> None:
            _print([_row(await _user(db, args.id))], args.json)

        with_store(args, body)

    def cmd_passwd(args: argparse.Namespace) -> None:
        from .accounts import _check, _local_password
        from .password_policy import PasswordPolicy
        from .protocol.errors import ChatError

        policy = PasswordPolicy(_config_of(args).passwords)
        password = policy.generate() if args.generate else read_password(args)

        async def body(config: Any, db: Any) -> None:
            from .passwords import hash_password
            from .rooms.audit import Audit
            from .store import users as user_store

            user = await _user(db, args.id)
            try:
                _local_password(user)
                _check(policy, password, user.name)
            except ChatError as exc:
                _fail(exc.message, 1)
            await user_store.replace_password(db, user.id, hash_password(password), keep=None)
            await Audit(db).record(cli_actor(), "user.password_reset", f"user:{user.id}", None, {})
            if args.generate:
                print(f"chatserver: new password for {user.name!r}: {password}  (shown only once)")
            else:
                print(f"chatserver: password of {user.name!r} replaced; their tokens revoked")

        with_store(args, body)

    def switch(disabled: bool) -> Callable[[argparse.Namespace], None]:
        def cmd(args: argparse.Namespace) -> None:
            async def body(config: Any, db: Any) -> None:
                from .rooms.audit import Audit, user_state
                from .store import users as user_store

                user = await _user(db, args.id)
                await user_store.set_disabled(db, [user.id], disabled)
                if disabled:
                    await user_store.revoke_user_tokens(db, user.id)
                action = "user.disable" if disabled else "user.enable"
                await Audit(db).record(
                    cli_actor(),
                    action,
                    f"user:{user.id}",
                    {**user_state(user), "disabled": user.disabled},
                    {**user_state(user), "disabled": disabled},
                )
                print(f"chatserver: {user.name!r} {'disabled' if disabled else 'enabled'}")

            with_store(args, body)

        return cmd

    def cmd_delete(args: argparse.Namespace) -> None:
        async def body(config: Any, db: Any) -> None:
            from .rooms.audit import Audit, user_state
            from .store import users as user_store

            user = await _user(db, args.id)
            if user.is_admin and await user_store.count_admins(db) <= 1:
                _fail("that is the last administrator", 1)
            try:
                await user_store.delete_user(db, user.id)
            except user_store.UserInUse:
                _fail(f"{user.name!r} has messages or files: disable them instead", 1)
            await Audit(db).record(
                cli_actor(), "user.delete", f"user:{user.id}", user_state(user), None
            )
            print(f"chatserver: deleted {user.name!r} (id {user.id})")

        with_store(args, body)

    listing = user.add_parser("list", parents=[common], help="list users")
    listing.add_argument("query", nargs="?", help="names containing this")
    listing.add_argument("--limit", type=int, default=1000)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list)
    show = user.add_parser("show", parents=[common], help="show a user")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)
    passwd = user.add_parser(
        "passwd", parents=[common], help="reset a user's password (revokes their tokens)"
    )
    passwd.add_argument("id", type=int)
    passwd.add_argument("--password-stdin", action="store_true")
    passwd.add_argument(
        "--generate", action="store_true", help="make a random password and print it once"
    )
    passwd.set_defaults(func=cmd_passwd)
    for name, disabled, text in (
        ("disable", True, "refuse the user's sign-ins and revoke their tokens"),
        ("enable", False, "let a disabled user sign in again"),
    ):
        parser = user.add_parser(name, parents=[common], help=text)
        parser.add_argument("id", type=int)
        parser.set_defaults(func=switch(disabled))
    delete = user.add_parser(
        "delete", parents=[common], help="delete a user who never posted (else: disable)"
    )
    delete.add_argument("id", type=int)
    delete.set_defaults(func=cmd_delete)


def _config_of(args: argparse.Namespace) -> Any:
    from .cli_common import config_of

    return config_of(args)
