"""The command line's side of the management API: an HTTP client that calls routes by their
declaration (``"GET /api/v1/rooms/{room_id}"``), and the tables and lists it prints."""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8012"

# Routes any command may call to turn a principal's name into its id.
LOOKUPS = frozenset({"GET /api/v1/users", "GET /api/v1/groups"})


class ApiError(Exception):
    pass


def basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


class Api:
    def __init__(self, url: str, authorization: str, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self.authorization = authorization
        self.timeout = timeout
        # The routes the running command declared (None: any); see commands.Command.routes.
        self.allowed: frozenset[str] | None = None

    def call(
        self,
        route: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
    ) -> Any:
        """One request to ``route`` ("METHOD /path/{param}"), its parameters filled in."""
        if self.allowed is not None and route not in self.allowed | LOOKUPS:
            raise AssertionError(f"the command calls {route}, which it does not declare")
        method, _, template = route.partition(" ")
        values = params or {}
        path = re.sub(
            r"{(\w+)}",
            lambda m: urllib.parse.quote(str(values[m.group(1)]), safe=""),
            template,
        )
        return self.request(method, path, body, query)

    def request(
        self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None
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


# -- output ---------------------------------------------------------------------------------

# Lists of principals print in one cell, not as a nested table.
PRINCIPAL_LISTS = ("allowed", "denied", "creators", "members", "managers", "presenters")


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict) and set(value) >= {"kind", "id"}:
        return value["kind"] if value["kind"] == "everyone" else f"{value['kind']}:{value['id']}"
    if isinstance(value, dict) and "name" in value:
        return str(value["name"])
    if isinstance(value, list):
        return ",".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


# Table columns holding epoch milliseconds, printed as ISO 8601 UTC times (the JSON keeps them).
TIME_COLUMNS = frozenset({"ts", "created_ms", "updated_ms", "expires_ms", "last_seen_ms"})


def iso_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "(none)"
    columns = columns or list(rows[0])
    cells = [
        [
            iso_time(v)
            if c in TIME_COLUMNS and isinstance(v := row.get(c), int) and not isinstance(v, bool)
            else cell(row.get(c))
            for c in columns
        ]
        for row in rows
    ]
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


def show(result: Any, *, as_json: bool, columns: list[str] | None = None) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    elif result is None:
        print("done")
    elif isinstance(result, list):
        print(table(result, columns))
    elif isinstance(result, dict):
        width = max(len(k) for k in result) if result else 0
        for key, value in result.items():
            if (
                isinstance(value, list)
                and value
                and isinstance(value[0], dict)
                and key not in PRINCIPAL_LISTS
            ):
                print(f"{key}:")
                print("  " + table(value, columns).replace("\n", "\n  "))
            else:
                print(f"{key.ljust(width)}  {cell(value)}")
