"""``chatserver admin …``: the management API from the command line, and ``chatserver selftest``.

Every admin subcommand is one or two HTTP requests to the management port (``--url``, default
``$CHATSERVER_ADMIN_URL`` or ``http://127.0.0.1:8012``). The token comes from
``$CHATSERVER_ADMIN_TOKEN``; without it the command asks for an administrator's name and password
and logs in (``chatserver admin login`` prints a token to export). Output is a table, or the API's
JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8012"


class ApiError(Exception):
    pass


def _fail(message: str, code: int = 1) -> None:
    print(f"chatserver: {message}", file=sys.stderr)
    raise SystemExit(code)


# -- HTTP -----------------------------------------------------------------------------------


class Api:
    def __init__(self, url: str, authorization: str, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self.authorization = authorization
        self.timeout = timeout

    def call(
        self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None
    ) -> Any:
        url = self.url + path
        if query:
            pairs = {
                k: (str(v).lower() if isinstance(v, bool) else v)
                for k, v in query.items()
                if v is not None
            }
            if pairs:
                url += "?" + urllib.parse.urlencode(pairs)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", self.authorization)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                error = json.loads(raw)["error"]
                raise ApiError(f"{exc.code} {error['code']}: {error['message']}") from None
            except (ValueError, KeyError, TypeError):
                raise ApiError(f"{exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(f"cannot reach the management API at {self.url}: {reason}") from None
        return json.loads(raw) if raw else None


def _basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def _api(args: argparse.Namespace) -> Api:
    url = args.url or os.environ.get("CHATSERVER_ADMIN_URL") or DEFAULT_URL
    token = os.environ.get("CHATSERVER_ADMIN_TOKEN")
    if token:
        return Api(url, "Bearer " + token)
    if not sys.stdin.isatty():
        _fail("set CHATSERVER_ADMIN_TOKEN (see `chatserver admin login`), or run in a terminal")
    name = input("administrator: ")
    password = getpass.getpass("password: ")
    api = Api(url, _basic(name, password))
    try:
        token = str(api.call("POST", "/api/v1/tokens")["token"])
    except ApiError as exc:
        _fail(str(exc))
        raise  # unreachable
    return Api(url, "Bearer " + token)


# -- output ---------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict) and set(value) >= {"kind", "id"}:
        return value["kind"] if value["kind"] == "everyone" else f"{value['kind']}:{value['id']}"
    if isinstance(value, dict) and "name" in value:
        return str(value["name"])
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "(none)"
    columns = columns or list(rows[0])
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    widths = [min(w, 60) for w in widths]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    for r in cells:
        lines.append(
            "  ".join(
                (v if len(v) <= w else v[: w - 1] + "…").ljust(w)
                for v, w in zip(r, widths, strict=True)
            ).rstrip()
        )
    return "\n".join(lines)


def _show(args: argparse.Namespace, result: Any, columns: list[str] | None = None) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
    elif result is None:
        print("done")
    elif isinstance(result, list):
        print(_table(result, columns))
    elif isinstance(result, dict):
        width = max(len(k) for k in result) if result else 0
        for key, value in result.items():
            if (
                isinstance(value, list)
                and value
                and isinstance(value[0], dict)
                and key
                not in (
                    "allowed",
                    "denied",
                    "creators",
                    "members",
                    "managers",
                    "presenters",
                )
            ):
                print(f"{key}:")
                print("  " + _table(value, columns).replace("\n", "\n  "))
            else:
                print(f"{key.ljust(width)}  {_cell(value)}")


# -- arguments ------------------------------------------------------------------------------


def _principal(api: Api, text: str) -> dict[str, Any]:
    """``everyone``, ``user:ID``, ``group:ID``, ``user:NAME`` or ``group:NAME``."""
    if text == "everyone":
        return {"kind": "everyone", "id": 0}
    kind, sep, ident = text.partition(":")
    if not sep or kind not in ("user", "group") or not ident:
        _fail(f"{text!r}: a principal is everyone, user:ID|NAME or group:ID|NAME", 2)
    if ident.isdigit():
        return {"kind": kind, "id": int(ident)}
    if kind == "user":
        found = [
            u
            for u in api.call("GET", "/api/v1/users", query={"query": ident})
            if u["name"] == ident
        ]
    else:
        found = [g for g in api.call("GET", "/api/v1/groups") if g["name"] == ident]
    if not found:
        _fail(f"no {kind} named {ident!r}")
    return {"kind": kind, "id": found[0]["id"]}


def _principals(api: Api, values: list[str] | None) -> list[dict[str, Any]]:
    return [_principal(api, v) for v in values or []]


Command = Callable[[argparse.Namespace, Api], Any]


def _run(args: argparse.Namespace) -> None:
    api = _api(args)
    try:
        result = args.call(args, api)
    except ApiError as exc:
        _fail(str(exc))
    _show(args, result, getattr(args, "columns", None))


# -- commands -------------------------------------------------------------------------------


def login(args: argparse.Namespace) -> None:
    url = args.url or os.environ.get("CHATSERVER_ADMIN_URL") or DEFAULT_URL
    name = args.user or input("administrator: ")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
    try:
        result = Api(url, _basic(name, password)).call("POST", "/api/v1/tokens")
    except ApiError as exc:
        _fail(str(exc))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"export CHATSERVER_ADMIN_TOKEN={result['token']}")


def _patch_lists(api: Api, args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    add: dict[str, Any] = {}
    remove: dict[str, Any] = {}
    for option, field in names.items():
        if getattr(args, option, None):
            add[field] = _principals(api, getattr(args, option))
        if getattr(args, "un" + option, None):
            remove[field] = _principals(api, getattr(args, "un" + option))
    out: dict[str, Any] = {}
    if add:
        out["add"] = add
    if remove:
        out["remove"] = remove
    return out


def _flags(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


CATEGORY_LISTS = {"allow": "allowed", "deny": "denied", "creator": "creators"}
ROOM_LISTS = {"member": "member", "manager": "manager", "presenter": "presenter"}


def _filter(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = _flags(args, ["room", "user", "since", "until", "match", "limit"])
    if args.keyword:
        body["keywords"] = args.keyword
    if args.case_sensitive:
        body["case_sensitive"] = True
    for key in ("since", "until"):
        if key in body and str(body[key]).isdigit():
            body[key] = int(body[key])
    return body


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        _fail(f"{text!r}: give KEY=VALUE", 2)
    parsed: Any = value
    if value.isdigit():
        parsed = int(value)
    return key, parsed


def _by_id(method: str, resource: str, suffix: str = "") -> Command:
    """One request to ``/api/v1/RESOURCE/ID[SUFFIX]`` with the command's ``id`` argument."""
    return lambda a, api: api.call(method, f"/api/v1/{resource}/{a.id}{suffix}")


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``admin`` and ``selftest`` to the top-level parser."""
    http = argparse.ArgumentParser(add_help=False)
    http.add_argument(
        "--url", help=f"management API (default: $CHATSERVER_ADMIN_URL or {DEFAULT_URL})"
    )
    http.add_argument("--json", action="store_true", help="print the API's JSON")

    admin = sub.add_parser(
        "admin", help="administer a deployment through its management API"
    ).add_subparsers(dest="resource", required=True, metavar="RESOURCE")

    def command(
        group: Any, name: str, action: Command, help: str, columns: list[str] | None = None
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, parents=[http], help=help)
        p.set_defaults(func=_run, call=action, columns=columns)
        return p

    def by_id(group: Any, resource: str, commands: list[tuple[str, str, str, str]]) -> None:
        """Subcommands that take only an id: (verb, HTTP method, path suffix, help)."""
        for verb, method, suffix, text in commands:
            command(group, verb, _by_id(method, resource, suffix), text).add_argument(
                "id", type=int
            )

    def resource(name: str, help: str) -> Any:
        return admin.add_parser(name, help=help).add_subparsers(
            dest="verb", required=True, metavar="ACTION"
        )

    p = admin.add_parser("login", parents=[http], help="log in and print a token to export")
    p.add_argument("--user", help="administrator name (asked when missing)")
    p.add_argument("--password-stdin", action="store_true")
    p.set_defaults(func=login)

    # users
    users = resource("users", "users, their policy and their connections")
    user_columns = ["id", "name", "display_name", "is_admin", "persistent_chat_enabled", "policy"]
    p = command(
        users,
        "list",
        lambda a, api: api.call("GET", "/api/v1/users", query={"query": a.query, "limit": a.limit}),
        "list users",
        user_columns,
    )
    p.add_argument("--query", help="name contains")
    p.add_argument("--limit", type=int, default=100)
    by_id(users, "users", [("show", "GET", "", "show a user")])

    def add_user(a: argparse.Namespace, api: Api) -> Any:
        if a.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass("password for the new user: ")
        body = {"name": a.name, "password": password, "is_admin": a.admin}
        if a.display_name:
            body["display_name"] = a.display_name
        return api.call("POST", "/api/v1/users", body)

    p = command(users, "add", add_user, "add a user")
    p.add_argument("name")
    p.add_argument("--display-name")
    p.add_argument("--admin", action="store_true")
    p.add_argument("--password-stdin", action="store_true")

    def policy(a: argparse.Namespace, api: Api) -> Any:
        value = {"on": True, "off": False, "default": None}[a.value]
        return api.call("PUT", f"/api/v1/users/{a.id}/policy", {"persistent_chat_enabled": value})

    p = command(users, "policy", policy, "set persistent_chat_enabled: on, off or default")
    p.add_argument("id", type=int)
    p.add_argument("value", choices=["on", "off", "default"])

    def reset_password(a: argparse.Namespace, api: Api) -> Any:
        if a.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass("new password: ")
        return api.call("PUT", f"/api/v1/users/{a.id}/password", {"password": password})

    p = command(
        users,
        "password",
        reset_password,
        "reset a user's password; revokes all their session tokens (their connections close)",
    )
    p.add_argument("id", type=int)
    p.add_argument("--password-stdin", action="store_true")
    by_id(
        users,
        "users",
        [
            (
                "disconnect",
                "DELETE",
                "/sessions",
                "close a user's connections and revoke their session tokens",
            )
        ],
    )

    # sessions
    sessions = resource("sessions", "connected users")
    command(
        sessions,
        "list",
        lambda a, api: api.call("GET", "/api/v1/sessions"),
        "users connected to the node behind --url",
    )

    # groups
    groups = resource("groups", "groups and their members")
    command(
        groups,
        "list",
        lambda a, api: api.call("GET", "/api/v1/groups"),
        "list groups",
        ["id", "name", "description"],
    )
    p = command(
        groups,
        "add",
        lambda a, api: api.call(
            "POST", "/api/v1/groups", {"name": a.name, "description": a.description}
        ),
        "add a group",
    )
    p.add_argument("name")
    p.add_argument("--description", default="")
    by_id(
        groups,
        "groups",
        [
            ("show", "GET", "", "show a group and its members"),
            ("delete", "DELETE", "", "remove a group"),
        ],
    )
    p = command(
        groups,
        "members",
        lambda a, api: api.call(
            "PATCH",
            f"/api/v1/groups/{a.id}/members",
            {"add": _principals(api, a.add), "remove": _principals(api, a.remove)},
        ),
        "add or remove members (user:ID|NAME, group:ID|NAME)",
    )
    p.add_argument("id", type=int)
    p.add_argument("--add", nargs="+", metavar="PRINCIPAL")
    p.add_argument("--remove", nargs="+", metavar="PRINCIPAL")

    # categories
    categories = resource("categories", "categories: allowed / denied / creators")
    category_columns = [
        "id",
        "name",
        "invitations",
        "file_upload",
        "chat_history",
        "allowed",
        "denied",
        "creators",
    ]
    command(
        categories,
        "list",
        lambda a, api: api.call("GET", "/api/v1/categories"),
        "list categories",
        category_columns,
    )

    def category_switches(p: argparse.ArgumentParser) -> None:
        for name in ("invitations", "file_upload", "chat_history"):
            flag = name.replace("_", "-")
            p.add_argument(f"--{flag}", dest=name, action="store_true", default=None)
            p.add_argument(f"--no-{flag}", dest=name, action="store_false")

    def add_category(a: argparse.Namespace, api: Api) -> Any:
        body = {"name": a.name, "description": a.description}
        body.update(_flags(a, ["invitations", "file_upload", "chat_history"]))
        for option, field in CATEGORY_LISTS.items():
            body[field] = _principals(api, getattr(a, option))
        return api.call("POST", "/api/v1/categories", body)

    p = command(categories, "add", add_category, "add a category")
    p.add_argument("name")
    p.add_argument("--description", default="")
    category_switches(p)
    for option in CATEGORY_LISTS:
        p.add_argument(f"--{option}", nargs="+", metavar="PRINCIPAL")

    def update_category(a: argparse.Namespace, api: Api) -> Any:
        body = _flags(a, ["name", "description", "invitations", "file_upload", "chat_history"])
        body.update(_patch_lists(api, a, CATEGORY_LISTS))
        return api.call("PATCH", f"/api/v1/categories/{a.id}", body)

    p = command(
        categories,
        "update",
        update_category,
        "change a category (--allow / --unallow, --deny / --undeny, --creator / --uncreator)",
    )
    p.add_argument("id", type=int)
    p.add_argument("--name")
    p.add_argument("--description")
    category_switches(p)
    for option in CATEGORY_LISTS:
        p.add_argument(f"--{option}", nargs="+", metavar="PRINCIPAL")
        p.add_argument(f"--un{option}", nargs="+", metavar="PRINCIPAL")
    by_id(
        categories,
        "categories",
        [
            ("show", "GET", "", "show a category"),
            ("delete", "DELETE", "", "remove an empty category"),
            ("eligible", "GET", "/eligible", "users the category allows"),
        ],
    )

    # rooms
    rooms = resource("rooms", "rooms, their roles, and clearing their history")
    room_columns = [
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
    ]

    def list_rooms(a: argparse.Namespace, api: Api) -> Any:
        query = _flags(
            a,
            [
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
            ],
        )
        return api.call("GET", "/api/v1/rooms", query=query)["rooms"]

    p = command(rooms, "list", list_rooms, "list rooms (filters combine)", room_columns)
    p.add_argument("--category", type=int)
    p.add_argument("--privacy", choices=["open", "closed", "secret"])
    p.add_argument("--type", choices=["normal", "auditorium"])
    p.add_argument("--disabled", action="store_true", default=None)
    p.add_argument("--member", metavar="user:ID|group:ID")
    p.add_argument("--manager", metavar="user:ID|group:ID")
    p.add_argument("--addin", type=int)
    p.add_argument("--contains", help="in the name or description")
    p.add_argument("--content-exceeds-mb", type=float)
    p.add_argument("--limit", type=int, default=1000)

    def add_room(a: argparse.Namespace, api: Api) -> Any:
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
            body[option + "s"] = _principals(api, getattr(a, option))
        return api.call("POST", "/api/v1/rooms", body)

    p = command(rooms, "add", add_room, "add a room")
    p.add_argument("name")
    p.add_argument("--description", default="")
    p.add_argument("--category", type=int, default=1)
    p.add_argument("--privacy", choices=["open", "closed", "secret"], default="closed")
    p.add_argument("--type", choices=["normal", "auditorium"], default="normal")
    p.add_argument("--addin", type=int)
    for option in ROOM_LISTS:
        p.add_argument(f"--{option}", nargs="+", metavar="PRINCIPAL")

    def update_room(a: argparse.Namespace, api: Api) -> Any:
        body = _flags(a, ["name", "description", "category", "privacy", "type", "addin"])
        if a.detach_addin:
            body["detach_addin"] = True
        body.update(_patch_lists(api, a, ROOM_LISTS))
        return api.call("PATCH", f"/api/v1/rooms/{a.id}", body)

    p = command(
        rooms,
        "update",
        update_room,
        "change a room (--member / --unmember, --manager / --unmanager, …)",
    )
    p.add_argument("id", type=int)
    p.add_argument("--name")
    p.add_argument("--description")
    p.add_argument("--category", type=int, help="move the room to this category")
    p.add_argument("--privacy", choices=["open", "closed", "secret"])
    p.add_argument("--type", choices=["normal", "auditorium"])
    p.add_argument("--addin", type=int)
    p.add_argument("--detach-addin", action="store_true")
    for option in ROOM_LISTS:
        p.add_argument(f"--{option}", nargs="+", metavar="PRINCIPAL")
        p.add_argument(f"--un{option}", nargs="+", metavar="PRINCIPAL")
    by_id(
        rooms,
        "rooms",
        [
            ("show", "GET", "", "show a room"),
            ("disable", "POST", "/disable", "disable a room"),
            ("enable", "POST", "/enable", "enable a room"),
            ("delete", "DELETE", "", "delete a room and its history"),
            ("eligible", "GET", "/eligible", "users who may read the room"),
        ],
    )
    p = command(
        rooms,
        "clear",
        lambda a, api: api.call(
            "POST",
            f"/api/v1/rooms/{a.id}/clear",
            {"until": int(a.until) if a.until.isdigit() else a.until},
        ),
        "remove messages posted on or before --until",
    )
    p.add_argument("id", type=int)
    p.add_argument("--until", required=True, help="ISO 8601 date or date-time (UTC), or epoch ms")

    # messages
    messages = resource("messages", "find, remove or replace messages")
    message_columns = ["room", "seq", "ts", "sender", "state", "text"]
    for verb, text in (
        ("search", "find messages"),
        ("remove", "remove the selected messages"),
        ("replace", "replace the text of the selected messages"),
    ):

        def action(a: argparse.Namespace, api: Api, verb: str = verb) -> Any:
            body = _filter(a)
            if verb == "replace" and a.text:
                body["text"] = a.text
            result = api.call("POST", f"/api/v1/messages/{verb}", body)
            if a.json or verb == "search":
                return result if a.json else result["messages"]
            print(f"{result['changed']} message(s) {verb}d")
            return result["messages"]

        p = command(messages, verb, action, text, message_columns)
        p.add_argument("--room", type=int)
        p.add_argument("--user", type=int)
        p.add_argument("--since", help="ISO 8601 date or date-time (UTC), or epoch ms")
        p.add_argument("--until", help="ISO 8601 date or date-time (UTC), or epoch ms")
        p.add_argument("--keyword", action="append", help="repeat for several")
        p.add_argument("--match", choices=["all", "any", "exact"])
        p.add_argument("--case-sensitive", action="store_true")
        p.add_argument("--limit", type=int)
        if verb == "replace":
            p.add_argument("--text", help="the substitute (default: the administrator notice)")

    # add-ins
    addins = resource("addins", "add-ins: web pages shown beside rooms")
    command(addins, "list", lambda a, api: api.call("GET", "/api/v1/addins"), "list add-ins")
    p = command(
        addins,
        "add",
        lambda a, api: api.call("POST", "/api/v1/addins", {"name": a.name, "url": a.address}),
        "add an add-in",
    )
    p.add_argument("name")
    p.add_argument("address", metavar="URL", help="http:// or https://")
    p = command(
        addins,
        "update",
        lambda a, api: api.call(
            "PATCH",
            f"/api/v1/addins/{a.id}",
            {**_flags(a, ["name"]), **({"url": a.new_url} if a.new_url else {})},
        ),
        "change an add-in",
    )
    p.add_argument("id", type=int)
    p.add_argument("--name")
    p.add_argument("--new-url", help="the add-in's new address")
    by_id(addins, "addins", [("delete", "DELETE", "", "remove an add-in no room uses")])

    # config
    config = resource("config", "run-time settings (global, or per node)")
    command(config, "show", lambda a, api: api.call("GET", "/api/v1/config"), "show the settings")

    def set_config(a: argparse.Namespace, api: Api, clear: bool = False) -> Any:
        if clear:
            body: dict[str, Any] = {key: None for key in a.keys}
        else:
            body = dict(_setting(text) for text in a.settings)
        path = "/api/v1/config" + (f"/nodes/{urllib.parse.quote(a.node)}" if a.node else "")
        return api.call("PATCH", path, body)

    p = command(
        config,
        "set",
        set_config,
        "set KEY=VALUE… (default_chat_history, max_file_size_kb, participant_update_limit,"
        " room_management_url)",
    )
    p.add_argument("settings", nargs="+", metavar="KEY=VALUE")
    p.add_argument("--node", help="override for this node only")
    p = command(config, "unset", lambda a, api: set_config(a, api, clear=True), "clear overrides")
    p.add_argument("keys", nargs="+", metavar="KEY")
    p.add_argument("--node")

    # pool, audit, compliance
    pool = resource("pool", "the nodes of the pool")
    command(
        pool,
        "show",
        lambda a, api: api.call("GET", "/api/v1/pool")["nodes"],
        "list the nodes and their state",
    )
    p = command(
        pool,
        "activate",
        lambda a, api: api.call("PUT", "/api/v1/pool/active", {"nodes": a.nodes})["nodes"],
        "make exactly these nodes active (the other active nodes become standby)",
    )
    p.add_argument("nodes", nargs="+", metavar="NODE")
    p = command(
        pool,
        "swap",
        lambda a, api: api.call(
            "POST", "/api/v1/pool/swap", {"active": a.active, "standby": a.standby}
        )["nodes"],
        "move an active node to standby and a standby node to active",
    )
    p.add_argument("active")
    p.add_argument("standby")
    p = command(
        pool,
        "drain",
        lambda a, api: api.call(
            "POST", f"/api/v1/pool/nodes/{urllib.parse.quote(a.node, safe='')}/drain"
        )["nodes"],
        "tell a node's clients to move to the active nodes, then stop it",
    )
    p.add_argument("node")
    audit = resource("audit", "the audit log of administrators' changes")
    p = command(
        audit,
        "list",
        lambda a, api: api.call(
            "GET", "/api/v1/audit", query=_flags(a, ["action", "actor", "target", "limit"])
        ),
        "newest first",
        ["id", "ts", "actor", "action", "target"],
    )
    p.add_argument("--action")
    p.add_argument("--actor")
    p.add_argument("--target", help="e.g. room:12")
    p.add_argument("--limit", type=int, default=50)
    compliance = resource("compliance", "the compliance service's settings")
    command(
        compliance,
        "show",
        lambda a, api: api.call("GET", "/api/v1/compliance"),
        "show [compliance]",
    )

    # selftest
    p = sub.add_parser(
        "selftest",
        parents=[common],
        help="two test users join a room, exchange a message each and leave; reports each step",
    )
    p.add_argument("--tcp", metavar="HOST:PORT", help="the node to test (default: listen.tcp)")
    p.add_argument("--room", default="selftest", help="the room to use (created if missing)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds allowed per step")
    p.set_defaults(func=_selftest)


def _selftest(args: argparse.Namespace) -> None:
    from .selftest import run

    run(args)
