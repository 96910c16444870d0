"""``chatserver admin retention …``, ``holds …`` and ``edit-policy …``: retention policies, the
purge preview and run, legal holds, and users' edit policy (the routes of
:mod:`chatserver.admin.handlers.retention` and :mod:`~chatserver.admin.handlers.lifecycle`)."""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from .client import Api
from .command import Command, arg, flags

WHEN = "ISO 8601 date or date-time (UTC), or epoch ms"


def _when(text: str | None) -> int | str | None:
    if text is None:
        return None
    return int(text) if text.isdigit() else text


def _policy(a: Namespace, api: Api) -> dict[str, Any]:
    body: dict[str, Any] = {"days": a.days, "enabled": not a.disabled}
    if a.files_days is not None:
        body["files_days"] = a.files_days
    return body


POLICY_ARGS = (
    arg("--days", type=int, required=True, help="keep messages this many days"),
    arg("--files-days", type=int, help="keep files this many days (default: --days)"),
    arg("--disabled", action="store_true", help="set it but do not purge yet (preview only)"),
)


def _preview(a: Namespace, api: Api) -> dict[str, Any]:
    if a.scope is None:
        return {}
    candidate = {"scope": a.scope, "scope_id": a.scope_id or 0, "days": a.days}
    if a.files_days is not None:
        candidate["files_days"] = a.files_days
    return {"candidate": candidate}


def _preview_out(a: Namespace, result: Any) -> Any:
    if a.json:
        return result
    print(f"{result['messages']} message(s) and {result['files']} file(s) would be purged")
    return result["rooms"]


def _hold(a: Namespace, api: Api) -> dict[str, Any]:
    body: dict[str, Any] = {"name": a.name, "users": a.user or [], "rooms": a.room or []}
    for key in ("since", "until"):
        value = _when(getattr(a, key))
        if value is not None:
            body[key] = value
    return body


COMMANDS = [
    Command(
        "retention",
        "list",
        "list retention policies",
        "GET /api/v1/retention",
        columns=["scope", "scope_id", "days", "files_days", "enabled"],
        output=lambda a, result: result if a.json else result["policies"],
    ),
    Command(
        "retention",
        "set-deployment",
        "keep the deployment's messages N days",
        "PUT /api/v1/retention/deployment",
        body=_policy,
        arguments=POLICY_ARGS,
    ),
    Command(
        "retention",
        "set-category",
        "keep a category's messages N days",
        "PUT /api/v1/retention/categories/{category_id}",
        body=_policy,
        arguments=POLICY_ARGS,
    ),
    Command(
        "retention",
        "set-room",
        "keep a room's messages N days",
        "PUT /api/v1/retention/rooms/{room_id}",
        body=_policy,
        arguments=POLICY_ARGS,
    ),
    Command(
        "retention",
        "unset-deployment",
        "remove the deployment's policy",
        "DELETE /api/v1/retention/deployment",
    ),
    Command(
        "retention",
        "unset-category",
        "remove a category's policy",
        "DELETE /api/v1/retention/categories/{category_id}",
    ),
    Command(
        "retention",
        "unset-room",
        "remove a room's policy",
        "DELETE /api/v1/retention/rooms/{room_id}",
    ),
    Command(
        "retention",
        "preview",
        "what the policies (and a candidate) would purge now",
        "POST /api/v1/retention/preview",
        body=_preview,
        arguments=(
            arg("--scope", choices=["deployment", "category", "room"]),
            arg("--scope-id", type=int),
            arg("--days", type=int),
            arg("--files-days", type=int),
        ),
        columns=["room", "scope", "days", "messages", "files", "oldest_ms", "newest_ms"],
        output=_preview_out,
    ),
    Command("retention", "run", "run the purge now", "POST /api/v1/retention/run"),
    Command(
        "holds",
        "list",
        "list legal holds",
        "GET /api/v1/holds",
        columns=["id", "name", "users", "rooms", "since_ms", "until_ms", "lifted_ms"],
        output=lambda a, result: result if a.json else result["holds"],
    ),
    Command(
        "holds",
        "place",
        "place a legal hold on users and/or rooms",
        "POST /api/v1/holds",
        body=_hold,
        arguments=(
            arg("--name", required=True),
            arg("--user", type=int, action="append", help="a user id; repeat for several"),
            arg("--room", type=int, action="append", help="a room id; repeat for several"),
            arg("--since", help=WHEN),
            arg("--until", help=WHEN),
        ),
    ),
    Command("holds", "lift", "lift a legal hold", "POST /api/v1/holds/{hold_id}/lift"),
    Command(
        "holds",
        "messages",
        "the content a hold covers, with replaced versions",
        "GET /api/v1/holds/{hold_id}/messages",
        query=lambda a: flags(a, ["limit"]),
        arguments=(arg("--limit", type=int),),
        output=lambda a, result: result if a.json else result["messages"],
        columns=["room", "seq", "sender", "ts", "state", "text"],
    ),
    Command(
        "edit-policy",
        "room",
        "whether senders may edit/delete in a room: never, always, minutes, or inherit",
        "PUT /api/v1/rooms/{room_id}/edit-policy",
        body=lambda a, api: {"policy": None if a.policy == "inherit" else a.policy},
        arguments=(arg("policy"),),
    ),
    Command(
        "edit-policy",
        "category",
        "whether senders may edit/delete in a category: never, always, minutes, or inherit",
        "PUT /api/v1/categories/{category_id}/edit-policy",
        body=lambda a, api: {"policy": None if a.policy == "inherit" else a.policy},
        arguments=(arg("policy"),),
    ),
]

RESOURCES = {
    "retention": "retention policies, the purge preview and run",
    "holds": "legal holds on users and rooms",
    "edit-policy": "whether users may edit and delete their messages",
}
