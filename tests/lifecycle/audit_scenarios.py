"""The audit scenarios of issue 18's mutating management routes (edit policy, retention, legal
holds), for tests/admin/test_api.py's ``test_every_mutating_route_is_audited``: each makes one
change and says the entry it expects (target, before, after). What they need is made in the
store directly, so that it leaves no entry of its own."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from chatserver.store.categories import create_category
from chatserver.store.rooms import create_room

Scenario = Callable[[Any, dict[str, Any]], Awaitable[tuple[str, Any, Any]]]


def scenarios() -> dict[tuple[str, str], tuple[str, Scenario]]:
    async def room_policy(a: Any, s: dict[str, Any]) -> tuple[str, Any, Any]:
        rid = (await create_room(a.h.node.db, "lifecycle room")).id
        s["lc_room"] = rid
        out = await a.call("PUT", f"/api/v1/rooms/{rid}/edit-policy", {"policy": "15"})
        assert out == {"policy": "15", "effective": "15"}
        return f"room:{rid}", {"policy": None, "effective": "always"}, out

    async def category_policy(a: Any, s: dict[str, Any]) -> tuple[str, Any, Any]:
        cid = await create_category(a.h.node.db, "lifecycle category")
        s["lc_category"] = cid
        out = await a.call("PUT", f"/api/v1/categories/{cid}/edit-policy", {"policy": "never"})
        return f"category:{cid}", {"policy": None, "effective": "always"}, out

    def setter(scope: str, path: str, key: str | None) -> tuple[Scenario, Scenario]:
        def where(s: dict[str, Any]) -> tuple[str, str]:
            ident = s[key] if key else 0
            return path.format(**({"x": ident} if key else {})), f"{scope}:{ident}"

        async def put(a: Any, s: dict[str, Any]) -> tuple[str, Any, Any]:
            url, target = where(s)
            out = await a.call("PUT", url, {"days": 30, "files_days": 7})
            assert out["scope"] == scope and out["days"] == 30 and out["enabled"] is True
            return target, None, out

        async def remove(a: Any, s: dict[str, Any]) -> tuple[str, Any, Any]:
            url, target = where(s)
            before = next(
                p
                for p in (await a.call("GET", "/api/v1/retention"))["policies"]
                if f"{p['scope']}:{p['scope_id']}" == target
            )
            await a.call("DELETE", url, status=204)
            return target, before, None

        return put, remove

    async def run(a: Any, s: dict[str, Any]) -> tuple[str, Any, Any]:
        out = await a.call("POST", "/api/v1/retention/run")
        assert out["ran"] is True
        return "retention", None, out

    async def place(a: Any, s: dict[str, Any]) -> tuple[str, Any, Any]:
        out = await a.call("POST", "/api/v1/holds", {"name": "audit", "rooms": [s["lc_room"]]})
        s["lc_hold"] = out["id"]
        return f"hold:{out['id']}", None, out

    async def lift(a: Any, s: dict[str, Any]) -> tuple[str, Any, Any]:
        hid = s["lc_hold"]
        before = next(h for h in (await a.call("GET", "/api/v1/holds"))["holds"] if h["id"] == hid)
        out = await a.call("POST", f"/api/v1/holds/{hid}/lift")
        assert out["lifted_ms"] is not None
        return f"hold:{hid}", before, out

    out: dict[tuple[str, str], tuple[str, Scenario]] = {
        ("PUT", "/api/v1/rooms/{room_id}/edit-policy"): ("room.edit_policy", room_policy),
        ("PUT", "/api/v1/categories/{category_id}/edit-policy"): (
            "category.edit_policy",
            category_policy,
        ),
    }
    for scope, route, url, key in (
        ("deployment", "/api/v1/retention/deployment", "/api/v1/retention/deployment", None),
        (
            "category",
            "/api/v1/retention/categories/{category_id}",
            "/api/v1/retention/categories/{x}",
            "lc_category",
        ),
        ("room", "/api/v1/retention/rooms/{room_id}", "/api/v1/retention/rooms/{x}", "lc_room"),
    ):
        put, remove = setter(scope, url, key)
        out[("PUT", route)] = ("retention.set", put)
        out[("DELETE", route)] = ("retention.delete", remove)
    out[("POST", "/api/v1/retention/run")] = ("retention.run", run)
    out[("POST", "/api/v1/holds")] = ("hold.place", place)
    out[("POST", "/api/v1/holds/{hold_id}/lift")] = ("hold.lift", lift)
    return out
