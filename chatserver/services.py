"""What a session works with: the node's parts (:class:`Services`, built once by ``server.py``)
and what it needs of its connection (:class:`Link`) and of the pool (:class:`Admission`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .protocol.events import Outgoing
from .store.users import User

if TYPE_CHECKING:
    from .accounts import Accounts
    from .config import LimitsConfig
    from .metrics import Metrics
    from .rooms.choices import Choices
    from .rooms.directory import Directory
    from .rooms.feeds import Feeds
    from .rooms.governance import Governance
    from .rooms.lifecycle import Lifecycle
    from .rooms.posting import Posting
    from .rooms.presence import Presence
    from .rooms.reading import Reading
    from .rooms.roster import Roster
    from .rooms.search import Search
    from .rooms.settings import RuntimeSettings
    from .rooms.unread import Unread


class Link(Protocol):
    """What a session needs of its connection (``transport/connection.py``)."""

    transport_name: str  # "tcp" | "websocket"
    peer: str  # the client's "address:port"

    def send(self, item: Outgoing) -> None: ...

    def close(self, reason: str) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def authenticated(self, user: User) -> None: ...


class Admission(Protocol):
    """Whether this node takes clients now, and where the others are (the pool, when pooled)."""

    def refusal(self) -> str | None: ...

    def active_nodes(self) -> list[dict[str, str]]: ...

    def hello_info(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Services:
    """What every session of a node works with; built once by the node (``server.py``)."""

    node_name: str
    limits: LimitsConfig
    settings: RuntimeSettings
    accounts: Accounts
    directory: Directory
    reading: Reading
    posting: Posting
    governance: Governance
    presence: Presence
    metrics: Metrics
    unread: Unread
    admission: Admission | None = None  # the pool's, when pooled
    search: Search | None = None
    feeds: Feeds | None = None
    roster: Roster | None = None  # the participant roster
    lifecycle: Lifecycle | None = None  # users' edits, deletes, reactions, threads
    choices: Choices | None = None  # room.choices (the management pages' search)
    # the client HTTP listener's URL (files) for hello's http_url; None: off or not known
    http_url: Callable[[], str | None] = field(default=lambda: None)
