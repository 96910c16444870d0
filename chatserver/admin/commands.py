"""The ``chatserver admin`` commands, one per route of the management API.

``tests/admin/test_routes.py`` checks that every route the commands declare is in the route
table, and that every route of the table has a command.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Callable
from typing import Any

from ..cli_common import fail
from . import commands_directory as directory
from . import commands_lifecycle as lifecycle
from .client import Api
from .command import Command, arg, flags, lists, password, patch_lists, principals

WHEN = "ISO 8601 date or date-time (UTC), or epoch ms"
PRIVACY = ["open", "closed", "secret"]
ROOM_TYPES = ["normal", "auditorium"]
PASSWORD_STDIN = "read the password from the first line of standard input (for scripts)"
CATEGORY_LISTS = {"allow": "allowed", "deny": "denied", "creator": "creators"}
ROOM_LISTS = {"member": "member", "manager": "manager", "presenter": "presenter"}
CATEGORY_SWITCHES = ["invitations", "file_upload", "chat_history"]


def _when(text: str) -> int | str:
    return int(text) if text.isdigit() else text


# -- users, sessions, groups ----------------------------------------------------------------


def _new_user(a: Namespace, api: Api) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": a.name,
        "password": password(a, "password for the new user: "),
        "is_admin": a.admin,
    }
    if a.display_name:
        body["display_name"] = a.display_name
    return body


USERS = [
    Command(
        "users",
        "list",
        "list users",
        "GET /api/v1/users",
        query=lambda a: {"query": a.query, "limit": a.limit},
        arguments=(arg("--query", help="name contains"), arg("--limit", type=int, default=100)),
        columns=["id", "name", "display_name", "is_admin", "persistent_chat_enabled", "policy"],
    ),
    Command("users", "show", "show a user", "GET /api/v1/users/{user_id}"),
    Command(
        "users",
        "add",
        "add a user",
        "POST /api/v1/users",
        body=_new_user,
        arguments=(
            arg("name"),
            arg("--display-name"),
            arg("--admin", action="store_true"),
            arg("--password-stdin", action="store_true", help=PASSWORD_STDIN),
        ),
    ),
    Command(
        "users",
        "policy",
        "set persistent_chat_enabled: on, off or default",
        "PUT /api/v1/users/{user_id}/policy",
        body=lambda a, api: {
            "persistent_chat_enabled": {"on": True, "off": False, "default": None}[a.value]
        },
        arguments=(arg("value", choices=["on", "off", "default"]),),
    ),
    Command(
        "users",
        "password",
        "reset a user's password; revokes all their session tokens (their connections close)",
        "PUT /api/v1/users/{user_id}/password",
        body=lambda a, api: (
            {"generate": True} if a.generate else {"password": password(a, "new password: ")}
        ),
        arguments=(
            arg("--password-stdin", action="store_true", help=PASSWORD_STDIN),
            arg("--generate", action="store_true", help="make a random password and print it"),
        ),
    ),
    Command(
        "users",
        "disconnect",
        "close a user's connections and revoke their session tokens",
        "DELETE /api/v1/users/{user_id}/sessions",
    ),
    Command("sessions", "list", "users connected to the node behind --url", "GET /api/v1/sessions"),
    Command(
        "groups",
        "list",
        "list groups",
        "GET /api/v1/groups",
        columns=["id", "name", "description", "source"],
    ),
    Command(
        "groups",
        "add",
        "add a group",
        "POST /api/v1/groups",
        body=lambda a, api: {"name": a.name, "description": a.description},
        arguments=(arg("name"), arg("--description", default="")),
    ),
    Command("groups", "show", "show a group and its members", "GET /api/v1/groups/{group_id}"),
    Command("groups", "delete", "remove a group", "DELETE /api/v1/groups/{group_id}"),
    Command(
        "groups",
        "members",
        "add or remove members (user:ID|NAME, group:ID|NAME)",
        "PATCH /api/v1/groups/{group_id}/members",
        body=lambda a, api: {"add": principals(api, a.add), "remove": principals(api, a.remove)},
        arguments=(
            arg("--add", nargs="+", metavar="PRINCIPAL"),
            arg("--remove", nargs="+", metavar="PRINCIPAL"),
        ),
    ),
]

# -- categories and rooms -------------------------------------------------------------------

SWITCHES = tuple(
    a
    for name in CATEGORY_SWITCHES
    for a in (
        arg(f"--{name.replace('_', '-')}", dest=name, action="store_true", default=None),
        arg(f"--no-{name.replace('_', '-')}", dest=name, action="store_false"),
    )
)


def _new_category(a: Namespace, api: Api) -> dict[str, Any]:
    body = {"name": a.name, "description": a.description, **flags(a, CATEGORY_SWITCHES)}
    for option, field in CATEGORY_LISTS.items():
        body[field] = principals(api, getattr(a, option))
    return body


def _category_patch(a: Namespace, api: Api) -> dict[str, Any]:
    body = flags(a, ["name", "description", *CATEGORY_SWITCHES])
    body.update(patch_lists(api, a, CATEGORY_LISTS))
    return body


ROOM_FILTERS = [
    "category",
    "privacy",
    "type",
    "disabled",
    "member",
    "manager",
    "addin",
    "contains",
    "content_exceeds_mb",
    "limit",
]


def _new_room(a: Namespace, api: Api) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": a.name,
        "description": a.description,
        "category": a.category,
        "privacy": a.privacy,
        "type": a.type,
    }
    if a.addin is not None:
        body["addin"] = a.addin
    for option in ROOM_LISTS:
        body[option + "s"] = principals(api, getattr(a, option))
    return body


def _room_patch(a: Namespace, api: Api) -> dict[str, Any]:
    body = flags(a, ["name", "description", "category", "privacy", "type", "addin"])
    if a.detach_addin:
        body["detach_addin"] = True
    body.update(patch_lists(api, a, ROOM_LISTS))
    return body


CATEGORIES_AND_ROOMS = [
    Command(
        "categories",
        "list",
        "list categories",
        "GET /api/v1/categories",
        columns=["id", "name", *CATEGORY_SWITCHES, "allowed", "denied", "creators"],
    ),
    Command(
        "categories",
        "add",
        "add a category",
        "POST /api/v1/categories",
        body=_new_category,
        arguments=(
            arg("name"),
            arg("--description", default=""),
            *SWITCHES,
            *lists(CATEGORY_LISTS),
        ),
    ),
    Command(
        "categories",
        "update",
        "change a category (--allow / --unallow, --deny / --undeny, --creator / --uncreator)",
        "PATCH /api/v1/categories/{category_id}",
        body=_category_patch,
        arguments=(
            arg("--name"),
            arg("--description"),
            *SWITCHES,
            *lists(CATEGORY_LISTS, undo=True),
        ),
    ),
    Command("categories", "show", "show a category", "GET /api/v1/categories/{category_id}"),
    Command(
        "categories",
        "delete",
        "remove an empty category",
        "DELETE /api/v1/categories/{category_id}",
    ),
    Command(
        "categories",
        "eligible",
        "users the category allows",
        "GET /api/v1/categories/{category_id}/eligible",
    ),
    Command(
        "rooms",
        "list",
        "list rooms (filters combine)",
        "GET /api/v1/rooms",
        query=lambda a: flags(a, ROOM_FILTERS),
        arguments=(
            arg("--category", type=int),
            arg("--privacy", choices=PRIVACY),
            arg("--type", choices=ROOM_TYPES),
            arg("--disabled", action="store_true", default=None),
            arg("--member", metavar="user:ID|group:ID"),
            arg("--manager", metavar="user:ID|group:ID"),
            arg("--addin", type=int),
            arg("--contains", help="in the name or description"),
            arg("--content-exceeds-mb", type=float),
            arg("--limit", type=int, default=1000),
        ),
        columns=[
            "id",
            "name",
            "category",
            "privacy",
            "type",
            "disabled",
            "addin",
            "last_seq",
            "members",
            "managers",
        ],
        output=lambda a, result: result["rooms"],
    ),
    Command(
        "rooms",
        "add",
        "add a room",
        "POST /api/v1/rooms",
        body=_new_room,
        arguments=(
            arg("name"),
            arg("--description", default=""),
            arg("--category", type=int, default=1),
            arg("--privacy", choices=PRIVACY, default="closed"),
            arg("--type", choices=ROOM_TYPES, default="normal"),
            arg("--addin", type=int),
            *lists(ROOM_LISTS),
        ),
    ),
    Command(
        "rooms",
        "update",
        "change a room (--member / --unmember, --manager / --unmanager, …)",
        "PATCH /api/v1/rooms/{room_id}",
        body=_room_patch,
        arguments=(
            arg("--name"),
            arg("--description"),
            arg("--category", type=int, help="move the room to this category"),
            arg("--privacy", choices=PRIVACY),
            arg("--type", choices=ROOM_TYPES),
            arg("--addin", type=int),
            arg("--detach-addin", action="store_true"),
            *lists(ROOM_LISTS, undo=True),
        ),
    ),
    Command("rooms", "show", "show a room", "GET /api/v1/rooms/{room_id}"),
    Command("rooms", "disable", "disable a room", "POST /api/v1/rooms/{room_id}/disable"),
    Command("rooms", "enable", "enable a room", "POST /api/v1/rooms/{room_id}/enable"),
    Command("rooms", "delete", "delete a room and its history", "DELETE /api/v1/rooms/{room_id}"),
    Command(
        "rooms",
        "eligible",
        "users who may read the room",
        "GET /api/v1/rooms/{room_id}/eligible",
    ),
    Command(
        "rooms",
        "clear",
        "remove messages posted on or before --until",
        "POST /api/v1/rooms/{room_id}/clear",
        body=lambda a, api: {"until": _when(a.until)},
        arguments=(arg("--until", required=True, help=WHEN),),
    ),
]

# -- messages -------------------------------------------------------------------------------


def _selection(a: Namespace, api: Api) -> dict[str, Any]:
    body: dict[str, Any] = flags(a, ["room", "user", "since", "until", "match", "limit"])
    if a.keyword:
        body["keywords"] = a.keyword
    if a.case_sensitive:
        body["case_sensitive"] = True
    for key in ("since", "until"):
        if key in body:
            body[key] = _when(body[key])
    if getattr(a, "text", None):
        body["text"] = a.text
    return body


def _changed(a: Namespace, result: Any) -> Any:
    if a.json:
        return result
    print(f"{result['changed']} message(s) {a.verb}d")
    return result["messages"]


SELECTION = (
    arg("--room", type=int),
    arg("--user", type=int),
    arg("--since", help=WHEN),
    arg("--until", help=WHEN),
    arg("--keyword", action="append", help="repeat for several"),
    arg("--match", choices=["all", "any", "exact"]),
    arg("--case-sensitive", action="store_true"),
    arg("--limit", type=int),
)
MESSAGE_COLUMNS = ["room", "seq", "ts", "sender", "state", "text"]

MESSAGES = [
    Command(
        "messages",
        "search",
        "find messages",
        "POST /api/v1/messages/search",
        body=_selection,
        arguments=SELECTION,
        columns=MESSAGE_COLUMNS,
        output=lambda a, result: result if a.json else result["messages"],
    ),
    Command(
        "messages",
        "remove",
        "remove the selected messages",
        "POST /api/v1/messages/remove",
        body=_selection,
        arguments=SELECTION,
        columns=MESSAGE_COLUMNS,
        output=_changed,
    ),
    Command(
        "messages",
        "replace",
        "replace the text of the selected messages",
        "POST /api/v1/messages/replace",
        body=_selection,
        arguments=(
            *SELECTION,
            arg("--text", help="the substitute (default: the administrator notice)"),
        ),
        columns=MESSAGE_COLUMNS,
        output=_changed,
    ),
]

# -- add-ins, configuration, pool, audit, compliance ----------------------------------------


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        fail(f"{text!r}: give KEY=VALUE", 2)
    return key, int(value) if value.isdigit() else value


def _nodes(a: Namespace, result: Any) -> Any:
    return result["nodes"]


def _state_body(state: str) -> Callable[[Namespace, Any], dict[str, Any]]:
    def body(a: Namespace, api: Any) -> dict[str, Any]:
        return {"state": state, "promote": a.promote, "reason": a.reason}

    return body


SETTINGS_HELP = (
    "set KEY=VALUE… (default_chat_history, max_file_size_kb, participant_update_limit,"
    " room_management_url)"
)

OPERATIONS = [
    Command("addins", "list", "list add-ins", "GET /api/v1/addins"),
    Command("addins", "show", "show an add-in", "GET /api/v1/addins/{addin_id}"),
    Command(
        "addins",
        "add",
        "add an add-in",
        "POST /api/v1/addins",
        body=lambda a, api: {"name": a.name, "url": a.address},
        arguments=(arg("name"), arg("address", metavar="URL", help="http:// or https://")),
    ),
    Command(
        "addins",
        "update",
        "change an add-in",
        "PATCH /api/v1/addins/{addin_id}",
        body=lambda a, api: {**flags(a, ["name"]), **({"url": a.new_url} if a.new_url else {})},
        arguments=(arg("--name"), arg("--new-url", help="the add-in's new address")),
    ),
    Command(
        "addins", "delete", "remove an add-in no room uses", "DELETE /api/v1/addins/{addin_id}"
    ),
    Command("config", "show", "show the settings", "GET /api/v1/config"),
    Command(
        "config",
        "set",
        SETTINGS_HELP,
        "PATCH /api/v1/config",
        per_node="PATCH /api/v1/config/nodes/{node_name}",
        body=lambda a, api: dict(_setting(text) for text in a.settings),
        arguments=(arg("settings", nargs="+", metavar="KEY=VALUE"),),
    ),
    Command(
        "config",
        "unset",
        "clear overrides",
        "PATCH /api/v1/config",
        per_node="PATCH /api/v1/config/nodes/{node_name}",
        body=lambda a, api: dict.fromkeys(a.keys),
        arguments=(arg("keys", nargs="+", metavar="KEY"),),
    ),
    Command("pool", "show", "list the nodes and their state", "GET /api/v1/pool", output=_nodes),
    Command(
        "pool",
        "activate",
        "make exactly these nodes active (the other active nodes become standby)",
        "PUT /api/v1/pool/active",
        body=lambda a, api: {"nodes": a.nodes},
        arguments=(arg("nodes", nargs="+", metavar="NODE"),),
        output=_nodes,
    ),
    Command(
        "pool",
        "swap",
        "move an active node to standby and a standby node to active",
        "POST /api/v1/pool/swap",
        body=lambda a, api: {"active": a.active, "standby": a.standby},
        arguments=(arg("active"), arg("standby")),
        output=_nodes,
    ),
    Command(
        "pool",
        "drain",
        "tell a node's clients to move to the active nodes, then stop it",
        "POST /api/v1/pool/nodes/{node_name}/drain",
        output=_nodes,
    ),
    Command("pool", "state", "show the pool's store state", "GET /api/v1/pool/state"),
    *(
        Command(
            "pool",
            verb,
            help,
            "PUT /api/v1/pool/state",
            body=_state_body(state),
            arguments=(
                arg(
                    "--promote",
                    action="store_true",
                    help="promote the target store if it is still a standby",
                ),
                arg("--reason", default="", help="recorded with the state and audited"),
            ),
        )
        for verb, state, help in (
            ("failover", "failed_over", "fail the pool over onto database.backup_url"),
            ("failback", "normal", "bring the pool back onto database.url"),
        )
    ),
    Command(
        "audit",
        "list",
        "newest first",
        "GET /api/v1/audit",
        query=lambda a: flags(a, ["action", "actor", "target", "limit"]),
        arguments=(
            arg("--action"),
            arg("--actor"),
            arg("--target", help="e.g. room:12"),
            arg("--limit", type=int, default=50),
        ),
        columns=["id", "ts", "actor", "action", "target"],
    ),
    Command("compliance", "show", "show [compliance]", "GET /api/v1/compliance"),
]

# The resources in the order ``chatserver admin --help`` lists them, and what each is.
RESOURCES = {
    "users": "users, their policy and their connections",
    "sessions": "connected users",
    "groups": "groups and their members",
    "categories": "categories: allowed / denied / creators",
    "rooms": "rooms, their roles, and clearing their history",
    "messages": "find, remove or replace messages",
    "addins": "add-ins: web pages shown beside rooms",
    "config": "run-time settings (global, or per node)",
    "pool": "the nodes of the pool",
    "audit": "the audit log of administrators' changes",
    "compliance": "the compliance service's settings",
    "exports": "export to a file in [transfer] directory (docs/export-format.md)",
    "imports": "import a file of [transfer] directory",
    **lifecycle.RESOURCES,
    **directory.RESOURCES,
}

TRANSFER = [
    Command(
        "exports",
        "create",
        "export everything, a category or a room (optionally messages, files, password hashes)",
        "POST /api/v1/exports",
        body=lambda a, api: {
            "file": a.file,
            **flags(a, ["category", "room", "since", "until"]),
            "messages": not a.no_messages,
            "files": a.files,
            "password_hashes": a.with_password_hashes,
        },
        arguments=(
            arg("file", help="a plain file name in [transfer] directory"),
            arg("--category"),
            arg("--room", help="NAME, or #ID"),
            arg("--since", type=_when, help=WHEN),
            arg("--until", type=_when, help=WHEN),
            arg("--no-messages", action="store_true"),
            arg("--files", action="store_true"),
            arg("--with-password-hashes", action="store_true"),
        ),
    ),
    Command(
        "imports",
        "create",
        "import a file of [transfer] directory",
        "POST /api/v1/imports",
        body=lambda a, api: {"file": a.file, "on_conflict": a.on_conflict},
        arguments=(
            arg("file"),
            arg("--on-conflict", choices=["fail", "skip", "rename"], default="fail"),
        ),
    ),
]

COMMANDS: list[Command] = [
    *USERS,
    *CATEGORIES_AND_ROOMS,
    *MESSAGES,
    *OPERATIONS,
    *TRANSFER,
    *lifecycle.COMMANDS,
    *directory.COMMANDS,
]

# ``chatserver admin login`` turns a name and password into a token: this route, with Basic auth.
LOGIN_ROUTE = "POST /api/v1/tokens"
