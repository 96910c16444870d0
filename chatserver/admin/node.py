"""What the management API needs of a running node, and nothing more.

The node (``chatserver.server.Node``, the composition root) is passed to the management server
as a :class:`NodeControl`; the admin package never imports the node itself, so it depends only
on the parts named here: the store, the governance operations the client protocol uses too, and
a few read-only views.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..accounts import Accounts
    from ..config import Config
    from ..metrics import Metrics
    from ..pool.failover import StoreFailover
    from ..pool.node import Pool
    from ..rooms.audit import Audit
    from ..rooms.authorization import Authorization
    from ..rooms.enforcement import Enforcement
    from ..rooms.facts import Facts
    from ..rooms.files import Files
    from ..rooms.governance import Governance
    from ..rooms.retention import Retention
    from ..rooms.settings import RuntimeSettings
    from ..store.db import Database
    from ..userdir.sync import DirectorySync


class LiveConnections(Protocol):
    """The node's open client connections (each has ``session``, ``transport_name``, ``peer``)."""

    @property
    def accepting(self) -> bool: ...

    def __iter__(self) -> Iterator[Any]: ...


class NodeControl(Protocol):
    @property
    def config(self) -> Config: ...

    @property
    def db(self) -> Database: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def connections(self) -> LiveConnections: ...

    @property
    def listening(self) -> bool:
        """The client listeners are open (``/readyz``)."""
        ...

    @property
    def facts(self) -> Facts: ...

    @property
    def auth(self) -> Authorization: ...

    @property
    def enforcement(self) -> Enforcement: ...

    @property
    def governance(self) -> Governance: ...

    @property
    def accounts(self) -> Accounts: ...

    @property
    def audit(self) -> Audit: ...

    @property
    def settings(self) -> RuntimeSettings: ...

    @property
    def files(self) -> Files:
        """Files in rooms: their bytes, wherever the storage backend keeps them."""
        ...

    @property
    def retention(self) -> Retention:
        """The retention purge (runs on the node holding the store's lease)."""
        ...

    @property
    def pool(self) -> Pool | None:
        """The pool this node is in, or None on a single node."""
        ...

    @property
    def store_failover(self) -> StoreFailover:
        """Which store the node uses: normal, or failed over onto the backup store."""
        ...

    @property
    def directory_sync(self) -> DirectorySync | None:
        """The LDAP directory sync, or None without ``[directory]``."""
        ...

    @property
    def compliance_node(self) -> str | None:
        """The node's name when compliance capture is on (outbox rows carry it), else None."""
        ...

    async def pool_view(self) -> dict[str, Any]:
        """The pool's nodes as ``GET /api/v1/pool`` shows them (this node alone when unpooled)."""
        ...

    async def refresh_metrics(self) -> None:
        """Bring the metrics read from elsewhere (the compliance store) up to date."""
        ...
