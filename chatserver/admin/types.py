"""The field types the management API's models share, and the base of every request model.

:class:`In` is the one validation layer for requests: it forbids unknown fields, and every string
it receives (a field, or an item of a list) goes through :func:`chatserver.protocol.text.
text_problem`, the check the client protocol makes too: no NUL character, no lone surrogate.
Such a string is refused with ``400 bad_request`` naming the field, before it reaches the store.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from ..protocol.text import text_problem
from ..store.principals import Principal as StorePrincipal


def check_strings(value: Any) -> Any:
    """``value`` unchanged when it is text the store can hold (or holds no text); else an error
    for the field it came in."""
    for item in value if isinstance(value, list) else (value,):
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                raise PydanticCustomError("text", problem)
    return value


class In(BaseModel):
    """A request body or query: no unknown field, and only storable text in any field."""

    model_config = ConfigDict(extra="forbid")

    # "before": the check runs ahead of each field's own constraints, so a NUL character is
    # reported as such rather than as a pattern mismatch.
    @field_validator("*", mode="before")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        return check_strings(value)


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


# The patterns say in the document what check_strings enforces (PostgreSQL cannot store NUL
# characters in text columns); check_strings runs first and names the problem.
NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, Field(min_length=1, max_length=256, pattern=NO_NUL)]
Description = Annotated[str, Field(max_length=256, pattern=NO_NUL)]
NodeName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00]+$")]
Id = Annotated[int, Field(ge=1, le=2**53)]


class Principal(In):
    kind: Literal["user", "group", "everyone"]
    id: Annotated[int, Field(ge=0, le=2**53)] = 0

    def store(self) -> StorePrincipal:
        return StorePrincipal(self.kind, 0 if self.kind == "everyone" else self.id)


class Member(In):
    """A group member: a user or a group (a group cannot hold "everyone")."""

    kind: Literal["user", "group"]
    id: Id

    def store(self) -> StorePrincipal:
        return StorePrincipal(self.kind, self.id)


PrincipalText = Annotated[str, Field(pattern=r"^(user|group):[1-9][0-9]{0,15}$")]


def _query_bool(value: Any) -> Any:
    """A boolean query parameter is ``true`` or ``false`` (not yes, on, 1, …)."""
    if isinstance(value, str):
        if value not in ("true", "false"):
            raise ValueError("give true or false")
        return value == "true"
    return value


QueryBool = Annotated[bool, BeforeValidator(_query_bool)]

# An absolute http(s) URL with a host (a name, an IPv4 or a bracketed IPv6 address), an optional
# port, then any printable ASCII: what a browser can open (IDN hosts in their xn-- form).
URL_PATTERN = (
    r"^https?://([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
    r"([/?#][!-~]*)?$"
)
Url = Annotated[str, Field(min_length=8, max_length=2048, pattern=URL_PATTERN)]

# -- instants -------------------------------------------------------------------------------

_DAY_MS = 86_400_000
_BARE_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME: TypeAdapter[dt.datetime] = TypeAdapter(dt.datetime)


def epoch_ms(value: int | str | None, *, end_of_day: bool = False) -> int | None:
    """Epoch milliseconds, or an ISO 8601 date or date-time (UTC when no offset), to epoch ms.

    A bare date is its first millisecond, or with ``end_of_day`` its last: "until 2026-11-28"
    includes the messages posted on the 28th.
    """
    if value is None or isinstance(value, int):
        return value
    try:
        if _BARE_DATE.fullmatch(value):
            day = dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), dt.UTC)
            start = int(day.timestamp() * 1000)
            return start + _DAY_MS - 1 if end_of_day else start
        parsed = _DATETIME.validate_python(value)
    except (ValueError, ValidationError):
        raise ValueError(f"{value!r} is not an ISO 8601 date or date-time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


When = (
    Annotated[int, Field(ge=0, le=2**53)]
    | Annotated[
        str,
        Field(min_length=10, max_length=64),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "format": "date"},
                    {"type": "string", "format": "date-time"},
                ]
            }
        ),
    ]
)
