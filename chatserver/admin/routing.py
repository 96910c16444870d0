"""How a handler declares its route: method, path, body, query and response types.

Each handler module has a :class:`Router` and decorates its handlers with ``@router.route(…)``;
:mod:`chatserver.admin.routes` joins the routers of every handler module into the route table.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, TypeAdapter

from ..config import NODE_NAME, NODE_NAME_RULE

if TYPE_CHECKING:
    from .context import Ctx

Handler = Callable[["Ctx"], Awaitable[Any]]


class Binary:
    """A route's ``response`` for bytes rather than JSON: its handler returns a
    :class:`BinaryBody`, sent as ``application/octet-stream`` (OpenAPI: a binary string)."""


@dataclass(frozen=True)
class BinaryBody:
    """What a :class:`Binary` route answers: the bytes as they stream from storage, and the
    headers that describe them (Content-Disposition, ETag, …)."""

    content: AsyncIterator[bytes]
    headers: dict[str, str]


@dataclass
class Route:
    method: str
    path: str
    handler: Handler
    tag: str
    summary: str
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: Any  # a type for TypeAdapter, or None for "204 No Content"
    status: int
    mutating: bool
    # Who writes a mutating route's audit entries: "handler" (through Ctx), or the domain part
    # it calls, which records each change whatever front end asks ("governance", "accounts").
    audited_by: str = "handler"

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    def adapter(self) -> TypeAdapter[Any] | None:
        if self.response is None or self.response is Binary:
            return None
        return type_adapter(self.response)


_adapters: dict[Any, TypeAdapter[Any]] = {}


def type_adapter(tp: Any) -> TypeAdapter[Any]:
    if tp not in _adapters:
        _adapters[tp] = TypeAdapter(tp)
    return _adapters[tp]


@dataclass
class Router:
    """The routes of one handler module, in the order they are declared."""

    routes: list[Route] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        tag: str,
        summary: str,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: Any = None,
        status: int = 200,
        audited_by: str = "handler",
        reads_only: bool = False,  # a POST that changes nothing (a preview)
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append(
                Route(
                    method,
                    path,
                    handler,
                    tag,
                    summary,
                    body,
                    query,
                    response,
                    204 if response is None else status,
                    mutating=method != "GET" and not path.endswith("/search") and not reads_only,
                    audited_by=audited_by,
                )
            )
            return handler

        return register


# -- path parameters ------------------------------------------------------------------------

# ``…_id`` parameters are integers; the others are node names, by the rule of ``[node] name``.
NAME_PARAM = NODE_NAME
NAME_RULE = NODE_NAME_RULE


def path_param_schema(name: str) -> dict[str, Any]:
    if name.endswith("_id"):
        return {"type": "integer", "minimum": 1, "maximum": 2**53}
    return {"type": "string", "pattern": f"^{NAME_PARAM.pattern}$"}
