"""Error codes of the client protocol and the exceptions that carry them.

::

    ChatError (code, message)           -- an op failed; the reply says why, the connection lives on
    ├── RetryLater (retry_after)        -- rate_limited: the reply also says how many seconds to
    │                                      wait ("retry_after"; HTTP: a Retry-After header)
    └── ProtocolError                   -- the peer sent a frame that cannot be decoded; the reply
        │                                  has "re": null and the connection lives on
        └── FrameTooLarge               -- a frame above max_frame_bytes: the stream cannot be
                                           trusted any more, so the connection is closed

``ChatError`` is raised by the domain layers and becomes ``{"re": id, "ok": false, "error": …}``.
"""

from __future__ import annotations

from typing import Final

BAD_REQUEST: Final = "bad_request"
UNAUTHENTICATED: Final = "unauthenticated"
FORBIDDEN: Final = "forbidden"
NOT_FOUND: Final = "not_found"
CONFLICT: Final = "conflict"
TOO_LARGE: Final = "too_large"
RATE_LIMITED: Final = "rate_limited"
UNAVAILABLE: Final = "unavailable"
INTERNAL: Final = "internal"

CODES: Final = frozenset(
    {
        BAD_REQUEST,
        UNAUTHENTICATED,
        FORBIDDEN,
        NOT_FOUND,
        CONFLICT,
        TOO_LARGE,
        RATE_LIMITED,
        UNAVAILABLE,
        INTERNAL,
    }
)


class ChatError(Exception):
    """An op failed with one of the documented codes."""

    def __init__(self, code: str, message: str) -> None:
        assert code in CODES, code
        super().__init__(message)
        self.code = code
        self.message = message


class RetryLater(ChatError):
    """Refused for now (``rate_limited``): the same request may succeed ``retry_after`` seconds
    from now."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(RATE_LIMITED, message)
        self.retry_after = retry_after


class ProtocolError(ChatError):
    """The peer sent a frame that cannot be decoded; ``request_id``: the request's id when the
    frame was parsed far enough to read one (the error reply then answers it)."""

    def __init__(
        self, message: str, code: str = BAD_REQUEST, request_id: int | None = None
    ) -> None:
        super().__init__(code, message)
        self.request_id = request_id


class FrameTooLarge(ProtocolError):
    def __init__(self, size: int, limit: int, setting: str = "max_frame_bytes") -> None:
        super().__init__(f"frame of {size} bytes exceeds {setting}={limit}", TOO_LARGE)
