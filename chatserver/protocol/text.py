"""What every string a client or administrator sends must be: text the store can hold.

PostgreSQL refuses a NUL character in ``text`` and every store refuses a lone surrogate (which
JSON's ``\\ud800`` escapes can produce); such a string is refused here, with ``bad_request``
naming the field, before it reaches a transaction it would fail for everyone in it. Both the
client protocol (:mod:`chatserver.protocol.commands`) and the management API's models check
their strings with :func:`check_text`.
"""

from __future__ import annotations

from .errors import BAD_REQUEST, ChatError


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored, or None."""
    if "\x00" in value:
        return "must not contain a NUL character"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "must be valid Unicode (no lone surrogates)"
    return None


def check_text(value: str, field: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ChatError(BAD_REQUEST, f"field {field!r} {problem}")
    return value
