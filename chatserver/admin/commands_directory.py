"""``chatserver admin directory status|sync`` (also ``chatserver directory …``): the LDAP
directory sync's status, and a run now (the routes of
:mod:`chatserver.admin.handlers.directory`)."""

from __future__ import annotations

import datetime as dt
from argparse import Namespace
from typing import Any

from .command import Command, arg


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


def readable(status: dict[str, Any]) -> dict[str, Any]:
    """The status as ``key  value`` lines: times in UTC, the counts one line each."""
    out: dict[str, Any] = {
        "lease holder": status["holder"] or f"none (last: {status['last_holder'] or '-'})",
        "outcome": status["outcome"] + (" (a run is under way)" if status["running"] else ""),
        "reason": status["reason"] or "-",
        "last started": _when(status["last_started_ms"]),
        "last ended": _when(status["last_ended_ms"]),
        "next sync": _when(status["next_sync_ms"]),
        "interval (s)": status["sync_interval_s"],
    }
    guard = status["guard"]
    if guard is not None:
        out["guard stopped"] = (
            f"{guard['leaving']} of {guard['total']} {guard['kind']}"
            f" (max share {guard['max_share']})"
        )
    for key, value in (status["counts"] or {}).items():
        out[key.replace("_", " ")] = (", ".join(value) or "-") if isinstance(value, list) else value
    request = status["request"]
    if request is not None:
        out["requested"] = f"{_when(request['requested_ms'])} by {request['requested_by']}" + (
            " (guard overridden)" if request["override_guard"] else ""
        )
    return out


def _status_out(a: Namespace, result: Any) -> Any:
    return result if a.json else readable(result)


def _sync_out(a: Namespace, result: Any) -> Any:
    if a.json:
        return result
    print(result["message"])
    return readable(result["status"])


COMMANDS = [
    Command(
        "directory",
        "status",
        "the directory sync's last run, its counts, the lease holder and the next run",
        "GET /api/v1/directory/sync",
        output=_status_out,
    ),
    Command(
        "directory",
        "sync",
        "run the directory sync now (on the node holding its lease)",
        "POST /api/v1/directory/sync",
        body=lambda a, api: {"override_guard": a.override_guard},
        arguments=(
            arg(
                "--override-guard",
                action="store_true",
                help="run even if it would disable or remove more than directory."
                "max_removal_share of the directory's users or groups (audited)",
            ),
        ),
        output=_sync_out,
    ),
]

RESOURCES = {"directory": "the LDAP directory sync: its status, a run now"}
