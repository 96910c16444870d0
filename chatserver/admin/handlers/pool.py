"""The pool's nodes: the view, the active list, swapping, draining (see ``pool/control.py``);
the pool's store state: normal, or failed over onto the backup store (``pool/failover.py``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ...pool import control
from ...protocol.errors import BAD_REQUEST, CONFLICT, NOT_FOUND, ChatError
from ..context import Ctx
from ..models import ActiveIn, PoolOut, PoolStateIn, PoolStateOut, SwapIn
from ..routing import Router

if TYPE_CHECKING:
    from ...pool.node import Pool

router = Router()


@router.route(
    "GET",
    "/api/v1/pool",
    tag="pool",
    summary="The nodes of this pool and their state",
    response=PoolOut,
)
async def get_pool(ctx: Ctx) -> Any:
    return await ctx.node.pool_view()


def _refused(exc: Exception) -> ChatError:
    assert isinstance(exc, control.PoolControlError)
    return ChatError({404: NOT_FOUND, 409: CONFLICT}.get(exc.status, BAD_REQUEST), str(exc))


async def _pool_change(
    ctx: Ctx, action: str, target: str, change: Callable[[Pool], Awaitable[object]]
) -> Any:
    pool = ctx.node.pool
    if pool is None:
        raise ChatError(CONFLICT, "this node is not in a pool ([pool] enabled is false)")
    return await ctx.change(
        action,
        target,
        load=ctx.node.pool_view,
        change=lambda _: change(pool),
        refusals={control.PoolControlError: _refused},
    )


@router.route(
    "PUT",
    "/api/v1/pool/active",
    tag="pool",
    summary="Set the active nodes (at most pool.max_active); the other active nodes become standby",
    body=ActiveIn,
    response=PoolOut,
)
async def set_active_nodes(ctx: Ctx) -> Any:
    names: list[str] = ctx.body.nodes
    max_active = ctx.node.config.pool.max_active
    return await _pool_change(
        ctx,
        "pool.active",
        "pool",
        lambda pool: control.set_active(ctx.db, names, max_active=max_active, pool=pool),
    )


@router.route(
    "POST",
    "/api/v1/pool/swap",
    tag="pool",
    summary="Move an active node to standby and a standby node to active, at once",
    body=SwapIn,
    response=PoolOut,
)
async def swap_nodes(ctx: Ctx) -> Any:
    b: SwapIn = ctx.body
    return await _pool_change(
        ctx,
        "pool.swap",
        f"node:{b.active}",
        lambda pool: control.swap(ctx.db, b.active, b.standby, pool=pool),
    )


@router.route(
    "POST",
    "/api/v1/pool/nodes/{node_name}/drain",
    tag="pool",
    summary="Drain a node: its clients are told to move to the active nodes, then it stops",
    response=PoolOut,
)
async def drain_node(ctx: Ctx) -> Any:
    name = str(ctx.params["node_name"])
    return await _pool_change(
        ctx, "pool.drain", f"node:{name}", lambda pool: control.drain(ctx.db, name, pool=pool)
    )


@router.route(
    "GET",
    "/api/v1/pool/state",
    tag="pool",
    summary="The pool's store state: normal, or failed over onto the backup store",
    response=PoolStateOut,
)
async def get_pool_state(ctx: Ctx) -> Any:
    return ctx.node.store_failover.view().public()


def _failover_refused(exc: Exception) -> ChatError:
    return ChatError(CONFLICT, str(exc))


@router.route(
    "PUT",
    "/api/v1/pool/state",
    tag="pool",
    summary="Fail the pool over onto database.backup_url (failed_over), or back (normal)",
    body=PoolStateIn,
    response=PoolStateOut,
)
async def set_pool_state(ctx: Ctx) -> Any:
    """Refused (409) with what to do when the target store is a standby (unless ``promote``),
    unreachable, or the pool is already in that state. The audit entry is written into the
    store the pool is on afterwards; the other nodes follow within
    ``database.failover_check_s``."""
    from ...store.poolstate import FailoverError

    b: PoolStateIn = ctx.body
    failover = ctx.node.store_failover

    async def view() -> dict[str, Any]:
        return failover.view().public()  # not read from a store that may be down

    return await ctx.change(
        "pool.state",
        "pool",
        load=view,
        change=lambda _: failover.set_state(
            b.state, by=ctx.actor_label, reason=b.reason, promote=b.promote
        ),
        refusals={FailoverError: _failover_refused},
    )
