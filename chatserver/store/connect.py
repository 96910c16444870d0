"""Connecting to the first usable host of a multi-host URL, with a time limit per host.

asyncpg tries a URL's hosts in order under **one** timeout for them all: a first host that
drops packets (a primary whose machine is gone, not one that refuses connections) uses all of
it, and the second host, the promoted replica, is never tried. :func:`connect` tries each host
with its own limit (``connect_timeout``, as libpq does, else :data:`HOST_TIMEOUT_S`) and starts
with the host that was usable last time (per URL), so once a node has found the new primary its
next connections go there first instead of waiting on the dead one again.

Both the SQLAlchemy engine (``connect_args["async_creator_fn"]``) and the asyncpg pool
(``create_pool(connect=…)``) connect through it (:meth:`StoreUrl.connect_args`); one host, or
one hosts list, is handed to asyncpg unchanged.
"""

from __future__ import annotations

import time
from typing import Any

# The limit for each host of a multi-host URL without connect_timeout.
HOST_TIMEOUT_S = 5.0

# The index of the host that was usable last, per host list.
_last_good: dict[tuple[tuple[str, int], ...], int] = {}


async def connect(*args: Any, **kwargs: Any) -> Any:
    """``asyncpg.connect`` with the keyword arguments of :meth:`StoreUrl.connect_args` (and
    whatever else the caller adds: a pool's ``loop`` and classes, timeouts, settings)."""
    import asyncpg

    hosts, ports = kwargs.get("host"), kwargs.get("port")
    if not isinstance(hosts, list) or len(hosts) < 2:
        return await asyncpg.connect(*args, **kwargs)
    assert isinstance(ports, list) and len(ports) == len(hosts)
    key = tuple(zip(hosts, ports, strict=True))
    per_host = kwargs.pop("timeout", None) or HOST_TIMEOUT_S
    first = _last_good.get(key, 0)
    order = [first, *(i for i in range(len(hosts)) if i != first)]
    last_error: BaseException | None = None
    for index in order:
        began = time.monotonic()
        try:
            conn = await asyncpg.connect(
                *args, **{**kwargs, "host": hosts[index], "port": ports[index]}, timeout=per_host
            )
        except (
            OSError,
            TimeoutError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,  # TargetServerAttributeNotMatched: a standby
        ) as exc:
            # Refused, silent, not the wanted kind of server (a standby), starting, stopping.
            last_error = exc
            last_error.add_note(
                f"{hosts[index]}:{ports[index]} after {time.monotonic() - began:.1f} s"
            )
            continue
        _last_good[key] = index
        return conn
    assert last_error is not None
    raise last_error
